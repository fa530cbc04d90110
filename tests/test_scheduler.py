"""scheduler.py: the job table, the trading-day filter, the job wrapper and a clean stop.

Triggers are driven directly (no real minutes pass); the calendar comes from the real paper
exchange through the project's broker wrapper; jobs run the real programs on the test database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from apscheduler.events import EVENT_JOB_MISSED
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.date import DateTrigger

import scheduler
from config import get_schedule_config
from scheduler import (
    DayEndExitTrigger,
    JobRunner,
    JobSpec,
    TradingCalendar,
    TradingDaysOnly,
    TradingScheduler,
    build_job_table,
    fire_times,
    job_table_lines,
    missed_run,
    next_run,
    session_grid_trigger,
)
from tests.factories import add_decision, make_settings
from trading.errors import ConfigurationError
from trading.market_time import EASTERN
from trading.program import RunSummary

ROOT = Path(__file__).resolve().parent.parent
THANKSGIVING = dt.date(2026, 11, 26)
DAY_AFTER_THANKSGIVING = dt.date(2026, 11, 27)  # closes at 13:00
FRIDAY = dt.date(2026, 11, 20)


def et(day: dt.date, hhmm: str) -> dt.datetime:
    hours, minutes = map(int, hhmm.split(":"))
    return EASTERN.localize(dt.datetime.combine(day, dt.time(hours, minutes)))


def day_fires(jobs, day: dt.date) -> dict[str, list[str]]:
    """Job id -> the ``HH:MM`` fire times of one calendar day."""
    fired: dict[str, list[str]] = {}
    for moment, spec in fire_times(jobs, et(day, "00:00"), et(day, "23:59")):
        fired.setdefault(spec.id, []).append(f"{moment.astimezone(EASTERN):%H:%M}")
    return fired


@pytest.fixture
def calendar(broker):
    return TradingCalendar(broker)


@pytest.fixture
def jobs(calendar):
    return build_job_table(get_schedule_config({}), calendar)


@pytest.fixture
def settings(pg_config):
    """Test settings whose database is the session's test database (jobs open their own connections)."""
    return dataclasses.replace(make_settings(), postgres=pg_config)


def simulated_clock(broker):
    """The runner's "now": the paper exchange's simulated clock (Friday 09:45 unless moved)."""
    return lambda: broker.get_clock().timestamp.astimezone(EASTERN)


# --------------------------------------------------------------------------- the job table


def test_job_table_holds_the_designed_jobs_in_new_york_time(jobs):
    assert [(spec.id, spec.program) for spec in jobs] == [
        ("order_executor", "order_executor"),
        ("order_executor_retry", "order_executor"),
        ("daytrade_exit", "order_monitor"),
        ("order_monitor", "order_monitor"),
        ("position_monitor", "position_monitor"),
        ("order_monitor_evening", "order_monitor"),
        ("position_monitor_evening", "position_monitor"),
        ("eod_report", "eod_report"),
    ]
    for spec in jobs:
        if isinstance(spec.trigger, TradingDaysOnly):
            inner = spec.trigger.inner
            for cron in getattr(inner, "triggers", [inner]):
                assert str(cron.timezone) == "America/New_York"
                assert "day_of_week='mon-fri'" in str(cron)
        else:
            assert isinstance(spec.trigger, DayEndExitTrigger)
    assert {spec.id: spec.misfire_grace_seconds for spec in jobs} == {
        "order_executor": 3600, "order_executor_retry": 300, "daytrade_exit": 600, "order_monitor": 300,
        "position_monitor": 600,
        "order_monitor_evening": 3600, "position_monitor_evening": 3600, "eod_report": 6 * 3600}


def test_a_normal_friday_fires_every_job_at_its_designed_times(jobs):
    fired = day_fires(jobs, FRIDAY)
    assert fired["order_executor"] == ["09:45"]
    assert fired["daytrade_exit"] == ["15:50"]
    assert fired["order_monitor_evening"] == ["18:00"]
    assert fired["position_monitor_evening"] == ["18:15"]
    assert fired["eod_report"] == ["16:30"]
    monitor = fired["order_monitor"]
    assert monitor[0] == "09:30" and monitor[-1] == "16:00" and len(monitor) == 79  # every 5 min, both ends
    position = fired["position_monitor"]
    assert position[:3] == ["09:30", "09:40", "09:50"] and position[-1] == "16:00" and len(position) == 40
    retry = fired["order_executor_retry"]  # fires every 5 min after the executor; runs only when needed
    assert retry[0] == "09:50" and retry[-1] == "16:00" and len(retry) == 75


def test_thanksgiving_runs_nothing_and_the_next_day_exits_at_1250_before_the_early_close(jobs):
    assert day_fires(jobs, THANKSGIVING) == {}
    fired = day_fires(jobs, DAY_AFTER_THANKSGIVING)
    assert fired["daytrade_exit"] == ["12:50"]
    assert fired["order_executor"] == ["09:45"]
    # From Wednesday evening the next executor run skips the holiday.
    wednesday_evening = et(dt.date(2026, 11, 25), "18:30")
    by_id = {spec.id: spec for spec in jobs}
    assert next_run(by_id["order_executor"], wednesday_evening) == et(DAY_AFTER_THANKSGIVING, "09:45")
    assert next_run(by_id["daytrade_exit"], wednesday_evening) == et(DAY_AFTER_THANKSGIVING, "12:50")
    assert next_run(by_id["order_monitor"], wednesday_evening) == et(DAY_AFTER_THANKSGIVING, "09:30")


def test_on_an_early_close_the_monitors_session_ends_at_the_close_and_the_evening_runs_stay(jobs):
    fired = day_fires(jobs, DAY_AFTER_THANKSGIVING)  # closes at 13:00
    assert fired["order_monitor"][0] == "09:30" and fired["order_monitor"][-1] == "13:00"
    assert len(fired["order_monitor"]) == 43  # 09:30-13:00 every 5 min, both ends
    assert fired["position_monitor"][-1] == "13:00" and len(fired["position_monitor"]) == 22
    assert fired["order_monitor_evening"] == ["18:00"] and fired["position_monitor_evening"] == ["18:15"]
    assert fired["eod_report"] == ["16:30"]  # after the early close too: the day's report
    by_id = {spec.id: spec for spec in jobs}
    assert next_run(by_id["order_monitor"], et(DAY_AFTER_THANKSGIVING, "13:01")) == et(dt.date(2026, 11, 30), "09:30")


def test_weekends_are_skipped_by_the_cron_expressions(jobs):
    saturday = dt.date(2026, 11, 21)
    assert day_fires(jobs, saturday) == {}
    by_id = {spec.id: spec for spec in jobs}
    assert next_run(by_id["position_monitor_evening"], et(saturday, "12:00")) == et(dt.date(2026, 11, 23), "18:15")


def test_the_schedule_follows_the_configuration(calendar):
    schedule = get_schedule_config({"EXECUTOR_TIME": "10:05", "ORDER_MONITOR_INTERVAL_MINUTES": "7",
                                    "DAYTRADE_EXIT_MINUTES_BEFORE_CLOSE": "15", "MONITOR_SESSION_END": "15:00"})
    fired = day_fires(build_job_table(schedule, calendar), FRIDAY)
    assert fired["order_executor"] == ["10:05"]
    assert fired["daytrade_exit"] == ["15:45"]
    assert day_fires(build_job_table(get_schedule_config({"EOD_REPORT_TIME": "17:05"}), calendar),
                     FRIDAY)["eod_report"] == ["17:05"]
    times = [int(t[:2]) * 60 + int(t[3:]) for t in fired["order_monitor"]]
    assert fired["order_monitor"][0] == "09:30" and fired["order_monitor"][-1] == "14:59"
    assert {b - a for a, b in itertools.pairwise(times)} == {7}


def test_a_session_that_ends_before_it_starts_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="ends"):
        session_grid_trigger(dt.time(16, 0), dt.time(9, 30), 5)


def test_the_job_table_listing_names_each_job_and_its_next_run(jobs):
    lines = job_table_lines(jobs, et(dt.date(2026, 11, 25), "18:30"))
    assert lines[0].startswith("job")
    assert any(line.startswith("order_executor") and "Fri 2026-11-27 09:45" in line for line in lines)
    assert any(line.startswith("daytrade_exit") and "Fri 2026-11-27 12:50" in line for line in lines)


# --------------------------------------------------------------------------- the calendar


def test_the_calendar_is_read_from_the_broker_once_per_window(broker, calendar):
    before = broker.calls.counts.get("get_calendar", 0)
    assert calendar.session(THANKSGIVING) is None
    assert calendar.session(DAY_AFTER_THANKSGIVING).close == et(DAY_AFTER_THANKSGIVING, "13:00")
    assert calendar.is_trading_day(FRIDAY + dt.timedelta(days=10))
    assert broker.calls.counts["get_calendar"] == before + 1
    assert calendar.source == "broker"
    assert calendar.describe(DAY_AFTER_THANKSGIVING) == "2026-11-27: 09:30-13:00 ET (early close)"
    assert calendar.describe(THANKSGIVING) == "2026-11-26: closed"


def test_while_the_broker_is_down_the_nyse_rules_answer_and_the_broker_is_asked_again_later(exchange, broker):
    exchange.fault(status=500, count=1, path="/v2/calendar")
    ticks = [0.0]
    calendar = TradingCalendar(broker, retry_seconds=60, monotonic=lambda: ticks[0])
    assert calendar.session(THANKSGIVING) is None  # from the rules
    assert calendar.day_end_exit(DAY_AFTER_THANKSGIVING, 10) == et(DAY_AFTER_THANKSGIVING, "12:50")
    assert calendar.source == "rules"
    calls = broker.calls.counts["get_calendar"]
    assert calendar.is_trading_day(FRIDAY)  # still within the retry pause: no broker call
    assert broker.calls.counts["get_calendar"] == calls
    ticks[0] = 61.0
    assert calendar.is_trading_day(FRIDAY)
    assert broker.calls.counts["get_calendar"] == calls + 1
    assert calendar.source == "broker"


# --------------------------------------------------------------------------- the scheduler


def test_the_real_scheduler_is_a_blocking_scheduler_in_new_york_with_one_coalesced_instance_per_job(
        settings, broker, calendar):
    trading = TradingScheduler(settings, broker, calendar=calendar)
    assert isinstance(trading.scheduler, BlockingScheduler)
    assert str(trading.scheduler.timezone) == "America/New_York"
    trading.add_jobs(et(dt.date(2026, 11, 23), "08:00"))
    added = {job.id: job for job in trading.scheduler.get_jobs()}
    assert set(added) == {spec.id for spec in trading.jobs}
    for spec in trading.jobs:
        job = added[spec.id]
        assert job.max_instances == 1 and job.coalesce is True
        assert job.misfire_grace_time == spec.misfire_grace_seconds
        assert job.trigger is spec.trigger and job.args == (spec,)


def test_a_late_start_runs_the_missed_job_at_once(settings, broker, calendar, db):  # db: no earlier test's runs
    trading = TradingScheduler(settings, broker, calendar=calendar)
    by_id = {spec.id: spec for spec in trading.jobs}
    late = et(FRIDAY, "10:15")
    assert missed_run(by_id["order_executor"], late) == et(FRIDAY, "09:45")   # within the hour of grace
    assert missed_run(by_id["order_executor"], et(FRIDAY, "11:00")) is None   # too late: tomorrow's run
    assert missed_run(by_id["daytrade_exit"], et(FRIDAY, "15:55")) == et(FRIDAY, "15:50")
    assert missed_run(by_id["daytrade_exit"], et(FRIDAY, "16:01")) is None
    assert missed_run(by_id["order_executor"], et(THANKSGIVING, "10:00")) is None
    trading.add_jobs(late)
    pending = {job.id: job for job in trading.scheduler.get_jobs()}
    assert pending["order_executor"].next_run_time == et(FRIDAY, "09:45")


def test_a_restarted_scheduler_does_not_repeat_a_run_the_previous_instance_completed(
        settings, broker, calendar, db, caplog):
    caplog.set_level(logging.INFO)
    # The previous instance ran the 09:45 executor (market time 09:45:02) and was restarted at 10:15.
    db.insert("program_run", {"program": "order_executor", "started_at": et(FRIDAY, "09:45"),
                              "market_time": et(FRIDAY, "09:45") + dt.timedelta(seconds=2),
                              "finished_at": et(FRIDAY, "09:46"), "outcome": "success"})
    db.insert("program_run", {"program": "position_monitor", "started_at": et(FRIDAY, "10:10"),
                              "market_time": et(FRIDAY, "10:10"), "finished_at": et(FRIDAY, "10:10"),
                              "outcome": "failed"})
    trading = TradingScheduler(settings, broker, calendar=calendar)
    trading.add_jobs(et(FRIDAY, "10:15"))
    pending = {job.id: job for job in trading.scheduler.get_jobs()}
    assert getattr(pending["order_executor"], "next_run_time", None) is None  # waits for Monday's 09:45
    assert "job order_executor: the run of 09:45 was already done by the previous scheduler" in caplog.text
    # A failed run is not "done": the missed 10:10 position monitor runs at once.
    assert pending["position_monitor"].next_run_time == et(FRIDAY, "10:10")


def test_a_job_that_raises_is_recorded_and_the_scheduler_keeps_running_the_next_job(
        settings, broker, calendar, db, caplog):
    caplog.set_level(logging.INFO)
    class ExplodingProgram:
        """A program whose construction fails: the crash happens before the run harness."""

        def __init__(self, *args: object) -> None:
            raise RuntimeError("boom before the harness")

    done = threading.Event()
    results: dict[str, RunSummary | None] = {}

    def on_result(spec, now, summary, elapsed):
        results[spec.id] = summary
        if len(results) == 2:
            done.set()

    runner = JobRunner(settings, broker, calendar, clock=simulated_clock(broker),
                       programs={**scheduler.PROGRAMS, "exploding": ExplodingProgram}, on_result=on_result)
    soon = dt.datetime.now(EASTERN) + dt.timedelta(milliseconds=200)
    jobs = [JobSpec("explode", "exploding", DateTrigger(run_date=soon), 60, "raises"),
            JobSpec("order_monitor", "order_monitor", DateTrigger(run_date=soon + dt.timedelta(milliseconds=300)), 60,
                    "runs after the failure")]
    background = BackgroundScheduler(timezone=EASTERN)
    trading = TradingScheduler(settings, broker, calendar=calendar, runner=runner, scheduler=background, jobs=jobs)
    trading.add_jobs()
    background.start()
    try:
        assert done.wait(15), "the job after the failing one did not run"
        assert background.running
    finally:
        background.shutdown(wait=True)
    assert results["explode"].outcome == "failed" and "boom before the harness" in results["explode"].error
    assert results["order_monitor"].outcome == "success"
    runs = {row["program"]: row for row in db.query("program_run")}
    assert runs["exploding"]["outcome"] == "failed"
    assert "job explode: RuntimeError: boom before the harness" in runs["exploding"]["error"]
    assert runs["order_monitor"]["outcome"] == "success"
    assert "job explode: exploding crashed" in caplog.text
    # the operator is told, in the transaction that recorded the crash
    (told,) = db.query("notification_outbox", {"kind": "run_failed"})
    assert told["program_run_id"] == runs["exploding"]["id"] and "boom before the harness" in told["body"]


def test_a_program_failing_inside_its_harness_is_recorded_by_the_harness(settings, broker, calendar, db):
    class FailingBody:
        name = "failing_body"

        def __init__(self, db, broker, settings) -> None:
            from trading.program import ProgramRunner

            self.runner = ProgramRunner(self, db, broker, settings)

        def run(self) -> RunSummary:
            return self.runner.run()

        def execute(self, ctx) -> None:
            raise ValueError("bad data")

    runner = JobRunner(settings, broker, calendar, clock=simulated_clock(broker),
                       programs={"failing_body": FailingBody})
    summary = runner.run(JobSpec("failing", "failing_body", DateTrigger(run_date=et(FRIDAY, "09:45")), 60, "x"))
    assert summary is not None and summary.outcome == "failed"
    [row] = db.query("program_run")
    assert row["outcome"] == "failed" and "ValueError: bad data" in row["error"]


def test_an_unreachable_database_is_logged_and_the_job_returns(settings, broker, calendar, caplog):
    caplog.set_level(logging.INFO)
    unreachable = dataclasses.replace(settings, postgres=dataclasses.replace(settings.postgres, port=1))
    runner = JobRunner(unreachable, broker, calendar, clock=simulated_clock(broker))
    spec = JobSpec("order_monitor", "order_monitor", DateTrigger(run_date=et(FRIDAY, "09:45")), 60, "x")
    summary = runner.run(spec)
    assert summary is not None and summary.outcome == "warning" and "cannot connect" in summary.error
    assert "the database is unreachable" in caplog.text


def test_a_holiday_runs_no_program_even_if_a_job_fires(settings, broker, calendar, db):
    runner = JobRunner(settings, broker, calendar, clock=lambda: et(THANKSGIVING, "09:45"))
    spec = {s.id: s for s in build_job_table(settings.schedule, calendar)}["order_executor"]
    add_decision(db, "AAPL")
    assert runner.run(spec) is None
    assert runner.run(spec) is None  # logged once at INFO, then quietly
    assert db.query("program_run") == []
    assert db.query("trade_journal") == []


def test_a_second_scheduler_on_the_same_database_skips_a_job_the_first_is_running(
        settings, broker, calendar, db, make_db):
    spec = {s.id: s for s in build_job_table(settings.schedule, calendar)}["order_monitor"]
    standby = JobRunner(settings, broker, calendar, clock=simulated_clock(broker))
    # The active scheduler's run holds the program's advisory lock while it works.
    with make_db().advisory_lock("order_monitor") as taken:
        assert taken
        summary = standby.run(spec)
    assert summary is not None and summary.outcome == "skipped"
    assert db.query("program_run") == []
    after = standby.run(spec)
    assert after is not None and after.outcome == "success"


def test_the_real_programs_run_through_the_job_wrapper(settings, broker, calendar, exchange, db):
    exchange.quotes(AAPL=("150.00", "150.10"))
    add_decision(db, "AAPL", planned_entry=151, planned_sl=145, planned_tp=160)
    runner = JobRunner(settings, broker, calendar, clock=simulated_clock(broker))
    by_id = {s.id: s for s in build_job_table(settings.schedule, calendar)}
    assert runner.run(by_id["order_executor"]).counts["placed"] == 1
    exchange.step()  # the entry is acknowledged and fills at the exchange's next matching pass
    assert runner.run(by_id["order_monitor"]).outcome == "success"
    assert runner.run(by_id["position_monitor"]).outcome == "success"
    [trade] = db.query("trade_journal")
    assert trade["status"] == "POSITION"
    assert runner.run(by_id["eod_report"]).counts["reports"] == 1
    [report] = db.query("daily_report")
    assert report["report_date"] == FRIDAY and report["open_positions"] == 1 and report["orders"] >= 1
    assert sorted(row["program"] for row in db.query("program_run")) == [
        "eod_report", "order_executor", "order_monitor", "position_monitor"]


def test_a_run_missed_beyond_its_grace_is_logged_not_run(settings, broker, calendar, caplog):
    caplog.set_level(logging.INFO)
    ran: list[str] = []
    runner = JobRunner(settings, broker, calendar, clock=simulated_clock(broker),
                       programs={"noop": lambda *a: ran.append("ran")})
    missed = threading.Event()
    background = BackgroundScheduler(timezone=EASTERN)
    background.add_listener(lambda event: missed.set(), EVENT_JOB_MISSED)
    spec = JobSpec("stale", "noop", DateTrigger(run_date=dt.datetime.now(EASTERN) - dt.timedelta(hours=2)), 1, "x")
    trading = TradingScheduler(settings, broker, calendar=calendar, runner=runner, scheduler=background, jobs=[spec])
    trading.add_jobs()
    background.start()
    try:
        assert missed.wait(10)
    finally:
        background.shutdown(wait=True)
    assert ran == []
    assert "job stale: the run of" in caplog.text and "was missed beyond its misfire grace" in caplog.text


def test_sigterm_lets_the_running_job_finish_and_the_scheduler_exits_cleanly(settings, broker, calendar):
    started, finished = threading.Event(), threading.Event()

    class SlowProgram:
        def __init__(self, *args: object) -> None:
            pass

        def run(self) -> RunSummary:
            started.set()
            time.sleep(1.0)
            finished.set()
            return RunSummary(program="slow")

    runner = JobRunner(settings, broker, calendar, clock=simulated_clock(broker), programs={"slow": SlowProgram})
    soon = dt.datetime.now(EASTERN) + dt.timedelta(milliseconds=200)
    trading = TradingScheduler(settings, broker, calendar=calendar, runner=runner,
                               jobs=[JobSpec("slow", "slow", DateTrigger(run_date=soon), 60, "sleeps 1 s")])

    def terminate_once_started() -> None:
        if started.wait(10):
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=terminate_once_started)
    killer.start()
    assert trading.run_forever() == 0
    killer.join()
    assert finished.is_set(), "the scheduler exited before its running job finished"
    assert not trading.scheduler.running
    assert signal.getsignal(signal.SIGTERM) is previous


# --------------------------------------------------------------------------- the command line


@pytest.fixture
def cli_env(monkeypatch, exchange, pg_config):
    """The command line pointed at the test database and the test exchange."""
    monkeypatch.setenv("ALPACA_BASE_URL", exchange.url)
    assert os.environ.get("TEST_DATABASE_URL")  # set by the pg_config fixture (or by the developer)


def test_list_prints_the_job_table_and_exits(cli_env, capsys):
    assert scheduler.main(["--list", "--test-mode"]) == 0
    out = capsys.readouterr().out
    assert "calendar from the broker" in out
    for job_id in ("order_executor", "order_executor_retry", "daytrade_exit", "order_monitor", "position_monitor",
                   "order_monitor_evening", "position_monitor_evening", "eod_report"):
        assert f"\n{job_id} " in out
    assert scheduler.main(["--list", "--json", "--test-mode"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["timezone"] == "America/New_York"
    assert [job["id"] for job in table["jobs"]][:3] == ["order_executor", "order_executor_retry", "daytrade_exit"]
    assert all(job["next_run"] for job in table["jobs"])


def test_a_bad_schedule_setting_stops_the_scheduler_with_its_name(cli_env, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("EXECUTOR_TIME", "9.45")
    assert scheduler.main(["--list", "--test-mode"]) == 2
    assert "EXECUTOR_TIME must be a time of day as HH:MM" in caplog.text


def test_json_without_list_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        scheduler.main(["--json"])
    assert stop.value.code == 2
    assert "--json only goes with --list" in capsys.readouterr().err


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as stop:
        scheduler.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--list" in out and "--test-mode" in out


def test_the_scheduler_command_starts_lists_its_jobs_and_stops_cleanly_on_sigterm(cli_env, db):
    # (``db``: empty tables. The started scheduler runs the jobs it missed at once; during market
    # hours on the wall clock they worked on an earlier test's rows and outlasted the SIGTERM wait.)
    env = dict(os.environ, LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, str(ROOT / "scheduler.py"), "--test-mode"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "scheduler started" in line:
                break
        assert any("scheduler started" in line for line in lines), "".join(lines)
        process.send_signal(signal.SIGTERM)
        try:
            _, rest = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, rest = process.communicate(timeout=10)
            output = "".join(lines) + rest
            raise AssertionError(f"the scheduler did not stop within 30 s of SIGTERM:\n{output}") from None
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(lines) + rest
    assert process.returncode == 0, output
    assert "order_executor" in output and "position_monitor_evening" in output
    assert "SIGTERM received" in output and "scheduler stopped cleanly" in output


# --------------------------------------------------------------------------- service files


def test_the_service_files_run_the_scheduler_as_an_unprivileged_user_and_restart_it_on_failure():
    from tests.factories import deployment_files

    service, job = deployment_files("trading-monitor.service", "com.trading.monitor.plist")
    assert service["User"] not in ("", "root") and service["EnvironmentFile"] == "/etc/trading-monitor/env"
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 60
    assert service["ExecStart"].endswith(".venv/bin/python /opt/trading-monitor/scheduler.py")
    assert job["Label"] == "com.trading.monitor" and job["UserName"] not in ("", "root")
    assert job["ProgramArguments"][-1].endswith("/scheduler.py")
    assert job["KeepAlive"] == {"SuccessfulExit": False} and job["ExitTimeOut"] >= 60


def test_the_retry_job_runs_the_executor_only_after_a_run_that_left_decisions_behind(
        settings, broker, calendar, db, exchange):
    from tests.factories import add_decision

    retry = {spec.id: spec for spec in build_job_table(settings.schedule, calendar)}["order_executor_retry"]
    runner = JobRunner(settings, broker, calendar, clock=simulated_clock(broker))
    decision_id = add_decision(db, "AAPL")
    assert runner.run(retry) is None  # no executor run yet: the 09:45 job places it
    # The 09:45 run met a 429 on the decision's entry: deferred, the run ended as warning.
    exchange.fault(status=429, message="rate limit exceeded", method="POST", path="/v2/orders", count=1)
    cut_short = runner.run({spec.id: spec for spec in build_job_table(settings.schedule, calendar)}["order_executor"])
    assert cut_short.outcome == "warning" and cut_short.counts["deferred"] == 1

    retried = runner.run(retry)  # minutes later, not at the next 09:45

    assert retried is not None and retried.counts["placed"] == 1
    assert db.get_by_id("analysis_decision", decision_id)["executed"] is True
    runs = len(db.query("program_run"))
    assert runner.run(retry) is None and len(db.query("program_run")) == runs  # finished: the fire passes
