"""trading/exits.py: exits that escalate until filled, on PostgreSQL and the paper exchange.

At every step the trade's shares are checked against the exchange: the working sells (the exit,
or the stop before it) cover every share the exchange holds, so no share is unprotected between
steps.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

import order_executor
from tests.factories import ExchangeAdmin, add_decision, make_settings
from tests.monitor_support import audit_events, open_position, rows, run_monitor, working_sells
from trading.broker import Quote
from trading.exits import EXIT_STEP, MARKET, ExitStep, Urgency, exit_step

STEP = 241  # just past EXIT_STEP_SECONDS (240)


def quote(bid: str, ask: str) -> Quote:
    return Quote("AAPL", Decimal(bid), Decimal(ask))


@pytest.mark.parametrize(("urgency", "step", "q", "expected"), [
    (Urgency.CRITICAL, 0, quote("150.00", "150.10"), MARKET),
    (Urgency.HIGH, 0, quote("150.00", "150.10"), ExitStep("limit", Decimal("150.00"))),
    (Urgency.HIGH, 1, quote("150.00", "150.10"), MARKET),
    (Urgency.NORMAL, 0, quote("150.00", "150.10"), ExitStep("limit", Decimal("150.05"))),
    (Urgency.NORMAL, 1, quote("150.00", "150.10"), ExitStep("limit", Decimal("150.02"))),  # 150.025, down
    (Urgency.NORMAL, 2, quote("150.00", "150.10"), ExitStep("limit", Decimal("150.00"))),
    (Urgency.NORMAL, 3, quote("150.00", "150.10"), MARKET),
    (Urgency.NORMAL, 0, quote("0", "0"), MARKET),                                         # no bid: market
    (Urgency.NORMAL, 0, quote("0.5000", "0.5003"), ExitStep("limit", Decimal("0.5001"))),  # sub-dollar tick
])
def test_each_step_of_an_exit_has_its_price_rounded_down_to_the_tick(urgency, step, q, expected):
    assert exit_step(urgency, step, 2, q) == expected


def covered(db, exchange, trade_id: int) -> None:
    """The exchange's working sells of the symbol cover exactly the shares it holds."""
    held = exchange.positions().get("AAPL", Decimal(0))
    selling = sum((Decimal(o["qty"]) - Decimal(o["filled_qty"]) for o in working_sells(exchange)), Decimal(0))
    stops_held = sum((Decimal(o["qty"]) for o in exchange.orders() if o["symbol"] == "AAPL"
                      and o["status"] == "held" and o["type"] in ("stop", "stop_limit")), Decimal(0))
    assert held > 0 and selling + stops_held >= held, (held, selling, stops_held, trade_id)
    assert selling <= held, f"sells beyond the shares held: {selling} > {held}"


def close(db, broker, trade_id: int, **env: str):
    add_decision(db, "AAPL", "CLOSE", trade_id=trade_id)
    summary = order_executor.run_once(db, broker, settings=make_settings(**env),
                                      sleep=ExchangeAdmin(broker.base_url).sleeper())
    assert summary.counts["closing"] == 1, summary.as_dict()


def test_normal_close_walks_its_limit_from_the_mid_to_the_bid_and_fills_with_every_share_covered(
        db, exchange, broker):
    settings = make_settings(EXIT_URGENCY_CLOSE="NORMAL")
    trade = open_position(db, exchange, broker)  # 10 @ 150.00, bracket stop 145 / target 160
    exchange.quotes(AAPL=("151.00", "152.00"))   # a wide market: the mid does not fill
    close(db, broker, trade["id"], EXIT_URGENCY_CLOSE="NORMAL")
    [first] = rows(db, trade["id"], "EXIT")
    assert (first["order_kind"], first["limit_price"], first["order_status"]) == ("limit", Decimal("151.50"), "new")
    covered(db, exchange, trade["id"])
    assert db.get_by_id("trade_journal", trade["id"])["exit_urgency"] == "NORMAL"

    run_monitor(db, broker, settings, check=False)  # not due yet: nothing moves
    assert [r["limit_price"] for r in rows(db, trade["id"], "EXIT")] == [Decimal("151.50")]

    exchange.clock(advance_seconds=STEP)
    run_monitor(db, broker, settings, check=False)  # step 1: halfway to the bid, by replace
    run_monitor(db, broker, settings, check=False)  # the replace completed: its successor is adopted
    exits = rows(db, trade["id"], "EXIT")
    assert [(r["limit_price"], r["order_status"]) for r in exits] == [(Decimal("151.50"), "replaced"),
                                                                      (Decimal("151.25"), "new")]
    covered(db, exchange, trade["id"])

    exchange.clock(advance_seconds=STEP)
    run_monitor(db, broker, settings, check=False)  # step 2: at the bid, marketable
    run_monitor(db, broker, settings, check=False)  # the replacement fills at the next pass
    trade = db.get_by_id("trade_journal", trade["id"])
    assert (trade["status"], trade["exit_reason"]) == ("CLOSED", "CLOSE_REQUESTED")
    assert (trade["exit_price"], trade["actual_pnl"]) == (Decimal("151.00"), Decimal("10.00"))
    assert exchange.positions() == {}
    steps = audit_events(db, EXIT_STEP, "trade", trade["id"])
    assert [s["reason"] for s in steps] == ["NORMAL exit step 1: limit 151.25", "NORMAL exit step 2: limit 151.00"]


def test_a_flatten_during_a_normal_close_walk_sells_at_the_market_in_the_same_run(db, exchange, broker):
    """Found by the demo's loss day: the kill switch's FLATTEN found a CLOSE's limit walking at
    NORMAL pace, said "exiting" and left it to walk; the walk reached its market order after the
    close and the shares stayed overnight with no stop. A more urgent exit takes over."""
    from trading.state import TradingMode, record_trading_state

    settings = make_settings(EXIT_URGENCY_CLOSE="NORMAL")
    trade = open_position(db, exchange, broker)
    exchange.quotes(AAPL=("151.00", "152.00"))  # the mid does not fill
    close(db, broker, trade["id"], EXIT_URGENCY_CLOSE="NORMAL")
    record_trading_state(db, TradingMode.FLATTEN, reason="loss limit", changed_by="alice")

    summary = run_monitor(db, broker, settings, check=False)

    assert summary.counts["flatten_exit_submitted"] == 1, summary.as_dict()
    closed = db.get_by_id("trade_journal", trade["id"])
    assert (closed["status"], closed["exit_reason"], closed["exit_urgency"]) == ("CLOSED", "FLATTENED", "CRITICAL")
    assert closed["exit_price"] == Decimal("151.00") and closed["actual_pnl"] == Decimal("10.00")
    exits = rows(db, trade["id"], "EXIT")
    assert [(r["order_kind"], r["order_status"]) for r in exits] == [("limit", "canceled"), ("market", "filled")]
    assert exchange.positions() == {} and working_sells(exchange) == []


def test_only_a_more_urgent_exit_takes_over_a_working_one():
    from trading.exits import more_urgent

    assert more_urgent("CRITICAL", "NORMAL") and more_urgent("HIGH", "NORMAL") and more_urgent("CRITICAL", "HIGH")
    assert not more_urgent("HIGH", "HIGH") and not more_urgent("NORMAL", "CRITICAL")
    assert not more_urgent("CRITICAL", None)  # an exit recorded without an urgency was a market order


def test_day_end_exit_whose_limit_does_not_fill_becomes_a_market_order_at_the_next_run(db, exchange, broker):
    from tests.factories import eastern

    settings = make_settings(EXIT_URGENCY_DAY_END="NORMAL", EXIT_WALK_STEPS=0)  # mid, then market
    trade = open_position(db, exchange, broker, settings=settings, trade_style="DAYTRADE", planned_tp=None)
    exchange.clock(eastern("2026-11-20", "15:50"))
    exchange.quotes(AAPL=("150.50", "150.70"))
    run_monitor(db, broker, settings, check=False)
    [limit] = rows(db, trade["id"], "EXIT")
    assert (limit["order_kind"], limit["limit_price"], limit["order_status"]) == ("limit", Decimal("150.60"), "new")
    covered(db, exchange, trade["id"])

    exchange.quotes(AAPL=("149.80", "149.90"))  # the market runs away from the limit
    exchange.clock(advance_seconds=STEP)
    run_monitor(db, broker, settings, check=False)
    trade = db.get_by_id("trade_journal", trade["id"])
    assert (trade["status"], trade["exit_reason"]) == ("CLOSED", "DAY_END_EXIT")
    kinds = [(r["order_kind"], r["order_status"]) for r in rows(db, trade["id"], "EXIT")]
    assert kinds == [("limit", "canceled"), ("market", "filled")]
    assert (trade["exit_price"], trade["actual_pnl"]) == (Decimal("149.80"), Decimal("-2.00"))
    assert exchange.positions() == {}


def test_an_exit_limit_canceled_outside_is_followed_by_the_next_step_and_the_shares_are_protected_meanwhile(
        db, exchange, broker):
    settings = make_settings(EXIT_URGENCY_CLOSE="NORMAL", EXIT_WALK_STEPS=0)
    trade = open_position(db, exchange, broker)
    exchange.quotes(AAPL=("151.00", "152.00"))
    close(db, broker, trade["id"], EXIT_URGENCY_CLOSE="NORMAL", EXIT_WALK_STEPS=0)
    [limit] = rows(db, trade["id"], "EXIT")
    broker.cancel_order(limit["alpaca_order_id"])  # a person cancels it in Alpaca's app

    run_monitor(db, broker, settings)  # not due: the shares get their stop back (invariants checked)
    assert [r["order_status"] for r in rows(db, trade["id"], "EXIT")] == ["canceled"]
    exchange.clock(advance_seconds=STEP)
    run_monitor(db, broker, settings, check=False)  # due: the stop goes, a market order sells
    trade = db.get_by_id("trade_journal", trade["id"])
    assert (trade["status"], trade["exit_price"]) == ("CLOSED", Decimal("151.00"))
    assert exchange.positions() == {}


def test_a_critical_close_is_one_market_order(db, exchange, broker):
    trade = open_position(db, exchange, broker)
    exchange.quotes(AAPL=("151.00", "152.00"))
    close(db, broker, trade["id"], EXIT_URGENCY_CLOSE="CRITICAL")
    [sell] = rows(db, trade["id"], "EXIT")
    assert (sell["order_kind"], sell["order_status"]) == ("market", "filled")
    assert db.get_by_id("trade_journal", trade["id"])["exit_price"] == Decimal("151.00")
