"""Broker-held protection for every open position, and exits that never double-sell.

Alpaca reserves a position's shares for every open sell order, so a separate stop and a
separate take-profit for the same shares cannot both rest. Protection is therefore always one
order group: the bracket/OTO legs of the entry, or (after a repair) one OCO (take-profit +
stop) for SWING trades with a target, or one stop for the rest. Repairs are placed ``gtc`` so
that a protective stop never expires on its own.

``Protector.ensure()`` checks one trade: a live stop (``held`` included: Alpaca arms it
itself) must cover the position's whole quantity. If not, the stale protective orders are
canceled and confirmed canceled first, then one new group is sent for the exact quantity.
``Protector.flatten()`` exits a trade now: cancel its working orders, confirm, then sell the
shares with one market order. Both record their intent before each broker call with a
deterministic client order id, so a crash is resolved by looking the order up.

One program at a time per trade: ``ensure``, ``flatten``, ``cancel_entry`` and
``cancel_and_confirm`` hold the trade's advisory lock (``TradingDB.trade_lock``) across the
whole cancel -> confirm -> submit sequence, so a CLOSE in the executor and a repair in a
monitor can never interleave (the second waits, bounded, then sees the first one's result).

Every sell (repair stop or OCO, exit, flatten, day-end exit) is sized from the broker's
position read at that moment (``trading.positions``): the symbol's trades are reconciled with
it first, and with nothing held nothing is sold (the trade is reconciled as closed outside).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from config import Settings
from trading import audit, lifecycle
from trading.broker import Broker, BrokerOrder, OrderRequest
from trading.errors import (
    BrokerRejectedError,
    BrokerUnavailableError,
    DuplicateClientOrderIdError,
    NotFoundError,
)
from trading.lifecycle import OrderType, TradeStatus
from trading.orders import trade_client_order_id
from trading.pricing import ZERO, round_to_tick
from trading.reconcile import Reconciler, SyncResult

logger = logging.getLogger(__name__)

Row = dict[str, Any]

#: How long a program waits for another program to finish with a trade's orders.
TRADE_LOCK_WAIT_SECONDS = 30.0
#: Submissions of one order (same client order id) within one call when the broker does not answer.
SEND_ATTEMPTS = 2


def _one_program_per_trade(busy: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the method holding the trade's lock; ``busy`` is returned when another program keeps
    it longer than the protector's ``lock_wait`` (warned; the next run tries again)."""
    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def holding(self: Protector, trade_id: int, *args: Any, **kwargs: Any) -> Any:
            if trade_id in self.foreign:
                return busy  # another broker account's trade: never changed from this one (accounts.py)
            with self.db.trade_lock(trade_id, wait_seconds=self.lock_wait) as taken:
                if not taken:
                    self.warn(f"trade {trade_id}: another program is changing its orders; "
                              f"left for the next run")
                    return busy
                return method(self, trade_id, *args, **kwargs)
        return holding
    return wrap


def find_order(broker: Broker, alpaca_order_id: str | None, client_order_id: str | None) -> BrokerOrder:
    """Look an order up directly: by broker id, then by client order id (with its legs).
    Raises ``NotFoundError`` only when both look-ups found nothing."""
    if alpaca_order_id:
        try:
            return broker.get_order(alpaca_order_id)
        except NotFoundError:
            if not client_order_id:
                raise
    if not client_order_id:
        raise NotFoundError("order has neither a broker id nor a client order id")
    found = broker.get_order_by_client_id(client_order_id)
    if found.order_class in ("bracket", "oto", "oco") and not found.legs:
        found = broker.get_order(found.id)  # the by-client-id look-up does not nest legs
    return found


@dataclass
class ProtectionView:
    """A trade's position and orders, as the database knows them now."""

    trade: Row
    position: Row | None
    orders: list[Row]

    @property
    def position_qty(self) -> Decimal:
        return Decimal(self.position["qty"]) if self.position else ZERO

    def _open(self, *types: str) -> list[Row]:
        return [r for r in self.orders if r["order_type"] in types and r["order_status"] in
                lifecycle.OPEN_ORDER_STATUSES]

    @property
    def stop_rows(self) -> list[Row]:
        return [r for r in self.orders if r["order_type"] == OrderType.STOP_LOSS.value
                and lifecycle.is_protecting(r["order_status"])]

    @property
    def stop_qty(self) -> Decimal:
        return sum((Decimal(r["qty"] or 0) - Decimal(r["filled_qty"] or 0) for r in self.stop_rows), ZERO)

    @property
    def take_profit_rows(self) -> list[Row]:
        return [r for r in self.orders if r["order_type"] == OrderType.TAKE_PROFIT.value
                and lifecycle.is_protecting(r["order_status"])]

    @property
    def protective_open(self) -> list[Row]:
        return self._open(OrderType.STOP_LOSS.value, OrderType.TAKE_PROFIT.value)

    @property
    def exit_qty(self) -> Decimal:
        """Shares the working exit sells still have to sell (a trade being closed: its stop was
        canceled for exactly these shares)."""
        return sum((Decimal(r["qty"] or 0) - Decimal(r["filled_qty"] or 0) for r in self.exits_open), ZERO)

    @property
    def exits_open(self) -> list[Row]:
        return [r for r in self.orders if r["order_type"] == OrderType.EXIT.value
                and (r["order_status"] in lifecycle.OPEN_ORDER_STATUSES or r["order_status"] == lifecycle.PENDING)]

    @property
    def pending(self) -> list[Row]:
        return [r for r in self.orders if r["order_status"] == lifecycle.PENDING and r["order_type"] != "ENTRY"]

    @property
    def entry_working(self) -> list[Row]:
        return self._open(OrderType.ENTRY.value)

    @property
    def protected(self) -> bool:
        return self.position_qty > ZERO and self.stop_qty == self.position_qty


class Protector:
    """Checks, repairs and unwinds the protection of trades for one program run."""

    def __init__(self, db: Any, broker: Broker, reconciler: Reconciler, settings: Settings, *,
                 now: dt.datetime, warn: Callable[[str], None],
                 sleep: Callable[[float], None] = time.sleep, confirm_attempts: int = 10,
                 confirm_interval: float = 0.2, count: Callable[..., None] | None = None,
                 lock_wait: float = TRADE_LOCK_WAIT_SECONDS) -> None:
        self.db = db
        self.broker = broker
        self.reconciler = reconciler
        self.settings = settings
        self.now = now
        self.warn = warn
        self.sleep = sleep
        self.confirm_attempts = confirm_attempts
        self.confirm_interval = confirm_interval
        self.count: Callable[..., None] = count or (lambda *_args: None)
        self.lock_wait = lock_wait
        #: Open trades recorded under another broker account (``trading.accounts``): left alone.
        self.foreign: frozenset[int] = frozenset()

    @property
    def audit(self) -> Any:
        return self.reconciler.audit

    def view(self, trade_id: int) -> ProtectionView:
        trade = self.reconciler.trades.get(trade_id)
        assert trade is not None
        return ProtectionView(trade, self.reconciler.trades.position(trade_id),
                              self.reconciler.orders.for_trade(trade_id))

    def broker_sized(self, trade_id: int) -> tuple[ProtectionView, Decimal]:
        """The trade after its symbol was compared with the broker's position read now, and the
        shares of it the broker holds: what any sell of this trade may be sized to.

        The symbol's trades are reconciled first (their orders synced by id, outside sales booked),
        so with nothing held the trade comes back closed outside and nothing is sold. Shares the
        other open trades of the symbol hold are not this trade's to sell."""
        from trading.positions import PositionReconciler  # the two modules use each other

        symbol = self.view(trade_id).trade["symbol"]
        book = PositionReconciler(self.db, self.broker, self, count=self.count, warn=self.warn)
        held = book.reconcile(symbol, resize=False)
        others = sum((Decimal(r["qty"]) for r in book.positions(symbol) if r["trade_journal_id"] != trade_id), ZERO)
        view = self.view(trade_id)
        return view, min(view.position_qty, max(ZERO, held - others))

    # -- checking and repairing --------------------------------------------------------------

    @_one_program_per_trade("busy")
    def ensure(self, trade_id: int) -> str:
        """Make sure the trade's position has a live stop for its whole quantity.

        Returns ``protected``, ``repaired``, ``not_open`` (no position, or none left at the broker:
        reconciled as closed outside), ``exiting`` (an exit order works on the shares), ``waiting``
        (policy ``wait``: the entry still works), ``deferred`` (an answer is pending; next run),
        ``busy`` (another program holds the trade's lock) or ``failed`` (the broker refused the
        repair; recorded).
        """
        found_cover: Decimal | None = None  # what the stops covered before this run canceled any
        resolved_pending = False
        for _ in range(4):  # cancels can reveal fills that change the position; look again
            view = self.view(trade_id)
            trade = view.trade
            if found_cover is None:
                found_cover = view.stop_qty
            if trade["status"] != TradeStatus.POSITION.value or view.position_qty <= ZERO:
                return "not_open"
            # Unanswered intents first: an exit intent that never reached the broker sells nothing,
            # so it must not count as an exit working on the shares (they would stay unprotected).
            if view.pending:
                if resolved_pending:
                    self.warn(f"trade {trade_id} {trade['symbol']}: an order awaits the broker's answer; "
                              "protection checked next run")
                    return "deferred"
                self._resolve_pending(trade_id, view)
                resolved_pending = True
                continue
            if view.exits_open:
                return "exiting"
            if view.entry_working:
                if self.settings.monitor.partial_entry_policy == "wait":
                    return "waiting"
                # Alpaca arms bracket legs only on a complete fill: end the entry so the filled
                # shares can get their own stop now.
                if not self.cancel_and_confirm(trade_id, view.entry_working,
                                               reason="entry partly filled: remainder canceled so the filled "
                                                      "shares can be protected"):
                    return "deferred"
                continue
            if view.protected:
                self.point_position(view)
                return "protected"
            if view.protective_open:
                if not self.cancel_and_confirm(
                        trade_id, view.protective_open,
                        reason=f"protection covers {view.stop_qty} of {view.position_qty} shares: replaced"):
                    return "deferred"
                continue
            return self._submit_protection(trade_id, view, found_cover)
        return "deferred"

    def point_position(self, view: ProtectionView) -> None:
        stop, take_profit = self.live_protection_ids(view)
        self.reconciler.trades.set_protection_ids(view.trade["id"], stop, take_profit, position=view.position)

    @staticmethod
    def live_protection_ids(view: ProtectionView) -> tuple[str | None, str | None]:
        """The broker ids of the live stop and take-profit the position should point at."""
        stop = view.stop_rows[0]["alpaca_order_id"] if view.stop_rows else None
        take_profit = view.take_profit_rows[0]["alpaca_order_id"] if view.take_profit_rows else None
        return stop, take_profit

    def _next_client_order_id(self, trade: Row, orders: list[Row], purpose: str) -> str:
        used = {r.get("client_order_id") for r in orders}
        sequence = 1
        while (coid := trade_client_order_id(self.settings.monitor.client_order_prefix, trade, purpose,
                                             sequence)) in used:
            sequence += 1
        return coid

    def protection_request(self, trade: Row, qty: Decimal, client_order_id: str) -> tuple[str, OrderRequest]:
        """One protective group for ``qty`` shares: OCO for a SWING trade with a target, else a stop."""
        stop = round_to_tick(Decimal(trade["planned_sl"]))
        target = trade.get("planned_tp")
        if trade["trade_style"] == "SWING" and target is not None:
            return OrderType.TAKE_PROFIT.value, OrderRequest(
                symbol=trade["symbol"], qty=qty, side="sell", kind="limit", time_in_force="gtc",
                client_order_id=client_order_id, order_class="oco",
                take_profit_price=round_to_tick(Decimal(target)), stop_loss_price=stop)
        return OrderType.STOP_LOSS.value, OrderRequest(
            symbol=trade["symbol"], qty=qty, side="sell", kind="stop", time_in_force="gtc",
            client_order_id=client_order_id, stop_price=stop)

    def _submit_protection(self, trade_id: int, view: ProtectionView, found_cover: Decimal | None = None) -> str:
        view, shares = self.broker_sized(trade_id)
        if view.trade["status"] != TradeStatus.POSITION.value or shares <= ZERO:
            return "not_open"  # nothing held at the broker: reconciled, nothing sold
        if view.exits_open or view.protective_open or view.pending:
            return "deferred"  # the reconciliation changed the picture: look again next run
        with self.db.transaction():
            trade = self.reconciler.trades.lock(trade_id)
            assert trade is not None
            if trade["status"] != TradeStatus.POSITION.value:
                return "not_open"
            coid = self._next_client_order_id(trade, view.orders, "p")
            order_type, request = self.protection_request(trade, shares, coid)
            row_id = self.reconciler.orders.insert_intent(trade, order_type, request)
        outcome = self._send(trade_id, row_id, request)
        if outcome == "sent":
            trade = self.reconciler.trades.get(trade_id)
            self.audit.record("trade", trade_id, audit.PROTECTION_REPAIRED, symbol=view.trade["symbol"],
                              reason=f"no stop covered all {shares} shares (stop covered "
                                     f"{view.stop_qty if found_cover is None else found_cover}): "
                                     f"placed {request.order_class if request.order_class != 'simple' else 'stop'} "
                                     f"for {shares}",
                              details={"client_order_id": request.client_order_id,
                                       "stop": request.stop_price or request.stop_loss_price,
                                       "take_profit": request.take_profit_price})
            self.point_position(self.view(trade_id))
            return "repaired"
        self.audit.record("trade", trade_id, audit.PROTECTION_MISSING, symbol=view.trade["symbol"],
                          reason=f"could not place protection for {shares} shares: {outcome}")
        self.warn(f"trade {trade_id} {view.trade['symbol']}: UNPROTECTED, {outcome}")
        return "failed"

    def _send(self, trade_id: int, row_id: int, request: OrderRequest) -> str:
        """Send a recorded intent and record the answer. Returns ``sent`` or why not.

        An unanswered submission (5xx, timeout, dropped connection) is looked up at once by its
        client order id: found, it is recorded; not found, the same request is sent again with
        the same id (safe: the broker refuses a second order with that id), up to
        ``SEND_ATTEMPTS`` times. Still unanswered, the row stays ``pending`` with the reason and
        the error is re-raised (the run ends early, as for any outage); the next run's ``ensure``
        looks it up and resends it the same way.
        """
        last: BrokerUnavailableError | None = None
        for _ in range(SEND_ATTEMPTS):
            try:
                order = self.broker.submit_order(request)
            except DuplicateClientOrderIdError:
                order = find_order(self.broker, None, request.client_order_id)
            except BrokerRejectedError as exc:
                with self.db.transaction():
                    row = self.db.get_by_id("order_execution", row_id)
                    self.reconciler.orders.mark_refused(row, str(exc))
                return f"refused by the broker: {exc}"
            except BrokerUnavailableError as exc:
                last = exc
                try:  # did it land? the client order id says, before anything is sent again
                    order = find_order(self.broker, None, request.client_order_id)
                except NotFoundError:
                    logger.info("order %s unanswered and not at the broker: sending it again with the same id",
                                request.client_order_id)
                    continue
                except BrokerUnavailableError:
                    break
            self.record(trade_id, row_id, order)
            return "sent"
        assert last is not None
        row = self.db.get_by_id("order_execution", row_id)
        self.reconciler.orders.note_error(row, f"submission unanswered: {last}")
        raise last

    def _resolve_pending(self, trade_id: int, view: ProtectionView) -> None:
        """Protective intents an earlier run sent without an answer: looked up by client order id
        (found: recorded); not at the broker, the same request is sent again with the same id when
        it still fits the shares the broker holds, else the intent is concluded ``not_found`` so a
        new group is sized to the shares. Safe under the trade's lock: no other program is sending
        this trade's orders now, and a late copy of the old request is refused for its id."""
        for row in view.pending:
            try:
                order = find_order(self.broker, row.get("alpaca_order_id"), row["client_order_id"])
            except NotFoundError:
                order = None
            if order is not None:
                self.record(trade_id, row["id"], order)
                continue
            fresh, shares = self.broker_sized(trade_id)
            if row["order_type"] in lifecycle.PROTECTIVE_ORDER_TYPES and shares == Decimal(row["qty"]) \
                    and fresh.trade["status"] == TradeStatus.POSITION.value:
                _, request = self.protection_request(fresh.trade, shares, row["client_order_id"])
                self._send(trade_id, row["id"], request)
                continue
            with self.db.transaction():
                trade = self.reconciler.trades.lock(trade_id)
                current = self.db.get_by_id("order_execution", row["id"])
                assert trade is not None and current is not None
                if current["order_status"] == lifecycle.PENDING:
                    self.reconciler.mark_missing(trade, current, 1, "never reached the broker (looked up by "
                                                 "client order id under the trade's lock)", self.now)

    def record(self, trade_id: int, row_id: int, order: BrokerOrder) -> SyncResult:
        """Apply a broker answer to its row and trade in one transaction.

        A replaced order (or leg) is recorded with its successor, looked up first: the row ends
        ``replaced`` only together with the row of the order that now does its job. Without it
        (the listener recording a trailing stop's replace before the order monitor did), the
        successor had no row, the trade looked unprotected and its protection was rebuilt at the
        old stop, undoing the raise."""
        index = self._successors(order)
        with self.db.transaction():
            trade = self.reconciler.trades.lock(trade_id)
            row = self.db.get_by_id("order_execution", row_id)
            assert trade is not None and row is not None
            result = self.reconciler.sync(trade, row, order, now=self.now, index=index)
        if result.to_cancel:
            self.cancel_and_confirm(trade_id, result.to_cancel, reason="trade closed: its remaining orders go")
        return result

    def _successors(self, order: BrokerOrder) -> dict[str, BrokerOrder]:
        """The orders that replaced ``order`` or its legs, by broker id (a look-up each; a successor
        the broker cannot find now is left to the next sync)."""
        wanted = [o.replaced_by for o in (order, *order.legs) if o.status == "replaced" and o.replaced_by]
        found: dict[str, BrokerOrder] = {}
        for order_id in wanted:
            try:
                found[order_id] = self.broker.get_order(order_id)
            except NotFoundError:
                continue
        return found

    def replace_and_record(self, trade_id: int, row: Row, *, stop_price: Decimal | None = None,
                           limit_price: Decimal | None = None,
                           also: Callable[[BrokerOrder], None] | None = None) -> BrokerOrder:
        """Change a working order's price at the broker and record the answer: the old row is synced
        (``replaced``, or ``pending_replace`` until the next sync) and its successor adopted, in one
        transaction under the trade's row lock; ``also`` runs in that transaction with the successor.
        Raises what ``replace_order`` raises (a refusal: the order filled or ended meanwhile)."""
        replacement = self.broker.replace_order(row["alpaca_order_id"], stop_price=stop_price,
                                                limit_price=limit_price)
        old = self.broker.get_order(row["alpaca_order_id"])
        with self.db.transaction():
            trade = self.reconciler.trades.lock(trade_id)
            current = self.db.get_by_id("order_execution", row["id"])
            assert trade is not None and current is not None
            self.reconciler.sync(trade, current, old, now=self.now, index={replacement.id: replacement})
            if also is not None:
                also(replacement)
        return replacement

    @_one_program_per_trade("deferred")
    def change_levels(self, trade_id: int, changes: dict[str, Decimal | None], *, reason: str) -> str:
        """Set a position's stop, target or trailing distance (a levels-only AMEND) and move the
        broker-held protection to them: the working stop and take-profit are replaced in place
        (``replace_and_record``: no moment without a stop); a target removed or added changes the
        order group, so the protection is canceled, confirmed and placed again for the whole
        quantity by ``ensure``. Returns ``changed``, ``unchanged``, ``not_open``, ``exiting`` (an
        exit works on the shares), ``deferred`` or ``failed`` (the broker refused; protection
        checked again, the levels recorded)."""
        view = self.view(trade_id)
        trade = view.trade
        if trade["status"] != TradeStatus.POSITION.value or view.position_qty <= ZERO:
            return "not_open"
        if view.exits_open:
            return "exiting"
        old = {key: trade.get(key) for key in changes}
        new = {key: value for key, value in changes.items() if value != trade.get(key)}
        if new:
            with self.db.transaction():
                self.db.update("trade_journal", trade_id, new)
                self.audit.record("trade", trade_id, audit.TRADE_UPDATED, symbol=trade["symbol"],
                                  old=", ".join(f"{k}={old[k]}" for k in new),
                                  new=", ".join(f"{k}={v}" for k, v in new.items()), reason=reason,
                                  details={"levels": {k: None if v is None else str(v) for k, v in new.items()}})
        after = self.reconciler.trades.get(trade_id)
        assert after is not None
        trade = after
        stop = round_to_tick(Decimal(trade["planned_sl"]))
        target = None if trade.get("planned_tp") is None else round_to_tick(Decimal(trade["planned_tp"]))
        wants_target = trade["trade_style"] == "SWING" and target is not None
        has_target = bool(view.take_profit_rows)
        try:
            if view.protective_open and wants_target != has_target:
                # The group itself changes (OCO <-> stop): cancel it, then ensure places the new one.
                if not self.cancel_and_confirm(trade_id, view.protective_open, reason=f"{reason}: protection "
                                               "placed again with the new levels"):
                    return "deferred"
                outcome = self.ensure(trade_id)
                return "changed" if outcome in ("repaired", "protected") else outcome
            moved = False
            for row in view.stop_rows:
                if row.get("stop_price") is not None and Decimal(row["stop_price"]) != stop:
                    self.replace_and_record(trade_id, row, stop_price=stop)
                    moved = True
            if target is not None and wants_target:
                for row in view.take_profit_rows:
                    if row.get("limit_price") is not None and Decimal(row["limit_price"]) != target:
                        self.replace_and_record(trade_id, row, limit_price=target)
                        moved = True
        except BrokerRejectedError as exc:
            # Filled, canceled or refused meanwhile (a stop above the market, say): the levels stay
            # recorded, and the protection is checked now so the shares keep a stop.
            self.warn(f"trade {trade_id} {trade['symbol']}: protection not moved to the new levels: {exc}")
            self.ensure(trade_id)
            return "failed"
        if not view.stop_rows:
            self.ensure(trade_id)  # no stop held yet: placed with the new levels
        self.point_position(self.view(trade_id))
        return "changed" if new or moved else "unchanged"

    # -- canceling ----------------------------------------------------------------------------

    @_one_program_per_trade(False)
    def cancel_and_confirm(self, trade_id: int, rows: list[Row], *, reason: str,
                           entry_reason: str | None = None) -> bool:
        """Cancel the orders of ``rows`` (one request per order group) and wait, briefly, until the
        broker confirms each is finished; every answer is recorded. True when all are finished.

        ``entry_reason`` is the exit reason a canceled entry gives its trade (CANCEL_REQUESTED,
        DAY_END_CANCEL, ...).
        """
        groups: dict[str, list[Row]] = {}
        for row in rows:
            if not row.get("alpaca_order_id"):
                continue
            groups.setdefault(row.get("parent_alpaca_order_id") or row["alpaca_order_id"], []).append(row)
        if entry_reason:
            for row in rows:
                if row["order_type"] == OrderType.ENTRY.value:
                    self.db.update("order_execution", row["id"], {"exit_reason": entry_reason})
        for root, members in groups.items():
            target = next((m for m in members if m["alpaca_order_id"] == root), members[0])
            if target["order_status"] in lifecycle.TERMINAL_ORDER_STATUSES:
                target = next((m for m in members if m["order_status"] not in lifecycle.TERMINAL_ORDER_STATUSES),
                              target)
            self.audit.record("order", target["id"], audit.ORDER_CANCEL_REQUESTED, symbol=target["symbol"],
                              reason=reason, details={"alpaca_order_id": target["alpaca_order_id"]})
            try:
                self.broker.cancel_order(target["alpaca_order_id"])
            except (NotFoundError, BrokerRejectedError) as exc:
                # Already finished (filled, canceled) or unknown: the look-up below tells which.
                logger.info("cancel of order %s: %s", target["alpaca_order_id"], exc)
            except BrokerUnavailableError as exc:
                # Unanswered (5xx, timeout): the cancel may have been processed. The look-up below
                # says what happened; only if it cannot be read either is the outage raised.
                logger.warning("cancel of order %s unanswered (%s): looking the order up", target["alpaca_order_id"],
                               exc)
        pending_roots = set(groups)
        recanceled: set[str] = set()
        for attempt in range(self.confirm_attempts):
            for root in sorted(pending_roots):
                try:
                    order = self.broker.get_order(root)
                except NotFoundError:
                    pending_roots.discard(root)
                    continue
                root_row = self.reconciler.orders.by_alpaca_id(root)
                if root_row is not None:
                    self.record(trade_id, root_row["id"], order)
                # Confirmed only when the whole group has ended: at Alpaca a canceled parent can be
                # final while its legs are still live (pending_cancel), and a stop still live must
                # never be met by new protection for the same shares.
                live = [o for o in order.walk() if not o.terminal]
                if not live:
                    pending_roots.discard(root)
                    continue
                if order.terminal:
                    self._cancel_live_legs(live, recanceled)
            if not pending_roots:
                return True
            if attempt + 1 < self.confirm_attempts:
                self.sleep(self.confirm_interval)
        self.warn(f"trade {trade_id}: cancel not confirmed yet for order(s) {', '.join(sorted(pending_roots))}")
        return False

    def _cancel_live_legs(self, live: list[BrokerOrder], recanceled: set[str]) -> None:
        """The parent ended but legs still work: each leg not already on its way out
        (``pending_cancel``) gets one cancel of its own; then the confirmation waits for them."""
        for leg in live:
            if leg.status == "pending_cancel" or leg.id in recanceled:
                continue
            recanceled.add(leg.id)
            try:
                self.broker.cancel_order(leg.id)
            except (NotFoundError, BrokerRejectedError) as exc:
                logger.info("cancel of leg %s: %s", leg.id, exc)

    # -- exiting --------------------------------------------------------------------------------

    @_one_program_per_trade("deferred")
    def flatten(self, trade_id: int, exit_reason: str, *, entry_reason: str,
                urgency: str = "CRITICAL", step: int = 0, keep_escalation: bool = False) -> str:
        """Exit the trade now: cancel its working orders (entry remainder and protection), confirm,
        then sell every share with one order: a market order (``urgency`` CRITICAL) or the first
        limit of an escalating exit (HIGH, NORMAL: ``trading/exits.py``; the order monitor walks
        it). Returns ``exit_submitted``, ``cancelled`` (nothing was filled), ``exiting`` (an exit
        already works), ``closed``, ``deferred`` or ``failed`` (recorded; protection is restored).

        ``step``/``keep_escalation``: the escalator sending a later step of an exit it tracks."""
        from trading.exits import Urgency, exit_step, latest_quote, more_urgent  # exits builds on the protector
        view = self.view(trade_id)
        if view.trade["status"] in (TradeStatus.CLOSED.value, TradeStatus.CANCELLED.value):
            return "closed"
        if view.pending:  # an unanswered exit is looked up before it counts as working (see ensure)
            self._resolve_pending(trade_id, view)
            view = self.view(trade_id)
        if view.exits_open:
            working_urgency = view.trade.get("exit_urgency")
            if keep_escalation or not more_urgent(urgency, working_urgency):
                return "exiting"
            # A gentler exit is walking (a CLOSE's limit at the mid) and this one may not wait (the
            # kill switch's flatten, the day-end exit): its limit goes, this exit takes over.
            if not self.cancel_and_confirm(trade_id, view.exits_open, reason=f"{exit_reason}: a {urgency} exit "
                                           f"takes over the {working_urgency} one"):
                return "deferred"
            view = self.view(trade_id)
            if view.trade["status"] in (TradeStatus.CLOSED.value, TradeStatus.CANCELLED.value):
                return "closed"  # the limit filled before it could be canceled
        working = view.entry_working + view.protective_open
        if working and not self.cancel_and_confirm(trade_id, working, reason=f"{exit_reason}: exit requested",
                                                   entry_reason=entry_reason):
            return "deferred"
        view = self.view(trade_id)
        if view.trade["status"] == TradeStatus.CANCELLED.value:
            return "cancelled"
        if view.trade["status"] != TradeStatus.POSITION.value or view.position_qty <= ZERO:
            return "closed"
        view, shares = self.broker_sized(trade_id)
        if view.trade["status"] != TradeStatus.POSITION.value or shares <= ZERO:
            return "closed"  # nothing held at the broker: reconciled as closed outside, nothing sold
        urgency = Urgency(urgency)
        quote = None if urgency is Urgency.CRITICAL else latest_quote(self.broker, view.trade["symbol"])
        first = exit_step(urgency, step, self.settings.monitor.exit_walk_steps, quote)
        with self.db.transaction():
            trade = self.reconciler.trades.lock(trade_id)
            assert trade is not None
            coid = self._next_client_order_id(trade, view.orders, "x")
            request = OrderRequest(symbol=trade["symbol"], qty=shares, side="sell", kind=first.kind,
                                   time_in_force="day", client_order_id=coid, limit_price=first.limit_price)
            row_id = self.reconciler.orders.insert_intent(trade, OrderType.EXIT.value, request,
                                                          exit_reason=exit_reason)
            if not keep_escalation:
                # The escalation's state lives on the trade: the next step is due after one step's time.
                due = None if first.is_market else self.now + dt.timedelta(
                    seconds=self.settings.monitor.exit_step_seconds)
                self.db.update("trade_journal", trade_id, {"exit_urgency": urgency.value, "exit_step": step,
                                                           "exit_next_step_at": due})
        outcome = self._send(trade_id, row_id, request)
        if outcome == "sent":
            self._await_exit(trade_id, row_id)
            return "exit_submitted"
        self.warn(f"trade {trade_id} {view.trade['symbol']}: exit refused ({outcome}); protection restored")
        self.ensure(trade_id)
        return "failed"

    def _await_exit(self, trade_id: int, row_id: int) -> None:
        """Wait, briefly, for the market exit just sent to end (Alpaca answers ``pending_new`` and
        fills a moment later), recording each answer, so the run ends with the trade closed rather
        than with unprotected shares and an exit in flight. Not filled in time, the exit keeps
        working and the next run records it (``ensure`` sees it as ``exiting``)."""
        row = self.db.get_by_id("order_execution", row_id)
        if row is None or not row.get("alpaca_order_id") or lifecycle.is_terminal(row["order_status"]):
            return
        for attempt in range(self.confirm_attempts):
            try:
                order = self.broker.get_order(row["alpaca_order_id"])
            except (NotFoundError, BrokerUnavailableError) as exc:
                logger.info("exit %s not confirmed yet: %s", row["alpaca_order_id"], exc)
                return
            self.record(trade_id, row_id, order)
            if order.terminal:
                return
            if attempt + 1 < self.confirm_attempts:
                self.sleep(self.confirm_interval)

    @_one_program_per_trade("deferred")
    def cancel_entry(self, trade_id: int, entry_reason: str, reason: str) -> str:
        """Cancel a trade's working entry (and its held legs). Returns ``cancelled`` (nothing was
        filled: the trade is CANCELLED), ``filled`` (shares were bought: the position stays,
        protected), ``not_working`` or ``deferred``."""
        view = self.view(trade_id)
        if view.entry_working and not self.cancel_and_confirm(trade_id, view.entry_working, reason=reason,
                                                              entry_reason=entry_reason):
            return "deferred"
        trade = self.reconciler.trades.get(trade_id)
        assert trade is not None
        if trade["status"] == TradeStatus.CANCELLED.value:
            return "cancelled"
        if trade["status"] in (TradeStatus.POSITION.value, TradeStatus.CLOSED.value):
            return "filled"
        return "not_working"
