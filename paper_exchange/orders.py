"""Orders: the record kept per order, its Alpaca JSON form, and request validation.

Validation here is everything that can be decided from the request alone (shapes,
enums, prices, order-class combinations). Checks that need exchange state (asset
exists, duplicate client_order_id, quantity available, buying power, market base
price) live in the engine.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from .errors import CODE_UNPROCESSABLE_INPUT, unprocessable
from .money import ZERO, check_price, fmt, fmt_price, round_to_tick, to_decimal
from .timeutil import iso_utc, parse_timestamp

# Statuses -------------------------------------------------------------------------
NEW = "new"
PARTIALLY_FILLED = "partially_filled"
FILLED = "filled"
CANCELED = "canceled"
EXPIRED = "expired"
REPLACED = "replaced"
REJECTED = "rejected"
ACCEPTED = "accepted"
HELD = "held"
# The asynchronous steps of an order's life (see the engine's "Order life" notes).
PENDING_NEW = "pending_new"
PENDING_CANCEL = "pending_cancel"
PENDING_REPLACE = "pending_replace"

FINAL_STATUSES = frozenset({FILLED, CANCELED, EXPIRED, REPLACED, REJECTED})
# Listed by GET /v2/orders?status=open. Held legs are left out, as Alpaca does (observed).
OPEN_LISTED_STATUSES = frozenset(
    {NEW, PARTIALLY_FILLED, ACCEPTED, PENDING_NEW, PENDING_CANCEL, PENDING_REPLACE, "done_for_day"}
)
WORKING_STATUSES = frozenset({NEW, PARTIALLY_FILLED})
REPLACEABLE_STATUSES = frozenset({NEW, PARTIALLY_FILLED, HELD})

ORDER_TYPES = ("market", "limit", "stop", "stop_limit", "trailing_stop")
SUPPORTED_TIF = ("day", "gtc")
KNOWN_TIF = ("day", "gtc", "opg", "cls", "ioc", "fok")
ORDER_CLASSES = ("simple", "bracket", "oco", "oto")
CLIENT_ORDER_ID_MAX = 128
# Alpaca takes fractional quantities on simple day orders of these types (market and limit
# since 2020, stop and stop-limit since 2024); notional amounts on simple market day orders.
FRACTIONAL_TYPES = ("market", "limit", "stop", "stop_limit")
QTY_PLACES = Decimal("0.000000001")
MIN_NOTIONAL = Decimal(1)
# Buy stops become stop-limits with a limit this far above the stop (Alpaca's protection).
BUY_STOP_LIMIT_MARKUP_UNDER_50 = Decimal("0.04")
BUY_STOP_LIMIT_MARKUP_FROM_50 = Decimal("0.025")


#: The fields an open order's hold on buying power depends on (with its symbol's quote):
#: setting one tells the order's watcher, so the account prices that order's hold again
#: instead of walking the whole book for every new order (:meth:`Order.watch`).
HOLD_FIELDS = frozenset({"status", "prior_status", "becomes", "qty", "filled_qty", "limit_price", "stop_price",
                         "type", "side", "position_intent", "notional"})


@dataclass
class Order:
    """One order as the exchange keeps it (Decimal money, aware UTC datetimes)."""

    id: str
    client_order_id: str
    symbol: str
    asset_id: str
    side: str
    type: str
    time_in_force: str
    order_class: str
    qty: Decimal
    created_at: datetime
    submitted_at: datetime
    updated_at: datetime
    status: str
    seq: int
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    hwm: Decimal | None = None
    # A notional order's dollar amount; its qty is sized from it at the fill price.
    notional: Decimal | None = None
    filled_qty: Decimal = ZERO
    filled_notional: Decimal = ZERO
    filled_at: datetime | None = None
    expired_at: datetime | None = None
    canceled_at: datetime | None = None
    failed_at: datetime | None = None
    replaced_at: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    expires_at: datetime | None = None
    # The trading day a day order belongs to (ISO date); it expires at that day's close.
    session_day: str | None = None
    # Group bookkeeping: a parent lists its legs, a leg points at its parent.
    parent_id: str | None = None
    leg_ids: list[str] = field(default_factory=list)
    leg_role: str | None = None  # "take_profit" | "stop_loss" for legs and OCO parents
    activated: bool = False  # legs: the entry has completely filled
    triggered: bool = False  # stop / stop_limit / trailing_stop: elected
    last_fill_at: datetime | None = None
    # Asynchronous life: the status a pending_cancel / pending_replace order had before the
    # request (a pending cancel keeps working as before, so a fill can still win the race),
    # the status a pending replacement takes when the replace completes, and when the
    # pending step is due (None: at the next matching pass).
    prior_status: str | None = None
    becomes: str | None = None
    pending_due: datetime | None = None
    replacement_id: str | None = None
    # buy_to_open | buy_to_close | sell_to_open (a short sale) | sell_to_close; "" = legacy.
    position_intent: str = ""

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in HOLD_FIELDS:
            watcher = self.__dict__.get("_watcher")
            if watcher is not None:
                watcher(self)

    def watch(self, watcher: Callable[[Order], None] | None) -> None:
        """Call ``watcher(order)`` after every change of a field in :data:`HOLD_FIELDS`
        (None: stop). Not a dataclass field, so it is neither compared nor saved."""
        self.__dict__["_watcher"] = watcher

    @property
    def live_status(self) -> str:
        """The status matching and reservations act on: a pending cancel works as before it
        was requested; a pending replacement as what it will become."""
        if self.status == PENDING_CANCEL and self.prior_status:
            return self.prior_status
        if self.status == PENDING_NEW and self.becomes:
            return self.becomes
        return self.status

    @property
    def opens_position(self) -> bool:
        """True for orders that open or increase a position (they need buying power)."""
        if self.position_intent:
            return self.position_intent.endswith("_open")
        return self.side == "buy"

    @property
    def remaining(self) -> Decimal:
        """Quantity still to fill."""
        return self.qty - self.filled_qty

    @property
    def is_final(self) -> bool:
        """True once filled, canceled, expired, replaced or rejected."""
        return self.status in FINAL_STATUSES

    @property
    def filled_avg_price(self) -> Decimal | None:
        """Volume-weighted average fill price, or None before the first fill."""
        if self.filled_qty == 0:
            return None
        return self.filled_notional / self.filled_qty

    def to_json(self, legs: list[Order] | None = None) -> dict[str, Any]:
        """The order as Alpaca's Order object; ``legs`` given means nested form."""
        avg = self.filled_avg_price
        body: dict[str, Any] = {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": iso_utc(self.created_at),
            "updated_at": iso_utc(self.updated_at),
            "submitted_at": iso_utc(self.submitted_at),
            "filled_at": _ts(self.filled_at),
            "expired_at": _ts(self.expired_at),
            "canceled_at": _ts(self.canceled_at),
            "failed_at": _ts(self.failed_at),
            "replaced_at": _ts(self.replaced_at),
            "replaced_by": self.replaced_by,
            "replaces": self.replaces,
            "asset_id": self.asset_id,
            "symbol": self.symbol,
            "asset_class": "us_equity",
            "notional": _num(self.notional),
            "qty": None if self.notional is not None else fmt(self.qty),
            "filled_qty": fmt(self.filled_qty),
            "filled_avg_price": None if avg is None else fmt_price(avg),
            # Alpaca answers "" for simple orders; alpaca-py maps it to OrderClass.SIMPLE.
            "order_class": "" if self.order_class == "simple" else self.order_class,
            "order_type": self.type,
            "type": self.type,
            "side": self.side,
            "position_intent": self.position_intent
            or ("buy_to_open" if self.side == "buy" else "sell_to_close"),
            "time_in_force": self.time_in_force,
            "limit_price": _num(self.limit_price),
            "stop_price": _num(self.stop_price),
            "status": self.status,
            "extended_hours": False,
            "legs": None if legs is None else [leg.to_json() for leg in legs],
            "trail_percent": _num(self.trail_percent),
            "trail_price": _num(self.trail_price),
            "hwm": _num(self.hwm),
        }
        if self.expires_at is not None:
            body["expires_at"] = iso_utc(self.expires_at)
        return body

    def to_state(self) -> dict[str, Any]:
        """Lossless JSON-ready form for the state file."""
        result: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Decimal):
                value = str(value)
            elif isinstance(value, datetime):
                value = iso_utc(value)
            elif isinstance(value, list):
                value = list(value)
            result[f.name] = value
        return result

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Order:
        """Rebuild an order written by :meth:`to_state`."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            kind = str(f.type)
            if value is not None and "Decimal" in kind:
                value = Decimal(value)
            elif value is not None and "datetime" in kind:
                value = parse_timestamp(value)
            kwargs[f.name] = value
        return cls(**kwargs)


def _ts(value: datetime | None) -> str | None:
    return None if value is None else iso_utc(value)


def _num(value: Decimal | None) -> str | None:
    return None if value is None else fmt(value)


# Requests -------------------------------------------------------------------------
@dataclass
class LegSpec:
    """A take-profit or stop-loss leg of an advanced order."""

    role: str
    type: str
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None


@dataclass
class OrderSpec:
    """A validated ``POST /v2/orders`` request."""

    symbol: str
    qty: Decimal
    side: str
    type: str
    time_in_force: str
    order_class: str
    client_order_id: str | None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    take_profit: LegSpec | None = None
    stop_loss: LegSpec | None = None
    # Notional orders: the dollar amount (``qty`` is then an estimate until the fill sizes it).
    notional: Decimal | None = None


def new_order_id() -> str:
    """A fresh order id (UUID4)."""
    return str(uuid.uuid4())


def _enum(body: Mapping[str, Any], name: str, allowed: tuple[str, ...], default: str | None = None) -> str:
    value = body.get(name, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise unprocessable(f"{name} is required")
    if not isinstance(value, str) or value.lower() not in allowed:
        raise unprocessable(f"invalid {name}: {value!r}")
    return value.lower()


def parse_client_order_id(value: Any) -> str | None:
    """Validate an optional client_order_id (string, at most 128 characters)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise unprocessable("invalid client_order_id")
    if len(value) > CLIENT_ORDER_ID_MAX:
        raise unprocessable(
            f"client_order_id must be no more than {CLIENT_ORDER_ID_MAX} characters"
        )
    return value


def parse_qty(value: Any, allow_fraction: bool) -> Decimal:
    """Order quantity: positive, at most 9 decimals, whole unless fractions are allowed."""
    if value is None:
        raise unprocessable("qty is required")
    qty = to_decimal(value, "qty")
    if qty <= 0:
        raise unprocessable("qty must be > 0")
    if qty != qty.quantize(QTY_PLACES):
        raise unprocessable("qty can have at most 9 decimal places")
    if qty != qty.to_integral_value() and not allow_fraction:
        raise unprocessable(
            "fractional orders are only supported for simple market, limit, stop or stop_limit day orders"
        )
    return qty.to_integral_value() if qty == qty.to_integral_value() else qty


def parse_order_request(body: Mapping[str, Any]) -> OrderSpec:
    """Validate a ``POST /v2/orders`` body; raise 422 ExchangeError on invalid input."""
    if not isinstance(body, Mapping):
        raise unprocessable("request body must be a JSON object")
    symbol = body.get("symbol")
    if not isinstance(symbol, str) or not symbol.strip():
        raise unprocessable("symbol is required")
    if body.get("legs"):
        raise unprocessable("mleg orders are not supported by the paper exchange")
    side = _enum(body, "side", ("buy", "sell"))
    order_type = _enum(body, "type", ORDER_TYPES)
    tif = _enum(body, "time_in_force", KNOWN_TIF)
    if tif not in SUPPORTED_TIF:
        raise unprocessable(f"time_in_force {tif} is not supported by the paper exchange (day, gtc)")
    raw_class = body.get("order_class") or "simple"
    if raw_class == "mleg":
        raise unprocessable("mleg orders are not supported by the paper exchange")
    if raw_class not in ORDER_CLASSES:
        raise unprocessable(f"invalid order_class: {raw_class!r}")
    order_class = str(raw_class)
    if body.get("extended_hours") is True:
        raise unprocessable("extended hours orders are not supported by the paper exchange")
    fraction_ok = order_class == "simple" and order_type in FRACTIONAL_TYPES and tif == "day"
    notional = _parse_notional(body, order_type, tif, order_class)
    spec = OrderSpec(
        symbol=symbol.strip().upper(),
        qty=parse_qty(body.get("qty"), fraction_ok) if notional is None else ZERO,
        notional=notional,
        side=side,
        type=order_type,
        time_in_force=tif,
        order_class=order_class,
        client_order_id=parse_client_order_id(body.get("client_order_id")),
    )
    _parse_prices(body, spec)
    _parse_legs(body, spec)
    if spec.type == "stop" and spec.side == "buy":
        convert_buy_stop(spec)
    return spec


def _parse_notional(body: Mapping[str, Any], order_type: str, tif: str, order_class: str) -> Decimal | None:
    """The dollar amount of a notional order (None for a qty order); Alpaca's rules: not with
    ``qty``, simple market day orders only, at least $1, at most 9 decimals."""
    raw = body.get("notional")
    if raw is None:
        return None
    if body.get("qty") is not None:
        raise unprocessable("only one of qty or notional may be given")
    if order_class != "simple" or order_type != "market" or tif != "day":
        raise unprocessable("notional orders are only supported for simple market day orders")
    notional = to_decimal(raw, "notional")
    if notional != notional.quantize(QTY_PLACES):
        raise unprocessable("notional can have at most 9 decimal places")
    if notional < MIN_NOTIONAL:
        raise unprocessable(f"notional must be at least {fmt(MIN_NOTIONAL)}")
    return notional


def notional_qty(notional: Decimal, price: Decimal | None, *, on_submit: bool = True) -> Decimal:
    """Shares a notional amount buys or sells at ``price``: rounded down to 9 decimals, so the
    order never costs more than the amount. On submission 422 when there is no price to size it
    or the amount buys nothing; at a fill (``on_submit`` false) never an error: 0 just does not fill."""
    if price is None or price <= 0:
        if on_submit:
            raise unprocessable("notional orders need a price: the symbol has no quote")
        return Decimal(0)
    qty = (notional / price).quantize(QTY_PLACES, rounding=ROUND_FLOOR)
    if qty <= 0 and on_submit:
        raise unprocessable("notional is too small to buy any share")
    return qty


def convert_buy_stop(spec: OrderSpec) -> None:
    """Alpaca turns every buy stop into a stop-limit whose limit is 4 % above a stop under $50
    and 2.5 % above a stop of $50 or more (rounded to the tick), so that a gap up cannot fill
    it at any price. The order is then answered and kept as a ``stop_limit``."""
    assert spec.stop_price is not None
    markup = BUY_STOP_LIMIT_MARKUP_UNDER_50 if spec.stop_price < 50 else BUY_STOP_LIMIT_MARKUP_FROM_50
    spec.type = "stop_limit"
    spec.limit_price = round_to_tick(spec.stop_price * (1 + markup))


def check_replaceable(old: Order, fields: Mapping[str, Any]) -> None:
    """Alpaca's limits on replacing: a notional order cannot be replaced at all, the qty of a
    fractional order cannot change."""
    if old.notional is not None:
        raise unprocessable("notional orders cannot be replaced; cancel and submit a new order")
    if "qty" in fields and old.qty != old.qty.to_integral_value():
        raise unprocessable("the qty of a fractional order cannot be changed")


def _parse_prices(body: Mapping[str, Any], spec: OrderSpec) -> None:
    limit, stop = body.get("limit_price"), body.get("stop_price")
    trail_price, trail_percent = body.get("trail_price"), body.get("trail_percent")
    kind = spec.type
    if kind in ("limit", "stop_limit"):
        if limit is None and not (spec.order_class == "oco" and kind == "limit"):
            raise unprocessable(f"{kind.replace('_', ' ')} orders require a limit price")
        if limit is not None:
            spec.limit_price = check_price(limit, "limit_price")
    elif limit is not None:
        raise unprocessable(f"limit_price is not allowed for {kind} orders")
    if kind in ("stop", "stop_limit"):
        if stop is None:
            raise unprocessable(f"{kind.replace('_', ' ')} orders require a stop price")
        spec.stop_price = check_price(stop, "stop_price")
    elif stop is not None:
        raise unprocessable(f"stop_price is not allowed for {kind} orders")
    if kind == "trailing_stop":
        if (trail_price is None) == (trail_percent is None):
            raise unprocessable("trailing_stop orders require exactly one of trail_price or trail_percent")
        if trail_price is not None:
            spec.trail_price = check_price(trail_price, "trail_price")
        else:
            pct = to_decimal(trail_percent, "trail_percent")
            if not ZERO < pct < 100:
                raise unprocessable("trail_percent must be > 0 and < 100")
            spec.trail_percent = pct
    elif trail_price is not None or trail_percent is not None:
        raise unprocessable(f"trail_price and trail_percent are not allowed for {kind} orders")


def _parse_legs(body: Mapping[str, Any], spec: OrderSpec) -> None:
    take_profit, stop_loss = body.get("take_profit"), body.get("stop_loss")
    cls = spec.order_class
    if cls == "simple":
        if take_profit or stop_loss:
            raise unprocessable("take_profit and stop_loss require order_class bracket, oto or oco")
        return
    if spec.type == "trailing_stop":
        raise unprocessable(f"trailing_stop orders are not supported with order_class {cls}")
    if take_profit is not None:
        if not isinstance(take_profit, Mapping) or take_profit.get("limit_price") is None:
            raise unprocessable(f"{cls} orders require take_profit.limit_price")
        spec.take_profit = LegSpec(
            role="take_profit",
            type="limit",
            limit_price=check_price(take_profit["limit_price"], "take_profit.limit_price"),
        )
    if stop_loss is not None:
        if not isinstance(stop_loss, Mapping):
            raise unprocessable(f"{cls} orders require stop_loss.stop_price")
        if stop_loss.get("trail_price") is not None or stop_loss.get("trail_percent") is not None:
            raise unprocessable("trailing stops are not supported as a stop_loss leg")
        if stop_loss.get("stop_price") is None:
            raise unprocessable(f"{cls} orders require stop_loss.stop_price")
        leg = LegSpec(
            role="stop_loss",
            type="stop",
            stop_price=check_price(stop_loss["stop_price"], "stop_loss.stop_price"),
        )
        if stop_loss.get("limit_price") is not None:
            leg.type = "stop_limit"
            leg.limit_price = check_price(stop_loss["limit_price"], "stop_loss.limit_price")
        spec.stop_loss = leg
    if cls in ("bracket", "oco"):
        if spec.take_profit is None:
            raise unprocessable(f"{cls} orders require take_profit.limit_price")
        if spec.stop_loss is None:
            raise unprocessable(f"{cls} orders require stop_loss.stop_price")
    if cls == "oto" and (spec.take_profit is None) == (spec.stop_loss is None):
        raise unprocessable("oto orders require exactly one of take_profit or stop_loss")
    if cls in ("bracket", "oto") and spec.type not in ("market", "limit"):
        raise unprocessable(f"{cls} orders must be market or limit orders", code=CODE_UNPROCESSABLE_INPUT)
    if cls == "oco":
        if spec.type != "limit":
            raise unprocessable("oco orders must be limit orders")
        assert spec.take_profit is not None and spec.stop_loss is not None
        tp = spec.take_profit.limit_price
        if spec.limit_price is not None and spec.limit_price != tp:
            raise unprocessable("limit_price must equal take_profit.limit_price for oco orders")
        spec.limit_price = tp
        check_exit_prices(spec.side, tp, spec.stop_loss.stop_price, base_is_take_profit=True)


def check_exit_prices(
    side: str,
    take_profit: Decimal | None,
    stop: Decimal | None,
    base_price: Decimal | None = None,
    base_is_take_profit: bool = False,
) -> None:
    """Alpaca's base-price rules for the exits of an advanced order.

    ``side`` is the entry side (for OCO, the side of the exit orders themselves). For a
    long entry the take-profit must be at least $0.01 above the base price and the stop
    at least $0.01 below it; for a short entry the reverse. For OCO the base price is the
    take-profit limit itself.
    """
    tick = Decimal("0.01")
    if base_is_take_profit:
        assert take_profit is not None and stop is not None
        # An OCO that sells protects a long: the stop must be below the limit.
        if side == "sell" and stop > take_profit - tick:
            raise unprocessable(
                "stop_loss.stop_price must be <= base_price - 0.01", base_price=fmt(take_profit)
            )
        if side == "buy" and stop < take_profit + tick:
            raise unprocessable(
                "stop_loss.stop_price must be >= base_price + 0.01", base_price=fmt(take_profit)
            )
        return
    if base_price is None:
        return
    base = fmt(base_price)
    if side == "buy":
        if take_profit is not None and take_profit < base_price + tick:
            raise unprocessable("take_profit.limit_price must be >= base_price + 0.01", base_price=base)
        if stop is not None and stop > base_price - tick:
            raise unprocessable("stop_loss.stop_price must be <= base_price - 0.01", base_price=base)
    else:
        if take_profit is not None and take_profit > base_price - tick:
            raise unprocessable("take_profit.limit_price must be <= base_price - 0.01", base_price=base)
        if stop is not None and stop < base_price + tick:
            raise unprocessable("stop_loss.stop_price must be >= base_price + 0.01", base_price=base)
