"""scripts/create_production_tables.py against a database that looks like NocoDB's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config import PostgresConfig, get_postgres_config
from db_layer import TradingDB

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "create_production_tables.py"


@pytest.fixture
def nocodb(pg_config: PostgresConfig):
    """A separate database holding only NocoDB's analysis_decision, with rows and extra columns."""
    admin = TradingDB(test_mode=True, config=pg_config)
    admin.connect()
    admin.execute_update("DROP DATABASE IF EXISTS nocodb_sim")
    admin.execute_update("CREATE DATABASE nocodb_sim")
    cfg = PostgresConfig(host=pg_config.host, port=pg_config.port, dbname="nocodb_sim", user=pg_config.user,
                         source="DATABASE_URL")
    with TradingDB(config=cfg) as db:
        db.execute_update(
            'CREATE TABLE analysis_decision (id SERIAL PRIMARY KEY, created_at TIMESTAMPTZ DEFAULT now(), '
            'ticker TEXT, primary_action TEXT, decision JSONB, "Approve" BOOLEAN, nc_order NUMERIC, '
            'analyst_notes TEXT)')
        db.execute_update("INSERT INTO analysis_decision "
                          "(ticker, primary_action, decision, \"Approve\", analyst_notes) "
                          "VALUES ('AAPL', 'NEW_TRADE', '{\"planned_entry\": 150}', true, 'keep me')")
    url = f"postgresql://{cfg.user}@{cfg.host}:{cfg.port}/nocodb_sim"
    try:
        yield cfg, url
    finally:
        admin.execute_update("DROP DATABASE IF EXISTS nocodb_sim WITH (FORCE)")
        admin.close()


def run_script(*args: str, url: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "DATABASE_URL"))}
    if url:
        env["DATABASE_URL"] = url
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=60)


def test_existing_analysis_decision_gains_four_columns_and_keeps_its_rows(nocodb):
    cfg, url = nocodb
    first = run_script(url=url)
    assert first.returncode == 0, first.stderr
    assert "created column analysis_decision.executed" in first.stdout
    assert "created table trade_journal" in first.stdout
    with TradingDB(config=cfg) as db:
        row = db.query("analysis_decision")[0]
        assert row["analyst_notes"] == "keep me" and row["executed"] is False
        assert {"execution_time", "existing_order_id", "existing_trade_journal_id", "nc_order"} <= set(row)
        assert db.missing_schema() == []


def test_second_run_does_nothing(nocodb):
    _, url = nocodb
    assert run_script(url=url).returncode == 0
    second = run_script(url=url)
    assert second.returncode == 0
    assert "nothing to do" in second.stdout


def test_dry_run_prints_sql_and_changes_nothing(nocodb):
    cfg, url = nocodb
    result = run_script("--dry-run", url=url)
    assert result.returncode == 0
    assert "ALTER TABLE analysis_decision ADD COLUMN IF NOT EXISTS executed" in result.stdout
    assert "CREATE TABLE IF NOT EXISTS trade_journal" in result.stdout
    assert "CREATE TABLE IF NOT EXISTS analysis_decision" not in result.stdout
    assert "DROP TABLE" not in result.stdout
    with TradingDB(config=cfg) as db:
        assert "trade_journal" in db.missing_schema()


def test_database_without_analysis_decision_is_refused(nocodb):
    cfg, url = nocodb
    with TradingDB(config=cfg) as db:
        db.execute_update("DROP TABLE analysis_decision")
    result = run_script(url=url)
    assert result.returncode == 2
    assert "never creates it" in result.stderr
    with TradingDB(config=cfg) as db:
        assert "analysis_decision" in db.missing_schema()
        assert "trade_journal" in db.missing_schema()


NOCODB_BASE_TABLE = (
    # What NocoDB 0.262 creates for a table made inside a base: its own schema, json, no zone,
    # and its system columns.
    'CREATE TABLE p_base.analysis_decision (id SERIAL PRIMARY KEY, created_at TIMESTAMP DEFAULT now(), '
    'updated_at TIMESTAMP DEFAULT now(), created_by VARCHAR, updated_by VARCHAR, nc_order NUMERIC, '
    'ticker TEXT, primary_action TEXT, decision JSON, "Approve" BOOLEAN DEFAULT false)')


@pytest.fixture
def nocodb_base(nocodb):
    """The nocodb_sim database with analysis_decision only in NocoDB's base schema p_base."""
    cfg, url = nocodb
    with TradingDB(config=cfg) as db:
        db.execute_update("DROP TABLE analysis_decision")
        db.execute_update("CREATE SCHEMA p_base")
        db.execute_update(NOCODB_BASE_TABLE)
    return cfg, url


def test_decision_table_in_a_nocodb_base_schema_is_found_and_named_where(nocodb_base):
    _, url = nocodb_base
    refused = run_script(url=url)
    assert refused.returncode == 2
    assert "it exists in schema p_base: run again with --schema p_base" in refused.stderr

    result = run_script("--schema", "p_base", url=url)
    assert result.returncode == 0, result.stderr
    assert "found analysis_decision in schema p_base; the system's tables go in schema public" in result.stdout
    assert "accepted decision as json" in result.stdout
    assert "accepted created_at as timestamp without time zone" in result.stdout
    assert "created_by" in result.stdout and "nc_order" in result.stdout  # left alone, and said so
    assert "created column analysis_decision.executed" in result.stdout
    again = run_script("--schema", "p_base", url=url)
    assert "nothing to do" in again.stdout, again.stdout


def test_programs_read_decisions_from_decision_schema_and_write_back_there(nocodb_base, monkeypatch, broker):
    from tests.monitor_support import execute

    _, url = nocodb_base
    assert run_script("--schema", "p_base", url=url).returncode == 0
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DECISION_SCHEMA", "p_base")
    configured = get_postgres_config()
    assert configured.decision_schema == "p_base"
    with TradingDB(config=configured) as db:
        db.ensure_schema()  # nothing missing: analysis_decision is found in p_base
        db.execute_update(
            'INSERT INTO p_base.analysis_decision (ticker, primary_action, decision, "Approve", created_by) '
            "VALUES ('AAPL', 'NEW_TRADE', %s, true, 'nocodb@example.com')",
            ('{"planned_entry": 150, "planned_sl": 145, "planned_tp": 160, "trade_style": "SWING", '
             '"planned_qty": 10}',))
        execute(db, broker)
        [decision] = db.execute_query("SELECT * FROM p_base.analysis_decision")
        [trade] = db.execute_query("SELECT * FROM public.trade_journal")
    assert decision["executed"] is True and decision["existing_trade_journal_id"] == trade["id"]
    assert trade["initial_analysis_id"] == decision["id"] and trade["planned_qty"] == 10


def test_decision_schema_shadowed_by_a_public_table_is_refused(nocodb_base):
    cfg, url = nocodb_base
    with TradingDB(config=cfg) as db:
        db.execute_update('CREATE TABLE public.analysis_decision (id SERIAL PRIMARY KEY, "Approve" BOOLEAN)')
    result = run_script("--schema", "p_base", url=url)
    assert result.returncode == 2
    assert "resolves to schema 'public' first" in result.stderr


def test_programs_without_decision_schema_are_told_where_the_table_is(nocodb_base):
    from trading.errors import ConfigurationError

    cfg, url = nocodb_base
    assert run_script("--schema", "p_base", url=url).returncode == 0
    with TradingDB(config=cfg) as db, pytest.raises(ConfigurationError,
                                                    match="analysis_decision exists in schema p_base: set "
                                                          "DECISION_SCHEMA=p_base"):
        db.ensure_schema()
