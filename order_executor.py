#!/usr/bin/env python3
"""order_executor: every approved decision becomes exactly one protected entry order, or a
recorded refusal.

Runs once a day at 09:45 ET under the scheduler, or by hand::

    .venv/bin/python order_executor.py [--test-mode] [--dry-run] [--json]

Decisions are read with ``executed = false AND "Approve" = true`` and claimed one at a time
with ``FOR UPDATE SKIP LOCKED``; the whole run holds the executor's advisory lock.

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
the session). NO_ACTION adds one to the trade's ``days_open``.

Every decision ends with an audit row. Refused decisions (malformed, invalid, unknown trade,
risk limit, broker 403/422) are marked executed so they are not retried every day; transient
failures (broker or database outage) leave the decision for the next run.
"""

from __future__ import annotations

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from config import Settings, load_settings
from trading import audit
from trading.broker import Asset, Broker, BrokerOrder, OrderRequest
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
from trading.market_time import MarketTime
from trading.orders import entry_client_order_id
from trading.plan import TradePlan, parse_plan, referenced_ids
from trading.pricing import ZERO
from trading.program import ProgramRunner, RunContext, RunSummary, fixed_clock, main_for
from trading.protection import Protector, find_order
from trading.reconcile import Reconciler
from trading.risk import Reservation, RiskState, Sizing, check_entry, size_position
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


@dataclass
class Outcome:
    """How one decision ended in this run."""

    kind: str          # placed, refused, deferred, cancelled, amended, closing, no_action, skipped
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

    def __init__(self, db: Any, broker: Broker, settings: Settings | None = None,
                 clock: Callable[[], MarketTime] | None = None, *, dry_run: bool = False) -> None:
        self.db = db
        self.broker = broker
        self.settings = settings or load_settings()
        self.clock = clock
        self.dry_run = dry_run
        self._assets: dict[str, Asset] | None = None
        self._risk: RiskState | None = None

    def run(self) -> RunSummary:
        """One run under the executor's advisory lock."""
        return ProgramRunner(self, self.db, self.broker, self.settings, clock=self.clock, dry_run=self.dry_run).run()

    # ------------------------------------------------------------------ the run

    def execute(self, ctx: RunContext) -> None:
        ids = [row["id"] for row in self.db.execute_query(PENDING_DECISIONS_SQL)]
        ctx.summary.add("decisions", len(ids))
        if not ids:
            logger.info("%s: no approved decisions waiting", PROGRAM)
            return
        self._assets = None
        self._risk = None
        reconciler = Reconciler(self.db, ctx.audit)
        protector = Protector(self.db, self.broker, reconciler, self.settings, now=ctx.now, warn=ctx.summary.warn,
                              count=ctx.summary.add)
        outages = 0
        for decision_id in ids:
            bind_log_fields(decision_id=decision_id)  # every line about it says so (the harness resets it)
            try:
                outcome = self._dry_run(ctx, decision_id) if ctx.dry_run else \
                    self._handle(ctx, decision_id, reconciler, protector)
                outages = 0
            except TransientError as exc:
                outages += 1
                outcome = Outcome("deferred", str(exc))
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

    @staticmethod
    def _release(state: RiskState, trade: Row) -> None:
        """Take an unfilled trade that is being replaced out of the risk state."""
        state.open_trades -= 1
        state.exposure -= Decimal(trade["planned_entry"] or 0) * Decimal(trade["planned_qty"] or 0)
        state.open_symbols.discard(trade["symbol"])

    def _risk_state(self, ctx: RunContext) -> RiskState:
        if self._risk is None:
            account = self.broker.get_account()
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
        self._finish(ctx, row, accepted=False, reason=reason, code=code)
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
        if action == "NEW_TRADE":
            return self._new_trade(ctx, decision_id, reconciler, replaces=None)
        if action == "CANCEL":
            return self._cancel(ctx, decision_id, protector)
        if action == "AMEND":
            return self._amend(ctx, decision_id, reconciler, protector)
        return self._close(ctx, decision_id, protector)

    # ------------------------------------------------------------------ NEW_TRADE

    def _new_trade(self, ctx: RunContext, decision_id: int, reconciler: Reconciler, *,
                   replaces: Row | None) -> Outcome:
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
            if intent is None:
                try:
                    plan = parse_plan(row)
                    if replaces is not None:
                        _check_amendment(plan, replaces)
                    state = self._risk_state(ctx)
                    sizing, notional = self._gate(plan, state)
                except RejectedError as exc:
                    return self._refuse(ctx, row, exc)
                trade = reconciler.trades.create({
                    **plan.as_values(), "initial_analysis_id": row["id"], "planned_qty": sizing.qty,
                    "replaces_trade_journal_id": replaces["id"] if replaces else None})
                request = entry_request(plan, sizing.qty, coid)
                row_id = reconciler.orders.insert_intent(trade, OrderType.ENTRY.value, request)
                ctx.audit.record("decision", row["id"], audit.ORDER_INTENT, symbol=plan.symbol,
                                 reason=f"sized {sizing.qty} shares by {sizing.method}"
                                        + (f"; {sizing.note}" if sizing.note else ""),
                                 details={"trade_journal_id": trade["id"], "client_order_id": coid,
                                          "notional": notional})
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
            order = self._submit_or_find(request, intent_row)
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
            style = "bracket" if request.order_class == "bracket" else "OTO"
            reason = (f"{style} entry placed: buy {request.qty} {request.symbol} limit {request.limit_price}, "
                      f"stop {request.stop_loss_price}" + (f", target {request.take_profit_price}"
                                                           if request.take_profit_price else ""))
            if replaces is not None:
                reason += f"; replaces trade {replaces['id']}"
            self._finish(ctx, row, accepted=True, reason=reason, trade_id=trade["id"], order_id=order.id,
                         details={"client_order_id": request.client_order_id, "status": order.status})
        return Outcome("amended" if replaces is not None else "placed", reason)

    def _submit_or_find(self, request: OrderRequest, intent: Row | None) -> BrokerOrder:
        """Send the entry, unless a previous run already did: then look it up."""
        if intent is not None:
            try:
                return find_order(self.broker, intent.get("alpaca_order_id"), request.client_order_id)
            except NotFoundError:
                logger.info("%s: intent %s not at the broker: sending it now", PROGRAM, request.client_order_id)
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

    # ------------------------------------------------------------------ CANCEL, AMEND, CLOSE

    def _claim_open_trade(
            self, ctx: RunContext, decision_id: int, verb: str,
            check: Callable[[Row, Row], Outcome | None] | None = None) -> tuple[Row | None, Outcome | None]:
        """Claim the decision and find the open trade it names. Returns the trade, or the outcome
        when the decision ends here (refused: no such trade, already finished, or ``check`` says so,
        all within the claim's transaction)."""
        with self.db.transaction():
            row = self._claim(decision_id)
            if row is None:
                return None, Outcome("skipped", "claimed by another run")
            try:
                trade = self._referenced_trade(row)
            except RejectedError as exc:
                return None, self._refuse(ctx, row, exc)
            if trade["status"] in (TradeStatus.CANCELLED.value, TradeStatus.CLOSED.value):
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

        trade, ended = self._claim_open_trade(ctx, decision_id, "cancel", filled_already)
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
                                   entry_reason=ExitReason.CANCEL_REQUESTED.value)
        if result == "deferred":
            return Outcome("deferred", "cancel of the protection not confirmed yet")
        with self.db.transaction():
            row = self._claim(decision_id)
            if row is None:
                return Outcome("skipped", "claimed by another run")
            after = self.db.get_by_id("trade_journal", trade["id"])
            if result in ("exit_submitted", "exiting"):
                reason = f"trade {trade['id']}: protection canceled, market sell sent"
                self._finish(ctx, row, accepted=True, reason=reason, trade_id=trade["id"])
                return Outcome("closing", reason)
            if result == "cancelled":
                reason = f"trade {trade['id']} had no shares: its entry was canceled instead"
                self._finish(ctx, row, accepted=True, reason=reason, trade_id=trade["id"])
                return Outcome("cancelled", reason)
            if result == "closed":
                reason = f"trade {trade['id']} is already {after['status']}: nothing to close"
            else:
                reason = f"trade {trade['id']}: the broker refused the exit; protection restored (see audit_event)"
            return self._refuse(ctx, row, reason, code="CLOSE_FAILED")

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
        self.db.execute_update("UPDATE trade_journal SET days_open = days_open + 1, updated_at = now() WHERE id = %s",
                               (trade["id"],))
        ctx.audit.record("trade", trade["id"], audit.TRADE_UPDATED, symbol=trade["symbol"], old=trade["days_open"],
                         new=trade["days_open"] + 1, reason=f"NO_ACTION decision {row['id']}: days_open + 1")
        self._finish(ctx, row, accepted=True, reason=f"trade {trade['id']} days_open {trade['days_open'] + 1}",
                     trade_id=trade["id"])
        return Outcome("no_action", f"trade {trade['id']} days_open + 1")

    # ------------------------------------------------------------------ --dry-run

    def _dry_run(self, ctx: RunContext, decision_id: int) -> Outcome:
        """Validate, size and gate one decision; change nothing."""
        row = self.db.get_by_id("analysis_decision", decision_id)
        if row is None:
            return Outcome("skipped", "gone")
        action = str(row.get("primary_action") or "").strip().upper()
        try:
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
                if old is not None:
                    self._release(state, old)
                state.accept(plan.symbol, notional)
                request = entry_request(plan, sizing.qty, entry_client_order_id(
                    self.settings.monitor.client_order_prefix, row))
                return Outcome("would_place", f"{request.order_class} buy {request.qty} {request.symbol} limit "
                                              f"{request.limit_price} stop {request.stop_loss_price}"
                                              + (f" target {request.take_profit_price}" if request.take_profit_price
                                                 else "") + f" tif {request.time_in_force} ({sizing.method})"
                                              + (f", replacing trade {old['id']}" if old is not None else ""))
            if action in ("CANCEL", "CLOSE"):
                trade = self._referenced_trade(row)
                return Outcome(f"would_{action.lower()}", f"trade {trade['id']} ({trade['status']})")
            if action == "NO_ACTION":
                return Outcome("would_no_action", "days_open + 1")
            raise RejectedError(f"unknown primary_action {row.get('primary_action')!r}")
        except RejectedError as exc:
            return Outcome("would_refuse", str(exc))


def _check_amendment(plan: TradePlan, old: Row) -> None:
    """An amendment changes the plan of the same symbol's trade."""
    if plan.symbol != old["symbol"]:
        raise RejectedError(f"AMEND of trade {old['id']} ({old['symbol']}) names another symbol {plan.symbol}",
                            code="INVALID_DECISION")


def run_once(db: Any, broker: Broker, now: MarketTime | None = None, settings: Settings | None = None, *,
             dry_run: bool = False) -> RunSummary:
    """One executor run; ``now`` fixes the market time (tests), else the broker's clock is read."""
    return OrderExecutor(db, broker, settings, clock=fixed_clock(now) if now else None, dry_run=dry_run).run()


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
