"""Alpaca's rate limit at the paper exchange: 200 requests a minute per key, 429 beyond it, and
the ``X-RateLimit-*`` headers on every answer."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import requests
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest

from paper_exchange import service
from paper_exchange.ratelimit import RateLimiter
from tests.paper_exchange_helpers import AUTH, running_exchange

MARKET_BUY = {"symbol": "AAPL", "qty": 1, "side": "buy", "type": "market", "time_in_force": "day"}


def _limits(response: requests.Response) -> tuple[int, int, int]:
    headers = response.headers
    return (int(headers["X-RateLimit-Limit"]), int(headers["X-RateLimit-Remaining"]),
            int(headers["X-RateLimit-Reset"]))


def test_a_key_past_its_allowance_is_answered_429_and_the_order_is_not_placed() -> None:
    with running_exchange(rate_limit=3) as ex:
        ex.quote("AAPL", 150.20, 150.30)
        seen = [_limits(ex.api("GET", "/v2/account", expect=200)) for _ in range(2)]
        assert [(limit, remaining) for limit, remaining, _ in seen] == [(3, 2), (3, 1)]
        placed = ex.api("POST", "/v2/orders", expect=200, json={**MARKET_BUY, "client_order_id": "rl-1"})
        assert _limits(placed)[:2] == (3, 0)
        refused = ex.api("POST", "/v2/orders", json={**MARKET_BUY, "client_order_id": "rl-2"})
        assert refused.status_code == 429
        assert refused.json() == {"code": 42910000, "message": "rate limit exceeded"}
        limit, remaining, reset = _limits(refused)
        assert (limit, remaining) == (3, 0)
        assert time.time() - 1 <= reset <= time.time() + 61
        # The refused order never reached the book; the admin API is never limited.
        orders = ex.admin("GET", "/admin/state")["orders"]
        assert [o["client_order_id"] for o in orders] == ["rl-1"]


def test_every_answer_carries_the_headers_errors_included_and_each_key_counts_alone() -> None:
    with running_exchange(rate_limit=200) as ex:
        not_found = ex.api("GET", "/v2/orders/00000000-0000-0000-0000-000000000000", expect=404)
        assert _limits(not_found)[:2] == (200, 199)
        unknown = ex.api("GET", "/v2/nothing-here", expect=404)
        assert _limits(unknown)[:2] == (200, 198)
        # alpaca-py's calls are counted like any other.
        ex.trading.get_clock()
        assert _limits(ex.api("GET", "/v2/clock"))[:2] == (200, 196)
        other = ex.api("GET", "/v2/clock", headers={"APCA-API-KEY-ID": "another-key"})
        assert _limits(other)[:2] == (200, 199)
        # The Market-data API is another service with its own allowance.
        data = ex.api("GET", "/v2/stocks/quotes/latest?symbols=SPY", expect=200)
        assert _limits(data)[:2] == (200, 199)
        # Without keys nothing is counted (and nothing is served).
        anonymous = ex.http.get(ex.url + "/v2/clock", timeout=5)
        assert anonymous.status_code == 401 and "X-RateLimit-Limit" not in anonymous.headers
        # The admin reset gives every key its whole allowance back.
        ex.admin("POST", "/admin/reset")
        assert _limits(ex.api("GET", "/v2/clock"))[:2] == (200, 199)


def test_the_allowance_comes_back_when_the_minute_is_over() -> None:
    clock = {"monotonic": 1000.0, "wall": 1_800_000_000.0}
    limiter = RateLimiter(2, monotonic=lambda: clock["monotonic"], wall=lambda: clock["wall"])
    assert limiter.take("k").allowed and limiter.take("k").allowed
    clock["monotonic"] += 59.5
    clock["wall"] += 59.5
    refused = limiter.take("k")
    assert not refused.allowed and refused.remaining == 0
    assert refused.reset_epoch == 1_800_000_060  # when the window opened + 60 s, rounded up
    clock["monotonic"] += 0.5
    again = limiter.take("k")
    assert again.allowed and again.remaining == 1


def test_alpaca_py_sees_its_calls_served_and_counted() -> None:
    with running_exchange(rate_limit=200) as ex:
        ex.quote("AAPL", 150.20, 150.30)
        for _ in range(3):
            ex.trading.submit_order(MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                                       time_in_force=TimeInForce.DAY))
        ex.advance(1)  # the admin API is not counted
        assert float(ex.trading.get_open_position("AAPL").qty) == 3
        assert _limits(ex.api("GET", "/v2/account"))[:2] == (200, 195)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_standalone_server_limits_at_200_a_minute_by_default_and_takes_a_flag(tmp_path: Path) -> None:
    default_dir, flagged_dir = tmp_path / "default", tmp_path / "flagged"
    url = service.ensure_running(default_dir, _free_port())
    flagged = service.ensure_running(flagged_dir, _free_port(), extra_args=["--rate-limit", "2"])
    try:
        assert _limits(requests.get(url + "/v2/clock", headers=AUTH, timeout=5))[:2] == (200, 199)
        statuses = [requests.get(flagged + "/v2/clock", headers=AUTH, timeout=5).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
    finally:
        service.stop(default_dir)
        service.stop(flagged_dir)
