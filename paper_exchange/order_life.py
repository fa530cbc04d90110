"""The asynchronous order life, as at Alpaca: ``pending_new``, ``pending_cancel``, ``pending_replace``.

A new order is answered ``pending_new`` (``accepted`` while the market is closed) and becomes
``new`` at a matching pass once the acknowledgement latency has passed (on the simulated
clock: at the next pass). A cancel request puts the order in ``pending_cancel``; it keeps
working and a fill may still win the race; the cancel completes at the end of a later pass
(:meth:`OrderLife._settle_cancels`), the legs of a group one pass after their parent. A replace
request puts the old order in ``pending_replace`` (it stops working) and its replacement in
``pending_new``; the replace completes at the next pass (:meth:`OrderLife._complete_replace`).
One pass of a symbol (:meth:`OrderLife._pass`): due acknowledgements and replaces complete,
the orders match, due cancels complete. With ``instant=True`` none of this waits.
"""

from __future__ import annotations

from datetime import datetime

from .matching import Matching
from .orders import ACCEPTED, CANCELED, HELD, NEW, PENDING_CANCEL, PENDING_NEW, PENDING_REPLACE, REPLACED, Order


class OrderLife(Matching):
    """Pending steps and matching passes (a part of :class:`~paper_exchange.engine.PaperExchange`)."""

    def _due(self) -> datetime | None:
        """When a pending step (acknowledgement, cancel, replace) may complete: after the
        latency on the wall clock; at the next pass on the simulated clock (None)."""
        if self.simulated_clock:
            return None
        return self._now + self.ack_latency

    def _is_due(self, order: Order) -> bool:
        return order.pending_due is None or order.pending_due <= self._now

    def _pass(self, symbol: str) -> None:
        """One matching pass of ``symbol``: due acknowledgements and replaces complete, the
        working orders match against the quote, then due cancels complete (so a fill that
        lands before the cancel completes wins the race, as at Alpaca)."""
        if self._pending:
            self._settle_new(symbol)
        self._match_symbol(symbol)
        if self._pending:
            self._settle_cancels(symbol)

    def _match_all(self) -> None:
        for symbol in [s for s, book in self._open_by_symbol.items() if book]:
            self._pass(symbol)

    def _settle_new(self, symbol: str) -> None:
        moment = self._event_time()
        for order in sorted(self._pending.values(), key=lambda o: o.seq):
            if order.symbol != symbol or not self._is_due(order):
                continue
            if order.status == PENDING_NEW:
                self._pending.pop(order.id, None)
                order.status = NEW if self._market_open() else ACCEPTED
                order.updated_at = moment
            elif order.status == PENDING_REPLACE:
                self._complete_replace(order, moment)

    def _settle_cancels(self, symbol: str) -> None:
        moment = self._event_time()
        ready = [
            o for o in self._pending.values()
            if o.symbol == symbol and o.status == PENDING_CANCEL and self._is_due(o)
            # Legs follow their parent: they complete at a pass after the parent's cancel.
            and (o.parent_id is None or self._orders[o.parent_id].is_final)
        ]
        for order in ready:
            self._finish(order, CANCELED, moment)

    def _request_cancel(self, order: Order) -> None:
        if order.is_final or order.status == PENDING_CANCEL:
            return
        if order.status == PENDING_REPLACE:
            # A cancel arriving while a replace is pending applies to the replacement.
            replacement = self._complete_replace(order, self._event_time())
            if replacement is not None:
                self._request_cancel(replacement)
            return
        order.prior_status = order.status
        order.status = PENDING_CANCEL
        order.pending_due = self._due()
        order.updated_at = self._event_time()
        self._pending[order.id] = order

    def _complete_replace(self, old: Order, moment: datetime) -> Order | None:
        """The pending replace of ``old`` completes: ``old`` is ``replaced``, its replacement
        takes its place in the group and starts working."""
        new = self._orders.get(old.replacement_id or "")
        self._pending.pop(old.id, None)
        old.status = old.prior_status or NEW
        old.prior_status = None
        if new is None or new.is_final:
            return None
        status = new.becomes or NEW
        if status != HELD:
            status = NEW if self._market_open() else ACCEPTED
        new.status, new.becomes = status, None
        new.updated_at = moment
        self._link_replacement(old, new, moment)
        return new

    def _link_replacement(self, old: Order, new: Order, now: datetime) -> None:
        """``old`` becomes ``replaced`` by ``new``, which takes its place in the group."""
        self._finish(old, REPLACED, now)
        old.replaced_by = new.id
        if new.id not in self._orders:
            self._add_order(new)
        if old.parent_id:
            parent = self._orders[old.parent_id]
            parent.leg_ids = [new.id if i == old.id else i for i in parent.leg_ids]
        for leg in self._legs(new):
            leg.parent_id = new.id
            if not leg.activated and leg.qty != new.qty:
                leg.qty = new.qty
