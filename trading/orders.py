"""Orders in the database: deterministic client order ids, intents, and the broker's truth.

Every order is recorded *before* it is sent (an ``order_execution`` row in status ``pending``
with its deterministic ``client_order_id``), so a crash between the broker call and the
database commit leaves a row that the next run resolves by looking the order up, never by
guessing and never by sending it twice: the broker refuses a reused client order id.

``OrderBook.record()`` is the only way broker state reaches an ``order_execution`` row: it
maps the status word (unknown words raise), checks the transition table, refuses fills that
shrink, and reports what changed (status, newly filled quantity and its price) so the caller
can apply the consequences to the trade.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from trading import audit, lifecycle
from trading.audit import Auditor
from trading.broker import BrokerOrder, OrderRequest
from trading.lifecycle import OrderType
from trading.pricing import ZERO

logger = logging.getLogger(__name__)

Row = dict[str, Any]

#: A ``not_found`` order is looked up again this long after the marking, doubling per miss.
NOT_FOUND_RECHECK = dt.timedelta(minutes=5)
NOT_FOUND_RECHECK_MAX = dt.timedelta(days=1)


# --------------------------------------------------------------------------- client order ids


def _digest(*parts: Any) -> str:
    text = "|".join(str(part) for part in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def entry_client_order_id(prefix: str, decision: Row) -> str:
    """The one client order id of a decision's entry: the same on every retry, and different for
    a decision with the same id in another database (the digest covers its creation time and
    ticker), so two databases sharing an account never adopt each other's orders."""
    return f"{prefix}-d{decision['id']}-{_digest(decision['id'], decision.get('ticker'), decision.get('created_at'))}-e"


def trade_client_order_id(prefix: str, trade: Row, purpose: str, sequence: int) -> str:
    """Client order id of the ``sequence``-th order of ``purpose`` for a trade
    (``p`` protection repair, ``x`` exit)."""
    return f"{prefix}-t{trade['id']}-{_digest(trade['id'], trade['symbol'], trade['created_at'])}-{purpose}{sequence}"


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class OrderChange:
    """What ``OrderBook.record`` changed on one row."""

    row_id: int
    order_type: str
    old_status: str
    new_status: str
    fill_qty: Decimal = ZERO            # newly filled since the last record
    fill_price: Decimal | None = None   # average price of the newly filled part
    filled_qty: Decimal = ZERO          # total filled now
    changed: bool = False
    anomaly: str | None = None

    @property
    def status_changed(self) -> bool:
        return self.old_status != self.new_status


def leg_order_type(leg: BrokerOrder) -> str:
    """STOP_LOSS or TAKE_PROFIT for a protective leg, from its kind."""
    return OrderType.STOP_LOSS.value if leg.kind in ("stop", "stop_limit", "trailing_stop") \
        else OrderType.TAKE_PROFIT.value


class OrderBook:
    """Reads and writes ``order_execution`` rows for one program run."""

    def __init__(self, db: Any, auditor: Auditor) -> None:
        self.db = db
        self.audit = auditor

    # -- reading ----------------------------------------------------------------------------

    def by_client_order_id(self, client_order_id: str) -> Row | None:
        rows = self.db.query("order_execution", {"client_order_id": client_order_id})
        return rows[0] if rows else None

    def entry_of_decision(self, decision_id: int) -> Row | None:
        """The entry recorded for a decision (through its trade's ``initial_analysis_id``), whatever
        client order id it was sent with: recovery must not rebuild the id from today's prefix."""
        return self.db.execute_one(
            "SELECT o.* FROM order_execution o JOIN trade_journal t ON t.id = o.trade_journal_id "
            "WHERE t.initial_analysis_id = %s AND o.order_type = 'ENTRY' ORDER BY o.id DESC LIMIT 1",
            (decision_id,))

    def by_alpaca_id(self, alpaca_order_id: str) -> Row | None:
        rows = self.db.query("order_execution", {"alpaca_order_id": alpaca_order_id})
        return rows[0] if rows else None

    def for_trade(self, trade_id: int) -> list[Row]:
        return self.db.query("order_execution", {"trade_journal_id": trade_id}, order_by="id")

    def open_rows(self, now: dt.datetime | None = None) -> list[Row]:
        """Every order the database still considers open (or not yet answered), and the
        ``not_found`` orders due for another look-up at ``now`` (they may reappear)."""
        return self.db.execute_query(
            "SELECT * FROM order_execution WHERE order_status <> ALL(%s) OR (order_status = %s AND %s::timestamptz "
            "IS NOT NULL AND (next_lookup_at IS NULL OR next_lookup_at <= %s)) ORDER BY id",
            (sorted(lifecycle.TERMINAL_ORDER_STATUSES), lifecycle.NOT_FOUND, now, now))

    # -- writing ----------------------------------------------------------------------------

    def insert_intent(self, trade: Row, order_type: str, request: OrderRequest, *,
                      exit_reason: str | None = None) -> int:
        """Record an order before it is sent (status ``pending``)."""
        row_id = self.db.insert("order_execution", {
            "trade_journal_id": trade["id"],
            "symbol": request.symbol,
            "order_type": order_type,
            "side": request.side,
            "client_order_id": request.client_order_id,
            "order_status": lifecycle.PENDING,
            "qty": request.qty,
            "limit_price": request.limit_price if request.order_class != "oco" else request.take_profit_price,
            # An OCO's top-level order is its take-profit limit; its stop is the leg recorded later.
            "stop_price": request.stop_price,
            "order_class": request.order_class,
            "order_kind": request.kind,
            "time_in_force": request.time_in_force,
            "exit_reason": exit_reason,
        })
        self.audit.record("order", row_id, audit.ORDER_INTENT, symbol=request.symbol, new=lifecycle.PENDING,
                          details={"trade_journal_id": trade["id"], "order_type": order_type,
                                   "client_order_id": request.client_order_id, "qty": request.qty,
                                   "order_class": request.order_class, "kind": request.kind,
                                   "limit_price": request.limit_price, "stop_price": request.stop_price,
                                   "take_profit": request.take_profit_price, "stop_loss": request.stop_loss_price})
        return row_id

    def mark_refused(self, row: Row, reason: str) -> None:
        """The broker refused the order for good: the row ends ``rejected`` with the reason."""
        self.db.update("order_execution", row["id"], {"order_status": "rejected", "error_message": reason[:2000]})
        self.audit.record("order", row["id"], audit.ORDER_REFUSED, symbol=row["symbol"], old=row["order_status"],
                          new="rejected", reason=reason)

    def note_error(self, row: Row, reason: str) -> None:
        """Remember why the last attempt on this order did not finish (the status stays)."""
        if row.get("error_message") != reason:
            self.db.update("order_execution", row["id"], {"error_message": reason[:2000]})

    @staticmethod
    def differences(row: Row, order: BrokerOrder) -> dict[str, Any]:
        """The columns of ``row`` that disagree with the broker's ``order`` (empty: nothing to do).

        Pure and cheap: the monitor compares every open order this way and opens a transaction
        only for the trades where something changed.
        """
        new_status = getattr(order.status, "value", order.status)
        values: dict[str, Any] = {
            "order_status": new_status,
            "alpaca_order_id": order.id,
            "qty": order.qty,
            "filled_qty": order.filled_qty,
            "filled_avg_price": order.filled_avg_price,
            "limit_price": order.limit_price,
            "stop_price": order.stop_price,
            "submitted_at": order.submitted_at,
            "filled_at": order.filled_at,
            "canceled_at": order.ended_at,
            "replaced_by_order_id": order.replaced_by,
            "not_found_count": 0,
            "next_lookup_at": None,
        }
        if row.get("client_order_id") in (None, ""):
            values["client_order_id"] = order.client_order_id or None
        if new_status != "rejected" and row.get("error_message") and row.get("order_status") != new_status:
            values["error_message"] = None
        return {key: value for key, value in values.items() if row.get(key) != value}

    def record(self, row: Row, order: BrokerOrder, *, now: dt.datetime) -> OrderChange:
        """Bring ``row`` in line with the broker's ``order``; returns what changed.

        Raises ``UnknownStatusError`` for a status word the system does not know (the caller
        records it and leaves the row alone).
        """
        new_status = lifecycle.map_alpaca_order_status(order.status)
        old_status = row["order_status"]
        old_filled = Decimal(row["filled_qty"] or 0)
        base = OrderChange(row["id"], row["order_type"], old_status, old_status, filled_qty=old_filled)
        if not lifecycle.order_transition_allowed(old_status, new_status):
            reason = f"broker reports {new_status} after {old_status}: not an allowed transition, row left as is"
            self._anomaly(row, reason, order)
            return OrderChange(**{**base.__dict__, "anomaly": reason})
        if order.filled_qty < old_filled:
            reason = f"broker reports filled_qty {order.filled_qty} below the recorded {old_filled}: row left as is"
            self._anomaly(row, reason, order)
            return OrderChange(**{**base.__dict__, "anomaly": reason})

        changed = self.differences(row, order)
        if not changed:
            return base

        fill_qty = order.filled_qty - old_filled
        fill_price: Decimal | None = None
        if fill_qty > ZERO and order.filled_avg_price is not None:
            old_avg = Decimal(row["filled_avg_price"] or 0)
            # The price of the newly filled part: total notional now minus notional recorded before.
            fill_price = (order.filled_qty * order.filled_avg_price - old_filled * old_avg) / fill_qty
        changed["last_synced_at"] = now
        self.db.update("order_execution", row["id"], changed)
        row.update(changed)
        if old_status != new_status:
            self.audit.record("order", row["id"], audit.ORDER_STATUS, symbol=row["symbol"], old=old_status,
                              new=new_status, details={"alpaca_order_id": order.id, "order_type": row["order_type"],
                                                       "filled_qty": order.filled_qty})
        if fill_qty > ZERO:
            self.audit.record("order", row["id"], audit.ORDER_FILL, symbol=row["symbol"],
                              old=old_filled, new=order.filled_qty,
                              details={"fill_qty": fill_qty, "fill_price": fill_price, "order_type": row["order_type"],
                                       "filled_avg_price": order.filled_avg_price})
        return OrderChange(row["id"], row["order_type"], old_status, new_status, fill_qty, fill_price,
                           order.filled_qty, True)

    def record_missing(self, row: Row, max_misses: int, reason: str, now: dt.datetime | None = None) -> bool:
        """One more direct look-up found nothing; after ``max_misses`` the row becomes ``not_found``.
        Returns True when the row was marked.

        A ``not_found`` row is still looked up, less and less often: the next look-up is due
        ``NOT_FOUND_RECHECK`` after the marking, doubling with every further miss (at most
        ``NOT_FOUND_RECHECK_MAX``), kept in ``next_lookup_at``."""
        misses = int(row.get("not_found_count") or 0) + 1
        due = None
        if now is not None and misses >= max_misses:
            due = now + min(NOT_FOUND_RECHECK * 2 ** min(misses - max_misses, 16), NOT_FOUND_RECHECK_MAX)
        if row["order_status"] == lifecycle.NOT_FOUND:
            self.db.update("order_execution", row["id"], {"not_found_count": misses, "next_lookup_at": due})
            row.update(not_found_count=misses, next_lookup_at=due)
            return False
        if misses < max_misses:
            self.db.update("order_execution", row["id"], {"not_found_count": misses,
                                                          "error_message": f"{reason} (miss {misses} of {max_misses})"})
            row["not_found_count"] = misses
            return False
        message = f"{reason}: not found at the broker after {misses} direct look-ups (by id and client order id)"
        self.db.update("order_execution", row["id"], {"not_found_count": misses, "order_status": lifecycle.NOT_FOUND,
                                                      "error_message": message, "next_lookup_at": due})
        self.audit.record("order", row["id"], audit.ORDER_NOT_FOUND, symbol=row["symbol"], old=row["order_status"],
                          new=lifecycle.NOT_FOUND, reason=message)
        row.update(order_status=lifecycle.NOT_FOUND, not_found_count=misses, next_lookup_at=due)
        return True

    def ensure_leg(self, trade: Row, parent: BrokerOrder, leg: BrokerOrder, *, now: dt.datetime) -> Row:
        """The row of a protective leg (bracket, OTO or OCO), inserted the first time it is seen,
        with its status and no fills yet: ``record()`` then applies the fills."""
        existing = self.by_alpaca_id(leg.id)
        if existing is not None:
            return existing
        row_id = self.db.insert("order_execution", {
            "trade_journal_id": trade["id"],
            "symbol": leg.symbol or parent.symbol,
            "order_type": leg_order_type(leg),
            "side": leg.side,
            "alpaca_order_id": leg.id,
            "client_order_id": leg.client_order_id or None,
            "order_status": lifecycle.map_alpaca_order_status(leg.status),
            "qty": leg.qty,
            "limit_price": leg.limit_price,
            "stop_price": leg.stop_price,
            # Fills are left to the caller's record(), so that they reach the trade as consequences.
            "filled_qty": ZERO,
            "submitted_at": leg.submitted_at,
            "order_class": parent.order_class,
            "order_kind": leg.kind,
            "time_in_force": leg.time_in_force,
            "parent_alpaca_order_id": parent.id,
            "last_synced_at": now,
        })
        self.audit.record("order", row_id, audit.ORDER_SUBMITTED, symbol=leg.symbol or parent.symbol,
                          new=leg.status, reason=f"{leg_order_type(leg)} leg of {parent.order_class} order {parent.id}",
                          details={"trade_journal_id": trade["id"], "alpaca_order_id": leg.id})
        row = self.db.get_by_id("order_execution", row_id)
        assert row is not None
        return row

    def adopt_replacement(self, trade: Row, old_row: Row, replacement: BrokerOrder, *, now: dt.datetime) -> Row:
        """A row for the order that replaced ``old_row`` at the broker (same role, same trade)."""
        existing = self.by_alpaca_id(replacement.id)
        if existing is not None:
            return existing
        row_id = self.db.insert("order_execution", {
            "trade_journal_id": trade["id"], "symbol": replacement.symbol, "order_type": old_row["order_type"],
            "side": replacement.side, "alpaca_order_id": replacement.id,
            "client_order_id": replacement.client_order_id or None,
            "order_status": lifecycle.map_alpaca_order_status(replacement.status), "qty": replacement.qty,
            "limit_price": replacement.limit_price, "stop_price": replacement.stop_price,
            "filled_qty": ZERO, "submitted_at": replacement.submitted_at, "order_class": replacement.order_class,
            "order_kind": replacement.kind, "time_in_force": replacement.time_in_force,
            "parent_alpaca_order_id": old_row.get("parent_alpaca_order_id"), "exit_reason": old_row.get("exit_reason"),
            "last_synced_at": now,
        })
        self.audit.record("order", row_id, audit.ORDER_SUBMITTED, symbol=replacement.symbol, new=replacement.status,
                          reason=f"replaces order {old_row['alpaca_order_id']} (replaced at the broker)")
        row = self.db.get_by_id("order_execution", row_id)
        assert row is not None
        return row

    def _anomaly(self, row: Row, reason: str, order: BrokerOrder) -> None:
        logger.warning("order %s (%s %s): %s", row["id"], row["symbol"], row["order_type"], reason,
                       extra={"order_id": order.id, "symbol": row["symbol"], "trade_id": row.get("trade_journal_id")})
        if row.get("error_message") == reason:
            return  # already recorded: a later run finding the same thing changes nothing
        self.db.update("order_execution", row["id"], {"error_message": reason})
        row["error_message"] = reason
        self.audit.record("order", row["id"], audit.ORDER_ANOMALY, symbol=row["symbol"], old=row["order_status"],
                          new=order.status, reason=reason, details={"alpaca_order_id": order.id})
