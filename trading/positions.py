"""Broker positions against the database: the one place where a symbol's open trades are compared
with the shares the broker holds, and outside changes are booked.

Used by position_monitor for every symbol, and by the protection code before any sell (exit,
stop, target, OCO, flatten, repair, day-end exit) so every sell is sized from the broker's
position read at that moment, never from the database alone.

Like with like: the trades' open orders are synced by their own ids first (direct look-ups),
then the broker's position is read, so a fill during the run is in both or in neither. A
difference left is confirmed by a second sync-then-read before it is booked:

- fewer shares at the broker: sold or removed outside the system; taken from the oldest trades
  first, priced by the filled sells of the symbol the database does not know (each used once),
  else at the last known price; exit reason MANUAL_EXIT. A trade left with nothing is CLOSED and
  its remaining orders canceled; one left with fewer shares has its protection resized at once.
- more shares at the broker: bought outside. Fills are attributed only by order ids, never by
  symbol, so no trade takes them: recorded once per quantity (ORPHAN_POSITION), never adopted,
  never sold.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from trading import audit, lifecycle
from trading.broker import Broker, BrokerOrder
from trading.errors import NotFoundError
from trading.lifecycle import ExitReason, TradeStatus
from trading.pricing import ZERO

if TYPE_CHECKING:
    from trading.protection import Protector

logger = logging.getLogger(__name__)

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

@dataclass(frozen=True)
class _OutsideFill:
    """(Part of) a filled sell the system did not place."""

    order_id: str
    qty: Decimal
    price: Decimal
    filled_at: dt.datetime | None


class PositionReconciler:
    """Compares one symbol's open trades with the broker's position and books what differs."""

    def __init__(self, db: Any, broker: Broker, protector: Protector, *, count: Callable[..., None],
                 warn: Callable[[str], None]) -> None:
        self.db = db
        self.broker = broker
        self.protector = protector
        self.reconciler = protector.reconciler
        self.audit = protector.audit
        self.now = protector.now
        self.count = count
        self.warn = warn

    def positions(self, symbol: str | None = None) -> list[Row]:
        """Open positions with their trades' columns; one symbol's only when ``symbol`` is given.
        Trades of another broker account are not this account's to compare (``trading.accounts``)."""
        return [row for row in self.db.execute_query(POSITIONS_SQL, {"symbol": symbol})
                if row["trade_journal_id"] not in self.protector.foreign]

    def held(self, symbol: str) -> Decimal:
        """The shares of ``symbol`` the broker holds right now (a short counts as none)."""
        position = self.broker.get_position(symbol)
        return position.qty if position is not None and position.qty > ZERO else ZERO

    def reconcile(self, symbol: str, broker_qty: Decimal | None = None, *, resize: bool = True,
                  rows: list[Row] | None = None) -> Decimal:
        """Bring the symbol's open trades in line with the broker's position; returns the shares the
        broker holds (read after the sync). ``broker_qty``: a position already read this run (the
        position monitor's one listing); ``rows``: the symbol's positions read with it (one query
        for every symbol instead of one per symbol: the two are compared like with like, and any
        difference is read again below before anything is booked); ``resize``: a trade left with
        fewer shares gets its protection resized here (the protection code passes False: it sizes
        its own order next)."""
        rows = self.positions(symbol) if rows is None else rows
        if broker_qty is None:
            broker_qty = self.held(symbol)
        db_qty = sum((Decimal(r["qty"]) for r in rows), ZERO)
        if broker_qty == db_qty:
            return broker_qty
        # A fill order_monitor has not recorded yet explains most differences: sync first, every
        # trade of the symbol by its own orders' ids (an ORDERED trade's entry fill belongs to
        # that trade, never to another trade of the same symbol).
        ordered = [t["id"] for t in self.db.query("trade_journal", {"status": TradeStatus.ORDERED.value,
                                                                    "symbol": symbol}, order_by="id")
                   if t["id"] not in self.protector.foreign]
        trade_ids = list(dict.fromkeys([row["trade_journal_id"] for row in rows] + ordered))
        # Compare like with like: the rows were just brought up to the broker's orders, so the
        # broker's position is read again after them (a fill during the run is in both or in
        # neither). A difference left is confirmed by a second sync-then-read before it is
        # booked as an outside change, so a fill landing between the two calls is not one.
        for _ in range(2):
            for trade_id in trade_ids:
                self._sync_trade_orders(trade_id)
            broker_qty = self.held(symbol)
            rows = self.positions(symbol)
            db_qty = sum((Decimal(r["qty"]) for r in rows), ZERO)
            if broker_qty == db_qty:
                self.count("synced_from_orders")
                return broker_qty
        if broker_qty < db_qty:
            kept = self._shares_gone(rows, broker_qty, db_qty, resize=resize)
            if kept < broker_qty:  # the trades' shares were sold and people bought again: not adopted
                self._shares_added(symbol, rows, broker_qty, kept)
        else:
            self._shares_added(symbol, rows, broker_qty, db_qty)
        return broker_qty

    def _sync_trade_orders(self, trade_id: int) -> None:
        """Look up the trade's open orders directly (one call per order group: the root comes with
        its nested legs) and apply what the broker says."""
        rows = self.reconciler.orders.for_trade(trade_id)
        roots = sorted({r.get("parent_alpaca_order_id") or r["alpaca_order_id"] for r in rows
                        if r["order_status"] not in lifecycle.TERMINAL_ORDER_STATUSES and r.get("alpaca_order_id")})
        for root in roots:
            root_row = self.reconciler.orders.by_alpaca_id(root)
            if root_row is None:
                continue
            try:
                order = self.broker.get_order(root)
            except NotFoundError:
                continue
            result = self.protector.record(trade_id, root_row["id"], order)
            if result.closed:
                self.count("closed_by_exit_order")

    def _shares_gone(self, rows: list[Row], broker_qty: Decimal, db_qty: Decimal, *, resize: bool) -> Decimal:
        """The broker holds fewer shares than the database and none of the trades' own orders explain
        it: they were sold (or removed) outside the system.

        The missing shares are taken from the oldest trades first. Each is priced by the filled
        sells of the symbol the database does not know, oldest first, every sell used once (what
        was used is kept in the QUANTITY_MISMATCH audit row's ``outside_fills``); shares no such
        sell explains are priced at the last known price. Exit reason MANUAL_EXIT. A trade left
        with nothing is CLOSED and its remaining orders canceled; one left with fewer shares has
        its protection resized here, at once.

        The shares gone are at least what those sells sold (up to the trades' shares), not just the
        net difference: sold in the app and then bought again, the trades are closed by the sale
        and the shares bought are people's own (returned as more than the trades keep). Returns
        the shares the trades keep.
        """
        symbol = rows[0]["symbol"]
        pool = self._outside_sells(symbol, min((r["entry_date"] for r in rows if r.get("entry_date")), default=None))
        gone = max(db_qty - broker_qty, min(db_qty, sum((fill.qty for fill in pool), ZERO)))
        kept = db_qty - gone
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
                trade = self.reconciler.trades.lock(trade_id)
                if trade is None or trade["status"] != TradeStatus.POSITION.value:
                    continue
                self.audit.record("trade", trade_id, audit.QUANTITY_MISMATCH, symbol=symbol, old=current,
                                  new=new_qty, reason=f"{reason}; {how}",
                                  details={"outside_fills": [{"order_id": part.order_id, "qty": part.qty,
                                                              "price": part.price} for part in parts],
                                           "unexplained_qty": unexplained, "last_known_price": last_known})
                pieces = [(part.qty, part.price, part.filled_at or self.now, f"sold outside (order {part.order_id})")
                          for part in parts]
                if unexplained > ZERO:
                    pieces.append((unexplained, last_known, self.now, "gone at the broker with no filled sell, "
                                                                      "priced at the last known price"))
                for qty, price, when, source in pieces:
                    closed = self.reconciler.trades.apply_exit_fill(trade, qty, price, when,
                                                                    ExitReason.MANUAL_EXIT.value,
                                                                    source=f"{reason}: {source}")
            self.warn(f"trade {trade_id} {symbol}: {reason} ({how})")
            if closed:
                self.count("closed_outside")
                leftovers = [r for r in self.reconciler.orders.for_trade(trade_id)
                             if r["order_status"] in lifecycle.OPEN_ORDER_STATUSES]
                if leftovers:
                    self.protector.cancel_and_confirm(trade_id, leftovers,
                                                      reason="position closed outside: remaining orders go")
            else:
                self.count("quantity_mismatch")
                if resize:
                    outcome = self.protector.ensure(trade_id)  # resize the protection now, not next monitor run
                    self.count(f"protection_{outcome}")
        return kept

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

    def _shares_added(self, symbol: str, rows: list[Row], broker_qty: Decimal,
                      db_qty: Decimal) -> None:
        """The broker holds more shares than the database even after every trade of the symbol was
        synced by its own orders' ids: shares bought outside the system. Fills are attributed only
        by order ids, never by symbol, so no trade takes them (its quantity, P&L and protection stay
        its own): recorded once per quantity, reported by the health check, never adopted, never
        sold; an operator decides."""
        extra = broker_qty - db_qty
        self.count("unexplained_shares")
        reason = (f"broker holds {broker_qty} {symbol}, the open trades {db_qty}: {extra} shares no order of this "
                  "system explains (bought outside?): not adopted, not sold; an operator decides")
        self.warn(reason)
        last = self.db.execute_one(
            "SELECT new_value FROM audit_event WHERE event = %s AND symbol = %s ORDER BY id DESC LIMIT 1",
            (audit.ORPHAN_POSITION, symbol))
        if last is not None and last["new_value"] == str(extra):
            return
        logger.warning("%s", reason)
        self.audit.record("broker_position", None, audit.ORPHAN_POSITION, symbol=symbol, new=extra, reason=reason,
                         details={"broker_qty": broker_qty, "database_qty": db_qty,
                                  "trade_journal_ids": [r["trade_journal_id"] for r in rows]})
