"""Trades in the database: the life of a ``trade_journal`` row and its ``position_tracking`` row.

All trade changes go through ``TradeBook``, inside a transaction that holds the trade's row
lock (``lock()``), so the order monitor, the position monitor and the executor never
half-write or double-close a trade. Status changes are checked against
``trading.lifecycle.TRADE_TRANSITIONS`` and audited.

P&L bookkeeping (documented for operators in docs/operations.md):

- ``actual_entry`` / ``actual_qty``: the entry order's average fill price and filled quantity.
- Every exit fill (stop, take-profit, exit order, or shares gone at the broker) adds
  ``(fill_price - actual_entry) * fill_qty`` to ``realized_pnl`` (kept exact) and the quantity
  to ``exited_qty``, and reduces ``position_tracking.qty``. A take-profit that fills in parts
  therefore books its realised part in ``trade_journal.realized_pnl`` while the trade stays open.
- When nothing is left, the trade is CLOSED: ``exit_price`` = the quantity-weighted average of
  all exit fills, ``actual_pnl`` = ``realized_pnl`` rounded to the cent, which equals
  ``(exit_price - actual_entry) * actual_qty``.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from trading import audit, lifecycle
from trading.audit import Auditor
from trading.errors import RejectedError
from trading.lifecycle import TradeStatus
from trading.pricing import CENT, ZERO, money, pnl, pnl_pct

logger = logging.getLogger(__name__)

Row = dict[str, Any]

#: ``days_open``: the broker's trading days after the entry fill's date (US/Eastern) up to and
#: including the exit's date, or today while the trade is open. A trade entered and closed the
#: same day has 0; one bought Friday and sold Monday has 1; a trade never filled has 0. Only rows
#: whose count changes are written (a closed trade's count is final once computed).
DAYS_OPEN_SQL = """
    UPDATE trade_journal t SET days_open = c.days, updated_at = now()
    FROM (SELECT id, (SELECT count(*) FROM unnest(%(days)s::date[]) AS d(day)
                      WHERE d.day > (entry_date AT TIME ZONE 'America/New_York')::date
                        AND d.day <= coalesce((exit_date AT TIME ZONE 'America/New_York')::date,
                                              %(today)s::date))::integer AS days
          FROM trade_journal
          WHERE %(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[])) AS c
    WHERE t.id = c.id AND t.days_open IS DISTINCT FROM c.days
"""
_SIX_PLACES = Decimal("0.000001")


def average_price(value: Decimal) -> Decimal:
    """An average price in cents when it is a whole number of cents, else with as few decimals as
    represent it, at most 6 (``155.017``, ``10.016667``)."""
    if value == value.quantize(CENT):
        return value.quantize(CENT)
    return value.quantize(_SIX_PLACES, rounding=ROUND_HALF_UP).normalize()


class TradeBook:
    """Reads and changes trades and their positions for one program run."""

    def __init__(self, db: Any, auditor: Auditor) -> None:
        self.db = db
        self.audit = auditor

    # -- reading ----------------------------------------------------------------------------

    def lock(self, trade_id: int) -> Row | None:
        """The trade row, locked until the surrounding transaction ends."""
        assert self.db.in_transaction, "lock() must run inside db.transaction()"
        return self.db.get_by_id("trade_journal", trade_id, for_update=True)

    def get(self, trade_id: int) -> Row | None:
        return self.db.get_by_id("trade_journal", trade_id)

    def position(self, trade_id: int) -> Row | None:
        rows = self.db.query("position_tracking", {"trade_journal_id": trade_id})
        return rows[0] if rows else None

    def realized_since(self, start: dt.datetime) -> Decimal:
        """P&L realised by every sell filled since ``start`` (partial exits of open trades included),
        exact; the ``trade_fill`` ledger is dated by the broker's fill times."""
        row = self.db.execute_one("SELECT coalesce(sum(realized_pnl), 0) AS pnl FROM trade_fill "
                                  "WHERE side = 'sell' AND filled_at >= %s", (start,))
        return Decimal(row["pnl"]) if row else ZERO

    def with_status(self, *statuses: str) -> list[Row]:
        return self.db.query("trade_journal", {"status": list(statuses)}, order_by="id")

    # -- days open --------------------------------------------------------------------------

    def first_entry_date(self, trade_ids: list[int] | None = None) -> dt.date | None:
        """The US/Eastern date of the earliest entry fill (of ``trade_ids``, or of every trade):
        where the broker's calendar must start for ``count_days_open``."""
        row = self.db.execute_one(
            "SELECT (min(entry_date) AT TIME ZONE 'America/New_York')::date AS first FROM trade_journal "
            "WHERE entry_date IS NOT NULL AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))",
            {"ids": trade_ids})
        return row["first"] if row else None

    def count_days_open(self, trading_days: list[dt.date], today: dt.date,
                        trade_ids: list[int] | None = None) -> int:
        """Set ``days_open`` of every trade (or of ``trade_ids``) from the broker's trading days
        (``DAYS_OPEN_SQL``); ``trading_days`` must cover the first entry date to ``today``.
        Returns how many rows changed."""
        return self.db.execute_update(DAYS_OPEN_SQL, {"days": sorted(trading_days), "today": today,
                                                      "ids": trade_ids})

    # -- creating ---------------------------------------------------------------------------

    def create(self, values: dict[str, Any]) -> Row:
        """A new ORDERED trade."""
        trade_id = self.db.insert("trade_journal", {**values, "status": TradeStatus.ORDERED.value})
        trade = self.db.get_by_id("trade_journal", trade_id)
        assert trade is not None
        self.audit.record("trade", trade_id, audit.TRADE_STATUS, symbol=trade["symbol"], new=TradeStatus.ORDERED.value,
                          details={k: v for k, v in values.items() if v is not None})
        return trade

    # -- status -----------------------------------------------------------------------------

    def _set_status(self, trade: Row, new_status: str, values: dict[str, Any], reason: str) -> None:
        old = trade["status"]
        if not lifecycle.trade_transition_allowed(old, new_status):
            raise RejectedError(f"trade {trade['id']} cannot go from {old} to {new_status}", code="INVALID_TRANSITION")
        values = {**values, "status": new_status}
        self.db.update("trade_journal", trade["id"], values)
        trade.update(values)
        if old != new_status:
            self.audit.record("trade", trade["id"], audit.TRADE_STATUS, symbol=trade["symbol"], old=old,
                              new=new_status, reason=reason,
                              details={k: v for k, v in values.items() if k != "status" and v is not None})
            logger.info("trade %s %s: %s -> %s (%s)", trade["id"], trade["symbol"], old, new_status, reason,
                        extra={"trade_id": trade["id"], "symbol": trade["symbol"]})

    def cancel(self, trade: Row, exit_reason: str, when: dt.datetime, reason: str) -> None:
        """ORDERED -> CANCELLED: the entry ended with nothing filled."""
        self._set_status(trade, TradeStatus.CANCELLED.value, {"exit_reason": exit_reason, "exit_date": when}, reason)

    # -- fills ------------------------------------------------------------------------------

    def _ledger(self, trade: Row, side: str, qty: Decimal, price: Decimal, when: dt.datetime,
                realized: Decimal | None, order_row_id: int | None, source: str) -> None:
        self.db.insert("trade_fill", {"trade_journal_id": trade["id"], "order_execution_id": order_row_id,
                                      "symbol": trade["symbol"], "side": side, "qty": qty, "price": price,
                                      "realized_pnl": realized, "filled_at": when, "source": source})

    def apply_entry_fill(self, trade: Row, entry_row: Row, fill_qty: Decimal, when: dt.datetime,
                         fill_price: Decimal | None = None) -> None:
        """Shares bought: the trade holds a position (created on the first fill, grown after)."""
        self._ledger(trade, "buy", fill_qty, fill_price if fill_price is not None else
                     Decimal(entry_row["filled_avg_price"]), when, None, entry_row.get("id"), "entry fill")
        actual_qty, actual_entry = self.entry_totals(trade["id"], entry_row)
        entry_date = entry_row.get("filled_at") or trade.get("entry_date") or when
        values = {"actual_entry": actual_entry, "actual_qty": actual_qty, "entry_date": trade.get("entry_date") or
                  entry_date}
        if trade["status"] == TradeStatus.ORDERED.value:
            self._set_status(trade, TradeStatus.POSITION.value, values,
                             f"entry filled {actual_qty} @ {actual_entry}")
        elif lifecycle.trade_may_reopen(trade["status"], trade.get("exit_reason")):
            self._set_status(trade, TradeStatus.POSITION.value, {**values, "exit_reason": None, "exit_date": None},
                             f"entry concluded {trade.get('exit_reason')} found filled {actual_qty} @ {actual_entry} "
                             "after all: the broker is the truth, the trade holds the position")
        else:
            self.db.update("trade_journal", trade["id"], values)
            trade.update(values)
        position = self.position(trade["id"])
        if position is None:
            qty = actual_qty - Decimal(trade.get("exited_qty") or 0)
            cost = qty * actual_entry
            position_id = self.db.insert("position_tracking", {
                "trade_journal_id": trade["id"], "symbol": trade["symbol"], "qty": qty,
                "avg_entry_price": actual_entry, "cost_basis": money(cost), "current_price": actual_entry,
                "market_value": money(cost), "unrealized_pnl": ZERO, "unrealized_pnl_pct": ZERO,
                "last_updated": when})
            self.audit.record("position", position_id, audit.POSITION_OPENED, symbol=trade["symbol"], new=qty,
                              details={"trade_journal_id": trade["id"], "avg_entry_price": actual_entry})
        else:
            self._revalue(position, Decimal(position["qty"]) + fill_qty, actual_entry, when,
                          reason=f"entry filled {fill_qty} more")

    def entry_totals(self, trade_id: int, entry_row: Row) -> tuple[Decimal, Decimal]:
        """Shares bought and their average price over the trade's whole entry chain.

        A person may replace a partly filled entry at the broker: the replacement is a new
        order whose ``filled_qty`` starts at zero while the replaced one keeps its fills. Both
        are the trade's entry, so the trade holds the sum, at the quantity-weighted average
        (exact in Decimal; shown as ``average_price``)."""
        rows = {r["id"]: r for r in self.db.query("order_execution", {"trade_journal_id": trade_id,
                                                                      "order_type": "ENTRY"})}
        if entry_row.get("id") is not None:
            rows[entry_row["id"]] = entry_row  # the caller's copy carries the fill just recorded
        filled = [r for r in rows.values()
                  if Decimal(r.get("filled_qty") or 0) > ZERO and r.get("filled_avg_price") is not None]
        if len(filled) <= 1:  # one order: its own figures, exactly as the broker sent them
            only = filled[0] if filled else entry_row
            return Decimal(only["filled_qty"]), Decimal(only["filled_avg_price"])
        qty = sum((Decimal(r["filled_qty"]) for r in filled), ZERO)
        notional = sum((Decimal(r["filled_qty"]) * Decimal(r["filled_avg_price"]) for r in filled), ZERO)
        return qty, average_price(notional / qty)

    def apply_exit_fill(self, trade: Row, fill_qty: Decimal, fill_price: Decimal, when: dt.datetime,
                        exit_reason: str, source: str, order_row_id: int | None = None) -> bool:
        """Shares sold at ``fill_price``: book the realised P&L (also in the ``trade_fill`` ledger,
        dated by the fill), reduce the position, and close the trade when nothing is left.
        Returns True when the trade was closed."""
        entry = Decimal(trade["actual_entry"])
        self._ledger(trade, "sell", fill_qty, fill_price, when, (fill_price - entry) * fill_qty, order_row_id, source)
        realized = Decimal(trade.get("realized_pnl") or 0) + (fill_price - entry) * fill_qty
        exited = Decimal(trade.get("exited_qty") or 0) + fill_qty
        position = self.position(trade["id"])
        held = Decimal(position["qty"]) if position else ZERO
        left = held - fill_qty
        if left < ZERO:
            self.audit.record("trade", trade["id"], audit.ORDER_ANOMALY, symbol=trade["symbol"],
                              reason=f"{source}: sold {fill_qty} but the position held {held}",
                              # a critical disagreement: the reconciliation breaker trips on it
                              details={"fill_qty": fill_qty, "held": held, "disagreement": "sell_beyond_held"})
        self.db.update("trade_journal", trade["id"], {"realized_pnl": realized, "exited_qty": exited})
        trade.update(realized_pnl=realized, exited_qty=exited)
        if left <= ZERO:
            self.close(trade, exit_reason, when, reason=f"{source}: {fill_qty} @ {fill_price}")
            return True
        assert position is not None
        self._revalue(position, left, entry, when,
                      reason=f"{source}: sold {fill_qty} @ {fill_price}, realized part "
                             f"{money((fill_price - entry) * fill_qty)} booked in trade_journal.realized_pnl")
        return False

    def close(self, trade: Row, exit_reason: str, when: dt.datetime, reason: str) -> None:
        """POSITION -> CLOSED with the average exit price and exact P&L; the position row goes."""
        entry = Decimal(trade["actual_entry"])
        exited = Decimal(trade.get("exited_qty") or 0)
        realized = Decimal(trade.get("realized_pnl") or 0)
        exit_price = average_price(entry + realized / exited) if exited > ZERO else entry
        self._set_status(trade, TradeStatus.CLOSED.value, {
            "exit_price": exit_price, "actual_pnl": money(realized), "exit_reason": exit_reason, "exit_date": when,
        }, reason)
        position = self.position(trade["id"])
        if position is not None:
            self.db.delete("position_tracking", position["id"])
            self.audit.record("position", position["id"], audit.POSITION_CLOSED, symbol=trade["symbol"],
                              old=position["qty"], new=0, reason=exit_reason,
                              details={"trade_journal_id": trade["id"], "exit_price": exit_price,
                                       "actual_pnl": money(realized)})

    # -- positions ---------------------------------------------------------------------------

    def _revalue(self, position: Row, qty: Decimal, avg_entry: Decimal, when: dt.datetime, *, reason: str) -> None:
        current = Decimal(position["current_price"] if position.get("current_price") is not None else avg_entry)
        old_qty = position["qty"]
        values = self.position_values(qty, avg_entry, current)
        values["last_updated"] = when
        self.db.update("position_tracking", position["id"], values)
        position.update(values)
        if Decimal(old_qty) != qty:
            self.audit.record("position", position["id"], audit.POSITION_CHANGED, symbol=position["symbol"],
                              old=old_qty, new=qty, reason=reason,
                              details={"trade_journal_id": position["trade_journal_id"]})

    @staticmethod
    def position_values(qty: Decimal, avg_entry: Decimal, current: Decimal) -> dict[str, Any]:
        """qty, cost basis, current price, market value and unrealised P&L of a long position."""
        cost = money(qty * avg_entry)
        unrealized = pnl(avg_entry, current, qty)
        return {"qty": qty, "avg_entry_price": avg_entry, "cost_basis": cost, "current_price": current,
                "market_value": money(qty * current), "unrealized_pnl": unrealized,
                "unrealized_pnl_pct": pnl_pct(unrealized, cost)}

    def set_position_qty(self, trade: Row, qty: Decimal, when: dt.datetime, reason: str) -> None:
        """Take a quantity from the broker (shares sold or bought outside the system)."""
        position = self.position(trade["id"])
        if position is None:
            return
        self._revalue(position, qty, Decimal(position["avg_entry_price"]), when, reason=reason)

    def set_protection_ids(self, trade_id: int, stop_id: str | None, take_profit_id: str | None, *,
                           position: Row | None = None) -> None:
        """Point the position at its live protective orders (broker ids); ``position`` saves
        reading the row again when the caller has it."""
        position = position or self.position(trade_id)
        if position is None:
            return
        values = {"stop_loss_order_id": stop_id, "take_profit_order_id": take_profit_id}
        if any(position.get(k) != v for k, v in values.items()):
            self.db.update("position_tracking", position["id"], values)
