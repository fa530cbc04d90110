"""db_layer.TradingDB against a real PostgreSQL: methods, schema contract, safety."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from decimal import Decimal

import pytest

from config import PostgresConfig, Secret
from db_layer import TradingDB, is_unique_violation, lock_key
from trading import schema
from trading.errors import ConfigurationError, DatabaseUnavailableError, WriteConflictError

# The contract of design.md section 4: table -> columns that must exist.
CONTRACT = {
    "analysis_decision": ["id", "created_at", "ticker", "primary_action", "decision", "Approve", "executed",
                          "execution_time", "existing_order_id", "existing_trade_journal_id"],
    "trade_journal": ["id", "initial_analysis_id", "symbol", "trade_style", "status", "planned_entry", "planned_sl",
                      "planned_tp", "planned_qty", "actual_entry", "actual_qty", "entry_date", "exit_date",
                      "exit_price", "actual_pnl", "exit_reason", "days_open", "created_at", "updated_at"],
    "order_execution": ["id", "trade_journal_id", "symbol", "order_type", "side", "alpaca_order_id", "client_order_id",
                        "order_status", "qty", "limit_price", "stop_price", "filled_qty", "filled_avg_price",
                        "submitted_at", "filled_at", "canceled_at", "error_message", "created_at", "updated_at"],
    "position_tracking": ["id", "trade_journal_id", "symbol", "qty", "avg_entry_price", "cost_basis", "current_price",
                          "market_value", "unrealized_pnl", "unrealized_pnl_pct", "stop_loss_order_id",
                          "take_profit_order_id", "last_updated", "created_at"],
}


def columns_of(db: TradingDB, table: str) -> dict[str, str]:
    rows = db.execute_query(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s", (table,))
    return {row["column_name"]: row["data_type"] for row in rows}


def test_contract_tables_and_columns_exist_with_case_sensitive_approve(db):
    for table, names in CONTRACT.items():
        present = columns_of(db, table)
        assert set(names) <= set(present), f"{table} lacks {set(names) - set(present)}"
    decision_columns = columns_of(db, "analysis_decision")
    assert "Approve" in decision_columns and "approve" not in decision_columns
    assert decision_columns["decision"] == "jsonb"


def test_money_is_numeric_and_time_is_timestamptz(db):
    for table in ("trade_journal", "order_execution", "position_tracking"):
        cols = columns_of(db, table)
        for name, kind in cols.items():
            if any(word in name for word in ("price", "pnl", "entry", "cost", "value", "_sl", "_tp", "qty")) \
                    and name not in ("entry_date",):
                assert kind == "numeric", f"{table}.{name} is {kind}"
            if name.endswith("_at") or name.endswith("_date") or name in ("execution_time", "last_updated"):
                assert kind == "timestamp with time zone", f"{table}.{name} is {kind}"


def test_audit_and_run_tables_exist(db):
    assert {"occurred_at", "program", "entity_type", "entity_id", "event", "reason", "details"} <= set(
        columns_of(db, "audit_event"))
    assert {"program", "started_at", "finished_at", "outcome", "counts", "error"} <= set(columns_of(db, "program_run"))


def test_schema_has_no_foreign_keys(db):
    rows = db.execute_query(
        "SELECT conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
        "WHERE c.contype = 'f' AND n.nspname = current_schema()")
    assert rows == []


def test_contract_indexes_exist(db):
    rows = db.execute_query("SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = current_schema()")
    defs = {(row["tablename"], row["indexdef"].split("USING btree ")[-1]) for row in rows}
    assert ("analysis_decision", "(executed, ticker)") in defs
    assert ("trade_journal", "(status, symbol, initial_analysis_id)") in defs
    assert ("order_execution", "(order_status, trade_journal_id)") in defs
    assert ("position_tracking", "(symbol, trade_journal_id)") in defs


def test_create_schema_twice_changes_nothing(db):
    before = db.execute_query("SELECT table_name, column_name FROM information_schema.columns "
                              "WHERE table_schema = current_schema() ORDER BY 1, 2")
    db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
    db.create_schema()
    db.create_schema()
    after = db.execute_query("SELECT table_name, column_name FROM information_schema.columns "
                             "WHERE table_schema = current_schema() ORDER BY 1, 2")
    assert before == after
    assert len(db.query("trade_journal")) == 1


def test_status_check_constraints_refuse_unknown_words(db):
    with pytest.raises(Exception, match="trade_journal_status_must_be_a_trade_status"):
        db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING", "status": "OPEN"})
    with pytest.raises(Exception, match="order_execution_order_status_must_be_an_alpaca_status"):
        db.insert("order_execution", {"symbol": "AAPL", "order_type": "ENTRY", "side": "buy", "order_status": "open"})
    with pytest.raises(Exception, match="trade_journal_trade_style_must_be_swing_or_daytrade"):
        db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SCALP"})


def test_insert_get_update_query_delete_round_trip(db):
    trade_id = db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING", "planned_entry": Decimal("150.25"),
                                           "planned_qty": Decimal("10")})
    row = db.get_by_id("trade_journal", trade_id)
    assert row is not None
    assert row["planned_entry"] == Decimal("150.25") and isinstance(row["planned_entry"], Decimal)
    assert row["created_at"].tzinfo is not None and row["created_at"].utcoffset() == dt.timedelta(0)
    before = row["updated_at"]

    assert db.update("trade_journal", trade_id, {"status": "POSITION", "actual_entry": Decimal("150.30")}) == 1
    row = db.get_by_id("trade_journal", trade_id)
    assert row["status"] == "POSITION" and row["actual_entry"] == Decimal("150.30")
    assert row["updated_at"] >= before
    assert db.update("trade_journal", 999, {"status": "CLOSED"}) == 0

    second = db.insert("trade_journal", {"symbol": "MSFT", "trade_style": "DAYTRADE"})
    assert [r["id"] for r in db.query("trade_journal", order_by="-id")] == [second, trade_id]
    assert [r["id"] for r in db.query("trade_journal", {"symbol": "MSFT"})] == [second]
    assert [r["id"] for r in db.query("trade_journal", {"symbol": ["MSFT", "AAPL"]}, order_by="id", limit=1)] \
        == [trade_id]
    assert db.query("trade_journal", {"exit_reason": None, "symbol": "AAPL"})[0]["id"] == trade_id
    position = db.insert("position_tracking", {"trade_journal_id": second, "symbol": "MSFT", "qty": 1,
                                               "avg_entry_price": 1, "cost_basis": 1})
    assert db.delete("position_tracking", position) == 1
    assert db.get_by_id("position_tracking", position) is None


def test_execute_query_and_execute_update_use_parameters(db):
    db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
    hostile = "AAPL'; DROP TABLE trade_journal; --"
    assert db.execute_query("SELECT id FROM trade_journal WHERE symbol = %s", (hostile,)) == []
    assert db.execute_update("UPDATE trade_journal SET days_open = days_open + 1 WHERE symbol = %(s)s",
                             {"s": "AAPL"}) == 1
    assert db.execute_query("SELECT days_open FROM trade_journal") == [{"days_open": 1}]


def test_unknown_table_or_column_is_a_clear_error_not_injection(db):
    with pytest.raises(ValueError, match="unknown table 'trade_journal; DROP TABLE x'"):
        db.insert("trade_journal; DROP TABLE x", {"symbol": "A"})
    with pytest.raises(ValueError, match="unknown column"):
        db.insert("trade_journal", {"symbol": "A", 'trade_style" = 1; --': "SWING"})
    with pytest.raises(ValueError, match="unknown column"):
        db.query("trade_journal", order_by="symbol; DROP TABLE trade_journal")
    with pytest.raises(ValueError, match="unknown table"):
        db.get_by_id("nope", 1)
    with pytest.raises(ValueError, match="unknown column"):
        db.update("trade_journal", 1, {"no_such_column": 1})
    assert "trade_journal" in {r["table_name"] for r in db.execute_query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}


def test_json_round_trip_keeps_decimals_exact(db):
    # Decimals are written as exact strings; numbers written upstream come back as Decimal, not float.
    decision_id = db.insert("analysis_decision", {"ticker": "AAPL", "primary_action": "NEW_TRADE", "Approve": True,
                                                  "decision": {"planned_entry": Decimal("150.10"), "planned_qty": 3}})
    db.execute_update("UPDATE analysis_decision SET decision = decision || '{\"planned_tp\": 155.1}'::jsonb")
    row = db.get_by_id("analysis_decision", decision_id)
    assert row["decision"]["planned_entry"] == "150.10"
    assert row["decision"]["planned_tp"] == Decimal("155.1") and isinstance(row["decision"]["planned_tp"], Decimal)
    assert row["Approve"] is True and row["executed"] is False


def test_failed_statement_inside_transaction_rolls_back_everything(db):
    with pytest.raises(Exception), db.transaction():
        db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
        db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "NOT_A_STYLE"})
    assert db.query("trade_journal") == []
    # the connection is usable afterwards
    db.insert("trade_journal", {"symbol": "MSFT", "trade_style": "SWING"})
    assert len(db.query("trade_journal")) == 1


def test_nested_transaction_failure_undoes_only_the_inner_block(db):
    with db.transaction():
        db.insert("trade_journal", {"symbol": "OUTER", "trade_style": "SWING"})
        with pytest.raises(ValueError), db.transaction():
            db.insert("trade_journal", {"symbol": "INNER", "trade_style": "SWING"})
            raise ValueError("inner fails")
    assert [r["symbol"] for r in db.query("trade_journal")] == ["OUTER"]


def test_transaction_is_invisible_to_others_until_commit(db, make_db):
    other = make_db()
    with db.transaction():
        db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
        assert other.query("trade_journal") == []
    assert len(other.query("trade_journal")) == 1


def test_unique_violation_is_recognised(db):
    db.insert("order_execution", {"symbol": "A", "order_type": "ENTRY", "side": "buy", "client_order_id": "x-1"})
    with pytest.raises(WriteConflictError) as caught:
        db.insert("order_execution", {"symbol": "A", "order_type": "ENTRY", "side": "buy", "client_order_id": "x-1"})
    assert is_unique_violation(caught.value)
    assert caught.value.constraint == "uq_order_execution_client_order_id"


def terminate_backend(db: TradingDB, killer: TradingDB) -> None:
    """What a server restart does to a session: its backend ends (from another connection)."""
    pid = db.execute_one("SELECT pg_backend_pid() AS pid")["pid"]
    killer.execute_query("SELECT pg_terminate_backend(%s)", (pid,))
    deadline = time.monotonic() + 5
    while killer.execute_one("SELECT 1 AS alive FROM pg_stat_activity WHERE pid = %s", (pid,)) \
            and time.monotonic() < deadline:
        time.sleep(0.02)


def test_the_database_dying_at_begin_is_an_outage_like_at_any_other_moment(db, make_db):
    """Issue 11 scenario 18: the crash is translated at BEGIN as at any statement, and the next
    statement outside a transaction reconnects."""
    terminate_backend(db, make_db())
    with pytest.raises(DatabaseUnavailableError, match="database error"), db.transaction():
        db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
    assert not db.in_transaction
    assert db.query("trade_journal") == []


def test_the_database_dying_at_a_savepoint_is_an_outage_and_undoes_the_outer_block(db, make_db):
    killer = make_db()
    with pytest.raises(DatabaseUnavailableError), db.transaction():
        db.insert("trade_journal", {"symbol": "OUTER", "trade_style": "SWING"})
        terminate_backend(db, killer)
        with db.transaction():
            db.insert("trade_journal", {"symbol": "INNER", "trade_style": "SWING"})
    assert not db.in_transaction
    assert db.query("trade_journal") == []


def test_the_database_dying_before_commit_is_an_outage_and_nothing_is_kept(db, make_db):
    killer = make_db()
    with pytest.raises(DatabaseUnavailableError), db.transaction():
        db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
        terminate_backend(db, killer)
    assert db.query("trade_journal") == []


def test_a_unique_key_taken_first_inside_a_transaction_is_a_write_conflict(db):
    db.insert("order_execution", {"symbol": "A", "order_type": "ENTRY", "side": "buy", "client_order_id": "x-2"})
    with pytest.raises(WriteConflictError), db.transaction():
        db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
        with db.transaction():
            db.insert("order_execution", {"symbol": "A", "order_type": "ENTRY", "side": "buy",
                                          "client_order_id": "x-2"})
    assert db.query("trade_journal") == []


def test_audit_table_is_append_only(db):
    event_id = db.insert("audit_event", {"program": "test", "entity_type": "trade", "event": "X"})
    with pytest.raises(Exception, match="append-only"):
        db.update("audit_event", event_id, {"reason": "rewrite history"})
    with pytest.raises(Exception, match="append-only"):
        db.delete("audit_event", event_id)


def test_advisory_lock_is_exclusive_and_released_after_the_block(db, make_db):
    other = make_db()
    with db.advisory_lock("order_monitor") as first:
        assert first is True
        with other.advisory_lock("order_monitor") as second:
            assert second is False
        with other.advisory_lock("position_monitor") as different:
            assert different is True
    with other.advisory_lock("order_monitor") as again:
        assert again is True


def test_advisory_lock_is_released_when_its_connection_dies(db, make_db):
    holder = make_db()
    taken = holder.execute_one("SELECT pg_try_advisory_lock(%s) AS t", (lock_key("executor"),))
    assert taken["t"] is True
    with db.advisory_lock("executor") as got:
        assert got is False
    holder.close()  # what a killed process does to its connection
    # The server releases the lock when the backend exits, a moment after the client is gone.
    deadline = time.monotonic() + 5
    while True:
        with db.advisory_lock("executor") as got:
            if got or time.monotonic() > deadline:
                break
        time.sleep(0.05)
    assert got is True


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_error_names_host_port_database_but_not_password():
    port = _closed_port()
    cfg = PostgresConfig(host="127.0.0.1", port=port, dbname="tradingdb", user="trader",
                         password=Secret("hunter2-secret"), source="DATABASE_URL")
    db = TradingDB(config=cfg, connect_timeout=2)
    with pytest.raises(DatabaseUnavailableError) as caught:
        db.connect()
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "'tradingdb'" in message
    assert "hunter2-secret" not in message and "hunter2-secret" not in repr(cfg)


def test_context_manager_connects_and_closes(pg_config):
    with TradingDB(test_mode=True, config=pg_config) as database:
        assert database.connected
        assert database.execute_query("SELECT 1 AS value") == [{"value": 1}]
    assert not database.connected
    database.close()  # twice is fine


def test_ensure_schema_on_a_production_database_reports_what_is_missing(pg_config):
    with TradingDB(test_mode=True, config=pg_config) as database:
        database.execute_update("CREATE SCHEMA IF NOT EXISTS bare")
        database.execute_update("SET search_path TO bare")
        try:
            database.test_mode = False  # behave as a configured production database
            with pytest.raises(ConfigurationError, match=r"create_production_tables\.py"):
                database.ensure_schema()
            assert "trade_journal" in database.missing_schema()
        finally:
            database.execute_update("SET search_path TO public")
            database.execute_update("DROP SCHEMA bare CASCADE")


def test_schema_statements_quote_only_the_case_sensitive_column():
    text = "\n".join(schema.schema_statements())
    assert '"Approve" BOOLEAN' in text
    assert '"executed"' not in text


def test_two_programs_started_at_once_do_not_deadlock_on_schema_work(db, make_db, exchange, monkeypatch):
    """Issue 11 scenario 14: a program mid-run holds a trade row lock in its transaction (what
    every monitor and the executor do per trade) while two more programs start at the same moment,
    as the scheduler starts them at 09:45. Starting must not wait on the running program's reads:
    schema work (an ALTER TABLE's exclusive lock) happens once, not in every run."""
    import order_executor
    import order_monitor

    monkeypatch.setenv("ALPACA_BASE_URL", exchange.url)  # the programs' CLI on the test exchange
    trade_id = db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
    running = make_db()
    codes: dict[str, int] = {}
    start = threading.Barrier(2)

    def program(name: str, main) -> None:
        start.wait(timeout=10)
        codes[name] = main(["--test-mode"])

    threads = [threading.Thread(target=program, args=(name, main), daemon=True)
               for name, main in (("order_executor", order_executor.main), ("order_monitor", order_monitor.main))]
    with running.transaction():
        running.get_by_id("trade_journal", trade_id, for_update=True)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        waiting = [thread.name for thread in threads if thread.is_alive()]
    for thread in threads:
        thread.join(timeout=60)
    assert waiting == [], "a starting program waited on the running program's locks (schema work in its run)"
    assert codes == {"order_executor": 0, "order_monitor": 0}


def test_schema_work_runs_again_only_when_the_recorded_version_is_behind(db):
    assert db.schema_is_current()
    db.execute_update(f"UPDATE {schema.SCHEMA_VERSION_TABLE} SET version = 'older' WHERE id = 1")
    assert not db.schema_is_current()
    db.ensure_schema()
    row = db.execute_one(f"SELECT version FROM {schema.SCHEMA_VERSION_TABLE}")
    assert row["version"] == schema.schema_version() and db.schema_is_current()


def test_many_rows_are_written_in_few_statements_with_reserved_ids_and_set_based_updates(db):
    ids = db.reserve_ids("trade_fill", 3)
    assert len(set(ids)) == 3 and db.reserve_ids("trade_fill", 0) == []
    db.column_types("trade_journal")  # the catalog, read once per connection (not counted below)
    before = db.statement_count
    now = dt.datetime.now(dt.UTC)
    assert db.insert_many("trade_fill", [
        {"id": i, "trade_journal_id": 1, "symbol": "AAPL", "side": "buy", "qty": Decimal("1"),
         "price": Decimal("150.25"), "filled_at": now, "source": "entry fill"} for i in ids]) == 3
    assert db.statement_count == before + 1  # one multi-row INSERT
    assert sorted(r["id"] for r in db.query("trade_fill")) == sorted(ids)
    assert db.insert("trade_fill", {"trade_journal_id": 1, "symbol": "AAPL", "side": "buy", "qty": 1, "price": 1,
                                    "filled_at": now, "source": "x"}) > max(ids)  # reserved ids are never reused
    with pytest.raises(ValueError, match="same columns"):
        db.insert_many("trade_fill", [{"symbol": "A", "side": "buy"}, {"side": "buy", "symbol": "A"}])

    first = db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING", "status": "ORDERED"})
    second = db.insert("trade_journal", {"symbol": "MSFT", "trade_style": "SWING", "status": "ORDERED"})
    before = db.statement_count
    # an all-NULL column of the VALUES list is cast to its column's type, not left as text
    assert db.update_many("trade_journal", {first: {"actual_entry": Decimal("150.25"), "exit_date": None},
                                            second: {"actual_entry": None, "exit_date": None},
                                            }) == 2
    assert db.statement_count == before + 1  # one UPDATE ... FROM (VALUES ...)
    rows = {r["id"]: r for r in db.query("trade_journal")}
    assert (rows[first]["actual_entry"], rows[second]["actual_entry"]) == (Decimal("150.25"), None)
    assert rows[first]["updated_at"] >= now  # stamped as update() does
    assert db.update_many("trade_journal", {}) == 0
    assert db.column_types("trade_journal")["actual_entry"] == "numeric"

    position = db.insert("position_tracking", {"trade_journal_id": first, "symbol": "AAPL", "qty": 1,
                                               "avg_entry_price": 150, "cost_basis": 150})
    assert db.delete_many("position_tracking", [position]) == 1 and db.delete_many("position_tracking", []) == 0
    assert db.query("position_tracking") == []
