"""Helpers for the paper-exchange tests: a running exchange plus alpaca-py clients.

Tests drive the exchange only through alpaca-py and the admin HTTP API (with requests).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.trading.client import TradingClient

from paper_exchange import PaperExchange, start_server
from paper_exchange.ratelimit import UNTHROTTLED_REQUESTS_PER_MINUTE

KEY, SECRET = "test-key", "test-secret"
AUTH = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
# A Friday morning in New York (09:45 ET) before Thanksgiving week.
FRIDAY_MORNING = "2026-11-20T14:45:00Z"


@dataclass
class Exchange:
    """A running exchange with clients pointed at it."""

    url: str
    trading: TradingClient
    data: StockHistoricalDataClient
    http: requests.Session = field(default_factory=requests.Session)

    def admin(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        """Call the admin API and return the decoded JSON (asserting the status)."""
        response = self.http.request(method, self.url + path, json=body, timeout=10)
        assert response.status_code == expect, (response.status_code, response.text)
        return response.json() if response.content else None

    def api(self, method: str, path: str, expect: int | None = None, **kwargs: Any) -> requests.Response:
        """A raw Trading/Market-data API call with valid keys."""
        headers = dict(AUTH)
        headers.update(kwargs.pop("headers", {}))
        response = self.http.request(method, self.url + path, headers=headers, timeout=10, **kwargs)
        if expect is not None:
            assert response.status_code == expect, (response.status_code, response.text)
        return response

    def quote(self, symbol: str, bid: Any, ask: Any) -> None:
        """Set one quote through ``POST /admin/quotes``."""
        self.admin("POST", "/admin/quotes", {symbol: {"bid": bid, "ask": ask}})

    def advance(self, seconds: float) -> dict[str, Any]:
        """Move the simulated clock forward."""
        return self.admin("POST", "/admin/clock", {"advance_seconds": seconds})

    def step(self) -> dict[str, Any]:
        """One matching pass without moving the simulated clock: pending orders are
        acknowledged (and may fill), pending cancels and replaces complete."""
        return self.advance(0)

    def set_time(self, now: str) -> dict[str, Any]:
        """Move the simulated clock to ``now``."""
        return self.admin("POST", "/admin/clock", {"now": now})


@contextmanager
def running_exchange(rate_limit: int = UNTHROTTLED_REQUESTS_PER_MINUTE, **options: Any) -> Iterator[Exchange]:
    """Start an exchange (simulated clock on a Friday morning, no price simulation, unless
    told otherwise) and yield it with alpaca-py clients; stop it afterwards. The rate limit is
    raised so tests are not throttled (``rate_limit=200`` is Alpaca's)."""
    settings: dict[str, Any] = {
        "seed": 7,
        "simulated_clock": True,
        "start_time": FRIDAY_MORNING,
        "price_simulation": False,
    }
    settings.update(options)
    handle = start_server(exchange=PaperExchange(**settings), rate_limit=rate_limit)
    exchange = Exchange(
        url=handle.url,
        trading=TradingClient(KEY, SECRET, paper=True, url_override=handle.url),
        data=StockHistoricalDataClient(KEY, SECRET, url_override=handle.url),
    )
    try:
        yield exchange
    finally:
        exchange.http.close()
        exchange.trading._session.close()
        exchange.data._session.close()
        handle.stop()
