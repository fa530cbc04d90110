"""trading/trailing.py: trailing stops ratcheted by the position monitor, on PostgreSQL and the paper exchange."""

from __future__ import annotations

from decimal import Decimal

import pytest

import position_monitor
from tests.factories import make_settings
from tests.monitor_support import audit_events, check_invariants, open_position, rows, run_monitor
from trading.errors import RejectedError
from trading.plan import parse_plan
from trading.trailing import STOP_RAISED, trailed_stop


def live_stop(db, trade_id: int) -> dict:
    stops = [r for r in rows(db, trade_id, "STOP_LOSS") if r["order_status"] in ("new", "held", "accepted",
                                                                                "pending_new")]
    assert len(stops) == 1, stops
    return stops[0]


def run_position_monitor(db, broker):
    """A position-monitor run, then the exchange's next pass and an order-monitor run: a raised stop
    is answered pending_replace and its successor is adopted by the sync once the replace completes."""
    from tests.factories import ExchangeAdmin

    summary = position_monitor.run_once(db, broker, settings=make_settings(), sleep=lambda _s: None)
    assert summary.outcome == "success", summary.as_dict()
    ExchangeAdmin(broker.base_url).step()
    run_monitor(db, broker, check=False)
    return summary


@pytest.mark.parametrize(("mark", "pct", "price", "stop"), [
    (Decimal("160"), Decimal("5"), None, Decimal("152.00")),
    (Decimal("163.37"), Decimal("5"), None, Decimal("155.20")),      # 155.2015 rounds down to the cent
    (Decimal("163.37"), None, Decimal("3"), Decimal("160.37")),
    (Decimal("0.8765"), Decimal("10"), None, Decimal("0.7888")),     # below $1: the 0.0001 tick
])
def test_the_trailed_stop_is_the_distance_below_the_mark_rounded_down_to_the_tick(mark, pct, price, stop):
    assert trailed_stop(mark, pct=pct, price=price) == stop


def test_a_plan_takes_one_trailing_distance_and_refuses_both_or_an_absurd_one():
    row = {"ticker": "AAPL", "decision": {"planned_entry": 150, "planned_sl": 145, "planned_tp": 160,
                                          "trade_style": "SWING", "trailing_stop_pct": "5"}}
    assert parse_plan(row).trail_pct == Decimal("5") and parse_plan(row).trail_price is None
    row["decision"] = {**row["decision"], "trail_price": 3}
    with pytest.raises(RejectedError, match="both set"):
        parse_plan(row)
    row["decision"] = {k: v for k, v in row["decision"].items() if k != "trail_price"} | {"trailing_stop_pct": 60}
    with pytest.raises(RejectedError, match="below 50"):
        parse_plan(row)
    row["decision"] = {k: v for k, v in row["decision"].items() if k != "trailing_stop_pct"} | {"trail_price": 150}
    with pytest.raises(RejectedError, match="must be below planned_entry"):
        parse_plan(row)


def test_trailing_stop_ratchets_up_with_the_high_never_down_and_exits_at_its_price_to_the_cent(db, exchange, broker):
    trade = open_position(db, exchange, broker, trailing_stop_pct=5)  # 10 @ 150.00, stop 145, target 160
    assert (trade["trailing_stop_pct"], live_stop(db, trade["id"])["stop_price"]) == (Decimal("5"), Decimal("145"))

    exchange.quotes(AAPL=("157.90", "158.10"))  # mid 158.00: stop 150.10
    run_position_monitor(db, broker)
    first = live_stop(db, trade["id"])
    assert first["stop_price"] == Decimal("150.10") and first["exit_reason"] == "TRAILING_STOP"
    assert db.get_by_id("trade_journal", trade["id"])["high_water_mark"] == Decimal("158.00")
    position = db.query("position_tracking", {"trade_journal_id": trade["id"]})[0]
    assert position["stop_loss_order_id"] == first["alpaca_order_id"]
    check_invariants(db, broker)  # the whole quantity has its broker-held stop after the move
    run_monitor(db, broker)       # and the order monitor agrees: nothing to repair

    exchange.quotes(AAPL=("155.90", "156.10"))  # lower: the mark and the stop stay
    run_position_monitor(db, broker)
    assert live_stop(db, trade["id"])["id"] == first["id"]
    assert db.get_by_id("trade_journal", trade["id"])["high_water_mark"] == Decimal("158.00")

    exchange.quotes(AAPL=("159.40", "159.60"))  # mid 159.50: stop 151.52 (151.525 rounded down)
    run_position_monitor(db, broker)
    second = live_stop(db, trade["id"])
    assert second["stop_price"] == Decimal("151.52")
    moves = audit_events(db, STOP_RAISED, "trade", trade["id"])
    assert [(m["old_value"], m["new_value"]) for m in moves] == [("145.00", "150.10"), ("150.10", "151.52")]
    check_invariants(db, broker)

    exchange.quotes(AAPL=("151.40", "151.50"))  # through the stop: it fills at the bid
    run_monitor(db, broker)
    closed = db.get_by_id("trade_journal", trade["id"])
    assert (closed["status"], closed["exit_reason"]) == ("CLOSED", "TRAILING_STOP")
    exit_price = Decimal(closed["exit_price"])
    assert closed["actual_pnl"] == (exit_price - Decimal("150")) * 10
    assert exit_price == Decimal("151.40")


def test_a_trade_without_a_trail_keeps_its_stop_where_the_plan_put_it(db, exchange, broker):
    trade = open_position(db, exchange, broker)
    exchange.quotes(AAPL=("158.90", "159.10"))
    summary = run_position_monitor(db, broker)
    assert live_stop(db, trade["id"])["stop_price"] == Decimal("145")
    assert summary.counts.get("trailing_raised", 0) == 0
    assert db.get_by_id("trade_journal", trade["id"])["high_water_mark"] is None
