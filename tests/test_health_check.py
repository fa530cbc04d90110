"""scripts/health_check.py: exit 0 for a healthy system, 1 for warnings, 2 for critical problems.

The system is made healthy or broken for real: the programs run against the paper exchange
and the test database; breakage is what an operator meets (a stop gone, a position bought by
hand, a stale scheduler, a crashed run, an unreachable database or broker).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from alpaca_client import AlpacaBroker
from db_layer import TradingDB
from order_executor import OrderExecutor
from order_monitor import OrderMonitor
from position_monitor import PositionMonitor
from scripts.health_check import CRITICAL, OK, SKIPPED, WARNING, overall, run_checks
from tests.factories import add_decision, eastern, make_settings
from trading.broker import OrderRequest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "health_check.py"
DAY = "2026-11-20"


@pytest.fixture
def settings(pg_config):
    return dataclasses.replace(make_settings(), postgres=pg_config)


@pytest.fixture
def healthy(db, broker, exchange, settings):
    """Friday 09:45: one protected AAPL position, every program has just run successfully, on
    the long-only account the system is meant for (no_shorting, docs/paper-trading-validation.md)."""
    exchange.configure_account(no_shorting=True)
    exchange.quotes(AAPL=("150.00", "150.10"))
    add_decision(db, "AAPL", planned_entry=151, planned_sl=145, planned_tp=160)
    for program in (OrderExecutor, OrderMonitor, PositionMonitor):
        assert program(db, broker, settings).run().outcome == "success"
        exchange.step()  # the exchange's next matching pass: the entry is acknowledged and fills
    return db


def check(settings, pg_config, broker, **kwargs):
    checks = run_checks(settings, connect_db=lambda: TradingDB(True, pg_config),
                        connect_broker=lambda: broker, **kwargs)
    return {c.name: c for c in checks}, overall(list(checks))


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=60)


def test_a_healthy_system_passes_every_check_and_exits_0(healthy, settings, pg_config, broker):
    checks, code = check(settings, pg_config, broker)
    assert code == 0
    assert list(checks) == ["database", "trading_state", "broker", "order_monitor", "position_monitor",
                            "order_executor", "protection", "orphan_positions", "short_selling", "trade_stream",
                            "recent_runs", "notifications"]
    assert all(c.status == OK for c in checks.values()), checks
    assert checks["short_selling"].message == "the account is long-only (no_shorting=true)"
    assert "1 open position, all protected" in checks["protection"].message
    assert "market open" in checks["broker"].message


def test_the_command_prints_one_line_per_check_or_json_and_exits_0_when_healthy(healthy, exchange):
    result = cli("--test-mode", ALPACA_BASE_URL=exchange.url)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 12 and all(line.startswith("OK") for line in lines), lines
    result = cli("--test-mode", "--json", ALPACA_BASE_URL=exchange.url)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["status"] == "ok" and report["exit_code"] == 0
    assert {c["name"] for c in report["checks"]} >= {"database", "broker", "protection"}


def test_an_unprotected_position_is_critical(healthy, settings, pg_config, broker):
    # The stop is gone and the order monitor has not repaired it (yet).
    healthy.execute_update("UPDATE order_execution SET order_status = 'canceled' WHERE order_type = 'STOP_LOSS'")
    checks, code = check(settings, pg_config, broker)
    assert code == 2
    assert checks["protection"].status == CRITICAL
    assert "trade 1 AAPL: 10 shares, live stops cover 0" in checks["protection"].message


def test_a_position_being_closed_is_covered_by_its_exit_sell_and_not_by_a_stop(healthy, settings, pg_config, broker):
    """A CLOSE's exit limit that did not fill by the close waits for the open as a queued sell: its
    stop was canceled for exactly those shares, and the check said CRIT unprotected."""
    from tests.factories import ExchangeAdmin

    exchange = ExchangeAdmin(broker.base_url)
    add_decision(healthy, "AAPL", "CLOSE", trade_id=1)
    exchange.quotes(AAPL=("150.00", "151.00"))  # a wide market: the NORMAL exit's limit at the mid rests
    closing = dataclasses.replace(settings, monitor=make_settings(EXIT_URGENCY_CLOSE="NORMAL").monitor)
    assert OrderExecutor(healthy, broker, closing, sleep=exchange.sleeper()).run().counts["closing"] == 1
    checks, code = check(settings, pg_config, broker)
    assert (checks["protection"].status, code) == (OK, 0), checks
    assert "(1 being closed by its exit order: trade 1 AAPL)" in checks["protection"].message
    healthy.execute_update("UPDATE order_execution SET order_status = 'canceled' WHERE order_type = 'EXIT'")
    checks, _ = check(settings, pg_config, broker)
    assert checks["protection"].status == CRITICAL  # the exit gone too: nothing covers the shares


def test_a_stale_scheduler_is_a_warning_during_market_hours(healthy, settings, pg_config, broker, exchange):
    exchange.clock(eastern(DAY, "11:00"))  # no run since 09:45
    checks, code = check(settings, pg_config, broker)
    assert code == 1
    assert checks["order_monitor"].status == WARNING and "every 5 min" in checks["order_monitor"].message
    assert checks["position_monitor"].status == WARNING
    assert checks["order_executor"].status == OK  # it ran this morning


def test_an_executor_that_did_not_run_today_is_a_warning(db, settings, pg_config, broker, exchange):
    exchange.clock(eastern(DAY, "10:30"))
    for program in (OrderMonitor, PositionMonitor):
        program(db, broker, settings).run()
    checks, code = check(settings, pg_config, broker)
    assert code == 1
    assert checks["order_executor"].status == WARNING and "due 09:45 ET" in checks["order_executor"].message
    assert checks["order_monitor"].status == OK


def test_after_the_close_the_cadence_is_not_judged(healthy, settings, pg_config, broker, exchange):
    exchange.clock(eastern(DAY, "18:30"))
    checks, code = check(settings, pg_config, broker)
    assert code == 0
    assert "outside the trading session" in checks["order_monitor"].message


def test_a_position_nobody_ordered_is_an_orphan_warning(healthy, settings, pg_config, broker, exchange):
    exchange.quotes(MSFT=("400.00", "400.10"))
    broker.submit_order(OrderRequest(symbol="MSFT", qty=Decimal(5), side="buy", kind="market", time_in_force="day",
                                     client_order_id="bought-by-hand-1"))
    exchange.step()
    checks, code = check(settings, pg_config, broker)
    assert code == 1
    assert checks["orphan_positions"].status == WARNING and "MSFT 5" in checks["orphan_positions"].message


def test_failed_and_unfinished_runs_are_warnings(healthy, settings, pg_config, broker):
    now = dt.datetime.now(dt.UTC)
    healthy.insert("program_run", {"program": "order_monitor", "started_at": now - dt.timedelta(minutes=3),
                                   "outcome": "failed", "error": "RuntimeError: boom"})
    healthy.insert("program_run", {"program": "position_monitor", "started_at": now - dt.timedelta(days=3),
                                   "outcome": "failed", "error": "long ago"})
    healthy.insert("program_run", {"program": "order_executor", "started_at": now - dt.timedelta(hours=2),
                                   "outcome": "running"})
    checks, code = check(settings, pg_config, broker)
    assert code == 1
    message = checks["recent_runs"].message
    assert "order_monitor failed 1x in 24 h (last: RuntimeError: boom)" in message
    assert "long ago" not in message
    assert "of order_executor started 2 h 0 min ago and never finished" in message


def test_a_restricted_trading_state_is_a_warning_and_a_flatten_under_way_is_critical(
        healthy, settings, pg_config, broker):
    from trading.state import TradingMode, record_trading_state

    checks, _ = check(settings, pg_config, broker)
    assert checks["trading_state"].message.startswith("ACTIVE")
    record_trading_state(healthy, TradingMode.HALTED, reason="broker outage", changed_by="alice")
    record_trading_state(healthy, TradingMode.REDUCE_ONLY, reason="earnings", changed_by="bob", scope="TSLA")
    checks, code = check(settings, pg_config, broker)
    assert (code, checks["trading_state"].status) == (1, WARNING)
    message = checks["trading_state"].message
    assert "account HALTED since " in message and " by alice: broker outage" in message
    assert "TSLA REDUCE_ONLY" in message and "by bob: earnings" in message
    record_trading_state(healthy, TradingMode.FLATTEN, reason="loss", changed_by="alice")
    checks, code = check(settings, pg_config, broker)
    assert (code, checks["trading_state"].status) == (2, CRITICAL)


def test_undelivered_notifications_are_a_warning_naming_their_status_and_error(healthy, settings, pg_config, broker):
    from trading.notify import NotificationKind, record_notification

    checks, _ = check(settings, pg_config, broker)
    assert checks["notifications"].message.startswith("NOTIFY_URLS is empty: nothing is sent")
    configured = dataclasses.replace(settings, notify=make_settings(NOTIFY_URLS="json://127.0.0.1:9/x").notify)
    checks, code = check(configured, pg_config, broker)
    assert (code, checks["notifications"].status) == (0, OK)

    unknown = record_notification(healthy, NotificationKind.RUN_FAILED, "run failed", "boom")
    healthy.execute_update("UPDATE notification_outbox SET status = 'unknown', last_error = 'no answer within 5 s' "
                           "WHERE id = %s", (unknown,))
    late = record_notification(healthy, NotificationKind.RUN_FAILED, "run failed", "boom")
    healthy.execute_update("UPDATE notification_outbox SET created_at = now() - interval '3 hours 10 minutes', "
                           "last_error = 'Connection refused' WHERE id = %s", (late,))
    checks, code = check(configured, pg_config, broker)
    assert code == 1 and checks["notifications"].status == WARNING
    assert "1 unknown (last error: no answer within 5 s)" in checks["notifications"].message
    assert "1 waiting, the oldest for 3 h " in checks["notifications"].message
    assert "(last error: Connection refused)" in checks["notifications"].message


def test_an_unreachable_broker_is_critical_and_skips_what_needs_it(healthy, settings, pg_config):
    dead = AlpacaBroker(base_url="http://127.0.0.1:1", data_url="http://127.0.0.1:1", timeout=1)
    checks, code = check(settings, pg_config, dead)
    assert code == 2
    assert checks["broker"].status == CRITICAL and "unreachable" in checks["broker"].message
    assert checks["order_monitor"].status == SKIPPED and checks["orphan_positions"].status == SKIPPED
    assert checks["protection"].status == OK  # read from the database alone


def test_an_unreachable_database_is_critical_from_the_command_line(exchange):
    result = cli("--test-mode", ALPACA_BASE_URL=exchange.url,
                 TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("CRIT  database") and "cannot connect to PostgreSQL at 127.0.0.1:1" in lines[0]
    assert any(line.startswith("SKIP  protection") for line in lines)
    report = json.loads(cli("--test-mode", "--json", ALPACA_BASE_URL=exchange.url,
                            TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere").stdout)
    assert report["status"] == "critical" and report["exit_code"] == 2


def test_a_configuration_error_is_critical(exchange):
    result = cli("--test-mode", ALPACA_BASE_URL="ftp://nowhere")
    assert result.returncode == 2
    assert result.stdout.startswith("CRIT  configuration") and "ALPACA_BASE_URL" in result.stdout


@pytest.fixture
def partial_database(pg_config):
    """A separate database whose schema lacks program_run (an upgrade not yet applied)."""
    admin = TradingDB(test_mode=True, config=pg_config)
    admin.connect()
    admin.execute_update("DROP DATABASE IF EXISTS health_partial")
    admin.execute_update("CREATE DATABASE health_partial")
    config = dataclasses.replace(pg_config, dbname="health_partial", source="DATABASE_URL")
    with TradingDB(config=config) as db:
        db.create_schema()
        db.execute_update("DROP TABLE program_run")
    try:
        yield config
    finally:
        admin.execute_update("DROP DATABASE IF EXISTS health_partial WITH (FORCE)")
        admin.close()


def test_an_incomplete_schema_is_critical_in_production_and_a_warning_on_the_test_database(
        partial_database, settings, broker, exchange):
    production = run_checks(settings, connect_db=lambda: TradingDB(config=partial_database),
                            connect_broker=lambda: broker)
    by_name = {c.name: c for c in production}
    assert overall(production) == 2
    assert by_name["database"].status == CRITICAL and "lacks program_run" in by_name["database"].message
    assert "programs refuse to start" in by_name["database"].message
    test_db = run_checks(settings, connect_db=lambda: TradingDB(test_mode=True, config=partial_database),
                         connect_broker=lambda: broker)
    by_name = {c.name: c for c in test_db}
    assert overall(test_db) == 1
    assert by_name["database"].status == WARNING and "the next program run creates it" in by_name["database"].message
    # What needs the missing table says it could not be checked; the rest is checked.
    assert by_name["schedule"].status == WARNING and "could not be checked" in by_name["schedule"].message
    assert by_name["recent_runs"].status == WARNING
    assert by_name["protection"].status == OK


@pytest.mark.parametrize(("no_shorting", "status"), [(False, WARNING), (True, OK)])
def test_an_account_that_allows_short_selling_is_a_warning_that_says_how_to_turn_it_off(
        healthy, settings, pg_config, exchange, broker, no_shorting, status):
    exchange.configure_account(no_shorting=no_shorting)
    checks, code = check(settings, pg_config, broker)
    assert checks["short_selling"].status == status
    assert code == (1 if status == WARNING else 0)
    if status == WARNING:
        assert "allows short selling" in checks["short_selling"].message
        assert '{"no_shorting": true}' in checks["short_selling"].message
        assert "docs/paper-trading-validation.md" in checks["short_selling"].message


@pytest.mark.parametrize(("status_row", "expected", "words"), [
    (None, OK, "no listener configured"),
    ({"connected_since": -300, "heartbeat_at": -10, "last_event_at": -60}, OK, "connected for 5 min"),
    ({"connected_since": -300, "heartbeat_at": -600}, WARNING, "no heartbeat since"),
    ({"connected_since": None, "heartbeat_at": -5, "last_error": "HTTP 503"}, WARNING,
     "not connected to the stream: HTTP 503"),
    ({"connected_since": None, "heartbeat_at": -120, "stopped_at": -60}, WARNING, "stopped 1 min ago"),
])
def test_the_trade_stream_check_reports_the_listener_as_it_recorded_itself(db, settings, pg_config, broker,
                                                                          status_row, expected, words):
    now = dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC)
    if status_row is not None:
        values = {k: (now + dt.timedelta(seconds=v) if isinstance(v, int) else v) for k, v in status_row.items()}
        db.insert("stream_status", {"listener": "trade_stream", "events_received": 3, "orders_recorded": 2, **values})
    checks, _code = check(settings, pg_config, broker, wall_now=now)
    assert checks["trade_stream"].status == expected
    assert words in checks["trade_stream"].message, checks["trade_stream"].message


def test_a_broker_without_account_configurations_skips_the_short_selling_check(
        healthy, settings, pg_config, exchange, broker):
    exchange.fault(status=404, path="/v2/account/configurations", message="endpoint not found")
    checks, code = check(settings, pg_config, broker)
    assert code == 0
    assert checks["short_selling"].status == SKIPPED and "could not be evaluated" in checks["short_selling"].message
