#!/usr/bin/env python3
"""eod_report: the end-of-day report of one trading day, stored, printed and sent.

    .venv/bin/python scripts/eod_report.py                     # today (the broker's date)
    .venv/bin/python scripts/eod_report.py --date 2026-11-20   # any day
    .venv/bin/python scripts/eod_report.py --date 2026-11-20 --resend   # send it again

The scheduler runs it at 16:30 ET (``EOD_REPORT_TIME``). The report (decisions by outcome with
refusal reasons, orders and fills, trades closed with P&L by exit reason, open positions with
their stops, equity against the previous close, trading-state changes and breaker trips,
failed runs) is stored in ``daily_report`` (one row per date: running it again replaces the
row), printed, and sent through the notifications (``NOTIFY_URLS``) once per date. See
trading/daily_report.py for where each figure comes from.

Exit status: 0 stored, 1 a warning (the database or broker unavailable), 2 a configuration error.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import argparse
import datetime as dt
import json
import logging
from collections.abc import Sequence

from trading.daily_report import PROGRAM, EndOfDayReport
from trading.errors import ConfigurationError, TransientError
from trading.program import build_parser, exit_code, start

logger = logging.getLogger("eod_report")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date as YYYY-MM-DD: {text!r}") from None


def build_arg_parser() -> argparse.ArgumentParser:
    parser = build_parser("eod_report.py", (__doc__ or "").split("\n\n")[0])
    parser.add_argument("--date", type=_date, help="the trading day to report, YYYY-MM-DD (default: today, US/Eastern, "
                                                   "by the broker's clock)")
    parser.add_argument("--no-send", action="store_true", help="store and print only; send no notification")
    parser.add_argument("--resend", action="store_true",
                        help="send the report again even if this date's report was sent already")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from alpaca_client import connect_broker
    from db_layer import TradingDB

    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if args.no_send and args.resend:
        parser.error("--no-send and --resend contradict each other")
    settings = start(PROGRAM, test_mode=args.test_mode, log_level=args.log_level)
    if settings is None:
        return 2
    db = TradingDB(test_mode=args.test_mode, config=settings.postgres, application_name=PROGRAM)
    try:
        db.connect()
        db.ensure_schema()
        broker = connect_broker(settings.alpaca, test_mode=args.test_mode)
        program = EndOfDayReport(db, broker, settings, day=args.date, notify=not args.no_send, resend=args.resend)
        summary = program.run()
    except ConfigurationError as exc:
        logger.error("configuration error: %s", exc)
        return 2
    except TransientError as exc:
        logger.warning("could not make the report: %s", exc)
        return 1
    finally:
        db.close()
    report = program.report
    if args.json:
        print(json.dumps({"summary": summary.as_dict(), "report": report.figures() if report else None},
                         sort_keys=True, default=str))
    elif report is not None:
        print(report.text())
    else:
        print(summary.line())
        for note in summary.notes:
            print(f"  {note}")
    return exit_code(summary)


if __name__ == "__main__":
    sys.exit(main())
