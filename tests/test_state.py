"""trading.state: the kill switch kept in the database, on the real PostgreSQL."""

from __future__ import annotations

import pytest

from trading.errors import RejectedError
from trading.state import (
    ACCOUNT_SCOPE,
    TRADING_STATE_CHANGED,
    TradingMode,
    TradingStateRefused,
    read_trading_state,
    record_trading_state,
)


def _changes(db) -> list[dict]:
    return db.execute_query("SELECT * FROM audit_event WHERE event = %s ORDER BY id", (TRADING_STATE_CHANGED,))


def test_empty_table_means_the_whole_account_is_active(db):
    state = read_trading_state(db)
    assert state.mode_for() is TradingMode.ACTIVE
    assert state.mode_for("AAPL") is TradingMode.ACTIVE
    assert state.allows_entries("AAPL") and state.allows_exits("AAPL")


def test_halt_is_recorded_with_reason_and_audited_in_the_same_transaction(db):
    stored = record_trading_state(db, "halted", reason="broker outage", changed_by="alice")
    assert stored.mode is TradingMode.HALTED and stored.reason == "broker outage" and stored.changed_by == "alice"
    state = read_trading_state(db)
    assert state.mode_for("MSFT") is TradingMode.HALTED
    assert not state.allows_entries("MSFT") and not state.allows_exits("MSFT")
    assert state.describe("MSFT") == "HALTED (account): broker outage"
    [change] = _changes(db)
    assert (change["old_value"], change["new_value"], change["reason"]) == ("ACTIVE", "HALTED", "broker outage")
    assert change["entity_type"] == "trading_state" and change["details"]["changed_by"] == "alice"


def test_a_symbol_scope_is_stricter_than_an_active_account_but_not_looser_than_a_halted_one(db):
    record_trading_state(db, TradingMode.REDUCE_ONLY, reason="earnings tonight", changed_by="bob", scope="tsla")
    state = read_trading_state(db)
    assert state.mode_for("TSLA") is TradingMode.REDUCE_ONLY
    assert state.mode_for("AAPL") is TradingMode.ACTIVE
    assert not state.allows_entries("TSLA") and state.allows_exits("TSLA")
    record_trading_state(db, TradingMode.HALTED, reason="stop", changed_by="bob")
    assert read_trading_state(db).mode_for("TSLA") is TradingMode.HALTED


def test_leaving_halted_without_confirmation_is_refused_and_changes_nothing(db):
    record_trading_state(db, TradingMode.HALTED, reason="stop", changed_by="alice")
    with pytest.raises(TradingStateRefused, match="needs an explicit confirmation"):
        record_trading_state(db, TradingMode.ACTIVE, reason="all clear", changed_by="alice")
    assert read_trading_state(db).mode_for() is TradingMode.HALTED
    assert len(_changes(db)) == 1
    record_trading_state(db, TradingMode.ACTIVE, reason="all clear", changed_by="alice", confirm_reset=True)
    assert read_trading_state(db).mode_for() is TradingMode.ACTIVE


def test_a_finished_flatten_becomes_halted_without_confirmation_but_never_active(db):
    record_trading_state(db, TradingMode.FLATTEN, reason="loss limit", changed_by="order_monitor")
    record_trading_state(db, TradingMode.HALTED, reason="flatten complete", changed_by="order_monitor")
    assert read_trading_state(db).mode_for() is TradingMode.HALTED
    with pytest.raises(TradingStateRefused):
        record_trading_state(db, TradingMode.REDUCE_ONLY, reason="try", changed_by="x")


@pytest.mark.parametrize(("mode", "reason", "who", "scope", "message"), [
    ("PAUSED", "r", "a", None, "unknown trading mode"),
    ("HALTED", "  ", "a", None, "needs a reason"),
    ("HALTED", "r", "", None, "who made it"),
    ("HALTED", "r", "a", "AA PL", "invalid scope"),
])
def test_bad_state_changes_are_refused_with_a_reason(db, mode, reason, who, scope, message):
    with pytest.raises(RejectedError, match=message):
        record_trading_state(db, mode, reason=reason, changed_by=who, scope=scope)
    assert read_trading_state(db).mode_for() is TradingMode.ACTIVE
    assert _changes(db) == []


def test_setting_the_mode_a_scope_already_has_writes_nothing(db):
    record_trading_state(db, TradingMode.REDUCE_ONLY, reason="r", changed_by="a")
    record_trading_state(db, TradingMode.REDUCE_ONLY, reason="again", changed_by="b")
    record_trading_state(db, TradingMode.ACTIVE, reason="none yet", changed_by="c", scope="NVDA")
    assert len(_changes(db)) == 1
    assert db.execute_query("SELECT scope FROM trading_state") == [{"scope": ACCOUNT_SCOPE}]


def test_the_database_refuses_a_row_edit_without_reason_or_with_an_unknown_mode(db):
    record_trading_state(db, TradingMode.HALTED, reason="r", changed_by="a")
    for statement, constraint in (("UPDATE trading_state SET mode = 'PAUSED'", "trading_state_mode_must_be"),
                                  ("UPDATE trading_state SET reason = ' '", "trading_state_reason_must_not")):
        with pytest.raises(Exception, match=constraint):  # the driver's check violation, named for NocoDB users
            db.execute_update(statement)
    assert read_trading_state(db).mode_for() is TradingMode.HALTED


def outside_session(make_db):
    """A session that is not one of the programs (psql, NocoDB)."""
    from trading import schema

    person = make_db()
    person.execute_update(f"SET {schema.PROGRAM_SETTING} = ''")
    return person


def test_a_persons_row_edit_in_sql_halts_trading_and_is_completed_and_audited(db, make_db):
    person = outside_session(make_db)
    person.execute_update("INSERT INTO trading_state (scope, mode, reason, changed_by) "
                          "VALUES (' nvda ', 'halted', 'news pending', '')")

    state = read_trading_state(db)
    assert state.mode_for("NVDA") is TradingMode.HALTED and state.mode_for("AAPL") is TradingMode.ACTIVE
    [row] = db.query("trading_state")
    assert (row["scope"], row["mode"], row["source"]) == ("NVDA", "HALTED", "manual")
    assert row["changed_by"].startswith("outside:") and row["changed_at"] is not None
    [event] = db.query("audit_event", {"event": "OUTSIDE_INSERT"})
    assert (event["entity_type"], event["entity_id"], event["symbol"]) == ("trading_state", row["id"], "NVDA")


def test_a_persons_row_edit_of_a_mode_is_announced_like_a_command_and_other_edits_are_not(db, make_db):
    """Issue 13: a halt from NocoDB or psql sends the same "trading state changed" message as
    scripts/trading_state.py (written in the edit's transaction; the next run sends it)."""
    person = outside_session(make_db)
    person.execute_update("INSERT INTO trading_state (scope, mode, reason, changed_by) "
                          "VALUES ('ACCOUNT', 'HALTED', 'broker outage', 'alice')")
    person.execute_update("UPDATE trading_state SET reason = 'broker outage, called them'")  # no mode change
    person.execute_update("UPDATE trading_state SET mode = 'REDUCE_ONLY', changed_by = 'bob'")

    messages = db.execute_query("SELECT kind, status, title, body, program FROM notification_outbox ORDER BY id")
    assert [(m["kind"], m["status"], m["title"]) for m in messages] == [
        ("trading_state_changed", "pending", "Trading state account: ACTIVE -> HALTED"),
        ("trading_state_changed", "pending", "Trading state account: HALTED -> REDUCE_ONLY")]
    assert messages[0]["body"] == "account: ACTIVE -> HALTED by alice (manual): broker outage"
    assert messages[1]["body"] == "account: HALTED -> REDUCE_ONLY by bob (manual): broker outage, called them"
    assert messages[0]["program"].startswith("outside:")
    before = len(messages)
    record_trading_state(db, TradingMode.HALTED, reason="r", changed_by="carol")  # the programs' own path
    assert len(db.query("notification_outbox")) == before + 1  # one message, not two


def test_a_persons_edit_of_a_breakers_row_makes_it_manual_so_no_breaker_lifts_it(db, make_db):
    import datetime as dt

    record_trading_state(db, TradingMode.REDUCE_ONLY, reason="6 broker errors", changed_by="breaker",
                         source="breaker:broker_errors", resume_after=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    person = outside_session(make_db)
    person.execute_update("UPDATE trading_state SET mode = 'HALTED', reason = 'I look into it', changed_by = 'bob'")

    [row] = db.query("trading_state")
    assert (row["mode"], row["source"], row["resume_after"], row["changed_by"]) == ("HALTED", "manual", None, "bob")
    [event] = db.query("audit_event", {"event": "OUTSIDE_UPDATE"})
    assert "mode" in event["reason"] and event["entity_type"] == "trading_state"


def test_a_row_edit_with_a_scope_that_is_no_symbol_is_refused(db, make_db):
    with pytest.raises(Exception, match="trading_state_scope_must_be"):
        outside_session(make_db).execute_update(
            "INSERT INTO trading_state (scope, mode, reason, changed_by) VALUES ('AA PL', 'HALTED', 'r', 'a')")
    assert db.query("trading_state") == []


def test_only_from_leaves_a_scope_changed_since_it_was_read(db):
    record_trading_state(db, TradingMode.FLATTEN, reason="loss", changed_by="breaker")
    record_trading_state(db, TradingMode.ACTIVE, reason="reset", changed_by="alice", confirm_reset=True)
    kept = record_trading_state(db, TradingMode.HALTED, reason="flatten finished", changed_by="order_monitor",
                                only_from=frozenset({TradingMode.FLATTEN}))
    assert kept.mode is TradingMode.ACTIVE and read_trading_state(db).mode_for() is TradingMode.ACTIVE
