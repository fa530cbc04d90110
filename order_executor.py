#!/usr/bin/env python3
"""order_executor: every approved decision becomes exactly one protected entry order, or a
recorded refusal.

Runs once a day at 09:45 ET under the scheduler, or by hand::

    .venv/bin/python order_executor.py [--test-mode] [--dry-run] [--json]

Decisions are read with ``executed = false AND "Approve" = true`` and claimed with ``FOR UPDATE
SKIP LOCKED``; the whole run holds the executor's advisory lock. Plain NEW_TRADE decisions are
claimed, recorded and answered 100 at a time (``_new_trades_batch``: a few statements per batch,
the intents committed before any is sent, one broker call per decision); every other decision,
and any a batch cannot finish, goes one at a time. Submissions are paced by the broker's rate
limit (``X-RateLimit-Remaining``); decisions deferred by an outage or a 429 are retried by the
scheduler's ``order_executor_retry`` job within minutes (``unfinished_work``).

NEW_TRADE: validate the plan, size it, pass the risk gate, then record the trade (ORDERED) and
the entry's intent (``order_execution`` ``pending`` with the decision's deterministic
``client_order_id``) *before* sending it: SWING as a bracket (limit entry + take-profit +
stop), DAYTRADE as an OTO (limit entry + stop, day). If a run dies after the broker accepted
the order, the next run finds the intent, looks the order up by its client order id and
records it; the broker refuses a reused client order id, so a decision can never become two
orders.

CANCEL cancels the trade's working entry and its held legs (a filled entry is left alone,
with the reason recorded). AMEND cancels, then places the amended plan as a new trade that
records the trade it replaces. CLOSE cancels the protection and sells the shares with a
market order; outside the session it waits (the decision stays pending for the next run in
the session). NO_ACTION recounts the trade's ``days_open`` (trading days since its entry fill,
from the broker's calendar; the position monitor keeps it for every trade).

The trading state (``trading_state``, read once at the start of the run) comes first: under
REDUCE_ONLY, HALTED or FLATTEN (of the account or the decision's symbol) a NEW_TRADE waits, and
so does an AMEND, except under REDUCE_ONLY when the amended entry is no larger than the one it
replaces; under HALTED CANCEL and CLOSE wait too. A held decision is neither executed nor refused:
an audit row ``DECISION_HELD`` names the state, and it runs at the first run after trading
resumes, unless it is a day plan (DAYTRADE or ``time_in_force`` day) held since an earlier trading
day: then it is refused as expired. The run's ``held_back`` count says how many waited.

Every decision ends with an audit row. Refused decisions (malformed, invalid, unknown trade,
risk limit, broker 403/422) are marked executed so they are not retried every day; transient
failures (broker or database outage) leave the decision for the next run.
"""

from __future__ import annotations

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import argparse
import contextlib
import dataclasses
import datetime as dt
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from config import Settings, load_settings
from trading import audit, lifecycle
from trading.accounts import account_identity, what_to_do
from trading.audit import Auditor
from trading.batch import TradeBatch
from trading.breakers import LossAtStake
from trading.broker import Asset, Broker, BrokerOrder, OrderRequest, Quote
from trading.errors import (
    BrokerRejectedError,
    BrokerUnavailableError,
    DuplicateClientOrderIdError,
    NotFoundError,
    RejectedError,
    TransientError,
)
from trading.lifecycle import ExitReason, OrderType, TradeStatus
from trading.logs import bind_log_fields
from trading.market_time import MarketTime, trading_dates
from trading.orders import entry_client_order_id
from trading.plan import (
    TradePlan,
    check_against_quote,
    is_from_console,
    is_levels_only,
    parse_levels,
    parse_plan,
    referenced_ids,
)
from trading.pricing import ZERO, mid_price
from trading.program import ProgramRunner, RunContext, RunSummary, fixed_clock, main_for
from trading.protection import Protector, find_order
from trading.reconcile import Reconciler
from trading.risk import Reservation, RiskState, Sizing, check_entry, size_position
from trading.state import TradingMode
from trading.trades import TradeBook

logger = logging.getLogger(__name__)

PROGRAM = "order_executor"
#: After this many consecutive broker/database outages the run stops: the rest waits for the next run.
MAX_CONSECUTIVE_OUTAGES = 3

Row = dict[str, Any]

PENDING_DECISIONS_SQL = (
    'SELECT id FROM analysis_decision WHERE executed = false AND "Approve" = true ORDER BY created_at, id')
CLAIM_SQL = ('SELECT * FROM analysis_decision WHERE id = %s AND executed = false AND "Approve" = true '
             "FOR UPDATE SKIP LOCKED")
#: A batch's claim: the decisions still pending that no other run holds, locked in id order.
CLAIM_MANY_SQL = ('SELECT * FROM analysis_decision WHERE id = ANY(%s) AND executed = false AND "Approve" = true '
                  "ORDER BY created_at, id FOR UPDATE SKIP LOCKED")
#: Decisions claimed, recorded and answered together (``_new_trades_batch``).
BATCH_DECISIONS = 100
#: The longest wait for the broker's rate-limit window to renew (Alpaca's window is a minute).
MAX_PACING_WAIT_SECONDS = 60.0
#: Waited beyond ``X-RateLimit-Reset`` (whole seconds at the broker): the new window has begun.
PACING_MARGIN_SECONDS = 0.5


class _GateNeedsAnswers(Exception):
    """A batch's decision refused by a limit while the batch's earlier entries await the broker."""


class _HeldUnsent(Exception):
    """A recorded entry intent not at the broker while the trading state holds its decision back."""


@dataclass(frozen=True)
class StateVerdict:
    """What the trading state says about one decision: ``held`` (waits) or ``expired`` (refused)."""

    kind: str
    reason: str
    symbol: str | None


@dataclass
class Outcome:
    """How one decision ended in this run."""

    kind: str          # placed, refused, deferred, held_back, cancelled, amended, closing, no_action, skipped
    reason: str = ""


def entry_request(plan: TradePlan, qty: Decimal, client_order_id: str) -> OrderRequest:
    """The protected entry: SWING as a bracket, DAYTRADE as an OTO (stop only, day)."""
    if plan.trade_style == "SWING":
        return OrderRequest(symbol=plan.symbol, qty=qty, side="buy", kind="limit", time_in_force=plan.time_in_force,
                            client_order_id=client_order_id, limit_price=plan.entry, order_class="bracket",
                            take_profit_price=plan.target, stop_loss_price=plan.stop)
    return OrderRequest(symbol=plan.symbol, qty=qty, side="buy", kind="limit", time_in_force="day",
                        client_order_id=client_order_id, limit_price=plan.entry, order_class="oto",
                        stop_loss_price=plan.stop)


class OrderExecutor:
    """Turns approved decisions into orders. ``run()`` returns the summary (also in ``program_run``)."""

    name = PROGRAM
    #: The loss breaker is checked at the start when approved decisions wait (trading/breakers.py).
    loss_breaker_at_start = LossAtStake.DECISIONS

    def __init__(self, db: Any, broker: Broker, settings: Settings | None = None,
                 clock: Callable[[], MarketTime] | None = None, *, dry_run: bool = False,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.db = db
        self.broker = broker
        self.settings = settings or load_settings()
        self.clock = clock
        self.dry_run = dry_run
        # How the run waits between cancel confirmations (tests pass one that moves the
        # simulated exchange's clock, so a cancel can complete there).
        self.sleep = sleep
        self._assets: dict[str, Asset] | None = None
        self._risk: RiskState | None = None
        self._quotes: dict[str, Quote] | None = None
        self._quotes_asked: set[str] = set()
        self._quote_problem: str | None = None
        self._batching = True
        self._paced_until: dt.datetime | None = None
        self._summary: RunSummary | None = None

    def run(self) -> RunSummary:
        """One run under the executor's advisory lock."""
        return ProgramRunner(self, self.db, self.broker, self.settings, clock=self.clock, dry_run=self.dry_run).run()

    # ------------------------------------------------------------------ the run

    def execute(self, ctx: RunContext) -> None:
        self._summary = ctx.summary
        ids = [row["id"] for row in self.db.execute_query(PENDING_DECISIONS_SQL)]
        ctx.summary.add("decisions", len(ids))
        if not ids:
            logger.info("%s: no approved decisions waiting", PROGRAM)
            return
        self._assets = None
        self._risk = None
        self._quotes = None
        reconciler = Reconciler(self.db, ctx.audit)
        protector = Protector(self.db, self.broker, reconciler, self.settings, now=ctx.now, warn=ctx.summary.warn,
                              count=ctx.summary.add, sleep=self.sleep)
        outages = 0
        self._batching = not ctx.dry_run
        for start in range(0, len(ids), BATCH_DECISIONS):
            chunk = ids[start:start + BATCH_DECISIONS]
            done = self._new_trades_batch(ctx, chunk, reconciler) if self._batching else {}
            for decision_id in chunk:
                bind_log_fields(decision_id=decision_id)  # every line about it says so (the harness resets it)
                try:
                    if decision_id in done:
                        outcome = done[decision_id]
                        if isinstance(outcome, TransientError):
                            raise outcome
                        outages = 0
                    else:
                        outcome = self._dry_run(ctx, decision_id) if ctx.dry_run else \
                            self._handle(ctx, decision_id, reconciler, protector)
                        outages = 0
                except TransientError as exc:
                    outages += 1
                    outcome = Outcome("deferred", str(exc))
                    # A decision left for later by a broker or database error is something to look
                    # at: the run ends as warning (exit 1), not success.
                    ctx.summary.warn(f"decision {decision_id} deferred, retried next run: {exc}")
                    self._note_deferred(ctx, decision_id, f"transient failure, retried next run: {exc}")
                    if outages >= MAX_CONSECUTIVE_OUTAGES:
                        ctx.summary.add("deferred")
                        raise TransientError(f"{outages} outages in a row; stopping: {exc}") from exc
                except Exception as exc:  # a bug or the unexpected: this decision waits, the batch goes on
                    logger.exception("%s: decision %s failed", PROGRAM, decision_id)
                    outcome = Outcome("failed", f"{type(exc).__name__}: {exc}")
                    ctx.summary.warn(f"decision {decision_id}: {outcome.reason}")
                    self._note_deferred(ctx, decision_id, f"unexpected error, retried next run: {outcome.reason}")
                ctx.summary.add(outcome.kind)
                logger.info("%s: decision %s -> %s%s", PROGRAM, decision_id, outcome.kind,
                            f" ({outcome.reason})" if outcome.reason else "")
                if ctx.dry_run:
                    ctx.summary.notes.append(f"decision {decision_id}: {outcome.kind}"
                                             + (f" - {outcome.reason}" if outcome.reason else ""))

    # ------------------------------------------------------------------ NEW_TRADE in batches

    @contextlib.contextmanager
    def _through(self, ctx: RunContext, batch: TradeBatch) -> Iterator[RunContext]:
        """The run's pieces (``self.db``, the auditor) writing through ``batch`` for a moment."""
        db = self.db
        self.db = batch
        try:
            yield dataclasses.replace(ctx, db=batch, audit=Auditor(batch, ctx.audit.program, ctx.audit.run_id))
        finally:
            self.db = db

    def _new_trades_batch(self, ctx: RunContext, ids: list[int],
                          reconciler: Reconciler) -> dict[int, Outcome | TransientError]:
        """The plain NEW_TRADE decisions of ``ids`` (no earlier intent, never held, symbol ACTIVE)
        in three steps, each a few statements for the whole batch instead of ~25 per decision:

        1. one transaction claims them (``FOR UPDATE SKIP LOCKED``), validates, sizes and gates each,
           and records its trade and entry intent (deterministic client order id), or its refusal:
           committed before any of them is sent;
        2. one broker call per decision (``submit_order``), paced by the broker's rate limit;
        3. one transaction records the answers (each trade locked) and marks the decisions executed.

        Returns the outcome of every decision it finished (a ``TransientError`` for the one whose
        submission met an outage or the rate limit: deferred like any); the others (other actions, held or
        resumed ones, everything after a broker outage, a whole batch whose transaction failed) go
        the one-by-one way, which finds a recorded intent by its decision and resolves it at the
        broker before anything is sent again."""
        risk_before = self._risk_copy(ctx)
        outcomes: dict[int, Outcome] = {}
        failed: dict[int, TransientError] = {}
        sent: list[tuple[Row, Row, OrderRequest, Reservation | None]] = []
        try:
            batch = TradeBatch(self.db)
            with self.db.transaction(), self._through(ctx, batch) as bctx:
                rows = self.db.execute_query(CLAIM_MANY_SQL, (ids,))
                eligible = self._batch_eligible(ctx, rows)
                batch.hold("analysis_decision", [row["id"] for row in eligible])
                brec = Reconciler(batch, bctx.audit)
                for row in eligible:
                    bind_log_fields(decision_id=row["id"])  # the lines about it say so (the loop rebinds)
                    try:
                        placed = self._record_intent(bctx, row, brec, outcomes, unsent=bool(sent))
                    except _GateNeedsAnswers:
                        # Refused by a limit while entries of this batch are not answered yet: one of
                        # them may be refused by the broker and give its room back. This decision and
                        # the rest wait for the answers (one by one, in order, as before).
                        break
                    if placed is not None:
                        sent.append(placed)
                batch.flush()
        except Exception as exc:  # the whole batch rolled back: nothing of it was recorded
            logger.warning("%s: a batch of %s decisions rolled back (%s): handled one at a time", PROGRAM, len(ids),
                           exc)
            self._risk = risk_before
            self._batching = False
            return {}
        answers: list[tuple[Row, Row, OrderRequest, Reservation | None, BrokerOrder | BrokerRejectedError]] = []
        for row, trade, request, reservation in sent:
            bind_log_fields(decision_id=row["id"])
            try:
                answers.append((row, trade, request, reservation, self._submit_or_find(request, None)))
            except BrokerRejectedError as exc:
                answers.append((row, trade, request, reservation, exc))
            except TransientError as exc:
                # An outage or the rate limit: this decision is deferred as one by one (the reason on
                # its intent, the next run looks it up before sending), and the rest of the run goes one
                # decision at a time (each finds its recorded intent and looks it up before sending).
                if isinstance(exc, BrokerUnavailableError):
                    intent = self.db.get_by_id("order_execution", trade["intent_id"])
                    reconciler.orders.note_error(intent, f"{'outcome unknown, ' if exc.outcome_unknown else ''}"
                                                         f"retried next run: {exc}")
                failed[row["id"]] = exc
                self._batching = False
                break
        if answers:
            self._record_answers(ctx, answers, outcomes)
        return {**outcomes, **failed}

    def _risk_copy(self, ctx: RunContext) -> RiskState:
        state = self._risk_state(ctx)
        return replace(state, open_symbols=set(state.open_symbols))

    def _batch_eligible(self, ctx: RunContext, rows: list[Row]) -> list[Row]:
        """The claimed decisions the batch handles: NEW_TRADE, no intent recorded by an earlier run,
        never held back by the trading state, and their symbol ACTIVE (two queries for all)."""
        ids = [row["id"] for row in rows]
        with_intent = {r["decision_id"] for r in self.db.execute_query(
            "SELECT t.initial_analysis_id AS decision_id FROM trade_journal t WHERE t.initial_analysis_id = ANY(%s)",
            (ids,))}
        held = {r["entity_id"] for r in self.db.execute_query(
            "SELECT DISTINCT entity_id FROM audit_event WHERE entity_type = 'decision' AND entity_id = ANY(%s) "
            "AND event = %s", (ids, audit.DECISION_HELD))}
        eligible = []
        for row in rows:
            action = str(row.get("primary_action") or "").strip().upper()
            symbol = str(row.get("ticker") or "").strip().upper() or None
            if action == "NEW_TRADE" and row["id"] not in with_intent | held \
                    and ctx.state.mode_for(symbol) is TradingMode.ACTIVE:
                eligible.append(row)
        return eligible

    def _record_intent(self, ctx: RunContext, row: Row, reconciler: Reconciler, outcomes: dict[int, Outcome], *,
                       unsent: bool) -> tuple[Row, Row, OrderRequest, Reservation | None] | None:
        """Step 1 for one claimed decision (as ``_new_trade`` does it): its trade and intent, or its
        refusal. ``unsent``: entries accepted earlier in the batch await their answers, so a refusal
        by the limits raises ``_GateNeedsAnswers`` instead of being recorded."""
        prefix = self.settings.monitor.client_order_prefix
        coid = entry_client_order_id(prefix, row)
        try:
            plan = parse_plan(row)
            state = self._risk_state(ctx)
            try:
                sizing, notional = self._gate(plan, state)
            except RejectedError:
                if unsent:
                    raise _GateNeedsAnswers() from None
                raise
            quote_checked, quote_check = self._check_market(plan)
        except RejectedError as exc:
            outcomes[row["id"]] = self._refuse(ctx, row, exc)
            return None
        trade, request, intent_id = self._write_intent(ctx, reconciler, row, plan, sizing, notional, coid,
                                                       (quote_checked, quote_check), replaces=None)
        return row, {**trade, "intent_id": intent_id}, request, state.accept(plan.symbol, notional)

    def _write_intent(self, ctx: RunContext, reconciler: Reconciler, row: Row, plan: TradePlan, sizing: Sizing,
                      notional: Decimal, coid: str, quote: tuple[bool, str], *,
                      replaces: Row | None) -> tuple[Row, OrderRequest, int]:
        """Record a gated decision's trade and entry intent (with its audit row) before anything is
        sent, saying so when the market check could not be made: the trade, the request, the
        intent's id. Shared by the batch and by one decision at a time."""
        quote_checked, quote_check = quote
        if not quote_checked:
            logger.warning("%s: decision %s: %s", PROGRAM, row["id"], quote_check)
            if self._quote_problem:  # a broker error degraded the check: the run says so
                ctx.summary.warn(f"decision {row['id']}: {quote_check}")
        trade = reconciler.trades.create({
            **plan.as_values(), "initial_analysis_id": row["id"], "planned_qty": sizing.qty,
            "broker_account": account_identity(self.broker),
            "replaces_trade_journal_id": replaces["id"] if replaces else None})
        request = entry_request(plan, sizing.qty, coid)
        intent_id = reconciler.orders.insert_intent(trade, OrderType.ENTRY.value, request)
        ctx.audit.record("decision", row["id"], audit.ORDER_INTENT, symbol=plan.symbol,
                         reason=f"sized {sizing.qty} shares by {sizing.method}"
                                + (f"; {sizing.note}" if sizing.note else ""),
                         details={"trade_journal_id": trade["id"], "client_order_id": coid,
                                  "notional": notional, "quote_checked": quote_checked, "quote_check": quote_check})
        return trade, request, intent_id

    def _record_answers(self, ctx: RunContext,
                        answers: list[tuple[Row, Row, OrderRequest, Reservation | None,
                                            BrokerOrder | BrokerRejectedError]],
                        outcomes: dict[int, Outcome]) -> None:
        """Step 3: the broker's answers recorded and the decisions marked executed, in one
        transaction (as ``_new_trade`` does it per decision). Should it fail, nothing of it is
        recorded and these decisions go one by one: each finds its intent and looks its order up."""
        ids = [row["id"] for row, *_ in answers]
        finished: dict[int, Outcome] = {}
        try:
            batch = TradeBatch(self.db)
            with self.db.transaction(), self._through(ctx, batch) as bctx:
                claimed = {r["id"]: r for r in self.db.execute_query(CLAIM_MANY_SQL, (ids,))}
                batch.hold("analysis_decision", list(claimed))
                locked = batch.load([trade["id"] for _, trade, *_ in answers])
                brec = Reconciler(batch, bctx.audit)
                for row, trade, request, reservation, answer in answers:
                    bind_log_fields(decision_id=row["id"])
                    current = claimed.get(row["id"])
                    if current is None:
                        finished[row["id"]] = Outcome("skipped", "claimed by another run")
                        continue
                    intent = batch.get_by_id("order_execution", trade["intent_id"])
                    assert intent is not None
                    if isinstance(answer, BrokerRejectedError):
                        brec.orders.mark_refused(intent, str(answer))
                        mine = locked.get(trade["id"])
                        if mine is not None and mine["status"] == TradeStatus.ORDERED.value:
                            brec.trades.cancel(mine, ExitReason.BROKER_REFUSED.value, ctx.now,
                                               f"broker refused the entry: {answer}")
                        if reservation is not None and self._risk is not None:
                            self._risk.release(reservation)  # nothing was placed: later decisions may use the room
                        finished[row["id"]] = self._refuse(bctx, current, answer, code=answer.code)
                        continue
                    mine = locked.get(trade["id"])
                    assert mine is not None
                    brec.sync(mine, intent, answer, now=ctx.now)
                    reason = self._placed_reason(request, None)
                    self._finish(bctx, current, accepted=True, reason=reason, trade_id=trade["id"], order_id=answer.id,
                                 details={"client_order_id": request.client_order_id, "status": answer.status})
                    finished[row["id"]] = Outcome("placed", reason)
                batch.flush()
        except Exception as exc:  # nothing of step 3 recorded: one by one (intent found, order looked up)
            logger.warning("%s: recording %s answers failed (%s): handled one at a time", PROGRAM, len(answers), exc)
            self._batching = False
            for *_, reservation, answer in answers:
                if isinstance(answer, BrokerRejectedError) and reservation is not None and self._risk is not None:
                    self._risk.release(reservation)  # refused, so placed by no one: its room is free again
            return
        outcomes.update(finished)

    @staticmethod
    def _placed_reason(request: OrderRequest, replaces: Row | None) -> str:
        style = "bracket" if request.order_class == "bracket" else "OTO"
        reason = (f"{style} entry placed: buy {request.qty} {request.symbol} limit {request.limit_price}, "
                  f"stop {request.stop_loss_price}" + (f", target {request.take_profit_price}"
                                                       if request.take_profit_price else ""))
        if replaces is not None:
            reason += f"; replaces trade {replaces['id']}"
        return reason

    def _note_deferred(self, ctx: RunContext, decision_id: int, reason: str) -> None:
        if ctx.dry_run:
            return
        try:
            ctx.audit.record("decision", decision_id, audit.DECISION_DEFERRED, reason=reason)
        except TransientError:
            logger.warning("could not record the deferral of decision %s (database unavailable)", decision_id)

    # ------------------------------------------------------------------ shared pieces

    def _assets_by_symbol(self) -> dict[str, Asset]:
        if self._assets is None:
            self._assets = self.broker.list_assets()
        return self._assets

    def _gate(self, plan: TradePlan, state: RiskState) -> tuple[Sizing, Decimal]:
        """The symbol is tradable, the size is whole shares and the entry passes the risk limits:
        the sizing and the entry's notional, or ``RejectedError`` naming what failed."""
        asset = self._assets_by_symbol().get(plan.symbol)
        if asset is None:
            raise RejectedError(f"unknown symbol {plan.symbol}: the broker does not list it", code="UNKNOWN_SYMBOL")
        if not asset.tradable:
            raise RejectedError(f"{plan.symbol} is not tradable at the broker", code="NOT_TRADABLE")
        sizing = size_position(plan, self.settings.risk, state.equity)
        return sizing, check_entry(plan, sizing.qty, self.settings.risk, state)

    def _latest_quote(self, symbol: str) -> Quote | None:
        """The symbol's latest quote: the quotes of every waiting decision's ticker are read in one
        call at the first need, once per run; None when the broker has none or could not answer
        (``_quote_problem`` says why)."""
        if self._quotes is None:
            self._quotes, self._quotes_asked, self._quote_problem = {}, set(), None
        if symbol not in self._quotes_asked and self._quote_problem is None:
            tickers = {str(r["ticker"]).strip().upper() for r in self.db.execute_query(
                'SELECT DISTINCT ticker FROM analysis_decision WHERE executed = false AND "Approve" = true '
                "AND ticker IS NOT NULL")}
            wanted = sorted((tickers | {symbol}) - self._quotes_asked)
            try:
                self._quotes.update(self.broker.get_latest_quotes(wanted))
            except (TransientError, NotFoundError, BrokerRejectedError) as exc:
                self._quote_problem = f"the quote could not be read: {exc}"
            self._quotes_asked.update(wanted)
        return self._quotes.get(symbol)

    def _check_market(self, plan: TradePlan) -> tuple[bool, str]:
        """Compare the latest quote with the plan just before sending it: ``RejectedError``
        (``STALE_PLAN``) when the stop is already crossed or the price drifted beyond
        ``MAX_ENTRY_DRIFT_PCT``. A quote that cannot be read does not stop the entry (its limit
        price bounds what is paid and its broker-held stop the loss; refusing would lose the
        decision for a data outage). Returns whether the quote was compared and what was found,
        recorded with the intent (``details.quote_check``); a quote call that failed also ends
        the run as ``warning``."""
        quote = self._latest_quote(plan.symbol)
        if quote is None or mid_price(quote.bid, quote.ask) is None:
            why = self._quote_problem or "the broker has no quote for it"
            return False, (f"no quote for {plan.symbol} ({why}): sent without comparing the plan with the market "
                           "(STALE_PLAN not checked)")
        return True, check_against_quote(plan, quote.bid, quote.ask, self.settings.risk.max_entry_drift_pct)

    @staticmethod
    def _release(state: RiskState, trade: Row) -> None:
        """Take an unfilled trade that is being replaced out of the risk state."""
        state.open_trades -= 1
        state.exposure -= Decimal(trade["planned_entry"] or 0) * Decimal(trade["planned_qty"] or 0)
        state.open_symbols.discard(trade["symbol"])

    def _risk_state(self, ctx: RunContext) -> RiskState:
        if self._risk is None:
            account = ctx.account or self.broker.get_account()  # read once: the breakers may have
            open_trades = self.db.execute_query(
                "SELECT t.symbol, t.status, t.planned_entry, t.planned_qty, p.market_value "
                "FROM trade_journal t LEFT JOIN position_tracking p ON p.trade_journal_id = t.id "
                "WHERE t.status IN ('ORDERED', 'POSITION')")
            exposure = sum((Decimal(r["market_value"]) if r["market_value"] is not None
                            else Decimal(r["planned_entry"] or 0) * Decimal(r["planned_qty"] or 0)
                            for r in open_trades), ZERO)
            entries = self.db.execute_one(
                "SELECT count(*) AS n FROM order_execution WHERE order_type = 'ENTRY' AND submitted_at >= %s",
                (ctx.market.day_start,))
            realized = TradeBook(self.db, ctx.audit).realized_since(ctx.market.day_start)
            self._risk = RiskState(equity=account.equity, buying_power=account.buying_power,
                                   open_trades=len(open_trades), open_symbols={r["symbol"] for r in open_trades},
                                   exposure=exposure, entries_today=int(entries["n"] if entries else 0),
                                   realized_pnl_today=realized)
        return self._risk

    def _claim(self, decision_id: int) -> Row | None:
        return self.db.execute_one(CLAIM_SQL, (decision_id,))

    def _finish(self, ctx: RunContext, row: Row, *, accepted: bool, reason: str, trade_id: int | None = None,
                order_id: str | None = None, code: str | None = None, details: dict | None = None) -> None:
        """Mark the decision executed (placed or refused) with its audit row; inside the claim's transaction."""
        values: dict[str, Any] = {"executed": True, "execution_time": ctx.now}
        if trade_id is not None:
            values["existing_trade_journal_id"] = trade_id
        if order_id is not None:
            values["existing_order_id"] = order_id
        self.db.update("analysis_decision", row["id"], values)
        event = audit.DECISION_ACCEPTED if accepted else audit.DECISION_REFUSED
        ctx.audit.record("decision", row["id"], event, symbol=row.get("ticker"), old="pending",
                         new="accepted" if accepted else "refused", reason=reason,
                         details={"primary_action": row.get("primary_action"), "code": code,
                                  "trade_journal_id": trade_id, "alpaca_order_id": order_id, **(details or {})})

    def _refuse(self, ctx: RunContext, row: Row, exc: RejectedError | str, code: str = "REFUSED") -> Outcome:
        reason = str(exc)
        code = getattr(exc, "code", code)
        logger.warning("%s: decision %s (%s %s) refused: %s", PROGRAM, row["id"], row.get("primary_action"),
                       row.get("ticker"), reason)
        self._finish(ctx, row, accepted=False, reason=reason, code=code, details=getattr(exc, "details", None))
        return Outcome("refused", reason)

    def _referenced_trade(self, row: Row) -> Row:
        trade_id, order_id = referenced_ids(row)
        if trade_id is None and order_id is not None:
            matches = self.db.execute_query(
                "SELECT trade_journal_id FROM order_execution WHERE alpaca_order_id = %s OR client_order_id = %s",
                (order_id, order_id))
            if not matches:
                raise RejectedError(f"order {order_id} is not an order of this system: no trade to act on",
                                    code="UNKNOWN_TRADE")
            trade_id = matches[0]["trade_journal_id"]
        if trade_id is None:
            raise RejectedError("the decision names no trade: set existing_trade_journal_id (or existing_order_id)",
                                code="NO_TRADE_NAMED")
        trade = self.db.get_by_id("trade_journal", trade_id)
        if trade is None:
            raise RejectedError(f"trade {trade_id} does not exist", code="UNKNOWN_TRADE")
        recorded, current = trade.get("broker_account"), account_identity(self.broker)
        if recorded is not None and current is not None and recorded != current:
            # Its orders and shares are in another account: acting here would cancel or sell nothing
            # of it, and reconcile it against an account it never was in (trading/accounts.py).
            raise RejectedError(f"trade {trade['id']} was placed in broker account {recorded}, not in this "
                                f"account {current}: nothing done. To resolve: {what_to_do(recorded, current)}",
                                code="ACCOUNT_MISMATCH")
        return trade

    # ------------------------------------------------------------------ dispatch

    def _handle(self, ctx: RunContext, decision_id: int, reconciler: Reconciler, protector: Protector) -> Outcome:
        with self.db.transaction():
            row = self._claim(decision_id)
            if row is None:
                return Outcome("skipped", "claimed by another run or no longer pending")
            action = str(row.get("primary_action") or "").strip().upper()
            if action == "NO_ACTION":
                return self._no_action(ctx, row)
            if action not in ("NEW_TRADE", "CANCEL", "AMEND", "CLOSE"):
                return self._refuse(ctx, row, RejectedError(
                    f"unknown primary_action {row.get('primary_action')!r} "
                    "(expected NEW_TRADE, CANCEL, AMEND, CLOSE or NO_ACTION)", code="UNKNOWN_ACTION"))
            verdict = self._state_verdict(ctx, row, action)
            intent = reconciler.orders.entry_of_decision(row["id"]) if verdict is not None else None
            if verdict is not None and not (verdict.kind == "held" and action in ("NEW_TRADE", "AMEND")
                                            and intent is not None):
                return self._hold(ctx, row, action, verdict)
        if verdict is not None and intent is not None:
            # An entry recorded by an earlier run whose answer was lost: it may be at the broker
            # already, so it is looked up (and recorded if found) even while held; never sent now.
            trade = reconciler.trades.get(intent["trade_journal_id"])
            replaces = self.db.get_by_id("trade_journal", trade["replaces_trade_journal_id"]) \
                if trade is not None and trade.get("replaces_trade_journal_id") else None
            return self._new_trade(ctx, decision_id, reconciler, replaces=replaces, hold=verdict)
        if action == "NEW_TRADE":
            return self._new_trade(ctx, decision_id, reconciler, replaces=None)
        if action == "CANCEL":
            return self._cancel(ctx, decision_id, protector)
        if action == "AMEND":
            if is_levels_only(row):
                return self._amend_levels(ctx, decision_id, protector)
            return self._amend(ctx, decision_id, reconciler, protector)
        return self._close(ctx, decision_id, protector)

    # ------------------------------------------------------------------ the trading state

    def _state_verdict(self, ctx: RunContext, row: Row, action: str) -> StateVerdict | None:
        """Whether the trading state read at the start of the run holds this decision back (or
        it expired while held). None: it goes on as usual (a malformed decision included: the
        usual path refuses it). Reads only (the dry run uses it too).

        NEW_TRADE waits unless its symbol is ACTIVE; an AMEND waits unless ACTIVE, or under
        REDUCE_ONLY when the amended entry is no larger than the one it replaces; CANCEL and
        CLOSE wait only under HALTED (nothing new is sent to the broker then; FLATTEN is how
        everything is closed while stopped). NO_ACTION never waits: it changes no order.
        """
        state = ctx.state
        trade: Row | None = None
        if action == "NEW_TRADE":
            symbol = str(row.get("ticker") or "").strip().upper() or None
        else:
            try:
                trade = self._referenced_trade(row)
            except RejectedError:
                return None
            symbol = trade["symbol"]
        if is_levels_only(row):
            action = "CLOSE" if action == "AMEND" else action  # moves protection only: waits only while HALTED
        if action in ("NEW_TRADE", "AMEND"):
            expired = self._held_and_expired(ctx, row)
            if expired is not None:
                return StateVerdict("expired", expired, symbol)
        mode = state.mode_for(symbol)
        if mode is TradingMode.ACTIVE:
            return None
        where = f"trading is {state.describe(symbol)}"
        if action in ("CANCEL", "CLOSE"):
            if mode is not TradingMode.HALTED:
                return None
            return StateVerdict("held", f"held back: {where}; no {row.get('primary_action') or action} is sent to the "
                                        "broker while HALTED "
                                        "(FLATTEN closes everything); it runs when trading resumes", symbol)
        if action == "AMEND":
            assert trade is not None
            if mode is TradingMode.REDUCE_ONLY and not self._amend_adds_exposure(ctx, row, trade):
                return None
            return StateVerdict("held", f"held back: {where}; an amendment that adds exposure waits until "
                                        "trading resumes", symbol)
        return StateVerdict("held", f"held back: {where}; a new entry waits until trading resumes", symbol)

    def _held_and_expired(self, ctx: RunContext, row: Row) -> str | None:
        """A decision held back on an earlier trading day whose plan is a day plan (DAYTRADE, or
        ``time_in_force`` day) expired: its entry was meant for that day only."""
        first = self.db.execute_one(
            "SELECT min(details ->> 'trading_date') AS since FROM audit_event "
            "WHERE entity_type = 'decision' AND entity_id = %s AND event = %s", (row["id"], audit.DECISION_HELD))
        since = first["since"] if first else None
        if since is None or since >= ctx.market.trading_date.isoformat():
            return None
        try:
            plan = parse_plan(row)
        except RejectedError:
            return None
        if plan.trade_style != "DAYTRADE" and plan.time_in_force != "day":
            return None
        return (f"expired: held back by the trading state since {since}; a {plan.trade_style} plan with "
                f"time_in_force {plan.time_in_force} is not placed on a later trading day")

    def _amend_adds_exposure(self, ctx: RunContext, row: Row, trade: Row) -> bool:
        """Whether the amended entry (entry x shares) is larger than the entry it replaces."""
        try:
            plan = parse_plan(row)
            _check_amendment(plan, trade)
            sizing = size_position(plan, self.settings.risk, self._risk_state(ctx).equity)
        except RejectedError:
            return False  # refused on the usual path, which says why
        old = self._latest_amendment(trade, row["id"])
        before = Decimal(old["planned_entry"] or 0) * Decimal(old["planned_qty"] or 0)
        return plan.entry * sizing.qty > before

    def _hold(self, ctx: RunContext, row: Row, action: str, verdict: StateVerdict) -> Outcome:
        """Inside the claim's transaction: record the hold (not executed, not refused), or refuse
        a held decision that expired."""
        if verdict.kind == "expired":
            return self._refuse(ctx, row, verdict.reason, code="HELD_DECISION_EXPIRED")
        scope = ctx.state.scope_for(verdict.symbol)
        trading_date = ctx.market.trading_date.isoformat()
        last = self.db.execute_one(
            "SELECT event, reason, details FROM audit_event WHERE entity_type = 'decision' AND entity_id = %s "
            "ORDER BY id DESC LIMIT 1", (row["id"],))
        repeated = last is not None and last["event"] == audit.DECISION_HELD and last["reason"] == verdict.reason \
            and (last["details"] or {}).get("trading_date") == trading_date
        if not repeated:  # a rerun under the same state writes nothing new
            ctx.audit.record("decision", row["id"], audit.DECISION_HELD, symbol=verdict.symbol, old="pending",
                             new="held", reason=verdict.reason,
                             details={"primary_action": action, "mode": scope.mode.value, "scope": scope.scope,
                                      "state_reason": scope.reason, "trading_date": trading_date})
        logger.info("%s: decision %s (%s %s) %s", PROGRAM, row["id"], action, verdict.symbol, verdict.reason)
        return Outcome("held_back", verdict.reason)

    # ------------------------------------------------------------------ NEW_TRADE

    def _new_trade(self, ctx: RunContext, decision_id: int, reconciler: Reconciler, *,
                   replaces: Row | None, hold: StateVerdict | None = None) -> Outcome:
        """Place the decision's entry; with ``hold`` (the trading state holds it back) only an
        entry an earlier run recorded is looked up and recorded: nothing is sent."""
        prefix = self.settings.monitor.client_order_prefix
        # 1. Claim, validate, size, gate, and record the intent: committed before the broker call.
        with self.db.transaction():
            row = self._claim(decision_id)
            if row is None:
                return Outcome("skipped", "claimed by another run or no longer pending")
            # An earlier run's intent is found by the decision, not by rebuilding its client order id:
            # CLIENT_ORDER_PREFIX may have changed since, and a rebuilt id would send a second entry.
            intent = reconciler.orders.entry_of_decision(row["id"])
            coid = intent["client_order_id"] if intent is not None else entry_client_order_id(prefix, row)
            trade: Row | None
            if intent is None and hold is not None:
                return self._hold(ctx, row, str(row.get("primary_action") or "").strip().upper(), hold)
            if intent is None:
                try:
                    plan = parse_plan(row)
                    if replaces is not None:
                        _check_amendment(plan, replaces)
                    state = self._risk_state(ctx)
                    sizing, notional = self._gate(plan, state)
                    quote_checked, quote_check = self._check_market(plan)
                except RejectedError as exc:
                    return self._refuse(ctx, row, exc)
                trade, request, row_id = self._write_intent(ctx, reconciler, row, plan, sizing, notional, coid,
                                                            (quote_checked, quote_check), replaces=replaces)
                reservation: Reservation | None = state.accept(plan.symbol, notional)
                intent_row: Row | None = None
            else:
                # A previous run recorded this intent and did not finish: resolve, never resend blindly.
                trade = reconciler.trades.get(intent["trade_journal_id"])
                assert trade is not None, f"intent {intent['id']} has no trade"
                row_id, intent_row = intent["id"], intent
                reservation = None
                request = OrderRequest(symbol=intent["symbol"], qty=Decimal(intent["qty"]), side="buy", kind="limit",
                                       time_in_force=intent["time_in_force"], client_order_id=coid,
                                       limit_price=intent["limit_price"], order_class=intent["order_class"],
                                       take_profit_price=trade["planned_tp"] if intent["order_class"] == "bracket"
                                       else None, stop_loss_price=trade["planned_sl"])
        assert trade is not None
        # 2. The broker call (or the look-up of an earlier one).
        try:
            order = self._submit_or_find(request, intent_row, send=hold is None)
        except _HeldUnsent:
            with self.db.transaction():
                row = self._claim(decision_id)
                if row is None:
                    return Outcome("skipped", "claimed by another run")
                assert hold is not None
                return self._hold(ctx, row, str(row.get("primary_action") or "").strip().upper(), hold)
        except BrokerRejectedError as exc:
            with self.db.transaction():
                row = self._claim(decision_id)
                if row is None:
                    return Outcome("skipped", "claimed by another run")
                locked = reconciler.trades.lock(trade["id"])
                reconciler.orders.mark_refused(self.db.get_by_id("order_execution", row_id), str(exc))
                if locked is not None and locked["status"] == TradeStatus.ORDERED.value:
                    reconciler.trades.cancel(locked, ExitReason.BROKER_REFUSED.value, ctx.now,
                                             f"broker refused the entry: {exc}")
                if reservation is not None and self._risk is not None:
                    self._risk.release(reservation)  # nothing was placed: later decisions may use the room
                return self._refuse(ctx, row, exc, code=exc.code)
        except BrokerUnavailableError as exc:
            intent_now = self.db.get_by_id("order_execution", row_id)
            reconciler.orders.note_error(intent_now, f"{'outcome unknown, ' if exc.outcome_unknown else ''}"
                                                     f"retried next run: {exc}")
            raise
        # 3. Record the broker's answer and mark the decision executed, together.
        with self.db.transaction():
            row = self._claim(decision_id)
            if row is None:
                return Outcome("skipped", "claimed by another run")
            locked = reconciler.trades.lock(trade["id"])
            assert locked is not None
            reconciler.sync(locked, self.db.get_by_id("order_execution", row_id), order, now=ctx.now)
            reason = self._placed_reason(request, replaces)
            self._finish(ctx, row, accepted=True, reason=reason, trade_id=trade["id"], order_id=order.id,
                         details={"client_order_id": request.client_order_id, "status": order.status})
        return Outcome("amended" if replaces is not None else "placed", reason)

    def _submit_or_find(self, request: OrderRequest, intent: Row | None, *, send: bool = True) -> BrokerOrder:
        """Send the entry, unless a previous run already did: then look it up. ``send`` False (held
        by the trading state): an intent not at the broker raises ``_HeldUnsent`` instead of going out."""
        if intent is not None:
            try:
                return find_order(self.broker, intent.get("alpaca_order_id"), request.client_order_id)
            except NotFoundError:
                if not send:
                    raise _HeldUnsent() from None
                logger.info("%s: intent %s not at the broker: sending it now", PROGRAM, request.client_order_id)
        self._pace()
        try:
            return self.broker.submit_order(request)
        except DuplicateClientOrderIdError:
            # The broker has it already (an earlier attempt landed): take that order.
            return find_order(self.broker, None, request.client_order_id)
        except BrokerUnavailableError as exc:
            if not exc.outcome_unknown:
                raise
            try:  # did it land? one direct look-up before giving up for this run
                return find_order(self.broker, None, request.client_order_id)
            except (NotFoundError, TransientError):
                raise exc from None

    def _pace(self) -> None:
        """Before a submission: when the broker's last answer said its allowance is nearly spent
        (``X-RateLimit-Remaining`` at or below a twentieth of the limit, kept for the other
        programs sharing the key), wait until it is renewed (``X-RateLimit-Reset``, at most a
        minute) instead of running into a 429 that would end the run early. A broker that sends
        no such headers is not paced."""
        limit = getattr(self.broker, "rate_limit", None)
        if limit is None or limit.reset_at is None or limit.remaining > max(1, limit.limit // 20):
            return
        if self._paced_until is not None and limit.reset_at <= self._paced_until:
            return  # waited for this window already; the next answer tells the new one
        wait = (limit.reset_at - dt.datetime.now(dt.UTC)).total_seconds() + PACING_MARGIN_SECONDS
        self._paced_until = limit.reset_at
        if wait <= 0:
            return
        wait = min(wait, MAX_PACING_WAIT_SECONDS)
        logger.info("%s: %s of %s broker calls left until %s: waiting %.1f s before the next submission", PROGRAM,
                    limit.remaining, limit.limit, limit.reset_at.isoformat(), wait)
        if self._summary is not None:
            self._summary.add("rate_limit_waits")
        self.sleep(wait)

    # ------------------------------------------------------------------ CANCEL, AMEND, CLOSE

    def _claim_open_trade(
            self, ctx: RunContext, decision_id: int, verb: str,
            check: Callable[[Row, Row], Outcome | None] | None = None,
            done_before: Callable[[Row, Row], Outcome | None] | None = None) -> tuple[Row | None, Outcome | None]:
        """Claim the decision and find the open trade it names. Returns the trade, or the outcome
        when the decision ends here (refused: no such trade, already finished, or ``check`` says so;
        a finished trade that ``done_before`` says this decision itself finished is its outcome),
        all within the claim's transaction."""
        with self.db.transaction():
            row = self._claim(decision_id)
            if row is None:
                return None, Outcome("skipped", "claimed by another run")
            try:
                trade = self._referenced_trade(row)
            except RejectedError as exc:
                return None, self._refuse(ctx, row, exc)
            if trade["status"] in (TradeStatus.CANCELLED.value, TradeStatus.CLOSED.value):
                done = done_before(row, trade) if done_before else None
                if done is not None:
                    return None, done
                return None, self._refuse(ctx, row, f"trade {trade['id']} is already {trade['status']}: nothing to "
                                                    f"{verb}", code=f"NOTHING_TO_{verb.upper()}")
            refused = check(row, trade) if check else None
            return (None, refused) if refused else (trade, None)

    def _cancel(self, ctx: RunContext, decision_id: int, protector: Protector) -> Outcome:
        def filled_already(row: Row, trade: Row) -> Outcome | None:
            if trade["status"] == TradeStatus.POSITION.value and not self._entry_working(trade["id"]):
                return self._refuse(ctx, row, f"trade {trade['id']} entry already filled "
                                              f"({trade['actual_qty']} @ {trade['actual_entry']}): protection left in "
                                              "place, nothing cancelled", code="ALREADY_FILLED")
            return None

        def cancelled_by_this_decision(row: Row, trade: Row) -> Outcome | None:
            # This decision's cancel was processed but its answer was lost (a 5xx), and a monitor
            # recorded the canceled entry before this run: the decision did its work.
            if trade["status"] != TradeStatus.CANCELLED.value or \
                    trade.get("exit_reason") != ExitReason.CANCEL_REQUESTED.value:
                return None
            asked = self.db.execute_one(
                "SELECT 1 AS asked FROM audit_event WHERE event = %s AND entity_type = 'order' AND reason = %s "
                "AND entity_id IN (SELECT id FROM order_execution WHERE trade_journal_id = %s) LIMIT 1",
                (audit.ORDER_CANCEL_REQUESTED, f"CANCEL decision {row['id']}", trade["id"]))
            if asked is None:
                return None
            reason = (f"trade {trade['id']} entry canceled at the broker (this decision's cancel, its answer lost, "
                      "confirmed by looking the order up)")
            self._finish(ctx, row, accepted=True, reason=reason, trade_id=trade["id"])
            return Outcome("cancelled", reason)

        trade, ended = self._claim_open_trade(ctx, decision_id, "cancel", filled_already, cancelled_by_this_decision)
        if trade is None:
            assert ended is not None
            return ended
        result = protector.cancel_entry(trade["id"], ExitReason.CANCEL_REQUESTED.value,
                                        reason=f"CANCEL decision {decision_id}")
        if result == "deferred":
            return Outcome("deferred", "cancel not confirmed by the broker yet")
        with self.db.transaction():
            row = self._claim(decision_id)
            if row is None:
                return Outcome("skipped", "claimed by another run")
            after = self.db.get_by_id("trade_journal", trade["id"])
            if result == "cancelled":
                reason = f"trade {trade['id']} entry canceled at the broker"
                self._finish(ctx, row, accepted=True, reason=reason, trade_id=trade["id"])
                return Outcome("cancelled", reason)
            reason = (f"trade {trade['id']} entry filled {after['actual_qty']} @ {after['actual_entry']} before the "
                      "cancel: the filled shares stay, protected; nothing more to cancel")
            self._finish(ctx, row, accepted=False, reason=reason, trade_id=trade["id"], code="ALREADY_FILLED")
            return Outcome("refused", reason)

    def _entry_working(self, trade_id: int) -> bool:
        from trading.lifecycle import OPEN_ORDER_STATUSES

        return any(r["order_type"] == "ENTRY" and r["order_status"] in OPEN_ORDER_STATUSES
                   for r in self.db.query("order_execution", {"trade_journal_id": trade_id}))

    def _amend(self, ctx: RunContext, decision_id: int, reconciler: Reconciler, protector: Protector) -> Outcome:
        with self.db.transaction():
            row = self._claim(decision_id)
            if row is None:
                return Outcome("skipped", "claimed by another run")
            try:
                old = self._referenced_trade(row)
                # An invalid amendment must not cancel the trade it would replace.
                plan = parse_plan(row)
                _check_amendment(plan, old)
            except RejectedError as exc:
                return self._refuse(ctx, row, exc)
            old = self._latest_amendment(old, decision_id)
            amended_before = old["status"] == TradeStatus.CANCELLED.value and \
                old.get("exit_reason") == ExitReason.AMENDED.value
            if not amended_before and old["status"] != TradeStatus.ORDERED.value:
                filled = f" (filled {old['actual_qty']} @ {old['actual_entry']})" if old.get("actual_qty") else ""
                return self._refuse(ctx, row, f"trade {old['id']} is {old['status']}{filled}: the amendment needs an "
                                              "unfilled entry; nothing new placed", code="ALREADY_FILLED")
        if not amended_before:
            # The risk state is read while the old trade still counts (once per run), and the amended
            # plan must pass the gate without it before the old entry is canceled: a refused
            # amendment leaves the old trade working.
            state = self._risk_state(ctx)
            trial = replace(state, open_symbols=set(state.open_symbols))
            self._release(trial, old)
            try:
                self._gate(plan, trial)
                self._check_market(plan)  # a stale amendment leaves the old entry working
            except RejectedError as exc:
                with self.db.transaction():
                    row = self._claim(decision_id)
                    if row is None:
                        return Outcome("skipped", "claimed by another run")
                    return self._refuse(ctx, row, f"{exc}; trade {old['id']} left working", code=exc.code)
            result = protector.cancel_entry(old["id"], ExitReason.AMENDED.value, reason=f"AMEND decision {decision_id}")
            if result == "deferred":
                return Outcome("deferred", "cancel not confirmed by the broker yet")
            if result != "cancelled":
                with self.db.transaction():
                    row = self._claim(decision_id)
                    if row is None:
                        return Outcome("skipped", "claimed by another run")
                    after = self.db.get_by_id("trade_journal", old["id"])
                    return self._refuse(ctx, row, f"trade {old['id']} entry filled {after['actual_qty']} @ "
                                                  f"{after['actual_entry']} before the cancel: nothing new placed, "
                                                  "the position stays protected", code="ALREADY_FILLED")
            self._release(state, old)
        return self._new_trade(ctx, decision_id, reconciler, replaces=old)

    def _latest_amendment(self, trade: Row, decision_id: int) -> Row:
        """The trade an AMEND really amends: a decision naming a trade that an earlier AMEND already
        replaced amends that replacement (followed down the chain), so the earlier replacement's
        entry is canceled instead of left working beside the new one. A replacement placed by this
        same decision (a crash after its cancel) is not followed: the decision finishes its own work."""
        seen = {trade["id"]}
        while trade["status"] == TradeStatus.CANCELLED.value and trade.get("exit_reason") == ExitReason.AMENDED.value:
            successors = [t for t in self.db.query("trade_journal", {"replaces_trade_journal_id": trade["id"]},
                                                   order_by="id")
                          if t["initial_analysis_id"] != decision_id and t["id"] not in seen]
            if not successors:
                return trade
            trade = successors[-1]
            seen.add(trade["id"])
        return trade

    def _close(self, ctx: RunContext, decision_id: int, protector: Protector) -> Outcome:
        trade, ended = self._claim_open_trade(ctx, decision_id, "close")
        if trade is None:
            assert ended is not None
            return ended
        if not ctx.market.is_open:
            reason = "market closed: a CLOSE is sent as a market order in the session; waiting for the next run"
            self._note_deferred(ctx, decision_id, reason)
            return Outcome("deferred", reason)
        result = protector.flatten(trade["id"], ExitReason.CLOSE_REQUESTED.value,
                                   entry_reason=ExitReason.CANCEL_REQUESTED.value,
                                   urgency=self.settings.monitor.exit_urgency_close)
        if result == "deferred":
            return Outcome("deferred", "cancel of the protection not confirmed yet")
        with self.db.transaction():
            row = self._claim(decision_id)
            if row is None:
                return Outcome("skipped", "claimed by another run")
            after = self.db.get_by_id("trade_journal", trade["id"])
            if result == "exit_submitted":
                urgency = self.settings.monitor.exit_urgency_close
                how = "market sell sent" if urgency == "CRITICAL" else f"{urgency} exit (limit, then market) sent"
                reason = f"trade {trade['id']}: protection canceled, {how}"
                self._finish(ctx, row, accepted=True, reason=reason, trade_id=trade["id"])
                return Outcome("closing", reason)
            if result == "exiting":
                # Already closing (an earlier CLOSE, the day-end exit, or this decision before a
                # crash): nothing was sent now, and the record says so.
                exits = [r for r in self.db.query("order_execution", {"trade_journal_id": trade["id"],
                                                                      "order_type": OrderType.EXIT.value},
                                                  order_by="id")
                         if r["order_status"] not in lifecycle.TERMINAL_ORDER_STATUSES]
                working = ", ".join(f"{r['client_order_id']} ({r['order_status']})" for r in exits) or "an exit order"
                reason = (f"trade {trade['id']} is already closing: its exit {working} works on the shares; "
                          "no second sell sent")
                self._finish(ctx, row, accepted=True, reason=reason, trade_id=trade["id"], code="ALREADY_CLOSING")
                return Outcome("closing", reason)
            if result == "cancelled":
                reason = f"trade {trade['id']} had no shares: its entry was canceled instead"
                self._finish(ctx, row, accepted=True, reason=reason, trade_id=trade["id"])
                return Outcome("cancelled", reason)
            if result == "closed":
                return self._refuse(ctx, row, f"trade {trade['id']} is already {after['status']}: nothing to close",
                                    code="NOTHING_TO_CLOSE")
            return self._refuse(ctx, row, f"trade {trade['id']}: the broker refused the exit; protection restored "
                                          "(see audit_event)", code="CLOSE_FAILED")

    def _amend_levels(self, ctx: RunContext, decision_id: int, protector: Protector) -> Outcome:
        """A levels-only AMEND: the open position's stop, target or trailing distance changes and
        its broker-held protection moves with it (``Protector.change_levels``, under the trade's lock)."""
        def position_with_valid_levels(row: Row, trade: Row) -> Outcome | None:
            if trade["status"] != TradeStatus.POSITION.value:
                return self._refuse(ctx, row, f"trade {trade['id']} is {trade['status']}: a levels-only AMEND needs "
                                              "an open position (an unfilled entry is amended with a full plan)",
                                    code="NOT_A_POSITION")
            try:
                parse_levels(row, trade)
            except RejectedError as exc:
                return self._refuse(ctx, row, exc)
            return None

        trade, ended = self._claim_open_trade(ctx, decision_id, "amend", position_with_valid_levels)
        if trade is None:
            assert ended is not None
            return ended
        row = self.db.get_by_id("analysis_decision", decision_id)
        assert row is not None
        change = parse_levels(row, trade)
        result = protector.change_levels(trade["id"], change.changes, reason=f"AMEND decision {decision_id} (levels)")
        if result == "deferred":
            return Outcome("deferred", "the protection's change is not confirmed by the broker yet")
        with self.db.transaction():
            row = self._claim(decision_id)
            if row is None:
                return Outcome("skipped", "claimed by another run")
            levels = ", ".join(f"{key} {'removed' if value is None else value}"
                               for key, value in change.changes.items())
            if result in ("changed", "unchanged"):
                reason = f"trade {trade['id']}: {levels}" + (" (already so)" if result == "unchanged" else
                                                              "; the broker-held protection moved with them")
                self._finish(ctx, row, accepted=True, reason=reason, trade_id=trade["id"])
                return Outcome("amended", reason)
            if result == "exiting":
                return self._refuse(ctx, row, f"trade {trade['id']} is being closed: its exit works on the shares; "
                                              "levels not changed", code="ALREADY_CLOSING")
            if result == "not_open":
                return self._refuse(ctx, row, f"trade {trade['id']} holds no shares any more: levels not changed",
                                    code="NOTHING_TO_AMEND")
            return self._refuse(ctx, row, f"trade {trade['id']}: the broker refused to move the protection to "
                                          f"{levels}; the levels are recorded and the position keeps a stop (see "
                                          "audit_event)", code="AMEND_FAILED")

    def carry_out_for_monitor(self, ctx: RunContext, reconciler: Reconciler, protector: Protector) -> None:
        """The decisions the order monitor carries out within its run, instead of waiting for the
        executor's 09:45 run: the operator console's CLOSE decisions (in the session only: a CLOSE
        sells at the market) and every levels-only AMEND. The same path as the executor's own run
        (claim, trading state, trade lock, audit), counted as ``decision_<outcome>``."""
        rows = self.db.execute_query(
            'SELECT id, ticker, primary_action, decision FROM analysis_decision WHERE executed = false '
            'AND "Approve" = true AND upper(btrim(primary_action)) IN (\'CLOSE\', \'AMEND\') ORDER BY created_at, id')
        wanted = [r["id"] for r in rows if is_levels_only(r) or (
            str(r["primary_action"]).strip().upper() == "CLOSE" and is_from_console(r) and ctx.market.is_open)]
        for decision_id in wanted:
            bind_log_fields(decision_id=decision_id)
            try:
                outcome = self._handle(ctx, decision_id, reconciler, protector)
            except TransientError as exc:
                ctx.summary.warn(f"decision {decision_id} deferred, retried next run: {exc}")
                self._note_deferred(ctx, decision_id, f"transient failure, retried next run: {exc}")
                raise
            except Exception as exc:  # a bug or the unexpected: this decision waits, the run goes on
                logger.exception("%s: decision %s failed", ctx.summary.program, decision_id)
                ctx.summary.warn(f"decision {decision_id}: {type(exc).__name__}: {exc}")
                self._note_deferred(ctx, decision_id, f"unexpected error, retried next run: {type(exc).__name__}: "
                                                      f"{exc}")
                continue
            ctx.summary.add(f"decision_{outcome.kind}")
            logger.info("%s: decision %s -> %s%s", ctx.summary.program, decision_id, outcome.kind,
                        f" ({outcome.reason})" if outcome.reason else "")

    # ------------------------------------------------------------------ NO_ACTION

    def _no_action(self, ctx: RunContext, row: Row) -> Outcome:
        """Inside the claim's transaction: one more day for the referenced trade."""
        try:
            trade = self._referenced_trade(row)
        except RejectedError as exc:
            if exc.code != "NO_TRADE_NAMED":  # it names a trade that does not exist, or names it badly
                return self._refuse(ctx, row, exc)
            self._finish(ctx, row, accepted=True, reason="NO_ACTION without a referenced trade: nothing to update")
            return Outcome("no_action", "no trade referenced")
        if trade["status"] not in (TradeStatus.ORDERED.value, TradeStatus.POSITION.value):
            self._finish(ctx, row, accepted=True, reason=f"trade {trade['id']} is {trade['status']}: days_open "
                                                          "not changed", trade_id=trade["id"])
            return Outcome("no_action", f"trade {trade['id']} not open")
        # days_open is counted from the broker's calendar (trading days since the entry fill), not
        # by decisions: a review recounts it, so the decision's record shows the true figure.
        book = TradeBook(self.db, ctx.audit)
        today = ctx.market.trading_date
        book.count_days_open(trading_dates(self.broker, book.first_entry_date([trade["id"]]), today), today,
                             [trade["id"]])
        days_open = self.db.get_by_id("trade_journal", trade["id"])["days_open"]
        if days_open != trade["days_open"]:
            ctx.audit.record("trade", trade["id"], audit.TRADE_UPDATED, symbol=trade["symbol"], old=trade["days_open"],
                             new=days_open, reason=f"NO_ACTION decision {row['id']}: days_open recounted from the "
                                                   "broker's calendar")
        self._finish(ctx, row, accepted=True, reason=f"trade {trade['id']} days_open {days_open}",
                     trade_id=trade["id"])
        return Outcome("no_action", f"trade {trade['id']} days_open {days_open}")

    # ------------------------------------------------------------------ --dry-run

    def _dry_run(self, ctx: RunContext, decision_id: int) -> Outcome:
        """Validate, size and gate one decision; change nothing."""
        row = self.db.get_by_id("analysis_decision", decision_id)
        if row is None:
            return Outcome("skipped", "gone")
        action = str(row.get("primary_action") or "").strip().upper()
        try:
            verdict = self._state_verdict(ctx, row, action) if action in ("NEW_TRADE", "CANCEL", "AMEND",
                                                                          "CLOSE") else None
            if verdict is not None:
                return Outcome("would_hold" if verdict.kind == "held" else "would_refuse", verdict.reason)
            if is_levels_only(row):
                trade = self._referenced_trade(row)
                change = parse_levels(row, trade)
                return Outcome("would_amend_levels", f"trade {trade['id']} ({trade['status']}): "
                                                     + ", ".join(f"{k} {v}" for k, v in change.changes.items()))
            if action in ("NEW_TRADE", "AMEND"):
                plan = parse_plan(row)
                state = self._risk_state(ctx)
                old = self._referenced_trade(row) if action == "AMEND" else None
                trial = replace(state, open_symbols=set(state.open_symbols))
                if old is not None:
                    _check_amendment(plan, old)
                    if old["status"] != TradeStatus.ORDERED.value:
                        raise RejectedError(f"trade {old['id']} is {old['status']}: the amendment needs an "
                                            "unfilled entry")
                    self._release(trial, old)
                sizing, notional = self._gate(plan, trial)
                quote_checked, quote_check = self._check_market(plan)
                if old is not None:
                    self._release(state, old)
                state.accept(plan.symbol, notional)
                request = entry_request(plan, sizing.qty, entry_client_order_id(
                    self.settings.monitor.client_order_prefix, row))
                return Outcome("would_place", f"{request.order_class} buy {request.qty} {request.symbol} limit "
                                              f"{request.limit_price} stop {request.stop_loss_price}"
                                              + (f" target {request.take_profit_price}" if request.take_profit_price
                                                 else "") + f" tif {request.time_in_force} ({sizing.method})"
                                              + (f", replacing trade {old['id']}" if old is not None else "")
                                              + ("" if quote_checked else f"; {quote_check}"))
            if action in ("CANCEL", "CLOSE"):
                trade = self._referenced_trade(row)
                return Outcome(f"would_{action.lower()}", f"trade {trade['id']} ({trade['status']})")
            if action == "NO_ACTION":
                return Outcome("would_no_action", "days_open recounted")
            raise RejectedError(f"unknown primary_action {row.get('primary_action')!r}")
        except RejectedError as exc:
            return Outcome("would_refuse", str(exc))


def _check_amendment(plan: TradePlan, old: Row) -> None:
    """An amendment changes the plan of the same symbol's trade."""
    if plan.symbol != old["symbol"]:
        raise RejectedError(f"AMEND of trade {old['id']} ({old['symbol']}) names another symbol {plan.symbol}",
                            code="INVALID_DECISION")


def unfinished_work(db: Any) -> str | None:
    """Why the executor's latest run left approved decisions for later (one deferred by a broker
    or database outage or the rate limit, or the run stopped early), or None. The scheduler's
    ``order_executor_retry`` job runs the executor again only then, every few minutes during the
    session, so a 429 or an outage at 09:45 does not leave the day's decisions for the next 09:45."""
    last = db.execute_one("SELECT id, outcome, counts, error FROM program_run WHERE program = %s "
                          "AND outcome IN ('success', 'warning', 'failed') ORDER BY id DESC LIMIT 1", (PROGRAM,))
    if last is None:
        return None
    deferred = int((last["counts"] or {}).get("deferred") or 0)
    if last["outcome"] != "failed" and not last["error"] and not deferred:
        return None
    pending = db.execute_one('SELECT count(*) AS n FROM analysis_decision WHERE executed = false AND "Approve" = true')
    if not pending or not pending["n"]:
        return None
    why = f"{deferred} deferred" if deferred else (last["error"] or "it failed")
    return f"run {last['id']} ended {last['outcome']} ({why}); {pending['n']} approved decision(s) wait"


def run_once(db: Any, broker: Broker, now: MarketTime | None = None, settings: Settings | None = None, *,
             dry_run: bool = False, sleep: Callable[[float], None] = time.sleep) -> RunSummary:
    """One executor run; ``now`` fixes the market time (tests), else the broker's clock is read.
    ``sleep`` is how it waits between cancel confirmations."""
    return OrderExecutor(db, broker, settings, clock=fixed_clock(now) if now else None, dry_run=dry_run,
                         sleep=sleep).run()


def main(argv: list[str] | None = None) -> int:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dry-run", action="store_true",
                            help="validate, size and risk-check every pending decision and print what would be "
                                 "sent; changes nothing")

    return main_for("order_executor", (__doc__ or "").split("\n\n")[0],
                    lambda db, broker, settings, args: OrderExecutor(db, broker, settings, dry_run=args.dry_run),
                    argv, add_arguments)


if __name__ == "__main__":
    sys.exit(main())
