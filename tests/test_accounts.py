"""trading/accounts.py: a trade belongs to one broker account and is never reconciled against another.

Two paper exchanges stand for two broker accounts (their account numbers differ by seed): trades
are placed at the session's exchange, then the programs are pointed at the other one, as a person
does who sets Alpaca keys after using the local exchange with the same database.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import order_executor
import order_monitor
import position_monitor
from alpaca_client import AlpacaBroker
from tests.factories import FRIDAY_0945, ExchangeAdmin, add_decision, make_settings, snapshot
from tests.monitor_support import open_position, place_entry, run_monitor
from trading.accounts import ACCOUNT_MISMATCH

TABLES = ("trade_journal", "order_execution", "position_tracking")


@pytest.fixture
def other_exchange() -> Iterator[ExchangeAdmin]:
    """Another broker account: an exchange with another seed, so another account number."""
    from paper_exchange import PaperExchange
    from paper_exchange.server import start_server

    handle = start_server(exchange=PaperExchange(seed=8, simulated_clock=True, start_time=FRIDAY_0945,
                                                 price_simulation=False))
    try:
        yield ExchangeAdmin(handle.url)
    finally:
        handle.stop()


@pytest.fixture
def other_broker(other_exchange: ExchangeAdmin) -> AlpacaBroker:
    return AlpacaBroker(base_url=other_exchange.url, data_url=other_exchange.url, timeout=3)


def test_pointing_the_database_at_another_broker_account_closes_nothing_and_says_what_to_do(
        db, exchange, broker, other_exchange, other_broker, caplog):
    """Issue 11 scenario 13: before, every open trade was closed as MANUAL_EXIT at its last price."""
    settings = make_settings()
    held = open_position(db, exchange, broker)
    working = place_entry(db, broker, "MSFT")
    mine, theirs = broker.get_account().number, other_broker.get_account().number
    assert mine != theirs
    assert {t["broker_account"] for t in db.query("trade_journal")} == {mine}
    before = snapshot(db, TABLES)
    caplog.set_level(logging.WARNING)

    monitored = order_monitor.run_once(db, other_broker, settings=settings, sleep=lambda _s: None)
    valued = position_monitor.run_once(db, other_broker, settings=settings, sleep=lambda _s: None)

    assert snapshot(db, TABLES) == before  # nothing closed, cancelled, marked not_found or resized
    assert other_exchange.orders() == []  # nothing sent to the other account
    assert monitored.outcome == valued.outcome == "warning"
    assert monitored.counts["other_account_trades"] == valued.counts["other_account_trades"] == 2
    events = db.query("audit_event", {"event": ACCOUNT_MISMATCH}, order_by="id")
    assert [(e["entity_id"], e["old_value"], e["new_value"]) for e in events] == [
        (held["id"], mine, theirs), (working["id"], mine, theirs)]  # once per trade, not once per run
    assert f"point the programs back at broker account {mine}" in events[0]["reason"]
    assert "Trades of another broker account" in events[0]["reason"]
    assert f"trade {held['id']} AAPL (POSITION) was placed in broker account {mine}" in caplog.text

    close = add_decision(db, "AAPL", "CLOSE", trade_id=held["id"])
    assert order_executor.run_once(db, other_broker, settings=settings).counts["refused"] == 1
    refusal = db.execute_one("SELECT reason, details->>'code' AS code FROM audit_event "
                             "WHERE entity_type = 'decision' AND entity_id = %s AND event = 'DECISION_REFUSED'",
                             (close,))
    assert refusal["code"] == "ACCOUNT_MISMATCH" and f"placed in broker account {mine}" in refusal["reason"]
    assert other_exchange.orders() == []

    back = run_monitor(db, broker, settings)  # pointed back: reconciled as before, invariants hold
    assert back.outcome == "success" and "other_account_trades" not in back.counts
    assert db.get_by_id("trade_journal", held["id"])["status"] == "POSITION"


def test_trades_recorded_before_accounts_were_are_adopted_by_the_first_account_seen(db, exchange, broker):
    held = open_position(db, exchange, broker)
    db.execute_update("UPDATE trade_journal SET broker_account = NULL")

    summary = run_monitor(db, broker)

    assert summary.outcome == "success"
    assert db.get_by_id("trade_journal", held["id"])["broker_account"] == broker.get_account().number
    assert db.query("audit_event", {"event": ACCOUNT_MISMATCH}) == []


def test_trades_of_another_broker_account_trip_the_reconciliation_breaker_until_someone_resumes(
        db, exchange, broker, other_broker):
    """Issue 13: the reconciliation breaker covers an account mismatch (the trades it leaves alone
    are unprotected and unreconciled, so no new entries until a person has looked)."""
    from trading.state import TradingMode, read_trading_state, record_trading_state

    settings = make_settings()
    open_position(db, exchange, broker)

    order_monitor.run_once(db, other_broker, settings=settings, sleep=lambda _s: None)  # records the mismatch
    position_monitor.run_once(db, other_broker, settings=settings, sleep=lambda _s: None)  # its breaker trips

    state = read_trading_state(db).account
    assert (state.mode, state.source) == (TradingMode.REDUCE_ONLY, "breaker:reconciliation")
    assert "ACCOUNT_MISMATCH AAPL" in state.reason
    record_trading_state(db, TradingMode.ACTIVE, reason="keys put back", changed_by="alice")
    order_monitor.run_once(db, other_broker, settings=settings, sleep=lambda _s: None)
    assert read_trading_state(db).account.mode is TradingMode.ACTIVE  # recorded once per pair: acknowledged
