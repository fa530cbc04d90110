#!/usr/bin/env python3
"""Health check: is the trading system doing its job? One line per check; the exit status is
the worst result: 0 ok, 1 warning, 2 critical.

    python scripts/health_check.py [--json] [--test-mode]

Checks:

- ``database``: reachable (critical otherwise) and the schema complete (critical on a configured
  database, where the programs refuse to start; a warning on the embedded or test database,
  which the next program run completes).
- ``broker``: the broker's clock answers (critical otherwise); says whether the market is open.
- ``trading_state``: the kill switch (``trading_state``, ``scripts/trading_state.py status``):
  ok while the account and every symbol are ``ACTIVE``; a warning naming each ``REDUCE_ONLY``
  or ``HALTED`` scope with its reason, who set it (a person, or ``breaker:<name>``) and when;
  critical while a ``FLATTEN`` is under way (positions are being closed).
- ``order_executor``, ``order_monitor``, ``position_monitor``: during market hours, each
  program's last successful run (``program_run``) is recent enough: the monitors within twice
  their interval (10 and 20 minutes by default), the executor today once its time plus 30
  minutes has passed. A stale program is a warning. Outside market hours these are ok.
- ``protection``: every open position has live stop orders for its whole quantity
  (``order_execution`` against ``position_tracking``); one that does not is critical. A position
  being closed counts its working exit sell (its stop was canceled for exactly those shares).
- ``orphan_positions``: the broker holds no symbol that no open trade explains (warning).
- ``short_selling``: the broker account is long-only (Alpaca account configuration
  ``no_shorting`` true). An account that allows short selling is a warning: a sell beyond the
  shares held (the system sizes every sell from the broker's position, this is the second line
  of defence) would open a short instead of being refused. A broker without the endpoint
  (404) makes the check say it could not be evaluated (skipped).
- ``recent_runs``: no ``failed`` run in the last 24 hours and no run left ``running`` for more
  than an hour (warning).
- ``notifications``: no message of the last 7 days given up (``failed``) or of unknown
  delivery (``unknown``), none waiting for more than 30 minutes (a service down); a warning
  otherwise. Without ``NOTIFY_URLS`` it says that nothing is sent.

Market time (is the market open, how old is a run) comes from the broker's clock and the
``market_time`` each run recorded, so the check also works against the paper exchange's
simulated clock. With nothing configured it checks the embedded database and paper exchange,
starting them on demand like every program does.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

from config import ScheduleConfig, Settings, load_settings
from db_layer import TradingDB
from trading.broker import Broker
from trading.errors import ConfigurationError, NotFoundError, TradingError
from trading.logs import configure_logging
from trading.market_time import EASTERN, MarketTime, read_market_time, to_eastern
from trading.program import register_raw_secrets, register_secrets
from trading.protection import ProtectionView
from trading.state import ACCOUNT_SCOPE, TradingMode, read_trading_state

OK, WARNING, CRITICAL, SKIPPED = "ok", "warning", "critical", "skipped"
SEVERITY = {OK: 0, SKIPPED: 0, WARNING: 1, CRITICAL: 2}
LABEL = {OK: "OK", WARNING: "WARN", CRITICAL: "CRIT", SKIPPED: "SKIP"}
#: The executor is late when it has not succeeded this long after its scheduled time.
EXECUTOR_GRACE = dt.timedelta(minutes=30)
FAILED_RUN_WINDOW = dt.timedelta(hours=24)
STUCK_RUN_AFTER = dt.timedelta(hours=1)
UNDELIVERED_WINDOW = dt.timedelta(days=7)
NOTIFICATION_LATE_AFTER = dt.timedelta(minutes=30)

LAST_SUCCESS_SQL = """
    SELECT max(coalesce(market_time, finished_at)) AS at FROM program_run
    WHERE program = %s AND outcome IN ('success', 'warning') AND error IS NULL
"""


@dataclasses.dataclass(frozen=True)
class Check:
    """The result of one check."""

    name: str
    status: str
    message: str

    def line(self) -> str:
        return f"{LABEL[self.status]:<4}  {self.name:<17} {self.message}"


def overall(checks: Sequence[Check]) -> int:
    """The exit status: the worst check (0 ok, 1 warning, 2 critical)."""
    return max((SEVERITY[check.status] for check in checks), default=0)


def _age(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


# --------------------------------------------------------------------------- the checks


def check_database(db: TradingDB) -> Check:
    """Reachable, and every table and column of the contract present."""
    try:
        db.connect()
        db.execute_one("SELECT 1 AS ok")
        missing = db.missing_schema()
    except TradingError as exc:
        return Check("database", CRITICAL, f"unreachable: {exc}")
    if missing:
        lacks = f"{', '.join(missing[:5])}{' and more' if len(missing) > 5 else ''}"
        if db.config.embedded or db.test_mode:
            return Check("database", WARNING, f"reachable ({db.config.describe()}); the schema lacks {lacks}: the next "
                                              "program run creates it")
        return Check("database", CRITICAL, f"reachable ({db.config.describe()}) but the schema lacks {lacks}: the "
                                           "programs refuse to start; run scripts/create_production_tables.py")
    return Check("database", OK, f"reachable ({db.config.describe()})")


def check_trading_state(db: TradingDB) -> Check:
    """The kill switch as the programs read it at the start of their runs."""
    restricted = read_trading_state(db).restricted_scopes()
    if not restricted:
        return Check("trading_state", OK, "ACTIVE: entries, exits and protection all allowed")
    parts = []
    for scope in restricted:
        where = "account" if scope.scope == ACCOUNT_SCOPE else scope.scope
        since = f" since {to_eastern(scope.changed_at):%Y-%m-%d %H:%M} ET" if scope.changed_at else ""
        by = scope.source if scope.source and scope.source != "manual" else scope.changed_by
        parts.append(f"{where} {scope.mode.value}{since}" + (f" by {by}" if by else "")
                     + (f": {scope.reason}" if scope.reason else ""))
    status = CRITICAL if any(scope.mode is TradingMode.FLATTEN for scope in restricted) else WARNING
    return Check("trading_state", status, "; ".join(parts) + " (resume: scripts/trading_state.py resume --reason ...)")


def check_broker(broker: Broker) -> tuple[Check, MarketTime | None]:
    """The broker's clock (and calendar) answer; the market time for the other checks."""
    try:
        market = read_market_time(broker)
    except TradingError as exc:
        return Check("broker", CRITICAL, f"unreachable: {exc}"), None
    describe = getattr(broker, "describe", lambda: "broker")()
    return Check("broker", OK, f"reachable ({describe}); market {'open' if market.is_open else 'closed'}, "
                               f"{to_eastern(market.now):%Y-%m-%d %H:%M} ET"), market


def _last_success(db: TradingDB, program: str) -> dt.datetime | None:
    row = db.execute_one(LAST_SUCCESS_SQL, (program,))
    return row["at"] if row else None


def _at(market: MarketTime, at: dt.time) -> dt.datetime:
    return EASTERN.localize(dt.datetime.combine(market.trading_date, at))


def check_cadence(db: TradingDB, market: MarketTime, schedule: ScheduleConfig) -> list[Check]:
    """Each program's last successful run, judged by its cadence during market hours."""
    checks = []
    now = market.now
    in_hours = market.is_open and market.session is not None
    for program, interval in (("order_monitor", schedule.order_monitor_interval_minutes),
                              ("position_monitor", schedule.position_monitor_interval_minutes)):
        last = _last_success(db, program)
        seen = f"last success {_age(now - last)} ago" if last else "no successful run yet"
        allowed = dt.timedelta(minutes=2 * interval)
        if not in_hours:
            checks.append(Check(program, OK, f"outside the trading session; {seen}"))
            continue
        assert market.session is not None
        started = max(market.session.open, _at(market, schedule.session_start))
        if now - started < allowed:
            checks.append(Check(program, OK, f"session started {_age(now - started)} ago; {seen}"))
        elif last is None or now - last > allowed:
            checks.append(Check(program, WARNING, f"{seen}; it runs every {interval} min in the session (warning "
                                                  f"after {2 * interval} min): is the scheduler running?"))
        else:
            checks.append(Check(program, OK, f"{seen} (every {interval} min)"))

    last = _last_success(db, "order_executor")
    due = _at(market, schedule.executor_time)
    ran_today = last is not None and to_eastern(last).date() == market.trading_date
    seen = f"last success {to_eastern(last):%Y-%m-%d %H:%M} ET" if last else "no successful run yet"
    if in_hours and now >= due + EXECUTOR_GRACE and not ran_today:
        checks.append(Check("order_executor", WARNING, "has not run successfully today (due "
                                                       f"{schedule.executor_time:%H:%M} ET); {seen}: is the scheduler "
                                                       "running?"))
    else:
        checks.append(Check("order_executor", OK, seen))
    return checks


def check_protection(db: TradingDB) -> Check:
    """Every open position covered by live stop orders for its whole quantity."""
    trades = db.query("trade_journal", {"status": "POSITION"}, order_by="id")
    if not trades:
        return Check("protection", OK, "no open positions")
    ids = [trade["id"] for trade in trades]
    positions = {row["trade_journal_id"]: row for row in db.query("position_tracking", {"trade_journal_id": ids})}
    orders: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in db.query("order_execution", {"trade_journal_id": ids}, order_by="id"):
        orders[row["trade_journal_id"]].append(row)
    unprotected, over, closing = [], [], []
    for trade in trades:
        view = ProtectionView(trade, positions.get(trade["id"]), orders[trade["id"]])
        # A trade being closed has its stop canceled for exactly the exit's shares (Alpaca refuses a
        # second sell of the same shares): the working exit sell covers them (trading/exits.py).
        exiting = view.exit_qty
        if view.position is None:
            unprotected.append(f"trade {trade['id']} {trade['symbol']} has no position_tracking row")
        elif exiting and view.stop_qty + exiting >= view.position_qty:
            closing.append(f"trade {trade['id']} {trade['symbol']}")
        elif view.stop_qty < view.position_qty:
            unprotected.append(f"trade {trade['id']} {trade['symbol']}: {view.position_qty:f} shares, live stops "
                               f"cover {view.stop_qty:f}")
        elif view.stop_qty > view.position_qty:
            over.append(f"trade {trade['id']} {trade['symbol']}: stops cover {view.stop_qty:f} of "
                        f"{view.position_qty:f} shares")
    if unprotected:
        return Check("protection", CRITICAL, "unprotected: " + "; ".join(unprotected) +
                     " (order_monitor repairs protection on its next run)")
    if over:
        return Check("protection", WARNING, "more stop than shares: " + "; ".join(over))
    being_closed = f" ({len(closing)} being closed by its exit order: {', '.join(closing)})" if closing else ""
    return Check("protection", OK, f"{len(trades)} open position{'s' if len(trades) != 1 else ''}, all protected"
                 + being_closed)


def check_orphans(db: TradingDB, broker: Broker) -> Check:
    """Broker positions that no open trade explains."""
    try:
        held = broker.list_positions()
    except TradingError as exc:
        return Check("orphan_positions", WARNING, f"could not list the broker's positions: {exc}")
    known = {row["symbol"] for row in db.query("trade_journal", {"status": ["POSITION", "ORDERED"]})}
    orphans = [p for p in held if p.symbol not in known]
    if orphans:
        listed = ", ".join(f"{p.symbol} {Decimal(p.qty):f}" for p in orphans)
        return Check("orphan_positions", WARNING, f"the broker holds positions no open trade explains: {listed} "
                                                  "(never adopted nor sold by the system: an operator decides)")
    return Check("orphan_positions", OK, f"{len(held)} broker position{'s' if len(held) != 1 else ''}, all known")


SHORTING_OFF_HOWTO = ("turn it off: PATCH /v2/account/configurations {\"no_shorting\": true}, or in Alpaca's "
                      "dashboard (see docs/paper-trading-validation.md)")


def check_short_selling(broker: Broker) -> Check:
    """The account's ``no_shorting`` configuration: a long-only account refuses a sell beyond the
    shares held instead of opening a short."""
    try:
        configuration = broker.get_account_configurations()
    except NotFoundError:
        return Check("short_selling", SKIPPED, "could not be evaluated: the broker has no account configurations "
                                               "(GET /v2/account/configurations answered 404)")
    except TradingError as exc:
        return Check("short_selling", WARNING, f"could not be evaluated: {exc}")
    if configuration.get("no_shorting") is True:
        return Check("short_selling", OK, "the account is long-only (no_shorting=true)")
    return Check("short_selling", WARNING, f"the account allows short selling (no_shorting="
                                           f"{json.dumps(configuration.get('no_shorting'))}): a sell beyond the "
                                           f"shares held would open a short; {SHORTING_OFF_HOWTO}")


def check_recent_runs(db: TradingDB, wall_now: dt.datetime) -> Check:
    """No failed run in the last 24 hours, no run stuck in ``running``."""
    failed = db.execute_query(
        "SELECT program, count(*) AS n, max(started_at) AS last, "
        "(array_agg(error ORDER BY started_at DESC))[1] AS error FROM program_run "
        "WHERE outcome = 'failed' AND started_at >= %s GROUP BY program ORDER BY program",
        (wall_now - FAILED_RUN_WINDOW,))
    stuck = db.execute_query(
        "SELECT id, program, started_at FROM program_run WHERE outcome = 'running' AND started_at < %s ORDER BY id",
        (wall_now - STUCK_RUN_AFTER,))
    problems = [f"{row['program']} failed {row['n']}x in 24 h (last: {row['error'] or 'no error text'})"
                for row in failed]
    problems += [f"run {row['id']} of {row['program']} started {_age(wall_now - row['started_at'])} ago and never "
                 "finished (process killed?)" for row in stuck]
    if problems:
        return Check("recent_runs", WARNING, "; ".join(problems))
    return Check("recent_runs", OK, "no failed or unfinished runs in the last 24 h")


#: A listener whose heartbeat is older than this is reported as gone (it beats every 15 s).
STREAM_SILENT_AFTER = dt.timedelta(minutes=2)


def check_trade_stream(db: TradingDB, wall_now: dt.datetime) -> Check:
    """The trade-updates listener (trade_stream.py), when one was ever started: connected, beating.

    Optional: without it fills are recorded by the order monitor's polling, only later."""
    rows = db.execute_query("SELECT * FROM stream_status ORDER BY id")
    if not rows:
        return Check("trade_stream", OK, "no listener configured (fills are recorded by polling)")
    row = rows[0]
    seen = (f"last event {_age(wall_now - row['last_event_at'])} ago" if row["last_event_at"] else "no event yet")
    counts = f"{row['events_received']} events, {row['orders_recorded']} orders recorded"
    if row["stopped_at"] is not None and (row["heartbeat_at"] is None or row["stopped_at"] >= row["heartbeat_at"]):
        return Check("trade_stream", WARNING, f"stopped {_age(wall_now - row['stopped_at'])} ago ({counts}); "
                                              "fills wait for the order monitor's polling until it runs again")
    if row["heartbeat_at"] is None or wall_now - row["heartbeat_at"] > STREAM_SILENT_AFTER:
        return Check("trade_stream", WARNING, f"no heartbeat since {row['heartbeat_at']} (process killed?); "
                                              "polling still records every fill")
    if row["connected_since"] is None:
        error = f": {row['last_error']}" if row["last_error"] else ""
        return Check("trade_stream", WARNING, f"running but not connected to the stream{error}")
    return Check("trade_stream", OK, f"connected for {_age(wall_now - row['connected_since'])}; {seen}; {counts}")


def check_notifications(db: TradingDB, settings: Settings, wall_now: dt.datetime) -> Check:
    """Every recent message delivered, or on its way (``notification_outbox``)."""
    rows = db.execute_query(
        "SELECT status, count(*) AS n, min(created_at) AS oldest, "
        "(array_agg(last_error ORDER BY id DESC))[1] AS error FROM notification_outbox "
        "WHERE created_at >= %s GROUP BY status", (wall_now - UNDELIVERED_WINDOW,))
    by_status = {row["status"]: row for row in rows}
    if not settings.notify.urls:
        recorded = sum(int(row["n"]) for row in rows)
        return Check("notifications", OK, f"NOTIFY_URLS is empty: nothing is sent ({recorded} recorded in 7 days)")
    problems = [f"{int(by_status[status]['n'])} {status} (last error: {by_status[status]['error'] or 'none'})"
                for status in ("unknown", "failed") if status in by_status]
    waiting = by_status.get("pending")
    if waiting is not None and waiting["oldest"] < wall_now - NOTIFICATION_LATE_AFTER:
        problems.append(f"{int(waiting['n'])} waiting, the oldest for {_age(wall_now - waiting['oldest'])} "
                        f"(last error: {waiting['error'] or 'none'})")
    if problems:
        return Check("notifications", WARNING, "not delivered: " + "; ".join(problems)
                     + " (SELECT * FROM notification_outbox WHERE status <> 'sent')")
    sent = int(by_status["sent"]["n"]) if "sent" in by_status else 0
    return Check("notifications", OK, f"{settings.notify.describe()}; {sent} sent in 7 days, none undelivered")


def _guarded(name: str, check: Callable[[], Check | list[Check]]) -> list[Check]:
    """A check that cannot be evaluated (a table missing, a query failing) says so as a warning
    instead of ending the health check."""
    try:
        result = check()
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return [Check(name, WARNING, f"could not be checked: {type(exc).__name__}: {first_line}")]
    return result if isinstance(result, list) else [result]


def run_checks(settings: Settings, *, connect_db: Callable[[], TradingDB], connect_broker: Callable[[], Broker],
               wall_now: dt.datetime | None = None) -> list[Check]:
    """Every check, in order; a part that cannot be reached marks the checks needing it as skipped."""
    wall_now = wall_now or dt.datetime.now(dt.UTC)
    checks: list[Check] = []
    db: TradingDB | None = None
    try:
        db = connect_db()
        database = check_database(db)
        checks.append(database)
        db_ok = database.status != CRITICAL
        checks.extend(_guarded("trading_state", lambda: check_trading_state(db)) if db_ok
                      else [Check("trading_state", SKIPPED, "not checked: database unavailable")])
        broker: Broker | None
        try:
            broker = connect_broker()
        except TradingError as exc:
            checks.append(Check("broker", CRITICAL, f"unreachable: {exc}"))
            broker = None
        market = None
        if broker is not None:
            broker_check, market = check_broker(broker)
            checks.append(broker_check)
        skip_db = "not checked: database unavailable"
        skip_broker = "not checked: broker unreachable"
        if db_ok and market is not None:
            checks.extend(_guarded("schedule", lambda: check_cadence(db, market, settings.schedule)))
        else:
            for name in ("order_monitor", "position_monitor", "order_executor"):
                checks.append(Check(name, SKIPPED, skip_db if not db_ok else skip_broker))
        checks.extend(_guarded("protection", lambda: check_protection(db)) if db_ok
                      else [Check("protection", SKIPPED, skip_db)])
        if db_ok and broker is not None and market is not None:
            checks.extend(_guarded("orphan_positions", lambda: check_orphans(db, broker)))
        else:
            checks.append(Check("orphan_positions", SKIPPED, skip_db if not db_ok else skip_broker))
        if broker is not None and market is not None:
            checks.extend(_guarded("short_selling", lambda: check_short_selling(broker)))
        else:
            checks.append(Check("short_selling", SKIPPED, skip_broker))
        checks.extend(_guarded("trade_stream", lambda: check_trade_stream(db, wall_now)) if db_ok
                      else [Check("trade_stream", SKIPPED, skip_db)])
        checks.extend(_guarded("recent_runs", lambda: check_recent_runs(db, wall_now)) if db_ok
                      else [Check("recent_runs", SKIPPED, skip_db)])
        checks.extend(_guarded("notifications", lambda: check_notifications(db, settings, wall_now)) if db_ok
                      else [Check("notifications", SKIPPED, skip_db)])
    finally:
        if db is not None:
            db.close()
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="health_check.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the result as JSON (status, exit_code, checks)")
    parser.add_argument("--test-mode", action="store_true",
                        help="check the test database (TEST_DATABASE_URL or the embedded test database); never a "
                             "live account")
    args = parser.parse_args(argv)
    configure_logging("ERROR", "health_check")
    register_raw_secrets()
    try:
        settings = load_settings(test_mode=args.test_mode)
    except ConfigurationError as exc:
        checks = [Check("configuration", CRITICAL, str(exc))]
    else:
        register_secrets(settings)

        def connect_broker() -> Broker:
            from alpaca_client import connect_broker as connect

            return connect(settings.alpaca, test_mode=args.test_mode)

        checks = run_checks(settings, connect_db=lambda: TradingDB(args.test_mode, settings.postgres,
                                                                   application_name="health_check"),
                            connect_broker=connect_broker)
    code = overall(checks)
    if args.json:
        status = {0: OK, 1: WARNING, 2: CRITICAL}[code]
        print(json.dumps({"status": status, "exit_code": code,
                          "checks": [dataclasses.asdict(check) for check in checks]}, indent=2))
    else:
        for check in checks:
            print(check.line())
    return code


if __name__ == "__main__":
    sys.exit(main())
