#!/usr/bin/env python3
"""Make NocoDB show trading-monitor's tables right: precision, status lists, times with seconds.

NocoDB's grid shows every ``NUMERIC`` column with display precision 1 (150.25 appears as
"150.3"), status columns as free text and times without seconds. This script sets, through
NocoDB's REST meta API (v2), for every base connected to the trading database:

- display precision: 2 for money, 4 for prices (they can be sub-dollar) and percentages,
  6 for average fill prices, 0 for quantities;
- the contract's status columns as single-selects with the contract's values;
- every date-time column as ``YYYY-MM-DD HH:mm:ss`` (24 hours).

Only NocoDB's own column metadata changes: the PostgreSQL columns keep their types, defaults
and CHECK constraints (checked by ``make nocodb-test``). One NocoDB fact: turning a column with
a default (``status``, ``order_status``, ``outcome``) into a single-select makes NocoDB re-send
``ALTER COLUMN ... SET DEFAULT`` with the same default, which only the table's owner may run; with
the base connected as ``trading_viewer`` those columns are refused, listed, and the exit code is
1 (the rest is done). Safe to run again: the second run says there is nothing to do. ::

    .venv/bin/python scripts/setup_nocodb.py --url http://localhost:8080 --token "$NOCODB_TOKEN"
    .venv/bin/python scripts/setup_nocodb.py --url ... --token ... --dry-run   # print, change nothing

The token is an API token (NocoDB: Account settings, Tokens); ``NOCODB_TOKEN`` is read when
``--token`` is not given. It is sent only as the ``xc-token`` header and never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

import requests

from trading import lifecycle, schema

MONEY, PRICE, AVERAGE_PRICE, QUANTITY = 2, 4, 6, 0

#: Display precision per column name (the same name means the same kind in every table).
PRECISION: dict[str, int] = {
    **dict.fromkeys(("cost_basis", "market_value", "unrealized_pnl", "actual_pnl", "realized_pnl", "cash",
                     "positions_value", "equity", "realized_pnl_today"), MONEY),
    **dict.fromkeys(("planned_entry", "planned_sl", "planned_tp", "actual_entry", "exit_price", "limit_price",
                     "stop_price", "current_price", "price", "unrealized_pnl_pct"), PRICE),
    **dict.fromkeys(("filled_avg_price", "avg_entry_price"), AVERAGE_PRICE),
    **dict.fromkeys(("planned_qty", "actual_qty", "qty", "filled_qty", "exited_qty"), QUANTITY),
}

#: Status columns shown as single-selects, with the contract's values (trading/lifecycle.py).
SELECTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("trade_journal", "status"): ("ORDERED", "POSITION", "CLOSED", "CANCELLED"),
    ("trade_journal", "trade_style"): tuple(sorted(lifecycle.TRADE_STYLES)),
    ("trade_journal", "exit_reason"): tuple(sorted(lifecycle.EXIT_REASONS)),
    ("order_execution", "order_status"): tuple(sorted(lifecycle.ORDER_STATUSES)),
    ("order_execution", "order_type"): tuple(t.value for t in lifecycle.OrderType),
    ("order_execution", "side"): tuple(sorted(lifecycle.ORDER_SIDES)),
    ("trade_fill", "side"): tuple(sorted(lifecycle.ORDER_SIDES)),
    ("program_run", "outcome"): tuple(sorted(lifecycle.RUN_OUTCOMES)),
}

DATETIME_META = {"date_format": "YYYY-MM-DD", "time_format": "HH:mm:ss", "is12hrFormat": False}

#: The tables this script looks after (the contract's, by name).
TABLES = frozenset(schema.TABLES_BY_NAME)


class NocoDBError(Exception):
    """NocoDB refused a call or could not be reached; the message says which call and why."""


@dataclass
class NocoDB:
    """The few meta API calls this script needs."""

    url: str
    token: str
    timeout: float = 30

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = requests.request(method, self.url.rstrip("/") + path, json=body, timeout=self.timeout,
                                        headers={"xc-token": self.token})
        except requests.RequestException as exc:
            raise NocoDBError(f"cannot reach NocoDB at {self.url}: {type(exc).__name__}") from None
        if not response.ok:
            raise NocoDBError(f"{method} {path}: HTTP {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    def bases(self) -> list[dict[str, Any]]:
        return self.call("GET", "/api/v2/meta/bases/")["list"]

    def tables(self, base_id: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/api/v2/meta/bases/{base_id}/tables")["list"]

    def table(self, table_id: str) -> dict[str, Any]:
        return self.call("GET", f"/api/v2/meta/tables/{table_id}")

    def update_column(self, column: dict[str, Any]) -> None:
        self.call("PATCH", f"/api/v2/meta/columns/{column['id']}", column)


def desired_column(table: str, column: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The column as it should be, and what changes (``None``: already right or not ours)."""
    name = column["column_name"]
    meta = dict(column.get("meta") or {})
    if (table, name) in SELECTS:
        values = SELECTS[(table, name)]
        current = [o.get("title") for o in ((column.get("colOptions") or {}).get("options") or [])]
        if column["uidt"] == "SingleSelect" and current == list(values):
            return None
        wanted = dict(column, uidt="SingleSelect", meta=meta, dtxp=",".join(f"'{v}'" for v in values),
                      colOptions={"options": [{"title": v, "order": i + 1} for i, v in enumerate(values)]})
        return wanted, f"single-select {', '.join(values)}"
    if name in PRECISION and column["uidt"] == "Decimal":
        if meta.get("precision") == PRECISION[name]:
            return None
        return dict(column, meta={**meta, "precision": PRECISION[name]}), f"precision {PRECISION[name]}"
    if column["uidt"] == "DateTime":
        if all(meta.get(key) == value for key, value in DATETIME_META.items()):
            return None
        return dict(column, meta={**meta, **DATETIME_META}), "time with seconds"
    return None


def plan_changes(noco: NocoDB) -> list[tuple[str, str, dict[str, Any], str]]:
    """Every change needed: (table, column, the column as it should be, what changes)."""
    changes = []
    for base in noco.bases():
        for listed in noco.tables(base["id"]):
            if listed.get("table_name") not in TABLES:
                continue
            table = noco.table(listed["id"])
            for column in table["columns"]:
                wanted = desired_column(table["table_name"], column)
                if wanted:
                    changes.append((f"{base['title']}.{table['table_name']}", column["column_name"], *wanted))
    # Single-selects first: NocoDB re-reads a table after a refused column change, which was seen
    # to undo display settings made on the same table just before.
    return sorted(changes, key=lambda change: change[2]["uidt"] != "SingleSelect")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Set NocoDB's display of trading-monitor's tables: precision of money, prices and "
                    "quantities, status single-selects, times with seconds. Safe to run again.")
    parser.add_argument("--url", required=True, help="NocoDB's base URL, for example http://localhost:8080")
    parser.add_argument("--token", default=os.environ.get("NOCODB_TOKEN"),
                        help="a NocoDB API token (default: NOCODB_TOKEN)")
    parser.add_argument("--dry-run", action="store_true", help="print what would change and change nothing")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("an API token is needed: --token or NOCODB_TOKEN (NocoDB: Account settings, Tokens)")
    noco = NocoDB(args.url, args.token)
    try:
        changes = plan_changes(noco)
    except NocoDBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not changes:
        print("nothing to do: every column already shows as it should")
        return 0
    refused: list[str] = []
    for table, column, wanted, what in changes:
        if not args.dry_run:
            try:
                noco.update_column(wanted)
            except NocoDBError as exc:
                # Going on: one refused column must not leave the others undone.
                refused.append(f"{table}.{column}")
                print(f"refused {table}.{column}: {what}: {exc}", file=sys.stderr)
                continue
        print(f"{'would set' if args.dry_run else 'set'} {table}.{column}: {what}")
    done = len(changes) - len(refused)
    print(f"{'would change' if args.dry_run else 'changed'} {done} column(s)")
    if refused:
        print(f"{len(refused)} column(s) refused ({', '.join(refused)}). NocoDB re-sets a column's default "
              "when it becomes a single-select, which only the table's owner may do. In a base connected as "
              "trading_viewer they stay text (their CHECK constraints still refuse other values); a base "
              "connected as the owner gets them. See docs/database-setup.md.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
