"""docs/database-setup.md: the documented roles, run as written, do what the page says.

The SQL block between ``<!-- roles:begin -->`` and ``<!-- roles:end -->`` is executed as is
(role names made unique to this test session, since roles are cluster-wide), then each role
is checked by connecting as it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from config import PostgresConfig, Secret
from db_layer import TradingDB
from tests.factories import add_decision
from trading import schema

DOC = Path(__file__).resolve().parent.parent / "docs" / "database-setup.md"
SUFFIX = f"_t{os.getpid()}"
APP, VIEWER = "trading_app" + SUFFIX, "trading_viewer" + SUFFIX


def documented_role_statements(dbname: str, suffix: str = SUFFIX) -> list[str]:
    """The page's role SQL, one statement each, for database ``dbname``, role names ending in ``suffix``."""
    text = DOC.read_text()
    block = text.split("<!-- roles:begin -->", 1)[1].split("<!-- roles:end -->", 1)[0]
    block = block.replace("```sql", "").replace("```", "")
    block = "\n".join(line for line in block.splitlines() if not line.strip().startswith("--"))
    block = block.replace("DATABASE nocodb", f'DATABASE "{dbname}"')
    block = re.sub(r"\btrading_(app|viewer)\b", lambda m: m.group(0) + suffix, block)
    return [statement.strip() for statement in block.split(";") if statement.strip()]


@pytest.fixture
def roles(db, pg_config):
    """The documented roles, created in the test database; dropped afterwards."""
    def drop() -> None:
        for role in (APP, VIEWER):
            if db.execute_one("SELECT 1 AS x FROM pg_roles WHERE rolname = %s", (role,)):
                db.execute_update(f"DROP OWNED BY {role}")
                db.execute_update(f"DROP ROLE {role}")

    drop()
    for statement in documented_role_statements(pg_config.dbname):
        db.execute_update(statement)

    def connect(role: str, password: str) -> TradingDB:
        cfg = PostgresConfig(host=pg_config.host, port=pg_config.port, dbname=pg_config.dbname, user=role,
                             password=Secret(password), source="DATABASE_URL")
        opened.append(TradingDB(config=cfg, application_name="nocodb"))
        return opened[-1].connect()

    opened: list[TradingDB] = []
    try:
        yield connect
    finally:
        for database in opened:
            database.close()
        drop()


def test_viewer_role_sees_every_primary_key_in_information_schema(roles):
    viewer = roles(VIEWER, "change-me-too")
    rows = viewer.execute_query(
        "SELECT tc.table_name, kcu.column_name FROM information_schema.table_constraints tc "
        "JOIN information_schema.key_column_usage kcu ON kcu.constraint_name = tc.constraint_name "
        "AND kcu.table_schema = tc.table_schema "
        "WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = current_schema()")
    assert {row["table_name"]: row["column_name"] for row in rows} == dict.fromkeys(schema.TABLES_BY_NAME, "id")


def test_viewer_role_can_tick_approve_the_way_nocodb_sends_it_and_nothing_else(db, roles):
    decision_id = add_decision(db, approve=False)
    trade_id = db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
    viewer = roles(VIEWER, "change-me-too")
    viewer.execute_update(f"SET {schema.PROGRAM_SETTING} = ''")  # NocoDB's session is not a program's

    assert viewer.execute_update('UPDATE analysis_decision SET "id" = %s, "Approve" = true WHERE id = %s',
                                 (decision_id, decision_id)) == 1
    refused = [
        ("UPDATE analysis_decision SET executed = true WHERE id = %s", decision_id),
        ("UPDATE trade_journal SET status = 'CLOSED' WHERE id = %s", trade_id),
        ("DELETE FROM analysis_decision WHERE id = %s", decision_id),
        ("INSERT INTO audit_event (program, entity_type, event) VALUES ('x', 'trade', %s::text)", "forged"),
    ]
    for statement, value in refused:
        with pytest.raises(Exception, match="permission denied"):
            viewer.execute_update(statement, (value,))

    assert db.get_by_id("analysis_decision", decision_id)["Approve"] is True
    assert db.get_by_id("analysis_decision", decision_id)["executed"] is False
    [event] = db.execute_query("SELECT * FROM audit_event WHERE event = 'OUTSIDE_UPDATE'")
    assert event["program"] == f"outside:{VIEWER}" and event["new_value"] == '{"Approve": true}'


def test_app_role_finds_its_schema_and_can_do_what_the_programs_do(db, roles):
    decision_id = add_decision(db)
    app = roles(APP, "change-me")
    assert app.missing_schema() == []
    trade_id = app.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING", "initial_analysis_id": 1})
    app.update("analysis_decision", decision_id, {"executed": True, "existing_trade_journal_id": trade_id})
    position = app.insert("position_tracking", {"trade_journal_id": trade_id, "symbol": "AAPL", "qty": 1,
                                                "avg_entry_price": 1, "cost_basis": 1})
    assert app.delete("position_tracking", position) == 1
    with pytest.raises(Exception, match="permission denied"):
        app.update("analysis_decision", decision_id, {"Approve": False})
    with pytest.raises(Exception, match="permission denied"):
        app.delete("trade_journal", trade_id)


def test_viewer_role_reads_the_decision_outcome_view(db, roles):
    decision_id = add_decision(db, approve=False)
    viewer = roles(VIEWER, "change-me-too")
    assert viewer.query(schema.DECISION_OUTCOME_VIEW) == [
        {**viewer.query(schema.DECISION_OUTCOME_VIEW)[0], "id": decision_id, "outcome": "not approved"}]


def test_viewer_role_can_stop_and_resume_trading_by_editing_trading_state_the_way_nocodb_sends_it(db, roles):
    from trading.state import TradingMode, read_trading_state

    viewer = roles(VIEWER, "change-me-too")
    viewer.execute_update(f"SET {schema.PROGRAM_SETTING} = ''")  # NocoDB's session is not a program's

    viewer.execute_update("INSERT INTO trading_state (scope, mode, reason, changed_by) VALUES "
                          "('ACCOUNT', 'HALTED', 'broker outage', 'alice')")
    assert read_trading_state(db).mode_for() is TradingMode.HALTED
    [row] = db.query("trading_state")
    assert viewer.execute_update('UPDATE trading_state SET "id" = %s, mode = %s WHERE id = %s',
                                 (row["id"], "ACTIVE", row["id"])) == 1
    resumed = db.get_by_id("trading_state", row["id"])
    assert (resumed["mode"], resumed["changed_by"], resumed["source"]) == ("ACTIVE", f"outside:{VIEWER}", "manual")
    with pytest.raises(Exception, match="trading_state_mode_must_be"):
        viewer.execute_update("UPDATE trading_state SET mode = 'PAUSED' WHERE id = %s", (row["id"],))
    with pytest.raises(Exception, match="permission denied"):
        viewer.execute_update("UPDATE trading_state SET source = 'breaker:x' WHERE id = %s", (row["id"],))
    events = db.execute_query("SELECT event, entity_type FROM audit_event WHERE event LIKE 'OUTSIDE_%' ORDER BY id")
    assert events == [{"event": "OUTSIDE_INSERT", "entity_type": "trading_state"},
                      {"event": "OUTSIDE_UPDATE", "entity_type": "trading_state"}]


def test_viewer_role_can_run_the_emergency_stop_statement_of_the_operations_guide(db, roles):
    from trading.state import TradingMode, read_trading_state

    guide = (DOC.parent / "operations.md").read_text()
    statement = guide.split("INSERT INTO trading_state", 1)[1].split("```", 1)[0]
    viewer = roles(VIEWER, "change-me-too")
    viewer.execute_update(f"SET {schema.PROGRAM_SETTING} = ''")
    for _ in range(2):  # once to insert the row, once more to update it
        viewer.execute_update("INSERT INTO trading_state" + statement.replace("%", "%%"))
    state = read_trading_state(db)
    assert (state.mode_for(), state.account.reason) == (TradingMode.HALTED, "what is wrong")
