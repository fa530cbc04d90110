#!/usr/bin/env python3
"""Benchmark order_executor: N approved decisions become N protected entry orders.

    .venv/bin/python scripts/benchmark_executor.py              # 100, then 1,000 decisions
    .venv/bin/python scripts/benchmark_executor.py --n 5000     # one size (repeat --n for more)

Each size starts from empty tables and a fresh exchange book: N approved NEW_TRADE decisions
(SWING brackets and DAYTRADE OTOs, spread over the exchange's symbols, limits below the market
so the entries rest) are inserted, then one executor run is timed. Afterwards the script checks
that every decision became exactly one order and that a second run changes nothing.

Printed per size: decisions per second of the run, and broker calls per decision, counted on
both sides (the client's ``broker.calls`` and the exchange's ``/admin/stats``).

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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import requests

from alpaca_client import AlpacaBroker
from config import PostgresConfig, load_settings, parse_database_url
from db_layer import TradingDB
from order_executor import run_once
from paper_exchange import PaperExchange, start_server
from paper_exchange.ratelimit import UNTHROTTLED_REQUESTS_PER_MINUTE
from paper_exchange.universe import DEFAULT_UNIVERSE
from trading import schema

START = "2026-11-20T14:45:00Z"  # Friday 09:45 ET: the executor's scheduled time on a trading day
CASH = Decimal("100000000")     # enough buying power that no limit refuses an entry
CENT = Decimal("0.01")
#: Printed beside the figure; never pass/fail (a shared machine). The executor runs once a day.
GOAL_DECISIONS_PER_SECOND = 20

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


def bench(db: TradingDB, url: str, n: int) -> Result:
    prepare(db, url, n)
    settings = load_settings(test_mode=True, env=LIMITS)
    broker = AlpacaBroker(base_url=url, data_url=url, timeout=30)
    started = time.perf_counter()
    summary = run_once(db, broker, settings=settings)
    seconds = time.perf_counter() - started
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
    return Result(n, seconds, client, server, rerun_seconds, broker.calls.total)


def report(result: Result) -> None:
    n = result.n
    submits = result.client_calls.get("submit_order", 0)
    overhead = result.client_total - submits
    print(f"\n{n:,} decisions: {result.seconds:.2f} s = {n / result.seconds:,.0f} decisions/s "
          f"(goal >= {GOAL_DECISIONS_PER_SECOND} decisions/s)")
    print(f"  broker calls (client):   {result.client_total:,} = {result.client_total / n:.3f} per decision "
          f"({submits:,} submit_order + {overhead} per run: "
          + ", ".join(f"{k} {v}" for k, v in sorted(result.client_calls.items()) if k != "submit_order") + ")")
    print(f"  broker calls (exchange): {result.exchange_total:,} = {result.exchange_total / n:.3f} per decision ("
          + ", ".join(f"{k} {v}" for k, v in sorted(result.exchange_calls.items())) + ")")
    print(f"  second run, nothing to do: {result.rerun_seconds * 1000:.0f} ms, {result.rerun_calls} broker calls")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append", help="decisions per run (repeatable; default 100 and 1000)")
    args = parser.parse_args(argv)
    sizes = args.n or [100, 1000]
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
                for n in sizes:
                    report(bench(db, handle.url, n))
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
