"""From broker events to the trade record: one place that applies an order's state to its row
and the row's change to its trade.

``Reconciler.sync()`` is called by every program that learns something about an order (the
executor after a submission or a cancel, the order monitor for every order it lists, the
protection code after cancels and repairs, the position monitor when it finds an exit order).
It must run inside a transaction holding the trade's lock (``TradeBook.lock``), so the order
row, the trade and the position change together or not at all.

Consequences:
- ENTRY filled (in whole or part): the trade holds a position (``TradeBook.apply_entry_fill``);
- ENTRY ended with nothing filled: the trade is CANCELLED with the reason (expired, canceled,
  rejected, not found);
- STOP_LOSS / TAKE_PROFIT / EXIT filled: the position shrinks, the realised P&L is booked, and
  the trade is CLOSED when nothing is left; its remaining open orders are returned to be
  canceled after the transaction commits (never a network call inside a trade transaction).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from trading import audit, lifecycle
from trading.audit import Auditor
from trading.broker import BrokerOrder
from trading.lifecycle import OrderType, TradeStatus
from trading.orders import OrderBook, OrderChange
from trading.pricing import ZERO
from trading.trades import TradeBook

logger = logging.getLogger(__name__)

Row = dict[str, Any]


@dataclass
class SyncResult:
    """What one ``sync`` did to a trade."""

    changes: list[OrderChange] = field(default_factory=list)
    opened: bool = False
    closed: bool = False
    cancelled: bool = False
    to_cancel: list[Row] = field(default_factory=list)  # open orders left behind by a closed trade

    def merge(self, other: SyncResult) -> None:
        self.changes.extend(other.changes)
        self.opened |= other.opened
        self.closed |= other.closed
        self.cancelled |= other.cancelled
        self.to_cancel.extend(other.to_cancel)


def exit_reason_for(row: Row) -> str:
    """The reason a filled exit order gives its trade."""
    if row.get("exit_reason"):
        return str(row["exit_reason"])
    return lifecycle.EXIT_REASON_BY_ORDER_TYPE.get(row["order_type"], lifecycle.ExitReason.MANUAL_EXIT.value)


class Reconciler:
    """Applies broker order states to rows and their consequences to trades."""

    def __init__(self, db: Any, auditor: Auditor) -> None:
        self.db = db
        self.audit = auditor
        self.orders = OrderBook(db, auditor)
        self.trades = TradeBook(db, auditor)

    def sync(self, trade: Row, row: Row, order: BrokerOrder, *, now: dt.datetime,
             index: dict[str, BrokerOrder] | None = None, known: dict[str, Row] | None = None) -> SyncResult:
        """Record ``order`` on ``row`` (and its legs and replacement), then apply the consequences.

        ``index`` (broker orders by id) lets a replaced order's successor be adopted without a call;
        ``known`` (the trade's rows by broker id, read under the trade's lock) saves a query per leg.
        """
        result = SyncResult()
        change = self.orders.record(row, order, now=now)
        result.changes.append(change)
        self._apply(trade, row, change, now, result)
        # The successor before the legs: a replaced entry's fills live on its replacement, and its
        # legs (the stop that may have filled meanwhile) need the position those fills opened.
        # Legs first booked a stop's fill as a late fill of an ORDERED trade, then the entry's
        # fill opened a position the stop had already sold, and its "repair" sold a person's
        # shares (found by the chaos day, seed 1).
        if change.new_status == "replaced" and order.replaced_by and index and order.replaced_by in index:
            successor = index[order.replaced_by]
            successor_row = self.orders.adopt_replacement(trade, row, successor, now=now)
            result.merge(self.sync(trade, successor_row, successor, now=now, index=index, known=known))
        for leg in order.legs:
            leg_row = (known or {}).get(leg.id) or self.orders.ensure_leg(trade, order, leg, now=now)
            result.merge(self.sync(trade, leg_row, leg, now=now, index=index, known=known))
        return result

    def mark_missing(self, trade: Row, row: Row, max_misses: int, reason: str, now: dt.datetime) -> SyncResult:
        """One more miss for ``row``; when it becomes ``not_found``, apply that like any ending."""
        result = SyncResult()
        old_status = row["order_status"]
        if self.orders.record_missing(row, max_misses, reason, now):
            change = OrderChange(row["id"], row["order_type"], old_status, lifecycle.NOT_FOUND,
                                 filled_qty=Decimal(row.get("filled_qty") or 0), changed=True)
            result.changes.append(change)
            self._apply(trade, row, change, now, result)
        return result

    # -- consequences ----------------------------------------------------------------------

    def _apply(self, trade: Row, row: Row, change: OrderChange, now: dt.datetime, result: SyncResult) -> None:
        if change.anomaly or not change.changed:
            return
        when = row.get("filled_at") or now
        if row["order_type"] == OrderType.ENTRY.value:
            self._apply_entry(trade, row, change, when, now, result)
        elif change.fill_qty > ZERO:
            self._apply_exit(trade, row, change, when, result)

    def _apply_entry(self, trade: Row, row: Row, change: OrderChange, when: dt.datetime, now: dt.datetime,
                     result: SyncResult) -> None:
        if change.fill_qty > ZERO:
            if trade["status"] in (TradeStatus.ORDERED.value, TradeStatus.POSITION.value) or \
                    lifecycle.trade_may_reopen(trade["status"], trade.get("exit_reason")):
                opened = trade["status"] != TradeStatus.POSITION.value
                self.trades.apply_entry_fill(trade, row, change.fill_qty, when, change.fill_price)
                result.opened |= opened
            else:
                self._late_fill(trade, row, change)
        if change.status_changed and change.new_status in lifecycle.ENDED_UNFILLED_STATUSES:
            filled = change.filled_qty
            if filled == ZERO and trade["status"] == TradeStatus.ORDERED.value:
                # An entry we canceled on purpose carries the reason (CANCEL_REQUESTED, AMENDED, ...).
                chosen = row.get("exit_reason") if change.new_status == "canceled" else None
                reason = str(chosen or lifecycle.CANCEL_REASON_BY_ENTRY_STATUS[change.new_status])
                self.trades.cancel(trade, reason, row.get("canceled_at") or now,
                                   f"entry order {change.new_status} with nothing filled")
                result.cancelled = True
                # Its legs may outlive it for a moment (Alpaca cancels them after the parent:
                # ``pending_cancel``); they are confirmed ended so the finished trade has no live order.
                # Not for an entry the broker stopped showing (not_found): it may still be working.
                if change.new_status != lifecycle.NOT_FOUND:
                    result.to_cancel.extend(
                        other for other in self.orders.for_trade(trade["id"])
                        if other["id"] != row["id"] and other["order_status"] in lifecycle.OPEN_ORDER_STATUSES)
            elif filled > ZERO:
                self.audit.record("trade", trade["id"], audit.TRADE_UPDATED, symbol=trade["symbol"],
                                  reason=f"entry {change.new_status} with {filled} of {row['qty']} filled: "
                                         f"the filled shares are the position and get protection sized to them",
                                  details={"filled_qty": filled, "qty": row["qty"]})

    def _apply_exit(self, trade: Row, row: Row, change: OrderChange, when: dt.datetime, result: SyncResult) -> None:
        if trade["status"] != TradeStatus.POSITION.value:
            self._late_fill(trade, row, change)
            return
        assert change.fill_price is not None
        closed = self.trades.apply_exit_fill(trade, change.fill_qty, change.fill_price, when, exit_reason_for(row),
                                             source=f"{row['order_type']} order {row.get('alpaca_order_id')}",
                                             order_row_id=row["id"])
        if closed:
            result.closed = True
            result.to_cancel.extend(
                other for other in self.orders.for_trade(trade["id"])
                if other["id"] != row["id"] and other["order_status"] in lifecycle.OPEN_ORDER_STATUSES)

    def _late_fill(self, trade: Row, row: Row, change: OrderChange) -> None:
        """A fill on a trade that is already finished (for example closed outside the system and
        booked at the last known price): recorded for the operator, never counted twice."""
        reason = (f"{row['order_type']} order {row.get('alpaca_order_id')} filled {change.fill_qty} @ "
                  f"{change.fill_price} after the trade was {trade['status']}: recorded, P&L not changed")
        logger.warning("trade %s %s: %s", trade["id"], trade["symbol"], reason)
        self.audit.record("trade", trade["id"], audit.ORDER_ANOMALY, symbol=trade["symbol"], reason=reason,
                          details={"order_execution_id": row["id"], "fill_qty": change.fill_qty,
                                   "fill_price": change.fill_price})
