"""Benchmark position_monitor: N open positions (500 by default) valued in one run.

    .venv/bin/python scripts/benchmark_position_monitor.py                  # 500 positions, goal 3 s
    .venv/bin/python scripts/benchmark_position_monitor.py --positions 1000 --budget 5

Set-up (not timed), through the production path: N symbols are added to an in-process paper
exchange (``/admin/symbols``, one call) and quoted (``/admin/quotes``, one call); N approved
SWING decisions go through ``order_executor`` (N bracket orders), a quote fills every entry,
and ``order_monitor`` records the N positions and checks their protection. This costs some
seconds more than inserting ``trade_journal``/``position_tracking``/``order_execution`` rows by
hand, but the rows are exactly what the programs write (order groups with their legs, stop
ids, audit rows) and cannot drift from the schema, and the exchange holds real positions with
real protective orders resting, as in production.

Timed: every quote moves (so every position must be revalued and written), then one
``position_monitor.run_once()``, the broker's clock and calendar read included. A second run
with nothing new is timed too. Printed: the broker calls by kind (the client's own counter and
the exchange's request statistics) and the seconds.

Database: ``TEST_DATABASE_URL`` if set (its tables are TRUNCATED first), else a throwaway
testing.postgresql cluster (``tests/pg_server.RootSafePostgresql``, which also works as root).

The seconds are printed beside the goal (``--budget``) and never fail the run: timings on a
shared machine are figures, not pass/fail. Exit status 0 with exactly one latest-quotes call
and one positions call and every position revalued, else 1 (``alpaca_client`` asks for
quotes in chunks of 1,000 symbols, so
more than 1,000 positions take one quote call per thousand and report as a failure here).

Measured on the development machine: 500 positions, run 1 (all revalued) 0.07 s, run 2 0.10 s;
1,000 positions 0.13 s / 0.11 s; five broker calls per run (clock, calendar, positions, quotes,
account).
"""

from __future__ import annotations

import argparse
import os
import string
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from itertools import product
from pathlib import Path

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=500, help="open positions to value (default 500)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds one run may take (default 3)")
    args = parser.parse_args()
    count = args.positions
    tickers = symbols(count)
    settings = make_settings(MAX_OPEN_TRADES=count + 10, MAX_ORDERS_PER_DAY=count * 10)

    handle = start_server(exchange=PaperExchange(seed=7, simulated_clock=True, start_time=FRIDAY_0945,
                                                 price_simulation=False, include_default_universe=False,
                                                 starting_cash=Decimal(count) * 10_000),
                          rate_limit=UNTHROTTLED_REQUESTS_PER_MINUTE)
    try:
        with database() as db:
            admin = ExchangeAdmin(handle.url)
            broker = AlpacaBroker(base_url=handle.url, data_url=handle.url, timeout=30)

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
            print(f"set-up: {placed.counts['placed']} entries placed, {opened.counts['positions_opened']} positions "
                  f"opened, exchange holds {len(held)} positions, database {rows['n']} "
                  f"({time.perf_counter() - started:.1f} s, not timed)")
            if len(held) != count or rows["n"] != count:
                print("set-up failed: not every position opened", file=sys.stderr)
                return 1

            # Every price moves: the run must revalue and write every position.
            admin.clock(advance_seconds=600)
            admin.quotes(**{symbol: (entry_price(i) + Decimal("0.50"), entry_price(i) + Decimal("0.52"))
                            for i, symbol in enumerate(tickers)})

            ok = True
            for label in ("run 1 (every position revalued)", "run 2 (nothing new)"):
                broker.calls.reset()
                admin.reset_stats()
                started = time.perf_counter()
                summary = position_monitor.run_once(db, broker, settings=settings, sleep=no_sleep)
                seconds = time.perf_counter() - started
                requests_seen = admin.stats()["routes"]
                print(f"{label}: {summary.outcome}, positions={summary.counts['positions']}, "
                      f"revalued={summary.counts.get('revalued', 0)}")
                print(f"  broker calls:      {calls_line(broker.calls.counts)}")
                print(f"  exchange requests: {calls_line(requests_seen)}")
                slower = "" if seconds <= args.budget else ", slower"
                print(f"  seconds:           {seconds:.3f} (goal <= {args.budget:g}{slower})")
                # Timings are figures, never pass/fail (a shared machine); calls and outcome are.
                ok &= (summary.outcome == "success"
                       and broker.calls.counts.get("get_latest_quotes") == 1
                       and broker.calls.counts.get("list_positions") == 1
                       and requests_seen.get("GET /v2/stocks/quotes/latest") == 1
                       and requests_seen.get("GET /v2/positions") == 1)
            revalued = db.execute_one("SELECT count(*) AS n FROM position_tracking WHERE unrealized_pnl = 5.10")
            assert revalued is not None
            print(f"positions at the new price (+0.51 x 10 = 5.10 unrealized): {revalued['n']} of {count}")
            ok &= revalued["n"] == count
            print("OK" if ok else "WRONG CALLS OR OUTCOME")
            return 0 if ok else 1
    finally:
        handle.stop()


if __name__ == "__main__":
    sys.exit(main())
