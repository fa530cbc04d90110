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


# --------------------------------------------------------------------------- the console's book


def add_trade(db: TradingDB, symbol: str = "AAPL", status: str = "POSITION", **values: Any) -> int:
    """A trade_journal row (SWING, entry 150, stop 145, target 160, 10 shares unless overridden)."""
    row: dict[str, Any] = {"symbol": symbol, "status": status, "trade_style": "SWING", "planned_entry": Decimal("150"),
                           "planned_sl": Decimal("145"), "planned_tp": Decimal("160"), "planned_qty": Decimal("10")}
    if status in ("POSITION", "CLOSED"):
        row.update({"actual_entry": Decimal("150"), "actual_qty": Decimal("10"),
                    "entry_date": dt.datetime(2026, 11, 19, 15, 0, tzinfo=dt.UTC)})
    row.update(values)
    return db.insert("trade_journal", row)


def add_order(db: TradingDB, trade_id: int, order_type: str = "ENTRY", status: str = "filled", **values: Any) -> int:
    """An order_execution row of ``trade_id`` (symbol from the trade; 10 shares unless overridden)."""
    trade = db.get_by_id("trade_journal", trade_id)
    assert trade is not None
    number = db.execute_one("SELECT count(*) AS n FROM order_execution")
    sequence = int(number["n"]) + 1 if number else 1
    row: dict[str, Any] = {"trade_journal_id": trade_id, "symbol": trade["symbol"], "order_type": order_type,
                           "side": "buy" if order_type == "ENTRY" else "sell", "order_status": status,
                           "qty": Decimal("10"), "client_order_id": f"seed-{trade_id}-{order_type.lower()}-{sequence}",
                           "alpaca_order_id": f"seed-order-{trade_id}-{sequence}",
                           "submitted_at": dt.datetime(2026, 11, 19, 14, 45, tzinfo=dt.UTC)}
    if status == "filled":
        row.update({"filled_qty": row["qty"], "filled_avg_price": Decimal("150"),
                    "filled_at": dt.datetime(2026, 11, 19, 15, 0, tzinfo=dt.UTC)})
    row.update(values)
    return db.insert("order_execution", row)


def add_position(db: TradingDB, trade_id: int, current_price: Decimal | str, **values: Any) -> int:
    """A position_tracking row of ``trade_id`` valued at ``current_price`` (exact decimal arithmetic)."""
    trade = db.get_by_id("trade_journal", trade_id)
    assert trade is not None
    qty, entry, price = Decimal(trade["actual_qty"]), Decimal(trade["actual_entry"]), Decimal(current_price)
    cost = qty * entry
    row: dict[str, Any] = {"trade_journal_id": trade_id, "symbol": trade["symbol"], "qty": qty,
                           "avg_entry_price": entry, "cost_basis": cost, "current_price": price,
                           "market_value": qty * price, "unrealized_pnl": qty * price - cost,
                           "unrealized_pnl_pct": ((qty * price - cost) * 100 / cost).quantize(Decimal("0.01")),
                           "last_updated": dt.datetime(2026, 11, 20, 20, 0, tzinfo=dt.UTC)}
    row.update(values)
    return db.insert("position_tracking", row)


def add_snapshot(db: TradingDB, taken_at: str, equity: Decimal | str, cash: Decimal | str, **values: Any) -> int:
    """A portfolio_snapshot row (positions value = equity - cash unless overridden)."""
    row: dict[str, Any] = {"taken_at": dt.datetime.fromisoformat(taken_at.replace("Z", "+00:00")),
                           "equity": Decimal(equity), "cash": Decimal(cash),
                           "positions_value": Decimal(equity) - Decimal(cash), "unrealized_pnl": Decimal("0"),
                           "realized_pnl_today": Decimal("0"), "open_positions": 0}
    row.update(values)
    return db.insert("portfolio_snapshot", row)


def seed_console_book(db: TradingDB) -> dict[str, int]:
    """A small book for the console: AAPL protected (stop and target held), MSFT a day trade whose
    stop is missing, NVDA closed with a profit (+25.00), TSLA closed at its stop (-50.00), their
    fills and accepted decisions, one refused decision (ZZZZ), and equity snapshots of Thursday's
    close and Friday 2026-11-20."""
    aapl = add_trade(db, "AAPL")
    add_order(db, aapl, "ENTRY", "filled", order_class="bracket")
    add_order(db, aapl, "TAKE_PROFIT", "new", limit_price=Decimal("160"))
    add_order(db, aapl, "STOP_LOSS", "held", stop_price=Decimal("145"))
    add_position(db, aapl, "155.25")
    msft = add_trade(db, "MSFT", trade_style="DAYTRADE", planned_entry=Decimal("400"), planned_sl=Decimal("390"),
                     planned_tp=None, planned_qty=Decimal("5"), actual_entry=Decimal("400"), actual_qty=Decimal("5"))
    add_order(db, msft, "ENTRY", "filled", qty=Decimal("5"), filled_qty=Decimal("5"),
              filled_avg_price=Decimal("400"))
    add_position(db, msft, "398.10")
    nvda = add_trade(db, "NVDA", "CLOSED", exit_price=Decimal("152.50"), actual_pnl=Decimal("25.00"),
                     realized_pnl=Decimal("25.00"), exited_qty=Decimal("10"), exit_reason="PROFIT_TAKEN",
                     exit_date=dt.datetime(2026, 11, 20, 16, 0, tzinfo=dt.UTC))
    add_order(db, nvda, "ENTRY", "filled")
    add_order(db, nvda, "TAKE_PROFIT", "filled", limit_price=Decimal("152.50"), filled_avg_price=Decimal("152.50"),
              filled_at=dt.datetime(2026, 11, 20, 16, 0, tzinfo=dt.UTC))
    tsla = add_trade(db, "TSLA", "CLOSED", exit_price=Decimal("145"), actual_pnl=Decimal("-50.00"),
                     realized_pnl=Decimal("-50.00"), exited_qty=Decimal("10"), exit_reason="STOPPED_OUT",
                     exit_date=dt.datetime(2026, 11, 19, 18, 0, tzinfo=dt.UTC))
    add_order(db, tsla, "ENTRY", "filled")
    add_order(db, tsla, "STOP_LOSS", "filled", stop_price=Decimal("145"), filled_avg_price=Decimal("145"),
              filled_at=dt.datetime(2026, 11, 19, 18, 0, tzinfo=dt.UTC))
    fills = ((aapl, "buy", "10", "150", None, "2026-11-19T15:00:00Z"),
             (msft, "buy", "5", "400", None, "2026-11-20T15:00:00Z"),
             (nvda, "buy", "10", "150", None, "2026-11-19T15:00:00Z"),
             (nvda, "sell", "10", "152.50", "25.00", "2026-11-20T16:00:00Z"),
             (tsla, "buy", "10", "150", None, "2026-11-19T15:00:00Z"),
             (tsla, "sell", "10", "145", "-50.00", "2026-11-19T18:00:00Z"))
    symbols = {aapl: "AAPL", msft: "MSFT", nvda: "NVDA", tsla: "TSLA"}
    for trade_id, side, qty, price, pnl, at in fills:
        db.insert("trade_fill", {"trade_journal_id": trade_id, "symbol": symbols[trade_id], "side": side,
                                 "qty": Decimal(qty), "price": Decimal(price),
                                 "realized_pnl": None if pnl is None else Decimal(pnl),
                                 "filled_at": dt.datetime.fromisoformat(at.replace("Z", "+00:00")), "source": "seed"})
    for trade_id, symbol in symbols.items():
        decision = add_decision(db, symbol, created_at=dt.datetime(2026, 11, 19, 13, 0, tzinfo=dt.UTC))
        db.update("analysis_decision", decision, {"executed": True, "existing_trade_journal_id": trade_id})
        db.update("trade_journal", trade_id, {"initial_analysis_id": decision})
        db.insert("audit_event", {"program": "order_executor", "entity_type": "decision", "entity_id": decision,
                                  "symbol": symbol, "event": "DECISION_ACCEPTED", "old_value": "pending",
                                  "new_value": "accepted", "reason": f"bracket entry placed for {symbol}",
                                  "details": {"trade_journal_id": trade_id}})
    refused = add_decision(db, "ZZZZ", created_at=dt.datetime(2026, 11, 20, 14, 0, tzinfo=dt.UTC))
    db.update("analysis_decision", refused, {"executed": True})
    db.insert("audit_event", {"program": "order_executor", "entity_type": "decision", "entity_id": refused,
                              "symbol": "ZZZZ", "event": "DECISION_REFUSED", "old_value": "pending",
                              "new_value": "refused", "reason": "unknown symbol ZZZZ: the broker does not list it",
                              "details": {"code": "UNKNOWN_SYMBOL"}})
    add_snapshot(db, "2026-11-19T21:00:00Z", "100000.00", "98500.00", open_positions=1)
    add_snapshot(db, "2026-11-20T15:00:00Z", "100010.00", "96500.00", open_positions=2)
    add_snapshot(db, "2026-11-20T20:00:00Z", "100123.45", "96580.45", positions_value=Decimal("3543.00"),
                 unrealized_pnl=Decimal("43.00"), realized_pnl_today=Decimal("25.00"), open_positions=2)
    return {"AAPL": aapl, "MSFT": msft, "NVDA": nvda, "TSLA": tsla, "refused_decision": refused}


def deployment_files(unit_name: str, plist_name: str) -> tuple[Any, dict[str, Any]]:
    """A program's service definitions in deployment/: the systemd unit's ``[Service]`` section
    and the launchd job (a dict)."""
    import configparser
    import plistlib
    from pathlib import Path

    deployment = Path(__file__).resolve().parent.parent / "deployment"
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(deployment / unit_name)
    with open(deployment / plist_name, "rb") as handle:
        job = plistlib.load(handle)
    return unit["Service"], job
