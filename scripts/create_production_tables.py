#!/usr/bin/env python3
"""Prepare an existing (NocoDB) database for trading-monitor.

Creates the system's own tables and indexes when missing and adds the four execution columns
(``executed``, ``execution_time``, ``existing_order_id``, ``existing_trade_journal_id``) to the
upstream ``analysis_decision`` table. It never creates, drops or rewrites
``analysis_decision`` itself and never deletes anything. Safe to run twice: the second run
reports that nothing was needed.

    python scripts/create_production_tables.py            # uses DATABASE_URL or POSTGRES_*
    python scripts/create_production_tables.py --dry-run  # print the SQL, connect to nothing
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import get_postgres_config
from db_layer import TradingDB
from trading import schema
from trading.errors import TradingError

CATALOG_SQL = {
    "table": "SELECT table_name AS item FROM information_schema.tables WHERE table_schema = current_schema()",
    "column": ("SELECT table_name || '.' || column_name AS item FROM information_schema.columns "
               "WHERE table_schema = current_schema()"),
    "index": "SELECT indexname AS item FROM pg_indexes WHERE schemaname = current_schema()",
    "constraint": ("SELECT conname AS item FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
                   "WHERE n.nspname = current_schema() AND c.contype = 'c'"),
    "trigger": "SELECT tgname AS item FROM pg_trigger WHERE NOT tgisinternal",
}


def catalog(db: TradingDB) -> dict[str, set[str]]:
    """What exists now: tables, columns, indexes, check constraints, triggers."""
    return {kind: {row["item"] for row in db.execute_query(query)} for kind, query in CATALOG_SQL.items()}


def apply(db: TradingDB) -> list[str]:
    """Run the production statements in one transaction; returns what changed, one line each."""
    if "analysis_decision" not in catalog(db)["table"]:
        raise TradingError(
            f"table analysis_decision not found in database {db.config.dbname!r}: this script never creates it; "
            "point DATABASE_URL at the database NocoDB and the upstream workflow use")
    before = catalog(db)
    with db.transaction():
        db.execute_update("SELECT pg_advisory_xact_lock(%s)", (schema.SCHEMA_LOCK_KEY,))
        for statement in schema.schema_statements(production=True):
            db.execute_update(statement)
    after = catalog(db)
    changes: list[str] = []
    for kind in CATALOG_SQL:
        changes.extend(f"created {kind} {item}" for item in sorted(after[kind] - before[kind]))
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Create trading-monitor's tables and add its four columns to analysis_decision "
                    "in an existing database (DATABASE_URL or POSTGRES_*). Never creates or drops "
                    "analysis_decision; safe to run twice.")
    parser.add_argument("--dry-run", action="store_true", help="print the SQL that would run and connect to nothing")
    args = parser.parse_args(argv)

    statements = schema.schema_statements(production=True)
    if args.dry_run:
        for statement in statements:
            print(statement.rstrip() + ";")
        return 0
    try:
        config = get_postgres_config()
        if config.embedded:
            print("No database configured (DATABASE_URL or POSTGRES_HOST): nothing to migrate. "
                  "The embedded database creates its full schema by itself.", file=sys.stderr)
            return 2
        print(f"database: {config.describe()}")
        with TradingDB(config=config) as db:
            changes = apply(db)
    except TradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if changes:
        for line in changes:
            print(line)
        print(f"done: {len(changes)} change(s)")
    else:
        print("nothing to do: the schema is already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
