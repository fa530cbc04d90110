"""trading.program: one run under its lock, recorded in program_run, with the error policy."""

from __future__ import annotations

import datetime as dt
import logging
import sys

import pytest

import order_monitor
from tests.factories import make_settings
from trading.errors import BrokerUnavailableError, ConfigurationError
from trading.logs import configure_logging, register_secret
from trading.program import ProgramRunner, RunContext, exit_code


class Body:
    """A hand-written program body: does what the test tells it to."""

    name = "test_program"

    def __init__(self, action=None):
        self.action = action
        self.seen: RunContext | None = None

    def execute(self, ctx: RunContext) -> None:
        self.seen = ctx
        ctx.summary.add("items", 3)
        if self.action:
            self.action(ctx)


def run(db, broker, action=None):
    body = Body(action)
    return body, ProgramRunner(body, db, broker, make_settings()).run()


def test_a_successful_run_is_recorded_with_counts_and_market_time(db, broker):
    body, summary = run(db, broker)
    assert summary.outcome == "success" and summary.counts == {"items": 3}
    assert body.seen.now == dt.datetime(2026, 11, 20, 14, 45, tzinfo=dt.UTC)  # the broker's clock
    row = db.get_by_id("program_run", summary.run_id)
    assert row["program"] == "test_program" and row["outcome"] == "success"
    assert row["counts"] == {"items": 3} and row["finished_at"] >= row["started_at"]
    assert row["market_time"] == body.seen.now and row["pid"] > 0
    assert summary.broker_calls == 2  # clock and calendar, read once


def test_the_calendar_is_read_from_the_broker_once_per_date_and_kept_while_the_clock_is_read_every_run(
        db, broker, exchange):
    first, summary = run(db, broker)
    assert summary.broker_calls == 2  # the date's first run: clock and calendar
    second, summary = run(db, broker)
    assert summary.broker_calls == 1  # the clock only; the session comes from market_calendar
    assert second.seen.market.session == first.seen.market.session
    assert second.seen.market.session.close == dt.datetime(2026, 11, 20, 21, 0, tzinfo=dt.UTC)
    [row] = db.query("market_calendar")
    assert row["calendar_date"] == dt.date(2026, 11, 20) and row["session_open"] == first.seen.market.session.open

    exchange.clock("2026-11-26T15:00:00Z")  # Thanksgiving: no session, kept as such
    holiday, summary = run(db, broker)
    assert summary.broker_calls == 2 and holiday.seen.market.session is None
    again, summary = run(db, broker)
    assert summary.broker_calls == 1 and again.seen.market.session is None and not again.seen.market.is_trading_day
    kept = {r["calendar_date"]: r["session_close"] for r in db.query("market_calendar")}
    assert kept == {dt.date(2026, 11, 20): first.seen.market.session.close, dt.date(2026, 11, 26): None}


def test_a_second_run_while_the_lock_is_held_is_skipped_quietly(db, broker, make_db, caplog):
    other = make_db()
    caplog.set_level(logging.INFO)
    with other.advisory_lock("test_program") as taken:
        assert taken
        body, summary = run(db, broker)
    assert summary.outcome == "skipped" and body.seen is None
    assert db.query("program_run") == []
    assert "another run holds the lock" in caplog.text


def test_an_outage_ends_the_run_early_with_a_warning_and_an_audit_row(db, broker):
    def outage(ctx):
        ctx.summary.add("done_before_outage")
        raise BrokerUnavailableError("list_orders: HTTP 503")

    _, summary = run(db, broker, outage)
    assert summary.outcome == "warning" and "HTTP 503" in summary.error
    row = db.get_by_id("program_run", summary.run_id)
    assert row["outcome"] == "warning" and row["counts"]["done_before_outage"] == 1
    events = db.query("audit_event", {"event": "RUN_ABORTED"})
    assert len(events) == 1 and "HTTP 503" in events[0]["reason"] and events[0]["program_run_id"] == summary.run_id


def test_an_unexpected_error_fails_the_run_and_is_recorded(db, broker):
    def bug(ctx):
        raise KeyError("missing")

    _, summary = run(db, broker, bug)
    assert summary.outcome == "failed" and "KeyError" in summary.error
    assert db.get_by_id("program_run", summary.run_id)["outcome"] == "failed"
    assert exit_code(summary) == 2


def test_a_configuration_error_fails_the_run(db, broker):
    def misconfigured(ctx):
        raise ConfigurationError("X must be set")

    _, summary = run(db, broker, misconfigured)
    assert summary.outcome == "failed" and summary.error == "X must be set"


def test_an_unreachable_broker_clock_ends_the_run_with_a_warning(db, exchange, broker):
    exchange.fault(status=503, path="/v2/clock")
    body, summary = run(db, broker)
    assert summary.outcome == "warning" and body.seen is None
    assert db.get_by_id("program_run", summary.run_id)["outcome"] == "warning"


def test_exit_codes():
    from trading.program import RunSummary

    assert [exit_code(RunSummary("p", outcome=o)) for o in ("success", "skipped", "warning", "failed")] == [0, 0, 1, 2]


def test_cli_stops_with_exit_code_2_on_bad_configuration(monkeypatch, capsys):
    monkeypatch.setenv("ALPACA_API_KEY", "only-the-key")
    assert order_monitor.main(["--test-mode"]) == 2


def test_cli_help_describes_the_program(capsys):
    with pytest.raises(SystemExit) as caught:
        order_monitor.main(["--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    assert "--test-mode" in text and "order_monitor" in text and "never reaches a live account" in text


def test_registered_secrets_never_reach_the_log(capsys):
    configure_logging("INFO", "test")
    register_secret("sUpErSeCrEt-123")
    from trading import logs

    handler = logs._handler
    assert isinstance(handler, logging.StreamHandler)
    original = handler.stream
    handler.stream = sys.stderr  # capsys's stream
    try:
        secret = "sUpErSeCrEt" + "-123"
        logging.getLogger("tests").warning("connecting with key %s", secret)
    finally:
        handler.stream = original
    err = capsys.readouterr().err
    assert "connecting with key ***" in err and "sUpErSeCrEt-123" not in err


def test_a_run_that_died_is_marked_failed_by_the_next_run(db, broker):
    dead = db.insert("program_run", {"program": "test_program", "outcome": "running", "pid": 999999})
    _, summary = run(db, broker)
    row = db.get_by_id("program_run", dead)
    assert row["outcome"] == "failed" and "without finishing" in row["error"] and row["finished_at"] is not None
    assert db.get_by_id("program_run", summary.run_id)["outcome"] == "success"


def test_secrets_are_registered_before_a_configuration_error_is_printed(monkeypatch, capsys):
    from trading import logs
    from trading.program import start

    monkeypatch.setattr(logs, "_secrets", set())
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:Pw@x#55@host/db")
    monkeypatch.setenv("ALPACA_SECRET_KEY", "a-secret-without-its-key")

    assert start("order_monitor", test_mode=False, log_level=None) is None

    handler = logs._handler
    assert isinstance(handler, logging.StreamHandler)
    original = handler.stream
    handler.stream = sys.stderr  # capsys's stream
    try:
        logging.getLogger("tests").error("late echo of %s and %s", "Pw@x#55", "a-secret-without-its-key")
    finally:
        handler.stream = original
    err = capsys.readouterr().err
    assert "Pw@x#55" not in err and "a-secret-without-its-key" not in err and "late echo of *** and ***" in err


def test_the_database_dying_at_begin_ends_the_run_as_a_warning_like_at_any_other_moment(db, make_db, exchange,
                                                                                         broker):
    """Issue 11 scenario 18: PostgreSQL restarts while the order monitor waits for the broker's
    order listing; its next statement is the BEGIN of a trade's sync. One outage, one outcome:
    the run ends ``warning`` (exit 1) with the outage recorded, never ``failed`` with a traceback."""
    import threading
    import time

    from tests.monitor_support import place_entry

    trade = place_entry(db, broker)
    exchange.quotes(AAPL=("149.90", "150.00"))  # the entry fills: the monitor's sync has a trade to write
    exchange.fault(method="GET", path="/v2/orders", delay_seconds=2)
    pid = db.execute_one("SELECT pg_backend_pid() AS pid")["pid"]
    killer = make_db()
    killed: list[bool] = []

    def restart_when_the_monitor_waits_for_the_broker() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = killer.execute_one("SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,))
            if row and row["state"] == "idle" and row["query"].startswith("SELECT * FROM order_execution"):
                killed.append(bool(killer.execute_one("SELECT pg_terminate_backend(%s) AS t", (pid,))["t"]))
                return
            time.sleep(0.01)

    thread = threading.Thread(target=restart_when_the_monitor_waits_for_the_broker, daemon=True)
    thread.start()
    summary = order_monitor.run_once(db, broker, settings=make_settings(), sleep=lambda _s: None)
    thread.join(timeout=10)
    assert killed == [True]
    assert summary.outcome == "warning" and "database error" in summary.error, summary.as_dict()
    assert exit_code(summary) == 1
    assert db.get_by_id("program_run", summary.run_id)["outcome"] == "warning"
    assert len(db.query("audit_event", {"event": "RUN_ABORTED"})) == 1
    assert db.get_by_id("trade_journal", trade["id"])["status"] == "ORDERED"  # nothing half-written
    assert order_monitor.run_once(db, broker, settings=make_settings()).outcome == "success"
    assert db.get_by_id("trade_journal", trade["id"])["status"] == "POSITION"  # the next run catches up


def test_a_run_skipped_on_the_lock_says_so_instead_of_nothing_to_do(db, broker, make_db):
    """Issue 11 scenario 19: the summary line (printed, in the scheduler's log) and --json tell a
    skipped run from a run with nothing to do."""
    other = make_db()
    with other.advisory_lock("test_program") as taken:
        assert taken
        _, summary = run(db, broker)
    assert summary.line() == "test_program: skipped: another run holds the lock"
    assert summary.as_dict()["skipped_because"] == "another run holds the lock"
    assert exit_code(summary) == 0
    _, idle = run(db, broker, lambda ctx: ctx.summary.counts.clear())
    assert idle.line() == "test_program: success (nothing to do)"
