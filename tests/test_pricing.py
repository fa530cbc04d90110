"""trading.pricing: ticks, decimal parsing, P&L to the cent."""

from __future__ import annotations

from decimal import Decimal

import pytest

from trading.pricing import (
    is_on_tick,
    mid_price,
    money,
    pnl,
    pnl_pct,
    round_to_tick,
    tick_size,
    to_decimal,
    weighted_average,
    whole_shares,
)

D = Decimal


@pytest.mark.parametrize("price, expected", [
    ("150.123", "150.12"), ("150.125", "150.13"), ("150", "150.00"), ("1.005", "1.01"),
    ("0.12345", "0.1235"), ("0.5", "0.5000"), ("0.99996", "1.00"), ("0.99994", "0.9999"),
])
def test_prices_round_half_up_to_alpacas_tick(price, expected):
    rounded = round_to_tick(D(price))
    assert rounded == D(expected) and str(rounded) == expected
    assert is_on_tick(rounded)


def test_tick_is_a_cent_from_one_dollar_and_a_hundredth_of_a_cent_below():
    assert tick_size(D("1")) == D("0.01") and tick_size(D("0.9999")) == D("0.0001")
    assert not is_on_tick(D("290.123")) and is_on_tick(D("0.1234"))


@pytest.mark.parametrize("value, expected", [
    (150.1, D("150.1")), (10, D("10")), ("152.05", D("152.05")), (" $1234.50 ", D("1234.50")),
    (D("3.3"), D("3.3")), (None, None), ("  ", None),
])
def test_numbers_from_json_or_text_become_exact_decimals(value, expected):
    assert to_decimal(value) == expected


@pytest.mark.parametrize("value", ["abc", True, "NaN", "Infinity", [1], {"a": 1}, "1,05", "1,234.50"])
def test_non_numbers_are_refused(value):
    with pytest.raises(ValueError):
        to_decimal(value)


def test_pnl_is_exact_to_the_cent():
    assert pnl(D("150.00"), D("144.50"), D("10")) == D("-55.00")
    assert pnl(D("10.01"), D("10.02"), D("3")) == D("0.03")
    # 0.1 + 0.2 style float error cannot happen
    assert pnl(D("0.1"), D("0.3"), D("1")) == D("0.20")
    assert pnl(D("33.333"), D("33.338"), D("1")) == D("0.01")  # 0.005 rounds half up


def test_pnl_percent_of_cost_basis():
    assert pnl_pct(D("20.50"), D("1500.00")) == D("1.3667")
    assert pnl_pct(D("5"), D("0")) == D("0")


@pytest.mark.parametrize("bid, ask, expected", [
    ("152.00", "152.10", "152.05"), ("0", "152.10", "152.10"), ("152.00", "0", "152.00"), ("0", "0", None),
])
def test_mid_price_uses_one_side_when_the_other_is_missing(bid, ask, expected):
    assert mid_price(D(bid), D(ask)) == (D(expected) if expected else None)


def test_money_whole_shares_and_weighted_average():
    assert money(D("1.005")) == D("1.01") and money(D("-1.005")) == D("-1.01")
    assert whole_shares(D("10.9")) == D("10") and whole_shares(D("0.99")) == D("0")
    assert weighted_average([(D("3"), D("155.01")), (D("7"), D("155.02"))]) == D("155.017")
    assert weighted_average([]) is None


def test_prices_display_with_their_tick_and_are_never_rounded():
    from trading.pricing import display_price

    assert display_price(Decimal("150")) == "150.00"
    assert display_price(150) == "150.00"
    assert display_price("150.5") == "150.50"
    assert display_price(Decimal("0.5")) == "0.5000"
    assert display_price(Decimal("150.123")) == "150.123"   # an average fill keeps its digits
    assert display_price(Decimal("1E+2")) == "100.00"
    assert display_price(None) == ""
