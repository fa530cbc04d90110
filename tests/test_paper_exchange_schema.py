"""Every kind of paper-exchange response validates against Alpaca's own OpenAPI schemas.

The specs are kept in ``tests/data/alpaca`` (copied unchanged from Alpaca). OpenAPI 3.0's
``nullable`` is translated to JSON Schema, and ``date-time``, ``date`` and ``uuid`` formats
are checked strictly.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from paper_exchange.server import _ROUTES
from tests.paper_exchange_helpers import Exchange, running_exchange

SPEC_DIR = Path(__file__).resolve().parent / "data" / "alpaca"
TRADING_SPEC = SPEC_DIR / "openapi_trading-api.json"
DATA_SPEC = SPEC_DIR / "openapi_market-data-api.json"
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")

FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _DATE_TIME.match(value):
        raise ValueError(f"not RFC 3339: {value!r}")
    datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00"))
    return True


@FORMATS.checks("date", raises=ValueError)
def _is_date(value: object) -> bool:
    if isinstance(value, str):
        date.fromisoformat(value)
    return True


@FORMATS.checks("uuid", raises=ValueError)
def _is_uuid(value: object) -> bool:
    if isinstance(value, str):
        uuid.UUID(value)
    return True


def _openapi_to_json_schema(node: Any) -> Any:
    """Translate OpenAPI 3.0 ``nullable: true`` into JSON Schema, recursively."""
    if isinstance(node, list):
        return [_openapi_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _openapi_to_json_schema(value) for key, value in node.items()}
    if node.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        if "$ref" in out:
            out = {"anyOf": [{"$ref": out.pop("$ref")}, {"type": "null"}], **out}
    return out


@cache
def _spec(path: Path) -> dict[str, Any]:
    return _openapi_to_json_schema(json.loads(path.read_text()))


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node and node["$ref"].startswith("#/components/responses/"):
        node = spec["components"]["responses"][node["$ref"].rsplit("/", 1)[1]]
    return node


def response_schema(spec_path: Path, method: str, path: str, status: int) -> dict[str, Any]:
    """The JSON schema of a documented response, with the spec's components attached."""
    spec = _spec(spec_path)
    response = _resolve(spec, spec["paths"][path][method.lower()]["responses"][str(status)])
    schema = dict(response["content"]["application/json"]["schema"])
    schema["components"] = spec["components"]
    return schema


def error_schema() -> dict[str, Any]:
    spec = _spec(TRADING_SPEC)
    return {"$ref": "#/components/schemas/Error", "components": spec["components"]}


def validate(instance: Any, schema: dict[str, Any]) -> None:
    Draft202012Validator(schema, format_checker=FORMATS).validate(instance)


def check_rate_headers(response: Any) -> None:
    """Every keyed answer carries Alpaca's rate-limit headers, integers as the specs define them."""
    header_schema = _spec(TRADING_SPEC)["components"]["headers"]
    for name, ref in (("X-RateLimit-Limit", "ratelimit_limit"), ("X-RateLimit-Remaining", "ratelimit_remaining"),
                      ("X-RateLimit-Reset", "ratelimit_reset")):
        assert name in response.headers, (response.request.method, response.url, name)
        validate(int(response.headers[name]), header_schema[ref]["schema"])


def check(ex: Exchange, method: str, url_path: str, spec_path: str, status: int, **kwargs: Any) -> Any:
    """Call the API and validate the body against the documented schema of ``status``."""
    response = ex.api(method, url_path, expect=status, **kwargs)
    check_rate_headers(response)
    body = response.json()
    spec = DATA_SPEC if spec_path.startswith("/v2/stocks") else TRADING_SPEC
    validate(body, response_schema(spec, method, spec_path, status))
    return body


def check_error(ex: Exchange, method: str, url_path: str, status: int, **kwargs: Any) -> dict[str, Any]:
    response = ex.api(method, url_path, expect=status, **kwargs)
    if status != 401:
        check_rate_headers(response)
    body = response.json()
    validate(body, error_schema())
    assert set(body) >= {"code", "message"}
    return body


@pytest.fixture
def ex() -> Iterator[Exchange]:
    with running_exchange(price_simulation=True) as exchange:
        exchange.quote("AAPL", "150.20", "150.30")
        yield exchange


def order_body(**fields: Any) -> dict[str, Any]:
    body = {"symbol": "AAPL", "qty": 5, "side": "buy", "type": "limit", "time_in_force": "gtc", "limit_price": 149}
    body.update(fields)
    return body


def test_the_validator_itself_rejects_a_malformed_order(ex: Exchange) -> None:
    order = check(ex, "POST", "/v2/orders", "/v2/orders", 200, json=order_body())
    schema = response_schema(TRADING_SPEC, "POST", "/v2/orders", 200)
    for broken in ({**order, "status": "open"}, {**order, "id": "not-a-uuid"}, {**order, "created_at": "yesterday"}):
        with pytest.raises(ValidationError):
            validate(broken, schema)


def test_order_responses_match_the_trading_spec(ex: Exchange) -> None:
    simple = check(ex, "POST", "/v2/orders", "/v2/orders", 200, json=order_body(client_order_id="schema-1"))
    bracket = check(
        ex, "POST", "/v2/orders", "/v2/orders", 200,
        json=order_body(
            type="market", limit_price=None, order_class="bracket", time_in_force="day",
            take_profit={"limit_price": 160}, stop_loss={"stop_price": 140, "limit_price": 139.5},
        ),
    )
    assert len(bracket["legs"]) == 2
    check(ex, "POST", "/v2/orders", "/v2/orders", 200,
          json=order_body(type="trailing_stop", limit_price=None, trail_percent=2.5, qty=1))
    check(ex, "POST", "/v2/orders", "/v2/orders", 200,
          json=order_body(type="stop_limit", stop_price=152, limit_price=153, qty=1))
    check(ex, "GET", f"/v2/orders/{bracket['id']}?nested=true", "/v2/orders/{order_id}", 200)
    check(ex, "GET", "/v2/orders:by_client_order_id?client_order_id=schema-1", "/v2/orders:by_client_order_id", 200)
    ex.step()  # acknowledged: replaceable now
    replaced = check(ex, "PATCH", f"/v2/orders/{simple['id']}", "/v2/orders/{order_id}", 200,
                     json={"limit_price": "148.5", "qty": "4"})
    assert replaced["replaces"] == simple["id"]
    pending = check(ex, "GET", f"/v2/orders/{simple['id']}", "/v2/orders/{order_id}", 200)
    assert pending["status"] == "pending_replace"
    ex.step()
    for query in ("status=all", "status=all&nested=true", "status=closed&direction=asc", "symbols=AAPL&limit=2"):
        check(ex, "GET", f"/v2/orders?{query}", "/v2/orders", 200)
    response = ex.api("DELETE", f"/v2/orders/{replaced['id']}", expect=204)
    assert response.content == b""
    pending = check(ex, "GET", f"/v2/orders/{replaced['id']}", "/v2/orders/{order_id}", 200)
    assert pending["status"] == "pending_cancel"
    canceled = check(ex, "DELETE", "/v2/orders", "/v2/orders", 207)
    assert canceled and all(item["status"] == 200 for item in canceled)


def test_position_account_and_market_responses_match_the_specs(ex: Exchange) -> None:
    ex.quote("MSFT", "400.00", "400.20")
    for symbol in ("AAPL", "MSFT"):
        ex.api("POST", "/v2/orders", expect=200,
               json={"symbol": symbol, "qty": 6, "side": "buy", "type": "market", "time_in_force": "day"})
    ex.api("POST", "/v2/orders", expect=200,  # a short sale
           json={"symbol": "SPY", "qty": 3, "side": "sell", "type": "market", "time_in_force": "day"})
    ex.step()
    positions = check(ex, "GET", "/v2/positions", "/v2/positions", 200)
    assert {p["symbol"]: p["side"] for p in positions} == {"AAPL": "long", "MSFT": "long", "SPY": "short"}
    position = check(ex, "GET", "/v2/positions/AAPL", "/v2/positions/{symbol_or_asset_id}", 200)
    check(ex, "GET", f"/v2/positions/{position['asset_id']}", "/v2/positions/{symbol_or_asset_id}", 200)
    check(ex, "GET", "/v2/positions/SPY", "/v2/positions/{symbol_or_asset_id}", 200)
    check(ex, "GET", "/v2/account", "/v2/account", 200)
    check(ex, "DELETE", "/v2/positions/AAPL?qty=2", "/v2/positions/{symbol_or_asset_id}", 200)
    ex.step()
    closed = check(ex, "DELETE", "/v2/positions?cancel_orders=true", "/v2/positions", 207)
    assert {item["symbol"] for item in closed} == {"AAPL", "MSFT", "SPY"}
    check(ex, "GET", "/v2/clock", "/v2/clock", 200)
    days = check(ex, "GET", "/v2/calendar?start=2026-11-20&end=2026-12-31", "/v2/calendar", 200)
    assert {d["date"] for d in days}.isdisjoint({"2026-11-26", "2026-12-25"})
    check(ex, "GET", "/v2/assets?status=active", "/v2/assets", 200)
    check(ex, "GET", "/v2/assets/SPY", "/v2/assets/{symbol_or_asset_id}", 200)
    quotes = check(ex, "GET", "/v2/stocks/quotes/latest?symbols=AAPL,MSFT,SPY", "/v2/stocks/quotes/latest", 200)
    assert set(quotes["quotes"]) == {"AAPL", "MSFT", "SPY"}
    check(ex, "GET", "/v2/stocks/trades/latest?symbols=AAPL,SPY", "/v2/stocks/trades/latest", 200)
    page = check(
        ex, "GET", "/v2/stocks/bars?symbols=AAPL,SPY&timeframe=1Hour&start=2026-11-10&limit=30",
        "/v2/stocks/bars", 200,
    )
    assert page["next_page_token"]
    token = page["next_page_token"]
    check(ex, "GET", f"/v2/stocks/bars?symbols=AAPL,SPY&timeframe=1Hour&start=2026-11-10&limit=30&page_token={token}",
          "/v2/stocks/bars", 200)


def test_error_responses_match_the_error_schema(ex: Exchange) -> None:
    assert ex.http.get(ex.url + "/v2/account", timeout=5).json() == {
        "code": 40110000, "message": "request is not authorized",
    }
    no_keys = {"APCA-API-KEY-ID": "", "APCA-API-SECRET-KEY": ""}
    assert check_error(ex, "GET", "/v2/account", 401, headers=no_keys)["code"] == 40110000
    filled = ex.api("POST", "/v2/orders", expect=200, json=order_body(type="market", limit_price=None)).json()
    ex.step()
    expected = [
        ("GET", f"/v2/orders/{uuid.uuid4()}", 404, {}, 40410000, "order not found"),
        ("DELETE", f"/v2/orders/{uuid.uuid4()}", 404, {}, 40410000, "order not found"),
        ("GET", "/v2/orders:by_client_order_id?client_order_id=nope", 404, {}, 40410000, "order not found"),
        ("DELETE", f"/v2/orders/{filled['id']}", 422, {}, 42210000, "order is not cancelable"),
        ("GET", "/v2/positions/MSFT", 404, {}, 40410000, "position does not exist"),
        ("DELETE", "/v2/positions/MSFT", 404, {}, 40410000, "position does not exist"),
        ("GET", "/v2/assets/NOPE", 404, {}, 40410000, "asset not found"),
        ("GET", "/v2/nothing-here", 404, {}, 40410000, "endpoint not found"),
        ("PUT", "/v2/orders", 405, {}, 40510000, "method not allowed"),
        ("POST", "/v2/orders", 422, {"json": order_body(limit_price=290.123)}, 42210000,
         "invalid limit_price 290.123. sub-penny increment does not fulfill minimum pricing criteria"),
        ("POST", "/v2/orders", 422, {"json": order_body(limit_price=0.12345)}, 42210000,
         "invalid limit_price 0.12345. sub-penny increment does not fulfill minimum pricing criteria"),
        ("POST", "/v2/orders", 422, {"json": order_body(client_order_id=filled["client_order_id"])}, 40010001,
         "client_order_id must be unique"),
        ("POST", "/v2/orders", 422, {"json": order_body(symbol="QQQQQ")}, 40010001, 'asset "QQQQQ" not found'),
        ("POST", "/v2/orders", 403, {"json": order_body(side="sell", qty=6)}, 40310000,
         "insufficient qty available for order (requested: 6, available: 5)"),
        ("POST", "/v2/orders", 403, {"json": order_body(qty=100000)}, 40310000, "insufficient buying power"),
        ("POST", "/v2/orders", 403, {"json": order_body(symbol="SPY", side="sell", qty="0.5", type="market",
                                                        limit_price=None, time_in_force="day")},
         40310000, "fractional orders cannot be sold short"),
        ("GET", "/v2/orders?limit=501", 422, {}, 42210000, "invalid limit 501: must be between 1 and 500"),
        ("POST", "/v2/orders", 400, {"data": b"{not json"}, 40010000, "request body format is invalid"),
        ("GET", "/v2/stocks/bars?symbols=AAPL&timeframe=7Days", 400, {}, 40010000, "invalid timeframe: '7Days'"),
    ]
    for method, path, status, kwargs, code, message in expected:
        body = check_error(ex, method, path, status, **kwargs)
        assert (body["code"], body["message"]) == (code, message), (method, path)


# ---------------------------------------------------------------------------- every route, measured
# One sample call per route of the Trading and Market-data API: (method, the server's route
# template) -> (url, the spec's path, status, request kwargs). DELETEs come last (they end what the
# others read). test_every_api_route_has_a_validated_sample fails when a route is added without one.
def _route_samples(ex: Exchange) -> list[tuple[tuple[str, str], str, str, int, dict[str, Any]]]:
    ex.quote("MSFT", "400.00", "400.20")
    for symbol in ("AAPL", "MSFT"):
        ex.api("POST", "/v2/orders", expect=200,
               json={"symbol": symbol, "qty": 6, "side": "buy", "type": "market", "time_in_force": "day"})
    resting = ex.api("POST", "/v2/orders", expect=200, json=order_body(client_order_id="route-1")).json()
    ex.advance(120)  # filled and acknowledged, on arrival or at the next pass
    asset_id = ex.api("GET", "/v2/assets/AAPL", expect=200).json()["id"]
    return [
        (("GET", "/v2/account"), "/v2/account", "/v2/account", 200, {}),
        (("GET", "/v2/account/configurations"), "/v2/account/configurations", "/v2/account/configurations", 200, {}),
        (("PATCH", "/v2/account/configurations"), "/v2/account/configurations", "/v2/account/configurations",
         200, {"json": {"trade_confirm_email": "none", "pdt_check": None}}),
        (("GET", "/v2/account/portfolio/history"), "/v2/account/portfolio/history?period=1D&timeframe=1Min",
         "/v2/account/portfolio/history", 200, {}),
        (("GET", "/v2/clock"), "/v2/clock", "/v2/clock", 200, {}),
        (("GET", "/v2/calendar"), "/v2/calendar?start=2026-11-01&end=2026-11-30", "/v2/calendar", 200, {}),
        (("GET", "/v2/assets"), "/v2/assets", "/v2/assets", 200, {}),
        (("GET", "/v2/assets/{symbol_or_id}"), f"/v2/assets/{asset_id}", "/v2/assets/{symbol_or_asset_id}", 200, {}),
        (("POST", "/v2/orders"), "/v2/orders", "/v2/orders", 200,
         {"json": {"symbol": "AAPL", "notional": "250", "side": "buy", "type": "market", "time_in_force": "day"}}),
        (("GET", "/v2/orders"), "/v2/orders?status=all&nested=true", "/v2/orders", 200, {}),
        (("GET", "/v2/orders:by_client_order_id"), "/v2/orders:by_client_order_id?client_order_id=route-1",
         "/v2/orders:by_client_order_id", 200, {}),
        (("GET", "/v2/orders/{order_id}"), f"/v2/orders/{resting['id']}", "/v2/orders/{order_id}", 200, {}),
        (("PATCH", "/v2/orders/{order_id}"), f"/v2/orders/{resting['id']}", "/v2/orders/{order_id}", 200,
         {"json": {"limit_price": "148"}}),
        (("GET", "/v2/positions"), "/v2/positions", "/v2/positions", 200, {}),
        (("GET", "/v2/positions/{symbol_or_id}"), "/v2/positions/MSFT", "/v2/positions/{symbol_or_asset_id}", 200, {}),
        (("GET", "/v2/stocks/quotes/latest"), "/v2/stocks/quotes/latest?symbols=AAPL,SPY",
         "/v2/stocks/quotes/latest", 200, {}),
        (("GET", "/v2/stocks/trades/latest"), "/v2/stocks/trades/latest?symbols=AAPL,SPY",
         "/v2/stocks/trades/latest", 200, {}),
        (("GET", "/v2/stocks/bars"), "/v2/stocks/bars?symbols=SPY&timeframe=15Min&start=2026-11-19",
         "/v2/stocks/bars", 200, {}),
        (("GET", "/v2/stocks/bars/latest"), "/v2/stocks/bars/latest?symbols=AAPL,SPY", "/v2/stocks/bars/latest",
         200, {}),
        (("GET", "/v2/stocks/{symbol}/bars/latest"), "/v2/stocks/SPY/bars/latest", "/v2/stocks/{symbol}/bars/latest",
         200, {}),
        (("GET", "/v2/stocks/snapshots"), "/v2/stocks/snapshots?symbols=AAPL,SPY", "/v2/stocks/snapshots", 200, {}),
        (("GET", "/v2/stocks/{symbol}/snapshot"), "/v2/stocks/SPY/snapshot", "/v2/stocks/{symbol}/snapshot", 200, {}),
        (("DELETE", "/v2/positions/{symbol_or_id}"), "/v2/positions/AAPL?percentage=50",
         "/v2/positions/{symbol_or_asset_id}", 200, {}),
        (("DELETE", "/v2/positions"), "/v2/positions?cancel_orders=true", "/v2/positions", 207, {}),
        (("DELETE", "/v2/orders"), "/v2/orders", "/v2/orders", 207, {}),
    ]


def test_every_api_route_has_a_validated_sample(ex: Exchange) -> None:
    samples = _route_samples(ex)
    api_routes = {(method, template) for method, _pattern, template, _handler in _ROUTES if template.startswith("/v2")}
    sampled = {route for route, *_ in samples}
    # DELETE /v2/orders/{order_id} answers 204 without a body: checked in the order test above.
    assert api_routes - sampled == {("DELETE", "/v2/orders/{order_id}")}
    assert sampled <= api_routes
    for _route, url, spec_path, status, kwargs in samples:
        check(ex, _route[0], url, spec_path, status, **kwargs)


def test_new_order_kinds_match_the_order_schema(ex: Exchange) -> None:
    notional = check(ex, "POST", "/v2/orders", "/v2/orders", 200,
                     json={"symbol": "AAPL", "notional": 99.5, "side": "buy", "type": "market", "time_in_force": "day"})
    assert notional["qty"] is None and notional["notional"] == "99.5"
    converted = check(ex, "POST", "/v2/orders", "/v2/orders", 200,
                      json=order_body(type="stop", limit_price=None, stop_price=155, qty=2))
    assert (converted["type"], converted["limit_price"]) == ("stop_limit", "158.88")
    fractional = check(ex, "POST", "/v2/orders", "/v2/orders", 200,
                       json=order_body(type="stop_limit", stop_price=152, limit_price=153, qty="0.5",
                                       time_in_force="day"))
    assert fractional["qty"] == "0.5"


def test_error_responses_of_the_newer_rules_match_the_error_schema(ex: Exchange) -> None:
    no_shorting = {"json": {"no_shorting": True}}
    check(ex, "PATCH", "/v2/account/configurations", "/v2/account/configurations", 200, **no_shorting)
    sell = {"json": order_body(side="sell", type="market", limit_price=None, time_in_force="day")}
    expected = [
        ("POST", "/v2/orders", 403, sell, 40310000, "account is not allowed to short"),
        ("POST", "/v2/orders", 422, {"json": order_body(type="market", limit_price=None, notional=10)}, 42210000,
         "only one of qty or notional may be given"),
        ("POST", "/v2/orders", 422, {"json": order_body(qty="1.5")}, 42210000,
         "fractional orders are only supported for simple market, limit, stop or stop_limit day orders"),
        ("PATCH", "/v2/account/configurations", 422, {"json": {"no_shorting": 1}}, 42210000,
         "invalid no_shorting: 1 (expected true or false)"),
        ("GET", "/v2/account/portfolio/history?timeframe=1W", 422, {}, 42210000,
         "invalid timeframe: '1W' (1Min, 5Min, 15Min, 1H or 1D)"),
        ("GET", "/v2/stocks/QQQQQ/snapshot", 404, {}, 40410000, "no snapshot for QQQQQ: unknown symbol"),
        ("GET", "/v2/stocks/QQQQQ/bars/latest", 404, {}, 40410000, "no bar for QQQQQ"),
        ("GET", "/v2/stocks/snapshots", 400, {}, 40010000, "symbols is required"),
        ("POST", "/v2/orders", 422, {"data": b'{"symbol": "AAPL", "qty": 1e400, "side": "buy", "type": "market", '
                                             b'"time_in_force": "day"}'}, 42210000, "invalid qty: 1E+400"),
        ("POST", "/v2/orders", 422, {"json": order_body(limit_price="99999999999999999999")}, 42210000,
         "invalid limit_price: '99999999999999999999'"),
        ("OPTIONS", "/v2/orders", 405, {}, 40510000, "method not allowed"),
        ("FOO", "/v2/account", 405, {}, 40510000, "method not allowed"),
    ]
    for method, path, status, kwargs, code, message in expected:
        body = check_error(ex, method, path, status, **kwargs)
        assert (body["code"], body["message"]) == (code, message), (method, path)
    check(ex, "PATCH", "/v2/account/configurations", "/v2/account/configurations", 200,
          json={"no_shorting": False, "suspend_trade": True})
    body = check_error(ex, "POST", "/v2/orders", 403, json=order_body())
    assert body == {"code": 40310000,
                    "message": "new orders are not accepted: the account's suspend_trade configuration is true"}


def test_the_rate_limit_answer_matches_the_error_schema_and_carries_its_headers() -> None:
    with running_exchange(rate_limit=1) as ex:
        check(ex, "GET", "/v2/clock", "/v2/clock", 200)
        body = check_error(ex, "GET", "/v2/clock", 429)
        assert body == {"code": 42910000, "message": "rate limit exceeded"}
