#!/usr/bin/env python3
"""The kill switch: stop, reduce or resume trading, for the whole account or one symbol.

The state is kept in the database (table ``trading_state``), so it survives restarts and every
program (order_executor, order_monitor, position_monitor, under the scheduler or by hand) obeys
it from the start of its next run. Every change needs a reason and records who made it and when
(``audit_event``, event ``TRADING_STATE_CHANGED``).

    .venv/bin/python scripts/trading_state.py status
    .venv/bin/python scripts/trading_state.py halt --reason "broker outage"
    .venv/bin/python scripts/trading_state.py flatten --reason "loss limit, close everything"
    .venv/bin/python scripts/trading_state.py reduce-only --symbol TSLA --reason "earnings tonight"
    .venv/bin/python scripts/trading_state.py resume --confirm --reason "outage over, checked positions"

The modes, from the least to the most restrictive:

  ACTIVE       everything runs (no row in trading_state means ACTIVE).
  REDUCE_ONLY  no new entries: NEW_TRADE decisions (and AMENDs that add exposure) wait;
               CLOSE, CANCEL, day-end exits, stops and monitoring go on.
  HALTED       nothing new is sent to the broker except protection repairs: decisions wait,
               the day-end exit waits; fills are still recorded, stops still repaired.
  FLATTEN      the order monitor's next run cancels every open order of the system's trades
               and sells their positions (exit reason FLATTENED), then the state becomes
               HALTED. Outside the session only unfilled entries are canceled; the sells
               happen at the first run in the session. Positions the system does not know are
               not touched.

A symbol (--symbol) obeys the stricter of its own mode and the account's. Leaving HALTED or
FLATTEN (resume, or reduce-only) is a reset and needs --confirm. Held decisions are not lost:
they run at the executor's next run after the resume (a day-trade plan held since an earlier
day is refused as expired). Circuit breakers (trading/breakers.py) use the same switch; a
REDUCE_ONLY set by the broker-error breaker lifts itself, every other one waits for resume.

The same change can be made in SQL or NocoDB by editing the row (see docs/operations.md,
"Emergency stop"). Exit status: 0 done, 1 database unavailable, 2 refused or misconfigured.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

from db_layer import TradingDB
from trading.errors import ConfigurationError, TradingError, TransientError
from trading.market_time import to_eastern
from trading.program import start
from trading.state import (
    ACCOUNT_SCOPE,
    RESET_REQUIRED,
    ScopeState,
    TradingMode,
    TradingStateRefused,
    read_trading_state,
    record_trading_state,
)

PROGRAM = "trading_state"

#: command -> (mode, what happens next)
COMMANDS: dict[str, tuple[TradingMode, str]] = {
    "halt": (TradingMode.HALTED, "every program obeys it from its next run: no decision is placed, no exit sent; "
                                 "fills are recorded and stops repaired"),
    "flatten": (TradingMode.FLATTEN, "the order monitor's next run (every 5 minutes in the session; now: "
                                     ".venv/bin/python order_monitor.py) cancels every open order of the trades and "
                                     "sells their shares, then sets HALTED"),
    "reduce-only": (TradingMode.REDUCE_ONLY, "new entries wait; exits, stops and monitoring go on"),
    "resume": (TradingMode.ACTIVE, "held decisions run at the executor's next run"),
}

MEANING = {
    TradingMode.ACTIVE: "everything runs",
    TradingMode.REDUCE_ONLY: "no new entries; exits and protection go on",
    TradingMode.HALTED: "nothing new sent to the broker except protection repairs",
    TradingMode.FLATTEN: "closing every trade, then HALTED",
}


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trading_state.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-mode", action="store_true",
                        help="use the test database (TEST_DATABASE_URL or the embedded test database)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="print every scope's mode, reason, who and when")
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    for name, (mode, effect) in COMMANDS.items():
        sub = commands.add_parser(name, help=f"set {mode.value}: {effect}", description=f"Set {mode.value}: {effect}.")
        sub.add_argument("--reason", required=True, help="why (required; shown to everyone who looks)")
        sub.add_argument("--symbol", help="only this symbol (default: the whole account)")
        sub.add_argument("--by", default=None, help="who makes the change (default: your user name)")
        if name == "resume":
            sub.add_argument("--confirm", action="store_true",
                             help="needed to leave HALTED or FLATTEN: you checked the account and mean it")
        else:
            sub.add_argument("--confirm", action="store_true",
                             help="needed for a less restrictive mode than HALTED or FLATTEN")
    return parser


def _scope_rows(db: TradingDB) -> list[ScopeState]:
    state = read_trading_state(db)
    return [state.account] + [state.symbols[name] for name in sorted(state.symbols)]


def _when(scope: ScopeState) -> str:
    if scope.changed_at is None:
        return "-"
    return to_eastern(scope.changed_at).strftime("%Y-%m-%d %H:%M:%S ET")


def status_lines(scopes: list[ScopeState]) -> list[str]:
    """The status table: scope, mode, since, by, source, reason (and when a breaker lifts itself)."""
    lines = [f"{'scope':<9} {'mode':<12} {'since':<23} {'by':<16} {'source':<24} reason"]
    for scope in scopes:
        reason = scope.reason or ("no change recorded" if scope.changed_at is None else "")
        if scope.resume_after is not None and scope.mode is TradingMode.REDUCE_ONLY:
            reason += f" (lifts itself from {to_eastern(scope.resume_after).strftime('%H:%M:%S ET')} if quiet)"
        lines.append(f"{scope.scope:<9} {scope.mode.value:<12} {_when(scope):<23} {scope.changed_by or '-':<16} "
                     f"{scope.source or '-':<24} {reason}")
    account = scopes[0]
    lines.append(f"account: {MEANING[account.mode]}")
    if account.mode in RESET_REQUIRED:
        lines.append("resume with: .venv/bin/python scripts/trading_state.py resume --confirm --reason \"...\"")
    return lines


def _as_json(scope: ScopeState) -> dict[str, Any]:
    return {"scope": scope.scope, "mode": scope.mode.value, "reason": scope.reason, "changed_by": scope.changed_by,
            "changed_at": scope.changed_at.isoformat() if scope.changed_at else None, "source": scope.source,
            "resume_after": scope.resume_after.isoformat() if scope.resume_after else None}


def change(db: TradingDB, command: str, *, reason: str, symbol: str | None, by: str | None,
           confirm: bool) -> ScopeState:
    """Apply one command; raises ``TradingStateRefused`` when it is not allowed as asked."""
    mode, _ = COMMANDS[command]
    return record_trading_state(db, mode, reason=reason, changed_by=by or _who(), scope=symbol or ACCOUNT_SCOPE,
                                confirm_reset=confirm, program=PROGRAM)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = start(PROGRAM, test_mode=args.test_mode, log_level="WARNING")
    if settings is None:
        return 2
    db = TradingDB(args.test_mode, settings.postgres, application_name=PROGRAM)
    try:
        db.connect()
        db.ensure_schema()
        if args.command == "status":
            scopes = _scope_rows(db)
            if args.json:
                print(json.dumps([_as_json(scope) for scope in scopes], indent=2))
            else:
                print("\n".join(status_lines(scopes)))
            return 0
        try:
            stored = change(db, args.command, reason=args.reason, symbol=args.symbol, by=args.by,
                            confirm=args.confirm)
        except TradingStateRefused as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 2
        where = "the account" if stored.scope == ACCOUNT_SCOPE else stored.scope
        print(f"{where} is {stored.mode.value}: {COMMANDS[args.command][1]}")
        print("\n".join(status_lines(_scope_rows(db))))
        return 0
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except TransientError as exc:
        print(f"database unavailable: {exc}", file=sys.stderr)
        return 1
    except TradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(main())
