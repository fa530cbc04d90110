"""Benchmark the paper exchange through alpaca-py: submit N orders, then list them page by page.

    .venv/bin/python scripts/benchmark_paper_exchange.py                 # 1,000 orders, separate process
    .venv/bin/python scripts/benchmark_paper_exchange.py --orders 200 --in-process
    .venv/bin/python scripts/benchmark_paper_exchange.py --url http://127.0.0.1:8765

By default the exchange runs in its own process (as the daemon does), so client and server
do not share one interpreter lock. Prints requests per second for each phase.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import requests
from alpaca.common.enums import Sort
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest

#: Printed beside the figure; never pass/fail. Alpaca allows ~200 calls a minute: the local
#: exchange should never be what slows a test or the demo.
GOAL_REQUESTS_PER_SECOND = 200


@contextmanager
def exchange(url: str | None, in_process: bool) -> Iterator[str]:
    """Yield the URL of an exchange: the given one, an in-process one, or a child process."""
    if url:
        yield url.rstrip("/")
        return
    if in_process:
        from paper_exchange import PaperExchange, start_server
        from paper_exchange.ratelimit import UNTHROTTLED_REQUESTS_PER_MINUTE

        handle = start_server(exchange=PaperExchange(price_simulation=False),
                              rate_limit=UNTHROTTLED_REQUESTS_PER_MINUTE)
        try:
            yield handle.url
        finally:
            handle.stop()
        return
    process = subprocess.Popen(
        # The throughput is measured, not Alpaca's 200 requests a minute: the limit is raised.
        [sys.executable, "-m", "paper_exchange", "--port", "0", "--no-price-simulation", "--log-level", "WARNING",
         "--rate-limit", "1000000"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # "Paper exchange listening on http://127.0.0.1:PORT (...)"
        yield first.split(" on ", 1)[1].split()[0]
    finally:
        process.terminate()
        process.wait(timeout=10)


def rate(count: int, seconds: float) -> str:
    return f"{count} requests in {seconds:.2f} s = {count / seconds:,.0f} req/s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1000, help="orders to submit (default 1000)")
    parser.add_argument("--url", help="benchmark an exchange that is already running")
    parser.add_argument("--in-process", action="store_true", help="run the exchange in this process")
    args = parser.parse_args()

    with exchange(args.url, args.in_process) as url:
        requests.post(url + "/admin/reset", timeout=10)
        requests.post(url + "/admin/quotes", json={"AAPL": {"bid": "150.20", "ask": "150.30"}}, timeout=10)
        client = TradingClient("bench-key", "bench-secret", paper=True, url_override=url)
        run = datetime.now(UTC).strftime("%H%M%S%f")

        started = time.perf_counter()
        for i in range(args.orders):
            client.submit_order(
                LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
                                  limit_price=50, client_order_id=f"bench-{run}-{i}")
            )
        submit_seconds = time.perf_counter() - started

        started = time.perf_counter()
        pages, listed, after = 0, 0, datetime(2000, 1, 1, tzinfo=UTC)
        while True:
            page = client.get_orders(
                GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500, after=after, direction=Sort.ASC)
            )
            pages += 1
            if not page:
                break
            listed += len(page)
            after = page[-1].submitted_at
        list_seconds = time.perf_counter() - started

        started = time.perf_counter()
        small = 300
        for _ in range(small):
            client.get_clock()
        clock_seconds = time.perf_counter() - started

        started = time.perf_counter()
        for _ in range(small // 3):
            client.submit_order(MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                                   time_in_force=TimeInForce.DAY))
        market_seconds = time.perf_counter() - started
        client.cancel_orders()

    total = args.orders + pages + small + small // 3
    print(f"exchange: {url}")
    print(f"submit limit orders : {rate(args.orders, submit_seconds)}")
    print(f"list {listed} orders  : {pages} pages of up to 500 in {list_seconds:.2f} s")
    print(f"get clock           : {rate(small, clock_seconds)}")
    print(f"market buys (filled): {rate(small // 3, market_seconds)}")
    elapsed = submit_seconds + list_seconds + clock_seconds + market_seconds
    print(f"overall             : {rate(total, elapsed)} (goal >= {GOAL_REQUESTS_PER_SECOND} req/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
