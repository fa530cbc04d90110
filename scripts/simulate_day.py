#!/usr/bin/env python3
"""A simulated trading day: the whole system on a fresh machine, in about ten seconds.

    .venv/bin/python scripts/simulate_day.py [--date 2026-11-20] [--seed 42]      # or: make demo

What happens:

1. The embedded PostgreSQL starts (data under ``var/postgres``) and the database
   ``trading_monitor_demo`` is emptied (schema created if missing). Nothing else is touched.
2. A paper exchange starts in this process with a simulated clock at 09:00 ET of the chosen day
   and seeded random-walk prices (``--seed``: the same seed gives the same day).
3. Sample approved decisions are inserted at 09:00, built around the exchange's opening quotes:
   SWING brackets and DAYTRADE entries that fill, two entries resting below the market, one
   malformed decision and one that nobody approved.
4. The scheduler's own job table (``scheduler.build_job_table``) is asked for its fire times
   over the day; at each one the exchange's clock is moved there and the job runs with the
   scheduler's own job function: executor 09:45, order monitor every 5 minutes, position
   monitor every 10 minutes, the day-trade exit 10 minutes before the close, evening runs.
5. At 11:00 the "upstream workflow" writes a CANCEL for one resting entry, an AMEND for the
   other and a CLOSE of the AAPL position. The executor runs once a day, so the demo adds one
   extra executor run at 12:00 (demo only, marked as such) to show them handled the same day.
   The CLOSE is an *escalating exit* (``EXIT_URGENCY_CLOSE=NORMAL`` in the demo): a limit at the
   mid, walked toward the bid by the order monitor's runs, then a market order.
6. META's bracket has a *trailing stop* (``trailing_stop_pct``): the position monitor raises its
   broker-held stop as the price makes new highs. Each raise and each exit step is a progress line.
7. The trade-updates listener (``trade_stream.py``) runs beside the programs, as in production:
   most fills are in the tables before the next order-monitor run; the summary counts the fills
   recorded by the stream and by polling.
8. A summary table ends the day, and the database stays for SQL inspection.

``--loss-day`` plays the same day with a crash: at 12:30 every price falls 1.5 % at once, a loss
beyond the day's ``DAILY_LOSS_LIMIT`` ($300 for this day). The daily-loss breaker flattens the
account by itself (every open order canceled, every position sold, then HALTED); the
end-of-day report and the notifications (``notification_outbox``) say so.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

from apscheduler.triggers.cron import CronTrigger

from alpaca_client import AlpacaBroker
from config import (
    AlpacaConfig,
    PostgresConfig,
    ScheduleConfig,
    Secret,
    Settings,
    embedded_postgres_config,
    get_monitor_config,
    get_risk_limits,
    get_schedule_config,
    load_environment,
)
from db_layer import TradingDB
from paper_exchange import PaperExchange, start_server
from paper_exchange.calendar import NyseCalendar
from scheduler import PROGRAMS, JobRunner, JobSpec, TradingCalendar, build_job_table, fire_times
from scripts.health_check import run_checks
from trading import schema
from trading.errors import TradingError
from trading.logs import configure_logging
from trading.market_time import EASTERN
from trading.pricing import display_price
from trading.program import RunSummary

DEMO_DB_NAME = "trading_monitor_demo"
DEFAULT_SEED = 42
#: Annual volatility of the random walk: about 2.8 % a day, a lively but plausible session.
VOLATILITY = 0.45
#: Variables of the environment the demo honours: the schedule (so it shows the configured
#: one) and nothing else; the demo never reads database or broker settings.
SCHEDULE_VARIABLES = ("EXECUTOR_TIME", "MONITOR_SESSION_START", "MONITOR_SESSION_END",
                      "ORDER_MONITOR_INTERVAL_MINUTES", "POSITION_MONITOR_INTERVAL_MINUTES",
                      "ORDER_MONITOR_EVENING_TIME", "POSITION_MONITOR_EVENING_TIME",
                      "DAYTRADE_EXIT_MINUTES_BEFORE_CLOSE")
START_OF_DAY = dt.time(9, 0)
UPSTREAM_CHANGES_AT = dt.time(11, 0)
EXTRA_EXECUTOR_AT = dt.time(12, 0)
CENT = Decimal("0.01")
#: --loss-day: the crash's moment and size, and the day's loss limit it goes beyond.
CRASH_AT = dt.time(12, 30)
CRASH_FALL = Decimal("0.015")
LOSS_DAY_LIMIT = Decimal("300")
#: AAPL's spread at 11:00 (the CLOSE's limit at the mid then rests, and its walk shows).
THIN_SPREAD = Decimal("0.003")
#: The demo's exits: the CLOSE walks from the mid (the default, HIGH, sells at the bid at once).
DEMO_MONITOR_SETTINGS = {"EXIT_URGENCY_CLOSE": "NORMAL"}
#: Audit events told as progress lines (the trade's status does not change when they happen).
TOLD_EVENTS = ("STOP_RAISED", "EXIT_STEP", "BREAKER_TRIPPED", "TRADING_STATE_CHANGED")


def eastern(day: dt.date, at: dt.time) -> dt.datetime:
    """``day`` at ``at`` in New York."""
    return EASTERN.localize(dt.datetime.combine(day, at))


def next_trading_day(today: dt.date) -> dt.date:
    """``today`` if the NYSE trades that day, else the next day it does."""
    calendar = NyseCalendar()
    return today if calendar.is_trading_day(today) else calendar.next_trading_day(today)


def demo_postgres_config() -> PostgresConfig:
    """The embedded cluster's demo database (never the configured production database)."""
    return dataclasses.replace(embedded_postgres_config(), dbname=DEMO_DB_NAME)


# --------------------------------------------------------------------------- sample decisions


def _price(value: Decimal) -> Decimal:
    return value.quantize(CENT)


#: The plans whose stop trails the high (the plan key ``trailing_stop_pct``, trading/trailing.py).
TRAILING_PCT = {"META": Decimal("1.5")}
#: (ticker, style, entry vs. the opening mid, stop below entry, target above entry, shares, note)
#: Entries 1 % above the mid fill at the executor's run; entries 3 % below rest all day (within
#: MAX_ENTRY_DRIFT_PCT of the 09:45 quote, so they are placed, not refused as STALE_PLAN).
SAMPLE_PLANS: tuple[tuple[str, str, str, str, str | None, int, str], ...] = (
    ("AAPL", "SWING", "1.01", "0.012", "0.015", 30, "bracket: fills, stop or target may trigger"),
    ("MSFT", "SWING", "1.01", "0.010", "0.012", 15, "bracket: fills, tight exits"),
    ("NVDA", "SWING", "1.01", "0.015", "0.020", 50, "bracket: fills"),
    ("AMD", "SWING", "1.01", "0.012", "0.010", 40, "bracket: fills, close target"),
    ("META", "SWING", "1.01", "0.020", "0.030", 10, "bracket with a trailing stop 1.5 % below the high"),
    ("TSLA", "DAYTRADE", "1.01", "0.030", None, 25, "day trade: flattened before the close"),
    ("AMZN", "DAYTRADE", "1.01", "0.008", None, 30, "day trade: tight stop"),
    ("JPM", "SWING", "0.97", "0.02", "0.05", 20, "rests below the market; CANCEL at 11:00"),
    ("GOOGL", "SWING", "0.97", "0.02", "0.05", 30, "rests below the market; AMEND at 11:00"),
    ("COST", "SWING", "1.01", "0.06", "0.10", 5, "bracket with wide exits: held overnight, protected"),
)


def insert_decision(db: TradingDB, ticker: str | None, action: str, decision: Any, *, approve: bool = True,
                    trade_id: int | None = None, created_at: dt.datetime | None = None) -> int:
    """One ``analysis_decision`` row, as the upstream workflow writes it."""
    row = db.execute_one(
        'INSERT INTO analysis_decision (ticker, primary_action, decision, "Approve", existing_trade_journal_id, '
        "created_at) VALUES (%s, %s, %s, %s, %s, coalesce(%s, now())) RETURNING id",
        (ticker, action, decision, approve, trade_id, created_at))
    assert row is not None
    return int(row["id"])


def seed_decisions(db: TradingDB, broker: AlpacaBroker, now: dt.datetime) -> dict[str, int]:
    """The morning's decisions, priced from the exchange's quotes; returns decision ids by label."""
    quotes = broker.get_latest_quotes([plan[0] for plan in SAMPLE_PLANS])
    ids: dict[str, int] = {}
    for ticker, style, entry_factor, stop_pct, target_pct, qty, _note in SAMPLE_PLANS:
        quote = quotes[ticker]
        mid = (quote.bid + quote.ask) / 2
        # Marketable entries are capped 1 % above the mid but fill at the ask, so their exits are
        # placed around the expected fill (the mid); resting entries' exits around their limit.
        entry = _price(mid * Decimal(entry_factor))
        base = min(entry, mid)
        plan: dict[str, Any] = {"planned_entry": entry, "planned_sl": _price(base * (1 - Decimal(stop_pct))),
                                "trade_style": style, "planned_qty": qty}
        if target_pct is not None:
            plan["planned_tp"] = _price(max(entry, mid) * (1 + Decimal(target_pct)))
        if ticker in TRAILING_PCT:
            plan["trailing_stop_pct"] = TRAILING_PCT[ticker]
        ids[ticker] = insert_decision(db, ticker, "NEW_TRADE", plan, created_at=now)
    # Malformed: the stop is above the entry (a short plan; only long trades are supported).
    ids["malformed"] = insert_decision(db, "NFLX", "NEW_TRADE",
                                       {"planned_entry": "700.00", "planned_sl": "720.00", "planned_tp": "650.00",
                                        "trade_style": "SWING", "planned_qty": 5}, created_at=now)
    # Written upstream but never approved: the executor must leave it alone.
    ids["unapproved"] = insert_decision(db, "KO", "NEW_TRADE",
                                        {"planned_entry": "66.50", "planned_sl": "65.00", "planned_tp": "69.00",
                                         "trade_style": "SWING", "planned_qty": 50}, approve=False, created_at=now)
    return ids


def upstream_changes(db: TradingDB, broker: AlpacaBroker, ids: dict[str, int], now: dt.datetime) -> list[str]:
    """11:00: CANCEL the JPM entry, AMEND the GOOGL entry to buy at the market now, CLOSE AAPL."""
    done: list[str] = []
    trades = {row["initial_analysis_id"]: row for row in db.query("trade_journal")}
    jpm, googl, aapl = trades.get(ids["JPM"]), trades.get(ids["GOOGL"]), trades.get(ids["AAPL"])
    if jpm is not None:
        decision_id = insert_decision(db, "JPM", "CANCEL", {"reason": "thesis no longer valid"}, trade_id=jpm["id"],
                                      created_at=now)
        done.append(f"CANCEL decision {decision_id} for trade {jpm['id']} JPM")
    if googl is not None:
        quote = broker.get_latest_quotes(["GOOGL"])["GOOGL"]
        entry = _price(quote.ask * Decimal("1.005"))
        plan = {"planned_entry": entry, "planned_sl": _price(entry * Decimal("0.985")),
                "planned_tp": _price(entry * Decimal("1.02")), "trade_style": "SWING", "planned_qty": 30}
        decision_id = insert_decision(db, "GOOGL", "AMEND", plan, trade_id=googl["id"], created_at=now)
        done.append(f"AMEND decision {decision_id} for trade {googl['id']} GOOGL: entry {entry}")
    if aapl is not None and aapl["status"] == "POSITION":
        decision_id = insert_decision(db, "AAPL", "CLOSE", {"reason": "take the gain before earnings"},
                                      trade_id=aapl["id"], created_at=now)
        done.append(f"CLOSE decision {decision_id} for trade {aapl['id']} AAPL (an exit that walks from the mid)")
    return done


def thin_market(exchange: PaperExchange, broker: AlpacaBroker, symbol: str, spread: Decimal) -> str:
    """``symbol``'s market thins: the spread widens to ``spread`` around the mid and the quote
    stands still (set by hand), so an exit limit at the mid rests and its walk shows."""
    quote = broker.get_latest_quotes([symbol])[symbol]
    mid = (quote.bid + quote.ask) / 2
    bid, ask = _price(mid * (1 - spread / 2)), _price(mid * (1 + spread / 2))
    exchange.set_quotes({symbol: {"bid": str(bid), "ask": str(ask)}})
    return f"{symbol}'s market thins: bid {bid}, ask {ask} (spread {spread * 100:.2f} %), standing still"


# --------------------------------------------------------------------------- the day


@dataclasses.dataclass
class DayResult:
    """What the simulated day did (also in the database)."""

    day: dt.date
    seed: int
    runs: Counter[str]
    outcomes: Counter[str]
    wall_seconds: float
    decision_ids: dict[str, int]
    database: PostgresConfig
    #: Fills booked (``ORDER_FILL`` audit rows), by the listener and by polling together.
    fills_recorded: int = 0


def reset_database(config: PostgresConfig) -> None:
    """Create the schema if missing and empty every table (ids restart at 1)."""
    with TradingDB(config=config, application_name="simulate_day") as db:
        db.create_schema()
        db.execute_update(f"TRUNCATE {', '.join(table.name for table in schema.TABLES)} RESTART IDENTITY")


#: Counts every run reports; a run with nothing else gets no progress line (it is only counted).
ROUTINE_COUNTS = frozenset({"broker_orders_listed", "open_orders", "protection_protected", "positions", "revalued",
                            "decisions"})


def _interesting(spec: JobSpec, summary: RunSummary) -> bool:
    """Whether a run gets a progress line: it changed something, was not clean, or is one of the
    day's landmarks (executor runs, the day-trade exit)."""
    if spec.program == "order_executor" or spec.id == "daytrade_exit" or summary.outcome not in ("success", "skipped"):
        return True
    return any(value and key not in ROUTINE_COUNTS for key, value in summary.counts.items())


class TradeWatcher:
    """Tells what happened to each trade since the last look (for the progress lines)."""

    def __init__(self, db: TradingDB) -> None:
        self.db = db
        self.seen: dict[int, tuple[str, Any]] = {}
        self.last_event = 0

    def changes(self) -> list[str]:
        lines = []
        # The raises of trailing stops, the steps of exits, the breakers and the trading state.
        for event in self.db.execute_query(
                "SELECT id, event, entity_id, symbol, reason FROM audit_event WHERE id > %s AND event = ANY(%s) "
                "ORDER BY id", (self.last_event, list(TOLD_EVENTS))):
            self.last_event = int(event["id"])
            about = f"trade {event['entity_id']} {event['symbol']}: " if event["event"] in TOLD_EVENTS[:2] else ""
            lines.append(f"{about}{event['event'].lower().replace('_', ' ')}: {event['reason']}")
        for trade in self.db.query("trade_journal", order_by="id"):
            # A partial entry fill (status still ORDERED, actual_qty growing) is news too, and so
            # is an exit starting (exit_urgency set while still a POSITION).
            state = (trade["status"], trade["actual_qty"], trade["exit_urgency"])
            if self.seen.get(trade["id"]) == state:
                continue
            was = self.seen.get(trade["id"])
            self.seen[trade["id"]] = state
            head = f"trade {trade['id']} {trade['symbol']} {trade['trade_style']}"
            if trade["status"] == "ORDERED" and trade["actual_qty"]:
                lines.append(f"{head}: entry filled {Decimal(trade['actual_qty']):.0f} of "
                             f"{Decimal(trade['planned_qty'] or 0):.0f} @ {display_price(trade['actual_entry'])}, "
                             "the rest still working")
            elif trade["status"] == "ORDERED":
                lines.append(f"{head}: entry working, limit {display_price(trade['planned_entry'])} x "
                             f"{Decimal(trade['planned_qty'] or 0):.0f}")
            elif trade["status"] == "POSITION" and trade["exit_urgency"] and (was is None or not was[2]):
                exits = self.db.query("order_execution", {"trade_journal_id": trade["id"], "order_type": "EXIT"},
                                      order_by="id")
                limit = exits[-1]["limit_price"] if exits else None
                lines.append(f"{head}: closing, a {trade['exit_urgency']} exit: "
                             + (f"limit {display_price(limit)} first" if limit is not None else "market order"))
            elif trade["status"] == "POSITION":
                if was is not None and was[0] == "POSITION" and was[1] == trade["actual_qty"]:
                    continue  # (an exit step: told from its audit row)
                if was is not None and was[0] == "POSITION":
                    lines.append(f"{head}: now {Decimal(trade['actual_qty']):.0f} shares")
                    continue
                lines.append(f"{head}: bought {Decimal(trade['actual_qty']):.0f} @ "
                             f"{display_price(trade['actual_entry'])}, stop {display_price(trade['planned_sl'])}"
                             + (f", target {display_price(trade['planned_tp'])}" if trade["planned_tp"] else ""))
            elif trade["status"] == "CLOSED":
                lines.append(f"{head}: closed {trade['exit_reason']} @ {display_price(trade['exit_price'])}, "
                             f"P&L {_money(trade['actual_pnl'])}")
            else:
                lines.append(f"{head}: {trade['status']} ({trade['exit_reason']})")
        return lines


class Listener:
    """The trade-updates listener (trade_stream.py) in a thread of the demo, on its own connection.

    The demo moves a simulated clock; before each program run it waits until the listener has
    recorded every event the exchange published (``settle``), so a seed repeats its day. Fills
    that happen during a run (an exit's wait passes the clock) meet the listener as in
    production: whichever records first, the other finds the row as the broker says it."""

    def __init__(self, server: Any, postgres: PostgresConfig, settings: Settings) -> None:
        from trade_stream import TradeStreamListener

        self.stream = server.stream
        self.db = TradingDB(config=postgres, application_name="trade_stream").connect()
        # No gathering of bursts: the demo's clock stands still while it waits for the listener.
        self.listener = TradeStreamListener(self.db, AlpacaBroker(base_url=server.url, timeout=10), settings,
                                            coalesce_seconds=0.0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.listener.run, args=(self.stop,), name="demo-trade-stream",
                                       daemon=True)
        self.thread.start()
        if not self.listener.connected.wait(10):
            raise TradingError("the trade-updates listener did not connect to the paper exchange's stream")

    def settle(self, timeout: float = 5.0) -> None:
        """Publish what changed and wait until the listener has recorded it."""
        self.stream.publish_changes()
        deadline = time.monotonic() + timeout
        while self.listener.events_handled < self.stream.events_published and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        self.db.close()


def crash(exchange: PaperExchange, broker: AlpacaBroker, fall: Decimal) -> list[str]:
    """Every sample symbol's quote falls by ``fall`` at once (and stays where the crash left it:
    the exchange's simulator leaves a quote set by hand alone)."""
    quotes = broker.get_latest_quotes([plan[0] for plan in SAMPLE_PLANS])
    moved = {symbol: {"bid": str(_price(q.bid * (1 - fall))), "ask": str(_price(q.ask * (1 - fall)))}
             for symbol, q in quotes.items() if q.bid > 0 and q.ask > 0}
    exchange.set_quotes(moved)
    return sorted(moved)


def run_day(day: dt.date, *, seed: int = DEFAULT_SEED, postgres: PostgresConfig,
            schedule: ScheduleConfig | None = None, out: TextIO = sys.stdout,
            volatility: float = VOLATILITY, loss_day: bool = False, stream: bool = True) -> DayResult:
    """Simulate ``day`` on the database ``postgres`` (emptied first) and print its progress.

    ``loss_day``: the crash at 13:00 beyond the day's loss limit (the account flattens itself);
    ``stream``: the trade-updates listener runs beside the programs."""
    started = time.monotonic()
    calendar_rules = NyseCalendar()
    if not calendar_rules.is_trading_day(day):
        raise ValueError(f"{day} is not a trading day")
    write: Callable[[str], None] = lambda text: print(text, file=out, flush=True)  # noqa: E731
    watcher_db: TradingDB | None = None
    listener: Listener | None = None

    reset_database(postgres)
    exchange = PaperExchange(seed=seed, simulated_clock=True, start_time=eastern(day, START_OF_DAY),
                             price_simulation=True, annual_volatility=volatility, history_days=1)
    from paper_exchange.ratelimit import UNTHROTTLED_REQUESTS_PER_MINUTE  # a simulated day is not a program's pace

    server = start_server(exchange=exchange, rate_limit=UNTHROTTLED_REQUESTS_PER_MINUTE,
                          stream_port=0 if stream else None)
    try:
        broker = AlpacaBroker(base_url=server.url, data_url=server.url, timeout=10)
        settings = Settings(
            test_mode=False, postgres=postgres,
            alpaca=AlpacaConfig(Secret("demo"), Secret("demo"), "local", server.url, server.url),
            schedule=schedule or get_schedule_config({k: v for k, v in os.environ.items() if k in SCHEDULE_VARIABLES}),
            risk=get_risk_limits({"DAILY_LOSS_LIMIT": str(LOSS_DAY_LIMIT)} if loss_day else {}),
            monitor=get_monitor_config(DEMO_MONITOR_SETTINGS), log_level="WARNING")
        calendar = TradingCalendar(broker)
        jobs = build_job_table(settings.schedule, calendar)
        # Demo only: a second executor run, for the decisions written upstream at 11:00.
        extra = JobSpec("order_executor (demo extra)", "order_executor",
                        CronTrigger(hour=EXTRA_EXECUTOR_AT.hour, minute=EXTRA_EXECUTOR_AT.minute, timezone=EASTERN),
                        3600, "demo only: a second executor run for the 11:00 CANCEL/AMEND decisions")
        runs: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()

        watcher_db = TradingDB(config=postgres, application_name="simulate_day")
        watcher = TradeWatcher(watcher_db.connect())
        if stream:
            listener = Listener(server, postgres, settings)

        def progress(spec: JobSpec, now: dt.datetime, summary: RunSummary | None, elapsed: float) -> None:
            if summary is None:
                return
            runs[spec.id] += 1
            outcomes[summary.outcome] += 1
            changes = watcher.changes()
            if changes or _interesting(spec, summary):
                counts = ", ".join(f"{k}={v}" for k, v in sorted(summary.counts.items())
                                   if k not in ROUTINE_COUNTS or spec.program == "order_executor") or "nothing to do"
                error = f"  error: {summary.error}" if summary.error else ""
                write(f"{now.astimezone(EASTERN):%H:%M} ET  {spec.id:<27} {summary.outcome:<8} {counts}{error}")
                for line in changes:
                    write(f"{'':>10}{line}")

        # The exchange is as asynchronous as Alpaca (orders answered pending_new, cancels pending_cancel):
        # a program's wait for a cancel or a fill passes the simulated clock instead of real time.
        def sleep(seconds: float) -> None:
            exchange.advance(seconds)
            if listener is not None:
                # What the wait changed (a fill, a completed cancel) reaches the listener before the
                # program goes on, so who records it first is the same at every run of a seed. A
                # listener waiting for a trade lock the program holds gives up after a short while.
                listener.settle(timeout=0.5)

        # (the end-of-day report waits for nothing: it gets no sleep)
        programs = {name: factory if name == "eod_report" else functools.partial(factory, sleep=sleep)
                    for name, factory in PROGRAMS.items()}
        runner = JobRunner(settings, broker, calendar, clock=exchange.now, on_result=progress, programs=programs)
        session = calendar.session(day)
        assert session is not None
        write(f"Simulated trading day {calendar.describe(day)}, seed {seed}, database {postgres.dbname}")
        exit_at = calendar.day_end_exit(day, settings.schedule.daytrade_exit_minutes_before_close)
        write(f"Day-trade exit at {exit_at:%H:%M} ET (from the exchange's calendar)"
              + ("; the trade-updates listener records fills as they happen" if stream else ""))
        if loss_day:
            write(f"Loss day: at {CRASH_AT:%H:%M} ET every price falls {CRASH_FALL * 100:.1f} %; "
                  f"DAILY_LOSS_LIMIT is {_money(LOSS_DAY_LIMIT)} for this day")
        with TradingDB(config=postgres, application_name="simulate_day") as db:
            ids = seed_decisions(db, broker, exchange.now())
        write(f"09:00 ET  {len(ids)} decisions written upstream: {len(SAMPLE_PLANS)} approved NEW_TRADE "
              f"({sum(p[1] == 'DAYTRADE' for p in SAMPLE_PLANS)} DAYTRADE), 1 malformed, 1 not approved")

        start_equity = Decimal(broker.get_account().equity)
        changes_at = eastern(day, UPSTREAM_CHANGES_AT)
        changes_done = False
        crash_at = eastern(day, CRASH_AT) if loss_day else None
        last_hour = START_OF_DAY.hour
        status_due: dt.datetime | None = None
        for moment, spec in fire_times([*jobs, extra], eastern(day, START_OF_DAY), eastern(day, dt.time(23, 59))):
            if status_due is not None and moment > status_due:
                # After every run of that moment (the order monitor has booked its fills), before
                # the clock moves on: the figures are of one moment and add up.
                write(_status_line(status_due, broker, postgres, start_equity))
                status_due = None
            if not changes_done and moment >= changes_at:
                exchange.set_time(max(changes_at, exchange.now()))
                with TradingDB(config=postgres, application_name="simulate_day") as db:
                    for line in upstream_changes(db, broker, ids, exchange.now()):
                        write(f"11:00 ET  upstream: {line}")
                write(f"11:00 ET  market: {thin_market(exchange, broker, 'AAPL', THIN_SPREAD)}")
                changes_done = True
            # An hourly status line while the market trades (and at the close).
            if moment.hour != last_hour and moment.minute == 0 and moment <= session.close:
                last_hour = moment.hour
                status_due = moment
            if crash_at is not None and moment >= crash_at:
                exchange.set_time(max(crash_at, exchange.now()))
                fallen = crash(exchange, broker, CRASH_FALL)
                write(f"{CRASH_AT:%H:%M} ET  crash: {len(fallen)} symbols fall {CRASH_FALL * 100:.1f} % at once")
                crash_at = None
            # A run's waits pass the simulated clock (a cancel's confirmation, an exit's walk), so
            # the clock may already be past a job due at the same minute: it never moves back.
            exchange.set_time(max(moment, exchange.now()))
            if listener is not None:
                listener.settle()
            runner.run(spec)
        if status_due is not None:
            write(_status_line(status_due, broker, postgres, start_equity))
        with TradingDB(config=postgres, application_name="simulate_day") as db:
            booked = db.execute_one("SELECT count(*) AS n FROM audit_event WHERE event = 'ORDER_FILL'")
        result = DayResult(day, seed, runs, outcomes, time.monotonic() - started, ids, postgres,
                           int(booked["n"]) if booked else 0)
        write("")
        write(summary_report(postgres, result))
        write("")
        write(f"Health check at {exchange.now().astimezone(EASTERN):%H:%M} ET (scripts/health_check.py's checks on "
              "this database and exchange):")
        checks = run_checks(settings, connect_db=lambda: TradingDB(config=postgres, application_name="health_check"),
                            connect_broker=lambda: broker)
        for check in checks:
            write(f"  {check.line()}")
        write("")
        for line in next_steps():
            write(line)
        return result
    finally:
        if listener is not None:
            listener.close()
        server.stop()
        if watcher_db is not None:
            watcher_db.close()


ROOT = Path(__file__).resolve().parent.parent


def next_steps(root: Path = ROOT) -> list[str]:
    """Where to go after the demo; ``make console`` only once the checkout has it."""
    lines = ['Next: run the programs yourself, step by step: README.md, "Running the programs by hand".']
    makefile = root / "Makefile"
    if (root / "console").exists() or (makefile.exists() and re.search(r"^console:", makefile.read_text(), re.M)):
        lines.append("Or look at this day in the operator console: make console")
    return lines


def _status_line(moment: dt.datetime, broker: AlpacaBroker, postgres: PostgresConfig, start_equity: Decimal) -> str:
    """An hourly line whose figures are of one moment and add up: equity = the day's starting
    equity + realized + unrealized. Equity and unrealized are the broker's, read now (the
    database's position rows are as old as the last position_monitor run); realized is the
    system's ledger (closed trades' P&L plus partial exits of open ones)."""
    account = broker.get_account()
    positions = broker.list_positions()
    unrealized = sum((p.qty * (p.current_price - p.avg_entry_price) for p in positions
                      if p.current_price is not None), Decimal(0))
    with TradingDB(config=postgres, application_name="simulate_day") as db:
        row = db.execute_one(
            "SELECT coalesce(sum(CASE WHEN status = 'CLOSED' THEN actual_pnl ELSE realized_pnl END), 0) AS realized "
            "FROM trade_journal WHERE status IN ('CLOSED', 'POSITION', 'ORDERED')")
    assert row is not None
    realized = Decimal(row["realized"])
    equity = Decimal(account.equity)
    rest = equity - start_equity - realized - unrealized
    # Fills the broker made that no order_monitor run has booked yet (rare: between two runs).
    other = f", not yet booked {_money(rest)}" if rest.quantize(CENT) else ""
    state = "open" if broker.get_clock().is_open else "closed"
    return (f"{moment.astimezone(EASTERN):%H:%M} ET  -- market {state}, equity ${equity:,.2f} = start "
            f"${start_equity:,.2f} + realized {_money(realized)} + unrealized {_money(unrealized)}{other}; "
            f"{len(positions)} open positions")


def _money(value: Any) -> str:
    amount = Decimal(value or 0).quantize(CENT)
    return f"{'+' if amount >= 0 else '-'}${abs(amount):,.2f}"


# --------------------------------------------------------------------------- the summary


DECISIONS_SQL = """
    SELECT d.id, d.primary_action AS action, d.ticker, d."Approve" AS approved, d.executed,
           d.decision ->> 'trade_style' AS style,
           a.event, a.reason, a.details ->> 'code' AS code,
           t.id AS trade_id, t.status AS trade_status, t.exit_reason, t.actual_pnl
    FROM analysis_decision d
    LEFT JOIN LATERAL (SELECT event, reason, details FROM audit_event
                       WHERE entity_type = 'decision' AND entity_id = d.id ORDER BY id DESC LIMIT 1) a ON true
    LEFT JOIN LATERAL (SELECT * FROM trade_journal WHERE initial_analysis_id = d.id ORDER BY id DESC LIMIT 1) t
           ON true
    ORDER BY d.id
"""


def _decision_outcome(row: dict[str, Any]) -> str:
    if not row["approved"]:
        return "ignored (not approved)"
    if not row["executed"]:
        return "pending"
    if row["event"] == "DECISION_REFUSED":
        return f"refused ({row['code'] or 'REFUSED'})"
    return {"NEW_TRADE": "placed", "AMEND": "amended (new trade placed)", "CANCEL": "cancelled",
            "CLOSE": "closing (exit placed)"}.get(row["action"], "accepted")


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[str(c) for c in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)),
             "  " + "  ".join("-" * w for w in widths)]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells[1:]]
    return [line.rstrip() for line in lines]


def _safety_lines(report: str) -> list[str]:
    """The report's trading-state changes and breaker trips (nothing on a day without them)."""
    lines = report.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Trading-state changes:")), None)
    if start is None or lines[start].endswith(": 0"):
        return []
    end = next((i for i, line in enumerate(lines) if line.startswith("Runs:")), len(lines))
    return [line.strip() for line in lines[start:end] if line.strip()]


def summary_report(postgres: PostgresConfig, result: DayResult) -> str:
    """The end-of-day tables, read back from the database."""
    with TradingDB(config=postgres, application_name="simulate_day") as db:
        decisions = db.execute_query(DECISIONS_SQL)
        orders = db.execute_query(
            "SELECT order_type, order_status, count(*) AS n FROM order_execution GROUP BY 1, 2 ORDER BY 1, 2")
        fills = db.execute_one(
            "SELECT count(*) AS n, coalesce(sum(filled_qty), 0) AS shares, "
            "coalesce(sum(filled_qty * filled_avg_price), 0) AS notional FROM order_execution WHERE filled_qty > 0")
        closed = db.execute_query(
            "SELECT exit_reason, count(*) AS n, sum(actual_pnl) AS pnl FROM trade_journal WHERE status = 'CLOSED' "
            "GROUP BY 1 ORDER BY 1")
        cancelled = db.execute_query(
            "SELECT exit_reason, count(*) AS n FROM trade_journal WHERE status = 'CANCELLED' GROUP BY 1 ORDER BY 1")
        open_positions = db.execute_query(
            "SELECT t.id, p.symbol, t.trade_style, p.qty, p.avg_entry_price, p.current_price, p.unrealized_pnl "
            "FROM position_tracking p JOIN trade_journal t ON t.id = p.trade_journal_id ORDER BY p.symbol")
        runs = db.execute_query("SELECT program, outcome, count(*) AS n FROM program_run GROUP BY 1, 2 ORDER BY 1, 2")
        # Who booked each fill first: the listener (trade_stream) or a program's poll.
        fills_by = db.execute_query(
            "SELECT program, count(*) AS n FROM audit_event WHERE event = 'ORDER_FILL' GROUP BY 1 ORDER BY 1")
        notifications = db.execute_query(
            "SELECT kind, count(*) AS n FROM notification_outbox GROUP BY 1 ORDER BY 1")
        report = db.execute_one("SELECT body FROM daily_report WHERE report_date = %s", (result.day,))
    assert fills is not None
    lines = [f"=== Summary of {result.day} (seed {result.seed}) ==="]
    by_outcome = Counter(_decision_outcome(row) for row in decisions)
    lines.append("Decisions by outcome: " + ", ".join(f"{k} {v}" for k, v in sorted(by_outcome.items())))
    lines += _table(["id", "action", "ticker", "style", "outcome", "trade", "trade status", "exit reason", "P&L"],
                    [[r["id"], r["action"], r["ticker"], r["style"] or "", _decision_outcome(r), r["trade_id"],
                      r["trade_status"], r["exit_reason"], _money(r["actual_pnl"]) if r["actual_pnl"] is not None
                      else ""] for r in decisions])
    refused = [r for r in decisions if r["event"] == "DECISION_REFUSED"]
    for row in refused:
        lines.append(f"  decision {row['id']} refused: {row['reason']}")
    lines.append("")
    lines.append(f"Orders: {sum(r['n'] for r in orders)}")
    lines += _table(["order type", "status", "count"], [[r["order_type"], r["order_status"], r["n"]] for r in orders])
    lines.append(f"Fills: {fills['n']} orders filled, {Decimal(fills['shares']):,.0f} shares, "
                 f"${Decimal(fills['notional']).quantize(CENT):,.2f} traded")
    streamed = sum(r["n"] for r in fills_by if r["program"] == "trade_stream")
    polled = [r for r in fills_by if r["program"] != "trade_stream"]
    by_program = ", ".join(f"{r['program']} {r['n']}" for r in polled)
    lines.append(f"Fills recorded: {streamed} by the trade-updates stream, {sum(r['n'] for r in polled)} by polling"
                 + (f" ({by_program})" if polled else ""))
    lines.append("")
    realized = sum((Decimal(r["pnl"] or 0) for r in closed), Decimal(0))
    never_filled = ", ".join(f"{r['exit_reason']} {r['n']}" for r in cancelled)
    lines.append(f"Trades closed: {sum(r['n'] for r in closed)}"
                 + (f"; cancelled before a fill: {never_filled}" if cancelled else ""))
    if closed:
        lines += _table(["exit reason", "trades", "realized P&L"],
                        [[r["exit_reason"], r["n"], _money(r["pnl"])] for r in closed])
    unrealized = sum((Decimal(r["unrealized_pnl"] or 0) for r in open_positions), Decimal(0))
    lines.append(f"Open positions at the end of the day: {len(open_positions)}")
    if open_positions:
        lines += _table(["trade", "symbol", "style", "qty", "entry", "last", "unrealized P&L"],
                        [[r["id"], r["symbol"], r["trade_style"], f"{Decimal(r['qty']):.0f}",
                          display_price(r["avg_entry_price"]), display_price(r["current_price"]),
                          _money(r["unrealized_pnl"])] for r in open_positions])
    lines.append(f"Realized P&L {_money(realized)}   Unrealized P&L {_money(unrealized)}   "
                 f"Total {_money(realized + unrealized)}")
    lines.append("")
    controls = _safety_lines(report["body"] if report else "")
    if controls:
        lines.append("The end-of-day report (daily_report, sent through the notifications) says:")
        lines += [f"  {line}" for line in controls]
    lines.append("Notifications written (sent once NOTIFY_URLS names a service): "
                 + (", ".join(f"{r['kind']} {r['n']}" for r in notifications) or "none"))
    lines.append("Program runs: " + ", ".join(f"{r['program']} {r['outcome']} {r['n']}" for r in runs))
    lines.append(f"Wall time {result.wall_seconds:.1f} s")
    lines.append("")
    pg = result.database
    lines.append("The database stays for inspection:")
    lines.append(f"  psql -h {pg.host} -p {pg.port} -U {pg.user} {pg.dbname}")
    lines.append("  e.g.  SELECT id, symbol, status, exit_reason, actual_pnl FROM trade_journal ORDER BY id;")
    lines.append("        SELECT occurred_at, program, event, entity_type, entity_id, reason FROM audit_event "
                 "ORDER BY id;")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simulate_day.py", description=(__doc__ or "").split("\n\n")[0],
                                     epilog="The database trading_monitor_demo of the embedded PostgreSQL is emptied "
                                            "at each start and kept afterwards.")
    parser.add_argument("--date", type=_date, help="the day to simulate (default: today if the NYSE trades today, "
                                                   "else the next trading day)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed of the price paths (default {DEFAULT_SEED}); the same seed repeats the same day")
    parser.add_argument("--loss-day", action="store_true",
                        help=f"a crash at {CRASH_AT:%H:%M} ET (every price -{CRASH_FALL * 100:.1f} %%) beyond the "
                             f"day's DAILY_LOSS_LIMIT (${LOSS_DAY_LIMIT}): the account flattens itself")
    parser.add_argument("--no-stream", action="store_true",
                        help="without the trade-updates listener: every fill is recorded by polling")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="ERROR",
                        help="log lines of the programs on stderr (default ERROR: the progress lines tell the story)")
    args = parser.parse_args(argv)
    load_environment()
    configure_logging(args.log_level, "simulate_day")
    day = args.date or next_trading_day(dt.datetime.now(EASTERN).date())
    rules = NyseCalendar()
    if not rules.is_trading_day(day):
        reason = "a weekend day" if day.weekday() >= 5 else "an NYSE holiday"
        print(f"{day} is not a trading day ({reason}): nothing would happen. The next trading day is "
              f"{rules.next_trading_day(day)}; pick a trading day with --date.", file=sys.stderr)
        return 2
    try:
        run_day(day, seed=args.seed, postgres=demo_postgres_config(), loss_day=args.loss_day,
                stream=not args.no_stream)
    except TradingError as exc:
        print(f"the simulated day could not run: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
