"""What the three programs share: one run under its advisory lock, recorded in ``program_run``.

A program is a class with ``name`` and ``execute(ctx)``. ``ProgramRunner.run()``:

1. takes the program's advisory lock (a second run at the same time logs a line and returns a
   ``skipped`` summary: two schedulers on one database never run the same job twice);
2. writes a ``program_run`` row (``running``), reads the market time from the broker once
   (unless the caller passed one: tests drive time that way), checks the circuit breakers
   (``trading.breakers``; a trip applies to this run), then reads the trading state
   (``trading.state``) once: the body obeys the state as read here for the whole run;
3. runs the body; per-item failures are the body's business (recorded, batch continues);
   a transient failure (broker or database outage) ends the run early with ``warning``;
   anything unexpected ends it with ``failed``; a configuration error stops it;
4. closes the ``program_run`` row with the outcome, counts and error; the counts include the
   broker and database errors the run met (``broker_errors``, ``database_errors``), which the
   error breakers add up across runs and processes;
5. sends the notifications the run (or any earlier one) left in the outbox, after its commits
   and within a short bounded time (``trading.notify``): a failed run is itself one (the first
   of a series of failures), and so is a series of ``NOTIFY_SKIPPED_RUNS`` runs skipped in a
   row for a held lock (counted in the process: the scheduler's).

Every log line of a run carries its ``program_run`` id (``run_id``, see ``trading.logs``).

The command line of each program is ``main_for(...)``: ``--test-mode`` (test database, never a
live account), ``--log-level``, and the program's own options.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import socket
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from config import Settings, load_settings, notify_url_secrets, raw_secrets
from trading import audit
from trading.audit import Auditor
from trading.breakers import Breakers, LossAtStake
from trading.broker import Account, Broker
from trading.errors import ConfigurationError, TradingError, TransientError
from trading.logs import FORMATS as LOG_FORMATS
from trading.logs import bind_log_fields, configure_logging, register_secret, reset_log_fields
from trading.market_time import MarketTime, StoredCalendar, read_market_time
from trading.notify import NotificationKind, deliver_notifications, record_notification
from trading.state import TradingState, read_trading_state

logger = logging.getLogger(__name__)

#: What a run skipped on the program's lock says (printed, in --json, in the scheduler's log).
SKIPPED_ON_LOCK = "another run holds the lock"


@dataclass
class RunSummary:
    """What one run did: counts by outcome, the run's outcome and notes for the operator."""

    program: str
    outcome: str = "success"
    counts: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    run_id: int | None = None
    broker_calls: int = 0
    market_time: dt.datetime | None = None
    #: Why a ``skipped`` run did nothing (another run holds the lock).
    skipped_because: str | None = None

    def add(self, key: str, amount: int = 1) -> None:
        if amount:
            self.counts[key] += amount

    def warn(self, note: str) -> None:
        """Something an operator should look at; the run ends as ``warning``."""
        self.notes.append(note)
        if self.outcome == "success":
            self.outcome = "warning"

    def as_dict(self) -> dict[str, Any]:
        return {"program": self.program, "outcome": self.outcome, "counts": dict(self.counts),
                "notes": self.notes, "error": self.error, "run_id": self.run_id, "broker_calls": self.broker_calls,
                "skipped_because": self.skipped_because}

    def line(self) -> str:
        if self.outcome == "skipped":  # it did nothing because it could not, not because there was nothing
            return f"{self.program}: skipped: {self.skipped_because or 'not run'}"
        counts = ", ".join(f"{key}={value}" for key, value in sorted(self.counts.items())) or "nothing to do"
        return f"{self.program}: {self.outcome} ({counts})" + (f" error: {self.error}" if self.error else "")


class DatabaseLike(Protocol):
    def insert(self, table: str, values: dict[str, Any]) -> int: ...
    def update(self, table: str, row_id: int, values: dict[str, Any]) -> int: ...
    def advisory_lock(self, name: str) -> Any: ...


@dataclass
class RunContext:
    """Everything a program's body needs for one run."""

    db: Any
    broker: Broker
    settings: Settings
    market: MarketTime
    audit: Auditor
    summary: RunSummary
    dry_run: bool = False
    #: The trading state read once at the start of the run (trading/state.py); every program obeys it.
    state: TradingState = field(default_factory=TradingState)
    #: The broker account if the breakers read it at the start of the run (else None: read it).
    account: Account | None = None

    @property
    def now(self) -> dt.datetime:
        return self.market.now


class ProgramBody(Protocol):
    name: str

    def execute(self, ctx: RunContext) -> None: ...


#: Runs skipped in a row for a held lock, per program, in this process, with the program's last
#: ``finished_at`` when the series began (a run finishing since starts a new series).
_SKIPS_IN_A_ROW: dict[str, tuple[int, dt.datetime | None]] = {}


def wall_clock() -> dt.datetime:
    """The machine's time in UTC (used only for program_run bookkeeping, never for market decisions)."""
    return dt.datetime.now(dt.UTC)


class ProgramRunner:
    """Runs one program body once, with the lock, the run record and the error policy."""

    def __init__(self, body: ProgramBody, db: Any, broker: Broker, settings: Settings, *,
                 clock: Callable[[], MarketTime] | None = None, dry_run: bool = False) -> None:
        self.body = body
        self.db = db
        self.broker = broker
        self.settings = settings
        # The clock from the broker every run; today's calendar entry from the database's copy.
        self.clock = clock or (lambda: read_market_time(broker, StoredCalendar(db, broker)))
        self.dry_run = dry_run

    def run(self) -> RunSummary:
        name = self.body.name
        summary = RunSummary(program=name)
        calls_before = self.broker.calls.total
        broker_errors_before = self.broker.calls.error_total
        database_errors_before = getattr(self.db, "error_count", 0)
        with self.db.advisory_lock(name) as taken:
            if not taken:
                logger.info("%s: skipped: another run holds the lock; this run exits without doing anything", name)
                summary.outcome = "skipped"
                summary.skipped_because = SKIPPED_ON_LOCK
                if not self.dry_run:
                    self._record_skip(name)
                    self._deliver(summary)
                return summary
            if self.dry_run:
                return self._run_body(summary, None)
            _SKIPS_IN_A_ROW.pop(name, None)
            self._close_abandoned_runs(name)
            run_id = self.db.insert("program_run", {"program": name, "started_at": wall_clock(), "outcome": "running",
                                                    "host": socket.gethostname(), "pid": os.getpid()})
            summary.run_id = run_id
            token = bind_log_fields(run_id=run_id)
            try:
                try:
                    self._run_body(summary, run_id)
                finally:
                    summary.broker_calls = self.broker.calls.total - calls_before
                    # What the error breakers count (trading/breakers.py), across processes.
                    summary.add("broker_errors", self.broker.calls.error_total - broker_errors_before)
                    summary.add("database_errors", getattr(self.db, "error_count", 0) - database_errors_before)
                    self._finish(summary)
            finally:
                reset_log_fields(token)
        # After the run's commits and outside its lock: a slow service never holds up the next run.
        token = bind_log_fields(run_id=run_id)
        try:
            self._deliver(summary)
        finally:
            reset_log_fields(token)
        return summary

    def _deliver(self, summary: RunSummary) -> None:
        """Send the outbox (never fails the run: a service that is down leaves its rows undelivered)."""
        try:
            report = deliver_notifications(self.db, self.settings.notify)
        except Exception as exc:  # the run's own work is done and committed; the next run sends
            logger.warning("%s: notifications not sent this run (%s: %s); the next run sends them",
                           self.body.name, type(exc).__name__, exc)
            summary.notes.append(f"notifications not sent: {type(exc).__name__}")
            return
        if report.retry or report.failed or report.unknown or report.skipped:
            summary.notes.append(report.line())

    def _record_skip(self, name: str) -> None:
        """Count the skip; the ``NOTIFY_SKIPPED_RUNS``-th skip in a row with no run of the program
        finishing in between tells the operator (a run may be stuck holding the lock). A standby
        scheduler whose twin keeps winning the lock never counts up: the twin's runs finish.
        Counted in this process (the scheduler's, which runs every job), so a skipped run writes
        nothing unless it tells: a rerun with nothing to do changes nothing."""
        try:
            row = self.db.execute_one("SELECT max(finished_at) AS last FROM program_run WHERE program = %s", (name,))
            last = row["last"] if row else None
            count, seen = _SKIPS_IN_A_ROW.get(name, (0, last))
            count = count + 1 if seen == last else 1
            _SKIPS_IN_A_ROW[name] = (count, last)
            if count != self.settings.notify.skipped_runs_alert:
                return
            record_notification(
                self.db, NotificationKind.RUNS_SKIPPED, f"{name}: {count} runs in a row skipped",
                f"{count} runs of {name} in a row found its lock held by another run and did nothing, and no run "
                "finished meanwhile" + (f"; the last finished at {last:%Y-%m-%d %H:%M:%S} UTC" if last else "")
                + ". A run may be stuck: see program_run and pg_locks.", program=name)
        except TradingError as exc:
            logger.warning("%s: could not count the skipped run: %s", name, exc)

    def _close_abandoned_runs(self, name: str) -> None:
        """Runs still marked ``running`` died without finishing: holding the lock proves no other
        run of this program is alive, so they are closed as failed for the health check."""
        with self.db.transaction():
            abandoned = self.db.execute_query(
                "UPDATE program_run SET outcome = 'failed', finished_at = %s, "
                "error = 'the run ended without finishing (process killed or crashed)' "
                "WHERE program = %s AND outcome = 'running' RETURNING id", (wall_clock(), name))
            if abandoned:
                ids = ", ".join(str(row["id"]) for row in abandoned)
                record_notification(self.db, NotificationKind.RUN_FAILED,
                                    f"{name}: {len(abandoned)} run(s) died without finishing",
                                    f"program_run {ids} of {name} ended without finishing (process killed or "
                                    "crashed); the next runs repair anything half done", program=name,
                                    run_id=int(abandoned[-1]["id"]))
        if abandoned:
            logger.warning("%s: %s earlier run(s) had died without finishing; marked failed", name, len(abandoned))

    def _run_body(self, summary: RunSummary, run_id: int | None) -> RunSummary:
        name = self.body.name
        auditor = Auditor(self.db, name, run_id)
        try:
            market = self.clock()
            summary.market_time = market.now
            summary.notes.append(f"market time {market.describe()}")
            account: Account | None = None
            if run_id is not None and not self.dry_run:
                # The breakers first: a trip applies to this very run.
                breakers = Breakers(self.db, self.settings, auditor, warn=summary.warn)
                breakers.check_at_start(self.broker, market, wall_clock(),
                                        loss_when=getattr(self.body, "loss_breaker_at_start", LossAtStake.SHARES_HELD))
                account = breakers.account
            state = read_trading_state(self.db)
            if state.restricted_scopes():
                summary.notes.append(f"trading state {state.summary()}")
                logger.info("%s: trading state %s", name, state.summary())
            ctx = RunContext(self.db, self.broker, self.settings, market, auditor, summary, self.dry_run, state,
                             account)
            self.body.execute(ctx)
        except ConfigurationError as exc:
            summary.outcome, summary.error = "failed", str(exc)
            logger.error("%s: configuration error: %s", name, exc)
        except TransientError as exc:
            # An outage ends the run early; what was committed stays, the next run continues.
            summary.outcome, summary.error = "warning", str(exc)
            logger.warning("%s: run ended early, will retry next cycle: %s", name, exc)
            if run_id is not None and not self.dry_run:
                self._record_abort(auditor, exc)
        except Exception as exc:
            summary.outcome, summary.error = "failed", f"{type(exc).__name__}: {exc}"
            logger.exception("%s: run failed", name)
            if run_id is not None and not self.dry_run:
                self._record_abort(auditor, exc)
        return summary

    def _record_abort(self, auditor: Auditor, exc: BaseException) -> None:
        try:
            auditor.record("program", auditor.run_id, audit.RUN_ABORTED, reason=f"{type(exc).__name__}: {exc}")
        except TradingError:
            logger.warning("could not record the aborted run in the audit table (database unavailable)")

    def _finish(self, summary: RunSummary) -> None:
        if summary.run_id is None:
            return
        values = {"finished_at": wall_clock(), "outcome": summary.outcome, "counts": dict(summary.counts),
                  "error": summary.error, "market_time": summary.market_time}
        try:
            with self.db.transaction():
                self.db.update("program_run", summary.run_id, values)
                if summary.outcome == "failed":
                    record_run_failure(self.db, self.body.name, summary.run_id, summary.error)
        except TradingError as exc:
            logger.warning("%s: could not close program_run %s: %s", self.body.name, summary.run_id, exc)


def record_run_failure(db: Any, program: str, run_id: int, error: str | None) -> int | None:
    """The "run failed" message, for the first failure of a series (the runs before it did not
    fail): an operator is told once per incident, not every five minutes; every failed run stays
    in ``program_run`` and in the end-of-day report. Call it in the transaction that records the run."""
    previous = db.execute_one("SELECT outcome FROM program_run WHERE program = %s AND id < %s AND outcome <> 'running' "
                              "ORDER BY id DESC LIMIT 1", (program, run_id))
    if previous is not None and previous["outcome"] == "failed":
        return None
    return record_notification(db, NotificationKind.RUN_FAILED, f"{program}: run {run_id} failed",
                               f"program_run {run_id} of {program} failed: {error or 'no error recorded'}",
                               program=program, run_id=run_id)


def fixed_clock(market: MarketTime) -> Callable[[], MarketTime]:
    """A clock that always answers ``market`` (tests and the scheduler's simulated day)."""
    return lambda: market


# --------------------------------------------------------------------------- command line


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every program has."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-mode", action="store_true",
                        help="use the test database (TEST_DATABASE_URL or the embedded test database); "
                             "never reaches a live account")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="override LOG_LEVEL for this run")
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON")
    return parser


def exit_code(summary: RunSummary) -> int:
    """0 success or skipped, 1 warning, 2 failed."""
    return {"success": 0, "skipped": 0, "warning": 1}.get(summary.outcome, 2)


def start(prog: str, *, test_mode: bool, log_level: str | None) -> Settings | None:
    """What every entry point does first: read and validate the settings, configure logging once,
    register the real secrets with the log scrubber. Returns None after logging a configuration
    error (the caller exits 2)."""
    register_raw_secrets()  # first: the configuration error below may quote the environment
    try:
        settings = load_settings(test_mode=test_mode)
    except ConfigurationError as exc:
        wanted = (os.environ.get("LOG_FORMAT") or "text").strip().lower()
        configure_logging("INFO", prog, wanted if wanted in LOG_FORMATS else "text")
        logger.error("configuration error: %s", exc)
        return None
    configure_logging(log_level or settings.log_level, prog, settings.log_format)
    register_secrets(settings)
    return settings


def register_raw_secrets() -> None:
    """Give the log scrubber every secret as written in the environment, before it is validated."""
    for value in raw_secrets():
        register_secret(value)


def register_secrets(settings: Settings) -> None:
    """Give the log scrubber every real secret of ``settings`` (the local exchange's placeholder
    keys are not secrets, and scrubbing them would mask ordinary words in every line)."""
    if settings.alpaca.mode in ("paper", "live"):
        register_secret(settings.alpaca.api_key.reveal())
        register_secret(settings.alpaca.secret_key.reveal())
    register_secret(settings.postgres.password.reveal())
    for url in settings.notify.urls:
        for piece in notify_url_secrets(url.reveal()):
            register_secret(piece)


class Runnable(Protocol):
    def run(self) -> RunSummary: ...


def open_program(prog: str, description: str, argv: Sequence[str] | None = None,
                 add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                 ) -> tuple[argparse.Namespace, Settings, Any] | None:
    """What every entry point does before its work: parse the command line, read the settings
    and configure logging (``start``), log the configuration (secrets redacted) and make the
    program's database handle (not yet connected). None after a configuration error (exit 2)."""
    from db_layer import TradingDB

    parser = build_parser(prog, description)
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    settings = start(prog, test_mode=args.test_mode, log_level=args.log_level)
    if settings is None:
        return None
    logger.info("configuration: %s", json.dumps(settings.describe(), sort_keys=True))
    return args, settings, TradingDB(test_mode=args.test_mode, config=settings.postgres, application_name=prog)


def main_for(prog: str, description: str,
             make_program: Callable[[Any, Broker, Settings, argparse.Namespace], Runnable],
             argv: Sequence[str] | None = None,
             add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Parse the command line, connect, run the program once, print its summary."""
    from alpaca_client import connect_broker

    opened = open_program(prog, description, argv, add_arguments)
    if opened is None:
        return 2
    args, settings, db = opened
    try:
        db.connect()
        db.ensure_schema()
        broker = connect_broker(settings.alpaca, test_mode=args.test_mode)
        logger.info("broker: %s", broker.describe())
        summary = make_program(db, broker, settings, args).run()
    except ConfigurationError as exc:
        logger.error("configuration error: %s", exc)
        return 2
    except TransientError as exc:
        logger.warning("could not start: %s", exc)
        return 1
    finally:
        db.close()
    if args.json:
        print(json.dumps(summary.as_dict(), sort_keys=True, default=str))
    else:
        print(summary.line())
        for note in summary.notes:
            print(f"  {note}")
    sys.stdout.flush()
    return exit_code(summary)
