#!/usr/bin/env python3
"""Benchmark order_executor: N approved decisions become N protected entry orders.

    .venv/bin/python scripts/benchmark_executor.py              # 100, 1,000 and 5,000 decisions
    .venv/bin/python scripts/benchmark_executor.py --n 5000 --repeat 1   # one size (repeat --n for more)

Each run starts from empty tables and a fresh exchange book: N approved NEW_TRADE decisions
(SWING brackets and DAYTRADE OTOs, spread over the exchange's symbols, limits below the market
so the entries rest) are inserted, then one executor run is timed. Afterwards the script checks
that every decision became exactly one order and that a second run changes nothing.

Beside it, on the same decisions (prepared again), the seed-design baseline (``baseline_run``
below, not product code): one decision at a time, a transaction to claim it and record its trade
and intent, the broker call, a transaction to record the answer.

Printed per size (medians of ``--repeat`` runs): decisions per second and the ratio to the
baseline, SQL statements per decision (the driver's count, ``TradingDB.statement_count``), and
broker calls per decision counted on both sides (the client's ``broker.calls`` and the
exchange's ``/admin/stats``). Goals (issue 16), printed as ``ok`` or ``MISSED``, never an exit
status: at least 200 decisions/s at every size, flat (5,000 within 25 % of 100), one broker call
per decision plus a handful per run.

Parts: an in-process paper exchange (simulated clock at Friday 2026-11-20 09:45 ET) and a
throwaway PostgreSQL from testing.postgresql (run as the ``postgres`` user when we are root),
or the database ``TEST_DATABASE_URL`` names. Its tables are emptied first, so never point it
at data you want to keep.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import requests

from alpaca_client import AlpacaBroker
from config import PostgresConfig, load_settings, parse_database_url
from db_layer import TradingDB
from order_executor import CLAIM_SQL, PENDING_DECISIONS_SQL, entry_request, run_once
from paper_exchange import PaperExchange, start_server
from paper_exchange.ratelimit import UNTHROTTLED_REQUESTS_PER_MINUTE
from paper_exchange.universe import DEFAULT_UNIVERSE
from trading import schema
from trading.audit import Auditor
from trading.orders import entry_client_order_id
from trading.plan import parse_plan
from trading.reconcile import Reconciler

START = "2026-11-20T14:45:00Z"  # Friday 09:45 ET: the executor's scheduled time on a trading day
CASH = Decimal("100000000")     # enough buying power that no limit refuses an entry
CENT = Decimal("0.01")
#: Printed beside the figure; never pass/fail (a shared machine).
GOAL_DECISIONS_PER_SECOND = 200
#: "Flat": the largest size's rate within this fraction of the smallest's.
GOAL_FLATNESS = 0.25

# Limits wide enough that every decision passes: the benchmark measures the work, not refusals.
LIMITS = {
    "MAX_POSITION_NOTIONAL": "1000000", "MAX_POSITION_PCT_OF_EQUITY": "100", "MAX_TOTAL_EXPOSURE_PCT": "400",
    "MAX_OPEN_TRADES": "1000000", "MAX_ORDERS_PER_DAY": "1000000", "ALLOW_SAME_SYMBOL": "true",
    "DAILY_LOSS_LIMIT": "1000000", "RISK_PER_TRADE": "500",
    # The plans rest 20 % under the price (so entries stay working): the STALE_PLAN check runs, wide.
    "MAX_ENTRY_DRIFT_PCT": "30",
}


@dataclass
class Result:
    n: int
    seconds: float
    client_calls: dict[str, int]
    exchange_calls: dict[str, int]
    rerun_seconds: float
    rerun_calls: int
    statements: int = 0
    baseline_seconds: float = 0.0
    baseline_statements: int = 0
    broker_seconds: float = 0.0

    @property
    def client_total(self) -> int:
        return sum(self.client_calls.values())

    @property
    def exchange_total(self) -> int:
        return sum(self.exchange_calls.values())


@contextmanager
def database() -> Iterator[tuple[PostgresConfig, str]]:
    """The test database: ``TEST_DATABASE_URL`` if set, else a throwaway testing.postgresql cluster."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield parse_database_url(url, "TEST_DATABASE_URL"), "TEST_DATABASE_URL (tables emptied)"
        return
    from tests.pg_server import RootSafePostgresql

    server = RootSafePostgresql()
    try:
        yield parse_database_url(server.url(), "testing.postgresql"), "throwaway testing.postgresql cluster"
    finally:
        server.stop()


def prepare(db: TradingDB, url: str, n: int) -> None:
    """Empty tables and exchange book, then N approved decisions inserted in one statement."""
    db.execute_update(f"TRUNCATE {', '.join(t.name for t in schema.TABLES)} RESTART IDENTITY")
    requests.post(f"{url}/admin/reset", json={"cash": str(CASH)}, timeout=30).raise_for_status()
    symbols = sorted(s for s, (_, _, price) in DEFAULT_UNIVERSE.items() if Decimal(price) >= 10)
    rows = []
    for i in range(n):
        symbol = symbols[i % len(symbols)]
        price = Decimal(DEFAULT_UNIVERSE[symbol][2])
        entry = (price * Decimal("0.80")).quantize(CENT, ROUND_DOWN)
        stop = (price * Decimal("0.76")).quantize(CENT, ROUND_DOWN)
        if i % 4 == 3:
            plan = (f'{{"planned_entry": "{entry}", "planned_sl": "{stop}", "trade_style": "DAYTRADE", '
                    f'"planned_qty": 2}}')
        else:
            target = (price * Decimal("0.90")).quantize(CENT, ROUND_DOWN)
            plan = (f'{{"planned_entry": "{entry}", "planned_sl": "{stop}", "planned_tp": "{target}", '
                    f'"trade_style": "SWING", "planned_qty": 3}}')
        rows.append((symbol, plan))
    with db.transaction():
        db.execute_update(
            'INSERT INTO analysis_decision (ticker, primary_action, decision, "Approve", created_at) '
            "SELECT t.ticker, 'NEW_TRADE', t.plan::jsonb, true, now() + t.ord * interval '1 microsecond' "
            "FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS t(ticker, plan, ord)",
            ([r[0] for r in rows], [r[1] for r in rows]))
    requests.delete(f"{url}/admin/stats", timeout=10).raise_for_status()


def exchange_calls(url: str) -> dict[str, int]:
    return dict(requests.get(f"{url}/admin/stats", timeout=10).json()["routes"])


class TimedBroker(AlpacaBroker):
    """The real client, timing its submissions (HTTP and the exchange's own work): the run's
    time minus this is the executor's own cost. The in-process paper exchange checks buying
    power over every open order for each new order, so its share grows with the book."""

    broker_seconds = 0.0

    def submit_order(self, request: Any) -> Any:
        started = time.perf_counter()
        try:
            return super().submit_order(request)
        finally:
            self.broker_seconds += time.perf_counter() - started


def baseline_run(db: TradingDB, broker: AlpacaBroker, prefix: str = "bl") -> int:
    """The seed design's executor (the comparison, not product code): every approved decision on
    its own: claim it and record its trade and intent (one transaction), send it (one call),
    record the answer and mark the decision executed (another transaction). No risk gate or
    quote check: the least a per-decision executor does. Returns how many it placed."""
    now = broker.get_clock().timestamp
    auditor = Auditor(db, "baseline")
    reconciler = Reconciler(db, auditor)
    placed = 0
    for pending in db.execute_query(PENDING_DECISIONS_SQL):
        with db.transaction():
            row = db.execute_one(CLAIM_SQL, (pending["id"],))
            if row is None:
                continue
            plan = parse_plan(row)
            trade = reconciler.trades.create({**plan.as_values(), "initial_analysis_id": row["id"],
                                              "planned_qty": plan.qty or Decimal(1)})
            request = entry_request(plan, plan.qty or Decimal(1), entry_client_order_id(prefix, row))
            intent_id = reconciler.orders.insert_intent(trade, "ENTRY", request)
        order = broker.submit_order(request)
        with db.transaction():
            row = db.execute_one(CLAIM_SQL, (pending["id"],))
            locked = reconciler.trades.lock(trade["id"])
            intent = db.get_by_id("order_execution", intent_id)
            assert row is not None and locked is not None and intent is not None
            reconciler.sync(locked, intent, order, now=now)
            db.update("analysis_decision", row["id"], {"executed": True, "execution_time": now,
                                                       "existing_trade_journal_id": trade["id"],
                                                       "existing_order_id": order.id})
            auditor.record("decision", row["id"], "DECISION_ACCEPTED", symbol=row["ticker"], old="pending",
                           new="accepted")
        placed += 1
    return placed


def bench(db: TradingDB, url: str, n: int) -> Result:
    prepare(db, url, n)
    broker = AlpacaBroker(base_url=url, data_url=url, timeout=30)
    statements = db.statement_count
    started = time.perf_counter()
    placed = baseline_run(db, broker)
    baseline_seconds = time.perf_counter() - started
    baseline_statements = db.statement_count - statements
    if placed != n:
        raise SystemExit(f"the baseline placed {placed} of {n}")

    prepare(db, url, n)
    settings = load_settings(test_mode=True, env=LIMITS)
    broker = TimedBroker(base_url=url, data_url=url, timeout=30)
    statements = db.statement_count
    started = time.perf_counter()
    summary = run_once(db, broker, settings=settings)
    seconds = time.perf_counter() - started
    submit_seconds = broker.broker_seconds
    statements = db.statement_count - statements
    if summary.outcome != "success" or summary.counts.get("placed") != n:
        raise SystemExit(f"the run did not place every decision: {summary.line()} {summary.notes[:5]}")
    client = dict(broker.calls.counts)
    server = exchange_calls(url)

    # Every decision exactly one order, recorded with its broker id; the run is idempotent.
    check = db.execute_one(
        "SELECT count(*) AS entries, count(DISTINCT client_order_id) AS ids, count(alpaca_order_id) AS recorded "
        "FROM order_execution WHERE order_type = 'ENTRY'")
    executed = db.execute_one("SELECT count(*) AS n FROM analysis_decision WHERE executed")
    state = requests.get(f"{url}/admin/state", timeout=60).json()
    at_exchange = sum(1 for o in state["orders"] if str(o["client_order_id"]).startswith("tm-"))
    if not (check and executed and check["entries"] == check["ids"] == check["recorded"] == executed["n"]
            == at_exchange == n):
        raise SystemExit(f"one order per decision violated: {check}, executed {executed}, at exchange {at_exchange}")
    broker.calls.reset()
    started = time.perf_counter()
    rerun = run_once(db, broker, settings=settings)
    rerun_seconds = time.perf_counter() - started
    if rerun.counts.get("placed"):
        raise SystemExit(f"the second run placed orders again: {rerun.line()}")
    return Result(n, seconds, client, server, rerun_seconds, broker.calls.total, statements, baseline_seconds,
                  baseline_statements, submit_seconds)


def median_result(results: list[Result]) -> Result:
    return sorted(results, key=lambda r: r.seconds)[len(results) // 2]


def verdict(met: bool) -> str:
    return "ok" if met else "MISSED"


def report(result: Result, repeat: int) -> None:
    n = result.n
    submits = result.client_calls.get("submit_order", 0)
    overhead = result.client_total - submits
    rate = n / result.seconds
    baseline_rate = n / result.baseline_seconds if result.baseline_seconds else 0.0
    print(f"\n{n:,} decisions (median of {repeat}): {result.seconds:.2f} s = {rate:,.0f} decisions/s "
          f"(goal >= {GOAL_DECISIONS_PER_SECOND}/s: {verdict(rate >= GOAL_DECISIONS_PER_SECOND)}); "
          f"baseline {result.baseline_seconds:.2f} s = {baseline_rate:,.0f}/s, x{rate / baseline_rate:.1f}"
          if baseline_rate else "")
    own = result.seconds - result.broker_seconds
    print(f"  the executor's own part: {own:.2f} s = {n / own:,.0f} decisions/s "
          f"(the rest, {result.broker_seconds:.2f} s, waiting on submit_order: HTTP and the exchange)")
    print(f"  SQL statements: {result.statements:,} = {result.statements / n:.2f} per decision "
          f"(baseline {result.baseline_statements / n:.2f} per decision)")
    print(f"  broker calls (client):   {result.client_total:,} = {result.client_total / n:.3f} per decision "
          f"({submits:,} submit_order + {overhead} per run: "
          + ", ".join(f"{k} {v}" for k, v in sorted(result.client_calls.items()) if k != "submit_order") + ")")
    print(f"  broker calls (exchange): {result.exchange_total:,} = {result.exchange_total / n:.3f} per decision ("
          + ", ".join(f"{k} {v}" for k, v in sorted(result.exchange_calls.items())) + ")")
    print(f"  second run, nothing to do: {result.rerun_seconds * 1000:.0f} ms, {result.rerun_calls} broker calls")


def flatness(results: list[Result]) -> None:
    if len(results) < 2:
        return
    for label, rates in (("whole run", [r.n / r.seconds for r in results]),
                         ("executor's own part", [r.n / (r.seconds - r.broker_seconds) for r in results])):
        drop = 1 - rates[-1] / rates[0]
        print(f"\nscaling, {label}: "
              f"{', '.join(f'{r.n:,}: {rate:,.0f}/s' for r, rate in zip(results, rates, strict=True))}; "
              f"{results[-1].n:,} is {abs(drop):.0%} {'slower' if drop > 0 else 'faster'} per decision than "
              f"{results[0].n:,} "
              f"(goal: flat, within {GOAL_FLATNESS:.0%}: {verdict(drop <= GOAL_FLATNESS)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append",
                        help="decisions per run (repeatable; default 100, 1,000 and 5,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each size (the median is printed)")
    args = parser.parse_args(argv)
    sizes = args.n or [100, 1000, 5000]
    if any(n < 1 for n in sizes):
        parser.error("--n must be at least 1")

    handle = start_server(exchange=PaperExchange(seed=7, simulated_clock=True, start_time=START,
                                                 price_simulation=False, starting_cash=CASH),
                          rate_limit=UNTHROTTLED_REQUESTS_PER_MINUTE)
    try:
        with database() as (pg, where):
            print(f"database: {where} ({pg.host}:{pg.port}/{pg.dbname}); exchange: in-process at {handle.url}")
            with TradingDB(test_mode=True, config=pg, application_name="benchmark_executor") as db:
                db.create_schema()
                medians = []
                for n in sizes:
                    medians.append(median_result([bench(db, handle.url, n) for _ in range(max(args.repeat, 1))]))
                    report(medians[-1], max(args.repeat, 1))
                flatness(medians)
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
