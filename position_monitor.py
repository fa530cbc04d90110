#!/usr/bin/env python3
"""position_monitor: live position values, and the broker as the truth.

Runs every 10 minutes 09:30-16:00 ET and at 18:15 ET under the scheduler, or by hand::

    python position_monitor.py [--test-mode] [--json]

One run, under its advisory lock:

1. **Read the broker once**: all positions (one call), the latest quotes of every symbol the
   database holds (one call), the account (one call), the calendar since the first entry
   (one call). If the broker cannot be reached the run ends with a warning and changes nothing.
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
   - the broker holds more shares: bought outside the system. Fills are attributed by their
     orders' ids only, never by symbol, so no trade takes them: recorded once per quantity as
     ORPHAN_POSITION, never adopted, never sold.
   Like with like: the trades' orders (ORDERED trades' entries included) are synced first, then
   the broker's position is read again; a difference is booked only when a second
   sync-then-read confirms it. This reconciliation lives in ``trading.positions``, which the
   protection code also runs before every sell.
   - a broker position the database does not know is an orphan: recorded in the audit table
     (once per quantity) and reported by the health check; never adopted, never sold.
3. **Revalue** every position: price = (bid + ask) / 2, or the one side present; no quote →
   the position keeps its previous values and a warning is logged (never zeroed).
4. **Days open**: ``trade_journal.days_open`` of every trade, closed ones included, is the
   number of the broker's trading days after the entry fill's date up to the exit's date (or
   today while open), from the broker's calendar (one call per run); 0 for a trade never filled.
5. **Snapshot** the portfolio (cash, positions value, equity, unrealized P&L, realized P&L
   today) in ``portfolio_snapshot``: one row per run, the equity curve.
5. **Breakers**: the daily-loss breaker on the account read in step 1 (equity against the previous
   close: FLATTEN at ``DAILY_LOSS_LIMIT``) and the reconciliation breaker on what step 2 found
   (an unknown position, a short: REDUCE_ONLY until someone resumes); see ``trading.breakers``.
   The trading state otherwise changes nothing here: values and records are kept in every state.
"""

from __future__ import annotations

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from config import Settings, load_settings
from trading import audit
from trading.accounts import AccountGuard
from trading.breakers import Breakers, LossAtStake
from trading.broker import Broker, BrokerPosition, Quote
from trading.errors import TransientError
from trading.lifecycle import TradeStatus
from trading.market_time import MarketTime, trading_dates
from trading.positions import POSITIONS_SQL, PositionReconciler
from trading.pricing import ZERO, mid_price, money
from trading.program import ProgramRunner, RunContext, RunSummary, fixed_clock, main_for
from trading.protection import Protector
from trading.reconcile import Reconciler
from trading.trades import TradeBook
from trading.trailing import TrailingStops

logger = logging.getLogger(__name__)

PROGRAM = "position_monitor"

Row = dict[str, Any]

REVALUE_SQL = """
    UPDATE position_tracking p
    SET current_price = v.price, market_value = v.market_value, unrealized_pnl = v.pnl,
        unrealized_pnl_pct = v.pnl_pct, last_updated = %(now)s
    FROM unnest(%(ids)s::bigint[], %(prices)s::numeric[], %(values)s::numeric[], %(pnls)s::numeric[],
                %(pcts)s::numeric[]) AS v(id, price, market_value, pnl, pnl_pct)
    WHERE p.id = v.id
"""


class PositionMonitor:
    """Revalues positions, reconciles them with the broker and snapshots the portfolio."""

    name = PROGRAM
    #: The loss breaker is checked after the valuation, with the account this run reads anyway.
    loss_breaker_at_start = LossAtStake.NEVER

    def __init__(self, db: Any, broker: Broker, settings: Settings | None = None,
                 clock: Callable[[], MarketTime] | None = None, *,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.db = db
        self.broker = broker
        self.settings = settings or load_settings()
        self.clock = clock
        self.sleep = sleep
        self._foreign: frozenset[int] = frozenset()

    def run(self) -> RunSummary:
        """One run under the position monitor's advisory lock."""
        return ProgramRunner(self, self.db, self.broker, self.settings, clock=self.clock).run()

    def execute(self, ctx: RunContext) -> None:
        positions = self.db.execute_query(POSITIONS_SQL, {"symbol": None})
        # Everything the run needs from the broker is read before the first write: an outage
        # here ends the run having changed nothing.
        held = {p.symbol: p for p in self.broker.list_positions()}
        symbols = sorted({p["symbol"] for p in positions})
        quotes = self.broker.get_latest_quotes(symbols) if symbols else {}
        account = self.broker.get_account()
        trades = TradeBook(self.db, ctx.audit)
        calendar = trading_dates(self.broker, trades.first_entry_date(), ctx.market.trading_date)
        ctx.summary.add("positions", len(positions))

        reconciler = Reconciler(self.db, ctx.audit)
        protector = Protector(self.db, self.broker, reconciler, self.settings, now=ctx.now, warn=ctx.summary.warn,
                              sleep=self.sleep or time.sleep, count=ctx.summary.add)
        # Trades placed in another broker account are never reconciled against this one.
        protector.foreign = AccountGuard(self.db, self.broker, ctx.audit, ctx.summary.warn).foreign_trades()
        ctx.summary.add("other_account_trades", len(protector.foreign))
        positions = [row for row in positions if row["trade_journal_id"] not in protector.foreign]
        self._foreign = protector.foreign
        book = PositionReconciler(self.db, self.broker, protector, count=ctx.summary.add, warn=ctx.summary.warn)
        by_symbol: dict[str, list[Row]] = defaultdict(list)
        for row in positions:
            by_symbol[row["symbol"]].append(row)
        for symbol, symbol_rows in by_symbol.items():
            position = held.get(symbol)
            # One symbol's failure (an outage on its look-ups, a bug) is recorded and the batch goes on:
            # the other symbols are reconciled and the snapshot is written (invariant 6).
            try:
                book.reconcile(symbol, position.qty if position else ZERO, rows=symbol_rows)
            except Exception as exc:  # recorded per symbol, retried next run
                self._record_symbol_failure(ctx, symbol, exc)
        self._shorts(ctx, held)
        self._orphans(ctx, held, set(by_symbol))
        self._revalue(ctx, quotes)
        # Trailing stops follow the prices this run valued at (trading/trailing.py).
        TrailingStops(self.db, self.broker, protector, now=ctx.now, count=ctx.summary.add,
                      warn=ctx.summary.warn).ratchet_all(quotes)
        # After the reconciliation, so trades it closed count to their exit date.
        ctx.summary.add("days_open_updated", trades.count_days_open(calendar, ctx.market.trading_date))
        self._snapshot(ctx, account)
        # The breakers that depend on what this run found: the loss (valued just now) and the
        # reconciliation's critical findings. A trip applies from the next program run.
        breakers = Breakers(self.db, self.settings, ctx.audit, warn=ctx.summary.warn)
        breakers.check_reconciliation()
        breakers.check_daily_loss(account, ctx.market)

    # ------------------------------------------------------------------ reconciliation

    def _record_symbol_failure(self, ctx: RunContext, symbol: str, exc: Exception) -> None:
        """Note a symbol the run could not reconcile (warning, count, audit row) and go on."""
        transient = isinstance(exc, TransientError)
        reason = f"{symbol} not reconciled this run, retried next run: {type(exc).__name__}: {exc}"
        if transient:
            logger.warning("%s: %s", PROGRAM, reason)
        else:
            logger.exception("%s: %s", PROGRAM, reason)
        ctx.summary.add("symbols_failed")
        ctx.summary.warn(reason)
        try:
            ctx.audit.record("position", None, audit.RECONCILE_FAILED, symbol=symbol, reason=reason,
                             details={"error": type(exc).__name__, "transient": transient})
        except TransientError:
            logger.warning("%s: could not record the failure of %s (database unavailable)", PROGRAM, symbol)

    def _shorts(self, ctx: RunContext, held: dict[str, BrokerPosition]) -> None:
        """A short position at the broker (never opened by this system): recorded once per quantity;
        a critical disagreement that trips the reconciliation breaker."""
        for symbol in sorted(s for s, p in held.items() if p.qty < ZERO):
            position = held[symbol]
            ctx.summary.add("shorts")
            last = self.db.execute_one(
                "SELECT new_value FROM audit_event WHERE event = %s AND symbol = %s ORDER BY id DESC LIMIT 1",
                (audit.SHORT_POSITION, symbol))
            if last is not None and last["new_value"] == str(position.qty):
                continue
            reason = f"broker holds a short position of {position.qty} {symbol}: a sell beyond the shares held"
            logger.error("%s: %s", PROGRAM, reason)
            ctx.summary.warn(reason)
            ctx.audit.record("broker_position", None, audit.SHORT_POSITION, symbol=symbol, new=position.qty,
                             reason=reason, details={"avg_entry_price": position.avg_entry_price})

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
        for row in self.db.execute_query(POSITIONS_SQL, {"symbol": None}):
            if row["trade_journal_id"] in self._foreign:
                continue  # another account's position: this account's quotes do not value it
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
