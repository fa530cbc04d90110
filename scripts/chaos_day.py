#!/usr/bin/env python3
"""chaos_day: play seeded chaos trading days and count the violations of every invariant.

    .venv/bin/python scripts/chaos_day.py --seeds 200        # seeds 0..199 (or: make chaos SEEDS=200)
    .venv/bin/python scripts/chaos_day.py --seed 17 -v       # replay one seed, every moment printed

Each seed plays Friday 2026-11-20 on a fresh paper exchange book and emptied tables: decisions,
the three programs at the scheduler's fire times (overlapping, in threads with their own
connections), outside actions through alpaca-py, broker faults, runs killed at a network call,
and price gaps; after every moment it checks the invariants of design.md §6 (see
``tests/chaos/day.py`` and ``tests/chaos/invariants.py``). It starts a throwaway PostgreSQL (as
the tests do, or ``TEST_DATABASE_URL``) and an in-process paper exchange; nothing else is touched.

It prints one line per seed, then the totals: seeds, runs, actions, faults, checks and violations
per invariant, and the time. A failing seed prints its violations and the command that replays it.

Exit status: 0 when no invariant was violated, 1 otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import argparse
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from config import PostgresConfig, parse_database_url
from db_layer import TradingDB

#: Variables a developer's shell may hold that must never reach the chaos day (as in the tests).
SCRUBBED = ("DATABASE_URL", "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD",
            "ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALPACA_PAPER", "ALPACA_BASE_URL", "ALPACA_DATA_URL",
            "ALPACA_LIVE_CONFIRM", "LOG_LEVEL", "DECISION_SCHEMA", "NOTIFY_URLS", "LOG_FORMAT")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chaos_day.py", description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Exit status: 0 when no invariant was violated, 1 otherwise.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--seeds", type=int, default=20, metavar="N", help="play seeds 0..N-1 (default 20)")
    which.add_argument("--seed", type=int, metavar="S", help="replay seed S only")
    parser.add_argument("--first", type=int, default=0, metavar="F", help="with --seeds: start at seed F (default 0)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print every moment (its runs, outside actions, violations) and the programs' warnings")
    args = parser.parse_args(argv)
    if args.seed is None and args.seeds < 1:
        parser.error("--seeds must be at least 1")
    return args


@contextmanager
def environment() -> Iterator[tuple[PostgresConfig, str]]:
    """A database (``TEST_DATABASE_URL`` or a throwaway cluster) with the schema, and a paper exchange."""
    import config
    from paper_exchange import PaperExchange, start_server
    from paper_exchange.ratelimit import UNTHROTTLED_REQUESTS_PER_MINUTE
    from tests.factories import FRIDAY_0945

    for name in SCRUBBED:
        os.environ.pop(name, None)
    config._dotenv_loaded = True  # never read a developer's .env
    server = None
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        from tests.pg_server import RootSafePostgresql

        server = RootSafePostgresql()
        url = server.url()
        os.environ["TEST_DATABASE_URL"] = url
    pg = parse_database_url(url, "TEST_DATABASE_URL")
    with TradingDB(test_mode=True, config=pg) as db:
        db.create_schema()
    handle = start_server(exchange=PaperExchange(seed=7, simulated_clock=True, start_time=FRIDAY_0945,
                                                 price_simulation=False),
                          rate_limit=UNTHROTTLED_REQUESTS_PER_MINUTE)
    try:
        yield pg, handle.url
    finally:
        handle.stop()
        if server is not None:
            server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.CRITICAL,
                        format="    %(levelname)s %(name)s: %(message)s")
    from tests.chaos.day import play_day, replay_command
    from tests.chaos.invariants import INVARIANTS, count

    seeds = [args.seed] if args.seed is not None else list(range(args.first, args.first + args.seeds))
    started = time.monotonic()
    runs: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    violations: Counter[str] = Counter()
    checks = 0
    failing: list[int] = []
    with environment() as (pg, url):
        for seed in seeds:
            result = play_day(seed, pg, url, log=print if args.verbose else None)
            runs.update(result.runs)
            actions.update(result.actions)
            faults.update(result.faults)
            checks += result.checks
            found = count(result.violations)
            violations.update(found)
            print(f"seed {seed}: {sum(result.runs.values())} runs, {sum(result.actions.values())} actions, "
                  f"{sum(result.faults.values())} faults, {len(result.violations)} violations "
                  f"({result.seconds:.1f} s)", flush=True)
            if not result.ok:
                failing.append(seed)
                for violation in result.violations[:10]:
                    print(f"    {violation.line()}")
                if len(result.violations) > 10:
                    print(f"    ... and {len(result.violations) - 10} more")
                print(f"    replay: {replay_command(seed)}")
    seconds = time.monotonic() - started
    print()
    print(f"seeds {len(seeds)}, runs {sum(runs.values())} ({', '.join(f'{k} {v}' for k, v in sorted(runs.items()))}), "
          f"checks {checks}, {seconds:.0f} s")
    print(f"actions {sum(actions.values())}: " + ", ".join(f"{k} {v}" for k, v in sorted(actions.items())))
    print(f"faults {sum(faults.values())}: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
    print("violations per invariant:")
    for name in INVARIANTS:
        print(f"    {name:24} {violations.get(name, 0)}")
    if failing:
        print(f"failing seeds: {' '.join(map(str, failing))}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
