#!/usr/bin/env python3
"""position_monitor: live position values, and the broker as the truth.

Runs every 10 minutes 09:30-16:00 ET and at 18:15 ET under the scheduler, or by hand::

    python position_monitor.py [--test-mode] [--json]

One run, under its advisory lock:

1. **Read the broker once**: all positions (one call), the latest quotes of every symbol the
   database holds (one call), the account (one call). If the broker cannot be reached the run
   ends with a warning and changes nothing.
2. **Reconcile**, the broker being the truth, symbol by symbol:
   - the broker holds fewer shares than the database: the trades' open orders are synced
     first (a stop or take-profit fill order_monitor has not seen yet closes the trade with
     its own exit reason, STOPPED_OUT or PROFIT_TAKEN, at its fill price). What remains
     missing was sold or removed outside the system: the shares are taken from the oldest
     trades first and priced by the filled sells of the symbol that the database does not
     know (each used once, at its own fill price; the use is kept in the QUANTITY_MISMATCH
     audit row), else at the last known price; exit reason MANUAL_EXIT. A trade left with
     nothing is CLOSED with its P&L, its position row deleted and its remaining orders
     canceled; one left with fewer shares keeps the broker's quantity and its protection is
     resized here, at once (not left to order_monitor).
   - the broker holds more shares: the newest trade takes the broker's quantity (recorded as
     QUANTITY_MISMATCH) and its protection is resized here, at once.
   - a broker position the database does not know is an orphan: recorded in the audit table
     (once per quantity) and reported by the health check; never adopted, never sold.
3. **Revalue** every position: price = (bid + ask) / 2, or the one side present; no quote →
   the position keeps its previous values and a warning is logged (never zeroed).
4. **Snapshot** the portfolio (cash, positions value, equity, unrealized P&L, realized P&L
   today) in ``portfolio_snapshot``: one row per run, the equity curve.
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
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from config import Settings, load_settings
from trading import audit, lifecycle
from trading.broker import Broker, BrokerOrder, BrokerPosition, Quote
from trading.errors import NotFoundError
from trading.lifecycle import ExitReason, TradeStatus
from trading.market_time import MarketTime
from trading.pricing import ZERO, mid_price, money
from trading.program import ProgramRunner, RunContext, RunSummary, fixed_clock, main_for
from trading.protection import Protector
from trading.reconcile import Reconciler
from trading.trades import TradeBook

logger = logging.getLogger(__name__)

PROGRAM = "position_monitor"

Row = dict[str, Any]

POSITIONS_SQL = """
    SELECT p.*, t.status AS trade_status, t.trade_style, t.entry_date, t.actual_entry
    FROM position_tracking p JOIN trade_journal t ON t.id = p.trade_journal_id
    WHERE t.status = 'POSITION' AND (%(symbol)s::text IS NULL OR p.symbol = %(symbol)s)
    ORDER BY p.symbol, t.entry_date, p.trade_journal_id
"""

#: Outside sells already used to price earlier quantity changes of a symbol (order id, quantity).
USED_OUTSIDE_FILLS_SQL = f"""
    SELECT f->>'order_id' AS order_id, sum((f->>'qty')::numeric) AS qty
    FROM audit_event a, jsonb_array_elements(coalesce(a.details->'outside_fills', '[]'::jsonb)) f
    WHERE a.event = '{audit.QUANTITY_MISMATCH}' AND a.symbol = %s
    GROUP BY 1
"""
#: Outside sells are listed from this long before the oldest entry (``after`` is exclusive and
#: compares submission times); only those filled at or after the entry count.
OUTSIDE_SELL_MARGIN = dt.timedelta(minutes=1)

REVALUE_SQL = """
    UPDATE position_tracking p
    SET current_price = v.price, market_value = v.market_value, unrealized_pnl = v.pnl,
        unrealized_pnl_pct = v.pnl_pct, last_updated = %(now)s
    FROM unnest(%(ids)s::bigint[], %(prices)s::numeric[], %(values)s::numeric[], %(pnls)s::numeric[],
                %(pcts)s::numeric[]) AS v(id, price, market_value, pnl, pnl_pct)
    WHERE p.id = v.id
"""


@dataclass(frozen=True)
class _OutsideFill:
    """(Part of) a filled sell the system did not place."""

    order_id: str
    qty: Decimal
    price: Decimal
    filled_at: dt.datetime | None


class PositionMonitor:
    """Revalues positions, reconciles them with the broker and snapshots the portfolio."""

    name = PROGRAM

    def __init__(self, db: Any, broker: Broker, settings: Settings | None = None,
                 clock: Callable[[], MarketTime] | None = None, *,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.db = db
        self.broker = broker
        self.settings = settings or load_settings()
        self.clock = clock
        self.sleep = sleep

    def run(self) -> RunSummary:
        """One run under the position monitor's advisory lock."""
        return ProgramRunner(self, self.db, self.broker, self.settings, clock=self.clock).run()

    def execute(self, ctx: RunContext) -> None:
        positions = self._positions()
        # Everything the run needs from the broker is read before the first write: an outage
        # here ends the run having changed nothing.
        held = {p.symbol: p for p in self.broker.list_positions()}
        symbols = sorted({p["symbol"] for p in positions})
        quotes = self.broker.get_latest_quotes(symbols) if symbols else {}
        account = self.broker.get_account()
        ctx.summary.add("positions", len(positions))

        reconciler = Reconciler(self.db, ctx.audit)
        protector = Protector(self.db, self.broker, reconciler, self.settings, now=ctx.now, warn=ctx.summary.warn,
                              sleep=self.sleep or time.sleep)
        by_symbol: dict[str, list[Row]] = defaultdict(list)
        for row in positions:
            by_symbol[row["symbol"]].append(row)
        for symbol, rows in by_symbol.items():
            self._reconcile_symbol(ctx, reconciler, protector, symbol, rows, held.get(symbol))
        self._orphans(ctx, held, set(by_symbol))
        self._revalue(ctx, quotes)
        self._snapshot(ctx, account)

    # ------------------------------------------------------------------ reconciliation

    def _positions(self, symbol: str | None = None) -> list[Row]:
        """Open positions with their trades' columns; one symbol's only when ``symbol`` is given."""
        return self.db.execute_query(POSITIONS_SQL, {"symbol": symbol})

    def _reconcile_symbol(self, ctx: RunContext, reconciler: Reconciler, protector: Protector, symbol: str,
                          rows: list[Row], broker_position: BrokerPosition | None) -> None:
        broker_qty = broker_position.qty if broker_position else ZERO
        db_qty = sum((Decimal(r["qty"]) for r in rows), ZERO)
        if broker_qty == db_qty:
            return
        # A fill order_monitor has not recorded yet explains most differences: sync first.
        for row in rows:
            self._sync_trade_orders(ctx, reconciler, protector, row["trade_journal_id"])
        rows = self._positions(symbol)
        db_qty = sum((Decimal(r["qty"]) for r in rows), ZERO)
        if broker_qty == db_qty:
            ctx.summary.add("synced_from_orders")
            return
        if broker_qty < db_qty:
            self._shares_gone(ctx, reconciler, protector, rows, broker_qty, db_qty)
        else:
            self._shares_added(ctx, reconciler, protector, rows, broker_qty, db_qty)

    def _sync_trade_orders(self, ctx: RunContext, reconciler: Reconciler, protector: Protector,
                           trade_id: int) -> None:
        """Look up the trade's open orders directly (one call per order group: the root comes with
        its nested legs) and apply what the broker says."""
        rows = reconciler.orders.for_trade(trade_id)
        roots = sorted({r.get("parent_alpaca_order_id") or r["alpaca_order_id"] for r in rows
                        if r["order_status"] not in lifecycle.TERMINAL_ORDER_STATUSES and r.get("alpaca_order_id")})
        for root in roots:
            root_row = reconciler.orders.by_alpaca_id(root)
            if root_row is None:
                continue
            try:
                order = self.broker.get_order(root)
            except NotFoundError:
                continue
            result = protector.record(trade_id, root_row["id"], order)
            if result.closed:
                ctx.summary.add("closed_by_exit_order")

    def _shares_gone(self, ctx: RunContext, reconciler: Reconciler, protector: Protector, rows: list[Row],
                     broker_qty: Decimal, db_qty: Decimal) -> None:
        """The broker holds fewer shares than the database and none of the trades' own orders explain
        it: they were sold (or removed) outside the system.

        The missing shares are taken from the oldest trades first. Each is priced by the filled
        sells of the symbol the database does not know, oldest first, every sell used once (what
        was used is kept in the QUANTITY_MISMATCH audit row's ``outside_fills``); shares no such
        sell explains are priced at the last known price. Exit reason MANUAL_EXIT. A trade left
        with nothing is CLOSED and its remaining orders canceled; one left with fewer shares has
        its protection resized here, at once.
        """
        symbol = rows[0]["symbol"]
        gone = db_qty - broker_qty
        pool = self._outside_sells(symbol, min((r["entry_date"] for r in rows if r.get("entry_date")), default=None))
        for row in rows:
            if gone <= ZERO:
                break
            current = Decimal(row["qty"])
            take = min(current, gone)
            gone -= take
            last_known = Decimal(row["current_price"] if row.get("current_price") is not None
                                 else row["avg_entry_price"])
            parts = self._take_from(pool, take)
            unexplained = take - sum((part.qty for part in parts), ZERO)
            trade_id = row["trade_journal_id"]
            new_qty = current - take
            if new_qty == ZERO:
                reason = f"broker holds {broker_qty} {symbol}, the database {db_qty}: closed outside the system"
            else:
                reason = f"broker holds {broker_qty} {symbol}, the database {db_qty}: the broker is the truth"
            how = ", ".join(f"{part.qty} sold outside @ {part.price} (order {part.order_id})" for part in parts)
            if unexplained > ZERO:
                how = ", ".join(filter(None, (how, f"{unexplained} with no filled sell at the broker, priced at the "
                                                   f"last known price {last_known}")))
            closed = False
            with self.db.transaction():
                trade = reconciler.trades.lock(trade_id)
                if trade is None or trade["status"] != TradeStatus.POSITION.value:
                    continue
                ctx.audit.record("trade", trade_id, audit.QUANTITY_MISMATCH, symbol=symbol, old=current, new=new_qty,
                                 reason=f"{reason}; {how}",
                                 details={"outside_fills": [{"order_id": part.order_id, "qty": part.qty,
                                                             "price": part.price} for part in parts],
                                          "unexplained_qty": unexplained, "last_known_price": last_known})
                pieces = [(part.qty, part.price, part.filled_at or ctx.now, f"sold outside (order {part.order_id})")
                          for part in parts]
                if unexplained > ZERO:
                    pieces.append((unexplained, last_known, ctx.now, "gone at the broker with no filled sell, "
                                                                     "priced at the last known price"))
                for qty, price, when, source in pieces:
                    closed = reconciler.trades.apply_exit_fill(trade, qty, price, when, ExitReason.MANUAL_EXIT.value,
                                                               source=f"{reason}: {source}")
            ctx.summary.warn(f"trade {trade_id} {symbol}: {reason} ({how})")
            if closed:
                ctx.summary.add("closed_outside")
                leftovers = [r for r in reconciler.orders.for_trade(trade_id)
                             if r["order_status"] in lifecycle.OPEN_ORDER_STATUSES]
                if leftovers:
                    protector.cancel_and_confirm(trade_id, leftovers,
                                                 reason="position closed outside: remaining orders go")
            else:
                ctx.summary.add("quantity_mismatch")
                outcome = protector.ensure(trade_id)  # resize the protection now, not at the next monitor run
                ctx.summary.add(f"protection_{outcome}")

    def _outside_sells(self, symbol: str, since: dt.datetime | None) -> list[_OutsideFill]:
        """Filled sells of ``symbol`` since ``since`` that the database does not know, oldest first,
        less what earlier reconciliations already used."""
        if since is None:
            return []
        known = {r["alpaca_order_id"] for r in self.db.query("order_execution", {"symbol": symbol})}
        used = {r["order_id"]: Decimal(r["qty"]) for r in self.db.execute_query(USED_OUTSIDE_FILLS_SQL, (symbol,))}
        orders: list[BrokerOrder] = self.broker.list_orders(status="closed", after=since - OUTSIDE_SELL_MARGIN,
                                                            symbols=[symbol], nested=False, direction="asc")
        fills = []
        for order in sorted(orders, key=lambda o: (o.filled_at or since, o.id)):
            if (order.side != "sell" or order.id in known or order.filled_qty <= ZERO
                    or order.filled_avg_price is None or (order.filled_at and order.filled_at < since)):
                continue
            left = order.filled_qty - used.get(order.id, ZERO)
            if left > ZERO:
                fills.append(_OutsideFill(order.id, left, order.filled_avg_price, order.filled_at))
        return fills

    @staticmethod
    def _take_from(pool: list[_OutsideFill], qty: Decimal) -> list[_OutsideFill]:
        """Up to ``qty`` shares from the front of ``pool`` (which shrinks accordingly)."""
        parts = []
        while qty > ZERO and pool:
            fill = pool[0]
            used = min(fill.qty, qty)
            parts.append(_OutsideFill(fill.order_id, used, fill.price, fill.filled_at))
            qty -= used
            if used == fill.qty:
                pool.pop(0)
            else:
                pool[0] = _OutsideFill(fill.order_id, fill.qty - used, fill.price, fill.filled_at)
        return parts

    def _shares_added(self, ctx: RunContext, reconciler: Reconciler, protector: Protector, rows: list[Row],
                      broker_qty: Decimal, db_qty: Decimal) -> None:
        """The broker holds more shares than the database: the newest trade takes the broker's
        quantity (at its own entry price), the change is recorded and the protection resized."""
        symbol = rows[0]["symbol"]
        reason = f"broker holds {broker_qty} {symbol}, the database {db_qty}: the broker is the truth"
        row = rows[-1]
        current = Decimal(row["qty"])
        new_qty = current + broker_qty - db_qty
        trade_id = row["trade_journal_id"]
        with self.db.transaction():
            trade = reconciler.trades.lock(trade_id)
            if trade is None or trade["status"] != TradeStatus.POSITION.value:
                return
            ctx.audit.record("trade", trade_id, audit.QUANTITY_MISMATCH, symbol=symbol, old=current, new=new_qty,
                             reason=reason)
            reconciler.trades.set_position_qty(trade, new_qty, ctx.now, reason)
        ctx.summary.add("quantity_mismatch")
        ctx.summary.warn(f"trade {trade_id} {symbol}: {reason}")
        outcome = protector.ensure(trade_id)  # resize the protection now, not at the next monitor run
        ctx.summary.add(f"protection_{outcome}")

    def _orphans(self, ctx: RunContext, held: dict[str, BrokerPosition], known: set[str]) -> None:
        """Broker positions no open trade explains: recorded once per quantity, never touched."""
        if not set(held) - known:
            return
        ordered = {r["symbol"] for r in self.db.query("trade_journal", {"status": TradeStatus.ORDERED.value})}
        for symbol in sorted(set(held) - known):
            position = held[symbol]
            if symbol in ordered:
                ctx.summary.add("awaiting_entry_sync")  # an entry fill order_monitor records next run
                continue
            ctx.summary.add("orphans")
            last = self.db.execute_one(
                "SELECT new_value FROM audit_event WHERE event = %s AND symbol = %s ORDER BY id DESC LIMIT 1",
                (audit.ORPHAN_POSITION, symbol))
            if last is not None and last["new_value"] == str(position.qty):
                continue
            reason = (f"broker holds {position.qty} {symbol} (avg {position.avg_entry_price}) that no open trade "
                      "explains: not adopted, not sold; an operator decides")
            logger.warning("%s: %s", PROGRAM, reason)
            ctx.summary.warn(reason)
            ctx.audit.record("broker_position", None, audit.ORPHAN_POSITION, symbol=symbol, new=position.qty,
                             reason=reason, details={"avg_entry_price": position.avg_entry_price,
                                                     "market_value": position.market_value})

    # ------------------------------------------------------------------ valuation and snapshot

    def _revalue(self, ctx: RunContext, quotes: dict[str, Quote]) -> None:
        updates: dict[str, list[Any]] = {"ids": [], "prices": [], "values": [], "pnls": [], "pcts": []}
        for row in self._positions():
            quote = quotes.get(row["symbol"])
            price = mid_price(quote.bid, quote.ask) if quote else None
            if price is None:
                logger.warning("%s: no quote for %s: position %s keeps its previous values", PROGRAM, row["symbol"],
                               row["id"])
                ctx.summary.add("price_unavailable")
                ctx.summary.warn(f"no quote for {row['symbol']}: previous values kept")
                continue
            values = TradeBook.position_values(Decimal(row["qty"]), Decimal(row["avg_entry_price"]), price)
            if all(row.get(k) == values[k] for k in ("current_price", "market_value", "unrealized_pnl")):
                continue
            updates["ids"].append(row["id"])
            updates["prices"].append(values["current_price"])
            updates["values"].append(values["market_value"])
            updates["pnls"].append(values["unrealized_pnl"])
            updates["pcts"].append(values["unrealized_pnl_pct"])
        if updates["ids"]:
            self.db.execute_update(REVALUE_SQL, {**updates, "now": ctx.now})
        ctx.summary.add("revalued", len(updates["ids"]))

    def _snapshot(self, ctx: RunContext, account: Any) -> None:
        totals = self.db.execute_one(
            "SELECT count(*) AS n, coalesce(sum(market_value), 0) AS value, coalesce(sum(unrealized_pnl), 0) AS pnl "
            "FROM position_tracking")
        realized = TradeBook(self.db, ctx.audit).realized_since(ctx.market.day_start)
        assert totals is not None
        self.db.insert("portfolio_snapshot", {
            "taken_at": ctx.now, "program_run_id": ctx.audit.run_id, "cash": account.cash,
            "positions_value": money(Decimal(totals["value"])), "equity": account.equity,
            "unrealized_pnl": money(Decimal(totals["pnl"])), "realized_pnl_today": money(realized),
            "open_positions": int(totals["n"])})


def run_once(db: Any, broker: Broker, now: MarketTime | None = None, settings: Settings | None = None,
             **options: Any) -> RunSummary:
    """One position-monitor run; ``now`` fixes the market time (tests), else the broker's clock is read."""
    return PositionMonitor(db, broker, settings, clock=fixed_clock(now) if now else None, **options).run()


def main(argv: list[str] | None = None) -> int:
    return main_for("position_monitor", (__doc__ or "").split("\n\n")[0],
                    lambda db, broker, settings, args: PositionMonitor(db, broker, settings), argv)


if __name__ == "__main__":
    sys.exit(main())
