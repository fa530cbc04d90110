"""Order intake: ``POST /v2/orders`` and the checks every new order (or replacement) passes.

A request is parsed by :func:`paper_exchange.orders.parse_order_request`; here the exchange
checks it against its state: the asset is tradable, the client order id unused, the account's
configurations allow it, the exit prices of a bracket/OTO fit the base price, a closing
order's shares are free (403 "insufficient qty available"), and an opening order (a buy, or a
short sale in the margin account) fits the buying power. The accepted order (with its legs)
joins the book in ``pending_new``, or ``accepted`` while the market is closed.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from . import fills
from .errors import CODE_UNPROCESSABLE_INPUT, forbidden, unprocessable
from .money import ZERO, fmt, fmt_money
from .order_life import OrderLife
from .orders import (
    ACCEPTED,
    HELD,
    NEW,
    PENDING_NEW,
    LegSpec,
    Order,
    OrderSpec,
    check_exit_prices,
    new_order_id,
    notional_qty,
    parse_order_request,
)

GTC_LIFETIME = timedelta(days=90)


class Intake(OrderLife):
    """New orders and their checks (a part of :class:`~paper_exchange.engine.PaperExchange`)."""

    def submit_order(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v2/orders``: validate, accept and match an order; return it (nested legs)."""
        spec = parse_order_request(body)
        with self._lock:
            self._sync()
            order, legs = self._submit(spec)
            self._touch()
            return order.to_json(legs=legs if order.leg_ids else None)

    def _check_asset(self, symbol: str) -> str:
        asset = self.market.find_asset(symbol)
        if asset is None or asset.symbol != symbol:
            raise unprocessable(f'asset "{symbol}" not found', code=CODE_UNPROCESSABLE_INPUT)
        if not asset.tradable or asset.status != "active":
            raise unprocessable(f"asset {symbol} is not tradable")
        return asset.id

    def _check_client_order_id(self, client_order_id: str | None) -> str:
        if client_order_id is None:
            return str(uuid.uuid4())
        if client_order_id in self._by_client_id:
            raise unprocessable("client_order_id must be unique", code=CODE_UNPROCESSABLE_INPUT)
        return client_order_id

    def _check_sell(self, symbol: str, qty: Decimal, exclude: Order | None = None) -> None:
        available = self._qty_available(symbol, exclude)
        if qty > available:
            position = self._positions.get(symbol)
            existing = position.qty if position else ZERO
            raise forbidden(
                f"insufficient qty available for order (requested: {fmt(qty)}, "
                f"available: {fmt(max(available, ZERO))})",
                available=fmt(max(available, ZERO)),
                existing_qty=fmt(existing),
                held_for_orders=fmt(self._reserved_shares(symbol, exclude)),
                symbol=symbol,
            )

    def _check_cover(self, symbol: str, qty: Decimal, exclude: Order | None = None) -> None:
        """A buy on a short position may cover at most the shares not yet covered by open
        buys; buying beyond the short (a flip to long in one order) is refused like a sell
        beyond a long."""
        position = self._positions.get(symbol)
        short = -position.qty if position else ZERO
        reserved = self._reserved_shares(symbol, exclude, side="buy")
        available = max(short - reserved, ZERO)
        if qty > available:
            raise forbidden(
                f"insufficient qty available for order (requested: {fmt(qty)}, available: {fmt(available)})",
                available=fmt(available),
                existing_qty=fmt(-short),
                held_for_orders=fmt(reserved),
                symbol=symbol,
            )

    def _position_intent(self, symbol: str, side: str, qty: Decimal, exclude: Order | None = None) -> str:
        """What an order does to the position, checking the shares it may trade.

        Sells on a long position (and every sell in a cash account) must fit the free shares
        (403 otherwise; so a sell that would flip long to short is refused, as at Alpaca).
        With shorting enabled, a sell with no long position opens or increases a short (whole
        shares only). A buy on a short position covers it (up to the uncovered shares).
        """
        position = self._positions.get(symbol)
        held = position.qty if position else ZERO
        if side == "sell":
            if held > 0 or not self.shorting_enabled:
                self._check_sell(symbol, qty, exclude)
                return "sell_to_close"
            if qty != qty.to_integral_value():
                raise forbidden("fractional orders cannot be sold short", symbol=symbol)
            return "sell_to_open"
        if held < 0:
            self._check_cover(symbol, qty, exclude)
            return "buy_to_close"
        return "buy_to_open"

    def _opening_cost(self, order: Order) -> Decimal:
        """Buying power an opening order needs: qty times its reservation price."""
        quote, last = self.market.quote(order.symbol), self._last_price(order.symbol)
        if order.side == "buy":
            return order.qty * fills.reservation_price(order, quote, last)
        return order.qty * fills.short_reservation_price(order, quote, last)

    def _check_buying_power(self, cost: Decimal, exclude: Order | None = None) -> None:
        buying_power = self._buying_power(exclude)
        if cost > buying_power:
            raise forbidden(
                "insufficient buying power",
                buying_power=fmt_money(buying_power),
                cost_basis=fmt_money(cost),
            )

    def _base_price(self, spec: OrderSpec) -> Decimal | None:
        """Alpaca's base price for bracket/OTO exits: the entry limit, else the quote side."""
        if spec.type == "limit":
            return spec.limit_price
        quote = self.market.quote(spec.symbol)
        if quote is not None:
            side_price = quote.ask if spec.side == "buy" else quote.bid
            if side_price > 0:
                return side_price
        return self._last_price(spec.symbol)

    def _session_fields(self, tif: str, submitted: datetime) -> tuple[str | None, datetime | None]:
        """(session_day, expires_at) for a new order."""
        if self.always_open:
            return None, (submitted + GTC_LIFETIME if tif == "gtc" else None)
        session = self.calendar.current_or_next_session(submitted)
        if tif == "day":
            return session.day.isoformat(), session.close
        later = self.calendar.current_or_next_session(submitted + GTC_LIFETIME)
        return None, later.close

    def _submit(self, spec: OrderSpec, replaces: Order | None = None) -> tuple[Order, list[Order]]:
        asset_id = self._check_asset(spec.symbol)
        client_order_id = self._check_client_order_id(spec.client_order_id)
        if spec.notional is not None:  # sized here for the checks, again at the fill price
            spec.qty = notional_qty(spec.notional, self._base_price(spec))
        held = self._positions.get(spec.symbol)
        self.configurations.check_new_order(spec.side, spec.qty, held.qty if held else ZERO)
        if spec.order_class in ("bracket", "oto"):
            check_exit_prices(
                spec.side,
                spec.take_profit.limit_price if spec.take_profit else None,
                spec.stop_loss.stop_price if spec.stop_loss else None,
                base_price=self._base_price(spec),
            )
        quote = self.market.quote(spec.symbol)
        probe = Order(  # only for pricing the reservation
            id="", client_order_id="", symbol=spec.symbol, asset_id=asset_id, side=spec.side,
            type=spec.type, time_in_force=spec.time_in_force, order_class=spec.order_class,
            qty=spec.qty, created_at=self._now, submitted_at=self._now, updated_at=self._now,
            status=NEW, seq=0, limit_price=spec.limit_price, stop_price=spec.stop_price,
        )
        probe.position_intent = self._position_intent(spec.symbol, spec.side, spec.qty, exclude=replaces)
        if probe.opens_position:
            self._check_buying_power(self._opening_cost(probe), exclude=replaces)

        stamp = self._stamp()
        now = stamp
        session_day, expires_at = self._session_fields(spec.time_in_force, stamp)
        # Closed market: accepted (new at the open). Open: pending_new until acknowledged.
        status = ACCEPTED if not self._market_open() else NEW if self.instant else PENDING_NEW
        self._seq += 1
        parent = Order(
            id=new_order_id(),
            client_order_id=client_order_id,
            symbol=spec.symbol,
            asset_id=asset_id,
            side=spec.side,
            type=spec.type,
            time_in_force=spec.time_in_force,
            order_class=spec.order_class,
            qty=spec.qty,
            created_at=now,
            submitted_at=stamp,
            updated_at=now,
            status=status,
            seq=self._seq,
            limit_price=spec.limit_price,
            stop_price=spec.stop_price,
            trail_price=spec.trail_price,
            trail_percent=spec.trail_percent,
            session_day=session_day,
            expires_at=expires_at,
            position_intent=probe.position_intent,
        )
        if status == PENDING_NEW:
            parent.pending_due = self._due()
        if spec.type == "trailing_stop" and quote is not None:
            fills.update_trailing_stop(parent, quote)
        parent.notional = spec.notional
        legs: list[Order] = []
        exit_side = "sell" if spec.side == "buy" else "buy"
        if spec.order_class == "oco":
            parent.leg_role = "take_profit"
            assert spec.stop_loss is not None
            legs.append(self._new_leg(parent, spec.stop_loss, spec.side, activated=True))
        else:
            for leg_spec in (spec.take_profit, spec.stop_loss):
                if leg_spec is not None:
                    legs.append(self._new_leg(parent, leg_spec, exit_side, activated=False))
        self._add_order(parent)
        for leg in legs:
            self._add_order(leg)
        if parent.status == PENDING_NEW:
            self._pending[parent.id] = parent
        if self.instant and self._market_open():
            # The quote did not change: only the new orders can have become marketable.
            self._match_symbol(spec.symbol, only={parent.id, *(leg.id for leg in legs)})
        return parent, legs

    def _new_leg(self, parent: Order, spec: LegSpec, side: str, activated: bool) -> Order:
        self._seq += 1
        leg = Order(
            id=new_order_id(),
            client_order_id=str(uuid.uuid4()),
            symbol=parent.symbol,
            asset_id=parent.asset_id,
            side=side,
            type=spec.type,
            time_in_force=parent.time_in_force,
            order_class=parent.order_class,
            qty=parent.qty,
            created_at=parent.created_at,
            # Legs share the parent's submission moment (as in Alpaca's examples).
            submitted_at=parent.submitted_at,
            updated_at=parent.updated_at,
            status=HELD,
            seq=self._seq,
            limit_price=spec.limit_price,
            stop_price=spec.stop_price,
            session_day=parent.session_day,
            expires_at=parent.expires_at,
            parent_id=parent.id,
            leg_role=spec.role,
            activated=activated,
            # Exits close what the entry opens; an OCO's legs close like the OCO itself.
            position_intent=(parent.position_intent if parent.order_class == "oco"
                             else ("sell_to_close" if side == "sell" else "buy_to_close")),
        )
        parent.leg_ids.append(leg.id)
        return leg
