"""Circuit breakers: the system stops itself when things go wrong, through the trading state.

Four breakers, checked at the start of every program run (``ProgramRunner``) and, for the loss
and the reconciliation, by position_monitor right after it valued and reconciled the positions.
Each works on the account's scope of ``trading_state`` (trading/state.py) and only ever makes it
stricter; each trip is an ``audit_event`` ``BREAKER_TRIPPED`` with its figures, written in the
same transaction as the state change (``TRADING_STATE_CHANGED``, source ``breaker:<name>``).

- ``daily_loss``: the loss since the previous close, realized and unrealized together (the
  broker's ``equity`` against its ``last_equity``), reaches ``DAILY_LOSS_LIMIT`` -> ``FLATTEN``
  (the order monitor closes everything, then ``HALTED``). Reset by hand. It trips at most once a
  trading day: after someone resumes, the same day's loss does not flatten the account again.
- ``broker_errors``: more than ``BREAKER_BROKER_ERRORS`` (5) broker errors (timeouts, dropped
  connections, 5xx, 429) within ``BREAKER_BROKER_ERROR_WINDOW_MINUTES`` (5) -> ``REDUCE_ONLY``
  with ``resume_after`` = the last error + ``BREAKER_BROKER_QUIET_MINUTES`` (10). A later check
  moves ``resume_after`` on while errors go on, and once it has passed sets ``ACTIVE`` again by
  itself (``BREAKER_CLEARED``). Only a REDUCE_ONLY this breaker set lifts itself.
- ``database_errors``: more than ``BREAKER_DATABASE_ERRORS`` (3) database errors (outages,
  dropped connections, deadlocks) within ``BREAKER_DATABASE_ERROR_WINDOW_SECONDS`` (60) ->
  ``HALTED``. Reset by hand.
- ``reconciliation``: a critical disagreement with the broker recorded by the programs (a
  position the system does not know, ``ORPHAN_POSITION``; a short, ``SHORT_POSITION``; a sell of
  more shares than the position held, ``ORDER_ANOMALY`` with ``details.disagreement``; an open
  trade recorded under another broker account, ``ACCOUNT_MISMATCH``) ->
  ``REDUCE_ONLY`` until someone resumes, which acknowledges every finding recorded so far. Each
  finding trips once (the trip names the last audit row it covers).

The errors are counted from what the runs record, so counts survive across processes: every run
writes the broker and database errors it met in ``program_run.counts`` (``broker_errors``,
``database_errors``), and the window is the runs' ``finished_at`` (wall-clock time, like the
errors themselves; ``now`` is passed in so tests drive it). An error the database could not
record (it stayed down) is not counted: the run's row is closed ``failed`` by the next run.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from config import Settings
from trading import audit
from trading.accounts import ACCOUNT_MISMATCH
from trading.audit import Auditor
from trading.broker import Account
from trading.market_time import MarketTime
from trading.notify import record_breaker_trip
from trading.pricing import money
from trading.state import (
    ACCOUNT_SCOPE,
    STRICTNESS,
    TRADING_STATE_LOCK_KEY,
    ScopeState,
    TradingMode,
    record_trading_state,
)

logger = logging.getLogger(__name__)

BREAKER_TRIPPED = "BREAKER_TRIPPED"
BREAKER_CLEARED = "BREAKER_CLEARED"
#: Findings of the reconciliation that trip its breaker (besides ORDER_ANOMALY rows whose details
#: name a ``disagreement``). An account mismatch is one: the programs leave those trades alone,
#: so nothing protects or reconciles them until a person points the programs back.
CRITICAL_EVENTS = (audit.ORPHAN_POSITION, audit.SHORT_POSITION, ACCOUNT_MISMATCH)
CHANGED_BY = "breaker"


class Breaker(StrEnum):
    DAILY_LOSS = "daily_loss"
    BROKER_ERRORS = "broker_errors"
    DATABASE_ERRORS = "database_errors"
    RECONCILIATION = "reconciliation"

    @property
    def source(self) -> str:
        """``trading_state.source`` of a state this breaker set."""
        return f"breaker:{self.value}"


@dataclass(frozen=True)
class Trip:
    """One breaker that acted in a check: tripped (or cleared), with its figures."""

    breaker: Breaker
    mode: TradingMode
    reason: str
    changed: bool


ERRORS_SQL = """
    SELECT coalesce(sum((counts ->> %(key)s)::int), 0) AS total, max(finished_at) AS last
    FROM program_run
    WHERE finished_at > %(since)s AND finished_at <= %(now)s AND coalesce((counts ->> %(key)s)::int, 0) > 0
"""


class LossAtStake(StrEnum):
    """When a program reads the broker's account at its start for the daily-loss breaker."""

    #: The order monitor: trades hold shares (something to flatten). Resting entries alone
    #: cannot lose money, and a loss made outside (a person's own positions) is caught by the
    #: position monitor's check after its valuation, so a run of resting entries costs no call.
    SHARES_HELD = "shares_held"
    #: The executor: approved decisions wait (new entries the loss should stop).
    DECISIONS = "decisions"
    #: The position monitor: it checks the loss after its valuation instead.
    NEVER = "never"


class Breakers:
    """The breakers of one program run (``auditor`` names the program and the run)."""

    def __init__(self, db: Any, settings: Settings, auditor: Auditor, *,
                 warn: Callable[[str], None] | None = None) -> None:
        self.db = db
        self.settings = settings
        self.config = settings.breakers
        self.auditor = auditor
        self.warn = warn or (lambda _note: None)
        #: The broker account, when a check read it (the run may use it instead of reading it again).
        self.account: Account | None = None

    # ------------------------------------------------------------------ the checks

    def check_at_start(self, broker: Any, market: MarketTime, now: dt.datetime, *,
                       loss_when: LossAtStake = LossAtStake.SHARES_HELD) -> list[Trip]:
        """Every breaker, as a run starts. The loss needs the broker's account, read only when the
        program has something the loss should stop (``loss_when``, :class:`LossAtStake`). A run
        with nothing at stake costs no call."""
        trips = [self.check_database_errors(now), self.check_broker_errors(now), self.check_reconciliation()]
        if self.config.daily_loss and self._at_stake(loss_when):
            self.account = broker.get_account()
            trips.append(self.check_daily_loss(self.account, market))
        return [trip for trip in trips if trip is not None]

    def check_daily_loss(self, account: Account, market: MarketTime) -> Trip | None:
        """Equity against the previous close's; at ``DAILY_LOSS_LIMIT`` of loss, FLATTEN (once a day).

        Judged from the trading day's open: before it (a run by hand early in the morning, or on a
        day without a session) the broker's ``last_equity`` may still be the close before the
        previous one (Alpaca rolls it some hours after a close, at a time it does not document), so
        yesterday's loss would count again for today. Nothing trades before the open anyway."""
        if not self.config.daily_loss or account.last_equity is None:
            return None
        if market.session is None or market.now < market.session.open:
            return None
        limit = self.settings.risk.daily_loss_limit
        loss = money(Decimal(account.last_equity) - Decimal(account.equity))
        if loss < limit:
            return None
        day = market.trading_date.isoformat()
        tripped_today = self.db.execute_one(
            "SELECT 1 AS x FROM audit_event WHERE event = %s AND details ->> 'breaker' = %s "
            "AND details ->> 'trading_date' = %s LIMIT 1", (BREAKER_TRIPPED, Breaker.DAILY_LOSS.value, day))
        if tripped_today:
            return None
        reason = (f"daily loss {loss} reached DAILY_LOSS_LIMIT {money(limit)} (equity {money(account.equity)}, "
                  f"previous close {money(account.last_equity)}): flatten everything")
        return self._trip(Breaker.DAILY_LOSS, TradingMode.FLATTEN, reason, always_record=True, figures={
            "loss": loss, "limit": money(limit), "equity": account.equity, "last_equity": account.last_equity,
            "trading_date": day})

    def check_broker_errors(self, now: dt.datetime) -> Trip | None:
        """More than the limit of broker errors in the window: REDUCE_ONLY, lifted after the quiet time."""
        config = self.config
        window = self._errors("broker_errors", now - config.broker_error_window, now)
        account = self._account()
        ours = account.mode is TradingMode.REDUCE_ONLY and account.source == Breaker.BROKER_ERRORS.source
        if ours:
            recent = self._errors("broker_errors", now - config.broker_quiet, now)
            quiet_from = recent["last"] + config.broker_quiet if recent["last"] else None
            if quiet_from is not None and (account.resume_after is None or quiet_from > account.resume_after):
                # Errors go on: the quiet time starts again from the last one.
                self._set(Breaker.BROKER_ERRORS, TradingMode.REDUCE_ONLY, account,
                          f"broker errors go on (last at {recent['last'].isoformat()}): lifts itself from "
                          f"{quiet_from.isoformat()} if quiet", resume_after=quiet_from,
                          figures={"errors_in_quiet_time": recent["total"]})
                return None
            if account.resume_after is not None and now >= account.resume_after and quiet_from is None:
                return self._clear(Breaker.BROKER_ERRORS, account,
                                   f"no broker error for {_minutes(config.broker_quiet)} minutes: ACTIVE again")
            return None
        if window["total"] <= config.broker_errors:
            return None
        quiet_from = window["last"] + config.broker_quiet
        reason = (f"{window['total']} broker errors in the last {_minutes(config.broker_error_window)} minutes "
                  f"(more than {config.broker_errors}): no new entries; lifts itself from "
                  f"{quiet_from.isoformat()} after {_minutes(config.broker_quiet)} quiet minutes")
        return self._trip(Breaker.BROKER_ERRORS, TradingMode.REDUCE_ONLY, reason, resume_after=quiet_from, figures={
            "errors": window["total"], "limit": config.broker_errors,
            "window_minutes": _minutes(config.broker_error_window), "last_error_at": window["last"]})

    def check_database_errors(self, now: dt.datetime) -> Trip | None:
        """More than the limit of database errors in the window: HALTED (reset by hand)."""
        config = self.config
        window = self._errors("database_errors", now - config.database_error_window, now)
        if window["total"] <= config.database_errors:
            return None
        seconds = int(config.database_error_window.total_seconds())
        reason = (f"{window['total']} database errors in the last {seconds} seconds (more than "
                  f"{config.database_errors}): nothing new is sent to the broker until someone resumes")
        return self._trip(Breaker.DATABASE_ERRORS, TradingMode.HALTED, reason, figures={
            "errors": window["total"], "limit": config.database_errors, "window_seconds": seconds,
            "last_error_at": window["last"]})

    def check_reconciliation(self) -> Trip | None:
        """A critical finding not covered by an earlier trip: REDUCE_ONLY until someone resumes."""
        if not self.config.reconciliation:
            return None
        covered = self.db.execute_one(
            "SELECT coalesce(max((details ->> 'last_event_id')::bigint), 0) AS id FROM audit_event "
            "WHERE event = %s AND details ->> 'breaker' = %s", (BREAKER_TRIPPED, Breaker.RECONCILIATION.value))
        findings = self.db.execute_query(
            "SELECT id, event, symbol, reason FROM audit_event WHERE id > %s AND (event = ANY(%s) "
            "OR (event = %s AND details ? 'disagreement')) ORDER BY id",
            (int(covered["id"]) if covered else 0, list(CRITICAL_EVENTS), audit.ORDER_ANOMALY))
        if not findings:
            return None
        named = "; ".join(f"{f['event']} {f['symbol'] or ''}".strip() for f in findings[:5])
        more = f" and {len(findings) - 5} more" if len(findings) > 5 else ""
        reason = (f"reconciliation found a critical disagreement with the broker ({named}{more}): no new entries "
                  "until someone checks and resumes")
        return self._trip(Breaker.RECONCILIATION, TradingMode.REDUCE_ONLY, reason, always_record=True, figures={
            "findings": [{"audit_event_id": f["id"], "event": f["event"], "symbol": f["symbol"],
                          "reason": f["reason"]} for f in findings],
            "last_event_id": findings[-1]["id"]})

    # ------------------------------------------------------------------ helpers

    def _at_stake(self, loss_when: LossAtStake) -> bool:
        queries = {
            LossAtStake.SHARES_HELD: "SELECT EXISTS (SELECT 1 FROM trade_journal WHERE status = 'POSITION') AS x",
            LossAtStake.DECISIONS: 'SELECT EXISTS (SELECT 1 FROM analysis_decision WHERE executed = false '
                                   'AND "Approve" = true) AS x',
        }
        if loss_when not in queries:
            return False
        row = self.db.execute_one(queries[loss_when])
        return bool(row and row["x"])

    def _errors(self, key: str, since: dt.datetime, now: dt.datetime) -> dict[str, Any]:
        row = self.db.execute_one(ERRORS_SQL, {"key": key, "since": since, "now": now})
        return {"total": int(row["total"]) if row else 0, "last": row["last"] if row else None}

    def _account(self) -> ScopeState:
        row = self.db.execute_one("SELECT * FROM trading_state WHERE scope = %s", (ACCOUNT_SCOPE,))
        return ScopeState.from_row(row) if row else ScopeState(ACCOUNT_SCOPE, TradingMode.ACTIVE)

    def _trip(self, breaker: Breaker, mode: TradingMode, reason: str, *, figures: dict[str, Any],
              resume_after: dt.datetime | None = None, always_record: bool = False) -> Trip | None:
        """Make the account at least ``mode`` and record the trip with its figures, together.

        A state already as strict is left alone (a breaker never loosens anything); the trip is
        then recorded only when ``always_record`` (the findings it covers, the day's loss)."""
        with self.db.transaction():
            self.db.execute_query("SELECT pg_advisory_xact_lock(%s)", (TRADING_STATE_LOCK_KEY,))
            account = self._account()
            # The reconciliation takes over a broker-error REDUCE_ONLY: that one would lift itself.
            takes_over = breaker is Breaker.RECONCILIATION and account.mode is TradingMode.REDUCE_ONLY \
                and account.source == Breaker.BROKER_ERRORS.source
            changed = STRICTNESS[mode] > STRICTNESS[account.mode] or takes_over
            if not changed and not always_record:
                return None
            if changed:
                record_trading_state(self.db, mode, reason=reason, changed_by=CHANGED_BY, source=breaker.source,
                                     resume_after=resume_after, program=self.auditor.program,
                                     run_id=self.auditor.run_id, details={"breaker": breaker.value},
                                     confirm_reset=False)
            self.auditor.record("trading_state", None, BREAKER_TRIPPED, old=account.mode,
                                new=mode if changed else account.mode, reason=reason,
                                details={"breaker": breaker.value, "state_changed": changed, "mode": mode.value,
                                         **figures})
            # The message goes out with the trip (same transaction; sent after the commit).
            value, limit = TRIP_FIGURES[breaker](figures)
            record_breaker_trip(self.db, breaker.value, figure_value=value, limit=limit,
                                new_mode=(mode if changed else account.mode).value, reason=reason,
                                program=self.auditor.program, run_id=self.auditor.run_id)
        if changed:
            logger.warning("%s breaker tripped: %s", breaker.value, reason)
            self.warn(f"breaker {breaker.value} tripped: {mode.value}: {reason}")
        else:
            logger.warning("%s breaker: %s (trading already %s)", breaker.value, reason, account.mode.value)
            self.warn(f"breaker {breaker.value}: {reason} (trading already {account.mode.value})")
        return Trip(breaker, mode, reason, changed)

    def _set(self, breaker: Breaker, mode: TradingMode, account: ScopeState, reason: str, *,
             resume_after: dt.datetime | None, figures: dict[str, Any]) -> None:
        record_trading_state(self.db, mode, reason=reason, changed_by=CHANGED_BY, source=breaker.source,
                             resume_after=resume_after, program=self.auditor.program, run_id=self.auditor.run_id,
                             details={"breaker": breaker.value, **figures}, only_from=frozenset({account.mode}))

    def _clear(self, breaker: Breaker, account: ScopeState, reason: str) -> Trip | None:
        with self.db.transaction():
            stored = record_trading_state(self.db, TradingMode.ACTIVE, reason=reason, changed_by=CHANGED_BY,
                                          source=breaker.source, program=self.auditor.program,
                                          run_id=self.auditor.run_id, details={"breaker": breaker.value},
                                          only_from=frozenset({TradingMode.REDUCE_ONLY}))
            if stored.mode is not TradingMode.ACTIVE:
                return None
            self.auditor.record("trading_state", None, BREAKER_CLEARED, old=account.mode, new=TradingMode.ACTIVE,
                                reason=reason, details={"breaker": breaker.value})
        logger.warning("%s breaker cleared: %s", breaker.value, reason)
        self.warn(f"breaker {breaker.value} cleared: {reason}")
        return Trip(breaker, TradingMode.ACTIVE, reason, True)


#: Each breaker's figure and limit for its notification, from the figures recorded with the trip.
TRIP_FIGURES: dict[Breaker, Callable[[dict[str, Any]], tuple[Any, Any]]] = {
    Breaker.DAILY_LOSS: lambda f: (f["loss"], f["limit"]),
    Breaker.BROKER_ERRORS: lambda f: (f["errors"], f["limit"]),
    Breaker.DATABASE_ERRORS: lambda f: (f["errors"], f["limit"]),
    Breaker.RECONCILIATION: lambda f: (f"{len(f['findings'])} finding(s)", None),
}


def _minutes(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() // 60)
