"""Benchmark position_monitor: N open positions valued in one run, beside a baseline.

    .venv/bin/python scripts/benchmark_position_monitor.py                  # 50, 500 and 2,000 positions
    .venv/bin/python scripts/benchmark_position_monitor.py --positions 1000 --repeat 5

Set-up (not timed), through the production path: N symbols are added to an in-process paper
exchange (``/admin/symbols``, one call) and quoted (``/admin/quotes``, one call); N approved
SWING decisions go through ``order_executor`` (N bracket orders), a quote fills every entry,
and ``order_monitor`` records the N positions and checks their protection. The rows are
exactly what the programs write, and the exchange holds real positions with real protective
orders resting, as in production.

Timed, ``--repeat`` times each (medians printed): every quote moves (so every position must be
revalued and written), then one ``position_monitor.run_once()``, the broker's clock read
included; before it, on the same moved quotes, the seed-design baseline (``baseline_run``
below, not product code): one latest-quote call and one UPDATE per position. A run with nothing
new is timed too. Printed: seconds and the ratio to the baseline, broker calls by kind (the
client's counter and the exchange's request statistics) and SQL statements per run (the
driver's count, ``TradingDB.statement_count``).

Goals, printed as ``ok`` or ``MISSED`` beside the figure and never an exit status (a shared,
noisy machine): one positions call and one latest-quotes call per 1,000 positions (alpaca_client
asks in chunks of 1,000 symbols), every position revalued, a run under 3 s at 2,000.

Database: ``TEST_DATABASE_URL`` if set (its tables are TRUNCATED first), else a throwaway
testing.postgresql cluster (``tests/pg_server.RootSafePostgresql``, which also works as root).
"""

from __future__ import annotations

import argparse
import math
import os
import string
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from itertools import product
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import order_executor
import order_monitor
import position_monitor
from alpaca_client import AlpacaBroker
from config import parse_database_url
from db_layer import TradingDB
from paper_exchange import PaperExchange, start_server
from paper_exchange.ratelimit import UNTHROTTLED_REQUESTS_PER_MINUTE
from tests.conftest import truncate_all
from tests.factories import FRIDAY_0945, ExchangeAdmin, add_decision, make_settings
from trading.pricing import mid_price, money, pnl, pnl_pct

CENT = Decimal("0.01")


def symbols(count: int) -> list[str]:
    """``count`` made-up four-letter tickers (QAAA, QAAB, ...), none of the built-in universe."""
    letters = string.ascii_uppercase
    return ["Q" + "".join(combo) for combo in product(letters, repeat=3)][:count]


def entry_price(index: int) -> Decimal:
    return (Decimal(20) + Decimal(index) * Decimal("0.37")).quantize(CENT)


@contextmanager
def database() -> Iterator[TradingDB]:
    """A connected database with the schema and empty tables."""
    url = os.environ.get("TEST_DATABASE_URL")
    server = None
    if not url:
        from tests.pg_server import RootSafePostgresql

        server = RootSafePostgresql()
        url = server.url()
    db = TradingDB(test_mode=True, config=parse_database_url(url, "TEST_DATABASE_URL"))
    try:
        db.connect()
        db.create_schema()
        truncate_all(db)
        yield db
    finally:
        db.close()
        if server is not None:
            server.stop()


def no_sleep(_seconds: float) -> None:
    return None


def calls_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}={count}" for name, count in sorted(counts.items())) + f" (total {sum(counts.values())})"


def baseline_run(db: TradingDB, broker: AlpacaBroker) -> int:
    """The seed design's valuation (the comparison, not product code): one latest-quote call and
    one UPDATE per open position. Returns how many it revalued."""
    revalued = 0
    for row in db.query("position_tracking", order_by="id"):
        quote = broker.get_latest_quotes([row["symbol"]]).get(row["symbol"])
        price = mid_price(quote.bid, quote.ask) if quote else None
        if price is None:
            continue
        qty, entry = Decimal(row["qty"]), Decimal(row["avg_entry_price"])
        unrealized = pnl(entry, price, qty)
        db.update("position_tracking", row["id"], {
            "current_price": price, "market_value": money(price * qty), "unrealized_pnl": unrealized,
            "unrealized_pnl_pct": pnl_pct(unrealized, Decimal(row["cost_basis"]))})
        revalued += 1
    return revalued


def move_quotes(admin: ExchangeAdmin, tickers: list[str], up: Decimal) -> None:
    admin.clock(advance_seconds=600)
    admin.quotes(**{symbol: (entry_price(i) + up, entry_price(i) + up + Decimal("0.02"))
                    for i, symbol in enumerate(tickers)})


def measure(db: TradingDB, broker: AlpacaBroker, admin: ExchangeAdmin, settings: Any) -> dict[str, Any]:
    broker.calls.reset()
    admin.reset_stats()
    statements = db.statement_count
    started = time.perf_counter()
    summary = position_monitor.run_once(db, broker, settings=settings, sleep=no_sleep)
    return {"seconds": time.perf_counter() - started, "summary": summary, "calls": dict(broker.calls.counts),
            "requests": admin.stats()["routes"], "statements": db.statement_count - statements}


def bench(count: int, repeat: int) -> bool:
    """One size: set up, then the timed runs; prints its lines. Returns whether the set-up worked."""
    tickers = symbols(count)
    settings = make_settings(MAX_OPEN_TRADES=count + 10, MAX_ORDERS_PER_DAY=count * 10)
    handle = start_server(exchange=PaperExchange(seed=7, simulated_clock=True, start_time=FRIDAY_0945,
                                                 price_simulation=False, include_default_universe=False,
                                                 starting_cash=Decimal(count) * 10_000),
                          rate_limit=UNTHROTTLED_REQUESTS_PER_MINUTE)
    try:
        with database() as db:
            admin = ExchangeAdmin(handle.url)
            broker = AlpacaBroker(base_url=handle.url, data_url=handle.url, timeout=60)
            started = time.perf_counter()
            admin.symbols(**{symbol: {"price": str(entry_price(i))} for i, symbol in enumerate(tickers)})
            for i, symbol in enumerate(tickers):
                entry = entry_price(i)
                add_decision(db, symbol, planned_entry=str(entry), planned_sl=str((entry * Decimal("0.95")).quantize(
                    CENT)), planned_tp=str((entry * Decimal("1.10")).quantize(CENT)), planned_qty=10)
            placed = order_executor.run_once(db, broker, settings=settings)
            admin.quotes(**{symbol: (entry_price(i) - CENT, entry_price(i)) for i, symbol in enumerate(tickers)})
            opened = order_monitor.run_once(db, broker, settings=settings, sleep=no_sleep)
            held = admin.positions()
            rows = db.execute_one("SELECT count(*) AS n FROM position_tracking")
            assert rows is not None
            print(f"\n{count:,} positions: set-up {placed.counts['placed']} entries placed, "
                  f"{opened.counts['positions_opened']} positions opened, exchange holds {len(held)}, database "
                  f"{rows['n']} ({time.perf_counter() - started:.1f} s, not timed)", flush=True)
            if len(held) != count or rows["n"] != count:
                print("  set-up failed: not every position opened (no figures for this size)")
                return False
            position_monitor.run_once(db, broker, settings=settings, sleep=no_sleep)  # the day's calendar read
            ours, base, steady = [], [], []
            for step in range(repeat):
                move_quotes(admin, tickers, Decimal("0.40") + Decimal(step) / 100)
                broker.calls.reset()
                statements = db.statement_count
                t0 = time.perf_counter()
                baseline_run(db, broker)
                base.append({"seconds": time.perf_counter() - t0, "calls": broker.calls.total,
                             "statements": db.statement_count - statements})
                move_quotes(admin, tickers, Decimal("0.50") + Decimal(step) / 100)
                ours.append(measure(db, broker, admin, settings))
                steady.append(measure(db, broker, admin, settings))
            up = Decimal("0.50") + Decimal(repeat - 1) / 100
            expected = (up + Decimal("0.01")) * 10  # mid = entry + up + 0.01, 10 shares
            at_price = db.execute_one("SELECT count(*) AS n FROM position_tracking WHERE unrealized_pnl = %s",
                                      (expected,))
            assert at_price is not None
            chunks = math.ceil(count / 1000)
            for label, runs in (("every position revalued", ours), ("nothing new", steady)):
                run = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
                b = sorted(base, key=lambda r: r["seconds"])[len(base) // 2]
                calls, requests_seen = run["calls"], run["requests"]
                goals = [("one positions call", calls.get("list_positions") == 1
                          and requests_seen.get("GET /v2/positions") == 1),
                         (f"{chunks} latest-quotes call(s)", calls.get("get_latest_quotes") == chunks),
                         ("success", run["summary"].outcome == "success")]
                if count >= 2000:
                    goals.append(("< 3 s", run["seconds"] < 3))
                ratio = f"x{b['seconds'] / run['seconds']:.1f}" if run["seconds"] else "-"
                print(f"  {label:<24} {run['seconds']:6.3f} s (baseline {b['seconds']:6.3f} s, {ratio}), "
                      f"revalued={run['summary'].counts.get('revalued', 0)}, statements {run['statements']} "
                      f"(baseline {b['statements']}), broker calls {sum(calls.values())} (baseline {b['calls']}): "
                      f"{calls_line(calls)}  "
                      + "; ".join(f"{text} {'ok' if met else 'MISSED'}" for text, met in goals))
            print(f"  positions at the last price: {at_price['n']} of {count} "
                  f"{'ok' if at_price['n'] == count else 'MISSED'}")
            return True
    finally:
        handle.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, action="append",
                        help="open positions to value (repeatable; default 50, 500 and 2,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (the median is printed)")
    args = parser.parse_args()
    print("position_monitor per run, medians (baseline: seed design, one quote call per position, same data)")
    for count in args.positions or [50, 500, 2000]:
        bench(count, max(args.repeat, 1))
    return 0  # figures, never pass/fail: a missed goal is printed as MISSED


if __name__ == "__main__":
    sys.exit(main())
