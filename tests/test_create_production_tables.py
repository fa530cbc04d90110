"""scripts/create_production_tables.py against a database that looks like NocoDB's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config import PostgresConfig
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
