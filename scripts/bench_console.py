"""Benchmark the operator console: p50/p95 latency of /api/portfolio, /api/positions and /api/orders.

    .venv/bin/python scripts/bench_console.py                       # 500 positions, 100,000 orders
    .venv/bin/python scripts/bench_console.py --positions 500 --orders 100000 --requests 200

The book is bulk-inserted with SQL (``generate_series``) into a throwaway testing.postgresql
cluster (``tests/pg_server.RootSafePostgresql``, which runs the server as the ``postgres`` user
when root): N open positions (SWING trades, each with its filled entry, a held stop and a
working take-profit: 3N orders), closed trades with four orders each for the rest of the orders,
and a day of portfolio snapshots. The console (``console.app.create_app``) is served by uvicorn
on a loopback port in this process and asked over HTTP, as a browser would; the first requests
warm the connection pool up and are not counted.

For each endpoint: p50 and p95 in milliseconds, and ``MISSED`` beside a p95 above the 50 ms
target. Figures only: the exit status is always 0 (a slow machine is not a failure).
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import requests

from config import Secret, load_settings, parse_database_url
from db_layer import TradingDB

TARGET_P95_MS = 50.0
ENDPOINTS = ("/api/portfolio", "/api/positions", "/api/orders")

POSITIONS_SQL = """
INSERT INTO trade_journal (id, symbol, trade_style, status, planned_entry, planned_sl, planned_tp, planned_qty,
                           actual_entry, actual_qty, entry_date, initial_analysis_id)
SELECT i, 'S' || lpad(i::text, 4, '0'), 'SWING', 'POSITION', 100, 95, 110, 10, 100, 10,
       timestamptz '2026-11-19 15:00+00' + i * interval '1 second', i
FROM generate_series(1, %(positions)s) AS i;
INSERT INTO position_tracking (trade_journal_id, symbol, qty, avg_entry_price, cost_basis, current_price, market_value,
                               unrealized_pnl, unrealized_pnl_pct, last_updated)
SELECT i, 'S' || lpad(i::text, 4, '0'), 10, 100, 1000, 100 + (i %% 7) * 0.25, 10 * (100 + (i %% 7) * 0.25),
       10 * (i %% 7) * 0.25, (i %% 7) * 0.25, timestamptz '2026-11-20 20:00+00'
FROM generate_series(1, %(positions)s) AS i;
INSERT INTO order_execution (trade_journal_id, symbol, order_type, side, order_status, qty, limit_price, stop_price,
                             filled_qty, filled_avg_price, client_order_id, alpaca_order_id, submitted_at, filled_at,
                             order_class)
SELECT t, 'S' || lpad(t::text, 4, '0'), kind, CASE kind WHEN 'ENTRY' THEN 'buy' ELSE 'sell' END,
       CASE kind WHEN 'ENTRY' THEN 'filled' WHEN 'STOP_LOSS' THEN 'held' ELSE 'new' END, 10,
       CASE kind WHEN 'STOP_LOSS' THEN NULL WHEN 'ENTRY' THEN 100 ELSE 110 END,
       CASE kind WHEN 'STOP_LOSS' THEN 95 END, CASE kind WHEN 'ENTRY' THEN 10 ELSE 0 END,
       CASE kind WHEN 'ENTRY' THEN 100 END, 'bench-' || t || '-' || kind, 'bench-order-' || t || '-' || kind,
       timestamptz '2026-11-19 14:45+00' + t * interval '1 second',
       CASE kind WHEN 'ENTRY' THEN timestamptz '2026-11-19 15:00+00' END, 'bracket'
FROM generate_series(1, %(positions)s) AS t, unnest(ARRAY['ENTRY', 'TAKE_PROFIT', 'STOP_LOSS']) AS kind;
"""
CLOSED_SQL = """
INSERT INTO trade_journal (id, symbol, trade_style, status, planned_entry, planned_sl, planned_tp, planned_qty,
                           actual_entry, actual_qty, exit_price, actual_pnl, realized_pnl, exited_qty, exit_reason,
                           entry_date, exit_date)
SELECT i, 'C' || lpad((i %% 2000)::text, 4, '0'), 'SWING', 'CLOSED', 100, 95, 110, 10, 100, 10,
       CASE WHEN i %% 3 = 0 THEN 95 ELSE 110 END, CASE WHEN i %% 3 = 0 THEN -50 ELSE 100 END,
       CASE WHEN i %% 3 = 0 THEN -50 ELSE 100 END, 10, CASE WHEN i %% 3 = 0 THEN 'STOPPED_OUT' ELSE 'PROFIT_TAKEN' END,
       timestamptz '2026-01-02 15:00+00' + i * interval '5 minutes',
       timestamptz '2026-01-02 18:00+00' + i * interval '5 minutes'
FROM generate_series(%(first)s, %(last)s) AS i;
INSERT INTO order_execution (trade_journal_id, symbol, order_type, side, order_status, qty, limit_price, stop_price,
                             filled_qty, filled_avg_price, client_order_id, alpaca_order_id, submitted_at, filled_at,
                             canceled_at, order_class)
SELECT t, 'C' || lpad((t %% 2000)::text, 4, '0'), kind, CASE kind WHEN 'ENTRY' THEN 'buy' ELSE 'sell' END,
       CASE WHEN kind = 'ENTRY' OR kind = 'EXIT' THEN 'filled' ELSE 'canceled' END, 10,
       CASE kind WHEN 'TAKE_PROFIT' THEN 110 WHEN 'ENTRY' THEN 100 END, CASE kind WHEN 'STOP_LOSS' THEN 95 END,
       CASE WHEN kind IN ('ENTRY', 'EXIT') THEN 10 ELSE 0 END, CASE WHEN kind IN ('ENTRY', 'EXIT') THEN 100 END,
       'bench-' || t || '-' || kind, 'bench-order-' || t || '-' || kind,
       timestamptz '2026-01-02 14:45+00' + t * interval '5 minutes',
       CASE WHEN kind IN ('ENTRY', 'EXIT') THEN timestamptz '2026-01-02 15:00+00' + t * interval '5 minutes' END,
       CASE WHEN kind IN ('TAKE_PROFIT', 'STOP_LOSS')
            THEN timestamptz '2026-01-02 18:00+00' + t * interval '5 minutes' END,
       'bracket'
FROM generate_series(%(first)s, %(last)s) AS t, unnest(ARRAY['ENTRY', 'TAKE_PROFIT', 'STOP_LOSS', 'EXIT']) AS kind;
"""
SNAPSHOTS_SQL = """
INSERT INTO portfolio_snapshot (taken_at, cash, positions_value, equity, unrealized_pnl, realized_pnl_today,
                                open_positions)
SELECT timestamptz '2026-11-19 21:00+00' + i * interval '10 minutes', 50000, 500000, 550000 + i, 1000, 0, %(positions)s
FROM generate_series(0, 200) AS i;
"""


def seed(db: TradingDB, positions: int, orders: int) -> int:
    """Bulk-insert the book; returns the number of order rows."""
    db.execute_update(POSITIONS_SQL, {"positions": positions})
    closed = max(0, (orders - 3 * positions) // 4)
    if closed:
        db.execute_update(CLOSED_SQL, {"first": positions + 1, "last": positions + closed})
    db.execute_update(SNAPSHOTS_SQL, {"positions": positions})
    db.execute_update("SELECT setval(pg_get_serial_sequence('trade_journal', 'id'), "
                      "(SELECT max(id) FROM trade_journal))")
    db.execute_update("ANALYZE")
    row = db.execute_one("SELECT count(*) AS n FROM order_execution")
    return int(row["n"]) if row else 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=500)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per endpoint")
    args = parser.parse_args(argv)

    import uvicorn

    from console.app import create_app
    from console.settings import ConsoleSettings
    from tests.pg_server import RootSafePostgresql

    server = RootSafePostgresql()
    uv: uvicorn.Server | None = None
    try:
        config = parse_database_url(server.url(), "TEST_DATABASE_URL")
        with TradingDB(test_mode=True, config=config, application_name="bench_console") as db:
            db.create_schema()
            started = time.monotonic()
            count = seed(db, args.positions, args.orders)
            print(f"seeded {args.positions} open positions and {count:,} orders in "
                  f"{time.monotonic() - started:.1f} s")
        trading = dataclasses.replace(load_settings(test_mode=True, env={"LOG_LEVEL": "WARNING"}), postgres=config)
        port = free_port()
        settings = ConsoleSettings(trading=trading, port=port, token=Secret(""))
        app = create_app(settings)
        uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
        thread = threading.Thread(target=uv.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not uv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        session = requests.Session()
        print(f"{'endpoint':<18} {'p50 ms':>8} {'p95 ms':>8}  (target p95 < {TARGET_P95_MS:.0f} ms, "
              f"{args.requests} requests each)")
        for path in ENDPOINTS:
            url = f"http://127.0.0.1:{port}{path}"
            for _ in range(10):  # warm-up: connections opened, plans cached
                session.get(url, timeout=30).raise_for_status()
            timings = []
            for _ in range(args.requests):
                begin = time.perf_counter()
                response = session.get(url, timeout=30)
                timings.append((time.perf_counter() - begin) * 1000)
                response.raise_for_status()
            p50, p95 = statistics.median(timings), percentile(timings, 0.95)
            verdict = "" if p95 < TARGET_P95_MS else "MISSED"
            print(f"{path:<18} {p50:8.1f} {p95:8.1f}  {verdict}".rstrip())
    finally:
        if uv is not None:
            uv.should_exit = True
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
