"""trading/schema.py: what the database itself enforces whoever writes (NocoDB, psql, the programs)."""

from __future__ import annotations

import json

import pytest

from db_layer import TradingDB
from tests.factories import add_decision
from trading import schema


def outside(make_db) -> TradingDB:
    """A session that is not one of the programs (as NocoDB's or psql's are)."""
    person = make_db()
    person.execute_update(f"SET {schema.PROGRAM_SETTING} = ''")
    return person


def outside_events(db: TradingDB) -> list[dict]:
    return db.execute_query("SELECT * FROM audit_event WHERE event LIKE 'OUTSIDE_%%' ORDER BY id")


def test_programs_sessions_carry_their_name_and_their_writes_are_not_audited_twice(db, pg_config):
    # (``db``: empty tables, so an earlier test's outside edits are not counted here)
    with TradingDB(test_mode=True, config=pg_config, application_name="order_monitor") as program:
        assert program.execute_one(f"SHOW {schema.PROGRAM_SETTING}") == {schema.PROGRAM_SETTING: "order_monitor"}
        trade_id = program.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
        program.update("trade_journal", trade_id, {"status": "POSITION"})
        decision_id = add_decision(program)
        program.update("analysis_decision", decision_id, {"executed": True})
        assert outside_events(program) == []


def test_nocodb_user_ticking_executed_is_audited_with_old_and_new_value_and_who(db, make_db):
    decision_id = add_decision(db)
    person = outside(make_db)
    person.execute_update("UPDATE analysis_decision SET executed = true WHERE id = %s", (decision_id,))

    [event] = outside_events(db)
    assert event["event"] == "OUTSIDE_UPDATE" and event["entity_type"] == "decision"
    assert event["entity_id"] == decision_id and event["symbol"] == "AAPL"
    assert json.loads(event["old_value"]) == {"executed": False}
    assert json.loads(event["new_value"]) == {"executed": True}
    assert event["program"].startswith("outside:")
    assert "(executed)" in event["reason"]
    assert event["details"]["table"] == "analysis_decision"


def test_hand_edit_of_trade_status_is_audited_and_moves_updated_at(db, make_db):
    trade_id = db.insert("trade_journal", {"symbol": "MSFT", "trade_style": "SWING"})
    db.execute_update("UPDATE trade_journal SET updated_at = now() - interval '1 day' WHERE id = %s", (trade_id,))
    before = db.get_by_id("trade_journal", trade_id)["updated_at"]

    outside(make_db).execute_update("UPDATE trade_journal SET status = 'CLOSED' WHERE id = %s", (trade_id,))

    assert db.get_by_id("trade_journal", trade_id)["updated_at"] > before
    [event] = outside_events(db)
    assert (event["entity_type"], event["entity_id"]) == ("trade", trade_id)
    assert json.loads(event["old_value"]) == {"status": "ORDERED"}
    assert json.loads(event["new_value"]) == {"status": "CLOSED"}


def test_saving_a_row_unchanged_records_nothing(db, make_db):
    trade_id = db.insert("trade_journal", {"symbol": "MSFT", "trade_style": "SWING"})
    outside(make_db).execute_update("UPDATE trade_journal SET status = status WHERE id = %s", (trade_id,))
    assert outside_events(db) == []


def test_hand_insert_and_delete_of_a_position_row_are_audited(db, make_db):
    person = outside(make_db)
    position = person.insert("position_tracking", {"trade_journal_id": 7, "symbol": "NVDA", "qty": 3,
                                                   "avg_entry_price": 100, "cost_basis": 300})
    person.delete("position_tracking", position)
    events = outside_events(db)
    assert [e["event"] for e in events] == ["OUTSIDE_INSERT", "OUTSIDE_DELETE"]
    assert all(e["entity_type"] == "position" and e["entity_id"] == position for e in events)
    assert json.loads(events[1]["old_value"])["symbol"] == "NVDA"


@pytest.mark.parametrize("table", schema.PERMANENT_TABLES)
def test_deleting_a_history_row_is_refused_for_people_and_programs(db, make_db, table):
    row = {"symbol": "AAPL", "trade_style": "SWING"} if table == "trade_journal" else \
        {"symbol": "AAPL", "order_type": "ENTRY", "side": "buy"}
    row_id = db.insert(table, row)
    for session in (db, outside(make_db)):
        with pytest.raises(Exception, match="permanent history and cannot be deleted"):
            session.delete(table, row_id)
    assert db.get_by_id(table, row_id) is not None
    assert outside_events(db) == []  # the refused delete left no audit row either


def test_truncate_still_empties_history_tables_for_tests(db):
    db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
    db.execute_update("TRUNCATE trade_journal, order_execution")
    assert db.query("trade_journal") == []


def test_check_violation_names_what_is_allowed(db, make_db):
    trade_id = db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
    with pytest.raises(Exception, match="trade_journal_status_must_be_a_trade_status"):
        outside(make_db).execute_update("UPDATE trade_journal SET status = 'OPEN' WHERE id = %s", (trade_id,))


def test_checks_with_old_names_are_renamed_by_create_schema(db):
    old, new = "trade_journal_status_check", schema.RENAMED_CHECKS["trade_journal_status_check"]
    db.execute_update(f"ALTER TABLE trade_journal RENAME CONSTRAINT {new} TO {old}")
    db.create_schema()
    names = {r["conname"] for r in db.execute_query(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'trade_journal'::regclass AND contype = 'c'")}
    assert new in names and old not in names


def test_every_check_name_fits_postgresql_identifier_limit():
    names = [name for table in schema.TABLES for name, _ in table.checks]
    assert all(len(name) <= 63 for name in names)
    assert set(schema.RENAMED_CHECKS.values()) <= set(names)


def test_a_check_made_by_an_older_version_is_replaced_when_the_allowed_values_grew(db):
    # An older version allowed fewer exit reasons: its check (same name, narrower) would refuse a
    # new reason forever. create_schema sees the expression changed and replaces it.
    name = "trade_journal_exit_reason_must_be_empty_or_an_exit_reason"
    db.execute_update(f"ALTER TABLE trade_journal DROP CONSTRAINT {name}")
    db.execute_update(f"ALTER TABLE trade_journal ADD CONSTRAINT {name} CHECK (exit_reason IN ('STOPPED_OUT'))")
    trade_id = db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
    with pytest.raises(Exception, match=name):
        db.execute_update("UPDATE trade_journal SET exit_reason = 'PROFIT_TAKEN' WHERE id = %s", (trade_id,))
    db.create_schema()
    db.execute_update("UPDATE trade_journal SET exit_reason = 'PROFIT_TAKEN' WHERE id = %s", (trade_id,))
    assert db.get_by_id("trade_journal", trade_id)["exit_reason"] == "PROFIT_TAKEN"
    db.create_schema()  # and again: nothing to replace, the check stays one
    checks = db.execute_query("SELECT conname FROM pg_constraint WHERE conname = %s", (name,))
    assert len(checks) == 1


def test_decision_outcome_view_shows_each_decisions_outcome_and_a_refusals_reason(db, exchange, broker):
    """Issue 11 scenario 19: a refusal's reason is visible next to its decision (the view NocoDB shows)."""
    from order_executor import run_once
    from tests.factories import make_settings

    placed = add_decision(db, "AAPL")
    refused = add_decision(db, "MSFT", planned_sl=155)  # stop above the entry
    waiting_for_approval = add_decision(db, "NVDA", approve=False)
    run_once(db, broker, settings=make_settings())
    waiting = add_decision(db, "AMD")

    rows = {row["id"]: row for row in db.query(schema.DECISION_OUTCOME_VIEW)}

    assert rows[placed]["outcome"] == "accepted" and rows[placed]["code"] is None
    assert rows[placed]["reason"].startswith("bracket entry placed: buy 10 AAPL limit 150")
    assert rows[placed]["trade_journal_id"] == db.query("trade_journal")[0]["id"]
    assert (rows[refused]["outcome"], rows[refused]["code"]) == ("refused", "INVALID_DECISION")
    assert rows[refused]["reason"] == "planned_sl 155 must be below planned_entry 150 (only long trades are supported)"
    assert rows[refused]["program"] == "order_executor" and rows[refused]["outcome_at"] is not None
    assert rows[waiting_for_approval]["outcome"] == "not approved"
    assert rows[waiting]["outcome"] == "waiting" and rows[waiting]["reason"] is None


def test_a_database_made_before_the_flattened_exit_reason_accepts_it_after_create_schema(db):
    name = "trade_journal_exit_reason_must_be_empty_or_an_exit_reason"
    older = sorted(schema.lifecycle.EXIT_REASONS - {"FLATTENED"})
    db.execute_update(f"ALTER TABLE trade_journal DROP CONSTRAINT {name}")
    db.execute_update(f"ALTER TABLE trade_journal ADD CONSTRAINT {name} CHECK (exit_reason IS NULL OR exit_reason IN "
                      f"({', '.join(repr(r) for r in older)}))")  # as an older version made it: no comment
    trade_id = db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
    with pytest.raises(Exception, match=name):
        db.update("trade_journal", trade_id, {"exit_reason": "FLATTENED"})

    db.create_schema()

    db.update("trade_journal", trade_id, {"exit_reason": "FLATTENED"})
    assert db.get_by_id("trade_journal", trade_id)["exit_reason"] == "FLATTENED"
    comment = db.execute_one("SELECT obj_description(oid, 'pg_constraint') AS c FROM pg_constraint WHERE conname = %s",
                             (name,))
    assert comment["c"].startswith("check:")
    with pytest.raises(Exception, match=name):
        db.update("trade_journal", trade_id, {"exit_reason": "GONE_FISHING"})
