"""Account configurations at the paper exchange: read and changed through alpaca-py, and the two
that act (``no_shorting``, ``suspend_trade``) obeyed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alpaca.common.exceptions import APIError
from alpaca.trading.enums import OrderSide, OrderStatus, TimeInForce
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest, ReplaceOrderRequest

from paper_exchange import PaperExchange
from paper_exchange.persistence import StateFile
from tests.paper_exchange_helpers import Exchange, running_exchange


@pytest.fixture
def ex() -> Iterator[Exchange]:
    with running_exchange() as exchange:
        exchange.quote("AAPL", "150.20", "150.30")
        yield exchange


def configure(ex: Exchange, **changes: object) -> dict:
    return ex.api("PATCH", "/v2/account/configurations", expect=200, json=changes).json()


def sell(ex: Exchange, qty: float) -> object:
    return ex.trading.submit_order(MarketOrderRequest(symbol="AAPL", qty=qty, side=OrderSide.SELL,
                                                      time_in_force=TimeInForce.DAY))


def buy(ex: Exchange, qty: float) -> object:
    order = ex.trading.submit_order(MarketOrderRequest(symbol="AAPL", qty=qty, side=OrderSide.BUY,
                                                       time_in_force=TimeInForce.DAY))
    ex.advance(1)
    return order


def test_a_new_account_has_alpacas_default_configurations_and_a_patch_changes_only_what_it_sends(
        ex: Exchange) -> None:
    configuration = ex.trading.get_account_configurations()
    assert (configuration.no_shorting, configuration.suspend_trade, configuration.fractional_trading) == \
        (False, False, True)
    assert configuration.max_margin_multiplier == "4" and configuration.trade_confirm_email == "all"
    assert configuration.dtbp_check is None and configuration.pdt_check is None  # retired by Alpaca
    configuration.no_shorting = True
    changed = ex.trading.set_account_configurations(configuration)  # alpaca-py sends every field
    assert changed.no_shorting is True and changed.suspend_trade is False
    assert configure(ex, trade_confirm_email="none") == {
        "disable_overnight_trading": False, "fractional_trading": True, "max_margin_multiplier": "4",
        "max_options_trading_level": 0, "no_shorting": True, "ptp_no_exception_entry": False,
        "suspend_trade": False, "trade_confirm_email": "none",
    }
    assert ex.trading.get_account_configurations().no_shorting is True
    ex.admin("POST", "/admin/reset")
    assert ex.trading.get_account_configurations().no_shorting is False


def test_configuration_values_of_the_wrong_kind_are_refused_and_change_nothing(ex: Exchange) -> None:
    for body, message in (
        ({"no_shorting": "yes"}, "invalid no_shorting: 'yes' (expected true or false)"),
        ({"max_margin_multiplier": "3"}, "invalid max_margin_multiplier: '3' (expected one of '1', '2', '4')"),
        ({"trade_confirm_email": "some"}, "invalid trade_confirm_email: 'some' (expected one of 'all', 'none')"),
        ({"shorting": True}, "unknown account configuration: 'shorting'"),
    ):
        response = ex.api("PATCH", "/v2/account/configurations", json={"suspend_trade": True, **body})
        assert response.status_code == 422 and response.json() == {"code": 42210000, "message": message}
    assert ex.trading.get_account_configurations().suspend_trade is False
    assert ex.api("PATCH", "/v2/account/configurations", data=b"[1]").status_code == 422


def test_no_shorting_refuses_a_sell_beyond_the_shares_held_long_and_allows_selling_them(ex: Exchange) -> None:
    configure(ex, no_shorting=True)
    assert ex.api("GET", "/v2/account", expect=200).json()["shorting_enabled"] is False
    with pytest.raises(APIError) as caught:
        sell(ex, 1)  # nothing held: this sell would open a short
    assert caught.value.status_code == 403
    assert caught.value.code == 40310000 and caught.value.message == "account is not allowed to short"
    buy(ex, 5)
    with pytest.raises(APIError) as caught:
        sell(ex, 6)
    assert caught.value.message == "account is not allowed to short"
    assert ex.trading.get_open_position("AAPL").qty == "5"
    exit_order = sell(ex, 5)
    ex.advance(1)
    assert ex.trading.get_order_by_id(exit_order.id).status == OrderStatus.FILLED
    assert ex.trading.get_all_positions() == []


def test_suspend_trade_refuses_new_orders_and_replaces_but_cancels_still_work(ex: Exchange) -> None:
    buy(ex, 3)
    resting = ex.trading.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, limit_price=140,
                                                        time_in_force=TimeInForce.GTC))
    ex.advance(1)  # acknowledged (new) on an exchange that acknowledges at its next pass
    configure(ex, suspend_trade=True)
    assert ex.api("GET", "/v2/account", expect=200).json()["trade_suspended_by_user"] is True
    expected = "new orders are not accepted: the account's suspend_trade configuration is true"
    for attempt in (lambda: buy(ex, 1), lambda: sell(ex, 1),
                    lambda: ex.trading.replace_order_by_id(resting.id, ReplaceOrderRequest(limit_price=141)),
                    lambda: ex.trading.close_position("AAPL")):
        with pytest.raises(APIError) as caught:
            attempt()
        assert caught.value.status_code == 403 and caught.value.message == expected
    ex.trading.cancel_order_by_id(resting.id)
    ex.advance(1)
    assert ex.trading.get_order_by_id(resting.id).status == OrderStatus.CANCELED
    configure(ex, suspend_trade=False)
    assert ex.trading.close_position("AAPL").side == OrderSide.SELL


def test_configurations_are_kept_in_the_state_file(tmp_path: Path) -> None:
    exchange = PaperExchange(seed=7, simulated_clock=True, start_time="2026-11-20T14:45:00Z")
    exchange.update_account_configurations({"no_shorting": True, "suspend_trade": True})
    state = StateFile(tmp_path / "state.json", exchange)
    state.save()
    restored = PaperExchange(seed=7, simulated_clock=True, start_time="2026-11-20T14:45:00Z")
    StateFile(tmp_path / "state.json", restored).load()
    assert restored.get_account_configurations()["no_shorting"] is True
    assert restored.get_account_configurations()["suspend_trade"] is True
