"""trading.trades.TradeBook on a real database: positions, exits, exact P&L and the fill ledger."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from trading.audit import Auditor
from trading.errors import RejectedError
from trading.trades import TradeBook, average_price

D = Decimal
T0 = dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC)


@pytest.fixture
def book(db):
    return TradeBook(db, Auditor(db, "test"))


def open_trade(db, book, qty="10", price="150.00", symbol="AAPL"):
    """An ORDERED trade whose entry then fills completely."""
    with db.transaction():
        trade = book.create({"symbol": symbol, "trade_style": "SWING", "planned_entry": D(price),
                             "planned_sl": D(price) - 5, "planned_tp": D(price) + 10, "planned_qty": D(qty)})
        entry_id = db.insert("order_execution", {"trade_journal_id": trade["id"], "symbol": symbol,
                                                 "order_type": "ENTRY", "side": "buy", "order_status": "filled",
                                                 "qty": D(qty), "filled_qty": D(qty), "filled_avg_price": D(price),
                                                 "filled_at": T0})
        book.apply_entry_fill(trade, db.get_by_id("order_execution", entry_id), D(qty), T0, D(price))
    return trade


def test_entry_fill_opens_a_position_at_the_fill_price(db, book):
    trade = open_trade(db, book)
    assert trade["status"] == "POSITION" and trade["actual_entry"] == D("150.00") and trade["entry_date"] == T0
    position = book.position(trade["id"])
    assert (position["qty"], position["cost_basis"], position["current_price"], position["unrealized_pnl"]) == \
        (D("10"), D("1500.00"), D("150.00"), D("0"))
    fills = db.query("trade_fill")
    assert [(f["side"], f["qty"], f["price"], f["realized_pnl"]) for f in fills] == \
        [("buy", D("10"), D("150.00"), None)]


def test_exit_in_two_parts_books_each_and_closes_at_the_average_price(db, book):
    trade = open_trade(db, book)
    with db.transaction():
        closed = book.apply_exit_fill(trade, D("3"), D("155.01"), T0 + dt.timedelta(hours=1), "PROFIT_TAKEN", "tp")
    assert not closed
    assert db.get_by_id("trade_journal", trade["id"])["realized_pnl"] == D("15.03")
    assert book.position(trade["id"])["qty"] == D("7")
    with db.transaction():
        closed = book.apply_exit_fill(trade, D("7"), D("155.02"), T0 + dt.timedelta(hours=2), "PROFIT_TAKEN", "tp")
    assert closed
    row = db.get_by_id("trade_journal", trade["id"])
    assert (row["status"], row["exit_price"], row["actual_pnl"], row["exit_reason"]) == \
        ("CLOSED", D("155.017"), D("50.17"), "PROFIT_TAKEN")
    assert (row["exit_price"] - row["actual_entry"]) * row["actual_qty"] == row["actual_pnl"]
    assert book.position(trade["id"]) is None
    sells = db.query("trade_fill", {"side": "sell"}, order_by="id")
    assert [(f["qty"], f["realized_pnl"]) for f in sells] == [(D("3"), D("15.03")), (D("7"), D("35.14"))]


def test_realized_since_counts_partial_exits_of_open_trades_by_fill_time(db, book):
    winner, loser = open_trade(db, book), open_trade(db, book, symbol="MSFT", price="400.00")
    yesterday = T0 - dt.timedelta(days=1)
    with db.transaction():
        book.apply_exit_fill(winner, D("2"), D("160.00"), yesterday, "PROFIT_TAKEN", "tp")  # +20 yesterday
        book.apply_exit_fill(loser, D("4"), D("390.50"), T0, "STOPPED_OUT", "sl")           # -38 today, still open
    assert book.realized_since(T0 - dt.timedelta(hours=1)) == D("-38.00")
    assert book.realized_since(yesterday) == D("-18.00")


def test_an_odd_average_exit_keeps_six_decimals_and_pnl_to_the_cent(db, book):
    trade = open_trade(db, book, qty="3", price="10.00")
    with db.transaction():
        book.apply_exit_fill(trade, D("1"), D("10.01"), T0, "MANUAL_EXIT", "x")
        book.apply_exit_fill(trade, D("2"), D("10.02"), T0, "MANUAL_EXIT", "x")
    row = db.get_by_id("trade_journal", trade["id"])
    assert row["exit_price"] == D("10.016667") and row["actual_pnl"] == D("0.05")


def test_selling_more_than_held_closes_and_records_an_anomaly(db, book):
    trade = open_trade(db, book, qty="5")
    with db.transaction():
        assert book.apply_exit_fill(trade, D("6"), D("151.00"), T0, "MANUAL_EXIT", "outside")
    anomalies = db.query("audit_event", {"event": "ORDER_ANOMALY"})
    assert len(anomalies) == 1 and "sold 6 but the position held 5" in anomalies[0]["reason"]


def test_trade_transitions_outside_the_table_are_refused(db, book):
    trade = open_trade(db, book)
    with pytest.raises(RejectedError, match="cannot go from POSITION to CANCELLED"), db.transaction():
        book.cancel(trade, "CANCEL_REQUESTED", T0, "too late")
    assert db.get_by_id("trade_journal", trade["id"])["status"] == "POSITION"


def test_lock_needs_a_transaction(db, book):
    trade = open_trade(db, book)
    with pytest.raises(AssertionError):
        book.lock(trade["id"])
    with db.transaction():
        assert book.lock(trade["id"])["id"] == trade["id"]


@pytest.mark.parametrize("value, expected", [
    ("155.017", "155.017"), ("155.0170000", "155.017"), ("155.1", "155.10"), ("10.0166666667", "10.016667"),
    ("0.12345", "0.12345"),
])
def test_average_price_uses_as_few_decimals_as_represent_it(value, expected):
    assert str(average_price(D(value))) == expected
