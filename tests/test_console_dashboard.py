"""The console's dashboard as served (console/dashboard.py): the page, its vendored files, the
market clock it refreshes by, and which of its requests need the token. The page itself in a
real browser is tests/test_console_browser.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from config import PostgresConfig, Secret
from console.app import BrokerSource
from console.dashboard import STATIC_DIR, is_public, market, regular_session_open
from console.settings import ConsoleSettings
from tests.console_support import console_clients
from tests.factories import make_settings

TOKEN = "dashboard-test-token-0123456789"


@pytest.fixture
def make_client(pg_config: PostgresConfig) -> Iterator[Callable[..., TestClient]]:
    settings = ConsoleSettings(trading=dataclasses.replace(make_settings(), postgres=pg_config), token=Secret(TOKEN))
    yield from console_clients(settings, pg_config)


def test_the_page_is_served_at_the_root_with_its_script_styles_and_the_vendored_chart_library(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources == ["/static/dashboard.css", "/static/vendor/chart.umd.min.js", "/static/dashboard.js"]
    for source in sources:
        assert client.get(source).status_code == 200, source
    assert client.get("/static/vendor/chart.umd.min.js").text.startswith("/*!\n * Chart.js v4.")
    assert client.get("/static/nothing.js").status_code == 404
    assert "/" not in client.get("/openapi.json").json()["paths"]  # the page is not part of the API


def test_nothing_the_page_loads_comes_from_another_host() -> None:
    for path in (STATIC_DIR / "index.html", STATIC_DIR / "dashboard.js", STATIC_DIR / "dashboard.css"):
        text = path.read_text()
        assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text), path
        assert "fetch(\"http" not in text and "import(" not in text, path
    license_text = (STATIC_DIR / "vendor" / "LICENSE.md").read_text()
    assert "MIT" in license_text or "Permission is hereby granted" in license_text
    assert "4.6.1" in (STATIC_DIR / "vendor" / "README.md").read_text()


def test_beyond_localhost_the_page_loads_without_the_token_but_every_api_call_needs_it(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(host="192.0.2.10")
    assert client.get("/").status_code == 200
    assert client.get("/static/dashboard.js").status_code == 200
    assert client.get("/api/market").status_code == 401
    assert client.get("/api/market", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/static/../api/portfolio").status_code == 401  # normalised to /api/portfolio first
    assert (is_public("/"), is_public("/static/x.js"), is_public("/staticx"), is_public("/api/positions")) == \
        (True, True, False, False)


def test_the_market_clock_comes_from_the_broker(exchange: Any, broker: Any,
                                                make_client: Callable[..., TestClient]) -> None:
    body = make_client(broker=broker).get("/api/market").json()
    assert (body["is_open"], body["source"], body["note"]) == (True, "broker", None)
    assert body["timestamp"].startswith("2026-11-20T14:45:00")  # the exchange's Friday 09:45 ET
    exchange.clock("2026-11-20T21:30:00Z")
    later = make_client(broker=broker).get("/api/market").json()
    assert later["is_open"] is False and later["next_open"].startswith("2026-11-23T14:30:00")


def test_without_a_broker_the_regular_session_is_assumed_and_the_answer_says_so() -> None:
    no_broker = BrokerSource()
    friday_open = dt.datetime(2026, 11, 20, 14, 30, tzinfo=dt.UTC)  # 09:30 ET
    body = market(no_broker, friday_open)
    assert (body["is_open"], body["source"]) == (True, "regular_session")
    assert body["note"].startswith("the console was started without a broker")
    assert regular_session_open(friday_open - dt.timedelta(seconds=1)) is False  # 09:29:59
    assert regular_session_open(dt.datetime(2026, 11, 20, 21, 0, tzinfo=dt.UTC)) is False  # 16:00 ET
    assert regular_session_open(dt.datetime(2026, 11, 21, 15, 0, tzinfo=dt.UTC)) is False  # Saturday
    assert regular_session_open(dt.datetime(2026, 7, 6, 13, 30, tzinfo=dt.UTC)) is True  # 09:30 EDT


def test_when_the_broker_cannot_be_reached_the_market_falls_back_to_the_regular_session() -> None:
    from trading.errors import TransientError

    def unreachable() -> Any:
        raise TransientError("connection refused")

    body = market(BrokerSource(connect=unreachable), dt.datetime(2026, 11, 22, 15, 0, tzinfo=dt.UTC))
    assert (body["is_open"], body["source"]) == (False, "regular_session")
    assert "connection refused" in body["note"]

