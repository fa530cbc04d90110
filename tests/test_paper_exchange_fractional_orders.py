"""Notional and fractional orders and Alpaca's conversion of buy stops, through alpaca-py.

Fills are read after a clock step, so these hold whether the exchange fills on arrival or on
its next matching pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

import pytest
from alpaca.common.exceptions import APIError
from alpaca.trading.enums import OrderSide, OrderStatus, OrderType, TimeInForce
from alpaca.trading.requests import (
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopOrderRequest,
    TrailingStopOrderRequest,
)

from tests.paper_exchange_helpers import Exchange, running_exchange


@pytest.fixture
def ex() -> Iterator[Exchange]:
    with running_exchange() as exchange:
        exchange.quote("AAPL", "150.20", "150.30")
        exchange.quote("F", "12.40", "12.41")
        yield exchange


def settled(ex: Exchange, order_id) -> object:
    """The order after the exchange's next matching pass."""
    ex.advance(1)
    return ex.trading.get_order_by_id(order_id)


def cash(ex: Exchange) -> Decimal:
    return Decimal(ex.api("GET", "/v2/account", expect=200).json()["cash"])


def refused(ex: Exchange, body: dict) -> dict:
    response = ex.api("POST", "/v2/orders", json={"symbol": "AAPL", "side": "buy", "time_in_force": "day", **body})
    assert response.status_code == 422, response.text
    return response.json()


def test_a_notional_buy_is_sized_at_the_fill_price_and_costs_at_most_the_amount(ex: Exchange) -> None:
    before = cash(ex)
    order = ex.trading.submit_order(
        MarketOrderRequest(symbol="AAPL", notional=500.75, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
    assert order.notional == "500.75" and order.qty is None
    filled = settled(ex, order.id)
    expected_qty = (Decimal("500.75") / Decimal("150.30")).quantize(Decimal("0.000000001"), rounding=ROUND_FLOOR)
    assert filled.status == OrderStatus.FILLED and filled.qty is None and filled.notional == "500.75"
    assert Decimal(filled.filled_qty) == expected_qty and filled.filled_avg_price == "150.3"
    spent = before - cash(ex)
    assert spent == (expected_qty * Decimal("150.30")).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    assert spent <= Decimal("500.75")
    assert Decimal(ex.trading.get_open_position("AAPL").qty) == expected_qty


def test_a_notional_sell_sells_that_many_dollars_of_a_held_position(ex: Exchange) -> None:
    ex.trading.submit_order(MarketOrderRequest(symbol="AAPL", qty=10, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.DAY))
    ex.advance(1)
    sell = ex.trading.submit_order(
        MarketOrderRequest(symbol="AAPL", notional=300, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
    filled = settled(ex, sell.id)
    sold = (Decimal(300) / Decimal("150.20")).quantize(Decimal("0.000000001"), rounding=ROUND_FLOOR)
    assert Decimal(filled.filled_qty) == sold
    assert Decimal(ex.trading.get_open_position("AAPL").qty) == Decimal(10) - sold


def test_notional_orders_follow_alpacas_rules(ex: Exchange) -> None:
    assert refused(ex, {"type": "market", "notional": 100, "qty": 1})["message"] == \
        "only one of qty or notional may be given"
    for body in ({"type": "limit", "notional": 100, "limit_price": 150},
                 {"type": "market", "notional": 100, "time_in_force": "gtc"},
                 {"type": "market", "notional": 100, "order_class": "bracket",
                  "take_profit": {"limit_price": 160}, "stop_loss": {"stop_price": 140}}):
        assert refused(ex, body)["message"] == "notional orders are only supported for simple market day orders"
    assert refused(ex, {"type": "market", "notional": "0.5"})["message"] == "notional must be at least 1"
    # A working notional order (no ask to fill against) cannot be replaced, only canceled.
    ex.quote("AAPL", "150.20", "0")
    resting = ex.trading.submit_order(
        MarketOrderRequest(symbol="AAPL", notional=100, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
    assert settled(ex, resting.id).status == OrderStatus.NEW
    response = ex.api("PATCH", f"/v2/orders/{resting.id}", json={"limit_price": "150"})
    assert response.status_code == 422
    assert response.json()["message"] == "notional orders cannot be replaced; cancel and submit a new order"
    ex.trading.cancel_order_by_id(resting.id)


def test_fractional_stop_and_stop_limit_day_orders_are_accepted_and_fill_fractionally(ex: Exchange) -> None:
    ex.trading.submit_order(MarketOrderRequest(symbol="AAPL", qty=2.5, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.DAY))
    ex.advance(1)
    stop = ex.trading.submit_order(StopOrderRequest(symbol="AAPL", qty=1.25, side=OrderSide.SELL,
                                                    stop_price=149, time_in_force=TimeInForce.DAY))
    stop_limit = ex.trading.submit_order(StopLimitOrderRequest(symbol="AAPL", qty=0.75, side=OrderSide.SELL,
                                                               stop_price=149, limit_price=148.5,
                                                               time_in_force=TimeInForce.DAY))
    assert (stop.qty, stop_limit.qty) == ("1.25", "0.75")
    ex.quote("AAPL", "148.90", "149.00")
    assert Decimal(settled(ex, stop.id).filled_qty) == Decimal("1.25")
    assert Decimal(settled(ex, stop_limit.id).filled_qty) == Decimal("0.75")
    assert Decimal(ex.trading.get_open_position("AAPL").qty) == Decimal("0.5")


def test_fractional_quantities_outside_simple_day_market_limit_stop_orders_are_refused(ex: Exchange) -> None:
    expected = "fractional orders are only supported for simple market, limit, stop or stop_limit day orders"
    for request in (
        StopOrderRequest(symbol="AAPL", qty=1.5, side=OrderSide.SELL, stop_price=140, time_in_force=TimeInForce.GTC),
        LimitOrderRequest(symbol="AAPL", qty=1.5, side=OrderSide.BUY, limit_price=140, time_in_force=TimeInForce.GTC),
        TrailingStopOrderRequest(symbol="AAPL", qty=1.5, side=OrderSide.SELL, trail_percent=2,
                                 time_in_force=TimeInForce.DAY),
    ):
        with pytest.raises(APIError) as caught:
            ex.trading.submit_order(request)
        assert caught.value.status_code == 422 and expected in str(caught.value)


def test_the_qty_of_a_fractional_order_cannot_be_replaced(ex: Exchange) -> None:
    order = ex.trading.submit_order(LimitOrderRequest(symbol="AAPL", qty=1.5, side=OrderSide.BUY, limit_price=140,
                                                      time_in_force=TimeInForce.DAY))
    ex.advance(1)  # acknowledged: replaceable
    with pytest.raises(APIError) as caught:
        ex.trading.replace_order_by_id(order.id, ReplaceOrderRequest(qty=2))
    assert caught.value.status_code == 422 and "fractional" in str(caught.value)
    repriced = ex.trading.replace_order_by_id(order.id, ReplaceOrderRequest(limit_price=141))
    assert repriced.limit_price == "141"
    ex.advance(1)
    assert ex.trading.get_order_by_id(repriced.id).qty == "1.5"


@pytest.mark.parametrize(("symbol", "stop", "limit"), [("F", "12.50", "13"), ("AAPL", "151.00", "154.78")])
def test_a_buy_stop_becomes_a_stop_limit_above_the_stop_as_alpaca_converts_it(
        ex: Exchange, symbol: str, stop: str, limit: str) -> None:
    # Under $50 the limit is 4 % above the stop, from $50 on 2.5 %, rounded to the cent.
    order = ex.trading.submit_order(StopOrderRequest(symbol=symbol, qty=3, side=OrderSide.BUY,
                                                     stop_price=float(stop), time_in_force=TimeInForce.GTC))
    assert order.type == OrderType.STOP_LIMIT and order.order_type == OrderType.STOP_LIMIT
    assert (Decimal(order.stop_price), Decimal(order.limit_price)) == (Decimal(stop), Decimal(limit))


def test_a_converted_buy_stop_does_not_fill_when_the_price_gaps_above_its_limit(ex: Exchange) -> None:
    order = ex.trading.submit_order(StopOrderRequest(symbol="AAPL", qty=2, side=OrderSide.BUY, stop_price=151,
                                                     time_in_force=TimeInForce.GTC))
    ex.quote("AAPL", "160.00", "160.10")  # gap far above the stop and its 2.5 % limit (154.78)
    assert settled(ex, order.id).status == OrderStatus.NEW
    ex.quote("AAPL", "153.90", "154.00")  # back under the limit: fills as a limit would
    filled = settled(ex, order.id)
    assert filled.status == OrderStatus.FILLED and filled.filled_avg_price == "154"


def test_sell_stops_are_not_converted(ex: Exchange) -> None:
    ex.trading.submit_order(MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.DAY))
    ex.advance(1)
    order = ex.trading.submit_order(StopOrderRequest(symbol="AAPL", qty=1, side=OrderSide.SELL, stop_price=140,
                                                     time_in_force=TimeInForce.GTC))
    assert order.type == OrderType.STOP and order.limit_price is None
