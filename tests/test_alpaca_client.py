"""alpaca_client.AlpacaBroker against the paper exchange: types, errors, time bounds, paging."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

import pytest

from alpaca_client import AlpacaBroker, parse_order
from trading.broker import OrderRequest, RateLimit
from trading.errors import (
    BrokerRejectedError,
    BrokerUnavailableError,
    ConfigurationError,
    DuplicateClientOrderIdError,
    NotFoundError,
)

D = Decimal


def limit_buy(coid: str, qty: str = "10", price: str = "150.00", symbol: str = "AAPL", **extra) -> OrderRequest:
    return OrderRequest(symbol=symbol, qty=D(qty), side="buy", kind="limit", time_in_force="day",
                        client_order_id=coid, limit_price=D(price), **extra)


def test_bracket_comes_back_with_held_legs_and_exact_decimals(broker, exchange):
    order = broker.submit_order(limit_buy("t-1", price="150.25", order_class="bracket",
                                          take_profit_price=D("160.10"), stop_loss_price=D("145.05")))
    assert (order.status, order.order_class, order.limit_price, order.qty) == (
        "pending_new", "bracket", D("150.25"), D("10"))
    legs = {leg.kind: leg for leg in order.legs}
    assert legs["limit"].limit_price == D("160.10") and legs["stop"].stop_price == D("145.05")
    assert {leg.status for leg in order.legs} == {"held"}
    assert order.submitted_at is not None and order.submitted_at.tzinfo is not None
    again = broker.get_order(order.id)
    assert again.id == order.id and len(again.legs) == 2
    assert broker.get_order_by_client_id("t-1").id == order.id


def test_fill_quantities_and_prices_are_decimals_and_quotes_are_exact(broker, exchange):
    exchange.quotes(AAPL=("150.17", "150.23"))
    order = broker.submit_order(limit_buy("t-fill", price="150.30"))
    exchange.step()  # acknowledged and filled at the next matching pass
    filled = broker.get_order(order.id)
    assert (filled.status, filled.filled_qty, filled.filled_avg_price) == ("filled", D("10"), D("150.23"))
    quote = broker.get_latest_quotes(["AAPL", "MSFT", "AAPL"])["AAPL"]
    assert (quote.bid, quote.ask) == (D("150.17"), D("150.23"))
    position = broker.list_positions()[0]
    assert (position.symbol, position.qty, position.avg_entry_price) == ("AAPL", D("10"), D("150.23"))


def test_unknown_order_is_not_found(broker, exchange):
    with pytest.raises(NotFoundError, match="get_order: HTTP 404"):
        broker.get_order("7c0c5d61-0000-4000-8000-000000000000")
    with pytest.raises(NotFoundError):
        broker.get_order_by_client_id("never-sent")


def test_reused_client_order_id_is_its_own_error_even_after_cancel(broker, exchange):
    order = broker.submit_order(limit_buy("dup-1"))
    broker.cancel_order(order.id)
    with pytest.raises(DuplicateClientOrderIdError) as caught:
        broker.submit_order(limit_buy("dup-1"))
    assert caught.value.status == 422


def test_insufficient_buying_power_is_a_rejection_with_the_broker_status(broker, exchange):
    with pytest.raises(BrokerRejectedError) as caught:
        broker.submit_order(limit_buy("big", qty="100000"))
    assert caught.value.status == 403 and "buying power" in str(caught.value)


def test_cancel_of_a_finished_order_is_rejected(broker, exchange):
    order = broker.submit_order(limit_buy("c-1"))
    broker.cancel_order(order.id)
    assert broker.get_order(order.id).status == "pending_cancel"
    broker.cancel_order(order.id)  # still pending: accepted again (204)
    exchange.step()
    assert broker.get_order(order.id).status == "canceled"
    with pytest.raises(BrokerRejectedError, match="422"):
        broker.cancel_order(order.id)


@pytest.mark.parametrize("method, path, call, mutating", [
    ("POST", "/v2/orders", lambda b: b.submit_order(limit_buy("f-1")), True),
    ("GET", "/v2/account", lambda b: b.get_account(), False),
])
def test_server_errors_are_transient_and_flag_unclear_submissions(broker, exchange, method, path, call, mutating):
    exchange.fault(status=500, method=method, path=path)
    with pytest.raises(BrokerUnavailableError) as caught:
        call(broker)
    assert caught.value.status == 500 and caught.value.outcome_unknown is mutating


def test_rate_limit_fails_fast_without_alpaca_py_sleeps(broker, exchange):
    exchange.fault(status=429, count=5, path="/v2/account")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match="rate limited") as caught:
        broker.get_account()
    assert caught.value.status == 429
    assert time.monotonic() - started < 2  # alpaca-py alone would sleep 3 s three times


def test_the_rate_limit_each_answer_states_is_kept_in_the_projects_own_type(broker, exchange):
    assert broker.rate_limit is None  # nothing asked yet
    broker.get_clock()
    first = broker.rate_limit
    assert isinstance(first, RateLimit) and first.limit >= 200 and first.remaining == first.limit - 1
    assert first.reset_at is not None and first.reset_at.tzinfo is not None
    broker.get_account()
    assert broker.rate_limit.remaining == first.remaining - 1  # the latest answer's figure
    exchange.fault(status=429, count=1, path="/v2/account")
    with pytest.raises(BrokerUnavailableError):
        broker.get_account()
    assert broker.rate_limit.remaining == 0  # a 429 says the allowance is spent


def test_a_hung_broker_is_bounded_by_the_timeout(exchange):
    broker = AlpacaBroker(base_url=exchange.url, timeout=0.3)
    exchange.fault(delay_seconds=1.5, method="POST", path="/v2/orders", when="after")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=r"no answer within 0\.3s") as caught:
        broker.submit_order(limit_buy("slow-1"))
    assert time.monotonic() - started < 1.2
    assert caught.value.outcome_unknown
    # the broker did accept it: the look-up by client order id finds it
    assert broker.get_order_by_client_id("slow-1").qty == D("10")
    time.sleep(1.3)  # let the delayed answer finish before the next test resets the exchange


def test_a_dropped_connection_is_transient_with_unknown_outcome(broker, exchange):
    exchange.fault(drop=True, method="POST", path="/v2/orders")
    with pytest.raises(BrokerUnavailableError, match="connection failed") as caught:
        broker.submit_order(limit_buy("drop-1"))
    assert caught.value.outcome_unknown
    with pytest.raises(NotFoundError):  # "before": the exchange never processed it
        broker.get_order_by_client_id("drop-1")


def test_unreachable_broker_is_transient():
    broker = AlpacaBroker(base_url="http://127.0.0.1:9", timeout=1)
    with pytest.raises(BrokerUnavailableError, match="connection failed"):
        broker.get_clock()


def test_refused_keys_are_a_configuration_error(broker, exchange):
    exchange.fault(status=401, path="/v2/account")
    with pytest.raises(ConfigurationError, match="refused the API keys"):
        broker.get_account()


def test_clock_calendar_account_and_assets(broker, exchange):
    clock = broker.get_clock()
    assert clock.timestamp == dt.datetime(2026, 11, 20, 14, 45, tzinfo=dt.UTC) and clock.is_open
    days = broker.get_calendar(dt.date(2026, 11, 25), dt.date(2026, 11, 27))
    assert [d.date.isoformat() for d in days] == ["2026-11-25", "2026-11-27"]  # Thanksgiving closed
    assert days[1].close == dt.datetime(2026, 11, 27, 18, 0, tzinfo=dt.UTC)  # 13:00 ET early close
    account = broker.get_account()
    assert account.equity == D("100000.00") and account.status == "ACTIVE"
    assert broker.list_assets()["AAPL"].tradable


def test_listing_pages_through_more_than_one_page_without_losing_orders(broker, exchange):
    ids = {broker.submit_order(limit_buy(f"page-{i}", qty="1", price="1.00")).id for i in range(23)}
    start = dt.datetime(2026, 11, 20, 14, 0, tzinfo=dt.UTC)
    listed = broker.list_orders_since(start, page_size=5)
    assert {order.id for order in listed} == ids
    assert [o.submitted_at for o in listed] == sorted(o.submitted_at for o in listed)
    # Each page restarts 1 us before the last order seen (ties at a boundary are never lost), so a
    # full page brings 4 new orders: 23 orders take 6 pages of 5.
    assert broker.calls.counts["list_orders"] == 6


def test_calls_are_counted_per_operation(broker, exchange):
    broker.get_clock()
    broker.get_clock()
    broker.get_account()
    assert broker.calls.counts == {"get_clock": 2, "get_account": 1} and broker.calls.total == 3


def test_parse_order_accepts_nanosecond_timestamps_and_unknown_words_untouched():
    order = parse_order({"id": "x", "client_order_id": "c", "symbol": "AAPL", "side": "buy", "type": "limit",
                         "status": "SOMETHING_NEW", "qty": "5", "filled_qty": "0", "time_in_force": "day",
                         "submitted_at": "2026-11-20T14:45:00.123456789Z"})
    assert order.submitted_at == dt.datetime(2026, 11, 20, 14, 45, 0, 123456, tzinfo=dt.UTC)
    assert order.status == "something_new"  # kept for trading.lifecycle to refuse, never guessed here


@pytest.mark.parametrize("text, expected", [
    ("2026-11-21T03:30:18.232068-05:00", dt.datetime(2026, 11, 21, 8, 30, 18, 232068, tzinfo=dt.UTC)),
    ("2026-11-21T03:30:18.5-05:00", dt.datetime(2026, 11, 21, 8, 30, 18, 500000, tzinfo=dt.UTC)),
    ("2026-11-20T14:45:00.123456789Z", dt.datetime(2026, 11, 20, 14, 45, 0, 123456, tzinfo=dt.UTC)),
    ("2026-11-20T09:45:00-05:00", dt.datetime(2026, 11, 20, 14, 45, tzinfo=dt.UTC)),
])
def test_timestamps_keep_their_offset_whatever_their_precision(text, expected):
    from alpaca_client import _time

    assert _time(text) == expected


def test_one_symbols_position_is_read_at_that_moment_and_none_when_nothing_is_held(broker, exchange):
    assert broker.get_position("AAPL") is None
    exchange.quotes(AAPL=("149.90", "150.00"))
    broker.submit_order(limit_buy("pos-1", qty="7"))
    exchange.step()
    position = broker.get_position("AAPL")
    assert position is not None
    assert (position.symbol, position.qty, position.avg_entry_price) == ("AAPL", Decimal("7"), Decimal("150"))
    assert broker.calls.counts["get_position"] == 2


def test_account_configurations_are_read_as_the_broker_sends_them(broker, exchange):
    assert broker.get_account_configurations()["no_shorting"] is False
    exchange.configure_account(no_shorting=True)
    configuration = broker.get_account_configurations()
    assert configuration["no_shorting"] is True and configuration["suspend_trade"] is False


def test_account_configurations_missing_at_the_broker_raise_not_found(broker, exchange):
    exchange.fault(status=404, path="/v2/account/configurations", message="endpoint not found")
    with pytest.raises(NotFoundError, match="get_account_configurations: HTTP 404"):
        broker.get_account_configurations()


def test_a_short_position_reads_as_negative_quantity_and_side_short(broker, exchange):
    exchange.quotes(AAPL=("149.90", "150.00"))
    broker.submit_order(OrderRequest(symbol="AAPL", qty=D("3"), side="sell", kind="market", time_in_force="day",
                                     client_order_id="short-1"))
    exchange.step()
    position = broker.get_position("AAPL")
    assert position is not None
    assert (position.qty, position.qty_available, position.side) == (D("-3"), D("-3"), "short")
    assert (position.avg_entry_price, position.cost_basis) == (D("149.9"), D("-449.70"))
