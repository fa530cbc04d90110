"""The order book: the exchange's state, every order and its index, and the order groups.

:class:`OrderBook` is the base of :class:`~paper_exchange.engine.PaperExchange`'s parts (the
account, matching, the order life, intake, cancel/replace, positions, the clock, market data):
it declares the settings and state they share (set by ``PaperExchange.__init__`` and
:meth:`OrderBook._init_book`), keeps the orders indexed (by id, client order id, submission
time and open orders by symbol), knows the groups (a bracket/OTO entry and its legs, both
sides of an OCO), moves an order to a final status (:meth:`OrderBook._finish`) and answers the
order queries (``GET /v2/orders...``).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .calendar import NyseCalendar
from .configurations import AccountConfigurations
from .errors import not_found, unprocessable
from .history import EquityHistory
from .market import Market, seeded_rng
from .money import ZERO
from .orders import CANCELED, EXPIRED, NEW, OPEN_LISTED_STATUSES, PENDING_REPLACE, REPLACED, Order

if TYPE_CHECKING:
    from .positions import Position

MAX_ORDER_LIMIT = 500
ONE_MICROSECOND = timedelta(microseconds=1)


class OrderBook:
    """The shared state and the order index (a base class; see the module docstring)."""

    # Settings and state set by PaperExchange.__init__ (the rest by _init_book).
    _lock: threading.RLock
    seed: int
    instant: bool
    ack_latency: timedelta
    account_type: str
    simulated_clock: bool
    always_open: bool
    starting_cash: Decimal
    partial_fill_probability: float
    calendar: NyseCalendar
    market: Market
    account_id: str
    account_number: str
    account_created_at: datetime
    revision: int
    _now: datetime

    if TYPE_CHECKING:
        def _sync(self) -> None:
            """Catch up with the passage of time (provided by the clock)."""

    def _init_book(self) -> None:
        """The state of a new (or reset) book: no orders, no positions, the starting cash."""
        self._orders: dict[str, Order] = {}
        self._order_list: list[Order] = []  # ascending (submitted_at, seq)
        self._stamps: list[datetime] = []
        self._by_client_id: dict[str, str] = {}
        self._open_by_symbol: dict[str, dict[str, Order]] = {}
        # Buying power held by open orders, by order id (paper_exchange/account.py): a hold
        # priced by the order itself (its limit or stop) is priced again only when the order
        # changes; one priced by the quote at every count.
        self._fixed_holds: dict[str, Decimal] = {}
        self._fixed_holds_total: Decimal = ZERO
        self._quoted_holds: dict[str, Order] = {}
        self._stale_holds: dict[str, Order] = {}
        self._positions: dict[str, Position] = {}
        self.configurations = AccountConfigurations()
        self.cash: Decimal = self.starting_cash
        self.equity_history = EquityHistory(self._now, self.cash)
        self.last_equity: Decimal = self.starting_cash
        # The last close's equity, until the next session's open makes it ``last_equity``.
        self._closing_equity: Decimal | None = None
        self._seq = 0
        self._last_stamp: datetime | None = None
        self._fill_rng = seeded_rng(f"{self.seed}:fills")
        self._last_reevaluation = self._now
        # Orders with a pending step (pending_new, pending_cancel, pending_replace).
        self._pending: dict[str, Order] = {}
        self.last_maintenance_margin: Decimal = ZERO

    def _touch(self) -> None:
        self.revision += 1

    def _market_open(self) -> bool:
        return self.always_open or self.calendar.is_open(self._now)

    def _event_time(self) -> datetime:
        """Time of an order event: never before the last submission stamp, so that
        ``created_at <= submitted_at <= filled_at/canceled_at`` even when many orders
        arrive while the simulated clock stands still."""
        if self._last_stamp is not None and self._last_stamp > self._now:
            return self._last_stamp
        return self._now

    def _stamp(self) -> datetime:
        """A submission time strictly later than every earlier one (bumped by 1 µs)."""
        stamp = self._now
        if self._last_stamp is not None and stamp <= self._last_stamp:
            stamp = self._last_stamp + ONE_MICROSECOND
        self._last_stamp = stamp
        return stamp

    def _open_orders(self) -> list[Order]:
        return [o for book in self._open_by_symbol.values() for o in list(book.values())]

    def _add_order(self, order: Order) -> None:
        self._orders[order.id] = order
        self._order_list.append(order)
        self._stamps.append(order.submitted_at)
        self._by_client_id[order.client_order_id] = order.id
        self._open(order)

    def _open(self, order: Order) -> None:
        """Put an order into the working book; its holds are counted again from now on."""
        self._open_by_symbol.setdefault(order.symbol, {})[order.id] = order
        order.watch(self._hold_changed)
        self._hold_changed(order)

    def _hold_changed(self, order: Order) -> None:
        self._stale_holds[order.id] = order

    def _finish(self, order: Order, status: str, moment: datetime) -> None:
        """Move an order to a final status and drop it from the working book."""
        if order.is_final:
            return
        if order.status == PENDING_REPLACE:
            self._drop_replacement(order, moment)
        self._pending.pop(order.id, None)
        order.status = status
        order.updated_at = moment
        if status == CANCELED:
            order.canceled_at = moment
        elif status == EXPIRED:
            order.expired_at = moment
        elif status == REPLACED:
            order.replaced_at = moment
        book = self._open_by_symbol.get(order.symbol)
        if book is not None:
            book.pop(order.id, None)
        order.watch(None)
        self._hold_changed(order)

    def _drop_replacement(self, old: Order, moment: datetime) -> None:
        """``old`` ended (filled by a sibling's rule, expired) while its replace was pending:
        the replacement never starts."""
        new = self._orders.get(old.replacement_id or "")
        old.status = old.prior_status or NEW
        if new is not None and not new.is_final:
            new.becomes = None
            self._finish(new, CANCELED, moment)

    def _legs(self, order: Order) -> list[Order]:
        return [self._orders[i] for i in order.leg_ids if i in self._orders]

    def _root(self, order: Order) -> Order:
        if order.parent_id and order.parent_id in self._orders:
            return self._orders[order.parent_id]
        return order

    def _group(self, order: Order) -> list[Order]:
        root = self._root(order)
        return [root, *self._legs(root)]

    def _exits(self, order: Order) -> list[Order]:
        """The exit orders of ``order``'s group (bracket legs, or both sides of an OCO)."""
        root = self._root(order)
        if root.order_class == "oco":
            return [root, *self._legs(root)]
        if root.order_class == "bracket":
            return self._legs(root)
        return []

    def _get(self, order_id: str) -> Order:
        order = self._orders.get(str(order_id).lower())
        if order is None:
            raise not_found("order not found")
        return order

    def get_order(self, order_id: str, nested: bool = False) -> dict[str, Any]:
        """``GET /v2/orders/{id}`` (``nested`` puts the legs under the parent)."""
        with self._lock:
            self._sync()
            order = self._get(order_id)
            return order.to_json(legs=self._legs(order) if nested and order.leg_ids else None)

    def get_order_by_client_id(self, client_order_id: str, nested: bool = False) -> dict[str, Any]:
        """``GET /v2/orders:by_client_order_id``."""
        with self._lock:
            self._sync()
            order_id = self._by_client_id.get(client_order_id)
            if order_id is None:
                raise not_found("order not found")
            order = self._orders[order_id]
            return order.to_json(legs=self._legs(order) if nested and order.leg_ids else None)

    def list_orders(
        self,
        *,
        status: str = "open",
        limit: int = 50,
        after: datetime | None = None,
        until: datetime | None = None,
        direction: str = "desc",
        nested: bool = False,
        symbols: Iterable[str] | None = None,
        side: str | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /v2/orders``: filtered by status, paged by ``after``/``until`` (exclusive,
        on ``submitted_at``), sorted by submission time in ``direction``."""
        if status not in ("open", "closed", "all"):
            raise unprocessable(f"invalid status: {status!r}")
        if direction not in ("asc", "desc"):
            raise unprocessable(f"invalid direction: {direction!r}")
        if not 1 <= limit <= MAX_ORDER_LIMIT:
            raise unprocessable(f"invalid limit {limit}: must be between 1 and {MAX_ORDER_LIMIT}")
        if side is not None and side not in ("buy", "sell"):
            raise unprocessable(f"invalid side: {side!r}")
        wanted = {s.upper() for s in symbols} if symbols else None
        with self._lock:
            self._sync()
            lo = bisect.bisect_right(self._stamps, after) if after is not None else 0
            hi = bisect.bisect_left(self._stamps, until) if until is not None else len(self._stamps)
            indices = range(lo, hi) if direction == "asc" else range(hi - 1, lo - 1, -1)
            result: list[dict[str, Any]] = []
            for index in indices:
                order = self._order_list[index]
                if nested and order.parent_id:
                    continue
                if wanted is not None and order.symbol not in wanted:
                    continue
                if side is not None and order.side != side:
                    continue
                legs = self._legs(order) if nested and order.leg_ids else None
                if not _status_matches(order, legs, status):
                    continue
                result.append(order.to_json(legs=legs))
                if len(result) >= limit:
                    break
            return result


def _status_matches(order: Order, legs: list[Order] | None, status: str) -> bool:
    """Status filter of ``GET /v2/orders``.

    Flat listing: each order by its own status; ``open`` leaves out ``held`` legs.
    Nested listing: a group is ``open`` while its parent or any leg is still working
    (so a filled entry with live exits is still found), and ``closed`` once all ended.
    """
    if status == "all":
        return True
    if legs is None:
        if status == "open":
            return order.status in OPEN_LISTED_STATUSES
        return order.is_final
    group_open = not order.is_final or any(not leg.is_final for leg in legs)
    return group_open if status == "open" else not group_open
