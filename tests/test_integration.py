"""Whole trade lives: decisions through order_executor, the market through the paper exchange's
admin API (quotes and the simulated clock), and order_monitor runs as the scheduler would make
them. The invariants of ``tests.monitor_support.check_invariants`` are checked after every
monitor run.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from tests.factories import add_decision, eastern, make_settings, snapshot
from tests.monitor_support import (
    audit_events,
    execute,
    open_groups,
    open_position,
    place_entry,
    rows,
    run_monitor,
    working_sells,
)

D = Decimal


def at(day: str, hhmm: str) -> dt.datetime:
    return dt.datetime.fromisoformat(eastern(day, hhmm))


def trade_row(db, trade: dict) -> dict:
    return db.get_by_id("trade_journal", trade["id"])


def test_new_trade_fills_then_stops_out_and_is_closed_with_exact_loss(db, exchange, broker):
    add_decision(db, "AAPL")  # SWING 10 @ 150, stop 145, target 160
    execute(db, broker)
    (trade,) = db.query("trade_journal")
    run_monitor(db, broker)                                   # 09:45 nothing filled yet
    assert trade_row(db, trade)["status"] == "ORDERED"

    exchange.clock(eastern("2026-11-20", "09:50"))
    exchange.quotes(AAPL=("149.95", "150.00"))
    run_monitor(db, broker)                                   # 09:50 filled: position, protected
    assert trade_row(db, trade)["status"] == "POSITION"

    exchange.clock(eastern("2026-11-20", "11:00"))
    exchange.quotes(AAPL=("146.00", "146.10"))
    run_monitor(db, broker)                                   # drifting lower: nothing to do
    assert trade_row(db, trade)["status"] == "POSITION"

    exchange.clock(eastern("2026-11-20", "11:03"))
    exchange.quotes(AAPL=("144.50", "144.60"))                # through the stop
    exchange.clock(eastern("2026-11-20", "11:05"))
    summary = run_monitor(db, broker)

    trade = trade_row(db, trade)
    assert (trade["status"], trade["exit_reason"], trade["exit_price"], trade["actual_pnl"]) == \
        ("CLOSED", "STOPPED_OUT", D("144.50"), D("-55.00"))
    assert trade["entry_date"] == at("2026-11-20", "09:50") and trade["exit_date"] == at("2026-11-20", "11:03")
    assert summary.counts["trades_closed"] == 1
    assert [r["order_status"] for r in rows(db, trade["id"])] == ["filled", "canceled", "filled"]
    assert db.query("position_tracking") == [] and exchange.positions() == {}
    assert [e["new_value"] for e in audit_events(db, "TRADE_STATUS", "trade", trade["id"])] == \
        ["ORDERED", "POSITION", "CLOSED"]

    before = snapshot(db)
    execute(db, broker)
    run_monitor(db, broker)
    assert snapshot(db) == before


def test_new_trade_fills_then_reaches_target_and_is_closed_with_exact_gain(db, exchange, broker):
    add_decision(db, "NVDA", planned_entry="135.41", planned_sl="131.07", planned_tp="142.89", planned_qty=17)
    execute(db, broker)
    (trade,) = db.query("trade_journal")
    exchange.quotes(NVDA=("135.30", "135.38"))               # filled at the ask, under the limit
    run_monitor(db, broker)
    assert (trade_row(db, trade)["actual_entry"], trade_row(db, trade)["actual_qty"]) == (D("135.38"), D("17"))

    exchange.clock(eastern("2026-11-20", "14:00"))
    exchange.quotes(NVDA=("142.93", "142.97"))
    run_monitor(db, broker)

    trade = trade_row(db, trade)
    assert (trade["status"], trade["exit_reason"], trade["exit_price"], trade["actual_pnl"]) == \
        ("CLOSED", "PROFIT_TAKEN", D("142.93"), D("128.35"))   # (142.93 - 135.38) x 17
    (stop,) = rows(db, trade["id"], "STOP_LOSS")
    assert stop["order_status"] == "canceled"
    assert db.query("position_tracking") == []


def test_new_trade_then_cancel_decision_cancels_the_entry_and_its_legs(db, exchange, broker):
    trade = place_entry(db, broker)
    run_monitor(db, broker)
    add_decision(db, "AAPL", "CANCEL", trade_id=trade["id"])

    execute(db, broker)
    run_monitor(db, broker)

    trade = trade_row(db, trade)
    assert (trade["status"], trade["exit_reason"]) == ("CANCELLED", "CANCEL_REQUESTED")
    assert {r["order_status"] for r in rows(db, trade["id"])} == {"canceled"}
    assert open_groups(broker) == []
    exchange.quotes(AAPL=("149.00", "149.10"))                # would have filled: nothing happens
    run_monitor(db, broker)
    assert exchange.positions() == {} and trade_row(db, trade)["status"] == "CANCELLED"


def test_new_trade_then_amend_decision_replaces_the_entry_with_the_amended_plan(db, exchange, broker):
    old = place_entry(db, broker)
    run_monitor(db, broker)
    add_decision(db, "AAPL", "AMEND", trade_id=old["id"], planned_entry="148.50", planned_sl="144.00",
                 planned_tp="158.00", planned_qty=12)

    execute(db, broker)
    run_monitor(db, broker)

    old = trade_row(db, old)
    assert (old["status"], old["exit_reason"]) == ("CANCELLED", "AMENDED")
    (new,) = db.query("trade_journal", {"replaces_trade_journal_id": old["id"]})
    assert (new["status"], new["planned_entry"], new["planned_qty"]) == ("ORDERED", D("148.50"), D("12"))

    exchange.quotes(AAPL=("149.40", "149.50"))               # the old limit 150 would fill, the new does not
    run_monitor(db, broker)
    assert trade_row(db, new)["status"] == "ORDERED" and exchange.positions() == {}

    exchange.quotes(AAPL=("148.40", "148.50"))
    run_monitor(db, broker)

    new = trade_row(db, new)
    assert (new["status"], new["actual_entry"], new["actual_qty"]) == ("POSITION", D("148.50"), D("12"))
    (stop,) = [r for r in rows(db, new["id"], "STOP_LOSS")]
    assert (stop["stop_price"], stop["qty"]) == (D("144.00"), D("12"))


def test_daytrades_are_flat_at_1550_and_swing_trades_are_left_alone(db, exchange, broker):
    swing = open_position(db, exchange, broker, "AAPL")
    day = open_position(db, exchange, broker, "MSFT", fill_at=("410.00", "410.10"), trade_style="DAYTRADE",
                        planned_entry="410.25", planned_sl="405.50", planned_tp=None, planned_qty=6)
    unfilled = place_entry(db, broker, "AMD", trade_style="DAYTRADE", planned_entry="140", planned_sl="137",
                           planned_tp=None, planned_qty=20)
    exchange.quotes(MSFT=("412.31", "412.40"))

    exchange.clock(eastern("2026-11-20", "15:45"))
    run_monitor(db, broker)
    assert {trade_row(db, t)["status"] for t in (day, unfilled)} == {"POSITION", "ORDERED"}

    exchange.clock(eastern("2026-11-20", "15:50"))
    summary = run_monitor(db, broker)

    day = trade_row(db, day)
    assert (day["status"], day["exit_reason"], day["exit_price"], day["actual_pnl"]) == \
        ("CLOSED", "DAY_END_EXIT", D("412.31"), D("13.26"))    # bought at the ask 410.10, sold at the bid
    (exit_row,) = rows(db, day["id"], "EXIT")
    # The broker's fill time: moments after the run began (cancel confirmed, then the sell filled).
    assert day["exit_date"] == exit_row["filled_at"]
    assert at("2026-11-20", "15:50") < day["exit_date"] < at("2026-11-20", "15:51")
    assert (exit_row["order_kind"], exit_row["order_status"], exit_row["exit_reason"]) == \
        ("limit", "filled", "DAY_END_EXIT")  # EXIT_URGENCY_DAY_END=HIGH: a limit at the bid, marketable
    (stop,) = rows(db, day["id"], "STOP_LOSS")
    assert stop["order_status"] == "canceled"
    assert stop["canceled_at"] <= exit_row["submitted_at"]     # protection canceled first
    unfilled = trade_row(db, unfilled)
    assert (unfilled["status"], unfilled["exit_reason"]) == ("CANCELLED", "DAY_END_CANCEL")
    assert trade_row(db, swing)["status"] == "POSITION"
    assert exchange.positions() == {"AAPL": D("10")}
    assert summary.counts["day_end_exit_submitted"] == 1 and summary.counts["day_end_cancelled"] == 1

    before = snapshot(db)
    exchange.clock(eastern("2026-11-20", "15:55"))
    run_monitor(db, broker)
    assert snapshot(db) == before


def test_day_end_exit_time_is_configurable(db, exchange, broker):
    settings = make_settings(DAYTRADE_EXIT_MINUTES_BEFORE_CLOSE=25)
    day = open_position(db, exchange, broker, trade_style="DAYTRADE", planned_tp=None, settings=settings)
    exchange.clock(eastern("2026-11-20", "15:34"))
    run_monitor(db, broker, settings)
    assert trade_row(db, day)["status"] == "POSITION"

    exchange.clock(eastern("2026-11-20", "15:35"))
    run_monitor(db, broker, settings)

    assert (trade_row(db, day)["status"], trade_row(db, day)["exit_reason"]) == ("CLOSED", "DAY_END_EXIT")


def test_partly_filled_daytrade_entry_at_the_day_end_is_canceled_and_its_shares_sold(db, exchange, broker):
    settings = make_settings(PARTIAL_ENTRY_POLICY="wait")
    day = place_entry(db, broker, trade_style="DAYTRADE", planned_tp=None, settings=settings)
    exchange.configure(partial_fill_probability=1)
    try:
        exchange.quotes(AAPL=("149.90", "150.00"))
    finally:
        exchange.configure(partial_fill_probability=0)
    exchange.quotes(AAPL=("150.60", "150.70"))
    run_monitor(db, broker, settings, waiting=[day["id"]])
    bought = trade_row(db, day)["actual_qty"]
    assert D(0) < bought < D(10)

    exchange.clock(eastern("2026-11-20", "15:50"))
    run_monitor(db, broker, settings)

    day = trade_row(db, day)
    assert (day["status"], day["exit_reason"], day["actual_pnl"]) == ("CLOSED", "DAY_END_EXIT", D("0.60") * bought)
    assert rows(db, day["id"], "ENTRY")[0]["order_status"] == "canceled"
    assert rows(db, day["id"], "EXIT")[0]["qty"] == bought
    assert exchange.positions() == {} and open_groups(broker) == []


def test_daytrade_is_flat_at_1250_on_an_early_close_day(db, exchange, broker):
    exchange.clock(eastern("2026-11-27", "09:45"))             # the day after Thanksgiving: close 13:00
    day = open_position(db, exchange, broker, "TSLA", fill_at=("250.00", "250.05"), trade_style="DAYTRADE",
                        planned_entry="250.10", planned_sl="245.00", planned_tp=None, planned_qty=4)

    exchange.clock(eastern("2026-11-27", "12:45"))
    run_monitor(db, broker)
    assert trade_row(db, day)["status"] == "POSITION"

    exchange.quotes(TSLA=("248.76", "248.80"))
    exchange.clock(eastern("2026-11-27", "12:50"))
    run_monitor(db, broker)

    day = trade_row(db, day)
    assert (day["status"], day["exit_reason"], day["exit_price"], day["actual_pnl"]) == \
        ("CLOSED", "DAY_END_EXIT", D("248.76"), D("-5.16"))   # (248.76 - 250.05) x 4
    assert exchange.positions() == {}


def test_daytrade_left_open_overnight_is_flattened_at_the_first_run_of_the_next_session(db, exchange, broker):
    day = open_position(db, exchange, broker, trade_style="DAYTRADE", planned_tp=None)
    # No monitor run between 15:50 and the close: the OTO stop (a day order) expires at 16:00.
    exchange.clock(eastern("2026-11-23", "09:35"))             # Monday
    exchange.quotes(AAPL=("151.20", "151.30"))

    summary = run_monitor(db, broker)

    day = trade_row(db, day)
    assert (day["status"], day["exit_reason"], day["actual_pnl"]) == ("CLOSED", "DAY_END_EXIT", D("12.00"))
    assert rows(db, day["id"], "STOP_LOSS")[0]["order_status"] == "expired"
    assert summary.counts["day_end_exit_submitted"] == 1
    assert exchange.positions() == {}


def test_18h_run_after_a_missed_day_end_gives_the_daytrade_a_gtc_stop_then_flattens_it_next_session(
        db, exchange, broker):
    day = open_position(db, exchange, broker, trade_style="DAYTRADE", planned_tp=None, planned_qty=8)
    exchange.clock(eastern("2026-11-20", "18:00"))             # the 15:50 run never happened

    summary = run_monitor(db, broker)

    assert trade_row(db, day)["status"] == "POSITION"          # the market is closed: no sale possible
    expired, gtc = rows(db, day["id"], "STOP_LOSS")
    assert (expired["time_in_force"], expired["order_status"]) == ("day", "expired")
    assert (gtc["time_in_force"], gtc["order_status"], gtc["qty"], gtc["stop_price"]) == \
        ("gtc", "accepted", D("8"), D("145"))
    assert summary.counts["protection_repaired"] == 1
    assert [o.time_in_force for o in open_groups(broker, "AAPL")] == ["gtc"]

    exchange.clock(eastern("2026-11-21", "12:00"))             # Saturday: nothing
    before = snapshot(db)
    run_monitor(db, broker)
    assert snapshot(db) == before

    exchange.clock(eastern("2026-11-23", "09:35"))             # Monday: the stop is live again, then the exit
    exchange.quotes(AAPL=("149.00", "149.05"))
    run_monitor(db, broker)

    day = trade_row(db, day)
    assert (day["status"], day["exit_reason"], day["exit_price"], day["actual_pnl"]) == \
        ("CLOSED", "DAY_END_EXIT", D("149.00"), D("-8.00"))
    assert rows(db, day["id"], "STOP_LOSS")[1]["order_status"] == "canceled"
    assert working_sells(exchange) == [] and exchange.positions() == {}


def test_a_day_of_runs_every_five_minutes_keeps_every_position_protected(db, exchange, broker):
    settings = make_settings()
    open_position(db, exchange, broker, "AAPL", settings=settings)
    open_position(db, exchange, broker, "JPM", fill_at=("224.60", "224.70"), planned_entry="224.70",
                  planned_sl="220.00", planned_tp="232.00", planned_qty=9, settings=settings)
    path = {"10:30": ("151.00", "151.05"), "11:15": ("147.00", "147.05"), "13:00": ("152.00", "152.05"),
            "14:40": ("160.50", "160.55")}
    jpm = {"10:30": ("222.00", "222.10"), "12:00": ("219.80", "219.90")}
    moment = at("2026-11-20", "10:00")
    end = at("2026-11-20", "16:00")
    while moment <= end:
        hhmm = moment.astimezone(dt.timezone(dt.timedelta(hours=-5))).strftime("%H:%M")
        exchange.clock(moment.isoformat())
        quotes = {}
        if hhmm in path:
            quotes["AAPL"] = path[hhmm]
        if hhmm in jpm:
            quotes["JPM"] = jpm[hhmm]
        if quotes:
            exchange.quotes(**quotes)
        run_monitor(db, broker, settings)
        moment += dt.timedelta(minutes=5)

    aapl, jpm_trade = db.query("trade_journal", order_by="id")
    assert (aapl["status"], aapl["exit_reason"], aapl["actual_pnl"]) == ("CLOSED", "PROFIT_TAKEN", D("105.00"))
    assert (jpm_trade["status"], jpm_trade["exit_reason"], jpm_trade["actual_pnl"]) == \
        ("CLOSED", "STOPPED_OUT", D("-44.10"))                 # (219.80 - 224.70) x 9, sold at the bid
    assert exchange.positions() == {}


def test_day_end_sale_accepted_but_unanswered_is_found_by_its_id_at_once_and_never_sold_twice(db, exchange, broker):
    day = open_position(db, exchange, broker, trade_style="DAYTRADE", planned_tp=None)
    exchange.quotes(AAPL=("150.80", "150.90"))
    exchange.clock(eastern("2026-11-20", "15:50"))
    exchange.fault(method="POST", path="/v2/orders", drop=True, when="after")  # sold, but the line drops

    summary = run_monitor(db, broker)  # the unanswered sale is looked up by its client order id at once

    assert summary.outcome == "success", summary.notes
    assert exchange.positions() == {}                          # the exchange did sell
    day = trade_row(db, day)
    assert (day["status"], day["exit_reason"], day["actual_pnl"]) == ("CLOSED", "DAY_END_EXIT", D("8.00"))
    assert [o["side"] for o in exchange.orders()
            if o["side"] == "sell" and o["order_class"] in ("", "simple")] == ["sell"]  # one sale only
    assert rows(db, day["id"], "EXIT")[0]["order_status"] == "filled"
    before = snapshot(db)
    exchange.clock(eastern("2026-11-20", "15:55"))
    run_monitor(db, broker)
    assert snapshot(db) == before
