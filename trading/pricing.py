"""Money arithmetic: Decimal only, Alpaca's tick rules, P&L to the cent.

Alpaca takes limit and stop prices of $1 or more with at most 2 decimals and prices under $1
with at most 4. Prices are rounded to the nearest tick (half up) so that what is sent is what
a person reading the plan expects; the caller then re-checks the relationships between the
rounded prices (a stop must still be at least a cent below its entry).
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

CENT = Decimal("0.01")
SUB_DOLLAR_TICK = Decimal("0.0001")
ONE = Decimal("1")
ZERO = Decimal("0")
PCT_QUANTUM = Decimal("0.0001")


def tick_size(price: Decimal) -> Decimal:
    """The smallest price increment Alpaca accepts at ``price``."""
    return CENT if price >= ONE else SUB_DOLLAR_TICK


def round_to_tick(price: Decimal) -> Decimal:
    """``price`` rounded half-up to Alpaca's tick (2 decimals from $1, else 4)."""
    rounded = price.quantize(tick_size(price), rounding=ROUND_HALF_UP)
    if rounded >= ONE and rounded.as_tuple().exponent != -2:  # 0.99996 rounds up into the $1 band
        rounded = rounded.quantize(CENT, rounding=ROUND_HALF_UP)
    return rounded


def is_on_tick(price: Decimal) -> bool:
    """Whether ``price`` already respects the tick rules."""
    return price == price.quantize(tick_size(price))


def to_decimal(value: Any) -> Decimal | None:
    """A number from JSON or text as Decimal (None if absent); floats go through their shortest
    text form, so 150.1 stays 150.1. Raises ValueError for anything that is not a finite number,
    and for text with a comma: "1,05" is a decimal comma in much of Europe and a thousands
    separator in the US, so guessing (stripping it to 105) could buy a hundred times the plan."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, (int, float)):
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    elif isinstance(value, str):
        if "," in value:
            raise ValueError(f"{value!r} is ambiguous: a comma may be a decimal or a thousands separator; "
                             "write the number with a point and no separators (1.05 or 1050)")
        try:
            number = Decimal(value.strip().lstrip("$"))
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a number") from None
    else:
        raise ValueError(f"{value!r} is not a number")
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return number


def whole_shares(qty: Decimal) -> Decimal:
    """``qty`` rounded down to whole shares, written as a plain integer (``100``, never ``1E+2``)."""
    return qty.quantize(ONE, rounding=ROUND_DOWN)


def money(amount: Decimal) -> Decimal:
    """An amount rounded half-up to the cent."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def pnl(entry_price: Decimal, exit_price: Decimal, qty: Decimal) -> Decimal:
    """Realised or unrealised P&L of a long position: (exit - entry) * qty, to the cent."""
    return money((exit_price - entry_price) * qty)


def pnl_pct(pnl_amount: Decimal, cost_basis: Decimal) -> Decimal:
    """P&L as percent of cost basis (4 decimals); zero when there is no cost basis."""
    if cost_basis == ZERO:
        return ZERO
    return (pnl_amount / cost_basis * 100).quantize(PCT_QUANTUM, rounding=ROUND_HALF_UP)


def mid_price(bid: Decimal, ask: Decimal) -> Decimal | None:
    """(bid + ask) / 2; the other side alone when one is missing or zero; None if both are."""
    has_bid, has_ask = bid > ZERO, ask > ZERO
    if has_bid and has_ask:
        return (bid + ask) / 2
    if has_ask:
        return ask
    if has_bid:
        return bid
    return None


def weighted_average(pairs: list[tuple[Decimal, Decimal]]) -> Decimal | None:
    """The quantity-weighted average price of (qty, price) pairs; None without quantity."""
    total_qty = sum((qty for qty, _ in pairs), ZERO)
    if total_qty == ZERO:
        return None
    return sum((qty * price for qty, price in pairs), ZERO) / total_qty


def display_price(value: Any) -> str:
    """A price as people read it: at least its tick's decimals (150 -> "150.00", 0.5 -> "0.5000"),
    never rounded (an average fill price 150.123 stays "150.123"); "" for no price."""
    price = to_decimal(value)
    if price is None:
        return ""
    tick = tick_size(price)
    shown = price.quantize(tick) if price == price.quantize(tick) else price.normalize()
    return f"{shown:f}"
