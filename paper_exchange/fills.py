"""The paper fill model: when an order is marketable against the quote, and at what price.

Alpaca's paper environment fills only against the current quote: buys at the ask,
sells at the bid, never checking quote size. A marketable limit fills at the quote,
which is never worse than its limit. Stops are elected when the quote reaches the stop
(sell: bid <= stop, buy: ask >= stop) and then fill like market orders (stop) or work as
limits (stop_limit). Trailing stops move their stop with the high-water mark.

These functions are pure apart from updating the trailing stop's ``hwm``/``stop_price``
and the ``triggered`` flag on the order they are given.
"""

from __future__ import annotations

from decimal import Decimal

from .market import Quote
from .money import round_to_tick
from .orders import Order


def update_trailing_stop(order: Order, quote: Quote) -> None:
    """Move a trailing stop's high-water mark and stop price with the quote.

    A sell trails the bid: ``hwm`` is the highest bid seen, stop = hwm - trail.
    A buy trails the ask: ``hwm`` is the lowest ask seen, stop = hwm + trail.
    """
    if order.type != "trailing_stop" or order.triggered:
        return
    reference = quote.bid if order.side == "sell" else quote.ask
    if reference <= 0:
        return
    previous = order.hwm
    improved = previous is None or (reference > previous if order.side == "sell" else reference < previous)
    hwm = reference if improved or previous is None else previous
    order.hwm = hwm
    if order.trail_price is not None:
        offset = order.trail_price
    else:
        assert order.trail_percent is not None
        offset = hwm * order.trail_percent / Decimal(100)
    if order.side == "sell":
        order.stop_price = round_to_tick(max(hwm - offset, Decimal("0.0001")), "down")
    else:
        order.stop_price = round_to_tick(hwm + offset, "up")


def stop_reached(order: Order, quote: Quote) -> bool:
    """True when the quote elects the order's stop (sell: bid <= stop; buy: ask >= stop)."""
    if order.stop_price is None:
        return False
    if order.side == "sell":
        return quote.bid > 0 and quote.bid <= order.stop_price
    return quote.ask > 0 and quote.ask >= order.stop_price


def execution_price(order: Order, quote: Quote) -> Decimal | None:
    """The price this order fills at against ``quote`` now, or None if not marketable.

    Elects stops as a side effect (``order.triggered``); an elected stop stays elected.
    """
    if order.type == "trailing_stop":
        update_trailing_stop(order, quote)
    if order.type in ("stop", "stop_limit", "trailing_stop") and not order.triggered:
        if not stop_reached(order, quote):
            return None
        order.triggered = True
    behaves_as_limit = order.type in ("limit", "stop_limit")
    if order.side == "buy":
        if quote.ask <= 0:
            return None
        if behaves_as_limit and order.limit_price is not None and quote.ask > order.limit_price:
            return None
        return quote.ask
    if quote.bid <= 0:
        return None
    if behaves_as_limit and order.limit_price is not None and quote.bid < order.limit_price:
        return None
    return quote.bid


def reservation_price(order: Order, quote: Quote | None, fallback: Decimal | None) -> Decimal:
    """Price per share a buy order reserves from buying power.

    Limits reserve their limit; market orders the ask (or the last price); stops the
    higher of their stop and the ask, since a buy stop fills at or above its stop.
    """
    ask = quote.ask if quote is not None and quote.ask > 0 else fallback
    if order.type in ("limit", "stop_limit") and order.limit_price is not None:
        return order.limit_price
    candidates = [p for p in (ask, order.stop_price) if p is not None]
    return max(candidates) if candidates else Decimal(0)


def short_reservation_price(order: Order, quote: Quote | None, fallback: Decimal | None) -> Decimal:
    """Price per share a short sale reserves from buying power: its limit (or stop) price,
    else the bid (or the last price)."""
    bid = quote.bid if quote is not None and quote.bid > 0 else fallback
    for price in (order.limit_price, order.stop_price, bid):
        if price is not None:
            return price
    return Decimal(0)
