"""Matching and fills: working orders against the quote, executions, and what a fill sets off.

One evaluation of a symbol (:meth:`Matching._match_symbol`) looks at each working order once:
a stop-loss leg waiting in ``held`` is elected when the quote reaches its stop; an order whose
price is marketable fills (all, or part with the partial-fill probability) at the price
:mod:`paper_exchange.fills` gives; the fill moves cash and the position; a filled entry
activates its legs, a filled exit cancels its sibling. When these evaluations happen (and
when pending acknowledgements and cancels complete around them) is the order life's business
(:mod:`paper_exchange.order_life`).
"""

from __future__ import annotations

import logging
from decimal import ROUND_FLOOR, Decimal

from . import fills
from .account import Account
from .market import Quote
from .money import ZERO, cents, fmt
from .orders import CANCELED, FILLED, HELD, NEW, PARTIALLY_FILLED, PENDING_CANCEL, WORKING_STATUSES, Order, notional_qty
from .positions import Position

log = logging.getLogger(__name__)


class Matching(Account):
    """Order evaluation and execution (a part of :class:`~paper_exchange.engine.PaperExchange`)."""

    def _set_live_status(self, order: Order, status: str) -> None:
        """Set a working status; an order with a pending cancel keeps showing
        ``pending_cancel`` and remembers the status it works under."""
        if order.status == PENDING_CANCEL:
            order.prior_status = status
        else:
            order.status = status

    def _match_symbol(self, symbol: str, only: set[str] | None = None) -> None:
        """Evaluate the working orders of ``symbol`` once against the current quote.

        ``only`` limits the pass to those orders (and whatever they activate). Orders
        that become workable during the pass (legs activated by an entry fill) are
        evaluated too; an order already evaluated waits for the next pass, which is how
        the remainder of a partial fill is "re-evaluated" later, as in Alpaca's paper.
        """
        if not self._market_open():
            return
        quote = self.market.quote(symbol)
        if quote is None:
            return
        evaluated: set[str] = set()
        scope = None if only is None else set(only)
        while True:
            book = self._open_by_symbol.get(symbol, {})
            pending = sorted(
                (
                    o
                    for o in book.values()
                    if o.id not in evaluated
                    and (scope is None or o.id in scope or (o.parent_id is not None and o.parent_id in scope))
                ),
                key=lambda o: o.seq,
            )
            if not pending:
                return
            progressed = False
            for order in pending:
                evaluated.add(order.id)
                if self._evaluate(order, quote):
                    progressed = True
            if not progressed:
                return

    def _evaluate(self, order: Order, quote: Quote) -> bool:
        if order.is_final:
            return False
        status = order.live_status if order.status == PENDING_CANCEL else order.status
        if status == HELD:
            # A bracket/OCO stop-loss waits in `held` but is still watched: the broker
            # elects it when the quote reaches the stop, then the take-profit goes away.
            if not (order.activated and order.leg_role == "stop_loss"):
                return False
            if not fills.stop_reached(order, quote):
                return False
            self._elect_stop(order)
        elif status not in WORKING_STATUSES:
            return False
        price = fills.execution_price(order, quote)
        if price is None:
            return False
        if order.notional is not None and order.filled_qty == 0:
            order.qty = notional_qty(order.notional, price, on_submit=False)
        qty = self._fill_quantity(order)
        if qty <= 0:
            return False
        self._execute(order, qty, price)
        return True

    def _elect_stop(self, stop: Order) -> None:
        for sibling in self._exits(stop):
            if sibling is not stop:
                self._finish(sibling, CANCELED, self._event_time())
        self._set_live_status(stop, NEW)
        stop.triggered = True
        stop.updated_at = self._event_time()

    def _fill_quantity(self, order: Order) -> Decimal:
        remaining = order.remaining
        if not order.opens_position:
            # A closing order never sells (or covers) more than the position still holds.
            position = self._positions.get(order.symbol)
            held = position.qty if position else ZERO
            closable = held if order.side == "sell" else -held
            remaining = min(remaining, max(closable, ZERO))
        probability = self.partial_fill_probability
        if probability <= 0 or remaining < 2 or self._fill_rng.random() >= probability:
            return remaining
        whole = int(remaining.to_integral_value(rounding=ROUND_FLOOR))
        return Decimal(self._fill_rng.randint(1, whole - 1))

    def _execute(self, order: Order, qty: Decimal, price: Decimal) -> None:
        now = self._event_time()
        notional = qty * price
        position = self._positions.get(order.symbol)
        if position is None:
            position = Position(order.symbol, ZERO, ZERO, now)
            self._positions[order.symbol] = position
        if order.side == "buy":
            position.buy(qty, price, now)
            self.cash -= cents(notional)
        else:
            position.sell(qty, price, now)
            self.cash += cents(notional)
        if position.qty == 0:
            del self._positions[order.symbol]
        order.filled_qty += qty
        order.filled_notional += notional
        order.updated_at = now
        order.last_fill_at = now
        self.market.record_fill(order.symbol, price, qty, now)
        log.debug("fill %s %s %s %s @ %s", order.id, order.side, fmt(qty), order.symbol, price)
        if order.filled_qty >= order.qty:
            # A fill that lands while a cancel is pending wins: the order ends filled.
            self._pending.pop(order.id, None)
            order.status = FILLED
            order.filled_at = now
            book = self._open_by_symbol.get(order.symbol)
            if book is not None:
                book.pop(order.id, None)
        else:
            self._set_live_status(order, PARTIALLY_FILLED)
        self._after_fill(order)

    def _after_fill(self, order: Order) -> None:
        if order.leg_ids and order.order_class in ("bracket", "oto"):
            if order.status == FILLED:
                self._activate_legs(order)
            return
        exits = self._exits(order)
        if not exits:
            return
        for sibling in exits:
            if sibling is order or sibling.is_final:
                continue
            if order.status == FILLED:
                self._finish(sibling, CANCELED, self._event_time())
            elif order.leg_role == "take_profit":
                # The stop protects only what the take-profit has not sold yet.
                sibling.qty = order.remaining
                sibling.updated_at = self._event_time()

    def _activate_legs(self, entry: Order) -> None:
        """The entry is completely filled: the legs start working (take-profit `new`,
        a bracket's stop-loss stays `held` but watched; an OTO's single leg is `new`)."""
        legs = self._legs(entry)
        for leg in legs:
            if leg.is_final:
                continue
            leg.activated = True
            leg.updated_at = self._event_time()
            if entry.order_class == "bracket" and leg.leg_role == "stop_loss":
                continue
            self._set_live_status(leg, NEW)
