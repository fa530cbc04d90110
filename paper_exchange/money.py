"""Decimal helpers: parsing request numbers, Alpaca's tick rules and string formatting.

Money and quantities are ``decimal.Decimal`` everywhere in the exchange. Request bodies
are decoded with ``json.loads(..., parse_float=Decimal)`` so a price sent as ``150.2``
arrives exactly as ``Decimal("150.2")``, never as a binary float.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from .errors import unprocessable

CENT = Decimal("0.01")
SUB_DOLLAR_TICK = Decimal("0.0001")
ONE = Decimal(1)
ZERO = Decimal(0)
PRICE_PLACES = Decimal("0.0001")
MAX_DIGITS_BEFORE_POINT = 15


def to_decimal(value: Any, field: str) -> Decimal:
    """Convert a JSON number or numeric string to Decimal, or raise a 422 naming ``field``."""
    if isinstance(value, bool) or value is None:
        raise unprocessable(f"invalid {field}")
    if isinstance(value, float):
        # Only reached when a caller bypasses parse_float=Decimal; repr is the shortest
        # string that round-trips, which is what the client meant.
        value = repr(value)
    try:
        result = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except (InvalidOperation, ValueError):
        raise unprocessable(f"invalid {field}: {value!r}") from None
    if not result.is_finite() or (result and result.adjusted() >= MAX_DIGITS_BEFORE_POINT):
        # No amount, quantity or price at a broker has 16 digits before the point; beyond the
        # context's precision Decimal arithmetic (quantize) would raise instead of answering 422.
        shown = str(value) if isinstance(value, Decimal) else repr(value)  # a JSON number as sent
        raise unprocessable(f"invalid {field}: {shown}")
    return result


def tick_for(price: Decimal) -> Decimal:
    """Minimum price increment: $0.01 at or above $1.00, $0.0001 below (SEC Rule 612)."""
    return CENT if price >= ONE else SUB_DOLLAR_TICK


def is_sub_penny(price: Decimal) -> bool:
    """True when ``price`` has more decimals than its tick allows."""
    return price != price.quantize(tick_for(price), rounding=ROUND_FLOOR)


def check_price(value: Any, field: str) -> Decimal:
    """Parse a limit/stop price and enforce positivity and the tick rule, as Alpaca does."""
    price = to_decimal(value, field)
    if price <= 0:
        raise unprocessable(f"{field} must be > 0")
    if is_sub_penny(price):
        raise unprocessable(
            f"invalid {field} {fmt(price)}. sub-penny increment does not fulfill "
            "minimum pricing criteria"
        )
    return price


def round_to_tick(price: Decimal, direction: str = "nearest") -> Decimal:
    """Round a price to its tick: ``nearest`` (half up), ``down`` or ``up``."""
    rounding = {"nearest": ROUND_HALF_UP, "down": ROUND_FLOOR, "up": ROUND_CEILING}[direction]
    rounded = price.quantize(tick_for(price), rounding=rounding)
    # Crossing $1.00 changes the tick; re-quantize with the tick of the result.
    return rounded.quantize(tick_for(rounded), rounding=rounding)


def cents(amount: Decimal) -> Decimal:
    """Round a cash amount to cents, half up (how fills settle into cash here)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def fmt(value: Decimal) -> str:
    """Format without exponent and without trailing zeros: ``Decimal("160.00")`` -> ``"160"``."""
    if value == 0:
        return "0"
    normalized = value.normalize()
    text = format(normalized, "f")
    return text


def fmt_money(value: Decimal) -> str:
    """Format a dollar amount with exactly two decimals, as Alpaca's account fields."""
    return format(cents(value), "f")


def fmt_price(value: Decimal) -> str:
    """Format a price rounded to at most 4 decimals (average fill prices can be long)."""
    return fmt(value.quantize(PRICE_PLACES, rounding=ROUND_HALF_UP))
