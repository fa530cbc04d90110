"""position_monitor against the real PostgreSQL and the paper exchange through alpaca-py.

Trades reach POSITION the way production gets them there: a decision, ``order_executor``
(bracket entry), a quote that fills it, ``order_monitor`` (position row + protection). Things
done "outside the system" (an operator in Alpaca's dashboard, another tool on the same account)
go through a second, independent alpaca-py client or plain HTTP with other keys, so the
database never hears of them.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

import pytest
import requests

import order_executor
import order_monitor
import position_monitor
from alpaca_client import AlpacaBroker
from tests.factories import ExchangeAdmin, add_decision, make_settings, snapshot
from trading import audit
from trading.broker import OrderRequest

SETTINGS = make_settings()
TRADE_TABLES = ("analysis_decision", "trade_journal", "order_execution", "position_tracking")


def exchange_sleep(broker: AlpacaBroker) -> Any:
    """The programs' waits between cancel confirmations pass the exchange's simulated clock."""
    return ExchangeAdmin(broker.base_url).sleeper()


def run_position_monitor(db: Any, broker: AlpacaBroker, **options: Any) -> Any:
    """One position monitor run, after one matching pass of the exchange (runs are minutes apart)."""
    ExchangeAdmin(broker.base_url).step()
    return position_monitor.run_once(db, broker, settings=SETTINGS, sleep=exchange_sleep(broker), **options)


def open_trades(db: Any, broker: AlpacaBroker, exchange: Any, **trades: tuple[str, str, str, str, int]) -> None:
    """Open one protected SWING trade per symbol: ``AAPL=(entry, stop, target, quote_bid, qty)``.

    The entry limit is filled at the ask (= the entry) by a quote of (bid, entry)."""
    for symbol, (entry, stop, target, _bid, qty) in trades.items():
        add_decision(db, symbol, planned_entry=entry, planned_sl=stop, planned_tp=target, planned_qty=qty)
    placed = order_executor.run_once(db, broker, settings=SETTINGS, sleep=exchange_sleep(broker))
    assert placed.counts["placed"] == len(trades), placed.notes
    exchange.quotes(**{symbol: (bid, entry) for symbol, (entry, _s, _t, bid, _q) in trades.items()})
    opened = order_monitor.run_once(db, broker, settings=SETTINGS, sleep=exchange_sleep(broker))
    assert opened.counts["positions_opened"] == len(trades), opened.notes
    assert exchange.positions() == {symbol: Decimal(qty) for symbol, (*_rest, qty) in trades.items()}


def open_aapl(db: Any, broker: AlpacaBroker, exchange: Any) -> None:
    """10 AAPL bought at 150.00, stop 145, target 160."""
    open_trades(db, broker, exchange, AAPL=("150", "145", "160", "149.90", 10))


def position(db: Any, symbol: str = "AAPL") -> dict[str, Any]:
    rows = db.query("position_tracking", {"symbol": symbol})
    assert len(rows) == 1
    return rows[0]


def trade(db: Any, symbol: str = "AAPL") -> dict[str, Any]:
    rows = db.query("trade_journal", {"symbol": symbol})
    assert len(rows) == 1
    return rows[0]


def audit_rows(db: Any, event: str) -> list[dict[str, Any]]:
    return db.query("audit_event", {"event": event}, order_by="id")


def open_exchange_orders(exchange: Any, symbol: str = "AAPL") -> list[dict[str, Any]]:
    finished = {"filled", "canceled", "expired", "rejected", "replaced"}
    return [o for o in exchange.orders() if o["symbol"] == symbol and o["status"] not in finished]


def portfolio_snapshots(db: Any) -> list[dict[str, Any]]:
    return db.query("portfolio_snapshot", order_by="id")


@pytest.fixture
def outside(exchange: Any) -> AlpacaBroker:
    """Someone else on the same account: a separate alpaca-py client the system knows nothing of."""
    return AlpacaBroker(base_url=exchange.url, data_url=exchange.url, api_key="dashboard", secret_key="operator",
                        timeout=3)


def cancel_protection_outside(outside: AlpacaBroker, exchange: Any, symbol: str = "AAPL") -> None:
    """Cancel the symbol's protective group at the broker (canceling one leg cancels the group)."""
    legs = [o for o in open_exchange_orders(exchange, symbol) if o["side"] == "sell"]
    assert legs
    outside.cancel_order(legs[0]["id"])
    exchange.step()  # the cancel completes (an OCO's stop leg one pass after its parent)
    exchange.step()
    assert [o for o in open_exchange_orders(exchange, symbol) if o["side"] == "sell"] == []


def sell_outside(outside: AlpacaBroker, qty: int, client_order_id: str, symbol: str = "AAPL") -> Any:
    order = outside.submit_order(OrderRequest(symbol=symbol, qty=Decimal(qty), side="sell", kind="market",
                                              time_in_force="day", client_order_id=client_order_id))
    ExchangeAdmin(outside.base_url).step()  # it fills at the next matching pass
    order = outside.get_order(order.id)
    assert order.status == "filled"
    return order


# --------------------------------------------------------------------------- valuation


@pytest.mark.parametrize(("bid", "ask", "price", "value", "pnl", "pct"), [
    pytest.param("152.00", "152.10", "152.05", "1520.50", "20.50", "1.3667", id="gain"),
    pytest.param("147.30", "147.40", "147.35", "1473.50", "-26.50", "-1.7667", id="loss"),
    pytest.param("149.99", "150.01", "150.00", "1500.00", "0.00", "0.0000", id="flat"),
    pytest.param("150.00", "150.01", "150.005", "1500.05", "0.05", "0.0033", id="half-cent-midpoint"),
])
def test_position_is_revalued_at_the_quote_midpoint_to_the_cent(db, broker, exchange, bid, ask, price, value,
                                                                   pnl, pct):
    open_aapl(db, broker, exchange)
    opened_at = position(db)["last_updated"]
    exchange.clock("2026-11-20T15:00:00Z")
    exchange.quotes(AAPL=(bid, ask))

    summary = run_position_monitor(db, broker)

    assert summary.outcome == "success", summary.notes
    row = position(db)
    assert row["current_price"] == Decimal(price)
    assert row["market_value"] == Decimal(value)
    assert row["unrealized_pnl"] == Decimal(pnl)
    assert row["unrealized_pnl_pct"] == Decimal(pct)
    assert (row["qty"], row["avg_entry_price"], row["cost_basis"]) == (Decimal(10), Decimal(150), Decimal("1500.00"))
    revalued = pnl != "0.00"  # a price equal to the entry leaves the row as it was
    assert row["last_updated"] == (summary.market_time if revalued else opened_at)
    assert all(isinstance(row[k], Decimal) for k in ("current_price", "market_value", "unrealized_pnl"))
    assert trade(db)["status"] == "POSITION"
    run = db.get_by_id("program_run", summary.run_id)
    assert run["program"] == "position_monitor" and run["outcome"] == "success"
    assert run["counts"]["positions"] == 1 and run["counts"].get("revalued", 0) == int(revalued)


def test_run_writes_a_portfolio_snapshot_from_the_account_and_the_positions(db, broker, exchange):
    open_aapl(db, broker, exchange)
    exchange.quotes(AAPL=("152.00", "152.10"))

    summary = run_position_monitor(db, broker)

    [snap] = portfolio_snapshots(db)
    account = exchange.state()
    assert snap["cash"] == Decimal("98500.00") == Decimal(account["cash"])
    assert snap["equity"] == Decimal("100020.50") == Decimal(account["equity"])
    assert snap["positions_value"] == Decimal("1520.50")
    assert snap["unrealized_pnl"] == Decimal("20.50")
    assert snap["realized_pnl_today"] == Decimal("0.00")
    assert snap["open_positions"] == 1
    assert snap["taken_at"] == summary.market_time
    assert snap["program_run_id"] == summary.run_id


def test_several_positions_are_valued_with_one_quote_call_and_one_positions_call(db, broker, exchange):
    open_trades(db, broker, exchange,
                AAPL=("150", "145", "160", "149.90", 10),
                MSFT=("400", "390", "420", "399.80", 5),
                NVDA=("50", "48", "55", "49.95", 20))
    exchange.quotes(AAPL=("152.00", "152.10"), MSFT=("395.00", "395.20"), NVDA=("50.00", "50.01"))
    broker.calls.reset()
    exchange.reset_stats()

    summary = run_position_monitor(db, broker)

    assert summary.outcome == "success", summary.notes
    values = {r["symbol"]: (r["current_price"], r["market_value"], r["unrealized_pnl"], r["unrealized_pnl_pct"])
              for r in db.query("position_tracking")}
    assert values == {
        "AAPL": (Decimal("152.05"), Decimal("1520.50"), Decimal("20.50"), Decimal("1.3667")),    # gain
        "MSFT": (Decimal("395.10"), Decimal("1975.50"), Decimal("-24.50"), Decimal("-1.2250")),  # loss
        "NVDA": (Decimal("50.005"), Decimal("1000.10"), Decimal("0.10"), Decimal("0.0100")),     # half-cent mid
    }
    assert broker.calls.counts["get_latest_quotes"] == 1
    assert broker.calls.counts["list_positions"] == 1
    assert not {"get_order", "list_orders", "submit_order", "cancel_order"} & set(broker.calls.counts)
    routes = exchange.stats()["routes"]
    assert routes["GET /v2/stocks/quotes/latest"] == 1
    assert routes["GET /v2/positions"] == 1
    [snap] = portfolio_snapshots(db)
    assert snap["positions_value"] == Decimal("4496.10")
    assert snap["unrealized_pnl"] == Decimal("-3.90")
    assert snap["open_positions"] == 3


@pytest.mark.parametrize(("bid", "ask", "price", "value", "pnl", "pct"), [
    pytest.param("0", "151.00", "151.00", "1510.00", "10.00", "0.6667", id="ask-only"),
    pytest.param("151.20", "0", "151.20", "1512.00", "12.00", "0.8000", id="bid-only"),
])
def test_one_sided_quote_values_the_position_at_the_side_present(db, broker, exchange, bid, ask, price, value, pnl,
                                                                  pct):
    open_aapl(db, broker, exchange)
    exchange.quotes(AAPL=(bid, ask))

    summary = run_position_monitor(db, broker)

    assert summary.outcome == "success", summary.notes
    row = position(db)
    assert (row["current_price"], row["market_value"], row["unrealized_pnl"], row["unrealized_pnl_pct"]) == (
        Decimal(price), Decimal(value), Decimal(pnl), Decimal(pct))
    assert exchange.positions() == {"AAPL": Decimal(10)}


def test_price_unavailable_keeps_previous_values_and_warns(db, broker, exchange, caplog):
    open_trades(db, broker, exchange,
                AAPL=("150", "145", "160", "149.90", 10),
                MSFT=("400", "390", "420", "399.80", 5))
    exchange.quotes(AAPL=("152.00", "152.10"), MSFT=("401.00", "401.20"))
    run_position_monitor(db, broker)
    msft_before = position(db, "MSFT")
    assert msft_before["current_price"] == Decimal("401.10")

    exchange.clock("2026-11-20T15:05:00Z")
    exchange.quotes(AAPL=("153.00", "153.10"), MSFT=("0", "0"))  # no usable MSFT quote at all
    with caplog.at_level(logging.WARNING, logger="position_monitor"):
        summary = run_position_monitor(db, broker)

    assert summary.outcome == "warning"
    assert summary.counts["price_unavailable"] == 1
    assert any("no quote for MSFT" in note for note in summary.notes)
    assert any("no quote for MSFT" in record.getMessage() for record in caplog.records)
    assert position(db, "MSFT") == msft_before  # never zeroed, not even touched
    assert position(db, "MSFT")["market_value"] == Decimal("2005.50")
    aapl = position(db, "AAPL")
    assert (aapl["current_price"], aapl["unrealized_pnl"]) == (Decimal("153.05"), Decimal("30.50"))
    assert aapl["last_updated"] == summary.market_time
    snap = portfolio_snapshots(db)[-1]
    assert snap["positions_value"] == Decimal("1530.50") + Decimal("2005.50")  # the last known MSFT value
    assert exchange.positions() == {"AAPL": Decimal(10), "MSFT": Decimal(5)}


# --------------------------------------------------------------------------- closed at the broker


@pytest.mark.parametrize(("bid", "ask", "reason", "exit_price", "pnl", "filled_type"), [
    pytest.param("144.90", "145.00", "STOPPED_OUT", "144.90", "-51.00", "STOP_LOSS", id="stop"),
    pytest.param("160.00", "160.10", "PROFIT_TAKEN", "160.00", "100.00", "TAKE_PROFIT", id="take-profit"),
])
def test_exit_leg_filled_before_order_monitor_ran_closes_with_its_reason_and_fill_price(
        db, broker, exchange, bid, ask, reason, exit_price, pnl, filled_type):
    open_aapl(db, broker, exchange)
    exchange.clock("2026-11-20T16:00:00Z")
    exchange.quotes(AAPL=(bid, ask))  # the leg fills at the broker; order_monitor has not run since
    assert exchange.positions() == {}

    summary = run_position_monitor(db, broker)

    closed = trade(db)
    assert closed["status"] == "CLOSED"
    assert closed["exit_reason"] == reason
    assert closed["exit_price"] == Decimal(exit_price)
    assert closed["actual_pnl"] == Decimal(pnl)
    assert closed["actual_pnl"] == (closed["exit_price"] - closed["actual_entry"]) * closed["actual_qty"]
    assert db.query("position_tracking") == []
    statuses = {r["order_type"]: r["order_status"] for r in db.query("order_execution")}
    assert statuses[filled_type] == "filled"
    assert set(statuses.values()) <= {"filled", "canceled"}
    assert open_exchange_orders(exchange) == []
    assert summary.counts["closed_by_exit_order"] == 1
    assert audit_rows(db, audit.QUANTITY_MISMATCH) == []  # explained by the trade's own order
    snap = portfolio_snapshots(db)[-1]
    assert (snap["open_positions"], snap["positions_value"]) == (0, Decimal("0.00"))
    assert snap["realized_pnl_today"] == Decimal(pnl)

    # order_monitor, running next, finds everything already recorded: no second booking.
    before = snapshot(db)
    order_monitor.run_once(db, broker, settings=SETTINGS, sleep=exchange_sleep(broker))
    assert snapshot(db) == before


def test_position_sold_outside_after_canceling_the_legs_closes_at_that_sells_price(db, broker, exchange, outside):
    open_aapl(db, broker, exchange)
    cancel_protection_outside(outside, exchange)
    exchange.quotes(AAPL=("151.00", "151.10"))
    sell = sell_outside(outside, 10, "dashboard-sell-1")

    summary = run_position_monitor(db, broker)

    closed = trade(db)
    assert (closed["status"], closed["exit_reason"]) == ("CLOSED", "MANUAL_EXIT")
    assert closed["exit_price"] == Decimal("151.00")
    assert closed["actual_pnl"] == Decimal("10.00")
    assert db.query("position_tracking") == []
    assert {r["order_status"] for r in db.query("order_execution") if r["order_type"] != "ENTRY"} == {"canceled"}
    [mismatch] = audit_rows(db, audit.QUANTITY_MISMATCH)
    assert (mismatch["old_value"], mismatch["new_value"]) == ("10", "0")
    assert mismatch["details"]["outside_fills"] == [{"order_id": sell.id, "qty": "10", "price": "151"}]
    assert summary.counts["closed_outside"] == 1 and summary.outcome == "warning"


def test_position_closed_outside_then_bought_again_outside_is_closed_and_the_new_shares_are_orphans(
        db, broker, exchange, outside):
    # Found by the chaos day (seed 37): a person sold all 10 shares in the app, then bought 3; the
    # net difference (3 held, 10 recorded) was booked as 7 sold outside and the trade kept the
    # person's 3 shares as its own (protected, and sold at its exits: outside shares adopted).
    open_aapl(db, broker, exchange)
    cancel_protection_outside(outside, exchange)
    exchange.quotes(AAPL=("151.00", "151.10"))
    sell = sell_outside(outside, 10, "dashboard-sell-1")
    outside.submit_order(OrderRequest(symbol="AAPL", qty=Decimal(3), side="buy", kind="market",
                                      time_in_force="day", client_order_id="dashboard-buy-3"))
    exchange.step()
    assert exchange.positions() == {"AAPL": Decimal(3)}

    run_position_monitor(db, broker)

    closed = trade(db)
    assert (closed["status"], closed["exit_reason"], closed["exit_price"]) == ("CLOSED", "MANUAL_EXIT",
                                                                               Decimal("151.00"))
    assert closed["actual_pnl"] == Decimal("10.00")
    assert db.query("position_tracking") == []
    [mismatch] = audit_rows(db, audit.QUANTITY_MISMATCH)
    assert mismatch["details"]["outside_fills"] == [{"order_id": sell.id, "qty": "10", "price": "151"}]
    [orphan] = audit_rows(db, audit.ORPHAN_POSITION)
    assert (orphan["symbol"], orphan["new_value"]) == ("AAPL", "3")
    assert exchange.positions() == {"AAPL": Decimal(3)}  # never sold
    assert [o for o in open_exchange_orders(exchange) if o["side"] == "sell"] == []  # never protected


def test_position_closed_from_the_dashboard_with_close_all_closes_at_the_fill_price(db, broker, exchange):
    open_aapl(db, broker, exchange)
    exchange.quotes(AAPL=("148.40", "148.50"))
    # Alpaca's "close all positions": cancel every open order, then sell at market (plain HTTP).
    response = requests.delete(f"{exchange.url}/v2/positions", params={"cancel_orders": "true"}, timeout=5,
                               headers={"APCA-API-KEY-ID": "dashboard", "APCA-API-SECRET-KEY": "operator"})
    assert response.status_code == 207
    exchange.step()  # the market sells fill at the next matching pass
    assert exchange.positions() == {}

    run_position_monitor(db, broker)

    closed = trade(db)
    assert (closed["status"], closed["exit_reason"]) == ("CLOSED", "MANUAL_EXIT")
    assert (closed["exit_price"], closed["actual_pnl"]) == (Decimal("148.40"), Decimal("-16.00"))
    assert db.query("position_tracking") == []
    assert open_exchange_orders(exchange) == []


def insert_trade_the_broker_never_held(db: Any, symbol: str, *, entry: str, qty: int, last_price: str) -> int:
    """A POSITION trade with its position row, valued earlier at ``last_price``, for a symbol the
    exchange holds nothing of: the position vanished at the broker without any sell."""
    entry_date = dt.datetime(2026, 11, 19, 15, 0, tzinfo=dt.UTC)
    trade_id = db.insert("trade_journal", {
        "symbol": symbol, "trade_style": "SWING", "status": "POSITION", "planned_entry": Decimal(entry),
        "planned_sl": Decimal(entry) - 5, "planned_tp": Decimal(entry) + 10, "planned_qty": Decimal(qty),
        "actual_entry": Decimal(entry), "actual_qty": Decimal(qty), "entry_date": entry_date})
    cost = Decimal(entry) * qty
    value = Decimal(last_price) * qty
    db.insert("position_tracking", {
        "trade_journal_id": trade_id, "symbol": symbol, "qty": Decimal(qty), "avg_entry_price": Decimal(entry),
        "cost_basis": cost, "current_price": Decimal(last_price), "market_value": value,
        "unrealized_pnl": value - cost, "unrealized_pnl_pct": ((value - cost) / cost * 100).quantize(Decimal("0.0001")),
        "last_updated": entry_date})
    return trade_id


def test_position_closed_outside_without_exit_order_closes_at_last_known_price(db, broker, exchange):
    trade_id = insert_trade_the_broker_never_held(db, "AMD", entry="100", qty=10, last_price="103.25")
    assert "AMD" not in exchange.positions()

    summary = run_position_monitor(db, broker)

    closed = db.get_by_id("trade_journal", trade_id)
    assert (closed["status"], closed["exit_reason"]) == ("CLOSED", "MANUAL_EXIT")
    assert (closed["exit_price"], closed["actual_pnl"]) == (Decimal("103.25"), Decimal("32.50"))
    assert closed["exit_date"] == summary.market_time
    assert db.query("position_tracking") == []
    [mismatch] = audit_rows(db, audit.QUANTITY_MISMATCH)
    assert mismatch["details"]["outside_fills"] == []
    assert Decimal(mismatch["details"]["unexplained_qty"]) == 10
    assert "last known price" in mismatch["reason"]
    assert summary.outcome == "warning" and summary.counts["closed_outside"] == 1
    assert portfolio_snapshots(db)[-1]["realized_pnl_today"] == Decimal("32.50")


# --------------------------------------------------------------------------- quantities


def test_quantity_mismatch_takes_the_brokers_quantity_and_resizes_protection_at_once(db, broker, exchange, outside):
    open_aapl(db, broker, exchange)
    cancel_protection_outside(outside, exchange)
    exchange.quotes(AAPL=("151.00", "151.10"))
    sell = sell_outside(outside, 4, "dashboard-sell-4")
    assert exchange.positions() == {"AAPL": Decimal(6)}

    summary = run_position_monitor(db, broker)

    assert summary.outcome == "warning" and summary.counts["quantity_mismatch"] == 1
    assert summary.counts["protection_repaired"] == 1
    row = position(db)
    assert (row["qty"], row["cost_basis"]) == (Decimal(6), Decimal("900.00"))
    assert (row["current_price"], row["market_value"], row["unrealized_pnl"]) == (
        Decimal("151.05"), Decimal("906.30"), Decimal("6.30"))
    still_open = trade(db)
    assert still_open["status"] == "POSITION"
    assert (still_open["exited_qty"], still_open["realized_pnl"]) == (Decimal(4), Decimal("4.00"))  # sold @ 151.00
    [mismatch] = audit_rows(db, audit.QUANTITY_MISMATCH)
    assert (mismatch["entity_id"], mismatch["old_value"], mismatch["new_value"]) == (still_open["id"], "10", "6")
    assert mismatch["details"]["outside_fills"] == [{"order_id": sell.id, "qty": "4", "price": "151"}]
    # One group at the exchange covers exactly the 6 shares: an OCO (take-profit 160 + stop 145).
    sells = [o for o in open_exchange_orders(exchange) if o["side"] == "sell"]
    assert sorted((o["type"], Decimal(o["qty"]), o["status"]) for o in sells) == [
        ("limit", Decimal(6), "pending_new"), ("stop", Decimal(6), "held")]  # as answered to this run
    take_profit = next(o for o in sells if o["type"] == "limit")
    stop = next(o for o in sells if o["type"] == "stop")
    group = outside.get_order(take_profit["id"])
    assert (group.order_class, [leg.id for leg in group.legs]) == ("oco", [stop["id"]])
    assert Decimal(stop["stop_price"]) == Decimal("145")
    assert row["stop_loss_order_id"] == stop["id"]
    protecting = [r for r in db.query("order_execution") if r["order_status"] in ("pending_new", "held")]
    assert sorted((r["order_type"], r["qty"]) for r in protecting) == [("STOP_LOSS", 6), ("TAKE_PROFIT", 6)]

    # Once order_monitor recorded the OCO's acknowledgement (pending_new -> new), nothing is new at the
    # broker: the next run, and order_monitor's, change nothing.
    exchange.step()
    order_monitor.run_once(db, broker, settings=SETTINGS, sleep=exchange_sleep(broker))
    before = snapshot(db)
    again = run_position_monitor(db, broker)
    assert snapshot(db) == before
    assert again.outcome == "success", again.notes
    order_monitor.run_once(db, broker, settings=SETTINGS, sleep=exchange_sleep(broker))
    assert snapshot(db) == before

    # The rest is sold outside later at another price: each outside sell is used once.
    exchange.clock("2026-11-20T15:30:00Z")
    cancel_protection_outside(outside, exchange)
    exchange.quotes(AAPL=("152.00", "152.10"))
    sell_outside(outside, 6, "dashboard-sell-6")
    run_position_monitor(db, broker)

    closed = trade(db)
    assert (closed["status"], closed["exit_reason"]) == ("CLOSED", "MANUAL_EXIT")
    assert closed["actual_pnl"] == Decimal("16.00")  # 4 x 1.00 + 6 x 2.00
    assert closed["exit_price"] == Decimal("151.60")  # (4 x 151 + 6 x 152) / 10
    assert closed["actual_pnl"] == (closed["exit_price"] - closed["actual_entry"]) * closed["actual_qty"]
    assert db.query("position_tracking") == []
    assert open_exchange_orders(exchange) == []
    assert [r["new_value"] for r in audit_rows(db, audit.QUANTITY_MISMATCH)] == ["6", "0"]


def test_shares_bought_outside_are_recorded_not_adopted_and_the_trade_keeps_its_own_protection(
        db, broker, exchange, outside):
    open_aapl(db, broker, exchange)
    before_orders = {(o["id"], o["status"]) for o in open_exchange_orders(exchange)}
    exchange.quotes(AAPL=("151.00", "151.10"))
    outside.submit_order(OrderRequest(symbol="AAPL", qty=Decimal(5), side="buy", kind="market",
                                      time_in_force="day", client_order_id="dashboard-buy-5"))
    exchange.step()  # acknowledged and filled at the next matching pass
    assert exchange.positions() == {"AAPL": Decimal(15)}

    summary = run_position_monitor(db, broker)

    # Fills are attributed by their orders' ids, never by symbol: no trade takes the 5 shares.
    assert summary.outcome == "warning" and summary.counts["unexplained_shares"] == 1
    assert position(db)["qty"] == Decimal(10) and trade(db)["actual_qty"] == Decimal(10)
    assert audit_rows(db, audit.QUANTITY_MISMATCH) == []
    [excess] = audit_rows(db, audit.ORPHAN_POSITION)
    assert (excess["symbol"], excess["new_value"]) == ("AAPL", "5")
    assert {(o["id"], o["status"]) for o in open_exchange_orders(exchange)} == before_orders  # untouched
    assert exchange.positions() == {"AAPL": Decimal(15)}  # never sold

    again = snapshot(db)
    run_position_monitor(db, broker)
    assert snapshot(db) == again  # recorded once per quantity


def test_stop_replaced_outside_and_seen_first_by_the_position_monitor_is_adopted_not_repaired_over(
        db, broker, exchange, outside):
    # Found by the chaos day (seed 15): the position monitor, syncing a trade's orders after shares
    # were bought outside, recorded the person's replace of the stop as the stop's end without
    # adopting its replacement; the order monitor then saw no stop and its repairs were refused
    # (the replacement holds the shares) run after run, with the live stop missing from the tables.
    add_decision(db, "AAPL", trade_style="DAYTRADE", planned_tp=None)  # an OTO: entry + stop
    order_executor.run_once(db, broker, settings=SETTINGS, sleep=exchange_sleep(broker))
    exchange.quotes(AAPL=("149.90", "150.00"))
    order_monitor.run_once(db, broker, settings=SETTINGS, sleep=exchange_sleep(broker))
    cancel_protection_outside(outside, exchange)
    exchange.step()
    order_monitor.run_once(db, broker, settings=SETTINGS, sleep=exchange_sleep(broker))  # a stop of its own
    exchange.step()  # acknowledged
    [stop] = [o for o in open_exchange_orders(exchange) if o["side"] == "sell"]
    assert (stop["order_class"], stop["client_order_id"][-3:]) == ("", "-p1")
    replacement = outside.replace_order(stop["id"], stop_price=Decimal("146.00"))
    outside.submit_order(OrderRequest(symbol="AAPL", qty=Decimal(1), side="buy", kind="market",
                                      time_in_force="day", client_order_id="dashboard-buy-1"))
    exchange.step()  # the replace completes, the buy fills

    run_position_monitor(db, broker)
    summary = order_monitor.run_once(db, broker, settings=SETTINGS, sleep=exchange_sleep(broker))

    assert summary.counts["protection_protected"] == 1 and summary.counts["protection_failed"] == 0
    [adopted] = db.query("order_execution", {"alpaca_order_id": replacement.id})
    assert (adopted["order_type"], adopted["order_status"], adopted["stop_price"]) == ("STOP_LOSS", "new",
                                                                                        Decimal("146.00"))
    assert position(db)["stop_loss_order_id"] == replacement.id
    assert [r for r in db.query("order_execution") if r["order_status"] == "rejected"] == []
    assert [o["id"] for o in open_exchange_orders(exchange) if o["side"] == "sell"] == [replacement.id]


def test_orphan_broker_position_is_recorded_once_and_never_sold(db, broker, exchange, outside):
    open_aapl(db, broker, exchange)
    exchange.quotes(MSFT=("400.00", "400.10"))
    outside.submit_order(OrderRequest(symbol="MSFT", qty=Decimal(3), side="buy", kind="market",
                                      time_in_force="day", client_order_id="dashboard-buy-msft"))
    exchange.step()  # acknowledged and filled at the next matching pass

    first = run_position_monitor(db, broker)

    assert first.outcome == "warning" and first.counts["orphans"] == 1
    assert any("MSFT" in note and "not adopted, not sold" in note for note in first.notes)
    [orphan] = audit_rows(db, audit.ORPHAN_POSITION)
    assert (orphan["entity_type"], orphan["symbol"], orphan["new_value"]) == ("broker_position", "MSFT", "3")
    assert orphan["program_run_id"] == first.run_id
    assert db.query("trade_journal", {"symbol": "MSFT"}) == []
    assert db.query("position_tracking", {"symbol": "MSFT"}) == []

    before = snapshot(db)
    second = run_position_monitor(db, broker)
    assert snapshot(db) == before  # no second audit row, nothing adopted
    assert second.counts["orphans"] == 1

    assert exchange.positions() == {"AAPL": Decimal(10), "MSFT": Decimal(3)}
    assert open_exchange_orders(exchange, "MSFT") == []  # never sold, no order placed
    assert [o for o in exchange.orders() if o["symbol"] == "MSFT" and o["side"] == "sell"] == []

    # A changed orphan quantity is recorded again (once).
    outside.submit_order(OrderRequest(symbol="MSFT", qty=Decimal(2), side="buy", kind="market",
                                      time_in_force="day", client_order_id="dashboard-buy-msft-2"))
    exchange.step()  # acknowledged and filled at the next matching pass
    run_position_monitor(db, broker)
    run_position_monitor(db, broker)
    assert [r["new_value"] for r in audit_rows(db, audit.ORPHAN_POSITION)] == ["3", "5"]


def test_entry_filled_before_order_monitor_ran_is_not_an_orphan(db, broker, exchange):
    add_decision(db, "AAPL")
    order_executor.run_once(db, broker, settings=SETTINGS, sleep=exchange_sleep(broker))
    exchange.quotes(AAPL=("149.90", "150.00"))  # the entry fills; order_monitor has not run yet
    assert exchange.positions() == {"AAPL": Decimal(10)}

    summary = run_position_monitor(db, broker)

    assert summary.counts["awaiting_entry_sync"] == 1
    assert "orphans" not in summary.counts
    assert audit_rows(db, audit.ORPHAN_POSITION) == []
    assert trade(db)["status"] == "ORDERED"
    assert exchange.positions() == {"AAPL": Decimal(10)}


# --------------------------------------------------------------------------- outages and re-runs


FAULTS = {
    "positions-500": {"status": 500, "path": "/v2/positions"},
    "positions-timeout": {"delay_seconds": 1.5, "path": "/v2/positions"},
    "positions-dropped": {"drop": True, "path": "/v2/positions"},
    "quotes-503": {"status": 503, "path": "/v2/stocks/quotes/latest"},
    "account-500": {"status": 500, "path": "/v2/account"},
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_broker_unreachable_ends_the_run_with_a_warning_and_changes_nothing(db, exchange, fault):
    broker = AlpacaBroker(base_url=exchange.url, data_url=exchange.url, timeout=0.5)
    open_aapl(db, broker, exchange)
    run_position_monitor(db, broker)
    # A run would now have work: the stop filled at the broker and the price moved.
    exchange.clock("2026-11-20T16:00:00Z")
    exchange.quotes(AAPL=("144.90", "145.00"))
    before = snapshot(db)
    snapshots_before = portfolio_snapshots(db)
    exchange.fault(**fault)

    summary = run_position_monitor(db, broker)

    assert summary.outcome == "warning"
    assert summary.error
    after = snapshot(db)
    assert {t: after[t] for t in TRADE_TABLES} == {t: before[t] for t in TRADE_TABLES}
    added = after["audit_event"][len(before["audit_event"]):]
    assert after["audit_event"][:len(before["audit_event"])] == before["audit_event"]
    assert [r["event"] for r in added] == [audit.RUN_ABORTED]  # only the record that the run stopped
    assert portfolio_snapshots(db) == snapshots_before
    assert db.get_by_id("program_run", summary.run_id)["outcome"] == "warning"

    exchange.clear_faults()
    recovered = run_position_monitor(db, broker)
    assert recovered.counts["closed_by_exit_order"] == 1
    assert trade(db)["exit_reason"] == "STOPPED_OUT"


def test_second_run_with_nothing_new_changes_nothing(db, broker, exchange):
    open_trades(db, broker, exchange,
                AAPL=("150", "145", "160", "149.90", 10),
                MSFT=("400", "390", "420", "399.80", 5))
    exchange.quotes(AAPL=("152.00", "152.10"), MSFT=("395.00", "395.20"))
    run_position_monitor(db, broker)
    before = snapshot(db)
    orders_before = exchange.orders()
    broker.calls.reset()

    summary = run_position_monitor(db, broker)

    assert summary.outcome == "success", summary.notes
    assert snapshot(db) == before
    assert exchange.orders() == orders_before
    assert summary.counts.get("revalued", 0) == 0
    assert set(broker.calls.counts) <= {"get_clock", "get_calendar", "list_positions", "get_latest_quotes",
                                        "get_account"}
    assert len(portfolio_snapshots(db)) == 2  # the equity curve grows by one point per run, by design


def test_run_is_skipped_while_another_holds_the_position_monitor_lock(db, broker, exchange, make_db):
    open_aapl(db, broker, exchange)
    exchange.quotes(AAPL=("152.00", "152.10"))
    before = snapshot(db)
    other = make_db()
    broker.calls.reset()

    with other.advisory_lock("position_monitor") as taken:
        assert taken
        summary = run_position_monitor(db, broker)

    assert summary.outcome == "skipped"
    assert snapshot(db) == before
    assert portfolio_snapshots(db) == []
    assert broker.calls.total == 0
    assert run_position_monitor(db, broker).outcome == "success"
    assert position(db)["current_price"] == Decimal("152.05")


# --------------------------------------------------------------------------- issue 11: trade safety


def test_unrecorded_entry_fill_of_another_trade_of_the_symbol_is_booked_on_its_own_trade(db, broker, exchange):
    settings = make_settings(ALLOW_SAME_SYMBOL="true")
    open_aapl(db, broker, exchange)
    first = trade(db)
    first_orders = {(o["id"], o["status"]) for o in open_exchange_orders(exchange)}
    second_decision = add_decision(db, "AAPL", planned_entry="152.00", planned_sl="147.00", planned_tp="165.00",
                                   planned_qty=5)
    exchange.quotes(AAPL=("152.90", "153.00"))  # the second entry rests
    assert order_executor.run_once(db, broker, settings=settings, sleep=exchange_sleep(broker)).counts["placed"] == 1
    exchange.quotes(AAPL=("151.90", "152.00"))  # the second entry fills; order_monitor has not run
    assert exchange.positions() == {"AAPL": Decimal(15)}

    position_monitor.run_once(db, broker, settings=settings, sleep=exchange_sleep(broker))

    (second,) = db.query("trade_journal", {"initial_analysis_id": second_decision})
    assert (second["status"], second["actual_qty"], second["actual_entry"]) == ("POSITION", Decimal(5),
                                                                              Decimal("152"))
    first_now = db.get_by_id("trade_journal", first["id"])
    assert (first_now["status"], first_now["actual_qty"]) == ("POSITION", Decimal(10))
    assert [p["qty"] for p in db.query("position_tracking", order_by="trade_journal_id")] == [Decimal(10),
                                                                                           Decimal(5)]
    assert audit_rows(db, audit.QUANTITY_MISMATCH) == []
    still_open = {(o["id"], o["status"]) for o in open_exchange_orders(exchange)}
    assert first_orders <= still_open  # the first trade's protection was never touched


class MidRunFillBroker(AlpacaBroker):
    """The real client; right after it has read the positions, a price move fills an order at the
    exchange (a fill landing while the run works from its snapshot)."""

    def __init__(self, *, after_positions, **kwargs):
        super().__init__(**kwargs)
        self.after_positions = after_positions

    def list_positions(self):
        positions = super().list_positions()
        self.after_positions()
        return positions


def test_fill_during_the_run_is_not_counted_twice_against_a_stale_position_snapshot(db, broker, exchange):
    settings = make_settings(ALLOW_SAME_SYMBOL="true")
    for target in ("160", "165", "175"):
        add_decision(db, "AAPL", planned_entry="150", planned_sl="145", planned_tp=target, planned_qty=10)
    assert order_executor.run_once(db, broker, settings=settings, sleep=exchange_sleep(broker)).counts["placed"] == 3
    exchange.quotes(AAPL=("149.90", "150.00"))
    opened = order_monitor.run_once(db, broker, settings=settings, sleep=exchange_sleep(broker))
    assert opened.counts["positions_opened"] == 3
    exchange.quotes(AAPL=("160.00", "160.10"))  # the first target fills before the run
    assert exchange.positions() == {"AAPL": Decimal(20)}
    racing = MidRunFillBroker(after_positions=lambda: exchange.quotes(AAPL=("165.00", "165.10")),
                              base_url=exchange.url, data_url=exchange.url, timeout=3)

    summary = position_monitor.run_once(db, racing, settings=settings, sleep=exchange_sleep(broker))

    assert exchange.positions() == {"AAPL": Decimal(10)}
    trades = db.query("trade_journal", {"symbol": "AAPL"}, order_by="id")
    assert [(t["status"], t["exit_reason"]) for t in trades] == [
        ("CLOSED", "PROFIT_TAKEN"), ("CLOSED", "PROFIT_TAKEN"), ("POSITION", None)]
    assert [p["qty"] for p in db.query("position_tracking")] == [Decimal(10)]  # no phantom shares
    assert audit_rows(db, audit.QUANTITY_MISMATCH) == [] and audit_rows(db, audit.ORPHAN_POSITION) == []
    assert summary.counts["synced_from_orders"] == 1


def test_outside_sale_during_the_run_is_booked_against_the_position_read_after_the_sync(
        db, broker, exchange, outside):
    open_aapl(db, broker, exchange)
    cancel_protection_outside(outside, exchange)
    exchange.quotes(AAPL=("151.00", "151.10"))
    first = sell_outside(outside, 4, "dashboard-sell-4")
    later: list[Any] = []
    racing = MidRunFillBroker(after_positions=lambda: later.append(sell_outside(outside, 2, "dashboard-sell-2")),
                              base_url=exchange.url, data_url=exchange.url, timeout=3)

    run_position_monitor(db, racing)

    assert exchange.positions() == {"AAPL": Decimal(4)}
    assert position(db)["qty"] == Decimal(4)  # the broker's quantity after the sync, not the snapshot's 6
    [mismatch] = audit_rows(db, audit.QUANTITY_MISMATCH)
    assert (mismatch["old_value"], mismatch["new_value"]) == ("10", "4")
    assert [f["order_id"] for f in mismatch["details"]["outside_fills"]] == [first.id, later[0].id]
    sells = [o for o in open_exchange_orders(exchange) if o["side"] == "sell"]
    assert sorted((o["type"], Decimal(o["qty"])) for o in sells) == [("limit", Decimal(4)), ("stop", Decimal(4))]


# --------------------------------------------------------------------------- one symbol's failure


def test_outside_buy_after_a_stop_out_is_an_orphan_and_later_symbols_are_still_reconciled(
        db, broker, exchange, outside):
    open_trades(db, broker, exchange, AAPL=("150", "145", "160", "149.90", 10), MSFT=("400", "390", "420", "399.90", 2))
    exchange.quotes(AAPL=("144.00", "144.10"), MSFT=("401.00", "401.10"))  # AAPL's stop fills at the broker
    outside.submit_order(OrderRequest(symbol="AAPL", qty=Decimal(5), side="buy", kind="market",
                                      time_in_force="day", client_order_id="dashboard-buy-after-stop"))
    exchange.step()  # acknowledged and filled at the next matching pass
    outside.submit_order(OrderRequest(symbol="MSFT", qty=Decimal(1), side="buy", kind="market",
                                      time_in_force="day", client_order_id="dashboard-buy-msft"))
    exchange.step()  # acknowledged and filled at the next matching pass
    assert exchange.positions() == {"AAPL": Decimal(5), "MSFT": Decimal(3)}

    summary = run_position_monitor(db, broker)

    assert summary.outcome == "warning", summary.error
    stopped = trade(db, "AAPL")
    assert (stopped["status"], stopped["exit_reason"]) == ("CLOSED", "STOPPED_OUT")
    orphans = audit_rows(db, audit.ORPHAN_POSITION)
    assert sorted((o["symbol"], o["new_value"]) for o in orphans) == [("AAPL", "5"), ("MSFT", "1")]
    assert position(db, "MSFT")["qty"] == Decimal(2)  # the later symbol was reconciled: extra shares not adopted
    assert len(portfolio_snapshots(db)) == 1
    assert exchange.positions() == {"AAPL": Decimal(5), "MSFT": Decimal(3)}  # nothing sold


def test_one_symbols_failure_is_recorded_and_the_batch_goes_on_to_the_snapshot(db, broker, exchange, outside):
    open_trades(db, broker, exchange, AAPL=("150", "145", "160", "149.90", 10), MSFT=("400", "390", "420", "399.90", 2))
    for symbol in ("AAPL", "MSFT"):  # both positions changed outside: both need a look at their orders
        outside.submit_order(OrderRequest(symbol=symbol, qty=Decimal(1), side="buy", kind="market",
                                          time_in_force="day", client_order_id=f"dashboard-buy-{symbol}"))
        exchange.step()  # acknowledged and filled at the next matching pass
    [aapl_entry] = db.query("order_execution", {"symbol": "AAPL", "order_type": "ENTRY"})
    aapl_root = aapl_entry["alpaca_order_id"]
    exchange.fault(status=500, method="GET", path=f"/v2/orders/{aapl_root}", count=10)

    summary = run_position_monitor(db, broker)

    assert summary.outcome == "warning"
    assert any("AAPL" in note and "500" in note for note in summary.notes), summary.notes
    assert summary.counts["symbols_failed"] == 1
    [failed] = audit_rows(db, audit.RECONCILE_FAILED)
    assert failed["symbol"] == "AAPL" and "500" in failed["reason"]
    assert position(db, "AAPL")["qty"] == Decimal(10)  # left for the next run, nothing concluded
    assert position(db, "MSFT")["qty"] == Decimal(2)  # reconciled: the outside share recorded, not adopted
    assert [(o["symbol"], o["new_value"]) for o in audit_rows(db, audit.ORPHAN_POSITION)] == [("MSFT", "1")]
    assert len(portfolio_snapshots(db)) == 1


def test_days_open_counts_trading_days_from_the_broker_calendar_for_every_trade_also_closed_ones(
        db, exchange, broker):
    """Issue 11 scenario 16. Bought Wednesday 2026-11-25, valued Monday 11-30: Friday and Monday
    count, Thanksgiving and the weekend do not (2). A trade closed Tuesday 11-24 after a Friday
    11-20 entry keeps 2 (Monday, Tuesday), whatever it said before; a trade entered and closed the
    same day has 0, a trade never filled has 0."""
    from tests.factories import eastern

    exchange.clock(eastern("2026-11-25", "10:00"))
    open_aapl(db, broker, exchange)
    held = db.query("trade_journal", {"symbol": "AAPL"})[0]

    def history(symbol: str, status: str, entered: str | None, exited: str, days_open: int) -> int:
        return db.insert("trade_journal", {
            "symbol": symbol, "trade_style": "SWING", "status": status, "days_open": days_open,
            "entry_date": dt.datetime.fromisoformat(entered) if entered else None,
            "exit_date": dt.datetime.fromisoformat(exited), "actual_entry": Decimal("10") if entered else None,
            "actual_qty": Decimal("1") if entered else None,
            "exit_reason": "PROFIT_TAKEN" if status == "CLOSED" else "ENTRY_EXPIRED"})

    closed = history("MSFT", "CLOSED", eastern("2026-11-20", "10:00"), eastern("2026-11-24", "15:00"), 7)
    same_day = history("NVDA", "CLOSED", eastern("2026-11-23", "10:00"), eastern("2026-11-23", "15:59"), 3)
    never_filled = history("AMD", "CANCELLED", None, eastern("2026-11-24", "16:00"), 1)
    exchange.clock(eastern("2026-11-30", "10:00"))

    summary = run_position_monitor(db, broker)

    assert summary.outcome == "success", summary.as_dict()
    days = {row["id"]: row["days_open"] for row in db.query("trade_journal")}
    assert days == {held["id"]: 2, closed: 2, same_day: 0, never_filled: 0}
    assert summary.counts["days_open_updated"] == 4
    assert run_position_monitor(db, broker).counts.get("days_open_updated", 0) == 0  # nothing new: nothing written


# --------------------------------------------------------------------------- the trading state (issue 13)


@pytest.mark.parametrize("mode", ["REDUCE_ONLY", "HALTED", "FLATTEN"])
def test_position_monitor_values_and_records_in_every_trading_state(db, broker, exchange, mode):
    from trading.state import record_trading_state

    open_aapl(db, broker, exchange)
    record_trading_state(db, mode, reason="operator says stop", changed_by="alice")
    exchange.quotes(AAPL=("151.00", "151.20"))
    calls_before = dict(exchange.stats()["routes"])

    summary = run_position_monitor(db, broker)

    assert summary.outcome == "success" and summary.counts["revalued"] == 1
    assert position(db)["current_price"] == Decimal("151.10")
    assert len(portfolio_snapshots(db)) == 1
    assert any(f"trading state account {mode}" in note for note in summary.notes)
    sent = {route: n - calls_before.get(route, 0) for route, n in exchange.stats()["routes"].items()}
    assert sent.get("POST /v2/orders", 0) == 0
    assert not [route for route, n in sent.items() if n and route.startswith("DELETE")]
