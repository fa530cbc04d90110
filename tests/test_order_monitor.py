"""order_monitor against real PostgreSQL and the paper exchange through alpaca-py.

Trades are created the usual way (an approved decision, then ``order_executor``); prices and
time move through the exchange's admin API; every monitor run is followed by the invariant
check of ``tests.monitor_support`` (protection covers every open position exactly, the
exchange agrees with every row).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import uuid
from decimal import Decimal

import pytest

import order_monitor
from alpaca_client import AlpacaBroker
from tests.factories import add_decision, eastern, make_settings, snapshot
from tests.monitor_support import (
    audit_events,
    check_invariants,
    exchange_order,
    execute,
    open_groups,
    open_position,
    place_entry,
    rows,
    run_monitor,
    working_sells,
)
from trading import lifecycle
from trading.audit import Auditor
from trading.broker import BrokerOrder, OrderRequest
from trading.errors import NotFoundError, UnknownStatusError
from trading.reconcile import Reconciler

D = Decimal


def entry_row(db, trade_id: int) -> dict:
    (row,) = rows(db, trade_id, "ENTRY")
    return row


def calls(exchange) -> dict[str, int]:
    return exchange.stats()["routes"]


@pytest.fixture
def partial_fills(exchange):
    """Every fill from now on is partial (seeded: the same sizes every run). The exchange's reset
    does not restore the probability, so it is put back to 0 afterwards."""
    exchange.configure(partial_fill_probability=1)
    yield exchange
    exchange.configure(partial_fill_probability=0)


# --------------------------------------------------------------------------- sync


def test_working_entry_is_listed_once_and_nothing_changes(db, exchange, broker):
    trade = place_entry(db, broker)
    assert entry_row(db, trade["id"])["order_status"] == "pending_new"
    run_monitor(db, broker)  # records the acknowledgement (pending_new -> new)
    before = snapshot(db)
    exchange.reset_stats()

    summary = run_monitor(db, broker, check=False)

    assert summary.outcome == "success"
    # no account: the daily-loss breaker reads it only while trades hold shares (a resting entry
    # cannot lose money); no calendar: read by the date's first run and kept in market_calendar
    assert calls(exchange) == {"GET /v2/clock": 1, "GET /v2/orders": 1}
    check_invariants(db, broker)
    assert snapshot(db) == before
    assert db.get_by_id("trade_journal", trade["id"])["status"] == "ORDERED"
    assert entry_row(db, trade["id"])["order_status"] == "new"
    run = db.get_by_id("program_run", summary.run_id)
    assert run["outcome"] == "success" and run["counts"]["open_orders"] == 3


def test_many_open_orders_are_synced_with_one_listing_and_no_per_order_calls(db, exchange, broker):
    symbols = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "AMD"]
    quotes = {}
    for symbol in symbols:
        place_entry(db, broker, symbol, planned_entry=100, planned_sl=95, planned_tp=110, planned_qty=5)
        quotes[symbol] = ("99.90", "100.00")
    exchange.quotes(**quotes)  # every entry fills
    exchange.reset_stats()

    summary = run_monitor(db, broker, check=False)

    # no account: at the run's start no trade held shares (this run records the fills); no
    # calendar: read by the date's first run and kept in market_calendar
    assert calls(exchange) == {"GET /v2/clock": 1, "GET /v2/orders": 1}
    check_invariants(db, broker)
    assert summary.counts["positions_opened"] == len(symbols)
    assert summary.counts["protection_protected"] == len(symbols)
    assert {t["status"] for t in db.query("trade_journal")} == {"POSITION"}


def many_filled_entries(db, exchange, broker, count: int) -> list[dict]:
    """``count`` approved decisions placed in one executor run, then every entry filled at the exchange."""
    from tests.factories import add_decision
    from tests.monitor_support import execute

    symbols = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "AMD"]
    for index in range(count):
        add_decision(db, symbols[index % len(symbols)], planned_entry=100, planned_sl=95, planned_tp=110,
                     planned_qty=1)
    execute(db, broker, make_settings(ALLOW_SAME_SYMBOL="true"))
    exchange.quotes(**{symbol: ("99.90", "100.00") for symbol in symbols})
    return db.query("trade_journal", order_by="id")


def test_a_fill_cycle_of_many_trades_is_written_in_a_few_statements_and_agrees_with_the_broker(
        db, exchange, broker):
    trades = many_filled_entries(db, exchange, broker, 40)
    before = db.statement_count

    summary = run_monitor(db, broker, check=False)

    statements = db.statement_count - before  # the driver's count on this connection, reads included
    assert summary.counts["positions_opened"] == len(trades) == 40
    assert statements <= 4 * len(trades), f"{statements} statements for {len(trades)} filled trades"
    check_invariants(db, broker)
    assert {t["status"] for t in db.query("trade_journal")} == {"POSITION"}
    fills = db.query("trade_fill", order_by="id")
    assert [(f["trade_journal_id"], f["side"], f["qty"]) for f in fills] == [(t["id"], "buy", 1) for t in trades]
    for trade in trades:  # each trade's own trail, in order: filled, then its position
        events = [e["event"] for e in db.query("audit_event", {"entity_type": "trade", "entity_id": trade["id"]},
                                               order_by="id")]
        assert events == ["TRADE_STATUS", "TRADE_STATUS"]
    assert len(db.query("notification_outbox", {"kind": "entry_filled"})) == 40
    again = snapshot(db)
    run_monitor(db, broker)
    assert snapshot(db) == again  # nothing new: nothing written


def test_a_batch_with_a_broken_record_rolls_back_whole_and_is_applied_trade_by_trade(db, exchange, broker, caplog):
    trades = many_filled_entries(db, exchange, broker, 6)
    # A broken record: trade 3's stop-loss leg row filed under an old closed trade (not in the batch),
    # so the batch, not seeing it among trade 3's rows, inserts it again: the unique key refuses.
    other = db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING", "status": "CANCELLED"})
    [leg] = db.query("order_execution", {"trade_journal_id": trades[2]["id"], "order_type": "STOP_LOSS"})
    db.update("order_execution", leg["id"], {"trade_journal_id": other})

    summary = run_monitor(db, broker, check=False)

    assert "rolled back" in caplog.text and "applied one trade at a time" in caplog.text
    assert summary.counts["positions_opened"] == 6  # the one-by-one replay applied every trade
    assert {t["status"] for t in db.query("trade_journal", {"id": [t["id"] for t in trades]})} == {"POSITION"}
    assert len(db.query("trade_fill")) == 6  # each fill booked once: nothing of the failed batch stayed
    assert len(db.query("order_execution", {"alpaca_order_id": leg["alpaca_order_id"]})) == 1


def test_swing_entry_fill_opens_position_with_bracket_legs_recorded(db, exchange, broker):
    trade = place_entry(db, broker)
    exchange.quotes(AAPL=("149.70", "149.80"))  # the ask is below the 150 limit: filled at 149.80

    summary = run_monitor(db, broker)

    assert summary.counts["positions_opened"] == 1
    trade = db.get_by_id("trade_journal", trade["id"])
    entry = entry_row(db, trade["id"])
    assert trade["status"] == "POSITION"
    assert trade["actual_entry"] == D("149.80") and trade["actual_qty"] == D("10")
    assert trade["entry_date"] == entry["filled_at"] == dt.datetime.fromisoformat(eastern("2026-11-20", "09:45"))
    (stop,) = rows(db, trade["id"], "STOP_LOSS")
    (target,) = rows(db, trade["id"], "TAKE_PROFIT")
    assert (stop["order_status"], stop["stop_price"], stop["qty"]) == ("held", D("145"), D("10"))
    assert (target["order_status"], target["limit_price"], target["qty"]) == ("new", D("160"), D("10"))
    assert stop["parent_alpaca_order_id"] == target["parent_alpaca_order_id"] == entry["alpaca_order_id"]
    (position,) = db.query("position_tracking")
    assert position["trade_journal_id"] == trade["id"]
    assert (position["qty"], position["avg_entry_price"], position["cost_basis"]) == \
        (D("10"), D("149.80"), D("1498.00"))
    assert (position["current_price"], position["unrealized_pnl"]) == (D("149.80"), D("0"))
    assert position["stop_loss_order_id"] == stop["alpaca_order_id"]
    assert position["take_profit_order_id"] == target["alpaca_order_id"]
    assert [e["new_value"] for e in audit_events(db, "TRADE_STATUS", "trade", trade["id"])] == ["ORDERED", "POSITION"]
    assert audit_events(db, "POSITION_OPENED")


def test_daytrade_entry_fill_opens_position_protected_by_its_oto_stop(db, exchange, broker):
    trade = place_entry(db, broker, "MSFT", planned_entry="412.37", planned_sl="405.11", planned_tp=None,
                        trade_style="DAYTRADE", planned_qty=3)
    exchange.quotes(MSFT=("412.30", "412.37"))

    run_monitor(db, broker)

    trade = db.get_by_id("trade_journal", trade["id"])
    assert (trade["status"], trade["actual_entry"], trade["actual_qty"]) == ("POSITION", D("412.37"), D("3"))
    (stop,) = rows(db, trade["id"], "STOP_LOSS")
    assert rows(db, trade["id"], "TAKE_PROFIT") == []
    assert (stop["order_status"], stop["stop_price"], stop["time_in_force"]) == ("new", D("405.11"), "day")
    (position,) = db.query("position_tracking")
    assert position["cost_basis"] == D("1237.11")
    assert position["stop_loss_order_id"] == stop["alpaca_order_id"]
    assert position["take_profit_order_id"] is None


def test_entry_canceled_at_the_broker_cancels_the_trade(db, exchange, broker):
    trade = place_entry(db, broker)
    broker.cancel_order(entry_row(db, trade["id"])["alpaca_order_id"])  # from outside the system

    summary = run_monitor(db, broker)

    trade = db.get_by_id("trade_journal", trade["id"])
    assert (trade["status"], trade["exit_reason"]) == ("CANCELLED", "ENTRY_CANCELED")
    assert summary.counts["trades_cancelled"] == 1
    assert {r["order_status"] for r in rows(db, trade["id"])} == {"canceled"}
    assert db.query("position_tracking") == []


def test_entry_expired_at_the_close_cancels_the_trade(db, exchange, broker):
    trade = place_entry(db, broker, trade_style="DAYTRADE", planned_tp=None)
    exchange.clock(eastern("2026-11-20", "16:05"))

    run_monitor(db, broker)

    trade = db.get_by_id("trade_journal", trade["id"])
    assert (trade["status"], trade["exit_reason"]) == ("CANCELLED", "ENTRY_EXPIRED")
    assert entry_row(db, trade["id"])["order_status"] == "expired"


def test_partially_filled_entry_is_recorded_then_its_remainder_canceled_and_the_shares_protected(
        db, exchange, broker, partial_fills):
    trade = place_entry(db, broker)
    exchange.quotes(AAPL=("149.90", "150.00"))   # one partial fill
    exchange.quotes(AAPL=("150.40", "150.50"))   # no longer marketable: the rest waits
    entry = exchange_order(exchange, entry_row(db, trade["id"])["alpaca_order_id"])
    filled = D(entry["filled_qty"])
    assert entry["status"] == "partially_filled" and D(0) < filled < D(10)

    summary = run_monitor(db, broker)  # PARTIAL_ENTRY_POLICY=cancel_remainder (the default)

    trade = db.get_by_id("trade_journal", trade["id"])
    assert (trade["status"], trade["actual_qty"], trade["actual_entry"]) == ("POSITION", filled, D("150.00"))
    assert entry_row(db, trade["id"])["order_status"] == "canceled"
    assert summary.counts["protection_repaired"] == 1
    stops = [r for r in rows(db, trade["id"], "STOP_LOSS") if r["order_status"] == "held"]
    targets = [r for r in rows(db, trade["id"], "TAKE_PROFIT") if r["order_status"] == "pending_new"]
    assert [(r["qty"], r["stop_price"], r["order_class"]) for r in stops] == [(filled, D("145"), "oco")]
    assert [(r["qty"], r["limit_price"], r["time_in_force"]) for r in targets] == [(filled, D("160"), "gtc")]
    # the bracket legs never activated (the entry was not completely filled): canceled with it
    assert [r["order_status"] for r in rows(db, trade["id"]) if r["parent_alpaca_order_id"] ==
            entry_row(db, trade["id"])["alpaca_order_id"]] == ["canceled", "canceled"]
    assert exchange.positions() == {"AAPL": filled}
    (repair,) = audit_events(db, "PROTECTION_REPAIRED", "trade", trade["id"])
    assert f"placed oco for {filled}" in repair["reason"]


def test_daytrade_partial_entry_gets_a_stop_for_the_filled_shares(db, exchange, broker, partial_fills):
    trade = place_entry(db, broker, trade_style="DAYTRADE", planned_tp=None)
    exchange.quotes(AAPL=("149.90", "150.00"))
    exchange.quotes(AAPL=("150.40", "150.50"))
    filled = D(exchange_order(exchange, entry_row(db, trade["id"])["alpaca_order_id"])["filled_qty"])

    run_monitor(db, broker)

    live = [r for r in rows(db, trade["id"]) if r["order_status"] in lifecycle.OPEN_ORDER_STATUSES]
    assert [(r["order_type"], r["order_kind"], r["order_class"], r["qty"], r["stop_price"]) for r in live] == \
        [("STOP_LOSS", "stop", "simple", filled, D("145"))]
    assert rows(db, trade["id"], "TAKE_PROFIT") == []


def test_partial_entry_waits_under_policy_wait_and_is_protected_after_it_expires(
        db, exchange, broker, partial_fills):
    settings = make_settings(PARTIAL_ENTRY_POLICY="wait")
    trade = place_entry(db, broker, settings=settings, time_in_force="day")  # a SWING entry good for the day
    exchange.quotes(AAPL=("149.90", "150.00"))
    exchange.quotes(AAPL=("150.40", "150.50"))
    entry_id = entry_row(db, trade["id"])["alpaca_order_id"]
    filled = D(exchange_order(exchange, entry_id)["filled_qty"])

    summary = run_monitor(db, broker, settings, waiting=[trade["id"]])

    assert summary.outcome == "warning" and summary.counts["protection_waiting"] == 1
    assert entry_row(db, trade["id"])["order_status"] == "partially_filled"
    assert db.get_by_id("trade_journal", trade["id"])["actual_qty"] == filled
    assert working_sells(exchange) == []  # nothing sold, nothing placed while the entry works

    exchange.clock(eastern("2026-11-20", "16:01"))  # the day entry expires at the close
    summary = run_monitor(db, broker, settings)

    assert entry_row(db, trade["id"])["order_status"] == "expired"
    trade = db.get_by_id("trade_journal", trade["id"])
    assert (trade["status"], trade["actual_qty"]) == ("POSITION", filled)
    assert summary.counts["protection_repaired"] == 1
    (group,) = open_groups(broker, "AAPL")
    assert (group.order_class, group.time_in_force, group.qty, group.status) == ("oco", "gtc", filled, "accepted")
    assert [(leg.kind, leg.qty, leg.stop_price) for leg in group.legs] == [("stop", filled, D("145"))]


def test_partial_entry_under_policy_wait_grows_the_position_until_complete_then_legs_protect_it(
        db, exchange, broker, partial_fills):
    settings = make_settings(PARTIAL_ENTRY_POLICY="wait")
    trade = place_entry(db, broker, settings=settings)
    exchange.quotes(AAPL=("149.90", "150.00"))     # a first part at 150.00
    exchange.quotes(AAPL=("150.40", "150.50"))
    run_monitor(db, broker, settings, waiting=[trade["id"]])
    first = db.query("position_tracking")[0]["qty"]
    exchange.configure(partial_fill_probability=0)

    exchange.quotes(AAPL=("149.60", "149.70"))     # the rest at 149.70
    summary = run_monitor(db, broker, settings)

    trade = db.get_by_id("trade_journal", trade["id"])
    average = (first * D("150.00") + (10 - first) * D("149.70")) / 10
    assert (trade["status"], trade["actual_qty"], trade["actual_entry"]) == ("POSITION", D("10"), average)
    (position,) = db.query("position_tracking")
    assert (position["qty"], position["avg_entry_price"], position["cost_basis"]) == \
        (D("10"), average, (average * 10).quantize(D("0.01")))
    assert summary.counts["protection_protected"] == 1 and "protection_repaired" not in summary.counts
    assert [r["order_status"] for r in rows(db, trade["id"])] == ["filled", "new", "held"]  # the bracket's legs


# --------------------------------------------------------------------------- broker failures


@pytest.mark.parametrize("fault", [
    {"status": 500},
    {"status": 429},
    {"drop": True},
    {"delay_seconds": 1.5},  # longer than the client's timeout below
], ids=["http500", "rate_limited", "dropped", "timeout"])
def test_broker_failure_on_the_listing_ends_the_run_with_warning_and_the_next_run_continues(
        db, exchange, broker, fault):
    trade = place_entry(db, broker)
    exchange.quotes(AAPL=("149.90", "150.00"))
    before = snapshot(db, ("trade_journal", "order_execution", "position_tracking"))
    impatient = AlpacaBroker(base_url=exchange.url, data_url=exchange.url, timeout=0.5)
    exchange.fault(method="GET", path="/v2/orders", **fault)

    summary = run_monitor(db, impatient, check=False)

    assert summary.outcome == "warning" and summary.error
    assert snapshot(db, ("trade_journal", "order_execution", "position_tracking")) == before
    (run,) = db.query("program_run", {"id": summary.run_id})
    assert run["outcome"] == "warning" and run["finished_at"] is not None
    assert audit_events(db, "RUN_ABORTED")

    summary = run_monitor(db, broker)

    assert summary.outcome == "success"
    assert db.get_by_id("trade_journal", trade["id"])["status"] == "POSITION"


def test_repair_accepted_but_unanswered_is_found_at_once_by_its_id_and_never_placed_twice(db, exchange, broker):
    first = open_position(db, exchange, broker, "AAPL")
    second = open_position(db, exchange, broker, "MSFT", fill_at=("399.90", "400.00"), planned_entry=400,
                           planned_sl=390, planned_tp=420)
    for trade in (first, second):  # protection canceled from outside: both need a repair
        broker.cancel_order(rows(db, trade["id"], "STOP_LOSS")[0]["alpaca_order_id"])
    # The exchange accepts the first repair but the answer never arrives.
    exchange.fault(method="POST", path="/v2/orders", status=500, when="after")

    summary = run_monitor(db, broker)

    assert summary.outcome == "success", summary.notes
    assert summary.counts["protection_repaired"] == 2
    assert broker.calls.counts["get_order_by_client_id"] >= 1  # looked up by its id, not sent again
    (repair,) = [r for r in rows(db, first["id"]) if r["client_order_id"].endswith("-p1")]
    assert repair["order_status"] == "pending_new" and repair["alpaca_order_id"]
    assert len(open_groups(broker, "AAPL")) == 1 and len(open_groups(broker, "MSFT")) == 1
    assert len([o for o in exchange.orders() if o["client_order_id"] == repair["client_order_id"]]) == 1


# --------------------------------------------------------------------------- orders the broker does not know


def crafted_entry(db, *, alpaca_order_id: str, client_order_id: str) -> tuple[int, int]:
    """An ORDERED trade whose entry row names an order the exchange has never seen."""
    trade_id = db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING", "status": "ORDERED",
                                           "planned_entry": D("150"), "planned_sl": D("145"), "planned_tp": D("160"),
                                           "planned_qty": D("10")})
    row_id = db.insert("order_execution", {
        "trade_journal_id": trade_id, "symbol": "AAPL", "order_type": "ENTRY", "side": "buy",
        "alpaca_order_id": alpaca_order_id, "client_order_id": client_order_id, "order_status": "new",
        "qty": D("10"), "limit_price": D("150"), "order_class": "bracket", "order_kind": "limit",
        "time_in_force": "gtc", "submitted_at": dt.datetime.fromisoformat(eastern("2026-11-20", "09:40"))})
    auditor = Auditor(db, "test")  # as the program that wrote them would have
    auditor.record("trade", trade_id, "TRADE_STATUS", symbol="AAPL", new="ORDERED")
    auditor.record("order", row_id, "ORDER_SUBMITTED", symbol="AAPL", new="new")
    return trade_id, row_id


def test_order_unknown_to_the_broker_is_looked_up_directly_and_marked_not_found_after_max_misses(
        db, exchange, broker):
    settings = make_settings(ORDER_NOT_FOUND_MAX_MISSES=3)
    known = place_entry(db, broker, "MSFT", planned_entry=400, planned_sl=390, planned_tp=420)
    trade_id, row_id = crafted_entry(db, alpaca_order_id=str(uuid.uuid4()), client_order_id="tm-d999-0badc0de-e")

    for miss in (1, 2):
        exchange.reset_stats()
        summary = run_monitor(db, broker, settings, check=False)
        # one listing for everything; direct look-ups (by id, then client order id) only for the missing one
        # (no calendar: the date's first run read it, market_calendar keeps it)
        assert calls(exchange) == {"GET /v2/clock": 1, "GET /v2/orders": 1,
                                   "GET /v2/orders/{order_id}": 1, "GET /v2/orders:by_client_order_id": 1}
        check_invariants(db, broker)
        row = db.get_by_id("order_execution", row_id)
        assert (row["order_status"], row["not_found_count"]) == ("new", miss)
        assert row["error_message"] == f"listing and direct look-ups found nothing (miss {miss} of 3)"
        assert db.get_by_id("trade_journal", trade_id)["status"] == "ORDERED"

    summary = run_monitor(db, broker, settings)

    row = db.get_by_id("order_execution", row_id)
    assert (row["order_status"], row["not_found_count"]) == ("not_found", 3)
    assert row["error_message"] == ("listing and direct look-ups found nothing: not found at the broker after 3 "
                                    "direct look-ups (by id and client order id)")
    trade = db.get_by_id("trade_journal", trade_id)
    assert (trade["status"], trade["exit_reason"]) == ("CANCELLED", "ENTRY_NOT_FOUND")
    assert summary.outcome == "warning"
    assert any("not found at the broker" in note for note in summary.notes)
    (event,) = audit_events(db, "ORDER_NOT_FOUND", "order", row_id)
    assert (event["old_value"], event["new_value"]) == ("new", "not_found")
    assert db.get_by_id("trade_journal", known["id"])["status"] == "ORDERED"  # the real order is untouched

    before = snapshot(db)
    run_monitor(db, broker, settings)
    assert snapshot(db) == before  # a concluded row is not looked up again


def test_order_found_by_client_order_id_when_its_broker_id_is_wrong(db, exchange, broker):
    trade = place_entry(db, broker)
    entry = entry_row(db, trade["id"])
    real_id = entry["alpaca_order_id"]
    db.update("order_execution", entry["id"], {"alpaca_order_id": str(uuid.uuid4())})
    exchange.quotes(AAPL=("149.90", "150.00"))

    run_monitor(db, broker)

    assert entry_row(db, trade["id"])["alpaca_order_id"] == real_id  # the broker is the truth
    assert db.get_by_id("trade_journal", trade["id"])["status"] == "POSITION"


# --------------------------------------------------------------------------- unknown broker status


class StatusRewritingBroker(AlpacaBroker):
    """The real client, with one order's status word replaced in every listing (a broker that
    starts sending a word this system has never seen)."""

    def __init__(self, *, order_id: str, status: str, **kwargs):
        super().__init__(**kwargs)
        self.order_id, self.status = order_id, status

    def _rewrite(self, order: BrokerOrder) -> BrokerOrder:
        legs = tuple(self._rewrite(leg) for leg in order.legs)
        status = self.status if order.id == self.order_id else order.status
        return dataclasses.replace(order, status=status, legs=legs)

    def list_orders(self, **kwargs):
        return [self._rewrite(order) for order in super().list_orders(**kwargs)]


def test_unknown_broker_status_is_recorded_not_guessed(db, exchange, broker, caplog):
    trade = place_entry(db, broker)
    run_monitor(db, broker)  # the acknowledgement (new) is recorded
    entry = entry_row(db, trade["id"])
    odd = StatusRewritingBroker(order_id=entry["alpaca_order_id"], status="frozen_by_venue",
                                base_url=exchange.url, data_url=exchange.url, timeout=3)

    with caplog.at_level("ERROR", logger="order_monitor"):
        summary = run_monitor(db, odd)

    assert "unknown Alpaca order status 'frozen_by_venue'" in caplog.text

    assert summary.outcome == "warning"
    assert any("unknown Alpaca order status 'frozen_by_venue'" in note for note in summary.notes)
    row = entry_row(db, trade["id"])
    assert row["order_status"] == "new"  # kept, not mapped to anything
    assert row["error_message"] == \
        "unknown Alpaca order status 'frozen_by_venue': not guessed, the row keeps its status"
    assert len(audit_events(db, "ORDER_ANOMALY", "order", entry["id"])) == 1
    assert db.get_by_id("trade_journal", trade["id"])["status"] == "ORDERED"

    before = snapshot(db)
    assert run_monitor(db, odd).outcome == "warning"
    assert snapshot(db) == before  # reported again, recorded once


def test_reconciler_refuses_unknown_status_and_shrinking_fills_without_touching_the_row(db, exchange, broker):
    trade = place_entry(db, broker)
    entry = entry_row(db, trade["id"])
    reconciler = Reconciler(db, Auditor(db, "test"))
    broker_view = broker.get_order(entry["alpaca_order_id"])
    now = dt.datetime.fromisoformat(eastern("2026-11-20", "10:00"))

    with db.transaction():
        locked = reconciler.trades.lock(trade["id"])
        with pytest.raises(UnknownStatusError, match="'done_and_dusted'"):
            reconciler.sync(locked, entry, dataclasses.replace(broker_view, status="done_and_dusted"), now=now)
    assert entry_row(db, trade["id"]) == entry

    db.update("order_execution", entry["id"], {"order_status": "partially_filled", "filled_qty": D("4"),
                                               "filled_avg_price": D("150")})
    shrunk = dataclasses.replace(broker_view, status="partially_filled", filled_qty=D("2"),
                                 filled_avg_price=D("150"))
    with db.transaction():
        locked = reconciler.trades.lock(trade["id"])
        result = reconciler.sync(locked, entry_row(db, trade["id"]), shrunk, now=now)
    assert result.changes[0].anomaly and not result.changes[0].changed
    row = entry_row(db, trade["id"])
    assert (row["filled_qty"], row["order_status"]) == (D("4"), "partially_filled")
    assert "below the recorded 4" in row["error_message"]


# --------------------------------------------------------------------------- protection


def replace_order(exchange, order_id: str, **fields) -> dict:
    """PATCH /v2/orders/{id} from outside the system (as a person in Alpaca's dashboard would)."""
    from alpaca.trading.client import TradingClient
    from alpaca.trading.requests import ReplaceOrderRequest

    client = TradingClient("key", "secret", paper=True, raw_data=True, url_override=exchange.url)
    return client.replace_order_by_id(order_id, ReplaceOrderRequest(**fields))


def test_stop_canceled_from_outside_is_repaired_with_one_oco_for_the_whole_position(db, exchange, broker):
    trade = open_position(db, exchange, broker)
    stop = rows(db, trade["id"], "STOP_LOSS")[0]
    broker.cancel_order(stop["alpaca_order_id"])  # the exchange cancels the whole bracket group
    exchange.step()  # the cancel completes
    assert working_sells(exchange) == []

    summary = run_monitor(db, broker)

    assert summary.counts["protection_repaired"] == 1
    (group,) = open_groups(broker, "AAPL")
    assert (group.order_class, group.kind, group.qty, group.limit_price, group.time_in_force) == \
        ("oco", "limit", D("10"), D("160"), "gtc")
    assert [(leg.kind, leg.qty, leg.stop_price) for leg in group.legs] == [("stop", D("10"), D("145"))]
    (repair,) = audit_events(db, "PROTECTION_REPAIRED", "trade", trade["id"])
    assert repair["reason"] == "no stop covered all 10 shares (stop covered 0): placed oco for 10"
    new_stop = next(r for r in rows(db, trade["id"], "STOP_LOSS") if r["order_status"] == "held")
    new_target = next(r for r in rows(db, trade["id"], "TAKE_PROFIT") if r["order_status"] == "pending_new")
    assert new_target["client_order_id"] == repair["details"]["client_order_id"]
    assert new_target["client_order_id"].startswith(f"tm-t{trade['id']}-") and \
        new_target["client_order_id"].endswith("-p1")
    (position,) = db.query("position_tracking")
    assert (position["stop_loss_order_id"], position["take_profit_order_id"]) == \
        (new_stop["alpaca_order_id"], new_target["alpaca_order_id"])
    assert [r["order_status"] for r in rows(db, trade["id"]) if r["order_class"] == "bracket"
            and r["order_type"] != "ENTRY"] == ["canceled", "canceled"]

    run_monitor(db, broker)  # records the acknowledgement of the OCO
    before = snapshot(db)
    summary = run_monitor(db, broker)
    assert snapshot(db) == before and summary.counts["protection_protected"] == 1


def test_daytrade_stop_canceled_from_outside_is_replaced_by_one_gtc_stop(db, exchange, broker):
    trade = open_position(db, exchange, broker, trade_style="DAYTRADE", planned_tp=None, planned_qty=7)
    broker.cancel_order(rows(db, trade["id"], "STOP_LOSS")[0]["alpaca_order_id"])

    run_monitor(db, broker)

    (group,) = open_groups(broker, "AAPL")
    assert (group.order_class, group.kind, group.qty, group.stop_price, group.time_in_force, group.status) == \
        ("", "stop", D("7"), D("145"), "gtc", "pending_new")  # Alpaca answers "" for a simple order
    assert len(audit_events(db, "PROTECTION_REPAIRED", "trade", trade["id"])) == 1


def test_stop_replaced_with_a_new_price_is_adopted_without_a_repair(db, exchange, broker):
    trade = open_position(db, exchange, broker)
    old = rows(db, trade["id"], "STOP_LOSS")[0]
    replacement = replace_order(exchange, old["alpaca_order_id"], stop_price=146.5)

    summary = run_monitor(db, broker)

    assert "protection_repaired" not in summary.counts
    old_row, new_row = rows(db, trade["id"], "STOP_LOSS")
    assert (old_row["order_status"], old_row["replaced_by_order_id"]) == ("replaced", replacement["id"])
    assert (new_row["alpaca_order_id"], new_row["order_status"], new_row["stop_price"], new_row["qty"]) == \
        (replacement["id"], "held", D("146.5"), D("10"))
    assert db.query("position_tracking")[0]["stop_loss_order_id"] == replacement["id"]
    assert len(open_groups(broker, "AAPL")) == 1


def test_stop_replaced_twice_is_followed_to_the_live_order_and_kept(db, exchange, broker):
    trade = open_position(db, exchange, broker)
    first = rows(db, trade["id"], "STOP_LOSS")[0]
    second = replace_order(exchange, first["alpaca_order_id"], stop_price=146)
    exchange.step()  # the first replace completes before the person changes the stop again
    third = replace_order(exchange, second["id"], stop_price=147)  # a person moved the stop up twice
    broker.calls.reset()

    summary = run_monitor(db, broker)

    assert "protection_repaired" not in summary.counts  # the person's 147 stop stays
    assert [(r["alpaca_order_id"], r["order_status"], r["stop_price"]) for r in rows(db, trade["id"], "STOP_LOSS")] \
        == [(first["alpaca_order_id"], "replaced", D("145")), (second["id"], "replaced", D("146")),
            (third["id"], "held", D("147"))]
    assert db.query("position_tracking")[0]["stop_loss_order_id"] == third["id"]
    # the nested listing shows only the latest leg: one direct look-up per missing link
    assert broker.calls.counts == {"get_clock": 1, "get_account": 1, "list_orders": 1, "get_order": 2}


def test_stop_replaced_with_fewer_shares_is_replaced_by_one_group_for_the_whole_position(db, exchange, broker):
    trade = open_position(db, exchange, broker)
    replace_order(exchange, rows(db, trade["id"], "STOP_LOSS")[0]["alpaca_order_id"], qty=4)

    summary = run_monitor(db, broker)

    assert summary.counts["protection_repaired"] == 1
    (group,) = open_groups(broker, "AAPL")
    assert group.order_class == "oco" and group.qty == D("10") and group.legs[0].qty == D("10")
    (repair,) = audit_events(db, "PROTECTION_REPAIRED", "trade", trade["id"])
    assert "stop covered 4" in repair["reason"]
    assert [e["reason"] for e in audit_events(db, "ORDER_CANCEL_REQUESTED")] == \
        ["protection covers 4 of 10 shares: replaced"]


def test_repair_unanswered_through_a_whole_run_is_looked_up_and_sent_again_with_its_id_next_run(
        db, exchange, broker):
    trade = open_position(db, exchange, broker)
    broker.cancel_order(rows(db, trade["id"], "STOP_LOSS")[0]["alpaca_order_id"])
    exchange.fault(method="POST", path="/v2/orders", status=503, count=2)  # refused before the exchange saw it

    assert run_monitor(db, broker, check=False).outcome == "warning"
    (intent,) = [r for r in rows(db, trade["id"]) if r["order_status"] == "pending"]
    assert intent["client_order_id"].endswith("-p1") and "unanswered" in intent["error_message"]
    assert broker.calls.counts["submit_order"] == 3  # the entry, then the repair twice with the same id
    exchange.clear_faults()

    summary = run_monitor(db, broker)  # the next run, moments later: no two-minute wait

    intent = db.get_by_id("order_execution", intent["id"])
    assert intent["order_status"] == "pending_new" and intent["alpaca_order_id"]
    (group,) = open_groups(broker, "AAPL")
    assert group.client_order_id == intent["client_order_id"]  # the same id, sent again
    assert summary.counts["protection_repaired"] == 0 and summary.counts["protection_protected"] == 1


@pytest.mark.parametrize("when", ["before", "after"], ids=["never-reached-the-exchange", "accepted-answer-lost"])
def test_protective_order_answered_500_is_back_within_the_same_run(db, exchange, broker, when):
    trade = open_position(db, exchange, broker)
    broker.cancel_order(rows(db, trade["id"], "STOP_LOSS")[0]["alpaca_order_id"])
    exchange.fault(method="POST", path="/v2/orders", status=500, when=when, count=1)

    summary = run_monitor(db, broker)  # the invariants hold after this very run: the position is protected

    assert summary.counts["protection_repaired"] == 1, summary.as_dict()
    (group,) = open_groups(broker, "AAPL")
    assert group.order_class == "oco" and group.client_order_id.endswith("-p1")
    (repair,) = [r for r in rows(db, trade["id"]) if r["client_order_id"] == group.client_order_id]
    assert repair["order_status"] == "pending_new"


def test_close_whose_exit_never_reached_the_broker_leaves_no_unprotected_position(db, exchange, broker):
    # Found by the chaos day (seed 5): a CLOSE canceled the bracket, recorded its exit intent and the
    # exit's submissions went unanswered (not at the broker). The pending intent counted as an exit
    # "working on the shares", so every later run left the position without a stop and without exit.
    trade = open_position(db, exchange, broker)
    close = add_decision(db, "AAPL", "CLOSE", trade_id=trade["id"])
    exchange.fault(method="POST", path="/v2/orders", status=503, count=2)  # both sends, before the exchange

    assert execute(db, broker).counts["deferred"] == 1
    (intent,) = rows(db, trade["id"], "EXIT")
    assert intent["order_status"] == "pending" and intent["alpaca_order_id"] is None
    exchange.clear_faults()

    run_monitor(db, broker)  # the invariants: a broker-held stop for all 10 shares after this run

    assert db.get_by_id("order_execution", intent["id"])["order_status"] == "not_found"
    assert exchange.positions() == {"AAPL": Decimal("10")}
    execute(db, broker)  # the deferred CLOSE, carried out at the executor's next run
    run_monitor(db, broker)
    assert exchange.positions() == {}
    assert db.get_by_id("trade_journal", trade["id"])["status"] == "CLOSED"
    assert db.get_by_id("analysis_decision", close)["executed"] is True
    assert [r["order_status"] for r in rows(db, trade["id"], "EXIT")] == ["not_found", "filled"]


def test_protection_refused_by_the_broker_is_recorded_and_warned(db, exchange, broker):
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import LimitOrderRequest

    trade = open_position(db, exchange, broker)
    broker.cancel_order(rows(db, trade["id"], "STOP_LOSS")[0]["alpaca_order_id"])
    exchange.step()  # the cancel completes: the shares are free
    outside = TradingClient("key", "secret", paper=True, url_override=exchange.url)  # someone else's sell
    outside.submit_order(LimitOrderRequest(symbol="AAPL", qty=10, side=OrderSide.SELL, limit_price=170,
                                           time_in_force=TimeInForce.GTC))

    summary = run_monitor(db, broker, check=False)

    assert summary.outcome == "warning" and summary.counts["protection_failed"] == 1
    assert any("UNPROTECTED" in note for note in summary.notes)
    (refused,) = [r for r in rows(db, trade["id"]) if r["order_status"] == "rejected"]
    assert "insufficient qty available" in refused["error_message"]
    (missing,) = audit_events(db, "PROTECTION_MISSING", "trade", trade["id"])
    assert "could not place protection for 10 shares" in missing["reason"]
    assert db.get_by_id("trade_journal", trade["id"])["status"] == "POSITION"


# --------------------------------------------------------------------------- exits


def test_stop_fill_closes_trade_with_exact_loss_and_cancels_take_profit(db, exchange, broker):
    trade = open_position(db, exchange, broker)  # 10 @ 150.00, stop 145, target 160
    exchange.clock(advance_seconds=3600)
    exchange.quotes(AAPL=("144.50", "144.60"))  # the stop is elected and sells at the bid

    summary = run_monitor(db, broker)

    assert summary.counts["trades_closed"] == 1
    trade = db.get_by_id("trade_journal", trade["id"])
    (stop,) = rows(db, trade["id"], "STOP_LOSS")
    (target,) = rows(db, trade["id"], "TAKE_PROFIT")
    assert (trade["status"], trade["exit_reason"]) == ("CLOSED", "STOPPED_OUT")
    assert trade["exit_price"] == D("144.50") and trade["actual_pnl"] == D("-55.00")
    assert trade["exit_date"] == stop["filled_at"] == dt.datetime.fromisoformat(eastern("2026-11-20", "10:45"))
    assert (stop["order_status"], stop["filled_qty"], stop["filled_avg_price"]) == ("filled", D("10"), D("144.5"))
    assert target["order_status"] == "canceled" and target["canceled_at"] is not None
    assert db.query("position_tracking") == []
    assert exchange.positions() == {}
    (closed,) = audit_events(db, "POSITION_CLOSED")
    assert closed["details"]["actual_pnl"] == "-55.00"


def test_entry_fill_and_stop_fill_between_two_runs_open_and_close_the_trade_in_one_run(db, exchange, broker):
    trade = place_entry(db, broker)
    exchange.quotes(AAPL=("149.90", "150.00"))  # filled...
    exchange.clock(advance_seconds=120)
    exchange.quotes(AAPL=("143.95", "144.00"))  # ...and stopped out before the monitor looks

    summary = run_monitor(db, broker)

    trade = db.get_by_id("trade_journal", trade["id"])
    assert (trade["status"], trade["actual_entry"], trade["exit_price"], trade["actual_pnl"]) == \
        ("CLOSED", D("150.00"), D("143.95"), D("-60.50"))
    assert trade["entry_date"] < trade["exit_date"]
    assert summary.counts["positions_opened"] == summary.counts["trades_closed"] == 1
    assert [e["new_value"] for e in audit_events(db, "TRADE_STATUS", "trade", trade["id"])] == \
        ["ORDERED", "POSITION", "CLOSED"]
    assert db.query("position_tracking") == []


def test_take_profit_fill_closes_trade_with_exact_gain_and_cancels_stop(db, exchange, broker):
    trade = open_position(db, exchange, broker)
    exchange.quotes(AAPL=("160.25", "160.30"))  # the take-profit limit 160 sells at the better bid

    run_monitor(db, broker)

    trade = db.get_by_id("trade_journal", trade["id"])
    assert (trade["status"], trade["exit_reason"], trade["exit_price"], trade["actual_pnl"]) == \
        ("CLOSED", "PROFIT_TAKEN", D("160.25"), D("102.50"))
    assert rows(db, trade["id"], "STOP_LOSS")[0]["order_status"] == "canceled"
    assert db.query("position_tracking") == []


@pytest.mark.parametrize(("entry", "stop", "target", "qty", "quote", "price", "pnl", "reason"), [
    ("23.47", "21.13", "29.99", 7, ("21.09", "21.12"), "21.09", "-16.66", "STOPPED_OUT"),
    ("187.33", "180.07", "201.19", 13, ("201.19", "201.25"), "201.19", "180.18", "PROFIT_TAKEN"),
    ("0.8731", "0.8012", "0.9555", 1003, ("0.9561", "0.9563"), "0.9561", "83.249", "PROFIT_TAKEN"),
], ids=["odd_loss", "odd_gain", "sub_dollar"])
def test_exit_pnl_is_exact_for_odd_quantities_and_prices(db, exchange, broker, entry, stop, target, qty, quote,
                                                          price, pnl, reason):
    trade = open_position(db, exchange, broker, "F", fill_at=(str(D(entry) - D("0.01")), entry), planned_entry=entry,
                          planned_sl=stop, planned_tp=target, planned_qty=qty)
    assert db.get_by_id("trade_journal", trade["id"])["actual_entry"] == D(entry)
    exchange.quotes(F=quote)

    run_monitor(db, broker)

    trade = db.get_by_id("trade_journal", trade["id"])
    assert (trade["status"], trade["exit_reason"], trade["exit_price"]) == ("CLOSED", reason, D(price))
    assert trade["actual_pnl"] == ((D(price) - D(entry)) * qty).quantize(D("0.01")) == D(pnl).quantize(D("0.01"))


def test_partly_filled_take_profit_reduces_the_position_and_books_the_realized_part(
        db, exchange, broker, partial_fills):
    exchange.configure(partial_fill_probability=0)
    trade = open_position(db, exchange, broker)
    exchange.configure(partial_fill_probability=1)
    exchange.quotes(AAPL=("160.10", "160.20"))     # the take-profit sells part of the position
    exchange.quotes(AAPL=("155.00", "155.10"))     # and stops being marketable
    target_id = rows(db, trade["id"], "TAKE_PROFIT")[0]["alpaca_order_id"]
    sold = D(exchange_order(exchange, target_id)["filled_qty"])
    assert D(0) < sold < D(10)

    summary = run_monitor(db, broker)

    trade = db.get_by_id("trade_journal", trade["id"])
    assert trade["status"] == "POSITION" and summary.counts.get("trades_closed", 0) == 0
    assert trade["realized_pnl"] == D("10.10") * sold and trade["exited_qty"] == sold
    assert db.query("position_tracking")[0]["qty"] == D(10) - sold
    (target,) = rows(db, trade["id"], "TAKE_PROFIT")
    (stop,) = rows(db, trade["id"], "STOP_LOSS")
    assert (target["order_status"], target["filled_qty"]) == ("partially_filled", sold)
    assert (stop["order_status"], stop["qty"]) == ("held", D(10) - sold)  # the broker shrank the stop
    (change,) = audit_events(db, "POSITION_CHANGED")
    assert "booked in trade_journal.realized_pnl" in change["reason"]
    assert "protection_repaired" not in summary.counts

    exchange.configure(partial_fill_probability=0)
    exchange.quotes(AAPL=("160.10", "160.20"))      # the rest is sold

    run_monitor(db, broker)

    trade = db.get_by_id("trade_journal", trade["id"])
    assert (trade["status"], trade["exit_reason"], trade["exit_price"], trade["actual_pnl"]) == \
        ("CLOSED", "PROFIT_TAKEN", D("160.10"), D("101.00"))
    assert rows(db, trade["id"], "STOP_LOSS")[0]["order_status"] == "canceled"


def test_partial_take_profit_then_stop_books_both_parts_in_the_final_pnl(db, exchange, broker, partial_fills):
    exchange.configure(partial_fill_probability=0)
    trade = open_position(db, exchange, broker)
    exchange.configure(partial_fill_probability=1)
    exchange.quotes(AAPL=("160.10", "160.20"))     # part sold at the target
    exchange.configure(partial_fill_probability=0)
    exchange.quotes(AAPL=("150.00", "150.10"))
    run_monitor(db, broker)
    sold = db.get_by_id("trade_journal", trade["id"])["exited_qty"]
    exchange.quotes(AAPL=("144.50", "144.60"))     # the rest is stopped out

    run_monitor(db, broker)

    trade = db.get_by_id("trade_journal", trade["id"])
    expected = D("10.10") * sold + D("-5.50") * (10 - sold)
    assert (trade["status"], trade["exit_reason"], trade["actual_pnl"]) == ("CLOSED", "STOPPED_OUT", expected)
    assert trade["exit_price"] == D("150") + expected / 10  # the quantity-weighted average of both exits
    (target,) = rows(db, trade["id"], "TAKE_PROFIT")
    assert (target["order_status"], target["filled_qty"]) == ("canceled", sold)


class StaleSiblingBroker(AlpacaBroker):
    """A broker whose listing still shows a canceled take-profit as ``new`` (Alpaca does not
    always stream or show the sibling's cancel at once)."""

    def _stale(self, order: BrokerOrder) -> BrokerOrder:
        legs = tuple(self._stale(leg) for leg in order.legs)
        if order.kind == "limit" and order.side == "sell" and order.status == "canceled":
            return dataclasses.replace(order, status="new", canceled_at=None, legs=legs)
        return dataclasses.replace(order, legs=legs)

    def list_orders(self, **kwargs):
        return [self._stale(order) for order in super().list_orders(**kwargs)]


def test_sibling_still_open_after_the_exit_fill_is_canceled_and_its_final_status_recorded(db, exchange, broker):
    trade = open_position(db, exchange, broker)
    exchange.quotes(AAPL=("144.90", "145.00"))
    stale = StaleSiblingBroker(base_url=exchange.url, data_url=exchange.url, timeout=3)

    summary = run_monitor(db, stale)

    assert db.get_by_id("trade_journal", trade["id"])["status"] == "CLOSED"
    assert stale.calls.counts.get("cancel_order") == 1 and stale.calls.counts.get("get_order") == 1
    (target,) = rows(db, trade["id"], "TAKE_PROFIT")
    assert target["order_status"] == "canceled"  # the broker's final word, read back directly
    assert [e["reason"] for e in audit_events(db, "ORDER_CANCEL_REQUESTED")] == \
        ["trade closed: its remaining orders are canceled"]
    assert summary.counts["trades_closed"] == 1


# --------------------------------------------------------------------------- runs


def test_second_run_with_nothing_new_changes_nothing(db, exchange, broker):
    open_position(db, exchange, broker)
    place_entry(db, broker, "MSFT", planned_entry=400, planned_sl=390, planned_tp=420)
    run_monitor(db, broker)
    before = snapshot(db)
    runs = len(db.query("program_run"))

    summary = run_monitor(db, broker)

    assert snapshot(db) == before
    assert len(db.query("program_run")) == runs + 1
    assert summary.outcome == "success"
    assert broker.calls.counts.get("submit_order", 0) == 2  # the two entries, nothing since


def test_two_monitor_runs_at_once_one_runs_the_other_is_skipped(db, make_db, exchange, broker, caplog):
    place_entry(db, broker)
    first_db, second_db = make_db(), make_db()
    exchange.fault(method="GET", path="/v2/clock", delay_seconds=1.0)  # the first run is slow
    results = {}
    first = threading.Thread(target=lambda: results.setdefault(
        "first", order_monitor.run_once(first_db, broker, settings=make_settings())))
    first.start()
    for _ in range(200):  # until the first run holds its advisory lock
        locks = db.execute_one("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted")
        if locks["n"]:
            break
        threading.Event().wait(0.01)
    second_broker = AlpacaBroker(base_url=exchange.url, data_url=exchange.url, timeout=3)

    with caplog.at_level("INFO", logger="trading.program"):
        second = order_monitor.run_once(second_db, second_broker, settings=make_settings())
    first.join(10)

    assert second.outcome == "skipped" and second.run_id is None
    assert second_broker.calls.total == 0
    assert "another run holds the lock" in caplog.text
    assert results["first"].outcome == "success"
    assert [r["outcome"] for r in db.query("program_run", {"program": "order_monitor"})] == ["success"]


# --------------------------------------------------------------------------- issue 11: trade safety


def test_replaced_entry_keeps_its_fills_and_the_trade_holds_the_whole_chain_at_the_weighted_price(
        db, exchange, broker):
    trade = place_entry(db, broker)
    entry = entry_row(db, trade["id"])
    real = broker.get_order(entry["alpaca_order_id"])
    reconciler = Reconciler(db, Auditor(db, "test"))
    now = dt.datetime.fromisoformat(eastern("2026-11-20", "10:00"))
    one_filled = dataclasses.replace(real, status="partially_filled", filled_qty=D("1"), filled_avg_price=D("150.00"))
    successor_id = str(uuid.uuid4())
    replaced = dataclasses.replace(one_filled, status="replaced", replaced_by=successor_id)
    # A person replaced the limit: the new order starts with nothing filled, then 9 fill @ 149.50.
    successor = dataclasses.replace(real, id=successor_id, client_order_id=f"dash-{successor_id[:8]}",
                                    status="new", filled_qty=D("0"), filled_avg_price=None, limit_price=D("149.50"),
                                    replaces=real.id, legs=())
    nine_filled = dataclasses.replace(successor, status="filled", filled_qty=D("9"), filled_avg_price=D("149.50"))

    for order, index in ((one_filled, {}), (replaced, {successor_id: successor})):
        with db.transaction():
            locked = reconciler.trades.lock(trade["id"])
            reconciler.sync(locked, entry_row_by_id(db, entry["id"]), order, now=now, index=index)
    (successor_row,) = [r for r in rows(db, trade["id"], "ENTRY") if r["alpaca_order_id"] == successor_id]
    with db.transaction():
        locked = reconciler.trades.lock(trade["id"])
        reconciler.sync(locked, successor_row, nine_filled, now=now)

    after = db.get_by_id("trade_journal", trade["id"])
    assert (after["status"], after["actual_qty"], after["actual_entry"]) == ("POSITION", D("10"), D("149.55"))
    (position,) = db.query("position_tracking", {"trade_journal_id": trade["id"]})
    assert (position["qty"], position["avg_entry_price"], position["cost_basis"]) == \
        (D("10"), D("149.55"), D("1495.50"))
    buys = [(f["qty"], f["price"]) for f in db.query("trade_fill", order_by="id")]
    assert buys == [(D("1"), D("150.00")), (D("9"), D("149.50"))]


def test_entry_replaced_outside_then_filled_and_stopped_out_before_a_run_closes_the_trade_and_sells_nothing_more(
        db, exchange, broker):
    """Found by the chaos day (seed 1): the stop leg's fill was booked before the replaced entry's
    fill (legs before the successor), as a late fill of an ORDERED trade; the entry's fill then
    opened a position the stop had already sold, and the "repair" sold a person's shares."""
    exchange.quotes(AAPL=("150.40", "150.50"))  # the entry (limit 150) rests
    trade = place_entry(db, broker)
    exchange.step()
    entry = entry_row(db, trade["id"])
    person = outside_client(exchange)
    first = person.replace_order(entry["alpaca_order_id"], limit_price=D("149.90"))
    exchange.step()
    person.replace_order(first.id, limit_price=D("149.80"))
    exchange.step()
    person.submit_order(OrderRequest(symbol="AAPL", qty=D(4), side="buy", kind="market", time_in_force="day",
                                     client_order_id="person-aapl-4"))  # the person's own shares
    exchange.step()
    exchange.quotes(AAPL=("149.70", "149.80"))  # the replacement fills at 149.80
    exchange.step()
    exchange.quotes(AAPL=("144.90", "145.00"))  # through the stop: it sells the 10 shares
    exchange.step()
    exchange.step()

    summary = run_monitor(db, broker, check=False)

    closed = db.get_by_id("trade_journal", trade["id"])
    assert (closed["status"], closed["exit_reason"]) == ("CLOSED", "STOPPED_OUT"), summary.as_dict()
    assert closed["actual_qty"] == D("10")
    exit_price = D(closed["exit_price"])
    assert closed["actual_pnl"] == (exit_price - D("149.80")) * 10
    assert summary.counts.get("protection_repaired", 0) == 0
    assert audit_events(db, "ORDER_ANOMALY") == []
    assert exchange.positions() == {"AAPL": D("4")}  # the person's shares, untouched


def entry_row_by_id(db, row_id: int) -> dict:
    return db.get_by_id("order_execution", row_id)


def outside_client(exchange) -> AlpacaBroker:
    """A person in Alpaca's app: a separate client with other keys the system knows nothing of."""
    return AlpacaBroker(base_url=exchange.url, data_url=exchange.url, api_key="dashboard", secret_key="operator",
                        timeout=3)


def close_outside(exchange, trade_id: int, db, client_order_id: str, symbol: str = "AAPL") -> BrokerOrder:
    """Cancel the trade's protection and sell every share in Alpaca's app (the system is not told)."""
    person = outside_client(exchange)
    protective = [r for r in rows(db, trade_id) if r["order_type"] in ("STOP_LOSS", "TAKE_PROFIT")
                  and r["order_status"] in lifecycle.OPEN_ORDER_STATUSES]
    person.cancel_order(protective[0]["alpaca_order_id"])
    exchange.step()  # the cancel completes: the shares are free
    from trading.broker import OrderRequest

    sold = person.submit_order(OrderRequest(symbol=symbol, qty=exchange.positions()[symbol], side="sell",
                                            kind="market", time_in_force="day", client_order_id=client_order_id))
    exchange.step()  # and the sell fills
    sold = person.get_order(sold.id)
    assert sold.status == "filled" and exchange.positions() == {}
    return sold


def system_sells(exchange) -> list[dict]:
    """Sell orders the exchange received from this system (its client order ids) and kept."""
    return [o for o in exchange.orders() if o["side"] == "sell" and str(o["client_order_id"]).startswith("tm-")]


def test_day_end_exit_of_a_position_sold_outside_sells_nothing_and_closes_it_as_outside(db, exchange, broker):
    trade = open_position(db, exchange, broker, trade_style="DAYTRADE", planned_tp=None)
    exchange.quotes(AAPL=("151.00", "151.10"))
    sold = close_outside(exchange, trade["id"], db, "dashboard-sell-all")
    exchange.clock(eastern("2026-11-20", "15:51"))
    exchange.reset_stats()
    kept_before = len(system_sells(exchange))

    summary = run_monitor(db, broker)

    # No sell was ever sent: not the market exit, not a restoring stop (on a margin account each
    # would open a short).
    assert "POST /v2/orders" not in calls(exchange), calls(exchange)
    assert len(system_sells(exchange)) == kept_before
    closed = db.get_by_id("trade_journal", trade["id"])
    assert (closed["status"], closed["exit_reason"], closed["exit_price"]) == ("CLOSED", "MANUAL_EXIT",
                                                                              D("151.00"))
    assert closed["actual_pnl"] == D("10.00")
    assert summary.counts.get("closed_outside") == 1
    assert exchange.positions() == {}
    assert sold.id in {f["order_id"] for e in audit_events(db, "QUANTITY_MISMATCH")
                       for f in e["details"]["outside_fills"]}


def test_protection_repair_of_a_position_sold_outside_sends_no_oco_and_closes_it_as_outside(db, exchange, broker):
    trade = open_position(db, exchange, broker)  # SWING: a repair would be an OCO
    exchange.quotes(AAPL=("148.00", "148.10"))
    close_outside(exchange, trade["id"], db, "dashboard-sell-swing")
    exchange.reset_stats()

    summary = run_monitor(db, broker)

    assert "POST /v2/orders" not in calls(exchange), calls(exchange)
    closed = db.get_by_id("trade_journal", trade["id"])
    assert (closed["status"], closed["exit_reason"], closed["exit_price"], closed["actual_pnl"]) == (
        "CLOSED", "MANUAL_EXIT", D("148.00"), D("-20.00"))
    assert summary.counts.get("protection_not_open") == 1
    assert audit_events(db, "PROTECTION_MISSING") == []


def test_two_protection_repairs_at_once_place_one_group_and_neither_run_dies(db, make_db, exchange, broker):
    trade = open_position(db, exchange, broker)
    broker.cancel_order(rows(db, trade["id"], "STOP_LOSS")[0]["alpaca_order_id"])
    exchange.step()  # the cancel completes
    from trading.protection import Protector

    # The cancel is recorded first, so both programs see the same unprotected position.
    with db.transaction():
        reconciler = Reconciler(db, Auditor(db, "test"))
        locked = reconciler.trades.lock(trade["id"])
        for row in rows(db, trade["id"]):
            if row["order_type"] == "ENTRY":
                reconciler.sync(locked, row, broker.get_order(row["alpaca_order_id"]), now=dt.datetime.now(dt.UTC))
    start = threading.Barrier(2)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def repair(program: str) -> None:
        own_db = make_db()
        own_broker = AlpacaBroker(base_url=exchange.url, data_url=exchange.url, timeout=5)
        protector = Protector(own_db, own_broker, Reconciler(own_db, Auditor(own_db, program)), make_settings(),
                              now=dt.datetime.now(dt.UTC), warn=lambda _note: None, sleep=exchange.sleeper())
        start.wait(5)
        try:
            outcomes.append(protector.ensure(trade["id"]))
        except BaseException as exc:  # the test reports what a run would die of
            errors.append(exc)

    threads = [threading.Thread(target=repair, args=(name,)) for name in ("order_monitor", "position_monitor")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert sorted(outcomes) == ["protected", "repaired"]
    assert len([g for g in open_groups(broker, "AAPL") if g.order_class == "oco"]) == 1
    check_invariants(db, broker)


class HidingBroker(AlpacaBroker):
    """The real client, except that one order is invisible (omitted from listings, 404 on look-ups)
    while ``hiding`` is set: a broker that loses an order for a while and then shows it again."""

    def __init__(self, *, order_id: str, **kwargs):
        super().__init__(**kwargs)
        self.order_id, self.hiding = order_id, True

    def _hidden(self, order: BrokerOrder) -> bool:
        return self.hiding and order.id == self.order_id

    def list_orders(self, **kwargs):
        return [o for o in super().list_orders(**kwargs) if not self._hidden(o)]

    def get_order(self, order_id: str):
        order = super().get_order(order_id)
        if self._hidden(order):
            raise NotFoundError(f"get_order: HTTP 404 order {order_id} not found")
        return order

    def get_order_by_client_id(self, client_order_id: str):
        order = super().get_order_by_client_id(client_order_id)
        if self._hidden(order):
            raise NotFoundError(f"get_order_by_client_id: HTTP 404 order {client_order_id} not found")
        return order


def test_order_marked_not_found_is_looked_up_again_later_and_its_late_fill_applied(db, exchange, broker):
    settings = make_settings(ORDER_NOT_FOUND_MAX_MISSES=2)
    exchange.quotes(AAPL=("150.90", "151.00"))  # the entry rests
    trade = place_entry(db, broker)
    entry = entry_row(db, trade["id"])
    lossy = HidingBroker(order_id=entry["alpaca_order_id"], base_url=exchange.url, data_url=exchange.url, timeout=3)
    for _ in range(2):
        order_monitor.run_once(db, lossy, settings=settings, sleep=lambda _s: None)
    assert entry_row(db, trade["id"])["order_status"] == "not_found"
    assert db.get_by_id("trade_journal", trade["id"])["exit_reason"] == "ENTRY_NOT_FOUND"
    exchange.quotes(AAPL=("149.90", "150.00"))  # meanwhile the entry fills at the broker
    lossy.hiding = False  # and the broker shows it again

    order_monitor.run_once(db, lossy, settings=settings, sleep=lambda _s: None)
    assert entry_row(db, trade["id"])["order_status"] == "not_found"  # not due yet: looked up less often

    exchange.clock(eastern("2026-11-20", "09:51"))
    summary = order_monitor.run_once(db, lossy, settings=settings, sleep=lambda _s: None)

    assert entry_row(db, trade["id"])["order_status"] == "filled"
    reopened = db.get_by_id("trade_journal", trade["id"])
    assert (reopened["status"], reopened["actual_qty"], reopened["actual_entry"], reopened["exit_reason"]) == (
        "POSITION", D("10"), D("150"), None)
    assert summary.counts["fills"] >= 1
    check_invariants(db, broker)  # the position is recorded and protected by its bracket legs


def test_the_invariant_checks_catch_a_short_position_the_margin_account_would_open(db, exchange, broker):
    # The exchange is a margin account, as Alpaca paper: a sell of shares not held is accepted and opens
    # a short. The checks after every run must see it (a sell beyond the shares held is the defect).
    from trading.broker import OrderRequest

    open_position(db, exchange, broker)
    outside_client(exchange).submit_order(OrderRequest(symbol="MSFT", qty=Decimal("3"), side="sell", kind="market",
                                                       time_in_force="day", client_order_id="naked-sell"))
    exchange.quotes(MSFT=("400.00", "400.10"))  # acknowledged and filled: MSFT -3
    assert exchange.positions()["MSFT"] == Decimal("-3")
    with pytest.raises(AssertionError, match=r"short positions at the exchange .*'MSFT': Decimal\('-3'\)"):
        check_invariants(db, broker)


# --------------------------------------------------------------------------- the trading state (issue 13)


def set_state(db, mode: str, scope: str | None = None, reason: str = "operator says stop") -> None:
    from trading.state import record_trading_state

    record_trading_state(db, mode, reason=reason, changed_by="alice", scope=scope, confirm_reset=True)


def account_mode(db, scope: str = "ACCOUNT") -> str | None:
    row = db.execute_one("SELECT mode FROM trading_state WHERE scope = %s", (scope,))
    return row["mode"] if row else None


def test_halted_monitor_records_fills_and_repairs_protection_but_holds_back_the_day_end_exit(db, exchange, broker):
    day = open_position(db, exchange, broker, trade_style="DAYTRADE", planned_tp=None)
    swing = open_position(db, exchange, broker, "MSFT", fill_at=("399.90", "400.00"), planned_entry=400,
                          planned_sl=390, planned_tp=420)
    broker.cancel_order(rows(db, swing["id"], "STOP_LOSS")[0]["alpaca_order_id"])  # its protection is gone
    entry = place_entry(db, broker, "NVDA", planned_entry=130, planned_sl=125, planned_tp=140)
    set_state(db, "HALTED")
    exchange.quotes(NVDA=("129.90", "130.00"))  # the NVDA entry fills while halted
    exchange.clock(eastern("2026-11-20", "15:51"))

    summary = run_monitor(db, broker)

    assert summary.counts["day_end_held_back"] == 1
    assert db.get_by_id("trade_journal", day["id"])["status"] == "POSITION"
    assert exchange.positions()["AAPL"] == D("10")
    assert summary.counts["protection_repaired"] == 1  # protection is the one thing sent while halted
    assert db.get_by_id("trade_journal", entry["id"])["status"] == "POSITION"  # the fill is recorded
    assert summary.counts["positions_opened"] == 1
    assert not [o for o in exchange.orders() if o["type"] == "market"]
    assert any("trading state account HALTED (operator says stop)" in note for note in summary.notes)


def test_reduce_only_lets_the_day_end_exit_run(db, exchange, broker):
    day = open_position(db, exchange, broker, trade_style="DAYTRADE", planned_tp=None)
    set_state(db, "REDUCE_ONLY")
    exchange.clock(eastern("2026-11-20", "15:51"))

    summary = run_monitor(db, broker)

    assert summary.counts["day_end_exit_submitted"] == 1 and "day_end_held_back" not in summary.counts
    assert db.get_by_id("trade_journal", day["id"])["exit_reason"] == "DAY_END_EXIT"
    assert exchange.positions() == {}


def test_flatten_cancels_every_open_order_sells_every_position_then_halts(db, exchange, broker):
    swing = open_position(db, exchange, broker)
    day = open_position(db, exchange, broker, "MSFT", fill_at=("399.90", "400.00"), trade_style="DAYTRADE",
                        planned_tp=None, planned_entry=400, planned_sl=390)
    working = place_entry(db, broker, "NVDA", planned_entry=130, planned_sl=125, planned_tp=140)
    exchange.quotes(AAPL=("151.00", "151.10"), MSFT=("398.00", "398.10"))
    set_state(db, "FLATTEN", reason="loss limit")

    summary = run_monitor(db, broker)

    assert exchange.positions() == {}
    assert open_groups(broker) == []
    assert summary.counts["flatten_exit_submitted"] == 2 and summary.counts["flatten_cancelled"] == 1
    closed = {t["id"]: t for t in db.query("trade_journal")}
    assert (closed[swing["id"]]["status"], closed[swing["id"]]["exit_reason"], closed[swing["id"]]["actual_pnl"]) == \
        ("CLOSED", "FLATTENED", D("10.00"))
    assert (closed[day["id"]]["status"], closed[day["id"]]["exit_reason"], closed[day["id"]]["actual_pnl"]) == \
        ("CLOSED", "FLATTENED", D("-20.00"))
    assert (closed[working["id"]]["status"], closed[working["id"]]["exit_reason"]) == ("CANCELLED", "FLATTENED")
    assert db.query("position_tracking") == []
    sells = [o for o in exchange.orders() if o["type"] == "market"]
    assert sorted((o["symbol"], D(o["qty"])) for o in sells) == [("AAPL", D("10")), ("MSFT", D("10"))]
    state = db.execute_one("SELECT * FROM trading_state WHERE scope = 'ACCOUNT'")
    assert (state["mode"], state["changed_by"]) == ("HALTED", "order_monitor")
    assert state["reason"] == "flatten finished: no open trade or order left (was FLATTEN: loss limit)"
    [change] = [e for e in audit_events(db, "TRADING_STATE_CHANGED") if e["new_value"] == "HALTED"]
    assert change["old_value"] == "FLATTEN" and change["details"]["flattened_trades"] == 3
    assert summary.counts["flatten_finished"] == 1

    before = snapshot(db)
    run_monitor(db, broker)
    assert snapshot(db) == before  # halted and flat: nothing more to do


def test_flatten_of_one_symbol_closes_its_trades_only_and_halts_that_symbol(db, exchange, broker):
    aapl = open_position(db, exchange, broker)
    msft = open_position(db, exchange, broker, "MSFT", fill_at=("399.90", "400.00"), planned_entry=400,
                         planned_sl=390, planned_tp=420)
    set_state(db, "FLATTEN", scope="AAPL", reason="bad news")

    summary = run_monitor(db, broker)

    assert exchange.positions() == {"MSFT": D("10")}
    assert open_groups(broker, "AAPL") == [] and len(open_groups(broker, "MSFT")) == 1
    assert db.get_by_id("trade_journal", aapl["id"])["exit_reason"] == "FLATTENED"
    assert db.get_by_id("trade_journal", msft["id"])["status"] == "POSITION"
    assert (account_mode(db, "AAPL"), account_mode(db)) == ("HALTED", None)
    assert summary.counts["flatten_exit_submitted"] == 1


def test_flatten_outside_the_session_cancels_entries_keeps_the_stops_and_sells_at_the_next_session(
        db, exchange, broker):
    held = open_position(db, exchange, broker)
    working = place_entry(db, broker, "NVDA", planned_entry=130, planned_sl=125, planned_tp=140)
    exchange.clock(eastern("2026-11-20", "18:00"))
    set_state(db, "FLATTEN", reason="stop everything")

    evening = run_monitor(db, broker)

    assert db.get_by_id("trade_journal", working["id"])["exit_reason"] == "FLATTENED"
    assert evening.counts["flatten_waiting_for_session"] == 1
    assert exchange.positions() == {"AAPL": D("10")}  # still protected by its stop (checked by run_monitor)
    assert account_mode(db) == "FLATTEN"
    assert any("FLATTEN (account) not finished" in note for note in evening.notes)

    exchange.clock(eastern("2026-11-23", "09:35"))  # Monday
    exchange.quotes(AAPL=("152.00", "152.10"))
    monday = run_monitor(db, broker)

    assert monday.counts["flatten_exit_submitted"] == 1
    assert exchange.positions() == {} and open_groups(broker) == []
    closed = db.get_by_id("trade_journal", held["id"])
    assert (closed["exit_reason"], closed["actual_pnl"]) == ("FLATTENED", D("20.00"))
    assert account_mode(db) == "HALTED"
