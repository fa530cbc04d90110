"""``python -m console``: the operator console's web server (uvicorn), on 127.0.0.1:8080 by default.

    .venv/bin/python -m console [--host H] [--port P] [--database auto|main|demo] [--test-mode] [--no-broker]

With nothing configured it serves the embedded database like the programs; right after
``make demo`` (whose day is in the embedded database ``trading_monitor_demo``) while the main
embedded database has no trade yet, it serves the demo's day (``--database main`` to refuse).
"""

from __future__ import annotations

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

from config import Settings
from console.settings import DEFAULT_HOST, DEFAULT_PORT, ConsoleSettings, load_console_settings
from trading.errors import ConfigurationError, TradingError

logger = logging.getLogger("console")

DEMO_DB_NAME = "trading_monitor_demo"  # scripts/simulate_day.py's database


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m console", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The operator console: a REST API over the trading tables (OpenAPI page at /docs). Reads the "
                    "book; a Close or a changed stop/target is recorded as an approved decision that the order "
                    "monitor carries out at its next run.",
        epilog="Environment: CONSOLE_HOST (default 127.0.0.1), CONSOLE_PORT (default 8080), CONSOLE_TOKEN (bearer "
               "token: needed for every write, and for every request when listening beyond localhost), "
               "CONSOLE_OPERATOR (who writes are attributed to). The database and broker come from the same "
               "variables as the programs (DATABASE_URL, POSTGRES_*, ALPACA_*): with none, the embedded ones. "
               "See docs/console.md.")
    parser.add_argument("--host", help=f"interface to listen on (default CONSOLE_HOST or {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, help=f"port (default CONSOLE_PORT or {DEFAULT_PORT})")
    parser.add_argument("--database", choices=("auto", "main", "demo"), default="auto",
                        help="embedded database only: main (trading_monitor), demo (trading_monitor_demo, the "
                             "database of make demo) or auto (default: demo while main has no trade and the demo "
                             "has some)")
    parser.add_argument("--test-mode", action="store_true",
                        help="use the test database (TEST_DATABASE_URL or the embedded test database)")
    parser.add_argument("--no-broker", action="store_true",
                        help="never contact the broker (the benchmark series and the broker's health checks are "
                             "then reported as unavailable)")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="override LOG_LEVEL")
    return parser


def choose_database(trading: Settings, choice: str) -> tuple[Settings, str | None]:
    """The embedded database to serve, and a line saying why when it is the demo's."""
    if not trading.postgres.embedded or trading.test_mode or choice == "main":
        return trading, None
    demo = dataclasses.replace(trading, postgres=dataclasses.replace(trading.postgres, dbname=DEMO_DB_NAME))
    if choice == "demo":
        return demo, f"serving the demo database {DEMO_DB_NAME} (--database demo)"
    from db_layer import TradingDB

    with TradingDB(config=trading.postgres, application_name="console") as db:
        exists = db.execute_one("SELECT 1 AS present FROM pg_database WHERE datname = %s", (DEMO_DB_NAME,))
        main_trades = db.execute_one("SELECT count(*) AS n FROM trade_journal")
    if not exists or (main_trades and main_trades["n"]):
        return trading, None
    with TradingDB(config=demo.postgres, application_name="console") as db:
        demo_trades = db.execute_one("SELECT count(*) AS n FROM trade_journal")
    if not demo_trades or not demo_trades["n"]:
        return trading, None
    return demo, (f"serving the demo's day from {DEMO_DB_NAME}: the embedded database {trading.postgres.dbname} "
                  "has no trade yet (--database main to serve it instead)")


def main(argv: Sequence[str] | None = None) -> int:
    from trading.program import start

    args = build_parser().parse_args(argv)
    trading = start("console", test_mode=args.test_mode, log_level=args.log_level)
    if trading is None:
        return 2
    try:
        settings = load_console_settings(args.test_mode, trading=trading)
        overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
        if overrides:
            settings = dataclasses.replace(settings, **overrides)
            load_console_settings(args.test_mode, env={"CONSOLE_HOST": settings.host,
                                                       "CONSOLE_TOKEN": settings.token.reveal()}, trading=trading)
        served, why = choose_database(settings.trading, args.database)
        settings = settings.with_trading(served)
    except ConfigurationError as exc:
        logger.error("configuration error: %s", exc)
        return 2
    except TradingError as exc:
        logger.error("could not start: %s", exc)
        return 1
    return serve(settings, why, no_broker=args.no_broker)


def serve(settings: ConsoleSettings, why: str | None, *, no_broker: bool) -> int:
    """Run uvicorn until Ctrl-C."""
    import uvicorn

    from alpaca_client import connect_broker
    from console.app import create_app

    def broker() -> object:
        return connect_broker(settings.trading.alpaca, test_mode=settings.trading.test_mode)

    app = create_app(settings, connect_broker=None if no_broker else broker)  # type: ignore[arg-type]
    print(f"operator console: {settings.url}  (API {settings.url}api/portfolio, OpenAPI {settings.url}docs)")
    print(f"  database {settings.trading.postgres.describe()}")
    if why:
        print(f"  {why}")
    print("  writes " + ("need the bearer token (CONSOLE_TOKEN)" if settings.token else
                         "are disabled until CONSOLE_TOKEN is set"))
    sys.stdout.flush()
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
