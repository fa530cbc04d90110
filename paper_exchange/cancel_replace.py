"""Cancel and replace requests: ``DELETE /v2/orders[/{id}]`` and ``PATCH /v2/orders/{id}``.

A cancel applies to the order's whole group; a replace makes a new order (new id, the old one
``replaced``) that keeps the old one's place in its group. Both are asynchronous by default:
the request starts ``pending_cancel``/``pending_replace`` and the order life
(:mod:`paper_exchange.order_life`) completes it at a later pass; ``instant=True`` completes
them at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import fills
from .errors import unprocessable
from .intake import Intake
from .money import ZERO, check_price, to_decimal
from .orders import (
    ACCEPTED,
    CANCELED,
    HELD,
    NEW,
    PENDING_CANCEL,
    PENDING_NEW,
    PENDING_REPLACE,
    REPLACEABLE_STATUSES,
    SUPPORTED_TIF,
    Order,
    check_exit_prices,
    check_replaceable,
    new_order_id,
    parse_client_order_id,
    parse_qty,
)


class CancelReplace(Intake):
    """Cancel and replace requests (a part of :class:`~paper_exchange.engine.PaperExchange`)."""

    def cancel_order(self, order_id: str) -> None:
        """``DELETE /v2/orders/{id}``: cancel the order and the rest of its group.

        Asynchronous by default: the members go ``pending_cancel`` (a repeated request is
        accepted again) and complete at the next pass, unless a fill wins the race.
        """
        with self._lock:
            self._sync()
            order = self._get(order_id)
            if order.is_final:
                raise unprocessable("order is not cancelable")
            if order.status == PENDING_NEW and order.becomes is not None:
                # A pending replacement: the replace completes first, then its group is canceled.
                old = self._orders.get(order.replaces or "")
                if old is not None and old.status == PENDING_REPLACE:
                    self._complete_replace(old, self._event_time())
            for member in self._group(order):
                if self.instant:
                    self._finish(member, CANCELED, self._event_time())
                else:
                    self._request_cancel(member)
            self._touch()

    def cancel_all_orders(self) -> list[dict[str, Any]]:
        """``DELETE /v2/orders``: cancel every open order; 207 items ``{id, status, body}``
        (the bodies show ``pending_cancel`` unless the exchange is instant)."""
        with self._lock:
            self._sync()
            result = []
            for order in list(self._order_list):
                if order.is_final or order.status == PENDING_CANCEL:
                    continue
                if self.instant:
                    self._finish(order, CANCELED, self._event_time())
                else:
                    self._request_cancel(order)
                    if order.is_final or order.status != PENDING_CANCEL:
                        continue  # a pending replacement: canceled through its own entry
                result.append({"id": order.id, "status": 200, "body": order.to_json()})
            self._touch()
            return result

    def replace_order(self, order_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PATCH /v2/orders/{id}``: a new order replaces the old one (``replaced``)."""
        if not isinstance(body, Mapping):
            raise unprocessable("request body must be a JSON object")
        with self._lock:
            self._sync()
            old = self._get(order_id)
            if old.status not in REPLACEABLE_STATUSES:
                raise unprocessable(f"order is not replaceable (status {old.status})")
            root = self._root(old)
            if old.parent_id and root.order_class == "oto":
                raise unprocessable("legs of oto orders cannot be replaced")
            fields = {k: v for k, v in body.items() if v is not None}
            if not fields:
                raise unprocessable("at least one of qty, limit_price, stop_price, trail, "
                                    "time_in_force or client_order_id is required")
            new = self._replacement(old, fields)
            self._touch()
            return new.to_json(legs=self._legs(new) if new.leg_ids else None)

    def _replacement(self, old: Order, fields: Mapping[str, Any]) -> Order:
        self.configurations.check_replace()
        check_replaceable(old, fields)
        qty = old.remaining
        if "qty" in fields:
            qty = parse_qty(fields["qty"], allow_fraction=old.qty != old.qty.to_integral_value())
        limit_price, stop_price = old.limit_price, old.stop_price
        trail_price, trail_percent = old.trail_price, old.trail_percent
        if "limit_price" in fields:
            if old.type not in ("limit", "stop_limit"):
                raise unprocessable(f"limit_price is not allowed for {old.type} orders")
            limit_price = check_price(fields["limit_price"], "limit_price")
        if "stop_price" in fields:
            if old.type not in ("stop", "stop_limit"):
                raise unprocessable(f"stop_price is not allowed for {old.type} orders")
            stop_price = check_price(fields["stop_price"], "stop_price")
        if "trail" in fields:
            if old.type != "trailing_stop":
                raise unprocessable(f"trail is not allowed for {old.type} orders")
            if old.trail_price is not None:
                trail_price = check_price(fields["trail"], "trail")
            else:
                trail_percent = to_decimal(fields["trail"], "trail")
                if not ZERO < trail_percent < 100:
                    raise unprocessable("trail must be > 0 and < 100 for trail_percent orders")
        tif = old.time_in_force
        if "time_in_force" in fields:
            tif = str(fields["time_in_force"]).lower()
            if tif not in SUPPORTED_TIF:
                raise unprocessable(f"invalid time_in_force: {fields['time_in_force']!r}")
        client_order_id = self._check_client_order_id(
            parse_client_order_id(fields.get("client_order_id"))
        )
        # A replaced exit must keep its relation to the other exit.
        exits = [o for o in self._exits(old) if o is not old]
        for other in exits:
            tp = limit_price if old.leg_role == "take_profit" else other.limit_price
            stop = stop_price if old.leg_role == "stop_loss" else other.stop_price
            if tp is not None and stop is not None:
                check_exit_prices(old.side, tp, stop, base_is_take_profit=True)
        probe = Order(
            id="", client_order_id="", symbol=old.symbol, asset_id=old.asset_id, side=old.side,
            type=old.type, time_in_force=tif, order_class=old.order_class, qty=qty,
            created_at=self._now, submitted_at=self._now, updated_at=self._now, status=NEW,
            seq=0, limit_price=limit_price, stop_price=stop_price,
        )
        probe.position_intent = old.position_intent
        if old.status != HELD:
            if probe.opens_position:
                self._check_buying_power(self._opening_cost(probe), exclude=old)
            elif old.side == "sell":
                self._check_sell(old.symbol, qty, exclude=old)
            else:
                self._check_cover(old.symbol, qty, exclude=old)
        stamp = self._stamp()
        now = stamp
        self._seq += 1
        session_day, expires_at = old.session_day, old.expires_at
        if tif != old.time_in_force:
            session_day, expires_at = self._session_fields(tif, stamp)
        new = Order(
            id=new_order_id(),
            client_order_id=client_order_id,
            symbol=old.symbol,
            asset_id=old.asset_id,
            side=old.side,
            type=old.type,
            time_in_force=tif,
            order_class=old.order_class,
            qty=qty,
            created_at=now,
            submitted_at=stamp,
            updated_at=now,
            status=old.status if old.status == HELD else (NEW if self._market_open() else ACCEPTED),
            position_intent=old.position_intent,
            seq=self._seq,
            limit_price=limit_price,
            stop_price=stop_price,
            trail_price=trail_price,
            trail_percent=trail_percent,
            hwm=old.hwm,
            replaces=old.id,
            session_day=session_day,
            expires_at=expires_at,
            parent_id=old.parent_id,
            leg_ids=list(old.leg_ids),
            leg_role=old.leg_role,
            activated=old.activated,
            triggered=old.triggered,
        )
        if new.type == "trailing_stop":
            new.hwm = None
            quote = self.market.quote(new.symbol)
            if quote is not None:
                fills.update_trailing_stop(new, quote)
        if not self.instant:
            # Alpaca: the old order is pending_replace (it stops working) until the replace
            # completes at the next pass; the replacement waits in pending_new until then.
            new.becomes = new.status
            new.status = PENDING_NEW
            old.prior_status = old.status
            old.status = PENDING_REPLACE
            old.replacement_id = new.id
            old.pending_due = self._due()
            old.updated_at = now
            self._add_order(new)
            self._pending[old.id] = old
            return new
        self._link_replacement(old, new, now)
        if self._market_open():
            self._match_symbol(new.symbol, only={new.id})
        return new
