"""Command line: run the paper exchange, or manage it as a background service.

    .venv/bin/python -m paper_exchange [options]              serve in the foreground (Ctrl-C stops)
    .venv/bin/python -m paper_exchange start --state-dir DIR  start in the background (if not running)
    .venv/bin/python -m paper_exchange stop --state-dir DIR   stop the background exchange
    .venv/bin/python -m paper_exchange status --state-dir DIR show whether it runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from . import service
from .engine import PaperExchange
from .persistence import StateFile
from .ratelimit import ALPACA_REQUESTS_PER_MINUTE, check_limit
from .server import ExchangeServer

DESCRIPTION = """\
A local Alpaca-compatible paper exchange. alpaca-py's TradingClient and
StockHistoricalDataClient trade against it with url_override=URL; set quotes,
move the simulated clock and inject faults through the /admin API
(see paper_exchange/README.md).
"""

EPILOG = """\
service commands:
  start  --state-dir DIR [--port P]   start a background exchange saving to DIR/state.json
                                      (log DIR/exchange.log, pid DIR/exchange.pid)
  stop   --state-dir DIR              stop it
  status --state-dir DIR [--port P]   print whether it runs (exit code 3 when not)

examples:
  .venv/bin/python -m paper_exchange --port 8765
  .venv/bin/python -m paper_exchange --simulated-clock --start-time 2026-11-20T14:30:00Z --seed 7
  .venv/bin/python -m paper_exchange --port 8765 --state-file var/paper_exchange/state.json
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of the serve command (the default)."""
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m paper_exchange",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=service.DEFAULT_PORT,
                        help=f"port to listen on, 0 for any free port (default {service.DEFAULT_PORT})")
    parser.add_argument("--rate-limit", type=_rate_limit, default=ALPACA_REQUESTS_PER_MINUTE, metavar="N",
                        help="requests per minute per API key on the Trading API, and apart on the "
                             f"Market-data API, before 429 (Alpaca: {ALPACA_REQUESTS_PER_MINUTE}; the default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the price simulation (default 0)")
    parser.add_argument("--cash", default="100000", help="starting cash in dollars (default 100000)")
    parser.add_argument("--simulated-clock", action="store_true",
                        help="time moves only through POST /admin/clock (default: wall clock)")
    parser.add_argument("--start-time", help="ISO time the simulated clock starts at (default: now)")
    hours = parser.add_mutually_exclusive_group()
    hours.add_argument("--nyse-hours", dest="always_open", action="store_const", const=False,
                       help="follow the NYSE session (default with --simulated-clock)")
    hours.add_argument("--always-open", dest="always_open", action="store_const", const=True,
                       help="never close, day orders never expire (default with the wall clock)")
    parser.add_argument("--symbols", default="",
                        help="extra symbols, comma-separated, optionally with a price: ZZZZ=12.5,ABC")
    parser.add_argument("--no-default-symbols", action="store_true",
                        help="start without the built-in ~40 tickers")
    parser.add_argument("--no-price-simulation", action="store_true",
                        help="no random walk: only quotes set through /admin/quotes exist")
    parser.add_argument("--partial-fill-probability", type=float, default=0.0,
                        help="chance that an eligible fill is partial (Alpaca paper: about 0.1; default 0)")
    parser.add_argument("--stream-port", type=int, default=0,
                        help="port of the trade-updates websocket (default 0: any free port, printed at start "
                             "and named by GET /admin/stream); -1 serves no stream")
    parser.add_argument("--instant", action="store_true",
                        help="the old, kinder order life: fill on submission, cancel and replace at once "
                             "(default: pending_new / pending_cancel / pending_replace, as at Alpaca)")
    parser.add_argument("--ack-latency", type=float, default=0.05,
                        help="wall-clock seconds before an order is acknowledged and a cancel or replace "
                             "completes (default 0.05; the simulated clock uses its next step)")
    parser.add_argument("--cash-account", action="store_true",
                        help="a long-only cash account (multiplier 1, no short sales; default: margin, "
                             "multiplier 2, shorting enabled, as an Alpaca paper account)")
    parser.add_argument("--state-file", type=Path,
                        help="load state from this JSON file at start and keep saving to it")
    parser.add_argument("--pid-file", type=Path, help="write the process id here while running")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"),
                        help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return parser


def _rate_limit(text: str) -> int:
    try:
        return check_limit(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}") from None


def _parse_symbols(text: str) -> dict[str, Decimal | None]:
    symbols: dict[str, Decimal | None] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, price = part.partition("=")
        symbols[name.strip().upper()] = Decimal(price) if price else None
    return symbols


#: Where the programs keep their background exchanges (``make exchange-stop`` stops both).
KNOWN_STATE_DIRS = (Path("var/paper_exchange"), Path("var/paper_exchange_test"))


def port_in_use_message(host: str, port: int, exc: OSError) -> str:
    """What is on the port and how to stop it, instead of an ``OSError`` traceback."""
    url = f"http://{host if host not in ('', '0.0.0.0') else '127.0.0.1'}:{port}"  # noqa: S104 (a wildcard host is reached on loopback)
    if not service.is_healthy(url):
        return (f"error: cannot listen on {host}:{port}: {exc.strerror or exc}; something that is not a paper "
                f"exchange holds the port (see: ss -ltnp 'sport = :{port}'); choose another with --port")
    owner = ""
    for state_dir in KNOWN_STATE_DIRS:
        info = service.status(state_dir, port)
        if info.get("running") and info.get("healthy"):
            owner = (f" (started in the background by a program: pid {info['pid']}, state in {state_dir}/); "
                     f"stop it with: make exchange-stop (or .venv/bin/python -m paper_exchange stop "
                     f"--state-dir {state_dir})")
            break
    if not owner:
        owner = " (a foreground one, or one started from another checkout: stop it with Ctrl-C where it runs)"
    return (f"a paper exchange already runs on {url}{owner}; use it as it is "
            f"(ALPACA_BASE_URL={url}) or start this one with another --port")


def serve(argv: Sequence[str]) -> int:
    """Run the exchange in the foreground until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    exchange = PaperExchange(
        seed=args.seed,
        simulated_clock=args.simulated_clock,
        start_time=args.start_time,
        starting_cash=args.cash,
        symbols=_parse_symbols(args.symbols),
        include_default_universe=not args.no_default_symbols,
        price_simulation=not args.no_price_simulation,
        partial_fill_probability=args.partial_fill_probability,
        always_open=args.always_open,
        instant=args.instant,
        ack_latency=args.ack_latency,
        account_type="cash" if args.cash_account else "margin",
    )
    state_file = StateFile(args.state_file, exchange) if args.state_file else None
    if state_file is not None:
        state_file.load()
        state_file.start()
    try:
        server = ExchangeServer(exchange=exchange, host=args.host, port=args.port, rate_limit=args.rate_limit,
                                stream_port=None if args.stream_port < 0 else args.stream_port)
    except OSError as exc:
        if state_file is not None:
            state_file.stop()
        print(port_in_use_message(args.host, args.port, exc), file=sys.stderr)
        return 2
    if args.pid_file:
        args.pid_file.parent.mkdir(parents=True, exist_ok=True)
        args.pid_file.write_text(f"{os.getpid()}\n")
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    clock = "simulated" if exchange.simulated_clock else "wall"
    hours = "always open" if exchange.always_open else "NYSE hours"
    print(f"Paper exchange listening on {server.url} ({clock} clock, {hours})", flush=True)
    print(f"  ALPACA_BASE_URL={server.url}", flush=True)
    print(f"  ALPACA_DATA_URL={server.url}", flush=True)
    if server.stream is not None:
        print(f"  ALPACA_STREAM_URL={server.stream.url}", flush=True)
    print(f"  any non-empty API key and secret are accepted; {args.rate_limit} requests/min per key; "
          "Ctrl-C stops", flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        server.stop()
        if state_file is not None:
            state_file.stop()
        if args.pid_file:
            with contextlib.suppress(OSError):
                if args.pid_file.read_text().strip() == str(os.getpid()):
                    args.pid_file.unlink()
        print("Paper exchange stopped", flush=True)
    return 0


def manage(command: str, argv: Sequence[str]) -> int:
    """The start/stop/status service commands."""
    parser = argparse.ArgumentParser(prog=f".venv/bin/python -m paper_exchange {command}")
    parser.add_argument("--state-dir", type=Path, required=True,
                        help="directory of state.json, exchange.log and exchange.pid")
    parser.add_argument("--port", type=int, default=service.DEFAULT_PORT)
    args = parser.parse_args(argv)
    if command == "start":
        url = service.ensure_running(args.state_dir, args.port)
        print(url)
        return 0
    if command == "stop":
        print("stopped" if service.stop(args.state_dir) else "not running")
        return 0
    info = service.status(args.state_dir, args.port)
    print(json.dumps(info, indent=2))
    return 0 if info["running"] or info["healthy"] else 3


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m paper_exchange``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("start", "stop", "status"):
        return manage(args[0], args[1:])
    if args and args[0] == "serve":
        args = args[1:]
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
