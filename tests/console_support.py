"""Test clients of the operator console on the test database (shared by the console's test files)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from fastapi.testclient import TestClient

from config import PostgresConfig
from console.app import create_app
from console.settings import ConsoleSettings
from db_layer import TradingDB


def console_clients(settings: ConsoleSettings, pg_config: PostgresConfig) -> Iterator[Callable[..., TestClient]]:
    """Yield a factory of test clients of consoles built with ``create_app`` on ``pg_config``
    (options: ``broker``, and any ``ConsoleSettings`` field); every client is closed afterwards."""
    opened: list[TestClient] = []

    def factory(broker: Any = None, **changes: Any) -> TestClient:
        app = create_app(dataclasses.replace(settings, **changes), broker=broker,
                         make_db=lambda: TradingDB(test_mode=True, config=pg_config, application_name="console"))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)
