"""Shared test set-up: one throwaway PostgreSQL per test session, a clean database per test.

The server comes from testing.postgresql (started as the ``postgres`` user when the tests run
as root) unless ``TEST_DATABASE_URL`` names one. Each test starts from empty tables: the
schema is created once and every table is truncated before each test, which costs
milliseconds instead of a new cluster.

The process environment is scrubbed of the variables the programs read, and ``.env`` is not
loaded, so a developer's real keys or database can never leak into a test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

import config
from config import PostgresConfig, parse_database_url
from db_layer import TradingDB
from trading import schema

_SCRUBBED = (
    "DATABASE_URL", "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD",
    "ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALPACA_PAPER", "ALPACA_BASE_URL", "ALPACA_DATA_URL",
    "ALPACA_LIVE_CONFIRM", "LOG_LEVEL", "DECISION_SCHEMA", "NOTIFY_URLS", "LOG_FORMAT",
    "CONSOLE_HOST", "CONSOLE_PORT", "CONSOLE_TOKEN", "CONSOLE_OPERATOR",
)
for _name in _SCRUBBED:
    os.environ.pop(_name, None)
config._dotenv_loaded = True  # never read the developer's .env during tests


@pytest.fixture(scope="session")
def pg_config() -> Iterator[PostgresConfig]:
    """Where the session's PostgreSQL is; its schema is created once."""
    url = os.environ.get("TEST_DATABASE_URL")
    server = None
    if url:
        cfg = parse_database_url(url, "TEST_DATABASE_URL")
    else:
        from tests.pg_server import RootSafePostgresql

        server = RootSafePostgresql()
        cfg = parse_database_url(server.url(), "TEST_DATABASE_URL")
        os.environ["TEST_DATABASE_URL"] = server.url()
    with TradingDB(test_mode=True, config=cfg) as db:
        db.create_schema()
    try:
        yield cfg
    finally:
        if server is not None:
            server.stop()
            os.environ.pop("TEST_DATABASE_URL", None)


def truncate_all(db: TradingDB) -> None:
    """Empty every table of the contract and restart the ids."""
    names = ", ".join(table.name for table in schema.TABLES)
    db.execute_update("SET lock_timeout = '5s'")
    db.execute_update(f"TRUNCATE {names} RESTART IDENTITY")


@pytest.fixture
def db(pg_config: PostgresConfig) -> Iterator[TradingDB]:
    """A connected ``TradingDB`` on empty tables."""
    database = TradingDB(test_mode=True, config=pg_config)
    database.connect()
    truncate_all(database)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def make_db(pg_config: PostgresConfig) -> Iterator[Callable[[], TradingDB]]:
    """A factory of extra connections to the same database (closed after the test)."""
    opened: list[TradingDB] = []

    def factory() -> TradingDB:
        database = TradingDB(test_mode=True, config=pg_config)
        database.connect()
        opened.append(database)
        return database

    yield factory
    for database in opened:
        database.close()


# --------------------------------------------------------------------------- the paper exchange


@pytest.fixture(scope="session")
def exchange_server():
    """One in-process paper exchange for the session: simulated clock, no random walk (tests set
    every quote), reset before each test."""
    from paper_exchange import PaperExchange
    from paper_exchange.ratelimit import UNTHROTTLED_REQUESTS_PER_MINUTE
    from paper_exchange.server import start_server
    from tests.factories import FRIDAY_0945

    handle = start_server(exchange=PaperExchange(seed=7, simulated_clock=True, start_time=FRIDAY_0945,
                                                 price_simulation=False),
                          rate_limit=UNTHROTTLED_REQUESTS_PER_MINUTE)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def exchange(exchange_server):
    """The exchange's admin API on a fresh book at Friday 2026-11-20 09:45 ET."""
    from tests.factories import FRIDAY_0945, ExchangeAdmin

    admin = ExchangeAdmin(exchange_server.url)
    admin.reset()
    admin.clock(FRIDAY_0945)
    admin.reset_stats()
    return admin


@pytest.fixture
def broker(exchange):
    """The real alpaca-py clients, through the project's wrapper, talking to the paper exchange."""
    from alpaca_client import AlpacaBroker

    return AlpacaBroker(base_url=exchange.url, data_url=exchange.url, timeout=3)
