"""The console's endpoints (``/api/...``). Each reads through ``console.read_model`` (or writes
through ``console.writes``) on one pooled connection; query parameters are validated here, so
bad input is a 422 that names the parameter, never a database error."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from console import read_model, writes
from console.app import WRITE, ApiError, BrokerSource, answer, raw_answer
from console.read_model import OrderFilter, Page
from console.settings import ConsoleSettings
from trading import lifecycle

SYMBOL = re.compile(r"^[A-Z][A-Z0-9.]{0,9}$")
MAX_ID = 2**63 - 1
PROGRAMS = ("order_executor", "order_monitor", "position_monitor", "trade_stream", "eod_report")
DECISION_OUTCOMES = ("accepted", "refused", "deferred", "waiting", "not approved", "executed")
ACTIONS = ("NEW_TRADE", "CANCEL", "AMEND", "CLOSE", "NO_ACTION")

Id = Annotated[int, Path(ge=1, le=MAX_ID, description="a row id")]
Limit = Annotated[int, Query(ge=1, le=500, description="rows per page (at most 500)")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="rows to skip")]


def words(text: str | None, allowed: tuple[str, ...] | frozenset[str], name: str, *,
          upper: bool = False) -> tuple[str, ...]:
    """A comma-separated filter, each item checked against ``allowed``."""
    if text is None or not text.strip():
        return ()
    items = tuple(item.strip().upper() if upper else item.strip().lower() for item in text.split(",") if item.strip())
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise ApiError(422, f"{name}: unknown value(s) {', '.join(unknown)}; use one of {', '.join(sorted(allowed))}")
    return items


def symbol(text: str | None, name: str = "symbol") -> str | None:
    """An upper-case ticker, or a 422."""
    if text is None or not text.strip():
        return None
    value = text.strip().upper()
    if not SYMBOL.match(value):
        raise ApiError(422, f"{name}: {text!r} is not a ticker symbol (letters, digits and '.', up to 10)")
    return value


def moment(text: str | None, name: str, *, end: bool = False) -> dt.datetime | None:
    """A date (a US/Eastern day: its start, or for ``end`` the next day's start) or an ISO time
    with its zone; a time without a zone is refused rather than guessed."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            start, stop = read_model.day_bounds(day)
            return stop if end else start
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(422, f"{name}: {text!r} is not a date (2026-11-20) or an ISO time with a zone "
                            "(2026-11-20T14:30:00Z)") from None
    if parsed.tzinfo is None:
        raise ApiError(422, f"{name}: {text!r} has no time zone; add Z or an offset such as -05:00")
    return parsed.astimezone(dt.UTC)


def time_range(start: str | None, end: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    lower, upper = moment(start, "from"), moment(end, "to", end=True)
    if lower is not None and upper is not None and lower >= upper:
        raise ApiError(422, f"from ({start}) must be before to ({end})")
    return lower, upper


# --------------------------------------------------------------------------- request bodies

Reason = Annotated[str, Field(min_length=1, max_length=500, description="why: kept in the decision and audit trail")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CloseRequest(Strict):
    """``POST /api/positions/{symbol}/close``."""

    confirm: Literal[True] = Field(description="must be true: the position is sold at the market")
    reason: Reason = "closed from the operator console"
    trade_id: int | None = Field(default=None, ge=1, le=MAX_ID,
                                 description="only this trade of the symbol (default: every open trade of it)")


class TriggerRequest(Strict):
    """``POST /api/triggers``: set a stop, target or trailing percent of an open position."""

    trade_id: int = Field(ge=1, le=MAX_ID)
    kind: Literal["stop", "target", "trailing"]
    level: Decimal = Field(gt=0, le=Decimal(1_000_000), max_digits=18, decimal_places=6,
                           description="a price (stop, target) or a percent below the high (trailing)")
    reason: Reason = "changed from the operator console"


class ModeRequest(Strict):
    """``PUT /api/trading/mode``."""

    mode: Literal["ACTIVE", "REDUCE_ONLY", "HALTED", "FLATTEN"]
    confirm: Literal[True] = Field(description="must be true: the programs obey the new mode at their next run")
    reason: Reason
    scope: str = Field(default="ACCOUNT", max_length=12, description="ACCOUNT or a ticker symbol")
    broker_mode: Literal["paper", "live"] | None = Field(
        default=None, description="only accepted as it already is: live is chosen by the environment alone")


def _clean(text: str) -> str:
    """A reason as one printable line."""
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    if not cleaned:
        raise ApiError(422, "reason: must not be blank")
    return cleaned


def parse_trigger_id(text: str) -> tuple[int, str]:
    """``<trade id>:<stop|target|trailing>``."""
    trade, _, kind = text.partition(":")
    if not trade.isdigit() or kind not in writes.TRIGGER_KEYS or not 1 <= int(trade) <= MAX_ID:
        raise ApiError(422, f"trigger id {text!r}: expected <trade id>:stop, :target or :trailing (see GET "
                            "/api/triggers)")
    return int(trade), kind


def add_routes(app: FastAPI, database: Callable[..., Any], settings: ConsoleSettings, brokers: BrokerSource) -> None:
    """Register every endpoint on ``app``."""
    db_dependency = Depends(database)

    # ------------------------------------------------------------------ portfolio

    @app.get("/api/portfolio", tags=["portfolio"], summary="Cash, positions value, equity, today's P&L")
    def get_portfolio(db: Any = db_dependency) -> Any:
        return answer(read_model.portfolio(db))

    @app.get("/api/portfolio/history", tags=["portfolio"],
             summary="The equity curve (portfolio snapshots) with the SPY benchmark scaled to its start")
    def get_history(start: Annotated[str | None, Query(alias="from", description="date or ISO time")] = None,
                    end: Annotated[str | None, Query(alias="to", description="date or ISO time")] = None,
                    db: Any = db_dependency) -> Any:
        lower, upper = time_range(start, end)
        return answer(read_model.history(db, brokers.get(), brokers.problem, lower, upper))

    @app.get("/api/portfolio/pnl", tags=["portfolio"], summary="Realised and unrealised P&L, by day and by exit reason")
    def get_pnl(db: Any = db_dependency) -> Any:
        return answer(read_model.pnl(db))

    # ------------------------------------------------------------------ positions

    @app.get("/api/positions", tags=["positions"], summary="Open positions with stop, target and protection")
    def get_positions(db: Any = db_dependency) -> Any:
        items, count = read_model.positions_json(db)
        return raw_answer(f'{{"positions":{items},"count":{count}}}')

    @app.post("/api/positions/{symbol_path}/close", tags=["positions"], status_code=202, dependencies=WRITE,
              summary="Close a position: recorded as an approved CLOSE decision for the order monitor's next run")
    def close_position(symbol_path: Annotated[str, Path(alias="symbol_path", max_length=12)], body: CloseRequest,
                       db: Any = db_dependency) -> Any:
        ticker = symbol(symbol_path)
        assert ticker is not None
        return answer(writes.request_close(db, settings, ticker, body.trade_id, _clean(body.reason)), 202)

    # ------------------------------------------------------------------ orders

    @app.get("/api/orders", tags=["orders"], summary="Orders, newest first, filtered and paged")
    def get_orders(status: Annotated[str | None, Query(description="comma-separated: filled,canceled,...")] = None,
                   type: Annotated[str | None, Query(description="ENTRY, STOP_LOSS, TAKE_PROFIT, EXIT")] = None,
                   symbol_: Annotated[str | None, Query(alias="symbol")] = None,
                   trade: Annotated[int | None, Query(ge=1, le=MAX_ID, description="trade id")] = None,
                   start: Annotated[str | None, Query(alias="from", description="date or ISO time")] = None,
                   end: Annotated[str | None, Query(alias="to", description="date or ISO time")] = None,
                   limit: Limit = 100, offset: Offset = 0, db: Any = db_dependency) -> Any:
        lower, upper = time_range(start, end)
        where = OrderFilter(statuses=words(status, lifecycle.ORDER_STATUSES, "status"),
                            types=words(type, tuple(t.value for t in lifecycle.OrderType), "type", upper=True),
                            symbol=symbol(symbol_), trade_id=trade, start=lower, end=upper)
        return raw_answer(read_model.orders_json(db, where, Page(limit, offset)))

    @app.get("/api/orders/{order_id}", tags=["orders"], summary="One order with its audit events")
    def get_order(order_id: Id, db: Any = db_dependency) -> Any:
        found = read_model.order(db, order_id)
        if found is None:
            raise ApiError(404, f"order {order_id} does not exist")
        return answer(found)

    # ------------------------------------------------------------------ trades

    @app.get("/api/trades", tags=["trades"], summary="Trades, newest first, with their P&L")
    def get_trades(status: Annotated[str | None, Query(description="ORDERED, POSITION, CLOSED, CANCELLED")] = None,
                   symbol_: Annotated[str | None, Query(alias="symbol")] = None,
                   limit: Limit = 100, offset: Offset = 0, db: Any = db_dependency) -> Any:
        statuses = words(status, lifecycle.TRADE_STATUSES, "status", upper=True)
        return answer(read_model.trades(db, statuses, symbol(symbol_), Page(limit, offset)))

    @app.get("/api/trades/{trade_id}", tags=["trades"],
             summary="One trade's story: decision, orders, fills, audit events, P&L")
    def get_trade(trade_id: Id, db: Any = db_dependency) -> Any:
        found = read_model.trade(db, trade_id)
        if found is None:
            raise ApiError(404, f"trade {trade_id} does not exist")
        return answer(found)

    # ------------------------------------------------------------------ decisions and triggers

    @app.get("/api/decisions", tags=["decisions"], summary="Decisions with their outcome and refusal reason")
    def get_decisions(outcome: Annotated[str | None, Query(description="accepted, refused, deferred, waiting, "
                                                                        "not approved, executed")] = None,
                      action: Annotated[str | None, Query(description="NEW_TRADE, CANCEL, AMEND, CLOSE, "
                                                                       "NO_ACTION")] = None,
                      ticker: Annotated[str | None, Query()] = None,
                      limit: Limit = 100, offset: Offset = 0, db: Any = db_dependency) -> Any:
        return answer(read_model.decisions(db, words(outcome, DECISION_OUTCOMES, "outcome"),
                                           words(action, ACTIONS, "action", upper=True), symbol(ticker, "ticker"),
                                           Page(limit, offset)))

    @app.get("/api/triggers", tags=["triggers"], summary="Stop, target and trailing levels of open trades")
    def get_triggers(db: Any = db_dependency) -> Any:
        return answer(read_model.triggers(db))

    @app.post("/api/triggers", tags=["triggers"], status_code=202, dependencies=WRITE,
              summary="Set a stop, target or trailing percent: an approved levels-only AMEND decision")
    def set_trigger(body: TriggerRequest, db: Any = db_dependency) -> Any:
        return answer(writes.request_level(db, settings, body.trade_id, body.kind, body.level, _clean(body.reason)),
                      202)

    @app.delete("/api/triggers/{trigger_id}", tags=["triggers"], status_code=202, dependencies=WRITE,
                summary="Remove a target or trailing percent (a stop is never removed)")
    def remove_trigger(trigger_id: Annotated[str, Path(max_length=40)],
                       reason: Annotated[str, Query(max_length=500)] = "removed from the operator console",
                       db: Any = db_dependency) -> Any:
        trade_id, kind = parse_trigger_id(trigger_id)
        return answer(writes.request_level(db, settings, trade_id, kind, None, _clean(reason)), 202)

    # ------------------------------------------------------------------ state, runs, health

    @app.get("/api/trading/mode", tags=["trading"], summary="The trading state and the broker mode")
    def get_mode(db: Any = db_dependency) -> Any:
        return answer(read_model.trading_mode(db, settings.trading))

    @app.put("/api/trading/mode", tags=["trading"], dependencies=WRITE,
             summary="Switch the trading state (confirmed; audited); never enables live trading")
    def put_mode(body: ModeRequest, db: Any = db_dependency) -> Any:
        scope = "ACCOUNT" if body.scope.strip().upper() == "ACCOUNT" else symbol(body.scope, "scope")
        assert scope is not None
        return answer(writes.set_mode(db, settings, body.mode, scope, _clean(body.reason), body.broker_mode))

    @app.get("/api/runs", tags=["health"], summary="Recent program runs and each program's last run")
    def get_runs(program: Annotated[str | None, Query(description=", ".join(PROGRAMS))] = None,
                 limit: Limit = 50, db: Any = db_dependency) -> Any:
        chosen = words(program, PROGRAMS, "program")
        if len(chosen) > 1:
            raise ApiError(422, "program: name one program")
        return answer(read_model.runs(db, chosen[0] if chosen else None, limit))

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

