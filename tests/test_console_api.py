"""The operator console's API (console/), through FastAPI's test client on the real PostgreSQL.

Each scenario seeds the book with the factories, asks the API as the dashboard (or an operator's
script) would, and checks the answer to the cent: money as exact strings, times with their zone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from config import PostgresConfig, Secret
from console.settings import ConsoleSettings
from db_layer import TradingDB
from tests.console_support import console_clients
from tests.factories import make_settings, seed_console_book

TOKEN = "console-test-token-0123456789"


@pytest.fixture
def console_settings(pg_config: PostgresConfig) -> ConsoleSettings:
    return ConsoleSettings(trading=dataclasses.replace(make_settings(), postgres=pg_config), token=Secret(TOKEN))


@pytest.fixture
def make_client(console_settings: ConsoleSettings, pg_config: PostgresConfig) -> Iterator[Callable[..., TestClient]]:
    """A test client of a console built with ``create_app`` (options: ``broker``, settings fields)."""
    yield from console_clients(console_settings, pg_config)


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


# --------------------------------------------------------------------------- history and P&L


def test_the_equity_curve_lists_the_snapshots_with_the_spy_benchmark_scaled_to_the_first_equity(
        db: TradingDB, broker: Any, exchange: Any, make_client: Callable[..., TestClient]) -> None:
    seed_console_book(db)
    exchange.clock("2026-11-20T21:00:00Z")
    body = make_client(broker=broker).get("/api/portfolio/history").json()
    assert [p["equity"] for p in body["points"]] == ["100000.00", "100010.00", "100123.45"]
    assert body["points"][0]["at"] == "2026-11-19T21:00:00+00:00"
    assert body["benchmark_symbol"] == "SPY" and body["benchmark_note"] is None
    assert body["points"][0]["benchmark"] == "100000.00"  # the benchmark starts where the curve starts
    closes = {bar.start: bar.close for bar in broker.get_bars(
        "SPY", dt.datetime(2026, 11, 19, 18, tzinfo=dt.UTC), dt.datetime(2026, 11, 20, 21, tzinfo=dt.UTC),
        minutes=body["benchmark_bar_minutes"])}
    minutes = dt.timedelta(minutes=body["benchmark_bar_minutes"])
    first = closes[dt.datetime(2026, 11, 19, 21, tzinfo=dt.UTC) - minutes]
    last = closes[dt.datetime(2026, 11, 20, 20, tzinfo=dt.UTC) - minutes]
    assert Decimal(body["points"][-1]["benchmark"]) == (Decimal("100000.00") * last / first).quantize(Decimal("0.01"))


def test_the_equity_curve_without_a_broker_says_why_it_has_no_benchmark(db: TradingDB, client: TestClient) -> None:
    seed_console_book(db)
    body = client.get("/api/portfolio/history", params={"from": "2026-11-20"}).json()
    assert [p["equity"] for p in body["points"]] == ["100010.00", "100123.45"]
    assert all(p["benchmark"] is None for p in body["points"])
    assert body["benchmark_note"].startswith("no benchmark: the console was started without a broker")


def test_pnl_is_realised_from_the_fill_ledger_by_day_and_by_exit_reason_to_the_cent(
        db: TradingDB, client: TestClient) -> None:
    seed_console_book(db)
    body = client.get("/api/portfolio/pnl").json()
    assert (body["realized"], body["unrealized"], body["total"]) == ("-25.00", "43.00", "18.00")
    assert (body["closed_trades"], body["winners"], body["losers"]) == (2, 1, 1)
    assert body["by_day"] == [{"day": "2026-11-19", "realized": "-50.00", "sells": 1},
                              {"day": "2026-11-20", "realized": "25.00", "sells": 1}]
    assert body["by_exit_reason"] == [
        {"exit_reason": "PROFIT_TAKEN", "trades": 1, "pnl": "25.00", "winners": 1, "losers": 0},
        {"exit_reason": "STOPPED_OUT", "trades": 1, "pnl": "-50.00", "winners": 0, "losers": 1}]


# --------------------------------------------------------------------------- orders and trades


def test_orders_are_filtered_by_status_type_symbol_trade_and_dates_and_paged(db: TradingDB, client: TestClient) -> None:
    ids = seed_console_book(db)
    everything = client.get("/api/orders").json()
    assert everything["page"]["total"] == 8 and len(everything["orders"]) == 8
    assert [o["id"] for o in everything["orders"]] == sorted((o["id"] for o in everything["orders"]), reverse=True)
    filled = client.get("/api/orders", params={"status": "filled", "type": "stop_loss"}).json()
    assert [(o["symbol"], o["type"], o["stop_price"]) for o in filled["orders"]] == [("TSLA", "STOP_LOSS", "145")]
    aapl = client.get("/api/orders", params={"symbol": "aapl"}).json()["orders"]
    assert {o["type"] for o in aapl} == {"ENTRY", "TAKE_PROFIT", "STOP_LOSS"}
    assert all(o["trade_id"] == ids["AAPL"] and o["decision_id"] is not None for o in aapl)
    assert client.get("/api/orders", params={"trade": ids["NVDA"]}).json()["page"]["total"] == 2
    page = client.get("/api/orders", params={"limit": 3, "offset": 3}).json()
    assert page["page"] == {"limit": 3, "offset": 3, "total": 8, "next_offset": 6} and len(page["orders"]) == 3
    assert client.get("/api/orders", params={"limit": 3, "offset": 6}).json()["page"]["next_offset"] is None
    db.update("order_execution", aapl[0]["id"], {"submitted_at": dt.datetime(2026, 11, 21, 15, tzinfo=dt.UTC)})
    later = client.get("/api/orders", params={"from": "2026-11-21", "to": "2026-11-21"}).json()
    assert [o["id"] for o in later["orders"]] == [aapl[0]["id"]]
    zoned = client.get("/api/orders", params={"from": "2026-11-21T09:00:00-05:00"}).json()
    assert [o["id"] for o in zoned["orders"]] == [aapl[0]["id"]]


@pytest.mark.parametrize(("params", "message"), [
    ({"status": "filed"}, "status: unknown value(s) filed"),
    ({"type": "BUY"}, "type: unknown value(s) BUY"),
    ({"symbol": "AAPL;DROP"}, "is not a ticker symbol"),
    ({"from": "yesterday"}, "is not a date"),
    ({"from": "2026-11-20T10:00:00"}, "has no time zone"),
    ({"from": "2026-11-21", "to": "2026-11-20"}, "must be before"),
    ({"limit": 0}, "limit"),
    ({"limit": 501}, "limit"),
    ({"offset": -1}, "offset"),
    ({"trade": "x"}, "trade"),
    ({"trade": 2**70}, "trade"),
])
def test_a_bad_order_filter_is_a_422_that_names_what_is_wrong(client: TestClient, params: dict[str, Any],
                                                              message: str) -> None:
    response = client.get("/api/orders", params=params)
    assert response.status_code == 422
    assert message in response.json()["error"]


def test_unknown_or_malformed_ids_are_4xx_never_5xx(client: TestClient) -> None:
    for path in ("/api/orders/999", "/api/trades/999"):
        response = client.get(path)
        assert response.status_code == 404 and "does not exist" in response.json()["error"]
    for path in ("/api/orders/abc", "/api/trades/0", f"/api/trades/{2**64}", "/api/nothing"):
        assert 400 <= client.get(path).status_code < 500


def test_one_order_shows_its_audit_events(db: TradingDB, client: TestClient) -> None:
    ids = seed_console_book(db)
    stop = db.query("order_execution", {"trade_journal_id": ids["AAPL"], "order_type": "STOP_LOSS"})[0]
    db.insert("audit_event", {"program": "order_monitor", "entity_type": "order", "entity_id": stop["id"],
                              "symbol": "AAPL", "event": "ORDER_STATUS", "old_value": "new", "new_value": "held",
                              "reason": "leg armed"})
    body = client.get(f"/api/orders/{stop['id']}").json()
    assert (body["type"], body["status"], body["stop_price"], body["trade_id"]) == \
        ("STOP_LOSS", "held", "145", ids["AAPL"])
    assert [(e["event"], e["new_value"]) for e in body["audit"]] == [("ORDER_STATUS", "held")]


def test_trades_list_their_pnl_and_one_trade_tells_its_whole_story(db: TradingDB, client: TestClient) -> None:
    ids = seed_console_book(db)
    listing = client.get("/api/trades", params={"status": "closed"}).json()
    assert [(t["symbol"], t["pnl"]["realized"]) for t in listing["trades"]] == [("TSLA", "-50.00"), ("NVDA", "25.00")]
    open_aapl = client.get("/api/trades", params={"symbol": "AAPL"}).json()["trades"][0]
    assert open_aapl["pnl"] == {"realized": "0", "unrealized": "52.50", "total": "52.50"}
    story = client.get(f"/api/trades/{ids['NVDA']}").json()
    assert (story["status"], story["exit_reason"], story["exit_price"], story["pnl"]["total"]) == \
        ("CLOSED", "PROFIT_TAKEN", "152.50", "25.00")
    assert [d["outcome"] for d in story["decisions"]] == ["accepted"]
    assert story["decisions"][0]["plan"]["planned_entry"] == 150  # the upstream plan as written
    assert [(o["type"], o["status"]) for o in story["orders"]] == [("ENTRY", "filled"), ("TAKE_PROFIT", "filled")]
    assert [(f["side"], f["price"], f["realized_pnl"]) for f in story["fills"]] == \
        [("buy", "150", None), ("sell", "152.50", "25.00")]
    assert [e["event"] for e in story["audit"]] == ["DECISION_ACCEPTED"]


# --------------------------------------------------------------------------- decisions, triggers, mode, runs


def test_decisions_show_their_outcome_and_a_refusal_its_reason(db: TradingDB, client: TestClient) -> None:
    ids = seed_console_book(db)
    body = client.get("/api/decisions", params={"outcome": "refused"}).json()
    assert [(d["id"], d["ticker"], d["code"], d["reason"]) for d in body["decisions"]] == \
        [(ids["refused_decision"], "ZZZZ", "UNKNOWN_SYMBOL", "unknown symbol ZZZZ: the broker does not list it")]
    assert client.get("/api/decisions").json()["page"]["total"] == 5
    assert client.get("/api/decisions", params={"outcome": "maybe"}).status_code == 422


def test_triggers_list_the_stop_target_and_trailing_levels_of_open_trades(db: TradingDB, client: TestClient) -> None:
    ids = seed_console_book(db)
    db.update("trade_journal", ids["MSFT"], {"trailing_stop_pct": Decimal("2.5"), "high_water_mark": Decimal("402")})
    body = client.get("/api/triggers").json()
    found = {t["id"]: (t["kind"], t["level"], t["held"]) for t in body["triggers"]}
    assert found == {f"{ids['AAPL']}:stop": ("stop", "145", "145"), f"{ids['AAPL']}:target": ("target", "160", "160"),
                     f"{ids['MSFT']}:stop": ("stop", "390", None), f"{ids['MSFT']}:trailing": ("trailing", "2.5", None)}
    assert body["pending"] == []


def test_the_trading_mode_shows_the_state_and_that_only_the_environment_chooses_live(
        db: TradingDB, client: TestClient) -> None:
    from trading.state import TradingMode, record_trading_state

    record_trading_state(db, TradingMode.REDUCE_ONLY, scope="TSLA", reason="earnings", changed_by="tester")
    body = client.get("/api/trading/mode").json()
    assert body["mode"] == "ACTIVE" and body["account"]["scope"] == "ACCOUNT"
    assert [(s["scope"], s["mode"], s["reason"]) for s in body["symbols"]] == [("TSLA", "REDUCE_ONLY", "earnings")]
    assert body["broker"]["live_allowed"] is False and body["broker"]["paper"] is True


def test_runs_list_the_latest_runs_and_the_last_run_of_each_program(db: TradingDB, client: TestClient) -> None:
    for program, outcome in (("order_executor", "success"), ("order_monitor", "failed"), ("order_monitor", "success")):
        db.insert("program_run", {"program": program, "outcome": outcome, "counts": {"decisions": 1}})
    body = client.get("/api/runs").json()
    assert [r["program"] for r in body["runs"]] == ["order_monitor", "order_monitor", "order_executor"]
    assert {r["program"]: r["outcome"] for r in body["last_by_program"]} == \
        {"order_executor": "success", "order_monitor": "success"}
    assert len(client.get("/api/runs", params={"program": "order_monitor", "limit": 1}).json()["runs"]) == 1
    assert client.get("/api/runs", params={"program": "rm -rf"}).status_code == 422


# --------------------------------------------------------------------------- security

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_every_write_needs_the_bearer_token_and_without_a_configured_token_writes_are_off(
        db: TradingDB, make_client: Callable[..., TestClient]) -> None:
    seed_console_book(db)
    client = make_client()
    body = {"confirm": True}
    assert client.post("/api/positions/AAPL/close", json=body).status_code == 401
    assert client.post("/api/positions/AAPL/close", json=body,
                       headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert client.put("/api/trading/mode", json={"mode": "HALTED", "confirm": True, "reason": "x"}).status_code == 401
    assert client.delete("/api/triggers/1:target").status_code == 401
    assert client.get("/api/positions").status_code == 200  # reads on localhost need no token
    read_only = make_client(token=Secret(""))
    refused = read_only.post("/api/positions/AAPL/close", json=body, headers=AUTH)
    assert refused.status_code == 403 and "set CONSOLE_TOKEN" in refused.json()["error"]
    assert db.query("analysis_decision", {"primary_action": "CLOSE"}) == []


def test_beyond_localhost_every_request_needs_the_token(db: TradingDB, make_client: Callable[..., TestClient]) -> None:
    client = make_client(host="192.0.2.10")
    refused = client.get("/api/portfolio")
    assert refused.status_code == 401 and "beyond localhost" in refused.json()["error"]
    assert client.get("/api/portfolio", headers=AUTH).status_code == 200


def test_the_token_never_appears_in_answers_or_logs(db: TradingDB, client: TestClient) -> None:
    import io
    import logging

    from trading.logs import make_handler

    ids = seed_console_book(db)
    stream = io.StringIO()
    handler = make_handler(stream, "text")  # the programs' own handler, with its secret scrubber
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        answers = [client.post("/api/positions/AAPL/close", json={"confirm": True}, headers=AUTH),
                   client.get("/api/trading/mode", headers=AUTH),
                   client.post("/api/triggers", json={"trade_id": ids["AAPL"], "kind": "stop", "level": "146"},
                               headers={"Authorization": f"Bearer {TOKEN}x"})]
        logging.getLogger("console").warning("a line quoting the token %s is scrubbed", TOKEN)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert [a.status_code for a in answers] == [202, 200, 401]
    assert all(TOKEN not in a.text for a in answers)
    assert "a line quoting the token *** is scrubbed" in stream.getvalue()
    assert TOKEN not in stream.getvalue()


# --------------------------------------------------------------------------- Close, carried out by the order monitor


def test_a_close_through_the_api_is_carried_out_by_the_next_order_monitor_run_and_the_broker_ends_flat(
        db: TradingDB, exchange: Any, broker: Any, client: TestClient) -> None:
    from tests.monitor_support import open_position, run_monitor

    trade = open_position(db, exchange, broker)  # 10 AAPL @ 150.00, bracket stop 145 / target 160
    exchange.quotes(AAPL=("151.20", "151.30"))
    response = client.post("/api/positions/aapl/close", json={"confirm": True, "reason": "taking profits"},
                           headers=AUTH)

    assert response.status_code == 202
    [close] = response.json()["closes"]
    assert (close["trade_id"], close["already_requested"]) == (trade["id"], False)
    decision = db.get_by_id("analysis_decision", close["decision_id"])
    assert (decision["primary_action"], decision["Approve"], decision["executed"]) == ("CLOSE", True, False)
    assert decision["decision"]["source"] == "console" and decision["decision"]["reason"] == "taking profits"
    assert exchange.positions() == {"AAPL": Decimal("10")}  # the web request sent nothing to the broker
    [request] = db.query("audit_event", {"event": "CONSOLE_REQUEST"})
    assert (request["entity_id"], request["program"]) == (close["decision_id"], "console")

    summary = run_monitor(db, broker)

    assert summary.counts["decision_closing"] == 1
    assert exchange.positions() == {}
    closed = db.get_by_id("trade_journal", trade["id"])
    assert (closed["status"], closed["exit_reason"]) == ("CLOSED", "CLOSE_REQUESTED")
    outcome = db.execute_one("SELECT outcome, program FROM decision_outcome WHERE id = %s", (close["decision_id"],))
    assert outcome == {"outcome": "accepted", "program": "order_monitor"}
    assert client.get("/api/positions").json()["count"] == 0


def test_a_second_close_of_the_same_position_is_not_recorded_twice(db: TradingDB, client: TestClient) -> None:
    ids = seed_console_book(db)
    first = client.post("/api/positions/AAPL/close", json={"confirm": True}, headers=AUTH).json()
    again = client.post("/api/positions/AAPL/close", json={"confirm": True}, headers=AUTH).json()
    assert again["closes"] == [{"trade_id": ids["AAPL"], "decision_id": first["closes"][0]["decision_id"],
                                "already_requested": True}]
    assert len(db.query("analysis_decision", {"primary_action": "CLOSE"})) == 1
    pending = client.get("/api/triggers").json()["pending"]
    assert [(p["trade_id"], p["action"], p["source"], p["operator"]) for p in pending] == \
        [(ids["AAPL"], "CLOSE", "console", "operator")]


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/api/positions/NVDA/close", {"confirm": True}, 404, "no open position of NVDA"),
    ("/api/positions/AAPL/close", {"confirm": False}, 422, "confirm"),
    ("/api/positions/AAPL/close", {}, 422, "confirm"),
    ("/api/positions/AAPL/close", {"confirm": True, "reason": " \n "}, 422, "reason"),
    ("/api/positions/AAPL/close", {"confirm": True, "sell": "all"}, 422, "sell"),
    ("/api/positions/A$PL/close", {"confirm": True}, 422, "not a ticker"),
])
def test_a_bad_close_request_is_refused_with_a_clear_message(db: TradingDB, client: TestClient, path: str,
                                                             body: dict[str, Any], status: int, message: str) -> None:
    seed_console_book(db)
    response = client.post(path, json=body, headers=AUTH)
    assert response.status_code == status
    assert message in response.json()["error"]


# --------------------------------------------------------------------------- triggers, carried out by the order monitor


def test_a_stop_moved_through_the_api_is_moved_at_the_broker_by_the_next_monitor_run(
        db: TradingDB, exchange: Any, broker: Any, client: TestClient) -> None:
    from tests.monitor_support import open_position, run_monitor

    trade = open_position(db, exchange, broker)
    exchange.quotes(AAPL=("151.20", "151.30"))
    response = client.post("/api/triggers", json={"trade_id": trade["id"], "kind": "stop", "level": "147.5"},
                           headers=AUTH)
    assert response.status_code == 202, response.text
    [pending] = client.get("/api/triggers").json()["pending"]
    assert (pending["action"], pending["change"]) == ("AMEND", {"planned_sl": "147.50"})
    assert (response.json()["level"], response.json()["previous"]) == ("147.50", "145.00")

    summary = run_monitor(db, broker, check=False)  # the stop is replaced: answered pending_replace
    assert summary.counts["decision_amended"] == 1
    # The next run adopts the completed replacement (and the invariants hold); nothing is done twice.
    assert run_monitor(db, broker).counts.get("decision_amended") is None

    stops = [o for o in exchange.orders() if o["side"] == "sell" and o["type"] == "stop"
             and o["status"] not in ("canceled", "replaced", "filled")]
    assert [(Decimal(o["stop_price"]), o["status"]) for o in stops] == [(Decimal("147.50"), "held")]
    assert db.get_by_id("trade_journal", trade["id"])["planned_sl"] == Decimal("147.50")
    [stop] = [t for t in client.get("/api/triggers").json()["triggers"] if t["kind"] == "stop"]
    assert (Decimal(stop["level"]), Decimal(stop["held"])) == (Decimal("147.50"), Decimal("147.50"))
    [decision] = client.get("/api/decisions", params={"action": "AMEND"}).json()["decisions"]
    assert decision["outcome"] == "accepted" and "planned_sl 147.50" in decision["reason"]


def test_a_target_removed_through_the_api_leaves_a_stop_for_every_share(
        db: TradingDB, exchange: Any, broker: Any, client: TestClient) -> None:
    from tests.monitor_support import open_position, run_monitor

    trade = open_position(db, exchange, broker)
    exchange.quotes(AAPL=("151.20", "151.30"))
    assert client.delete(f"/api/triggers/{trade['id']}:target", headers=AUTH).status_code == 202

    run_monitor(db, broker)  # the invariants hold: one stop for all 10 shares, no target

    assert db.get_by_id("trade_journal", trade["id"])["planned_tp"] is None
    working = [o for o in exchange.orders() if o["side"] == "sell" and o["status"] not in
               ("canceled", "replaced", "filled", "expired")]
    assert [(o["type"], Decimal(o["qty"])) for o in working] == [("stop", Decimal("10"))]
    assert [t["kind"] for t in client.get("/api/triggers").json()["triggers"]] == ["stop"]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"kind": "stop", "level": "156"}, 422, "at or above the current price"),
    ({"kind": "stop", "level": "0"}, 422, "level"),
    ({"kind": "stop", "level": "abc"}, 422, "level"),
    ({"kind": "target", "level": "150"}, 422, "at or below the current price"),
    ({"kind": "trailing", "level": "75"}, 422, "below 50"),
    ({"kind": "limit", "level": "150"}, 422, "kind"),
])
def test_a_bad_trigger_change_is_refused_before_anything_is_recorded(
        db: TradingDB, client: TestClient, body: dict[str, Any], status: int, message: str) -> None:
    ids = seed_console_book(db)
    response = client.post("/api/triggers", json={"trade_id": ids["AAPL"], **body}, headers=AUTH)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert db.query("analysis_decision", {"primary_action": "AMEND"}) == []


def test_a_stop_can_never_be_removed_and_closed_or_unknown_trades_have_no_levels_to_change(
        db: TradingDB, client: TestClient) -> None:
    ids = seed_console_book(db)
    refused = client.delete(f"/api/triggers/{ids['AAPL']}:stop", headers=AUTH)
    assert refused.status_code == 409 and "always keeps its stop" in refused.json()["error"]
    assert client.delete(f"/api/triggers/{ids['MSFT']}:target", headers=AUTH).status_code == 404
    assert client.delete("/api/triggers/abc", headers=AUTH).status_code == 422
    closed = client.post("/api/triggers", json={"trade_id": ids["NVDA"], "kind": "stop", "level": "140"},
                         headers=AUTH)
    assert closed.status_code == 409 and "CLOSED" in closed.json()["error"]
    missing = client.post("/api/triggers", json={"trade_id": 999, "kind": "stop", "level": "140"}, headers=AUTH)
    assert missing.status_code == 404


def test_a_trailing_percent_set_through_the_api_is_recorded_on_the_trade_by_the_monitor(
        db: TradingDB, exchange: Any, broker: Any, client: TestClient) -> None:
    from tests.monitor_support import open_position, run_monitor

    trade = open_position(db, exchange, broker)
    assert client.post("/api/triggers", json={"trade_id": trade["id"], "kind": "trailing", "level": 3},
                       headers=AUTH).status_code == 202
    run_monitor(db, broker)
    assert db.get_by_id("trade_journal", trade["id"])["trailing_stop_pct"] == Decimal("3")
    [event] = db.query("audit_event", {"event": "TRADE_UPDATED", "entity_id": trade["id"]})
    assert event["new_value"] == "trailing_stop_pct=3" and event["program"] == "order_monitor"


# --------------------------------------------------------------------------- the trading mode


def test_a_mode_switch_needs_confirmation_and_a_reason_and_is_recorded_in_the_audit_trail(
        db: TradingDB, client: TestClient) -> None:
    unconfirmed = client.put("/api/trading/mode", json={"mode": "HALTED", "reason": "news"}, headers=AUTH)
    assert unconfirmed.status_code == 422 and "confirm" in unconfirmed.json()["error"]
    done = client.put("/api/trading/mode", json={"mode": "HALTED", "confirm": True, "reason": "news at noon"},
                      headers=AUTH)
    assert done.status_code == 200
    assert (done.json()["mode"], done.json()["changed_by"]) == ("HALTED", "console:operator")
    [event] = db.query("audit_event", {"event": "TRADING_STATE_CHANGED"})
    assert (event["old_value"], event["new_value"], event["reason"], event["program"]) == \
        ("ACTIVE", "HALTED", "news at noon", "console")
    resumed = client.put("/api/trading/mode", json={"mode": "ACTIVE", "confirm": True, "reason": "news digested"},
                         headers=AUTH)
    assert resumed.json()["mode"] == "ACTIVE"
    symbol = client.put("/api/trading/mode", json={"mode": "REDUCE_ONLY", "confirm": True, "reason": "earnings",
                                                   "scope": "tsla"}, headers=AUTH)
    assert symbol.json()["scope"] == "TSLA"
    assert client.get("/api/trading/mode").json()["symbols"][0]["mode"] == "REDUCE_ONLY"


def test_live_trading_is_never_enabled_from_the_console(db: TradingDB, client: TestClient) -> None:
    response = client.put("/api/trading/mode", json={"mode": "ACTIVE", "confirm": True, "reason": "go live",
                                                     "broker_mode": "live"}, headers=AUTH)
    assert response.status_code == 409
    assert "never enabled from the console" in response.json()["error"]
    assert "ALPACA_LIVE_CONFIRM" in response.json()["error"]
    assert db.query("audit_event", {"event": "TRADING_STATE_CHANGED"}) == []
    same = client.put("/api/trading/mode", json={"mode": "ACTIVE", "confirm": True, "reason": "paper it is",
                                                 "broker_mode": "paper"}, headers=AUTH)
    assert same.status_code == 200 and client.get("/api/trading/mode").json()["broker"]["mode"] != "live"
    bad = client.put("/api/trading/mode", json={"mode": "YOLO", "confirm": True, "reason": "x"}, headers=AUTH)
    assert bad.status_code == 422


def test_the_console_service_files_run_it_unprivileged_on_the_configured_database_and_restart_it():
    from tests.factories import deployment_files

    service, job = deployment_files("trading-monitor-console.service", "com.trading.monitor.console.plist")
    assert service["User"] not in ("", "root") and service["EnvironmentFile"] == "/etc/trading-monitor/env"
    assert service["Restart"] == "on-failure"
    assert service["ExecStart"].endswith(".venv/bin/python -m console --database main")
    assert job["Label"] == "com.trading.monitor.console" and job["UserName"] not in ("", "root")
    assert job["ProgramArguments"][1:] == ["-m", "console", "--database", "main"]
    assert job["KeepAlive"] == {"SuccessfulExit": False}


def test_python_m_console_serves_the_api_at_the_url_it_prints(db: TradingDB, pg_config: PostgresConfig) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    import requests

    seed_console_book(db)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "CONSOLE_PORT": str(port), "CONSOLE_TOKEN": TOKEN}
    server = subprocess.Popen([sys.executable, "-m", "console", "--test-mode", "--no-broker"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first.startswith(f"operator console: http://127.0.0.1:{port}/"), first
        body = None
        for _ in range(100):  # uvicorn binds a moment after the line is printed
            try:
                body = requests.get(f"http://127.0.0.1:{port}/api/portfolio", timeout=5).json()
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert body is not None and body["equity"] == "100123.45"
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert TOKEN not in (server.stdout.read() if server.stdout else "")


def test_a_console_start_with_a_bad_setting_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    from console.__main__ import choose_database, main

    monkeypatch.setenv("CONSOLE_TOKEN", "short")
    assert main(["--test-mode"]) == 2
    monkeypatch.delenv("CONSOLE_TOKEN")
    assert main(["--test-mode", "--host", "192.0.2.10"]) == 2  # beyond localhost without a token
    settings = make_settings()
    assert choose_database(settings, "auto") == (settings, None)  # the test database is served as configured
