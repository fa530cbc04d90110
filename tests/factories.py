"""Test factories: decisions, settings, and the paper exchange's admin API.

Factories take keyword overrides of sensible defaults, so each test states only what matters
to its scenario.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import requests

from config import Settings, load_settings
from db_layer import TradingDB
from trading.market_time import EASTERN

#: Friday 2026-11-20, 09:45 ET: the executor's time on a normal trading day.
FRIDAY_0945 = "2026-11-20T14:45:00Z"


def eastern(day: str, hhmm: str) -> str:
    """An ISO UTC timestamp for a US/Eastern wall-clock time (``eastern("2026-11-20", "15:50")``)."""
    local = EASTERN.localize(dt.datetime.fromisoformat(f"{day}T{hhmm}:00"))
    return local.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def make_settings(**env: str | int) -> Settings:
    """Test-mode settings with generous risk limits unless a test overrides one."""
    base: dict[str, str] = {
        "MAX_POSITION_NOTIONAL": "50000", "MAX_POSITION_PCT_OF_EQUITY": "50", "MAX_TOTAL_EXPOSURE_PCT": "400",
        "MAX_OPEN_TRADES": "1000", "MAX_ORDERS_PER_DAY": "10000", "DAILY_LOSS_LIMIT": "100000",
        "RISK_PER_TRADE": "500",
        # The plans sit at 150 while AAPL rests at 228.50 unless a test sets a quote: the drift
        # check is on (at its widest) but only scenarios about it narrow it.
        "MAX_ENTRY_DRIFT_PCT": "100",
    }
    base.update({key: str(value) for key, value in env.items()})
    return load_settings(test_mode=True, env=base)


def plan(**overrides: Any) -> dict[str, Any]:
    """A SWING trade plan (entry 150, stop 145, target 160, 10 shares) with overrides."""
    decision: dict[str, Any] = {"planned_entry": 150, "planned_sl": 145, "planned_tp": 160, "trade_style": "SWING",
                                "planned_qty": 10}
    decision.update(overrides)
    return {k: v for k, v in decision.items() if v is not None}


def add_decision(db: TradingDB, ticker: str | None = "AAPL", action: str = "NEW_TRADE", *, approve: bool = True,
                 decision: Any = "default", trade_id: int | None = None, order_id: str | None = None,
                 created_at: dt.datetime | None = None, **plan_overrides: Any) -> int:
    """Insert an analysis_decision row; ``decision`` may be a dict, a raw JSON text or None."""
    if decision == "default":
        decision = plan(**plan_overrides) if action in ("NEW_TRADE", "AMEND") else {}
    if isinstance(decision, str):
        # raw text stored as a JSON string value, as a double-encoding upstream would do
        decision_sql = json.dumps(decision)
    else:
        decision_sql = None if decision is None else json.dumps(decision, default=str)
    row = db.execute_one(
        'INSERT INTO analysis_decision (ticker, primary_action, decision, "Approve", existing_trade_journal_id, '
        "existing_order_id, created_at) VALUES (%s, %s, %s::jsonb, %s, %s, %s, coalesce(%s, now())) RETURNING id",
        (ticker, action, decision_sql, approve, trade_id, order_id, created_at))
    assert row is not None
    return int(row["id"])


def snapshot(db: TradingDB, tables: tuple[str, ...] = ("analysis_decision", "trade_journal", "order_execution",
                                                        "position_tracking", "audit_event")) -> dict[str, list]:
    """Every row of the given tables, for "a second run changes nothing" checks."""
    return {table: db.query(table, order_by="id") for table in tables}


class ExchangeAdmin:
    """The paper exchange's admin API, as tests and acceptance checks use it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.session.post(f"{self.url}{path}", json=body or {}, timeout=10)
        response.raise_for_status()
        return response.json()

    def reset(self, cash: Any = None) -> Any:
        return self._post("/admin/reset", {"cash": str(cash)} if cash is not None else {})

    def quotes(self, **quotes: tuple[Any, Any]) -> Any:
        """``quotes(AAPL=(150.20, 150.30))`` sets bid/ask and matches resting orders at once."""
        return self._post("/admin/quotes", {s: {"bid": str(b), "ask": str(a)} for s, (b, a) in quotes.items()})

    def clock(self, now: str | None = None, *, advance_seconds: float | None = None) -> Any:
        return self._post("/admin/clock", {"now": now} if now else {"advance_seconds": advance_seconds})

    def step(self) -> Any:
        """One matching pass without moving the simulated clock: new orders are acknowledged
        (and may fill), requested cancels and replaces complete (legs one pass after their parent)."""
        return self.clock(advance_seconds=0)

    def sleeper(self) -> Any:
        """A ``sleep`` for the programs that passes the simulated clock instead of real time, so a
        cancel the program waits for completes at the exchange as it would at Alpaca."""
        def sleep(seconds: float) -> None:
            self.clock(advance_seconds=seconds)
        return sleep

    def fault(self, **rule: Any) -> Any:
        return self._post("/admin/faults", rule)

    def clear_faults(self) -> None:
        self.session.delete(f"{self.url}/admin/faults", timeout=10).raise_for_status()

    def symbols(self, **symbols: dict[str, Any]) -> Any:
        return self._post("/admin/symbols", symbols)

    def cash(self, amount: Any) -> Any:
        return self._post("/admin/account", {"cash": str(amount)})

    def configure(self, **options: Any) -> Any:
        return self._post("/admin/config", options)

    def stats(self) -> dict[str, Any]:
        return self.session.get(f"{self.url}/admin/stats", timeout=10).json()

    def reset_stats(self) -> None:
        self.session.delete(f"{self.url}/admin/stats", timeout=10).raise_for_status()

    def configure_account(self, **changes: Any) -> dict[str, Any]:
        """``PATCH /v2/account/configurations`` as an operator would (``no_shorting=True``)."""
        response = self.session.patch(f"{self.url}/v2/account/configurations", json=changes, timeout=10,
                                      headers={"APCA-API-KEY-ID": "operator", "APCA-API-SECRET-KEY": "operator"})
        response.raise_for_status()
        return response.json()

    def state(self) -> dict[str, Any]:
        return self.session.get(f"{self.url}/admin/state", timeout=10).json()

    def orders(self) -> list[dict[str, Any]]:
        return self.state()["orders"]

    def positions(self) -> dict[str, Decimal]:
        return {p["symbol"]: Decimal(p["qty"]) for p in self.state()["positions"]}
