"""Property-based fuzzing of what clients send the paper exchange: whatever the request body or
query, the answer is never a 5xx, and it matches Alpaca's schemas (the Order on success, the Error
otherwise).

Hypothesis generates bodies that mix well-formed fields (so that the deep validation paths are
reached) with arbitrary JSON in any field. The runs are derandomized (the same examples on every
run, so CI cannot flake) and bounded: the whole module takes a few seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.paper_exchange_helpers import Exchange, running_exchange
from tests.test_paper_exchange_schema import TRADING_SPEC, error_schema, response_schema, validate

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# The query test sends five requests per example.
FUZZ_QUERIES = settings(FUZZ, max_examples=30)

# ---------------------------------------------------------------------------- strategies
_scalars = (st.none() | st.booleans() | st.integers(-(10**15), 10**15)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
any_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
_number_texts = st.sampled_from(["1", "0", "-1", "0.5", "1.0000000001", "1e3", "1e400", "NaN", "Infinity",
                                 "-0", "150.123", "0.00001", "  10 ", "abc", "", "99999999999999999999"])
numbers = (st.integers(-5, 10**9) | st.floats(-1e6, 1e12, allow_nan=False) | _number_texts
           | st.decimals(min_value=-1000, max_value=100000, places=4, allow_nan=False).map(str))
# A field is mostly a plausible value, sometimes anything at all.
def field(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(plausible, plausible, plausible, any_json)


prices = numbers
order_bodies = st.fixed_dictionaries({}, optional={
    "symbol": field(st.sampled_from(["AAPL", "MSFT", "aapl", "NOPE", "", " SPY ", "F"])),
    "qty": field(numbers),
    "notional": field(numbers),
    "side": field(st.sampled_from(["buy", "sell", "BUY", "short"])),
    "type": field(st.sampled_from(["market", "limit", "stop", "stop_limit", "trailing_stop", "LIMIT", "x"])),
    "time_in_force": field(st.sampled_from(["day", "gtc", "ioc", "fok", "opg", "cls", "DAY", "week"])),
    "limit_price": field(prices),
    "stop_price": field(prices),
    "trail_price": field(prices),
    "trail_percent": field(prices),
    "order_class": field(st.sampled_from(["simple", "bracket", "oco", "oto", "mleg", "", "other"])),
    "take_profit": field(st.fixed_dictionaries({}, optional={"limit_price": field(prices)})),
    "stop_loss": field(st.fixed_dictionaries({}, optional={"stop_price": field(prices),
                                                            "limit_price": field(prices)})),
    "client_order_id": field(st.text(min_size=0, max_size=140)),
    "extended_hours": field(st.booleans()),
    "legs": any_json,
    "position_intent": field(st.sampled_from(["buy_to_open", "sell_to_close"])),
})
replace_bodies = st.fixed_dictionaries({}, optional={
    "qty": field(numbers), "limit_price": field(prices), "stop_price": field(prices), "trail": field(prices),
    "time_in_force": field(st.sampled_from(["day", "gtc", "ioc"])), "client_order_id": field(st.text(max_size=140)),
})
configuration_bodies = st.fixed_dictionaries({}, optional={
    "no_shorting": field(st.booleans()), "suspend_trade": field(st.booleans()),
    "max_margin_multiplier": field(st.sampled_from(["1", "2", "4", "3"])),
    "trade_confirm_email": field(st.sampled_from(["all", "none"])),
    "max_options_trading_level": field(st.integers(-1, 4)), "dtbp_check": any_json, "pdt_check": any_json,
    "fractional_trading": field(st.booleans()),
}) | any_json
timestamps = st.sampled_from(["2026-11-20T14:00:00Z", "2026-11-20", "2026-11-20T09:30:00-05:00", "yesterday",
                              "", "2026-13-40", "1970-01-01T00:00:00Z", "2099-01-01T00:00:00Z"])
order_queries = st.fixed_dictionaries({}, optional={
    "status": field(st.sampled_from(["open", "closed", "all", "x"])), "limit": field(numbers),
    "after": timestamps, "until": timestamps, "direction": st.sampled_from(["asc", "desc", "up"]),
    "nested": st.sampled_from(["true", "True", "0", "maybe"]), "symbols": st.sampled_from(["AAPL", ",", "A,B", ""]),
    "side": st.sampled_from(["buy", "sell", "x"]),
})
history_queries = st.fixed_dictionaries({}, optional={
    "period": st.sampled_from(["1D", "5D", "1W", "1M", "3M", "1A", "0D", "D", "12X", ""]),
    "timeframe": st.sampled_from(["1Min", "5Min", "15Min", "1H", "1D", "2H", ""]),
    "start": timestamps, "end": timestamps, "date_end": st.sampled_from(["2026-11-20", "2026-02-30", "x"]),
    "intraday_reporting": st.sampled_from(["market_hours", "extended_hours", "continuous", "x"]),
    "pnl_reset": st.sampled_from(["per_day", "no_reset", "x"]), "extended_hours": st.sampled_from(["true", "x"]),
    "cashflow_types": st.sampled_from(["ALL", "NONE", "CSD"]),
})
# Bar queries start recently: aggregating a month of minutes takes the exchange most of a second,
# which is speed (measured by scripts/benchmark_paper_exchange.py), not what this test is about.
bar_times = st.sampled_from(["2026-11-20T14:00:00Z", "2026-11-20", "2026-11-20T09:30:00-05:00", "yesterday", "",
                             "2026-13-40", "2099-01-01T00:00:00Z"])
bar_queries = st.fixed_dictionaries({"symbols": st.sampled_from(["AAPL", "AAPL,SPY", "", "NOPE"])}, optional={
    "timeframe": st.sampled_from(["1Min", "5Min", "1Hour", "1Day", "1Week", "1Month", "7Days", "0Min", ""]),
    "start": bar_times, "end": bar_times, "limit": field(numbers), "sort": st.sampled_from(["asc", "desc", "x"]),
    "page_token": st.sampled_from(["", "b2Zmc2V0OjEw", "!!", "b2Zmc2V0Oi0x"]),
})


# ---------------------------------------------------------------------------- the property
def answered_well(response: Any, success_schema: dict[str, Any] | None = None) -> None:
    """No 5xx; a JSON error body for 4xx; a valid success body when a schema is given."""
    assert response.status_code < 500, (response.status_code, response.text, response.request.body)
    if response.status_code >= 400:
        validate(response.json(), error_schema())
    elif success_schema is not None:
        validate(response.json(), success_schema)


def _send(ex: Exchange, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body, allow_nan=True).encode()
    return ex.api(method, path, data=data, params=params, headers={"Content-Type": "application/json"})


def _run(test: Callable[[Exchange], None]) -> None:
    with running_exchange(price_simulation=False) as ex:
        ex.quote("AAPL", "150.20", "150.30")
        ex.quote("MSFT", "400.00", "400.20")
        ex.quote("F", "0.5000", "0.5001")
        ex.api("POST", "/v2/orders", expect=200,
               json={"symbol": "AAPL", "qty": 20, "side": "buy", "type": "market", "time_in_force": "day"})
        test(ex)


def test_no_order_body_makes_the_exchange_fail() -> None:
    order_schema = response_schema(TRADING_SPEC, "POST", "/v2/orders", 200)

    def scenario(ex: Exchange) -> None:
        @FUZZ
        @given(body=order_bodies)
        def submit(body: dict[str, Any]) -> None:
            answered_well(_send(ex, "POST", "/v2/orders", body), order_schema)

        submit()

    _run(scenario)


def test_no_replace_body_makes_the_exchange_fail() -> None:
    order_schema = response_schema(TRADING_SPEC, "PATCH", "/v2/orders/{order_id}", 200)

    def scenario(ex: Exchange) -> None:
        target = {"id": ""}

        def resting() -> str:
            order = ex.api("POST", "/v2/orders", expect=200, json={
                "symbol": "AAPL", "qty": 2, "side": "sell", "type": "limit", "limit_price": 170,
                "time_in_force": "gtc"}).json()
            return str(order["id"])

        @FUZZ
        @given(body=replace_bodies)
        def replace(body: dict[str, Any]) -> None:
            if not target["id"]:
                target["id"] = resting()
            response = _send(ex, "PATCH", f"/v2/orders/{target['id']}", body)
            answered_well(response, order_schema)
            if response.status_code == 200:  # the replacement is the order to fuzz next
                ex.api("DELETE", f"/v2/orders/{response.json()['id']}", expect=204)
                target["id"] = ""

        replace()

    _run(scenario)


def test_no_configuration_body_or_malformed_json_makes_the_exchange_fail() -> None:
    def scenario(ex: Exchange) -> None:
        configurations = response_schema(TRADING_SPEC, "PATCH", "/v2/account/configurations", 200)

        @FUZZ
        @given(body=configuration_bodies)
        def configure(body: Any) -> None:
            answered_well(_send(ex, "PATCH", "/v2/account/configurations", body), configurations)

        @FUZZ
        @given(raw=st.binary(max_size=64), method=st.sampled_from(["POST", "PATCH"]),
               path=st.sampled_from(["/v2/orders", "/v2/account/configurations", "/v2/orders/x"]))
        def garbage(raw: bytes, method: str, path: str) -> None:
            answered_well(ex.api(method, path, data=raw))

        configure()
        garbage()

    _run(scenario)


def test_no_query_makes_the_exchange_fail() -> None:
    def scenario(ex: Exchange) -> None:
        @FUZZ_QUERIES
        @given(orders=order_queries, history=history_queries, bars=bar_queries,
               close=st.fixed_dictionaries({}, optional={"qty": field(numbers), "percentage": field(numbers)}))
        def query(orders: dict[str, Any], history: dict[str, Any], bars: dict[str, Any],
                  close: dict[str, Any]) -> None:
            answered_well(ex.api("GET", "/v2/orders", params=orders))
            answered_well(ex.api("GET", "/v2/account/portfolio/history", params=history))
            answered_well(ex.api("GET", "/v2/stocks/bars", params=bars))
            answered_well(ex.api("GET", "/v2/stocks/snapshots", params={"symbols": bars["symbols"]}))
            response = ex.api("DELETE", "/v2/positions/AAPL", params={k: str(v) for k, v in close.items()})
            answered_well(response)
            if response.status_code == 200:  # buy the shares back so that the next close has some
                ex.api("DELETE", "/v2/orders")
                ex.api("POST", "/v2/orders", json={"symbol": "AAPL", "qty": 20, "side": "buy", "type": "market",
                                                   "time_in_force": "day"})

        query()

    _run(scenario)
