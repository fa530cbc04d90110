"""Benchmark order_monitor: broker calls and seconds per run at 10, 100 and 1,000 open orders.

    .venv/bin/python scripts/benchmark_order_monitor.py               # 10, 100 and 1,000
    .venv/bin/python scripts/benchmark_order_monitor.py --sizes 1000 --repeat 3

How the open orders are made: N approved NEW_TRADE decisions (SWING, 1 share, entry 100,
stop 95, target 110, spread over the exchange's ~40 built-in symbols with
ALLOW_SAME_SYMBOL=true) go through the real ``order_executor``, so each is one bracket entry
with its two held legs at the broker and three ``order_execution`` rows; N counts the entry
orders (N bracket groups, 3N rows). That is slower to set up than inserting orders and rows
directly (a few seconds at 1,000) but measures exactly what production has.

Three monitor runs are timed for each N:

- ``working``: N working entries, nothing changed at the broker (the run every 5 minutes);
- ``all filled``: every entry filled since the last run: N positions opened and their legs
  recorded, each trade in its own transaction;
- ``protected``: N open positions, each with its live bracket legs, nothing changed.

For each: wall-clock seconds, the broker calls by operation as the monitor's client counted
them, and the listing calls the exchange itself served. The aim: at most ceil(N/500)+1
listing calls, no per-order calls (``get_order``, ``get_order_by_client_id``), under 5
seconds at 1,000.

Runs anywhere the tests run, also as root on a fresh machine: the database is
``TEST_DATABASE_URL`` if set, else a throwaway testing.postgresql cluster
(``tests/pg_server.RootSafePostgresql``, which runs the server as the ``postgres`` user when
root); the broker is an in-process paper exchange (simulated clock, Friday 2026-11-20 09:45 ET,
no random walk) reached through the real alpaca-py client over HTTP.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import requests

import order_executor
import order_monitor
from alpaca_client import AlpacaBroker
from config import load_settings, parse_database_url
from db_layer import TradingDB
from trading import schema

FRIDAY_0945 = "2026-11-20T14:45:00Z"
PER_ORDER_CALLS = ("get_order", "get_order_by_client_id")
SETTINGS_ENV = {
    "MAX_POSITION_NOTIONAL": "50000", "MAX_POSITION_PCT_OF_EQUITY": "50", "MAX_TOTAL_EXPOSURE_PCT": "400",
    "MAX_OPEN_TRADES": "100000", "MAX_ORDERS_PER_DAY": "100000", "DAILY_LOSS_LIMIT": "100000",
    "RISK_PER_TRADE": "500", "ALLOW_SAME_SYMBOL": "true", "LOG_LEVEL": "WARNING",
}


class Admin:
    """The paper exchange's admin API (the calls this benchmark needs)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.session.post(self.url + path, json=body, timeout=60)
        response.raise_for_status()
        return response.json()

    def listing_calls(self) -> int:
        stats = self.session.get(self.url + "/admin/stats", timeout=10).json()
        return int(stats["routes"].get("GET /v2/orders", 0))

    def reset_stats(self) -> None:
        self.session.delete(self.url + "/admin/stats", timeout=10).raise_for_status()


def database() -> tuple[TradingDB, Any]:
    """A connected database with the schema: TEST_DATABASE_URL, or a throwaway cluster."""
    server = None
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        from tests.pg_server import RootSafePostgresql

        server = RootSafePostgresql()
        url = server.url()
    db = TradingDB(test_mode=True, config=parse_database_url(url, "TEST_DATABASE_URL"),
                   application_name="benchmark_order_monitor")
    db.connect()
    db.create_schema()
    return db, server


def empty(db: TradingDB) -> None:
    db.execute_update(f"TRUNCATE {', '.join(t.name for t in schema.TABLES)} RESTART IDENTITY")


def add_decisions(db: TradingDB, symbols: list[str], count: int) -> None:
    plan = '{"planned_entry": 100, "planned_sl": 95, "planned_tp": 110, "trade_style": "SWING", "planned_qty": 1}'
    db.execute_update(
        'INSERT INTO analysis_decision (ticker, primary_action, decision, "Approve") '
        "SELECT (%s::text[])[1 + (n %% %s)], 'NEW_TRADE', %s::jsonb, true FROM generate_series(0, %s - 1) AS n",
        (symbols, len(symbols), plan, count))


def timed_run(db: TradingDB, broker: AlpacaBroker, admin: Admin, settings: Any, n: int, label: str) -> dict:
    broker.calls.reset()
    admin.reset_stats()
    started = time.perf_counter()
    summary = order_monitor.run_once(db, broker, settings=settings)
    seconds = time.perf_counter() - started
    calls = dict(broker.calls.counts)
    listing = admin.listing_calls()
    per_order = sum(calls.get(name, 0) for name in PER_ORDER_CALLS)
    aim_calls = math.ceil(n / 500) + 1
    ok = summary.outcome == "success" and listing <= aim_calls and per_order == 0  # timing is a figure, not pass/fail
    return {"n": n, "run": label, "seconds": seconds, "calls": calls, "listing": listing, "aim_calls": aim_calls,
            "per_order": per_order, "outcome": summary.outcome, "counts": dict(summary.counts), "ok": ok}


def benchmark(sizes: list[int], repeat: int) -> list[dict]:
    from paper_exchange import PaperExchange
    from paper_exchange.ratelimit import UNTHROTTLED_REQUESTS_PER_MINUTE
    from paper_exchange.server import start_server

    db, server = database()
    handle = start_server(exchange=PaperExchange(seed=7, simulated_clock=True, start_time=FRIDAY_0945,
                                                 price_simulation=False),
                          rate_limit=UNTHROTTLED_REQUESTS_PER_MINUTE)
    results: list[dict] = []
    try:
        admin = Admin(handle.url)
        broker = AlpacaBroker(base_url=handle.url, data_url=handle.url, timeout=60)
        settings = load_settings(test_mode=True, env=SETTINGS_ENV)
        symbols = sorted(broker.list_assets())[:40]
        for n in sizes:
            empty(db)
            admin.post("/admin/reset", {"cash": "100000000"})
            admin.post("/admin/clock", {"now": FRIDAY_0945})
            add_decisions(db, symbols, n)
            started = time.perf_counter()
            placed = order_executor.run_once(db, broker, settings=settings)
            setup = time.perf_counter() - started
            assert placed.counts.get("placed") == n, placed.as_dict()
            print(f"N={n}: {n} entries placed by order_executor in {setup:.1f}s", flush=True)
            for _ in range(repeat):
                results.append(timed_run(db, broker, admin, settings, n, "working"))
            admin.post("/admin/quotes", {s: {"bid": "99.95", "ask": "100.00"} for s in symbols})  # all fill
            results.append(timed_run(db, broker, admin, settings, n, "all filled"))
            for _ in range(repeat):
                results.append(timed_run(db, broker, admin, settings, n, "protected"))
            for result in results[-(2 * repeat + 1):]:
                print(line(result), flush=True)
    finally:
        handle.stop()
        db.close()
        if server is not None:
            server.stop()
    return results


def line(result: dict) -> str:
    calls = ", ".join(f"{k}={v}" for k, v in sorted(result["calls"].items()))
    verdict = "ok" if result["ok"] else "MISSED"
    return (f"  N={result['n']:>5} {result['run']:<10} {result['seconds']:6.2f}s  listing {result['listing']}"
            f"{'' if result['n'] < 1000 else ' (goal < 5s)'}"
            f" (aim <= {result['aim_calls']}), per-order {result['per_order']}  [{calls}]  {result['outcome']}"
            f"  {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000], help="open entry orders")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each steady state")
    args = parser.parse_args(argv)
    results = benchmark(args.sizes, args.repeat)
    print("\norder_monitor per run (broker calls as counted by the client):")
    for result in results:
        print(line(result))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
