"""The console's endpoints (``/api/...``). Each reads through ``console.read_model`` or writes
through ``console.writes`` on one pooled connection."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI

from console import read_model
from console.app import BrokerSource, answer
from console.settings import ConsoleSettings


def add_routes(app: FastAPI, database: Callable[..., Any], settings: ConsoleSettings, brokers: BrokerSource) -> None:
    """Register every endpoint on ``app``."""
    db_dependency = Depends(database)

    @app.get("/api/portfolio", tags=["portfolio"], summary="Cash, positions value, equity, today's P&L")
    def get_portfolio(db: Any = db_dependency) -> Any:
        return answer(read_model.portfolio(db))

    @app.get("/api/positions", tags=["positions"], summary="Open positions with stop, target and protection")
    def get_positions(db: Any = db_dependency) -> Any:
        items = read_model.positions(db)
        return answer({"positions": items, "count": len(items)})

    @app.get("/api/health", tags=["health"], summary="The health check's results")
    def get_health() -> Any:
        return answer(health(settings, brokers))


def health(settings: ConsoleSettings, brokers: BrokerSource) -> dict[str, Any]:
    """``scripts/health_check.py``'s checks, as JSON (the broker's checks are skipped without a broker)."""
    from db_layer import TradingDB
    from scripts.health_check import overall, run_checks
    from trading.errors import ConfigurationError

    broker = brokers.get()

    def connect_broker() -> Any:
        if broker is None:
            raise ConfigurationError(brokers.problem or "no broker")
        return broker

    checks = run_checks(settings.trading, connect_db=lambda: TradingDB(
        test_mode=settings.trading.test_mode, config=settings.trading.postgres, application_name="console:health"),
        connect_broker=connect_broker, wall_now=dt.datetime.now(dt.UTC))
    code = overall(checks)
    return {"status": {0: "ok", 1: "warning"}.get(code, "critical"), "exit_code": code,
            "broker": None if broker is not None else brokers.problem,
            "checks": [{"name": check.name, "status": check.status, "message": check.message} for check in checks]}
