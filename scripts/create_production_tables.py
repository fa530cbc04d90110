#!/usr/bin/env python3
"""Prepare an existing (NocoDB) database for trading-monitor.

Creates the system's own tables and indexes when missing and adds the four execution columns
(``executed``, ``execution_time``, ``existing_order_id``, ``existing_trade_journal_id``) to the
upstream ``analysis_decision`` table. It never creates, drops or rewrites
``analysis_decision`` itself and never deletes anything. Safe to run twice: the second run
reports that nothing was needed.

    .venv/bin/python scripts/create_production_tables.py            # uses DATABASE_URL or POSTGRES_*
    .venv/bin/python scripts/create_production_tables.py --schema p_base  # table made inside NocoDB
    .venv/bin/python scripts/create_production_tables.py --dry-run  # print the SQL, connect to nothing

A table created inside NocoDB lives in the base's own schema and has NocoDB's column variants
(``json`` instead of ``jsonb``, timestamps without zone, ``created_by``/``updated_by``/``nc_order``):
all accepted. ``--schema`` (or ``DECISION_SCHEMA``) names that schema; the system's own tables are
created in the first schema of the search path (``public``). The script says what it found where.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trading.preflight  # noqa: F401  (first: one line, not a traceback, outside .venv)

# isort: split

from config import decision_schema_setting, get_postgres_config
from db_layer import TradingDB
from trading import schema
from trading.errors import TradingError

# Everything in the schemas of the search path (public and, with --schema, the decision's schema).
CATALOG_SQL = {
    "table": ("SELECT table_name AS item FROM information_schema.tables "
              "WHERE table_schema = ANY(current_schemas(false))"),
    "column": ("SELECT table_name || '.' || column_name AS item FROM information_schema.columns "
               "WHERE table_schema = ANY(current_schemas(false))"),
    "index": "SELECT indexname AS item FROM pg_indexes WHERE schemaname = ANY(current_schemas(false))",
    "constraint": ("SELECT conname AS item FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
                   "WHERE n.nspname = ANY(current_schemas(false)) AND c.contype = 'c'"),
    "trigger": "SELECT tgname AS item FROM pg_trigger WHERE NOT tgisinternal",
    "function": ("SELECT p.proname AS item FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                 "WHERE n.nspname = ANY(current_schemas(false))"),
}

#: The types accepted for the upstream columns (NocoDB's variants included) and what each means.
ACCEPTED_TYPES: dict[str, dict[str, str]] = {
    "decision": {"jsonb": "", "json": "NocoDB's JSON field: read the same way"},
    "created_at": {"timestamp with time zone": "",
                   "timestamp without time zone": "no zone: NocoDB writes UTC, read as UTC"},
    "Approve": {"boolean": ""},
}


def locate_decision_table(db: TradingDB) -> list[str]:
    """Every schema holding a table named analysis_decision (to say where it is when it is not found)."""
    rows = db.execute_query("SELECT table_schema FROM information_schema.tables "
                            "WHERE table_name = 'analysis_decision' ORDER BY 1")
    return [row["table_schema"] for row in rows]


def describe_decision_table(db: TradingDB) -> list[str]:
    """What was found where: one line for the table, one per accepted variant; refuses a wrong type."""
    where = db.table_schema("analysis_decision")
    lines = [f"found analysis_decision in schema {where}; the system's tables go in schema "
             f"{db.execute_one('SELECT current_schema() AS s')['s']}"]
    rows = db.execute_query("SELECT column_name, data_type FROM information_schema.columns "
                            "WHERE table_schema = %s AND table_name = 'analysis_decision'", (where,))
    types = {row["column_name"]: row["data_type"] for row in rows}
    for column, accepted in ACCEPTED_TYPES.items():
        found = types.get(column)
        if found is None:
            raise TradingError(f"{where}.analysis_decision has no column {column!r}: the upstream workflow "
                               "must write it (see docs/database-setup.md)")
        if found not in accepted:
            raise TradingError(f"{where}.analysis_decision.{column} is {found}; expected one of "
                               f"{', '.join(accepted)}")
        if accepted[found]:
            lines.append(f"accepted {column} as {found} ({accepted[found]})")
    known = set(schema.ANALYSIS_DECISION.column_names())
    extra = sorted(set(types) - known)
    if extra:
        lines.append(f"left alone: {len(extra)} column(s) the system does not use ({', '.join(extra)})")
    return lines


def catalog(db: TradingDB) -> dict[str, set[str]]:
    """What exists now: tables, columns, indexes, check constraints, triggers."""
    return {kind: {row["item"] for row in db.execute_query(query)} for kind, query in CATALOG_SQL.items()}


def require_decision_table(db: TradingDB) -> None:
    """Stop with where to look when analysis_decision is not on the search path (or is shadowed)."""
    if db.table_schema("analysis_decision") is None:
        elsewhere = locate_decision_table(db)
        searched = db.execute_one("SELECT array_to_string(current_schemas(false), ', ') AS s")["s"]
        hint = (f"it exists in schema {', '.join(elsewhere)}: run again with --schema {elsewhere[0]}"
                if elsewhere else "point DATABASE_URL at the database NocoDB and the upstream workflow use")
        raise TradingError(
            f"table analysis_decision not found in database {db.config.dbname!r} (searched schema {searched}); "
            f"this script never creates it; {hint}")
    db.check_decision_schema()


def apply(db: TradingDB) -> list[str]:
    """Run the production statements in one transaction; returns what changed, one line each."""
    require_decision_table(db)
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
    parser.add_argument("--schema", metavar="NAME",
                        help="the schema of analysis_decision when it is not public (a table created inside "
                             "NocoDB lives in the base's schema); default: DECISION_SCHEMA, else the search path")
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
        if args.schema:
            config = replace(config, decision_schema=decision_schema_setting({"--schema": args.schema}, "--schema"))
        print(f"database: {config.describe()}")
        with TradingDB(config=config) as db:
            require_decision_table(db)
            for line in describe_decision_table(db):
                print(line)
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
