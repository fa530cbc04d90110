"""The operator console's API (console/), through FastAPI's test client on the real PostgreSQL.

Each scenario seeds the book with the factories, asks the API as the dashboard (or an operator's
script) would, and checks the answer to the cent: money as exact strings, times with their zone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from config import PostgresConfig, Secret
from console.app import create_app
from console.settings import ConsoleSettings
from db_layer import TradingDB
from tests.factories import make_settings, seed_console_book

TOKEN = "console-test-token-0123456789"


@pytest.fixture
def console_settings(pg_config: PostgresConfig) -> ConsoleSettings:
    return ConsoleSettings(trading=dataclasses.replace(make_settings(), postgres=pg_config), token=Secret(TOKEN))


@pytest.fixture
def make_client(console_settings: ConsoleSettings, pg_config: PostgresConfig) -> Iterator[Callable[..., TestClient]]:
    """A test client of a console built with ``create_app`` (options: ``broker``, settings fields)."""
    opened: list[TestClient] = []

    def factory(broker: Any = None, **changes: Any) -> TestClient:
        settings = dataclasses.replace(console_settings, **changes)
        app = create_app(settings, broker=broker,
                         make_db=lambda: TradingDB(test_mode=True, config=pg_config, application_name="console"))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


# --------------------------------------------------------------------------- portfolio and positions


def test_the_portfolio_shows_cash_equity_and_todays_pnl_against_the_previous_close_to_the_cent(
        db: TradingDB, client: TestClient) -> None:
    seed_console_book(db)
    body = client.get("/api/portfolio").json()
    assert body["as_of"] == "2026-11-20T20:00:00+00:00"
    assert (body["cash"], body["positions_value"], body["equity"]) == ("96580.45", "3543.00", "100123.45")
    assert (body["today_pnl"], body["today_pnl_pct"]) == ("123.45", "0.12")
    assert body["today_base"] == {"kind": "previous_close", "equity": "100000.00",
                                  "taken_at": "2026-11-19T21:00:00+00:00"}
    assert body["realized_pnl_today"] == "25.00"
    pie = {item["symbol"]: (item["market_value"], item["weight_pct"]) for item in body["allocation"]}
    assert pie == {"AAPL": ("1552.50", "1.55"), "MSFT": ("1990.50", "1.99"), "CASH": ("96580.45", "96.46")}


def test_the_portfolio_of_an_empty_book_says_no_snapshot_was_taken_yet(client: TestClient, db: TradingDB) -> None:
    body = client.get("/api/portfolio").json()
    assert body["equity"] is None and body["allocation"] == []
    assert "no portfolio snapshot yet" in body["note"]


def test_positions_list_live_values_levels_and_whether_a_stop_protects_every_share(
        db: TradingDB, client: TestClient) -> None:
    ids = seed_console_book(db)
    body = client.get("/api/positions").json()
    assert body["count"] == 2
    aapl, msft = body["positions"]
    assert (aapl["symbol"], aapl["trade_id"], aapl["qty"], aapl["entry_price"], aapl["current_price"]) == \
        ("AAPL", ids["AAPL"], "10", "150", "155.25")
    assert (aapl["market_value"], aapl["unrealized_pnl"], aapl["unrealized_pnl_pct"]) == ("1552.50", "52.50", "3.50")
    assert aapl["stop"] == {"planned": "145", "held": "145", "held_qty": "10"}
    assert aapl["target"] == {"planned": "160", "held": "160"}
    assert aapl["protection"] == "protected"
    assert (msft["symbol"], msft["unrealized_pnl"], msft["protection"]) == ("MSFT", "-9.50", "unprotected")
    assert msft["stop"]["held"] is None and msft["target"]["planned"] is None


# --------------------------------------------------------------------------- health


def test_health_without_a_broker_reports_the_database_checks_and_says_the_broker_is_missing(
        db: TradingDB, client: TestClient) -> None:
    seed_console_book(db)
    body = client.get("/api/health").json()
    checks = {check["name"]: check for check in body["checks"]}
    assert checks["database"]["status"] == "ok"
    assert checks["protection"]["status"] == "critical" and "MSFT" in checks["protection"]["message"]
    assert body["status"] == "critical" and body["exit_code"] == 2
    assert "without a broker" in body["broker"]


def test_health_with_the_paper_exchange_checks_the_broker_too(db: TradingDB, broker: Any,
                                                              make_client: Callable[..., TestClient]) -> None:
    body = make_client(broker=broker).get("/api/health").json()
    checks = {check["name"]: check for check in body["checks"]}
    assert checks["broker"]["status"] == "ok" and body["broker"] is None
    assert checks["short_selling"]["status"] != "skipped"


def test_the_openapi_page_is_served_as_fastapi_does(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/portfolio", "/api/positions", "/api/health"} <= set(paths)


# --------------------------------------------------------------------------- settings and start


def test_listening_beyond_localhost_without_a_token_is_refused_at_start() -> None:
    from console.settings import load_console_settings
    from trading.errors import ConfigurationError

    trading = make_settings()
    with pytest.raises(ConfigurationError, match="CONSOLE_TOKEN"):
        load_console_settings(env={"CONSOLE_HOST": "192.0.2.10"}, trading=trading)
    with pytest.raises(ConfigurationError, match="at least 16"):
        load_console_settings(env={"CONSOLE_TOKEN": "short"}, trading=trading)
    settings = load_console_settings(env={}, trading=trading)
    assert (settings.host, settings.port, settings.url, bool(settings.token)) == \
        ("127.0.0.1", 8080, "http://127.0.0.1:8080/", False)


def test_python_m_console_help_says_how_to_start_it_and_which_variables_it_reads() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "console", "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0
    assert "CONSOLE_TOKEN" in done.stdout and "--database" in done.stdout and "docs/console.md" in done.stdout
