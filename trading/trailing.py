"""Trailing stops: the broker-held stop of a trade follows the highest price seen, upward only.

Design (Alpaca has no trailing leg in a bracket or OCO, and refuses a second sell of the same
shares): the trade keeps its ordinary protection — the bracket's or the repair's stop leg, held
at the broker for the whole quantity at every moment — and the position monitor *ratchets* that
leg's stop price up by replacing it (``PATCH /v2/orders/{id}``) whenever the high-water mark has
risen far enough that the trailed stop is at least one tick above the current one. A replace
changes the price of the order that already protects the shares, so no share is ever without a
stop, and the take-profit leg of an OCO stays as it is.

- The high-water mark is the highest current price (the quote's mid, as the position is valued)
  seen at a position-monitor run since the entry, starting at the entry price; it is kept in
  ``trade_journal.high_water_mark``. Prices between two runs are not seen: the trail follows the
  10-minute valuation, not every tick (Alpaca's own ``trailing_stop`` order type would, but it
  cannot be a leg of the OCO that also holds the target).
- Trailed stop: ``hwm * (1 - trailing_stop_pct/100)`` or ``hwm - trail_price``, rounded *down* to
  the tick; it never goes below the current stop and must stay below the bid (a sell stop above
  the market would trigger at once).
- Every move is recorded (audit ``STOP_RAISED`` with old and new stop and the mark), the new leg
  is adopted as the trade's stop (``exit_reason`` ``TRAILING_STOP``, so the exit says why), and
  the position row points at it. Intent first: the row's exit reason is set before the replace
  is sent; an unclear answer is resolved by the next order-monitor run's look-up of the old
  order (its ``replaced_by`` is adopted like any replacement).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from trading import lifecycle
from trading.broker import Broker, Quote
from trading.errors import BrokerRejectedError, TransientError
from trading.lifecycle import ExitReason, OrderType
from trading.pricing import ZERO, display_price, mid_price, tick_size

logger = logging.getLogger(__name__)

HUNDRED = Decimal("100")
STOP_RAISED = "STOP_RAISED"
Row = dict[str, Any]


def trailed_stop(high_water_mark: Decimal, *, pct: Decimal | None, price: Decimal | None) -> Decimal:
    """The stop a trail of ``pct`` percent (or ``price`` dollars) puts below the mark, rounded down
    to the tick (a stop never rounds up toward the market)."""
    if pct is not None:
        raw = high_water_mark * (HUNDRED - pct) / HUNDRED
    elif price is not None:
        raw = high_water_mark - price
    else:
        raise ValueError("a trail needs a percent or a price")
    tick = tick_size(raw)
    return (raw / tick).to_integral_value(rounding=ROUND_FLOOR) * tick


@dataclass(frozen=True)
class Ratchet:
    """What one look at a trailing trade decided."""

    trade_id: int
    symbol: str
    high_water_mark: Decimal
    old_stop: Decimal | None
    new_stop: Decimal | None   # None: the stop stays

    @property
    def moves(self) -> bool:
        return self.new_stop is not None


class TrailingStops:
    """Raises the stops of trailing trades; run by the position monitor after valuation."""

    def __init__(self, db: Any, broker: Broker, protector: Any, *, now: dt.datetime,
                 count: Any = None, warn: Any = None) -> None:
        self.db = db
        self.broker = broker
        self.protector = protector
        self.now = now
        self.count = count or (lambda *_args: None)
        self.warn = warn or (lambda _note: None)

    @property
    def audit(self) -> Any:
        return self.protector.audit

    def trailing_trades(self) -> list[Row]:
        """Open trades with a trail, with their position (one query)."""
        return self.db.execute_query(
            "SELECT t.*, p.qty AS position_qty, p.avg_entry_price FROM trade_journal t "
            "JOIN position_tracking p ON p.trade_journal_id = t.id "
            "WHERE t.status = %s AND (t.trailing_stop_pct IS NOT NULL OR t.trail_price IS NOT NULL) ORDER BY t.id",
            (lifecycle.TradeStatus.POSITION.value,))

    def ratchet_all(self, quotes: dict[str, Quote]) -> list[Ratchet]:
        """Look at every trailing trade with a quote; raise the stops that the mark allows."""
        done: list[Ratchet] = []
        trades = self.trailing_trades()
        if not trades:
            return done
        # Every trailing trade's stop rows in one query, not one per trade.
        stops: dict[int, list[Row]] = {t["id"]: [] for t in trades}
        for row in self.db.query("order_execution", {"trade_journal_id": list(stops),
                                                     "order_type": OrderType.STOP_LOSS.value}, order_by="id"):
            stops[row["trade_journal_id"]].append(row)
        for trade in trades:
            quote = quotes.get(trade["symbol"])
            if quote is None or mid_price(quote.bid, quote.ask) is None:
                continue
            try:
                done.append(self.ratchet(trade, quote, stops[trade["id"]]))
            except TransientError as exc:
                self.warn(f"trade {trade['id']} {trade['symbol']}: trailing stop not moved this run: {exc}")
                self.count("trailing_deferred")
        return done

    def ratchet(self, trade: Row, quote: Quote, stop_rows: list[Row]) -> Ratchet:
        """Raise the mark to the current price, and the stop to the trail when it moved a tick."""
        price = mid_price(quote.bid, quote.ask)
        assert price is not None
        previous = trade.get("high_water_mark")
        start = Decimal(trade.get("actual_entry") or trade.get("avg_entry_price") or price)
        mark = max(Decimal(previous) if previous is not None else start, price)
        if previous is None or mark > Decimal(previous):
            self.db.update("trade_journal", trade["id"], {"high_water_mark": mark})
        stops = [r for r in stop_rows
                 if r["order_status"] not in lifecycle.TERMINAL_ORDER_STATUSES
                 and r["order_status"] != lifecycle.PENDING and r.get("alpaca_order_id")]
        if len(stops) != 1:
            # No stop (a repair is due: the order monitor's business) or several (being rebuilt).
            return Ratchet(trade["id"], trade["symbol"], mark, None, None)
        stop = stops[0]
        current = Decimal(stop["stop_price"])
        target = trailed_stop(mark, pct=_dec(trade.get("trailing_stop_pct")), price=_dec(trade.get("trail_price")))
        below_market = quote.bid > ZERO and target < quote.bid
        if target <= current or not below_market:
            return Ratchet(trade["id"], trade["symbol"], mark, current, None)
        return self._raise(trade, stop, current, target, mark)

    def _raise(self, trade: Row, stop: Row, current: Decimal, target: Decimal, mark: Decimal) -> Ratchet:
        with self.db.trade_lock(trade["id"]) as taken:
            if not taken:
                self.warn(f"trade {trade['id']}: another program is changing its orders; stop raised next run")
                return Ratchet(trade["id"], trade["symbol"], mark, current, None)
            if stop.get("exit_reason") != ExitReason.TRAILING_STOP.value:
                # Intent before the network call: the stop leg (and whatever replaces it) now
                # exits the trade as a trailing stop.
                self.db.update("order_execution", stop["id"], {"exit_reason": ExitReason.TRAILING_STOP.value})
            def record_move(replacement: Any) -> None:
                self.audit.record("trade", trade["id"], STOP_RAISED, symbol=trade["symbol"],
                                  old=display_price(current), new=display_price(target),
                                  reason=f"trailing stop: high {mark}, stop {current} -> {target}",
                                  details={"high_water_mark": mark, "old_order": stop["alpaca_order_id"],
                                           "new_order": replacement.id})

            try:
                replacement = self.protector.replace_and_record(trade["id"], stop, stop_price=target,
                                                                also=record_move)
            except BrokerRejectedError as exc:
                # Filled, canceled or triggered meanwhile: the order monitor records what happened.
                self.warn(f"trade {trade['id']} {trade['symbol']}: stop not raised to {target}: {exc}")
                self.count("trailing_refused")
                return Ratchet(trade["id"], trade["symbol"], mark, current, None)
            self.protector.point_position(self.protector.view(trade["id"]))
        logger.info("trailing stop: trade %s %s high %s: stop %s -> %s (order %s)", trade["id"], trade["symbol"],
                    mark, current, target, replacement.id)
        self.count("trailing_raised")
        return Ratchet(trade["id"], trade["symbol"], mark, current, target)


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)
