"""Order life on the paper exchange, driven through alpaca-py and the admin API only."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.enums import OrderClass, OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    ClosePositionRequest,
    GetOrderByIdRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
    TrailingStopOrderRequest,
)

from tests.paper_exchange_helpers import Exchange, running_exchange


@pytest.fixture
def ex() -> Iterator[Exchange]:
    with running_exchange() as exchange:
        exchange.quote("AAPL", "150.20", "150.30")
        yield exchange


def buy_bracket(ex: Exchange, qty: int = 10, tif: TimeInForce = TimeInForce.GTC, **kwargs):
    return ex.trading.submit_order(
        LimitOrderRequest(
            symbol="AAPL",
            qty=qty,
            side=OrderSide.BUY,
            time_in_force=tif,
            limit_price=kwargs.pop("limit_price", 150.50),
            order_class=OrderClass.BRACKET,
            take_profit=TakeProfitRequest(limit_price=kwargs.pop("take_profit", 155.00)),
            stop_loss=StopLossRequest(stop_price=kwargs.pop("stop", 145.00)),
            **kwargs,
        )
    )


def market_buy(ex: Exchange, qty: int, symbol: str = "AAPL"):
    return ex.trading.submit_order(
        MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide.BUY, time_in_force=TimeInForce.DAY)
    )


def nested(ex: Exchange, order_id) -> object:
    return ex.trading.get_order_by_id(order_id, GetOrderByIdRequest(nested=True))


def settled(ex: Exchange, order) -> object:
    """One matching pass (a new order is acknowledged and may fill), then the order now (nested)."""
    ex.step()
    return nested(ex, order.id)


def bought(ex: Exchange, qty: int, symbol: str = "AAPL"):
    """A market buy that has filled (submitted, then one matching pass)."""
    return settled(ex, market_buy(ex, qty, symbol))


def legs_by_type(order) -> dict[str, object]:
    return {leg.type.value: leg for leg in order.legs}


def position_qty(ex: Exchange, symbol: str = "AAPL") -> Decimal:
    positions = {p.symbol: p for p in ex.trading.get_all_positions()}
    return Decimal(positions[symbol].qty) if symbol in positions else Decimal(0)


# ---------------------------------------------------------------------------- brackets
def test_bracket_entry_fills_at_ask_and_legs_activate(ex: Exchange) -> None:
    submitted = buy_bracket(ex)
    assert submitted.status == OrderStatus.PENDING_NEW  # answered before it can fill, as at Alpaca
    order = settled(ex, submitted)
    assert order.status == OrderStatus.FILLED
    assert order.filled_avg_price == "150.3"  # the ask, better than the 150.50 limit
    assert order.filled_qty == "10"
    legs = legs_by_type(order)
    assert legs["limit"].status == OrderStatus.NEW
    assert legs["stop"].status == OrderStatus.HELD
    position = ex.trading.get_open_position("AAPL")
    assert position.qty == "10"
    assert position.qty_available == "0"  # the take-profit holds the shares
    assert position.avg_entry_price == "150.3"
    assert ex.trading.get_account().cash == "98497.00"


def test_bracket_legs_stay_held_until_the_entry_is_completely_filled(ex: Exchange) -> None:
    order = settled(ex, buy_bracket(ex, limit_price=149.00, stop=148.00))
    assert order.status == OrderStatus.NEW
    assert {leg.status for leg in order.legs} == {OrderStatus.HELD}
    ex.quote("AAPL", "148.90", "149.00")
    parent = nested(ex, order.id)
    assert parent.status == OrderStatus.FILLED
    assert legs_by_type(parent)["limit"].status == OrderStatus.NEW
    assert legs_by_type(parent)["stop"].status == OrderStatus.HELD


def test_bracket_take_profit_fills_and_stop_is_canceled(ex: Exchange) -> None:
    order = settled(ex, buy_bracket(ex))
    ex.quote("AAPL", "155.10", "155.20")
    parent = nested(ex, order.id)
    legs = legs_by_type(parent)
    assert legs["limit"].status == OrderStatus.FILLED
    assert legs["limit"].filled_avg_price == "155.1"  # the bid, at least the limit
    assert legs["stop"].status == OrderStatus.CANCELED
    assert legs["stop"].canceled_at is not None
    assert position_qty(ex) == 0
    assert ex.trading.get_account().cash == str(Decimal("98497.00") + Decimal("1551.00"))


def test_bracket_stop_fills_and_take_profit_is_canceled(ex: Exchange) -> None:
    order = settled(ex, buy_bracket(ex))
    ex.quote("AAPL", "145.50", "145.60")  # above the stop: nothing happens
    assert legs_by_type(nested(ex, order.id))["stop"].status == OrderStatus.HELD
    ex.quote("AAPL", "144.80", "144.90")  # the bid reaches the stop
    legs = legs_by_type(nested(ex, order.id))
    assert legs["stop"].status == OrderStatus.FILLED
    assert legs["stop"].filled_avg_price == "144.8"  # filled at the bid
    assert legs["limit"].status == OrderStatus.CANCELED
    assert position_qty(ex) == 0


def test_take_profit_partial_fill_shrinks_the_stop_to_the_remainder(ex: Exchange) -> None:
    order = settled(ex, buy_bracket(ex))
    ex.admin("POST", "/admin/config", {"partial_fill_probability": 1.0})
    ex.quote("AAPL", "155.10", "155.20")
    legs = legs_by_type(nested(ex, order.id))
    take_profit, stop = legs["limit"], legs["stop"]
    assert take_profit.status == OrderStatus.PARTIALLY_FILLED
    sold = Decimal(take_profit.filled_qty)
    assert 0 < sold < 10
    assert Decimal(stop.qty) == 10 - sold
    assert position_qty(ex) == 10 - sold
    ex.admin("POST", "/admin/config", {"partial_fill_probability": 0.0})
    ex.quote("AAPL", "144.80", "144.90")  # the stop sells what is left
    legs = legs_by_type(nested(ex, order.id))
    assert legs["stop"].status == OrderStatus.FILLED
    assert Decimal(legs["stop"].filled_qty) == 10 - sold
    assert legs["limit"].status == OrderStatus.CANCELED
    assert legs["limit"].filled_qty == str(sold)
    assert position_qty(ex) == 0


def test_second_separate_exit_is_refused_for_insufficient_quantity(ex: Exchange) -> None:
    settled(ex, buy_bracket(ex))
    with pytest.raises(APIError) as refused:
        ex.trading.submit_order(
            StopOrderRequest(symbol="AAPL", qty=10, side=OrderSide.SELL, time_in_force=TimeInForce.GTC, stop_price=140)
        )
    assert refused.value.status_code == 403
    assert refused.value.code == 40310000
    assert refused.value.message == "insufficient qty available for order (requested: 10, available: 0)"


def test_canceling_a_held_stop_leg_cancels_the_whole_group(ex: Exchange) -> None:
    order = settled(ex, buy_bracket(ex))
    stop_id = legs_by_type(order)["stop"].id
    ex.trading.cancel_order_by_id(stop_id)
    legs = legs_by_type(nested(ex, order.id))
    assert {leg.status for leg in legs.values()} == {OrderStatus.PENDING_CANCEL}
    legs = legs_by_type(settled(ex, order))
    assert legs["stop"].status == OrderStatus.CANCELED
    assert legs["limit"].status == OrderStatus.CANCELED
    assert ex.trading.get_open_position("AAPL").qty_available == "10"


def test_canceling_an_unfilled_bracket_entry_cancels_its_legs(ex: Exchange) -> None:
    order = settled(ex, buy_bracket(ex, limit_price=149.00, stop=148.00))
    ex.trading.cancel_order_by_id(order.id)
    assert nested(ex, order.id).status == OrderStatus.PENDING_CANCEL
    parent = settled(ex, order)
    assert parent.status == OrderStatus.CANCELED
    # The legs follow their parent one pass later (still live meanwhile, as at Alpaca).
    assert {leg.status for leg in parent.legs} == {OrderStatus.PENDING_CANCEL}
    parent = settled(ex, order)
    assert {leg.status for leg in parent.legs} == {OrderStatus.CANCELED}


def test_oco_exit_take_profit_new_stop_held_and_stop_elected(ex: Exchange) -> None:
    bought(ex, 5)
    submitted = ex.trading.submit_order(
        LimitOrderRequest(
            symbol="AAPL",
            qty=5,
            side=OrderSide.SELL,
            time_in_force=TimeInForce.GTC,
            order_class=OrderClass.OCO,
            take_profit=TakeProfitRequest(limit_price=160),
            stop_loss=StopLossRequest(stop_price=140),
        )
    )
    oco = settled(ex, submitted)
    assert oco.order_class == OrderClass.OCO
    assert oco.status == OrderStatus.NEW and oco.limit_price == "160"
    assert [leg.status for leg in oco.legs] == [OrderStatus.HELD]
    assert ex.trading.get_open_position("AAPL").qty_available == "0"
    ex.quote("AAPL", "139.90", "140.00")
    after = nested(ex, oco.id)
    assert after.status == OrderStatus.CANCELED
    assert after.legs[0].status == OrderStatus.FILLED
    assert after.legs[0].filled_avg_price == "139.9"
    assert position_qty(ex) == 0


def test_oto_single_stop_leg_activates_as_new_after_entry_fill(ex: Exchange) -> None:
    order = ex.trading.submit_order(
        LimitOrderRequest(
            symbol="AAPL",
            qty=4,
            side=OrderSide.BUY,
            time_in_force=TimeInForce.DAY,
            limit_price=150.00,
            order_class=OrderClass.OTO,
            stop_loss=StopLossRequest(stop_price=147.00),
        )
    )
    order = settled(ex, order)
    assert order.status == OrderStatus.NEW
    assert [leg.status for leg in order.legs] == [OrderStatus.HELD]
    ex.quote("AAPL", "149.90", "150.00")
    parent = nested(ex, order.id)
    assert parent.status == OrderStatus.FILLED
    assert parent.legs[0].status == OrderStatus.NEW
    assert ex.trading.get_open_position("AAPL").qty_available == "0"
    ex.quote("AAPL", "146.90", "147.00")
    assert nested(ex, order.id).legs[0].status == OrderStatus.FILLED


def test_bracket_validation_errors(ex: Exchange) -> None:
    with pytest.raises(APIError) as too_close:
        buy_bracket(ex, limit_price=150.50, stop=150.50)
    assert too_close.value.status_code == 422
    assert too_close.value.message == "stop_loss.stop_price must be <= base_price - 0.01"
    with pytest.raises(APIError) as take_profit_low:
        buy_bracket(ex, limit_price=150.50, take_profit=150.50)
    assert take_profit_low.value.message == "take_profit.limit_price must be >= base_price + 0.01"
    response = ex.api(
        "POST",
        "/v2/orders",
        json={
            "symbol": "AAPL", "qty": 1, "side": "buy", "type": "trailing_stop", "trail_price": 1,
            "time_in_force": "gtc", "order_class": "bracket",
            "take_profit": {"limit_price": 160}, "stop_loss": {"stop_price": 140},
        },
    )
    assert response.status_code == 422
    assert response.json() == {
        "code": 42210000,
        "message": "trailing_stop orders are not supported with order_class bracket",
    }
    response = ex.api(
        "POST",
        "/v2/orders",
        json={
            "symbol": "AAPL", "qty": 1, "side": "buy", "type": "market", "time_in_force": "gtc",
            "order_class": "bracket", "take_profit": {"limit_price": 160},
            "stop_loss": {"trail_price": 2},
        },
    )
    assert response.status_code == 422
    assert response.json()["message"] == "trailing stops are not supported as a stop_loss leg"


# ---------------------------------------------------------------------------- fill model
def test_marketable_limit_fills_at_the_quote_and_unmarketable_rests(ex: Exchange) -> None:
    sell_side = ex.trading.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=151)
    )
    assert settled(ex, sell_side).filled_avg_price == "150.3"
    resting = ex.trading.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=150.25)
    )
    resting = settled(ex, resting)
    assert resting.status == OrderStatus.NEW and resting.filled_avg_price is None
    ex.quote("AAPL", "150.10", "150.24")
    filled = ex.trading.get_order_by_id(resting.id)
    assert filled.status == OrderStatus.FILLED and filled.filled_avg_price == "150.24"
    assert filled.filled_at is not None and filled.filled_at >= filled.submitted_at


def test_sell_stop_elected_by_the_bid_and_buy_stop_by_the_ask(ex: Exchange) -> None:
    bought(ex, 3)
    sell_stop = ex.trading.submit_order(
        StopOrderRequest(symbol="AAPL", qty=3, side=OrderSide.SELL, time_in_force=TimeInForce.GTC, stop_price=149)
    )
    buy_stop = ex.trading.submit_order(
        StopOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, stop_price=152)
    )
    ex.quote("AAPL", "149.01", "152.00")  # ask reaches the buy stop, bid is above the sell stop
    assert ex.trading.get_order_by_id(buy_stop.id).filled_avg_price == "152"
    assert ex.trading.get_order_by_id(sell_stop.id).status == OrderStatus.NEW
    ex.quote("AAPL", "148.50", "148.60")
    elected = ex.trading.get_order_by_id(sell_stop.id)
    assert elected.status == OrderStatus.FILLED and elected.filled_avg_price == "148.5"


def test_stop_limit_becomes_a_limit_when_elected(ex: Exchange) -> None:
    bought(ex, 2)
    order = ex.trading.submit_order(
        StopLimitOrderRequest(
            symbol="AAPL", qty=2, side=OrderSide.SELL, time_in_force=TimeInForce.GTC, stop_price=149, limit_price=148.5
        )
    )
    ex.quote("AAPL", "148.00", "148.10")  # elected, but the bid is below the limit
    assert ex.trading.get_order_by_id(order.id).status == OrderStatus.NEW
    ex.quote("AAPL", "148.70", "148.80")  # back above the limit: fills as a limit
    filled = ex.trading.get_order_by_id(order.id)
    assert filled.status == OrderStatus.FILLED and filled.filled_avg_price == "148.7"


def test_trailing_stop_tracks_the_high_water_mark(ex: Exchange) -> None:
    bought(ex, 5)
    order = ex.trading.submit_order(
        TrailingStopOrderRequest(
            symbol="AAPL", qty=5, side=OrderSide.SELL, time_in_force=TimeInForce.GTC, trail_price=1.00
        )
    )
    assert order.hwm == "150.2" and order.stop_price == "149.2" and order.trail_price == "1"
    ex.quote("AAPL", "153.00", "153.10")
    moved = ex.trading.get_order_by_id(order.id)
    assert moved.hwm == "153" and moved.stop_price == "152" and moved.status == OrderStatus.NEW
    ex.quote("AAPL", "152.50", "152.60")  # lower bid: the mark and stop stay
    assert ex.trading.get_order_by_id(order.id).stop_price == "152"
    ex.quote("AAPL", "151.90", "152.00")
    done = ex.trading.get_order_by_id(order.id)
    assert done.status == OrderStatus.FILLED and done.filled_avg_price == "151.9"


def test_partial_fills_progress_until_filled(ex: Exchange) -> None:
    ex.admin("POST", "/admin/config", {"partial_fill_probability": 1.0})
    order = ex.trading.submit_order(
        MarketOrderRequest(symbol="AAPL", qty=10, side=OrderSide.BUY, time_in_force=TimeInForce.DAY)
    )
    order = settled(ex, order)
    assert order.status == OrderStatus.PARTIALLY_FILLED
    seen = [Decimal(order.filled_qty)]
    for _ in range(10):
        ex.advance(1)  # each pass re-evaluates the remainder
        current = ex.trading.get_order_by_id(order.id)
        seen.append(Decimal(current.filled_qty))
        assert Decimal(current.filled_qty) == position_qty(ex)
        if current.status == OrderStatus.FILLED:
            break
    assert current.status == OrderStatus.FILLED
    assert seen == sorted(seen) and len(set(seen)) == len(seen)  # strictly growing
    assert current.filled_avg_price == "150.3"


def test_cash_account_buying_power_is_cash_minus_open_buys() -> None:
    with running_exchange(account_type="cash") as ex:
        ex.quote("AAPL", "150.20", "150.30")
        ex.admin("POST", "/admin/account", {"cash": 10000})
        ex.trading.submit_order(
            LimitOrderRequest(symbol="AAPL", qty=50, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=100)
        )
        account = ex.trading.get_account()
        assert account.cash == "10000.00" and account.buying_power == "5000.00"
        assert account.multiplier == "1" and account.shorting_enabled is False
        with pytest.raises(APIError) as refused:
            ex.trading.submit_order(
                LimitOrderRequest(symbol="AAPL", qty=40, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                                  limit_price=130)
            )
        assert refused.value.status_code == 403
        assert refused.value.message == "insufficient buying power"


def test_margin_account_buying_power_is_twice_the_excess_equity_minus_open_orders(ex: Exchange) -> None:
    ex.admin("POST", "/admin/account", {"cash": 10000})
    account = ex.trading.get_account()
    assert account.multiplier == "2" and account.shorting_enabled is True
    assert account.buying_power == "20000.00"
    ex.trading.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=50, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=100)
    )
    assert ex.trading.get_account().buying_power == "15000.00"
    bought(ex, 10)  # 10 x 150.30 = 1503.00 of cash into shares worth 1502.50 (the midpoint)
    account = ex.trading.get_account()
    assert account.cash == "8497.00" and account.long_market_value == "1502.50"
    assert account.initial_margin == "751.25" and account.maintenance_margin == "450.75"
    # equity 9999.50 - initial margin 751.25 = 9248.25 excess, x2 = 18496.50, minus 5000 reserved
    assert account.buying_power == "13496.50"
    with pytest.raises(APIError) as refused:
        ex.trading.submit_order(
            LimitOrderRequest(symbol="AAPL", qty=40, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=340)
        )
    assert refused.value.status_code == 403
    assert refused.value.message == "insufficient buying power"


# ---------------------------------------------------------------------------- ids, cancel, replace
def test_duplicate_client_order_id_refused_also_after_cancel(ex: Exchange) -> None:
    order = ex.trading.submit_order(
        LimitOrderRequest(
            symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=140,
            client_order_id="tm-1",
        )
    )
    assert ex.trading.get_order_by_client_id("tm-1").id == order.id
    ex.trading.cancel_order_by_id(order.id)
    canceled = settled(ex, order)
    assert canceled.status == OrderStatus.CANCELED and canceled.canceled_at is not None
    with pytest.raises(APIError) as duplicate:
        ex.trading.submit_order(
            LimitOrderRequest(
                symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=140,
                client_order_id="tm-1",
            )
        )
    assert duplicate.value.status_code == 422
    assert duplicate.value.code == 40010001
    assert duplicate.value.message == "client_order_id must be unique"


def test_canceling_a_filled_order_is_refused(ex: Exchange) -> None:
    order = bought(ex, 1)
    with pytest.raises(APIError) as refused:
        ex.trading.cancel_order_by_id(order.id)
    assert refused.value.status_code == 422
    assert refused.value.code == 42210000
    assert refused.value.message == "order is not cancelable"


def test_replace_creates_a_new_order_and_marks_the_old_replaced(ex: Exchange) -> None:
    order = ex.trading.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=5, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=149)
    )
    with pytest.raises(APIError) as too_early:  # not replaceable while pending_new
        ex.trading.replace_order_by_id(order.id, ReplaceOrderRequest(limit_price=149.2))
    assert too_early.value.status_code == 422
    order = settled(ex, order)
    change = ReplaceOrderRequest(qty=6, limit_price=149.5, client_order_id="tm-r")
    new = ex.trading.replace_order_by_id(order.id, change)
    assert new.id != order.id and new.replaces == order.id
    assert new.qty == "6" and new.limit_price == "149.5" and new.client_order_id == "tm-r"
    assert new.submitted_at > order.submitted_at
    assert new.status == OrderStatus.PENDING_NEW
    assert ex.trading.get_order_by_id(order.id).status == OrderStatus.PENDING_REPLACE
    ex.quote("AAPL", "148.90", "149.00")  # the replace completes at this pass; the replacement fills
    assert ex.trading.get_order_by_id(order.id).status == OrderStatus.REPLACED
    assert ex.trading.get_order_by_id(new.id).status == OrderStatus.FILLED  # the replacement filled
    old = ex.trading.get_order_by_id(order.id)
    assert old.status == OrderStatus.REPLACED and old.replaced_by == new.id and old.replaced_at is not None
    with pytest.raises(APIError) as again:
        ex.trading.replace_order_by_id(order.id, ReplaceOrderRequest(limit_price=149.6))
    assert again.value.status_code == 422
    assert position_qty(ex) == 6


def test_replacing_the_held_stop_of_a_bracket_moves_the_protection(ex: Exchange) -> None:
    order = settled(ex, buy_bracket(ex))
    stop = legs_by_type(order)["stop"]
    moved = ex.trading.replace_order_by_id(stop.id, ReplaceOrderRequest(stop_price=149.00))
    assert moved.status == OrderStatus.PENDING_NEW and moved.stop_price == "149"
    assert legs_by_type(nested(ex, order.id))["stop"].status == OrderStatus.PENDING_REPLACE
    legs = legs_by_type(settled(ex, order))
    assert legs["stop"].status == OrderStatus.HELD
    assert legs["stop"].id == moved.id
    ex.quote("AAPL", "148.90", "149.00")
    legs = legs_by_type(nested(ex, order.id))
    assert legs["stop"].status == OrderStatus.FILLED and legs["limit"].status == OrderStatus.CANCELED


def test_cancel_all_cancels_every_open_order(ex: Exchange) -> None:
    buy_bracket(ex, limit_price=149.00, stop=148.00)
    ex.trading.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=140)
    )
    responses = ex.trading.cancel_orders()
    assert len(responses) == 4  # entry, two legs, the simple order
    assert {r.status for r in responses} == {200}
    assert {o.status for o in ex.trading.get_orders()} == {OrderStatus.PENDING_CANCEL}
    ex.step()
    ex.step()  # the legs complete one pass after their parent
    assert ex.trading.get_orders() == []
    closed = ex.trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED))
    assert {o.status for o in closed} == {OrderStatus.CANCELED}


# ---------------------------------------------------------------------------- positions
def test_close_position_partially_then_fully(ex: Exchange) -> None:
    bought(ex, 10)
    part = ex.trading.close_position("AAPL", ClosePositionRequest(qty="4"))
    assert part.side == OrderSide.SELL and part.qty == "4" and part.status == OrderStatus.PENDING_NEW
    part = settled(ex, part)
    assert part.status == OrderStatus.FILLED and part.filled_avg_price == "150.2"
    half = ex.trading.close_position("AAPL", ClosePositionRequest(percentage="50"))
    assert half.qty == "3"
    ex.step()
    rest = ex.trading.close_position("AAPL")
    assert rest.qty == "3"
    ex.step()
    with pytest.raises(APIError) as gone:
        ex.trading.get_open_position("AAPL")
    assert gone.value.status_code == 404
    assert gone.value.message == "position does not exist"


def test_close_all_positions_cancels_orders_first(ex: Exchange) -> None:
    ex.quote("MSFT", "400.00", "400.10")
    settled(ex, buy_bracket(ex))
    bought(ex, 2, "MSFT")
    results = ex.trading.close_all_positions(cancel_orders=True)
    assert sorted((r.symbol, r.status) for r in results) == [("AAPL", 200), ("MSFT", 200)]
    # The cancels complete at once (so the closing sells meet free shares); the sells fill at
    # the next pass.
    assert {o.status for o in ex.trading.get_orders()} == {OrderStatus.PENDING_NEW}
    ex.step()
    assert ex.trading.get_all_positions() == []
    assert ex.trading.get_orders() == []


def test_position_values_follow_the_quote(ex: Exchange) -> None:
    bought(ex, 10)
    ex.quote("AAPL", "160.00", "160.10")
    position = ex.trading.get_open_position("AAPL")
    assert position.current_price == "160.05"  # the midpoint
    assert position.market_value == "1600.50"
    assert position.cost_basis == "1503.00"
    assert position.unrealized_pl == "97.50"
    account = ex.trading.get_account()
    assert account.equity == str(Decimal(account.cash) + Decimal("1600.50"))


# ---------------------------------------------------------------------------- the session
def test_day_orders_expire_at_the_close_and_gtc_orders_stay(ex: Exchange) -> None:
    day = ex.trading.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=140)
    )
    gtc = ex.trading.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=140)
    )
    assert day.expires_at == datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
    ex.set_time("2026-11-20T20:59:00Z")
    assert ex.trading.get_order_by_id(day.id).status == OrderStatus.NEW
    clock = ex.set_time("2026-11-20T21:00:00Z")
    assert clock["is_open"] is False
    expired = ex.trading.get_order_by_id(day.id)
    assert expired.status == OrderStatus.EXPIRED
    assert expired.expired_at == datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
    assert ex.trading.get_order_by_id(gtc.id).status == OrderStatus.NEW


def test_orders_placed_while_closed_are_accepted_and_fill_at_the_next_open(ex: Exchange) -> None:
    ex.set_time("2026-11-26T15:00:00Z")  # Thanksgiving: closed all day
    assert ex.trading.get_clock().is_open is False
    order = market_buy(ex, 1)
    assert order.status == OrderStatus.ACCEPTED
    with pytest.raises(APIError):
        ex.trading.replace_order_by_id(order.id, ReplaceOrderRequest(qty=2))
    ex.set_time("2026-11-27T14:29:00Z")  # 09:29 ET on the early-close Friday
    assert ex.trading.get_order_by_id(order.id).status == OrderStatus.ACCEPTED
    ex.set_time("2026-11-27T14:30:00Z")
    filled = ex.trading.get_order_by_id(order.id)
    assert filled.status == OrderStatus.FILLED
    assert filled.filled_at == datetime(2026, 11, 27, 14, 30, tzinfo=UTC)


def test_early_close_ends_day_orders_at_13_00(ex: Exchange) -> None:
    ex.set_time("2026-11-27T15:00:00Z")  # 10:00 ET, day after Thanksgiving
    order = ex.trading.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=140)
    )
    clock = ex.trading.get_clock()
    assert clock.next_close == datetime(2026, 11, 27, 13, 0, tzinfo=clock.next_close.tzinfo)
    ex.set_time("2026-11-27T18:00:00Z")
    assert ex.trading.get_order_by_id(order.id).status == OrderStatus.EXPIRED


def test_partially_filled_day_entry_expires_and_its_legs_are_canceled(ex: Exchange) -> None:
    ex.admin("POST", "/admin/config", {"partial_fill_probability": 1.0})
    order = settled(ex, buy_bracket(ex, tif=TimeInForce.DAY))
    assert order.status == OrderStatus.PARTIALLY_FILLED
    ex.admin("POST", "/admin/config", {"partial_fill_probability": 0.0})
    ex.quote("AAPL", "150.60", "150.70")  # no longer marketable
    ex.set_time("2026-11-20T21:00:00Z")
    parent = nested(ex, order.id)
    assert parent.status == OrderStatus.EXPIRED
    assert {leg.status for leg in parent.legs} <= {OrderStatus.EXPIRED, OrderStatus.CANCELED}
    assert position_qty(ex) == Decimal(parent.filled_qty)


# ---------------------------------------------------------------------------- listing
def test_listing_1200_orders_page_by_page(ex: Exchange) -> None:
    ids = []
    for i in range(1200):
        order = ex.trading.submit_order(
            LimitOrderRequest(
                symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=50,
                client_order_id=f"page-{i}",
            )
        )
        ids.append(order.id)
    stamps = [ex.trading.get_order_by_id(i).submitted_at for i in (ids[0], ids[1], ids[-1])]
    assert stamps[0] < stamps[1] < stamps[2]  # unique even though the simulated clock stood still

    seen_desc = []
    until = None
    while True:
        page = ex.trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500, until=until))
        if not page:
            break
        seen_desc.extend(o.id for o in page)
        until = page[-1].submitted_at
    assert seen_desc == list(reversed(ids))

    seen_asc = []
    after = datetime(2000, 1, 1, tzinfo=UTC)
    while True:
        page = ex.trading.get_orders(
            GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500, after=after, direction=Sort.ASC)
        )
        if not page:
            break
        seen_asc.extend(o.id for o in page)
        after = page[-1].submitted_at
    assert seen_asc == ids
    assert len(ex.trading.get_orders()) == 50  # the default limit
    with pytest.raises(APIError) as too_many:
        ex.trading.get_orders(GetOrdersRequest(limit=501))
    assert too_many.value.status_code == 422


def test_nested_listing_puts_legs_under_their_parent(ex: Exchange) -> None:
    order = settled(ex, buy_bracket(ex))
    ex.quote("MSFT", "400.00", "400.10")
    ex.trading.submit_order(
        LimitOrderRequest(symbol="MSFT", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=390)
    )
    flat_all = ex.trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL))
    assert len(flat_all) == 4 and all(o.legs is None for o in flat_all)
    flat_open = ex.trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))
    assert {o.type.value for o in flat_open} == {"limit"}  # the held stop is not listed as open
    assert len(flat_open) == 2
    tree = ex.trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=True))
    assert len(tree) == 2
    parent = next(o for o in tree if o.id == order.id)
    assert parent.status == OrderStatus.FILLED and len(parent.legs) == 2
    only_msft = ex.trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, symbols=["MSFT"]))
    assert [o.symbol for o in only_msft] == ["MSFT"]
    assert ex.trading.get_order_by_id(order.id).legs is None


def test_submitted_at_is_strictly_increasing_within_the_same_microsecond(ex: Exchange) -> None:
    first = ex.trading.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=100)
    )
    second = ex.trading.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=100)
    )
    assert second.submitted_at - first.submitted_at == timedelta(microseconds=1)


# ---------------------------------------------------------------------------- asynchronous order life
def limit_buy(ex: Exchange, price: float, qty: int = 10):
    return ex.trading.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=qty, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
                          limit_price=price)
    )


def test_submit_is_answered_pending_new_then_new_then_filled(ex: Exchange) -> None:
    order = limit_buy(ex, 150.00)
    assert order.status == OrderStatus.PENDING_NEW
    assert ex.trading.get_order_by_id(order.id).status == OrderStatus.PENDING_NEW  # reading does not pass time
    ex.step()
    assert ex.trading.get_order_by_id(order.id).status == OrderStatus.NEW
    ex.quote("AAPL", "149.90", "150.00")
    filled = ex.trading.get_order_by_id(order.id)
    assert filled.status == OrderStatus.FILLED and filled.filled_avg_price == "150"


def test_cancel_passes_through_pending_cancel_and_a_repeated_cancel_is_accepted(ex: Exchange) -> None:
    order = settled(ex, limit_buy(ex, 149.00))
    response = ex.api("DELETE", f"/v2/orders/{order.id}")
    assert response.status_code == 204 and response.content == b""
    assert ex.trading.get_order_by_id(order.id).status == OrderStatus.PENDING_CANCEL
    assert ex.api("DELETE", f"/v2/orders/{order.id}").status_code == 204  # still pending: accepted again
    ex.step()
    canceled = ex.trading.get_order_by_id(order.id)
    assert canceled.status == OrderStatus.CANCELED and canceled.canceled_at is not None
    refused = ex.api("DELETE", f"/v2/orders/{order.id}")
    assert refused.status_code == 422 and refused.json()["message"] == "order is not cancelable"


def test_a_fill_that_lands_before_the_cancel_completes_wins_the_race(ex: Exchange) -> None:
    order = settled(ex, limit_buy(ex, 149.00))
    ex.trading.cancel_order_by_id(order.id)
    ex.quote("AAPL", "148.90", "149.00")  # the quote reaches the limit before the cancel completes
    raced = ex.trading.get_order_by_id(order.id)
    assert raced.status == OrderStatus.FILLED and raced.canceled_at is None
    assert position_qty(ex) == 10


def test_a_partial_fill_in_the_race_ends_canceled_with_the_filled_shares_kept(ex: Exchange) -> None:
    order = settled(ex, limit_buy(ex, 149.00))
    ex.trading.cancel_order_by_id(order.id)
    ex.admin("POST", "/admin/config", {"partial_fill_probability": 1.0})
    ex.quote("AAPL", "148.90", "149.00")
    raced = ex.trading.get_order_by_id(order.id)
    assert raced.status == OrderStatus.CANCELED
    assert 0 < Decimal(raced.filled_qty) < 10
    assert position_qty(ex) == Decimal(raced.filled_qty)


def test_a_held_stop_with_a_pending_cancel_is_still_elected_when_the_price_falls(ex: Exchange) -> None:
    order = settled(ex, buy_bracket(ex))
    ex.trading.cancel_order_by_id(order.legs[0].id)
    ex.quote("AAPL", "144.80", "144.90")  # the stop's price trades before the cancel completes
    legs = legs_by_type(nested(ex, order.id))
    assert legs["stop"].status == OrderStatus.FILLED and legs["limit"].status == OrderStatus.CANCELED
    assert position_qty(ex) == 0


def test_wall_clock_orders_are_acknowledged_after_the_latency() -> None:
    import time

    with running_exchange(simulated_clock=False, ack_latency=0.2) as ex:
        ex.quote("AAPL", "150.20", "150.30")
        order = market_buy(ex, 1)
        assert order.status == OrderStatus.PENDING_NEW
        deadline = time.monotonic() + 5
        while ex.trading.get_order_by_id(order.id).status != OrderStatus.FILLED:
            assert time.monotonic() < deadline, "never filled"
            time.sleep(0.05)
        assert ex.trading.get_order_by_id(order.id).filled_at >= order.submitted_at + timedelta(seconds=0.2)


def test_instant_exchange_fills_on_submission_and_cancels_at_once() -> None:
    with running_exchange(instant=True) as ex:
        ex.quote("AAPL", "150.20", "150.30")
        assert market_buy(ex, 1).status == OrderStatus.FILLED
        resting = limit_buy(ex, 149.00)
        assert resting.status == OrderStatus.NEW
        ex.trading.cancel_order_by_id(resting.id)
        assert ex.trading.get_order_by_id(resting.id).status == OrderStatus.CANCELED


# ---------------------------------------------------------------------------- margin and short sales
def market_sell(ex: Exchange, qty: int, symbol: str = "AAPL"):
    return ex.trading.submit_order(
        MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide.SELL, time_in_force=TimeInForce.DAY)
    )


def test_a_sell_without_shares_opens_a_short_position(ex: Exchange) -> None:
    order = market_sell(ex, 10)
    assert order.position_intent.value == "sell_to_open"
    assert settled(ex, order).status == OrderStatus.FILLED
    position = ex.trading.get_open_position("AAPL")
    assert position.side.value == "short" and position.qty == "-10" and position.qty_available == "-10"
    assert position.avg_entry_price == "150.2" and position.cost_basis == "-1502.00"
    ex.quote("AAPL", "151.20", "151.30")  # the price rises: the short loses
    position = ex.trading.get_open_position("AAPL")
    assert position.market_value == "-1512.50" and position.unrealized_pl == "-10.50"
    account = ex.trading.get_account()
    assert account.cash == "101502.00" and account.short_market_value == "-1512.50"
    assert account.equity == "99989.50"
    more = settled(ex, market_sell(ex, 5))  # a second sell increases the short
    assert more.status == OrderStatus.FILLED and position_qty(ex) == -15


def test_closing_a_short_buys_to_cover(ex: Exchange) -> None:
    settled(ex, market_sell(ex, 10))
    cover = ex.trading.close_position("AAPL")
    assert cover.side == OrderSide.BUY and cover.qty == "10" and cover.position_intent.value == "buy_to_close"
    assert settled(ex, cover).filled_avg_price == "150.3"
    assert position_qty(ex) == 0
    assert ex.trading.get_account().cash == "99999.00"  # sold at 150.20, bought back at 150.30


def test_a_sell_that_would_flip_a_long_to_short_is_refused(ex: Exchange) -> None:
    bought(ex, 5)
    with pytest.raises(APIError) as refused:
        market_sell(ex, 8)
    assert refused.value.status_code == 403
    assert refused.value.message == "insufficient qty available for order (requested: 8, available: 5)"
    assert position_qty(ex) == 5


def test_shares_reserved_by_an_open_sell_are_not_sold_short_again(ex: Exchange) -> None:
    bought(ex, 10)
    ex.trading.submit_order(
        StopOrderRequest(symbol="AAPL", qty=10, side=OrderSide.SELL, time_in_force=TimeInForce.GTC, stop_price=140)
    )
    assert ex.trading.get_open_position("AAPL").qty_available == "0"
    with pytest.raises(APIError) as refused:
        market_sell(ex, 10)
    assert refused.value.status_code == 403
    assert refused.value.message == "insufficient qty available for order (requested: 10, available: 0)"


def test_fractional_short_sales_are_refused(ex: Exchange) -> None:
    response = ex.api("POST", "/v2/orders", json={"symbol": "AAPL", "qty": "0.5", "side": "sell",
                                                  "type": "market", "time_in_force": "day"})
    assert response.status_code == 403
    assert response.json()["message"] == "fractional orders cannot be sold short"


def test_cash_account_refuses_a_sell_without_shares() -> None:
    with running_exchange(account_type="cash") as ex:
        ex.quote("AAPL", "150.20", "150.30")
        with pytest.raises(APIError) as refused:
            market_sell(ex, 1)
        assert refused.value.status_code == 403
        assert refused.value.message == "insufficient qty available for order (requested: 1, available: 0)"
        assert ex.trading.get_all_positions() == []
