#!/usr/bin/env python3
"""scheduler: runs the three programs on the market's schedule, trading days only.

    python scheduler.py                 # run until SIGINT/SIGTERM (what the service unit starts)
    python scheduler.py --list          # print the job table and the next run times, then exit
    python scheduler.py --test-mode     # test database, never a live account

The schedule is defined once, in :func:`build_job_table` (from ``config.ScheduleConfig``), and
used both by the real APScheduler ``BlockingScheduler`` and by the simulated trading day
(``scripts/simulate_day.py``), which asks the very same triggers for their fire times. All
times are America/New_York wall-clock times:

=========================  ==============  ============================================
job id                     program         when (Mon-Fri, NYSE trading days only)
=========================  ==============  ============================================
order_executor             order_executor  09:45 (``EXECUTOR_TIME``)
order_executor_retry       order_executor  every 5 min from 09:50 to the close, only when the
                                           last executor run left decisions (an outage or a
                                           429 deferred them): ``unfinished_work``
daytrade_exit              order_monitor   10 min before each session's close: 15:50,
                                           12:50 on early closes (``DAYTRADE_EXIT_...``)
order_monitor              order_monitor   every 5 min 09:30-16:00 (to 13:00 on early closes)
position_monitor           position_mon.   every 10 min 09:30-16:00 (to 13:00 on early closes)
order_monitor_evening      order_monitor   18:00
position_monitor_evening   position_mon.   18:15
eod_report                 eod_report      16:30 (``EOD_REPORT_TIME``): the end-of-day report
=========================  ==============  ============================================

Trading days and session closes come from the broker's calendar (``/v2/calendar``), read
through :class:`TradingCalendar` (cached per date, 31 days per call). While the broker cannot
be reached, the NYSE rules of the maintained ``holidays`` package stand in (the paper
exchange's ``NyseCalendar``), so a broker outage never stops the scheduler nor skips a day.

Every job opens its own database connection, runs the program through its run harness (which
holds the program's advisory lock and writes ``program_run``) and closes the connection. A job
never raises: a crash is logged and, when the database is reachable, recorded as a failed
``program_run`` row, and the scheduler goes on. ``max_instances=1`` and ``coalesce=True`` keep
one run per job at a time; each job's ``misfire_grace_time`` lets a late start still run it
(and at start-up a run missed within that grace is run at once). Two schedulers on one
database (a failover pair) never run the same program at the same time: the second finds the
advisory lock taken and skips.
"""

from __future__ import annotations

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import argparse
import datetime as dt
import heapq
import itertools
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    EVENT_SCHEDULER_STARTED,
    JobExecutionEvent,
    SchedulerEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

from config import ScheduleConfig, Settings
from db_layer import TradingDB
from order_executor import OrderExecutor, unfinished_work
from order_monitor import OrderMonitor
from position_monitor import PositionMonitor
from trading.broker import Broker, TradingDay
from trading.daily_report import EndOfDayReport
from trading.errors import ConfigurationError, DatabaseUnavailableError, TradingError, TransientError
from trading.market_time import EASTERN, eastern_date
from trading.program import Runnable, RunSummary, record_run_failure, start

logger = logging.getLogger("scheduler")

PROGRAM = "scheduler"
WEEKDAYS = "mon-fri"
#: Worker threads: jobs that fire together (09:45 executor + order monitor, 15:50 exit + both
#: monitors) run side by side; each program still runs at most once at a time.
MAX_WORKERS = 4
#: How far ahead a trigger looks for the next trading day before giving up (NYSE never closes
#: for a month; the bound only keeps a broken calendar from looping for ever).
MAX_DAYS_AHEAD = 31
ONE_MICROSECOND = dt.timedelta(microseconds=1)

ProgramFactory = Callable[[Any, Broker, Settings], Runnable]

#: The programs a job can run, by name (the name recorded in ``program_run``).
PROGRAMS: dict[str, ProgramFactory] = {
    "order_executor": OrderExecutor,
    "order_monitor": OrderMonitor,
    "position_monitor": PositionMonitor,
    "eod_report": EndOfDayReport,
}


# --------------------------------------------------------------------------- the calendar


class TradingCalendar:
    """Trading days and session times from the broker's calendar, cached per date.

    One broker call fetches ``window_days`` days at a time. When the broker cannot be reached
    the NYSE rules (``holidays`` package plus the three early-close rules) answer instead, and
    the broker is asked again after ``retry_seconds``: fallback answers are never cached.
    Thread-safe (APScheduler's loop and the job threads share one calendar).
    """

    def __init__(self, broker: Broker | None, *, window_days: int = MAX_DAYS_AHEAD, retry_seconds: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        from paper_exchange.calendar import NyseCalendar  # the maintained rules, without HTTP

        self.broker = broker
        self.window_days = window_days
        self.retry_seconds = retry_seconds
        self._monotonic = monotonic
        self._rules = NyseCalendar()
        self._days: dict[dt.date, TradingDay | None] = {}
        self._retry_at = 0.0
        self._lock = threading.Lock()
        #: Where the last answer came from: "broker" or "rules" (shown by --list).
        self.source = "broker" if broker is not None else "rules"

    def session(self, day: dt.date) -> TradingDay | None:
        """The session on ``day`` (open and close in UTC), or None when the market is closed all day."""
        with self._lock:
            if day in self._days:
                return self._days[day]
            if self.broker is not None and self._monotonic() >= self._retry_at:
                end = day + dt.timedelta(days=self.window_days)
                try:
                    days = self.broker.get_calendar(day, end)
                except Exception as exc:  # a trigger must never raise inside APScheduler's loop
                    self._retry_at = self._monotonic() + self.retry_seconds
                    self.source = "rules"
                    logger.warning("calendar: the broker's calendar is unavailable (%s); using the NYSE rules of the "
                                   "holidays package, asking the broker again in %.0f s", exc, self.retry_seconds)
                else:
                    self.source = "broker"
                    by_date = {item.date: item for item in days}
                    for offset in range(self.window_days + 1):
                        current = day + dt.timedelta(days=offset)
                        self._days[current] = by_date.get(current)
                    return self._days[day]
            return self._from_rules(day)

    def _from_rules(self, day: dt.date) -> TradingDay | None:
        session = self._rules.session(day)
        if session is None:
            return None
        return TradingDay(date=day, open=session.open, close=session.close)

    def is_trading_day(self, day: dt.date) -> bool:
        """Whether the market opens on ``day``."""
        return self.session(day) is not None

    def day_end_exit(self, day: dt.date, minutes_before_close: int) -> dt.datetime | None:
        """When day trades are flattened on ``day`` (US/Eastern), or None on a closed day."""
        session = self.session(day)
        if session is None:
            return None
        return (session.close - dt.timedelta(minutes=minutes_before_close)).astimezone(EASTERN)

    def describe(self, day: dt.date) -> str:
        """``2026-11-27: 09:30-13:00 ET (early close)`` or ``2026-11-26: closed``."""
        session = self.session(day)
        if session is None:
            return f"{day}: closed"
        close = session.close.astimezone(EASTERN)
        early = " (early close)" if close.time() < dt.time(16, 0) else ""
        return f"{day}: {session.open.astimezone(EASTERN):%H:%M}-{close:%H:%M} ET{early}"


# --------------------------------------------------------------------------- triggers


def _start_after(previous_fire_time: dt.datetime | None, now: dt.datetime) -> dt.datetime:
    """Where the search for the next fire time starts, as APScheduler's own triggers do it."""
    if previous_fire_time is None:
        return now
    start = min(now, previous_fire_time + ONE_MICROSECOND)
    return start if start > previous_fire_time else previous_fire_time + ONE_MICROSECOND


def _midnight_after(moment: dt.datetime) -> dt.datetime:
    day = eastern_date(moment) + dt.timedelta(days=1)
    return EASTERN.localize(dt.datetime.combine(day, dt.time(0, 0)))


class TradingDaysOnly(BaseTrigger):
    """Another trigger's fire times, minus those on days the market is closed (holidays).

    Weekends are already excluded by the cron expressions; the calendar removes NYSE holidays
    such as Thanksgiving (2026-11-26), so a holiday is not even a "missed" run.
    ``until_close``: also drop fire times after that day's session close (the monitors' session
    grid ends at 13:00 on an early close, as the day-trade exit already moves).
    """

    def __init__(self, inner: BaseTrigger, calendar: TradingCalendar, *, until_close: bool = False) -> None:
        self.inner = inner
        self.calendar = calendar
        self.until_close = until_close

    def _allowed(self, fire: dt.datetime) -> bool:
        session = self.calendar.session(eastern_date(fire))
        return session is not None and (not self.until_close or fire <= session.close)

    def get_next_fire_time(self, previous_fire_time: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
        fire = self.inner.get_next_fire_time(previous_fire_time, now)
        for _ in range(MAX_DAYS_AHEAD):
            if fire is None or self._allowed(fire):
                return fire
            # Skip the rest of the closed (or closed-early) day: ask again from the next midnight.
            fire = self.inner.get_next_fire_time(None, _midnight_after(fire))
        return fire

    def __str__(self) -> str:
        return f"{self.inner} on trading days{', until the close' if self.until_close else ''}"

    def __repr__(self) -> str:
        return f"<TradingDaysOnly({self.inner!r})>"


class DayEndExitTrigger(BaseTrigger):
    """Fires ``minutes_before_close`` before each session's close, read from the calendar:
    15:50 ET on a normal day, 12:50 ET on an early close (13:00), never on a closed day."""

    def __init__(self, calendar: TradingCalendar, minutes_before_close: int) -> None:
        self.calendar = calendar
        self.minutes_before_close = minutes_before_close

    def get_next_fire_time(self, previous_fire_time: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
        start = _start_after(previous_fire_time, now)
        first = eastern_date(start)
        for offset in range(MAX_DAYS_AHEAD + 1):
            exit_at = self.calendar.day_end_exit(first + dt.timedelta(days=offset), self.minutes_before_close)
            if exit_at is not None and exit_at >= start:
                return exit_at
        return None

    def __str__(self) -> str:
        return f"session close - {self.minutes_before_close} min (broker calendar)"

    def __repr__(self) -> str:
        return f"<DayEndExitTrigger(minutes_before_close={self.minutes_before_close})>"


def _spec(values: Sequence[int]) -> str:
    """A cron field for sorted integers: ``9``, ``10-15``, ``30-55/5``, ``*/5`` or a comma list."""
    if len(values) == 1:
        return str(values[0])
    steps = {b - a for a, b in itertools.pairwise(values)}
    if len(steps) == 1:
        step = steps.pop()
        if step == 1:
            return f"{values[0]}-{values[-1]}"
        if values[0] == 0 and values[-1] + step > 59:
            return f"*/{step}"
        return f"{values[0]}-{values[-1]}/{step}"
    return ",".join(str(v) for v in values)


def daily_trigger(at: dt.time) -> CronTrigger:
    """Mon-Fri at ``at`` (US/Eastern)."""
    return CronTrigger(day_of_week=WEEKDAYS, hour=at.hour, minute=at.minute, timezone=EASTERN)


def session_grid_trigger(start: dt.time, end: dt.time, interval_minutes: int) -> BaseTrigger:
    """Mon-Fri every ``interval_minutes`` from ``start`` to ``end`` inclusive (US/Eastern).

    Built as cron expressions (one per group of hours sharing the same minutes), e.g. for
    09:30-16:00 every 5 minutes: 9:30-55/5, 10-15:*/5 and 16:00.
    """
    first, last = start.hour * 60 + start.minute, end.hour * 60 + end.minute
    if last < first:
        raise ConfigurationError(f"the monitor session ends ({end:%H:%M}) before it starts ({start:%H:%M})")
    by_hour: dict[int, list[int]] = {}
    for minute_of_day in range(first, last + 1, interval_minutes):
        by_hour.setdefault(minute_of_day // 60, []).append(minute_of_day % 60)
    groups: dict[tuple[int, ...], list[int]] = {}
    for hour, minutes in by_hour.items():
        groups.setdefault(tuple(minutes), []).append(hour)
    triggers: list[BaseTrigger] = [
        CronTrigger(day_of_week=WEEKDAYS, hour=_spec(hours), minute=_spec(list(minutes)), timezone=EASTERN)
        for minutes, hours in sorted(groups.items(), key=lambda item: item[1][0])]
    return triggers[0] if len(triggers) == 1 else OrTrigger(triggers)


# --------------------------------------------------------------------------- the job table


@dataclass(frozen=True)
class JobSpec:
    """One row of the job table."""

    id: str
    program: str
    trigger: BaseTrigger
    misfire_grace_seconds: int
    description: str
    #: Asked before each run (on a database connection): the reason to run, or None to let this
    #: fire pass without running (no ``program_run`` row). None: the job always runs.
    wanted: Callable[[Any], str | None] | None = None


def _minutes_after(moment: dt.time, minutes: int) -> dt.time:
    later = dt.datetime.combine(dt.date(2000, 1, 1), moment) + dt.timedelta(minutes=minutes)
    return later.time()


def build_job_table(schedule: ScheduleConfig, calendar: TradingCalendar) -> list[JobSpec]:
    """The schedule, from the configuration. Order matters only for jobs that fire at the same
    moment in the simulated day (the executor places orders before the order monitor syncs them)."""
    exit_minutes = schedule.daytrade_exit_minutes_before_close
    session = f"{schedule.session_start:%H:%M}-{schedule.session_end:%H:%M} ET"

    def days(trigger: BaseTrigger, *, until_close: bool = False) -> BaseTrigger:
        return TradingDaysOnly(trigger, calendar, until_close=until_close)

    interval = schedule.order_monitor_interval_minutes
    return [
        JobSpec("order_executor", "order_executor", days(daily_trigger(schedule.executor_time)),
                # an hour late is still the same morning: today's approved decisions get placed
                misfire_grace_seconds=3600,
                description=f"daily at {schedule.executor_time:%H:%M} ET"),
        JobSpec("order_executor_retry", "order_executor",
                days(session_grid_trigger(_minutes_after(schedule.executor_time, interval), schedule.session_end,
                                          interval), until_close=True),
                misfire_grace_seconds=interval * 60,
                description=f"every {interval} min after "
                            f"{schedule.executor_time:%H:%M} ET until the close, only when the executor's last run "
                            "left approved decisions (deferred by an outage or the rate limit)",
                wanted=unfinished_work),
        JobSpec("daytrade_exit", "order_monitor", DayEndExitTrigger(calendar, exit_minutes),
                # late is fine until the close; after it the monitor has nothing left to flatten
                misfire_grace_seconds=exit_minutes * 60,
                description=f"{exit_minutes} min before each session's close (broker calendar; "
                            "early closes move it)"),
        JobSpec("order_monitor", "order_monitor",
                days(session_grid_trigger(schedule.session_start, schedule.session_end,
                                          schedule.order_monitor_interval_minutes), until_close=True),
                # a run later than one interval is replaced by the next one (coalesced)
                misfire_grace_seconds=schedule.order_monitor_interval_minutes * 60,
                description=f"every {schedule.order_monitor_interval_minutes} min {session} "
                            "(until the close on early closes)"),
        JobSpec("position_monitor", "position_monitor",
                days(session_grid_trigger(schedule.session_start, schedule.session_end,
                                          schedule.position_monitor_interval_minutes), until_close=True),
                misfire_grace_seconds=schedule.position_monitor_interval_minutes * 60,
                description=f"every {schedule.position_monitor_interval_minutes} min {session} "
                            "(until the close on early closes)"),
        JobSpec("order_monitor_evening", "order_monitor", days(daily_trigger(schedule.order_monitor_evening)),
                misfire_grace_seconds=3600,
                description=f"daily at {schedule.order_monitor_evening:%H:%M} ET"),
        JobSpec("position_monitor_evening", "position_monitor", days(daily_trigger(schedule.position_monitor_evening)),
                misfire_grace_seconds=3600,
                description=f"daily at {schedule.position_monitor_evening:%H:%M} ET"),
        JobSpec("eod_report", "eod_report", days(daily_trigger(schedule.eod_report_time)),
                # the day's report is still the day's report hours later (stored and sent once per date)
                misfire_grace_seconds=6 * 3600,
                description=f"daily at {schedule.eod_report_time:%H:%M} ET: the end-of-day report"),
    ]


def fire_times(jobs: Sequence[JobSpec], start: dt.datetime, end: dt.datetime) -> Iterator[tuple[dt.datetime, JobSpec]]:
    """Every ``(moment, job)`` the job table fires in ``[start, end]``, in time order (table order
    breaks ties), asking each trigger exactly as APScheduler does after each run."""
    heap: list[tuple[dt.datetime, int]] = []
    for index, spec in enumerate(jobs):
        first = spec.trigger.get_next_fire_time(None, start)
        if first is not None and first <= end:
            heapq.heappush(heap, (first, index))
    while heap:
        moment, index = heapq.heappop(heap)
        spec = jobs[index]
        yield moment, spec
        following = spec.trigger.get_next_fire_time(moment, moment)
        if following is not None and following <= end:
            heapq.heappush(heap, (following, index))


def missed_run(spec: JobSpec, now: dt.datetime) -> dt.datetime | None:
    """A fire time within the job's misfire grace before ``now`` (a late start runs it at once)."""
    earliest = now - dt.timedelta(seconds=spec.misfire_grace_seconds)
    candidate = spec.trigger.get_next_fire_time(None, earliest)
    return candidate if candidate is not None and earliest <= candidate < now else None


def next_run(spec: JobSpec, now: dt.datetime) -> dt.datetime | None:
    """The job's next fire time after ``now`` (holidays already skipped)."""
    return spec.trigger.get_next_fire_time(None, now)


def job_table_lines(jobs: Sequence[JobSpec], now: dt.datetime) -> list[str]:
    """The job table as text: id, program, schedule, next run (US/Eastern)."""
    lines = [f"{'job':<25} {'program':<17} {'next run (ET)':<22} schedule (Mon-Fri, trading days only)"]
    for spec in jobs:
        upcoming = next_run(spec, now)
        when = f"{upcoming.astimezone(EASTERN):%a %Y-%m-%d %H:%M}" if upcoming else "never"
        lines.append(f"{spec.id:<25} {spec.program:<17} {when:<22} {spec.description}")
    return lines


# --------------------------------------------------------------------------- running one job


def wall_clock_eastern() -> dt.datetime:
    """The machine's time in US/Eastern: what the real scheduler fires on."""
    return dt.datetime.now(EASTERN)


ResultHook = Callable[[JobSpec, dt.datetime, "RunSummary | None", float], None]


class JobRunner:
    """Runs one job: trading-day check, own database connection, the program's harness, and a
    record of any crash. ``run()`` never raises: the scheduler keeps going whatever happens.

    ``clock`` answers "now" for the trading-day check (the wall clock for the real scheduler,
    the exchange's simulated clock for the simulated day). ``on_result`` is told about every run
    (the simulated day prints its progress lines from it).
    """

    def __init__(self, settings: Settings, broker: Broker, calendar: TradingCalendar, *,
                 clock: Callable[[], dt.datetime] = wall_clock_eastern,
                 programs: Mapping[str, ProgramFactory] | None = None,
                 db_factory: Callable[[JobSpec], Any] | None = None,
                 on_result: ResultHook | None = None) -> None:
        self.settings = settings
        self.broker = broker
        self.calendar = calendar
        self.clock = clock
        self.programs = dict(PROGRAMS if programs is None else programs)
        self.db_factory = db_factory or self._open_db
        self.on_result = on_result
        self._schema_ready = False
        self._closed_days_logged: set[tuple[str, dt.date]] = set()

    def _open_db(self, spec: JobSpec) -> TradingDB:
        return TradingDB(self.settings.test_mode, self.settings.postgres, application_name=f"scheduler:{spec.id}")

    def run(self, spec: JobSpec) -> RunSummary | None:
        """Run ``spec`` once now; None when today is not a trading day."""
        try:
            return self._run(spec)
        except Exception:  # the last line of defence: nothing may escape into APScheduler
            logger.exception("job %s: unexpected error in the job wrapper", spec.id)
            return None

    def _run(self, spec: JobSpec) -> RunSummary | None:
        now = self.clock()
        day = eastern_date(now)
        if not self.calendar.is_trading_day(day):
            # Normally the trigger has skipped the day already; this catches a run the trigger
            # let through while the calendar was unreachable.
            level = logging.DEBUG if (spec.id, day) in self._closed_days_logged else logging.INFO
            self._closed_days_logged.add((spec.id, day))
            logger.log(level, "job %s: %s is not a trading day; %s not run", spec.id, day, spec.program)
            return None
        if spec.wanted is not None:
            reason = self._wanted(spec)
            if reason is None:
                logger.debug("job %s: nothing to do; %s not run", spec.id, spec.program)
                return None
            logger.info("job %s: %s", spec.id, reason)
        started = time.monotonic()
        summary = self._run_program(spec, now)
        elapsed = time.monotonic() - started
        log = logger.info if summary.outcome in ("success", "skipped") else logger.warning
        log("job %s: %s [%.2f s]", spec.id, summary.line(), elapsed)
        if self.on_result is not None:
            self.on_result(spec, now, summary, elapsed)
        return summary

    def _run_program(self, spec: JobSpec, now: dt.datetime) -> RunSummary:
        db = self.db_factory(spec)
        try:
            db.connect()
            if not self._schema_ready:
                db.ensure_schema()
                self._schema_ready = True
            factory = self.programs.get(spec.program)
            if factory is None:
                raise ConfigurationError(f"job {spec.id} names an unknown program {spec.program!r}")
            return factory(db, self.broker, self.settings).run()
        except DatabaseUnavailableError as exc:
            # Nothing can be recorded in a database we cannot reach; the health check reports it.
            logger.warning("job %s: %s not run, the database is unreachable (next run retries): %s",
                           spec.id, spec.program, exc)
            return RunSummary(program=spec.program, outcome="warning", error=str(exc))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, TransientError):
                logger.warning("job %s: %s could not run: %s", spec.id, spec.program, error)
            else:
                logger.exception("job %s: %s crashed", spec.id, spec.program)
            summary = RunSummary(program=spec.program, outcome="warning" if isinstance(exc, TransientError)
                                 else "failed", error=error)
            summary.run_id = self._record_crash(spec, summary, now)
            return summary
        finally:
            db.close()

    def _wanted(self, spec: JobSpec) -> str | None:
        """``spec.wanted``'s answer; a database that cannot answer runs the job (safe: idempotent)."""
        assert spec.wanted is not None
        db = self.db_factory(spec)
        try:
            db.connect()
            return spec.wanted(db)
        except TradingError as exc:
            return f"could not tell whether it is needed ({exc}): run"
        finally:
            db.close()

    def completed_since(self, spec: JobSpec, moment: dt.datetime) -> int | None:
        """The id of a finished (not failed) run of ``spec``'s program at or after ``moment`` (a restarted
        scheduler then does not repeat it), or None; None too when the database cannot say
        (running again is safe: every program is idempotent)."""
        db = self.db_factory(spec)
        try:
            db.connect()
            row = db.execute_one(
                "SELECT id FROM program_run WHERE program = %s AND finished_at IS NOT NULL AND outcome <> 'failed' "
                "AND coalesce(market_time, started_at) >= %s ORDER BY id DESC LIMIT 1", (spec.program, moment))
            return int(row["id"]) if row else None
        except Exception as exc:
            logger.warning("job %s: cannot read program_run (%s); a missed run is run again", spec.id, exc)
            return None
        finally:
            db.close()

    def _record_crash(self, spec: JobSpec, summary: RunSummary, now: dt.datetime) -> int | None:
        """A ``program_run`` row for a run that died outside the program's own harness."""
        db = self.db_factory(spec)
        try:
            db.connect()
            stamp = dt.datetime.now(dt.UTC)
            with db.transaction():
                run_id = int(db.insert("program_run", {
                    "program": spec.program, "started_at": stamp, "finished_at": stamp, "market_time": now,
                    "outcome": summary.outcome, "error": f"job {spec.id}: {summary.error}"[:2000],
                    "counts": {}, "host": socket.gethostname(), "pid": os.getpid()}))
                if summary.outcome == "failed":
                    record_run_failure(db, spec.program, run_id, f"job {spec.id}: {summary.error}")
            return run_id
        except Exception as exc:
            logger.warning("job %s: could not record the crash in program_run: %s", spec.id, exc)
            return None
        finally:
            db.close()


# --------------------------------------------------------------------------- the scheduler


class TradingScheduler:
    """The job table on an APScheduler scheduler (``BlockingScheduler`` unless given another)."""

    def __init__(self, settings: Settings, broker: Broker, *, calendar: TradingCalendar | None = None,
                 runner: JobRunner | None = None, scheduler: BaseScheduler | None = None,
                 jobs: Sequence[JobSpec] | None = None) -> None:
        self.settings = settings
        self.broker = broker
        self.calendar = calendar or TradingCalendar(broker)
        self.runner = runner or JobRunner(settings, broker, self.calendar)
        self.jobs = list(jobs) if jobs is not None else build_job_table(settings.schedule, self.calendar)
        self.scheduler = scheduler or BlockingScheduler(
            timezone=EASTERN, executors={"default": ThreadPoolExecutor(MAX_WORKERS)},
            job_defaults={"coalesce": True, "max_instances": 1})
        self.scheduler.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_ERROR)
        self.scheduler.add_listener(self._count_running, EVENT_JOB_SUBMITTED | EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        self.scheduler.add_listener(self._on_started, EVENT_SCHEDULER_STARTED)
        self._stop_requested: str | None = None
        self._stop_event = threading.Event()
        self._running_jobs = 0
        self._jobs_done = threading.Condition()

    def add_jobs(self, now: dt.datetime | None = None) -> None:
        """Put every job of the table on the scheduler; a run missed within its grace runs at once."""
        now = now or wall_clock_eastern()
        for spec in self.jobs:
            options: dict[str, Any] = {}
            missed = missed_run(spec, now)
            done = self.runner.completed_since(spec, missed) if missed is not None else None
            if missed is not None and done is not None:
                logger.info("job %s: the run of %s was already done by the previous scheduler (program_run %s): "
                            "not repeated", spec.id, f"{missed.astimezone(EASTERN):%H:%M}", done)
            elif missed is not None:
                logger.info("job %s: the run of %s was missed (started late): running it now",
                            spec.id, f"{missed.astimezone(EASTERN):%H:%M}")
                options["next_run_time"] = missed
            self.scheduler.add_job(self.runner.run, trigger=spec.trigger, args=[spec], id=spec.id, name=spec.id,
                                   misfire_grace_time=spec.misfire_grace_seconds, coalesce=True, max_instances=1,
                                   replace_existing=True, **options)

    def log_jobs(self, now: dt.datetime | None = None) -> None:
        """One log line per job with its next run time, and today's session."""
        now = now or wall_clock_eastern()
        logger.info("calendar %s (from the %s)", self.calendar.describe(eastern_date(now)), self.calendar.source)
        for line in job_table_lines(self.jobs, now):
            logger.info("%s", line)

    def _on_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            logger.warning("job %s: the run of %s was missed beyond its misfire grace (scheduler busy or the "
                           "machine asleep); the next run follows the schedule", event.job_id,
                           f"{event.scheduled_run_time.astimezone(EASTERN):%Y-%m-%d %H:%M}")
        else:
            logger.error("job %s raised %r (the job wrapper should have caught it)", event.job_id, event.exception)

    def _count_running(self, event: SchedulerEvent) -> None:
        """Jobs handed to the worker threads and not finished yet (what a stop waits for)."""
        with self._jobs_done:
            self._running_jobs += 1 if event.code == EVENT_JOB_SUBMITTED else -1
            self._jobs_done.notify_all()

    def _on_started(self, _event: SchedulerEvent) -> None:
        # A signal that came before the scheduler ran (while the jobs were added) found nothing to stop.
        if self._stop_requested:
            self.scheduler.shutdown(wait=False)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Ask for a stop, and nothing more: the handler runs wherever the main thread is. It used
        to raise, and inside APScheduler (submitting a job to a worker) the exception was caught
        and logged as a failed submission: the stop was lost and the service ran on until killed.
        Shutting the scheduler down from here would deadlock on the lock that submission holds,
        so the stopper thread does it (``_stopper``)."""
        name = signal.Signals(signum).name
        if self._stop_requested:
            logger.warning("second %s: exiting now without waiting for running jobs (their advisory locks go with "
                           "their connections; the next run repairs anything half done)", name)
            logging.shutdown()
            os._exit(1)
        self._stop_requested = name
        self._stop_event.set()

    def _stopper(self) -> None:
        """Ends the scheduler's loop once a stop is asked for (jobs already running go on)."""
        self._stop_event.wait()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def run_forever(self) -> int:
        """Start the scheduler and block until SIGINT/SIGTERM; a running job finishes first. Returns 0."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        stopper = threading.Thread(target=self._stopper, name="scheduler-stopper", daemon=True)
        stopper.start()
        try:
            self.add_jobs()
            self.log_jobs()
            logger.info("scheduler started (pid %s, timezone America/New_York); stop with SIGINT or SIGTERM",
                        os.getpid())
            if not self._stop_requested:
                self.scheduler.start()  # returns once a signal shut it down
            logger.info("%s received: no new job starts; waiting for any running job to finish",
                        self._stop_requested or "stop")
            with self._jobs_done:
                self._jobs_done.wait_for(lambda: self._running_jobs <= 0)
        finally:
            self._stop_event.set()  # (the stopper ends too when run_forever leaves for another reason)
            stopper.join(timeout=5)
            if self.scheduler.running:
                self.scheduler.shutdown(wait=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        logger.info("scheduler stopped cleanly")
        return 0


# --------------------------------------------------------------------------- command line


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scheduler.py", description=(__doc__ or "").split("\n\n")[0],
        epilog="Jobs (Mon-Fri, NYSE trading days, America/New_York): order_executor 09:45; order_monitor every "
               "5 min 09:30-16:00 and 18:00; position_monitor every 10 min 09:30-16:00 and 18:15; daytrade_exit "
               "(order_monitor) 10 min before the close. Times come from EXECUTOR_TIME, *_INTERVAL_MINUTES, "
               "*_EVENING_TIME and DAYTRADE_EXIT_MINUTES_BEFORE_CLOSE; eod_report (the end-of-day report) at "
               "EOD_REPORT_TIME, 16:30.")
    parser.add_argument("--list", action="store_true", help="print the job table with the next run times and exit")
    parser.add_argument("--json", action="store_true", help="with --list: print the table as JSON")
    parser.add_argument("--test-mode", action="store_true",
                        help="use the test database (TEST_DATABASE_URL or the embedded test database); never reaches "
                             "a live account")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="override LOG_LEVEL")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python scheduler.py``: 0 after a clean stop, 2 on a configuration error, 1 when the
    database or broker cannot be reached at start (a service manager restarts it)."""
    from alpaca_client import connect_broker

    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if args.json and not args.list:
        parser.error("--json only goes with --list (the scheduler itself logs lines, not JSON)")
    settings = start(PROGRAM, test_mode=args.test_mode, log_level=args.log_level)
    if settings is None:
        return 2
    try:
        broker = connect_broker(settings.alpaca, test_mode=args.test_mode)
        scheduler = TradingScheduler(settings, broker)
        if args.list:
            now = wall_clock_eastern()
            if args.json:
                table = []
                for spec in scheduler.jobs:
                    upcoming = next_run(spec, now)
                    table.append({"id": spec.id, "program": spec.program, "schedule": spec.description,
                                  "trigger": str(spec.trigger), "misfire_grace_seconds": spec.misfire_grace_seconds,
                                  "next_run": upcoming.isoformat() if upcoming else None})
                print(json.dumps({"timezone": "America/New_York", "calendar_source": scheduler.calendar.source,
                                  "jobs": table}, indent=2))
            else:
                print(f"Today {scheduler.calendar.describe(eastern_date(now))} "
                      f"(calendar from the {scheduler.calendar.source})")
                print("\n".join(job_table_lines(scheduler.jobs, now)))
            return 0
        logger.info("configuration: %s", json.dumps(settings.describe(), sort_keys=True))
        logger.info("broker: %s; database: %s", broker.describe(), settings.postgres.describe())
        with TradingDB(args.test_mode, settings.postgres, application_name=PROGRAM) as db:
            db.ensure_schema()
        return scheduler.run_forever()
    except ConfigurationError as exc:
        logger.error("configuration error: %s", exc)
        return 2
    except TradingError as exc:
        logger.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
