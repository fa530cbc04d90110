#!/usr/bin/env python3
"""order_monitor: every fill recorded, every position protected, every exit closed with exact P&L.

Runs every 5 minutes 09:30-16:00 ET and at 18:00 ET under the scheduler, or by hand::

    python order_monitor.py [--test-mode] [--json]

One run, under the monitor's advisory lock (a second run at the same time exits quietly):

1. **Sync.** The broker's orders are listed in pages of up to 500 (``status=all``, nested
   legs, from just before the oldest order the database still considers open). Only the
   orders the listing did not return are looked up directly, by id then by client order id;
   an order the broker keeps not finding becomes ``not_found`` after
   ``ORDER_NOT_FOUND_MAX_MISSES`` runs, with the reason, and is still looked up later, less
   often (``next_lookup_at``, doubling per miss): if it reappears its fills are applied.
   Each order is compared with its row in memory; only trades where something changed are
   written, through the transition table (``trading.lifecycle``): 250 trades per transaction,
   each trade's row locked before it changes, their rows read in three queries and their writes
   sent as multi-row statements (``trading.batch.TradeBatch``); a batch that fails is rolled back
   and applied again one trade per transaction.
   Consequences: an entry fill opens (or grows) the position; an entry that ends with
   nothing filled cancels the trade; an exit fill books P&L and closes the trade when no share
   is left, and its remaining sibling orders are canceled.
   Then the decisions that cannot wait for the executor's 09:45 run are carried out by the
   executor's own code path: CLOSE decisions recorded by the operator console (in the session)
   and levels-only AMENDs (a position's stop, target or trailing distance moved).
2. **Day-end exit.** From ``DAYTRADE_EXIT_MINUTES_BEFORE_CLOSE`` before the close (15:50, or
   12:50 on an early close) unfilled DAYTRADE entries are canceled and DAYTRADE positions are
   sold (protection canceled first), exit reason DAY_END_EXIT. A day trade found open on a
   later day is flattened at the first run in the session.
3. **Protection.** Every open position must end the run with a live broker-held stop for its
   whole quantity; missing or wrong-sized protection is replaced by one order group, sized from
   the broker's position read at that moment (nothing held: nothing sold, the trade is closed as
   outside). Repairs and exits hold the trade's lock (one program per trade); an unanswered
   submission is looked up by its client order id at once and resent with the same id.

The trading state (``trading_state``, read once at the start of the run) is obeyed: fills are
recorded and protection repaired in every state; the day-end exit is held back under HALTED
(count ``day_end_held_back``; the stop keeps protecting the shares); under FLATTEN (the account or
a symbol) every open trade of the scope is closed first (working orders canceled, shares sold at
market, exit reason FLATTENED; outside the session only unfilled entries are canceled) and the
scope becomes HALTED once nothing of it is open.

A broker outage or rate limit ends the run early with a warning; everything already committed
stays and the next run continues.
"""

from __future__ import annotations

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import datetime as dt
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from config import Settings, load_settings
from trading import audit, lifecycle
from trading.accounts import AccountGuard
from trading.audit import Auditor
from trading.batch import TradeBatch
from trading.breakers import LossAtStake
from trading.broker import Broker, BrokerOrder
from trading.errors import NotFoundError, UnknownStatusError
from trading.exits import Escalator
from trading.lifecycle import ExitReason, OrderType, TradeStatus
from trading.logs import log_context
from trading.market_time import MarketTime, eastern_date
from trading.orders import OrderBook
from trading.program import ProgramRunner, RunContext, RunSummary, fixed_clock, main_for
from trading.protection import ProtectionView, Protector
from trading.reconcile import Reconciler, SyncResult
from trading.state import ACCOUNT_SCOPE, ScopeState, TradingMode, record_trading_state

logger = logging.getLogger(__name__)

PROGRAM = "order_monitor"
#: The listing starts this long before the oldest open order's submission (clock skew margin).
LISTING_MARGIN = dt.timedelta(minutes=1)
#: A protective or exit intent still unanswered after this long never reached the broker.
STALE_INTENT = dt.timedelta(minutes=2)
#: How many replacements in a row the sync follows with direct look-ups.
MAX_REPLACEMENT_LINKS = 5
#: Trades whose changes are applied in one transaction (their row locks are held for its few
#: hundred milliseconds at most; another program's change to one of them waits that long).
SYNC_BATCH_TRADES = 250

Row = dict[str, Any]


class OrderMonitor:
    """Syncs orders, applies fills, flattens day trades and guards protection."""

    name = PROGRAM
    #: The loss breaker is checked at the start when trades hold shares (something to flatten).
    loss_breaker_at_start = LossAtStake.SHARES_HELD

    def __init__(self, db: Any, broker: Broker, settings: Settings | None = None,
                 clock: Callable[[], MarketTime] | None = None, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.db = db
        self.broker = broker
        self.settings = settings or load_settings()
        self.clock = clock
        self.sleep = sleep

    def run(self) -> RunSummary:
        """One run under the monitor's advisory lock."""
        return ProgramRunner(self, self.db, self.broker, self.settings, clock=self.clock).run()

    def execute(self, ctx: RunContext) -> None:
        reconciler = Reconciler(self.db, ctx.audit)
        protector = Protector(self.db, self.broker, reconciler, self.settings, now=ctx.now, warn=ctx.summary.warn,
                              sleep=self.sleep, count=ctx.summary.add)
        # Trades placed in another broker account are never reconciled against this one.
        protector.foreign = AccountGuard(self.db, self.broker, ctx.audit, ctx.summary.warn).foreign_trades()
        ctx.summary.add("other_account_trades", len(protector.foreign))
        self._sync(ctx, reconciler, protector)
        # The operator's Close and level changes (console/) are carried out now, by the executor's
        # own code path, instead of waiting for its 09:45 run.
        from order_executor import OrderExecutor

        OrderExecutor(self.db, self.broker, self.settings, sleep=self.sleep).carry_out_for_monitor(
            ctx, reconciler, protector)
        if ctx.state.flatten_scopes():
            self._flatten(ctx, protector)
        self._day_end(ctx, protector)
        # Escalating exits (trading/exits.py) take their next step when it is due.
        Escalator(self.db, self.broker, protector, now=ctx.now, count=ctx.summary.add,
                  warn=ctx.summary.warn).advance_all()
        self._protect(ctx, reconciler, protector)

    # ------------------------------------------------------------------ 1. sync

    def _sync(self, ctx: RunContext, reconciler: Reconciler, protector: Protector) -> None:
        rows = [row for row in reconciler.orders.open_rows(ctx.now) if row["trade_journal_id"] not in protector.foreign]
        ctx.summary.add("open_orders", len(rows))
        recheck = {row["id"] for row in rows if row["order_status"] == lifecycle.NOT_FOUND}
        if not rows:
            return
        index: dict[str, BrokerOrder] = {}
        by_client: dict[str, BrokerOrder] = {}

        def remember(order: BrokerOrder) -> None:
            for item in order.walk():
                index[item.id] = item
                if item.client_order_id:
                    by_client[item.client_order_id] = item

        submitted = [r["submitted_at"] for r in rows if r.get("alpaca_order_id") and r.get("submitted_at")]
        if submitted:
            for order in self.broker.list_orders_since(min(submitted) - LISTING_MARGIN):
                remember(order)
        ctx.summary.add("broker_orders_listed", len(index))

        missing: dict[int, str] = {}
        for row in rows:
            if self._lookup(row, index, by_client) is not None:
                continue
            found = self._direct_lookup(ctx, row, missing)
            if found is not None:
                remember(found)

        self._follow_replacements(rows, index, by_client, remember)

        by_trade: dict[int, list[Row]] = defaultdict(list)
        for row in rows:
            by_trade[row["trade_journal_id"]].append(row)
        changed = [trade_id for trade_id, trade_rows in sorted(by_trade.items(), key=lambda item: item[0] or 0)
                   if trade_id is not None
                   and any(row["id"] in missing or self._differs(row, index, by_client) for row in trade_rows)]
        for start in range(0, len(changed), SYNC_BATCH_TRADES):
            self._sync_batch(ctx, reconciler, protector, changed[start:start + SYNC_BATCH_TRADES], index, by_client,
                             missing, recheck)

    def _sync_batch(self, ctx: RunContext, reconciler: Reconciler, protector: Protector, trade_ids: list[int],
                    index: dict[str, BrokerOrder], by_client: dict[str, BrokerOrder], missing: dict[int, str],
                    recheck: set[int]) -> None:
        """Apply the broker's state to a batch of trades in one transaction, read and written in a
        few statements (``trading.batch.TradeBatch``): each trade's rows are locked (row locks, in id
        order) before anything of it changes, as in a transaction of its own. Should one trade fail,
        the batch rolls back whole and is replayed trade by trade (``_sync_trade``), so the trades
        before the failing one commit and the failure surfaces as before."""
        results: list[tuple[int, SyncResult]] = []
        if len(trade_ids) > 1:
            batch = TradeBatch(self.db)
            batched = Reconciler(batch, Auditor(batch, ctx.audit.program, ctx.audit.run_id))
            try:
                with self.db.transaction():
                    trades = batch.load(trade_ids)
                    for trade_id in trade_ids:
                        with log_context(trade_id=trade_id):
                            results.append((trade_id, self._apply_trade(ctx, batched, trades.get(trade_id), index,
                                                                        by_client, missing, recheck)))
                    batch.flush()
            except Exception as exc:  # replayed one trade per transaction below: the same outcome as before
                logger.warning("%s: a batch of %s trades rolled back (%s): applied one trade at a time", PROGRAM,
                               len(trade_ids), exc)
                results = []
        if not results:
            for trade_id in trade_ids:
                with log_context(trade_id=trade_id):
                    result = self._sync_trade(ctx, reconciler, trade_id, index, by_client, missing, recheck)
                self._count_sync(ctx, trade_id, result)
                self._cancel_leftovers(protector, trade_id, result)
            return
        for trade_id, result in results:
            self._count_sync(ctx, trade_id, result)
        # Network calls only after the batch's transaction committed (never inside a trade transaction).
        for trade_id, result in results:
            self._cancel_leftovers(protector, trade_id, result)

    @staticmethod
    def _cancel_leftovers(protector: Protector, trade_id: int, result: SyncResult) -> None:
        if result.to_cancel:
            with log_context(trade_id=trade_id):
                protector.cancel_and_confirm(trade_id, result.to_cancel,
                                             reason="trade closed: its remaining orders are canceled")

    def _follow_replacements(self, rows: list[Row], index: dict[str, BrokerOrder], by_client: dict[str, BrokerOrder],
                             remember: Callable[[BrokerOrder], None]) -> None:
        """Fetch the successors of our replaced orders that the listing did not return.

        A leg replaced more than once is no longer under its parent in the nested listing (only
        the latest is), so the order in between would be missing and its successor never adopted:
        the live stop would look absent and be "repaired" over a person's change. Rare, so one
        direct look-up per missing link, a few links at most.
        """
        frontier = [found for row in rows if (found := self._lookup(row, index, by_client)) is not None]
        tried: set[str] = set()
        for _ in range(MAX_REPLACEMENT_LINKS):
            wanted = sorted({o.replaced_by for o in frontier if o.status == "replaced" and o.replaced_by
                             and o.replaced_by not in index and o.replaced_by not in tried})
            if not wanted:
                return
            frontier = []
            for order_id in wanted:
                tried.add(order_id)
                try:
                    found = self.broker.get_order(order_id)
                except NotFoundError:
                    continue
                remember(found)
                frontier.append(found)

    @classmethod
    def _differs(cls, row: Row, index: dict[str, BrokerOrder], by_client: dict[str, BrokerOrder]) -> bool:
        found = cls._lookup(row, index, by_client)
        return found is not None and bool(OrderBook.differences(row, found))

    @staticmethod
    def _lookup(row: Row, index: dict[str, BrokerOrder], by_client: dict[str, BrokerOrder]) -> BrokerOrder | None:
        if row.get("alpaca_order_id") and row["alpaca_order_id"] in index:
            return index[row["alpaca_order_id"]]
        if row.get("client_order_id") and row["client_order_id"] in by_client:
            return by_client[row["client_order_id"]]
        return None

    def _direct_lookup(self, ctx: RunContext, row: Row, missing: dict[int, str]) -> BrokerOrder | None:
        """Find an order the listing did not return: by id, then by client order id."""
        if row.get("alpaca_order_id"):
            try:
                return self.broker.get_order(row["alpaca_order_id"])
            except NotFoundError:
                pass
        if row.get("client_order_id"):
            try:
                found = self.broker.get_order_by_client_id(row["client_order_id"])
                if found.order_class in ("bracket", "oto", "oco") and not found.legs:
                    found = self.broker.get_order(found.id)
                return found
            except NotFoundError:
                pass
        if row["order_status"] == lifecycle.PENDING:
            if row["order_type"] == OrderType.ENTRY.value:
                return None  # the executor owns its unanswered entries: it resends with the same id
            age = dt.datetime.now(dt.UTC) - row["created_at"]
            if age < STALE_INTENT:
                return None  # possibly still on its way (another program is sending it)
            missing[row["id"]] = "never reached the broker"
            return None
        missing[row["id"]] = "listing and direct look-ups found nothing"
        return None

    def _sync_trade(self, ctx: RunContext, reconciler: Reconciler, trade_id: int, index: dict[str, BrokerOrder],
                    by_client: dict[str, BrokerOrder], missing: dict[int, str],
                    recheck: set[int] | None = None) -> SyncResult:
        """Apply the broker's state to one trade's open orders (and its ``not_found`` orders due
        for another look-up, ``recheck``), in one transaction."""
        with self.db.transaction():
            return self._apply_trade(ctx, reconciler, reconciler.trades.lock(trade_id), index, by_client, missing,
                                     recheck)

    def _apply_trade(self, ctx: RunContext, reconciler: Reconciler, trade: Row | None, index: dict[str, BrokerOrder],
                     by_client: dict[str, BrokerOrder], missing: dict[int, str],
                     recheck: set[int] | None = None) -> SyncResult:
        """The body of ``_sync_trade`` on a locked ``trade`` (inside the caller's transaction)."""
        result = SyncResult()
        max_misses = self.settings.monitor.not_found_max_misses
        if trade is None:
            return result
        trade_id = trade["id"]
        rows = [r for r in reconciler.orders.for_trade(trade_id)
                if r["order_status"] not in lifecycle.TERMINAL_ORDER_STATUSES or r["id"] in (recheck or ())]
        # Entries first: an exit fill needs the position its entry opened.
        rows.sort(key=lambda r: (r["order_type"] != OrderType.ENTRY.value, r["id"]))
        known = {r["alpaca_order_id"]: r for r in rows if r.get("alpaca_order_id")}
        done: set[int] = set()
        for row in rows:
            if row["id"] in done:
                continue
            if row["id"] in missing:
                # A pending intent that never reached the broker is concluded at once; a
                # known order the broker stopped returning gets its configured misses.
                limit = 1 if row["order_status"] == lifecycle.PENDING else max_misses
                result.merge(reconciler.mark_missing(trade, row, limit, missing[row["id"]], ctx.now))
                continue
            order = self._lookup(row, index, by_client)
            if order is None:
                continue
            try:
                outcome = reconciler.sync(trade, row, order, now=ctx.now, index=index, known=known)
            except UnknownStatusError as exc:
                self._unknown_status(ctx, reconciler, row, exc)
                continue
            done.update(change.row_id for change in outcome.changes)
            result.merge(outcome)
        return result

    @staticmethod
    def _count_sync(ctx: RunContext, trade_id: int, result: SyncResult) -> None:
        for change in result.changes:
            if change.fill_qty:
                ctx.summary.add("fills")
            if change.status_changed:
                ctx.summary.add("orders_updated")
            if change.new_status == lifecycle.NOT_FOUND and change.status_changed:
                ctx.summary.warn(f"order {change.row_id} (trade {trade_id}) not found at the broker")
        ctx.summary.add("positions_opened", int(result.opened))
        ctx.summary.add("trades_closed", int(result.closed))
        ctx.summary.add("trades_cancelled", int(result.cancelled))

    def _unknown_status(self, ctx: RunContext, reconciler: Reconciler, row: Row, exc: UnknownStatusError) -> None:
        reason = f"{exc}: not guessed, the row keeps its status"
        logger.error("%s: order %s (%s): %s", PROGRAM, row["id"], row["symbol"], reason,
                     extra={"order_id": row.get("alpaca_order_id") or row.get("client_order_id"),
                            "symbol": row["symbol"]})
        ctx.summary.warn(f"order {row['id']}: {exc}")
        if row.get("error_message") != reason:
            reconciler.db.update("order_execution", row["id"], {"error_message": reason})
            reconciler.audit.record("order", row["id"], audit.ORDER_ANOMALY, symbol=row["symbol"], reason=reason)

    # ------------------------------------------------------------------ 2. day-end exit

    def _day_end(self, ctx: RunContext, protector: Protector) -> None:
        market = ctx.market
        if not market.is_open:
            return
        minutes = self.settings.schedule.daytrade_exit_minutes_before_close
        in_window = market.in_day_end_window(minutes)
        for trade in protector.reconciler.trades.with_status(TradeStatus.ORDERED.value, TradeStatus.POSITION.value):
            if trade["trade_style"] != "DAYTRADE" or trade["id"] in protector.foreign:
                continue
            # entry_date is the broker's fill time, on the market's clock
            overnight = trade["status"] == TradeStatus.POSITION.value and trade.get("entry_date") is not None \
                and eastern_date(trade["entry_date"]) < market.trading_date
            if not (in_window or overnight):
                continue
            mode = ctx.state.mode_for(trade["symbol"])
            if mode is TradingMode.FLATTEN:
                continue  # the flatten step owns it
            if mode is TradingMode.HALTED:
                # Nothing new goes to the broker while HALTED (its stop still protects it): the exit
                # waits for trading to resume, or for FLATTEN.
                ctx.summary.add("day_end_held_back")
                logger.info("%s: trade %s %s: day-end exit held back, trading is %s", PROGRAM, trade["id"],
                            trade["symbol"], ctx.state.describe(trade["symbol"]))
                continue
            why = "day-end exit" if in_window else "day trade left open overnight"
            if trade["status"] == TradeStatus.ORDERED.value:
                outcome = protector.cancel_entry(trade["id"], ExitReason.DAY_END_CANCEL.value,
                                                 reason=f"{why}: unfilled DAYTRADE entry canceled")
            else:
                # At the close a HIGH exit by default (limit at the bid, market at the next run); a
                # day trade found open the next morning is sold at the market at once.
                urgency = self.settings.monitor.exit_urgency_day_end if in_window else "CRITICAL"
                outcome = protector.flatten(trade["id"], ExitReason.DAY_END_EXIT.value,
                                            entry_reason=ExitReason.DAY_END_CANCEL.value, urgency=urgency)
            ctx.summary.add(f"day_end_{outcome}")
            logger.info("%s: trade %s %s %s: %s", PROGRAM, trade["id"], trade["symbol"], why, outcome)

    # ------------------------------------------------------------------ FLATTEN

    def _flatten(self, ctx: RunContext, protector: Protector) -> None:
        """Close every managed trade of the scopes in FLATTEN, then set those scopes HALTED.

        Each trade goes through ``Protector.flatten`` (its lock held; working orders canceled and
        confirmed first; the sell sized from the broker's position read then; exit reason
        FLATTENED). Outside the session only unfilled entries are canceled: a market sell would
        wait for the open with the stop already canceled, so positions keep their protection
        and are sold at the first run in the session. A scope becomes HALTED once none of its
        trades is open and none of their orders is open at the broker; until then it stays FLATTEN
        and the next run goes on. Broker positions no trade of ours explains are not touched.
        """
        state = ctx.state
        reason = ExitReason.FLATTENED.value
        trades = [t for t in protector.reconciler.trades.with_status(TradeStatus.ORDERED.value,
                                                                     TradeStatus.POSITION.value)
                  if state.flatten_requested(t["symbol"])]
        for trade in trades:
            why = f"FLATTEN: trading is {state.describe(trade['symbol'])}"
            if not ctx.market.is_open:
                if trade["status"] == TradeStatus.ORDERED.value:
                    outcome = protector.cancel_entry(trade["id"], reason, reason=f"{why}: unfilled entry canceled")
                else:
                    outcome = "waiting_for_session"
            else:
                outcome = protector.flatten(trade["id"], reason, entry_reason=reason)
            ctx.summary.add(f"flatten_{outcome}")
            logger.info("%s: trade %s %s %s: %s", PROGRAM, trade["id"], trade["symbol"], why, outcome)
        for scope in state.flatten_scopes():
            self._finish_flatten(ctx, scope)

    def _finish_flatten(self, ctx: RunContext, scope: ScopeState) -> None:
        """FLATTEN -> HALTED for ``scope`` when nothing of it is left open (else the next run goes on)."""
        symbol = None if scope.scope == ACCOUNT_SCOPE else scope.scope
        left = self.db.execute_query(
            "SELECT t.id, t.symbol, t.status, (SELECT count(*) FROM order_execution o WHERE o.trade_journal_id = t.id "
            "AND (o.order_status = ANY(%(open)s) OR o.order_status = 'pending')) AS open_orders "
            "FROM trade_journal t WHERE (t.status IN ('ORDERED', 'POSITION') "
            "OR EXISTS (SELECT 1 FROM order_execution o WHERE o.trade_journal_id = t.id "
            "AND (o.order_status = ANY(%(open)s) OR o.order_status = 'pending'))) "
            "AND (%(symbol)s::text IS NULL OR t.symbol = %(symbol)s)",
            {"open": sorted(lifecycle.OPEN_ORDER_STATUSES), "symbol": symbol})
        if left:
            ctx.summary.add("flatten_pending", len(left))
            ctx.summary.warn(f"FLATTEN ({scope.scope.lower() if symbol is None else symbol}) not finished: "
                             f"{len(left)} trade(s) still open or with open orders; the next run goes on")
            return
        closed = self.db.execute_one(
            "SELECT count(*) AS n FROM trade_journal WHERE exit_reason = %s AND updated_at >= %s "
            "AND (%s::text IS NULL OR symbol = %s)", (ExitReason.FLATTENED.value, scope.changed_at, symbol, symbol))
        record_trading_state(
            self.db, TradingMode.HALTED, scope=scope.scope, changed_by=PROGRAM, program=PROGRAM,
            run_id=ctx.audit.run_id, source=scope.source or "manual",
            reason=f"flatten finished: no open trade or order left (was FLATTEN: {scope.reason})",
            details={"flattened_trades": int(closed["n"]) if closed else 0},
            only_from=frozenset({TradingMode.FLATTEN}))
        ctx.summary.add("flatten_finished")
        logger.warning("%s: FLATTEN of %s finished: now HALTED until someone resumes trading", PROGRAM, scope.scope)

    # ------------------------------------------------------------------ 3. protection

    def _protect(self, ctx: RunContext, reconciler: Reconciler, protector: Protector) -> None:
        trades = [t for t in reconciler.trades.with_status(TradeStatus.POSITION.value)
                  if t["id"] not in protector.foreign]
        if not trades:
            return
        ids = [t["id"] for t in trades]
        positions = {p["trade_journal_id"]: p for p in
                     self.db.query("position_tracking", {"trade_journal_id": ids})}
        orders: dict[int, list[Row]] = defaultdict(list)
        for row in self.db.query("order_execution", {"trade_journal_id": ids}, order_by="id"):
            orders[row["trade_journal_id"]].append(row)
        pointers: dict[int, dict[str, Any]] = {}
        for trade in trades:
            view = ProtectionView(trade, positions.get(trade["id"]), orders[trade["id"]])
            if view.protected and not view.entry_working and not view.pending and not view.exits_open:
                # Protected as read above: at most point the position at its stop (a new position
                # from this run's fills), without reading everything again per trade; the pointers
                # of all such positions are written together below.
                stop, take_profit = protector.live_protection_ids(view)
                position = view.position
                if position is not None and (position.get("stop_loss_order_id"), position.get(
                        "take_profit_order_id")) != (stop, take_profit):
                    pointers[position["id"]] = {"stop_loss_order_id": stop, "take_profit_order_id": take_profit}
                ctx.summary.add("protection_protected")
                continue
            outcome = protector.ensure(trade["id"])
            ctx.summary.add(f"protection_{outcome}")
            if outcome in ("waiting",):
                ctx.summary.warn(f"trade {trade['id']} {trade['symbol']}: entry still working, filled shares wait "
                                 "for protection (PARTIAL_ENTRY_POLICY=wait)")
        self.db.update_many("position_tracking", pointers)


def run_once(db: Any, broker: Broker, now: MarketTime | None = None, settings: Settings | None = None,
             **options: Any) -> RunSummary:
    """One monitor run; ``now`` fixes the market time (tests), else the broker's clock is read."""
    return OrderMonitor(db, broker, settings, clock=fixed_clock(now) if now else None, **options).run()


def main(argv: list[str] | None = None) -> int:
    return main_for("order_monitor", (__doc__ or "").split("\n\n")[0],
                    lambda db, broker, settings, args: OrderMonitor(db, broker, settings), argv)


if __name__ == "__main__":
    sys.exit(main())
