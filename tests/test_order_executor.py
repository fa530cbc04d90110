"""order_executor against a real PostgreSQL and the paper exchange, through alpaca-py.

Every scenario starts at Friday 2026-11-20 09:45 ET with a clean database and a fresh
exchange book. AAPL rests far above the plans' entries (228.50) unless a test sets a quote,
so limit entries at 150 stay working; tests that need a fill set ``AAPL=(149.90, 150.00)``.
Refusals are checked the way an operator finds them: by SQL on ``audit_event`` and
``analysis_decision``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import order_executor
from alpaca_client import AlpacaBroker
from db_layer import TradingDB
from order_executor import run_once
from tests.factories import FRIDAY_0945, ExchangeAdmin, add_decision, eastern, make_settings, snapshot
from trading import logs
from trading.broker import OrderRequest
from trading.program import RunSummary

ROOT = Path(__file__).resolve().parent.parent
FILLING_QUOTE = ("149.90", "150.00")  # a buy limit at 150 fills at the exchange's next matching pass


# --------------------------------------------------------------------------- helpers


def run(db: TradingDB, broker: AlpacaBroker, **limits: str | int) -> RunSummary:
    """One executor run on the broker's clock, with test limits (overridden per scenario); its waits
    between cancel confirmations pass the exchange's simulated clock."""
    return run_once(db, broker, settings=make_settings(**limits), sleep=ExchangeAdmin(broker.base_url).sleeper())


def decision(db: TradingDB, decision_id: int) -> dict[str, Any]:
    row = db.get_by_id("analysis_decision", decision_id)
    assert row is not None
    return row


def audit_reasons(db: TradingDB, decision_id: int, event: str) -> list[str]:
    """The reasons of a decision's audit rows of one event, oldest first (what an operator queries)."""
    rows = db.execute_query(
        "SELECT reason FROM audit_event WHERE entity_type = 'decision' AND entity_id = %s AND event = %s "
        "ORDER BY id", (decision_id, event))
    return [row["reason"] for row in rows]


def refusal(db: TradingDB, decision_id: int) -> str:
    """The one refusal reason of a decision, which must be marked executed (not retried)."""
    reasons = audit_reasons(db, decision_id, "DECISION_REFUSED")
    assert len(reasons) == 1, reasons
    row = decision(db, decision_id)
    assert row["executed"] is True
    assert row["execution_time"] is not None
    return reasons[0]


def refusal_code(db: TradingDB, decision_id: int) -> str:
    row = db.execute_one("SELECT details->>'code' AS code FROM audit_event WHERE entity_type = 'decision' "
                         "AND entity_id = %s AND event = 'DECISION_REFUSED'", (decision_id,))
    assert row is not None
    return str(row["code"])


def entries(db: TradingDB) -> list[dict[str, Any]]:
    return db.query("order_execution", {"order_type": "ENTRY"}, order_by="id")


def exchange_entries(exchange: ExchangeAdmin) -> list[dict[str, Any]]:
    """Orders at the exchange sent with the executor's client order ids (legs excluded)."""
    return [o for o in exchange.orders() if str(o["client_order_id"]).startswith("tm-")]


def exchange_order(exchange: ExchangeAdmin, order_id: str) -> dict[str, Any]:
    return next(o for o in exchange.orders() if o["id"] == order_id)


def legs_at_exchange(exchange: ExchangeAdmin, order_id: str) -> list[dict[str, Any]]:
    """The legs of an order, as the exchange nests them (``GET /v2/orders/{id}?nested=true``)."""
    response = exchange.session.get(f"{exchange.url}/v2/orders/{order_id}", params={"nested": "true"},
                                    headers={"APCA-API-KEY-ID": "test", "APCA-API-SECRET-KEY": "test"}, timeout=10)
    response.raise_for_status()
    return list(response.json()["legs"] or [])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def place_trade(db: TradingDB, broker: AlpacaBroker, ticker: str = "AAPL", **plan: Any) -> int:
    """A trade placed by an earlier executor run; returns its trade_journal id."""
    decision_id = add_decision(db, ticker, **plan)
    assert run(db, broker).counts["placed"] == 1
    trade_id = decision(db, decision_id)["existing_trade_journal_id"]
    assert trade_id is not None
    return int(trade_id)


def monitor(db: TradingDB, broker: AlpacaBroker) -> RunSummary:
    """One order monitor run (its waits pass the exchange's simulated clock)."""
    import order_monitor

    return order_monitor.run_once(db, broker, settings=make_settings(), sleep=ExchangeAdmin(broker.base_url).sleeper())


def settle(db: TradingDB, broker: AlpacaBroker, exchange: ExchangeAdmin) -> None:
    """The exchange's next matching pass (orders sent are acknowledged and may fill), then the order
    monitor records what happened, as its next scheduled run would."""
    exchange.step()
    monitor(db, broker)


def place_filled_trade(db: TradingDB, broker: AlpacaBroker, exchange: ExchangeAdmin, ticker: str = "AAPL",
                       **plan: Any) -> int:
    """A trade whose entry was marketable (FILLING_QUOTE): placed by an earlier executor run, filled at the
    exchange's next matching pass and recorded as POSITION by the order monitor."""
    exchange.quotes(**{ticker: FILLING_QUOTE})
    trade_id = place_trade(db, broker, ticker, **plan)
    settle(db, broker, exchange)
    assert db.get_by_id("trade_journal", trade_id)["status"] == "POSITION"
    return trade_id


@pytest.fixture
def own_exchange() -> Iterator[ExchangeAdmin]:
    """A private exchange for scenarios that move the simulated clock forward: the clock never
    goes back (not even on reset), so the session's shared exchange must stay at Friday 09:45."""
    from paper_exchange import PaperExchange
    from paper_exchange.ratelimit import UNTHROTTLED_REQUESTS_PER_MINUTE
    from paper_exchange.server import start_server

    handle = start_server(exchange=PaperExchange(seed=7, simulated_clock=True, start_time=FRIDAY_0945,
                                                 price_simulation=False),
                          rate_limit=UNTHROTTLED_REQUESTS_PER_MINUTE)
    try:
        yield ExchangeAdmin(handle.url)
    finally:
        handle.stop()


@pytest.fixture
def own_broker(own_exchange: ExchangeAdmin) -> AlpacaBroker:
    return AlpacaBroker(base_url=own_exchange.url, data_url=own_exchange.url, timeout=3)


# --------------------------------------------------------------------------- NEW_TRADE


def test_swing_decision_becomes_one_bracket_with_held_legs(db, exchange, broker):
    decision_id = add_decision(db, "AAPL", planned_entry="150.00", planned_sl="145.00", planned_tp="160.00",
                               planned_qty=10)

    summary = run(db, broker)

    assert summary.outcome == "success"
    assert summary.counts["placed"] == 1
    [sent] = exchange_entries(exchange)
    assert (sent["order_class"], sent["side"], sent["type"], sent["time_in_force"]) == (
        "bracket", "buy", "limit", "gtc")
    assert (Decimal(sent["qty"]), Decimal(sent["limit_price"])) == (Decimal("10"), Decimal("150.00"))
    legs = {leg["type"]: leg for leg in legs_at_exchange(exchange, sent["id"])}
    assert {leg["status"] for leg in legs.values()} == {"held"}
    assert Decimal(legs["limit"]["limit_price"]) == Decimal("160.00")
    assert Decimal(legs["stop"]["stop_price"]) == Decimal("145.00")

    [trade] = db.query("trade_journal")
    assert (trade["status"], trade["symbol"], trade["trade_style"]) == ("ORDERED", "AAPL", "SWING")
    assert (trade["planned_entry"], trade["planned_sl"], trade["planned_tp"], trade["planned_qty"]) == (
        Decimal("150.00"), Decimal("145.00"), Decimal("160.00"), Decimal("10"))
    assert trade["initial_analysis_id"] == decision_id
    rows = {r["order_type"]: r for r in db.query("order_execution")}
    assert set(rows) == {"ENTRY", "TAKE_PROFIT", "STOP_LOSS"}
    assert rows["ENTRY"]["alpaca_order_id"] == sent["id"]
    assert rows["ENTRY"]["client_order_id"] == sent["client_order_id"]
    assert rows["ENTRY"]["order_status"] == "pending_new"  # the broker's answer, recorded as given
    assert (rows["TAKE_PROFIT"]["order_status"], rows["STOP_LOSS"]["order_status"]) == ("held", "held")
    assert rows["TAKE_PROFIT"]["alpaca_order_id"] == legs["limit"]["id"]
    assert rows["STOP_LOSS"]["alpaca_order_id"] == legs["stop"]["id"]
    assert rows["STOP_LOSS"]["stop_price"] == Decimal("145.00")

    row = decision(db, decision_id)
    assert row["executed"] is True
    assert row["existing_order_id"] == sent["id"]
    assert row["existing_trade_journal_id"] == trade["id"]
    [accepted] = audit_reasons(db, decision_id, "DECISION_ACCEPTED")
    assert accepted == "bracket entry placed: buy 10 AAPL limit 150.00, stop 145.00, target 160.00"
    assert broker.calls.counts["submit_order"] == 1


def test_daytrade_decision_becomes_one_oto_day_order_with_a_stop_leg(db, exchange, broker):
    decision_id = add_decision(db, "MSFT", trade_style="DAYTRADE", planned_entry="400.00", planned_sl="395.50",
                               planned_tp=None, planned_qty=5)

    assert run(db, broker).counts["placed"] == 1

    [sent] = exchange_entries(exchange)
    assert (sent["order_class"], sent["time_in_force"], sent["symbol"]) == ("oto", "day", "MSFT")
    assert Decimal(sent["limit_price"]) == Decimal("400.00")
    [leg] = legs_at_exchange(exchange, sent["id"])
    assert (leg["type"], leg["status"], leg["time_in_force"]) == ("stop", "held", "day")
    assert Decimal(leg["stop_price"]) == Decimal("395.50")
    [trade] = db.query("trade_journal")
    assert (trade["trade_style"], trade["planned_tp"]) == ("DAYTRADE", None)
    assert sorted(r["order_type"] for r in db.query("order_execution")) == ["ENTRY", "STOP_LOSS"]
    assert decision(db, decision_id)["existing_order_id"] == sent["id"]


def test_marketable_entry_fills_at_the_next_pass_and_the_monitor_opens_the_position_with_armed_legs(
        db, exchange, broker):
    exchange.quotes(AAPL=FILLING_QUOTE)
    add_decision(db, "AAPL", planned_qty=10)

    run(db, broker)

    [trade] = db.query("trade_journal")
    assert trade["status"] == "ORDERED"  # answered pending_new: nothing is filled yet
    settle(db, broker, exchange)
    [trade] = db.query("trade_journal")
    assert (trade["status"], trade["actual_entry"], trade["actual_qty"]) == ("POSITION", Decimal("150.00"),
                                                                             Decimal("10"))
    [position] = db.query("position_tracking")
    assert (position["qty"], position["avg_entry_price"]) == (Decimal("10"), Decimal("150.00"))
    assert exchange.positions() == {"AAPL": Decimal("10")}
    statuses = {r["order_type"]: r["order_status"] for r in db.query("order_execution")}
    # As at Alpaca: the take-profit leg works, the stop leg waits "held" for its trigger.
    assert statuses == {"ENTRY": "filled", "TAKE_PROFIT": "new", "STOP_LOSS": "held"}


def test_plan_without_quantity_is_sized_by_risk_per_trade(db, exchange, broker):
    add_decision(db, "AAPL", planned_qty=None, planned_entry="150", planned_sl="145")

    run(db, broker, RISK_PER_TRADE="500")

    [sent] = exchange_entries(exchange)
    assert Decimal(sent["qty"]) == Decimal("100")  # 500 / (150 - 145)


def test_several_decisions_in_one_run_each_end_their_own_way(db, exchange, broker):
    first = add_decision(db, "AAPL", planned_qty=10)
    bad = add_decision(db, "MSFT", planned_sl=None)
    second = add_decision(db, "NVDA", planned_entry="130", planned_sl="125", planned_tp="140", planned_qty=20)
    noop = add_decision(db, None, "NO_ACTION")
    not_approved = add_decision(db, "AMD", approve=False)

    summary = run(db, broker)

    assert summary.counts == {"decisions": 4, "placed": 2, "refused": 1, "no_action": 1}
    assert sorted(o["symbol"] for o in exchange_entries(exchange)) == ["AAPL", "NVDA"]
    assert "planned_sl is missing" in refusal(db, bad)
    assert all(decision(db, d)["executed"] for d in (first, second, noop))
    assert decision(db, not_approved)["executed"] is False
    run_row = db.execute_one("SELECT outcome, counts FROM program_run WHERE id = %s", (summary.run_id,))
    assert run_row == {"outcome": "success", "counts": {"decisions": 4, "placed": 2, "refused": 1, "no_action": 1}}


def test_run_without_decisions_only_reads_the_clock(db, exchange, broker):
    summary = run(db, broker)

    assert summary.outcome == "success"
    assert dict(summary.counts) == {}
    assert broker.calls.counts == {"get_clock": 1, "get_calendar": 1}
    assert exchange.stats()["total"] == 2
    assert db.query("trade_journal") == [] and db.query("order_execution") == []


# --------------------------------------------------------------------------- CANCEL, AMEND, CLOSE, NO_ACTION


def test_cancel_decision_cancels_the_working_entry_and_its_held_legs(db, exchange, broker):
    trade_id = place_trade(db, broker, "AAPL")
    cancel = add_decision(db, "AAPL", "CANCEL", trade_id=trade_id)

    summary = run(db, broker)

    assert summary.counts["cancelled"] == 1
    assert {o["status"] for o in exchange.orders()} == {"canceled"}
    trade = db.get_by_id("trade_journal", trade_id)
    assert (trade["status"], trade["exit_reason"]) == ("CANCELLED", "CANCEL_REQUESTED")
    assert {r["order_status"] for r in db.query("order_execution")} == {"canceled"}
    assert audit_reasons(db, cancel, "DECISION_ACCEPTED") == [f"trade {trade_id} entry canceled at the broker"]
    assert decision(db, cancel)["executed"] is True


def test_cancel_decision_naming_the_broker_order_id_finds_its_trade(db, exchange, broker):
    trade_id = place_trade(db, broker, "AAPL")
    [entry] = entries(db)
    cancel = add_decision(db, "AAPL", "CANCEL", order_id=entry["alpaca_order_id"])

    run(db, broker)

    assert db.get_by_id("trade_journal", trade_id)["status"] == "CANCELLED"
    assert decision(db, cancel)["existing_trade_journal_id"] == trade_id


def test_cancel_of_a_filled_entry_leaves_the_protected_position_alone(db, exchange, broker):
    trade_id = place_filled_trade(db, broker, exchange, "AAPL")
    cancel = add_decision(db, "AAPL", "CANCEL", trade_id=trade_id)

    run(db, broker)

    reason = refusal(db, cancel)
    assert f"trade {trade_id} entry already filled (10 @ 150): protection left in place" in reason
    assert refusal_code(db, cancel) == "ALREADY_FILLED"
    assert db.get_by_id("trade_journal", trade_id)["status"] == "POSITION"
    assert exchange.positions() == {"AAPL": Decimal("10")}
    assert sorted(o["status"] for o in exchange.orders()) == ["filled", "held", "new"]  # entry, stop, target


def test_amend_decision_replaces_the_unfilled_entry_with_the_new_plan(db, exchange, broker):
    old_id = place_trade(db, broker, "AAPL")
    [old_entry] = entries(db)
    amend = add_decision(db, "AAPL", "AMEND", trade_id=old_id, planned_entry="148.00", planned_sl="143.00",
                         planned_tp="158.00", planned_qty=12)

    summary = run(db, broker)

    assert summary.counts["amended"] == 1
    old = db.get_by_id("trade_journal", old_id)
    assert (old["status"], old["exit_reason"]) == ("CANCELLED", "AMENDED")
    assert exchange_order(exchange, old_entry["alpaca_order_id"])["status"] == "canceled"
    [new] = db.query("trade_journal", {"status": "ORDERED"})
    assert new["replaces_trade_journal_id"] == old_id
    assert (new["planned_entry"], new["planned_sl"], new["planned_tp"], new["planned_qty"]) == (
        Decimal("148.00"), Decimal("143.00"), Decimal("158.00"), Decimal("12"))
    working = [o for o in exchange_entries(exchange) if o["status"] == "pending_new"]
    assert len(working) == 1
    assert (Decimal(working[0]["limit_price"]), Decimal(working[0]["qty"])) == (Decimal("148.00"), Decimal("12"))
    row = decision(db, amend)
    assert (row["existing_trade_journal_id"], row["existing_order_id"]) == (new["id"], working[0]["id"])
    [accepted] = audit_reasons(db, amend, "DECISION_ACCEPTED")
    assert accepted.endswith(f"replaces trade {old_id}")


def test_invalid_amendment_leaves_the_trade_it_would_replace_working(db, exchange, broker):
    old_id = place_trade(db, broker, "AAPL")
    amend = add_decision(db, "AAPL", "AMEND", trade_id=old_id, planned_entry="148", planned_sl="149")

    run(db, broker)

    assert "planned_sl 149 must be below planned_entry 148" in refusal(db, amend)
    assert db.get_by_id("trade_journal", old_id)["status"] == "ORDERED"
    assert [o["status"] for o in exchange_entries(exchange)] == ["pending_new"]  # untouched


def test_amendment_naming_another_symbol_is_refused_before_anything_is_canceled(db, exchange, broker):
    old_id = place_trade(db, broker, "AAPL")
    amend = add_decision(db, "MSFT", "AMEND", trade_id=old_id, planned_entry="400", planned_sl="390",
                         planned_tp="420")

    run(db, broker)

    assert f"AMEND of trade {old_id} (AAPL) names another symbol MSFT" in refusal(db, amend)
    assert db.get_by_id("trade_journal", old_id)["status"] == "ORDERED"
    assert [o["status"] for o in exchange_entries(exchange)] == ["pending_new"]  # untouched


def test_amendment_refused_by_a_risk_limit_leaves_the_old_trade_working(db, exchange, broker):
    old_id = place_trade(db, broker, "AAPL")
    amend = add_decision(db, "AAPL", "AMEND", trade_id=old_id, planned_qty=100)

    run(db, broker, MAX_TOTAL_EXPOSURE_PCT="10")

    assert refusal(db, amend) == ("MAX_TOTAL_EXPOSURE_PCT: exposure 0.00 + 15,000.00 exceeds 10% of equity "
                                  f"= 10,000.00; trade {old_id} left working")
    assert db.get_by_id("trade_journal", old_id)["status"] == "ORDERED"
    assert [o["status"] for o in exchange_entries(exchange)] == ["pending_new"]  # untouched


def test_amend_of_a_filled_trade_is_refused_and_the_position_keeps_its_protection(db, exchange, broker):
    trade_id = place_filled_trade(db, broker, exchange, "AAPL")
    amend = add_decision(db, "AAPL", "AMEND", trade_id=trade_id, planned_entry="148")

    run(db, broker)

    assert refusal(db, amend) == (f"trade {trade_id} is POSITION (filled 10 @ 150): the amendment needs an unfilled "
                                  "entry; nothing new placed")
    assert sorted(o["status"] for o in exchange.orders()) == ["filled", "held", "new"]
    assert len(db.query("trade_journal")) == 1


def test_amend_whose_new_entry_meets_an_outage_is_finished_next_run_without_canceling_again(db, exchange, broker):
    old_id = place_trade(db, broker, "AAPL")
    amend = add_decision(db, "AAPL", "AMEND", trade_id=old_id, planned_entry="148", planned_sl="143")
    exchange.fault(status=503, method="POST", path="/v2/orders", count=1)

    first = run(db, broker)

    assert first.counts["deferred"] == 1
    assert db.get_by_id("trade_journal", old_id)["exit_reason"] == "AMENDED"
    assert decision(db, amend)["executed"] is False
    broker.calls.reset()

    second = run(db, broker)

    assert second.counts["amended"] == 1
    assert broker.calls.counts.get("cancel_order", 0) == 0
    working = [o for o in exchange_entries(exchange) if o["status"] == "pending_new"]
    assert [Decimal(o["limit_price"]) for o in working] == [Decimal("148.00")]
    [new] = db.query("trade_journal", {"status": "ORDERED"})
    assert new["replaces_trade_journal_id"] == old_id
    assert decision(db, amend)["existing_trade_journal_id"] == new["id"]


def test_amend_frees_only_the_slot_of_the_trade_it_replaces(db, exchange, broker):
    first = place_trade(db, broker, "AAPL")
    place_trade(db, broker, "MSFT", planned_entry="400", planned_sl="390", planned_tp="420", planned_qty=2)
    amend = add_decision(db, "AAPL", "AMEND", trade_id=first, planned_entry="149")
    third = add_decision(db, "NVDA", planned_entry="130", planned_sl="125", planned_tp="140")

    run(db, broker, MAX_OPEN_TRADES=2)

    assert decision(db, amend)["existing_trade_journal_id"] != first
    assert audit_reasons(db, amend, "DECISION_ACCEPTED")
    assert refusal(db, third) == "MAX_OPEN_TRADES: 2 trades open, limit 2"
    assert db.execute_one("SELECT count(*) AS n FROM trade_journal WHERE status = 'ORDERED'")["n"] == 2


def test_close_decision_in_the_session_cancels_protection_and_sells_with_a_limit_at_the_bid(db, exchange, broker):
    trade_id = place_filled_trade(db, broker, exchange, "AAPL")
    exchange.quotes(AAPL=("151.20", "151.30"))
    close = add_decision(db, "AAPL", "CLOSE", trade_id=trade_id)

    summary = run(db, broker)

    assert summary.counts["closing"] == 1
    # The legs were confirmed canceled before the sell was sent; the run then waited for the sell to
    # fill (answered pending_new, filled at the exchange's next pass) and recorded it.
    assert exchange.positions() == {}
    trade = db.get_by_id("trade_journal", trade_id)
    assert (trade["status"], trade["exit_reason"]) == ("CLOSED", "CLOSE_REQUESTED")
    assert (trade["exit_price"], trade["actual_pnl"]) == (Decimal("151.20"), Decimal("12.00"))
    assert db.query("position_tracking") == []
    statuses = {r["order_type"]: r["order_status"] for r in db.query("order_execution")}
    assert statuses == {"ENTRY": "filled", "TAKE_PROFIT": "canceled", "STOP_LOSS": "canceled", "EXIT": "filled"}
    # EXIT_URGENCY_CLOSE=HIGH (the default): a limit at the bid, marketable, so it fills at once.
    [sell] = [o for o in exchange.orders() if o["side"] == "sell" and o["status"] == "filled"]
    assert (sell["type"], Decimal(sell["qty"]), Decimal(sell["limit_price"])) == ("limit", Decimal("10"),
                                                                                 Decimal("151.20"))
    assert audit_reasons(db, close, "DECISION_ACCEPTED") == [
        f"trade {trade_id}: protection canceled, HIGH exit (limit, then market) sent"]


def test_close_decision_outside_the_session_waits_for_the_next_session(db, own_exchange, own_broker):
    exchange, broker = own_exchange, own_broker
    trade_id = place_filled_trade(db, broker, exchange, "AAPL")
    exchange.clock(eastern("2026-11-20", "18:00"))
    close = add_decision(db, "AAPL", "CLOSE", trade_id=trade_id)

    evening = run(db, broker)

    assert evening.counts["deferred"] == 1
    assert decision(db, close)["executed"] is False
    assert "market closed" in audit_reasons(db, close, "DECISION_DEFERRED")[0]
    assert exchange.positions() == {"AAPL": Decimal("10")}
    assert db.get_by_id("trade_journal", trade_id)["status"] == "POSITION"
    assert not [o for o in exchange.orders() if o["side"] == "sell" and o["order_class"] in ("", "simple")]

    exchange.clock(eastern("2026-11-23", "09:45"))  # Monday
    monday = run(db, broker)

    assert monday.counts["closing"] == 1
    assert decision(db, close)["executed"] is True
    settle(db, broker, exchange)
    assert exchange.positions() == {}
    assert db.get_by_id("trade_journal", trade_id)["status"] == "CLOSED"


def test_close_refused_by_the_broker_puts_the_protection_back(db, exchange, broker):
    trade_id = place_filled_trade(db, broker, exchange, "AAPL")
    close = add_decision(db, "AAPL", "CLOSE", trade_id=trade_id)
    exchange.fault(status=403, message="trading is suspended for this account", method="POST", path="/v2/orders",
                   count=1)

    run(db, broker)

    assert refusal(db, close) == (f"trade {trade_id}: the broker refused the exit; protection restored "
                                  "(see audit_event)")
    assert refusal_code(db, close) == "CLOSE_FAILED"
    assert exchange.positions() == {"AAPL": Decimal("10")}
    assert db.get_by_id("trade_journal", trade_id)["status"] == "POSITION"
    # The bracket legs were canceled for the exit; one OCO (target + stop) for all 10 shares replaced them.
    exchange.step()  # the OCO is acknowledged at the next pass
    working = [o for o in exchange.orders() if o["status"] in ("new", "held")]
    assert sorted((o["type"], Decimal(o["qty"])) for o in working) == [("limit", Decimal("10")),
                                                                       ("stop", Decimal("10"))]
    assert {o["order_class"] for o in working} == {"oco"}
    [exit_row] = db.query("order_execution", {"order_type": "EXIT"})
    assert exit_row["order_status"] == "rejected"
    assert "trading is suspended" in exit_row["error_message"]


def test_close_of_a_closed_trade_is_refused(db, exchange, broker):
    trade_id = place_filled_trade(db, broker, exchange, "AAPL")
    add_decision(db, "AAPL", "CLOSE", trade_id=trade_id)
    run(db, broker)
    settle(db, broker, exchange)
    again = add_decision(db, "AAPL", "CLOSE", trade_id=trade_id)

    run(db, broker)

    assert refusal(db, again) == f"trade {trade_id} is already CLOSED: nothing to close"
    assert [o["side"] for o in exchange.orders()
            if o["side"] == "sell" and o["order_class"] in ("", "simple")] == ["sell"]


def test_close_of_an_unfilled_trade_cancels_its_entry(db, exchange, broker):
    trade_id = place_trade(db, broker, "AAPL")
    add_decision(db, "AAPL", "CLOSE", trade_id=trade_id)

    assert run(db, broker).counts["cancelled"] == 1

    assert db.get_by_id("trade_journal", trade_id)["status"] == "CANCELLED"
    assert {o["status"] for o in exchange.orders()} == {"canceled"}
    assert not [o for o in exchange.orders() if o["side"] == "sell" and o["order_class"] in ("", "simple")]


def test_no_action_recounts_days_open_from_the_broker_calendar(db, exchange, broker):
    """Issue 11 scenario 16: a review on Monday of a position bought on the Wednesday before
    Thanksgiving shows 2 trading days (Friday, Monday), not one more than the last review."""
    import order_monitor

    exchange.clock(eastern("2026-11-25", "10:00"))
    trade_id = place_trade(db, broker, "AAPL")
    exchange.quotes(AAPL=FILLING_QUOTE)
    order_monitor.run_once(db, broker, settings=make_settings(), sleep=lambda _s: None)
    assert db.get_by_id("trade_journal", trade_id)["status"] == "POSITION"
    exchange.clock(eastern("2026-11-30", "09:45"))
    noop = add_decision(db, "AAPL", "NO_ACTION", trade_id=trade_id)
    broker.calls.reset()

    assert run(db, broker).counts["no_action"] == 1

    assert db.get_by_id("trade_journal", trade_id)["days_open"] == 2
    assert decision(db, noop)["executed"] is True
    assert audit_reasons(db, noop, "DECISION_ACCEPTED") == [f"trade {trade_id} days_open 2"]
    assert broker.calls.counts.get("submit_order", 0) == 0


# --------------------------------------------------------------------------- validation refusals

VALIDATION_CASES = [
    pytest.param({"decision": "{not json"}, "decision is not valid JSON", id="malformed_json"),
    pytest.param({"decision": None}, "decision is missing (NULL)", id="null_decision"),
    pytest.param({"planned_entry": None}, "planned_entry is missing", id="missing_entry"),
    pytest.param({"planned_sl": None}, "planned_sl is missing", id="missing_stop"),
    pytest.param({"planned_tp": None}, "planned_tp is missing", id="swing_without_target"),
    pytest.param({"planned_entry": -150}, "planned_entry must be positive, got -150", id="negative_entry"),
    pytest.param({"planned_sl": "abc"}, "planned_sl", id="price_not_a_number"),
    pytest.param({"planned_sl": 150}, "planned_sl 150 must be below planned_entry 150", id="stop_equal_to_entry"),
    pytest.param({"planned_sl": 151}, "planned_sl 151 must be below planned_entry 150", id="stop_above_entry"),
    pytest.param({"planned_tp": 149}, "planned_tp 149 must be above planned_entry 150", id="target_below_entry"),
    pytest.param({"trade_style": "SCALP"}, "trade_style must be SWING or DAYTRADE, got 'SCALP'",
                 id="unknown_trade_style"),
    pytest.param({"trade_style": "DAYTRADE", "time_in_force": "gtc"}, "its time_in_force must be day",
                 id="daytrade_with_gtc"),
    pytest.param({"planned_qty": -5}, "planned_qty must be positive, got -5", id="negative_quantity"),
    pytest.param({"position_size_pct": 150, "planned_qty": None},
                 "position_size_pct must be a percent between 0 and 100, got 150", id="size_pct_over_100"),
    pytest.param({"ticker": "ZZZZ"}, "unknown symbol ZZZZ: the broker does not list it", id="unknown_symbol"),
    pytest.param({"ticker": "12$"}, "ticker '12$' is not a valid symbol", id="malformed_ticker"),
    pytest.param({"ticker": None}, "ticker is missing", id="missing_ticker"),
]


@pytest.mark.parametrize(("overrides", "reason"), VALIDATION_CASES)
def test_invalid_new_trade_is_refused_with_its_reason_and_sends_nothing(db, exchange, broker, overrides, reason):
    ticker = overrides.pop("ticker", "AAPL")
    decision_id = add_decision(db, ticker, **overrides)

    summary = run(db, broker)

    assert summary.counts["refused"] == 1
    assert reason in refusal(db, decision_id)
    assert broker.calls.counts.get("submit_order", 0) == 0
    assert exchange.orders() == []
    assert db.query("trade_journal") == [] and db.query("order_execution") == []


@pytest.mark.parametrize(("overrides", "words"), [
    pytest.param({"planned_qty": "1e40"}, "planned_qty 1E+40 is too large", id="qty_1e40"),
    pytest.param({"planned_entry": "1e30", "planned_tp": "1e31", "planned_sl": "1"}, "planned_entry 1E+30 is too large",
                 id="entry_1e30"),
    pytest.param({"planned_entry": "1,05"}, "ambiguous", id="comma"),
])
def test_odd_numbers_are_refused_once_with_a_reason_not_failed_every_run(db, exchange, broker, overrides, words):
    decision_id = add_decision(db, "AAPL", **overrides)

    first = run(db, broker)
    second = run(db, broker)

    assert first.counts["refused"] == 1 and "failed" not in first.counts
    assert words in refusal(db, decision_id)
    assert dict(second.counts) == {}
    assert exchange.orders() == []


def test_untradable_symbol_is_refused(db, exchange, broker):
    exchange.symbols(HALTD={"price": "12.50", "tradable": False})
    decision_id = add_decision(db, "HALTD", planned_entry="12.50", planned_sl="12.00", planned_tp="13.50")

    run(db, broker)

    assert refusal(db, decision_id) == "HALTD is not tradable at the broker"
    assert refusal_code(db, decision_id) == "NOT_TRADABLE"
    assert exchange.orders() == []


@pytest.mark.parametrize(("action", "make_reference", "reason"), [
    pytest.param("BUY_MORE", None, "unknown primary_action 'BUY_MORE'", id="unknown_action"),
    pytest.param("CANCEL", lambda: {"trade_id": 999}, "trade 999 does not exist", id="cancel_unknown_trade"),
    pytest.param("CLOSE", lambda: {}, "the decision names no trade", id="close_naming_no_trade"),
    pytest.param("AMEND", lambda: {"trade_id": 42}, "trade 42 does not exist", id="amend_unknown_trade"),
    pytest.param("CANCEL", lambda: {"order_id": "no-such-order"}, "order no-such-order is not an order of this system",
                 id="cancel_unknown_order_id"),
    pytest.param("NO_ACTION", lambda: {"trade_id": 77}, "trade 77 does not exist", id="no_action_unknown_trade"),
])
def test_decision_naming_no_known_trade_or_action_is_refused(db, exchange, broker, action, make_reference, reason):
    decision_id = add_decision(db, "AAPL", action, **(make_reference() if make_reference else {}))

    run(db, broker)

    assert reason in refusal(db, decision_id)
    assert exchange.stats()["requests"].get("POST /v2/orders") is None


def test_no_action_naming_no_trade_is_accepted_with_nothing_to_update(db, exchange, broker):
    noop = add_decision(db, None, "NO_ACTION")

    assert run(db, broker).counts["no_action"] == 1

    assert audit_reasons(db, noop, "DECISION_ACCEPTED") == ["NO_ACTION without a referenced trade: nothing to update"]
    assert decision(db, noop)["executed"] is True


def test_cancel_of_a_trade_already_cancelled_is_refused(db, exchange, broker):
    trade_id = place_trade(db, broker, "AAPL")
    add_decision(db, "AAPL", "CANCEL", trade_id=trade_id)
    run(db, broker)
    again = add_decision(db, "AAPL", "CANCEL", trade_id=trade_id)

    run(db, broker)

    assert refusal(db, again) == f"trade {trade_id} is already CANCELLED: nothing to cancel"


# --------------------------------------------------------------------------- risk


def test_size_above_the_notional_cap_is_capped_not_refused(db, exchange, broker):
    decision_id = add_decision(db, "AAPL", planned_qty=None)  # risk sizing: 500 / 5 = 100 shares

    run(db, broker, MAX_POSITION_NOTIONAL="3000")

    [sent] = exchange_entries(exchange)
    assert Decimal(sent["qty"]) == Decimal("20")
    [intent] = audit_reasons(db, decision_id, "ORDER_INTENT")
    assert intent == ("sized 20 shares by risk 500.00 / 5.00 per share; risk 500.00 / 5.00 per share gave 100 shares, "
                      "capped to 20 by MAX_POSITION_NOTIONAL")


def test_percent_of_equity_sizing_is_capped_by_the_equity_limit(db, exchange, broker):
    decision_id = add_decision(db, "AAPL", planned_qty=None, position_size_pct=30)  # 30% of 100,000 = 200 shares

    run(db, broker, MAX_POSITION_PCT_OF_EQUITY="6")

    [sent] = exchange_entries(exchange)
    assert Decimal(sent["qty"]) == Decimal("40")  # 6% of 100,000 / 150
    [intent] = audit_reasons(db, decision_id, "ORDER_INTENT")
    assert "30% of equity gave 200 shares, capped to 40 by MAX_POSITION_PCT_OF_EQUITY" in intent


def test_percent_of_equity_sizes_whole_shares(db, exchange, broker):
    add_decision(db, "AAPL", planned_qty=None, position_size_pct="2.5")

    run(db, broker)

    [sent] = exchange_entries(exchange)
    assert Decimal(sent["qty"]) == Decimal("16")  # 2,500 / 150 = 16.67


def test_size_of_zero_shares_is_refused(db, exchange, broker):
    decision_id = add_decision(db, "AAPL", planned_qty=None, position_size_pct="0.1")  # 100 / 150 < 1 share

    run(db, broker)

    assert refusal(db, decision_id) == "position size is zero shares (0.1% of equity at entry 150.00)"
    assert refusal_code(db, decision_id) == "RISK_SIZE_ZERO"
    assert exchange.orders() == []


def test_total_exposure_limit_counts_the_entries_of_the_same_batch(db, exchange, broker):
    first = add_decision(db, "AAPL", planned_qty=10)
    second = add_decision(db, "MSFT", planned_entry="400", planned_sl="390", planned_tp="420", planned_qty=2)

    run(db, broker, MAX_TOTAL_EXPOSURE_PCT="2")

    assert decision(db, first)["existing_order_id"] is not None
    assert refusal(db, second) == ("MAX_TOTAL_EXPOSURE_PCT: exposure 1,500.00 + 800.00 exceeds 2% of equity "
                                   "= 2,000.00")
    assert refusal_code(db, second) == "RISK_MAX_TOTAL_EXPOSURE"
    assert [o["symbol"] for o in exchange_entries(exchange)] == ["AAPL"]


def test_max_open_trades_counts_trades_of_earlier_runs(db, exchange, broker):
    place_trade(db, broker, "AAPL")
    decision_id = add_decision(db, "MSFT", planned_entry="400", planned_sl="390", planned_tp="420")

    run(db, broker, MAX_OPEN_TRADES=1)

    assert refusal(db, decision_id) == "MAX_OPEN_TRADES: 1 trades open, limit 1"
    assert refusal_code(db, decision_id) == "RISK_MAX_OPEN_TRADES"


def test_max_orders_per_day_counts_entries_sent_today(db, exchange, broker):
    trade_id = place_trade(db, broker, "AAPL")
    add_decision(db, "AAPL", "CANCEL", trade_id=trade_id)
    run(db, broker)  # the trade is gone, its entry still counts for today
    decision_id = add_decision(db, "MSFT", planned_entry="400", planned_sl="390", planned_tp="420")

    run(db, broker, MAX_ORDERS_PER_DAY=1)

    assert refusal(db, decision_id) == "MAX_ORDERS_PER_DAY: 1 entries placed today, limit 1"


def test_max_orders_per_day_starts_again_the_next_trading_day(db, own_exchange, own_broker):
    exchange, broker = own_exchange, own_broker
    place_trade(db, broker, "AAPL")
    exchange.clock(eastern("2026-11-23", "09:45"))
    decision_id = add_decision(db, "MSFT", planned_entry="400", planned_sl="390", planned_tp="420")

    run(db, broker, MAX_ORDERS_PER_DAY=1)

    assert decision(db, decision_id)["existing_order_id"] is not None


def test_second_trade_in_an_open_symbol_is_refused(db, exchange, broker):
    place_trade(db, broker, "AAPL")
    decision_id = add_decision(db, "AAPL", planned_entry="149")

    run(db, broker)

    assert refusal(db, decision_id) == "ALLOW_SAME_SYMBOL=false: a trade in AAPL is already open"
    assert refusal_code(db, decision_id) == "RISK_SAME_SYMBOL"
    assert len(exchange_entries(exchange)) == 1


def test_same_symbol_is_allowed_when_configured(db, exchange, broker):
    place_trade(db, broker, "AAPL")
    add_decision(db, "AAPL", planned_entry="149")

    assert run(db, broker, ALLOW_SAME_SYMBOL="true").counts["placed"] == 1

    assert len(exchange_entries(exchange)) == 2


def test_entry_beyond_the_buying_power_is_refused(db, exchange, broker):
    # An order placed outside the system reserves 180,000 of the 200,000 buying power (a margin account:
    # twice the 100,000 equity).
    broker.submit_order(OrderRequest(symbol="MSFT", qty=Decimal("450"), side="buy", kind="limit",
                                     time_in_force="day", client_order_id="outside-1", limit_price=Decimal("400")))
    decision_id = add_decision(db, "AAPL", planned_qty=150)

    run(db, broker)

    assert refusal(db, decision_id) == "buying power: 22,500.00 needed, 20,000.00 available"
    assert refusal_code(db, decision_id) == "RISK_BUYING_POWER"
    assert exchange_entries(exchange) == []


def closed_trade_with_loss(db, pnl: str, exit_at: dt.datetime) -> None:
    """A closed trade and its exit fill in the ledger, as order_monitor records them."""
    trade_id = db.insert("trade_journal", {"symbol": "TSLA", "trade_style": "DAYTRADE", "status": "CLOSED",
                                           "actual_entry": Decimal("250"), "actual_qty": Decimal("100"),
                                           "actual_pnl": Decimal(pnl), "exit_date": exit_at})
    db.insert("trade_fill", {"trade_journal_id": trade_id, "symbol": "TSLA", "side": "sell", "qty": Decimal("100"),
                             "price": Decimal("250") + Decimal(pnl) / 100, "realized_pnl": Decimal(pnl),
                             "filled_at": exit_at})


def test_daily_realized_loss_beyond_the_limit_stops_new_entries(db, exchange, broker):
    closed_trade_with_loss(db, "-2050.00", dt.datetime(2026, 11, 20, 14, 40, tzinfo=dt.UTC))
    decision_id = add_decision(db, "AAPL")

    run(db, broker, DAILY_LOSS_LIMIT="2000")

    assert refusal(db, decision_id) == ("DAILY_LOSS_LIMIT: realized P&L today -2,050.00 is beyond the limit "
                                        "-2,000.00: no new entries today")
    assert refusal_code(db, decision_id) == "RISK_DAILY_LOSS_LIMIT"


def test_a_partial_exit_loss_of_a_still_open_trade_counts_today(db, exchange, broker):
    trade_id = db.insert("trade_journal", {"symbol": "TSLA", "trade_style": "SWING", "status": "POSITION",
                                           "actual_entry": Decimal("250"), "actual_qty": Decimal("200")})
    db.insert("trade_fill", {"trade_journal_id": trade_id, "symbol": "TSLA", "side": "sell", "qty": Decimal("100"),
                             "price": Decimal("229"), "realized_pnl": Decimal("-2100"),
                             "filled_at": dt.datetime(2026, 11, 20, 14, 40, tzinfo=dt.UTC)})
    decision_id = add_decision(db, "AAPL")

    run(db, broker, DAILY_LOSS_LIMIT="2000")

    assert refusal_code(db, decision_id) == "RISK_DAILY_LOSS_LIMIT"
    assert "realized P&L today -2,100.00" in refusal(db, decision_id)


def test_yesterdays_realized_loss_does_not_count_today(db, exchange, broker):
    closed_trade_with_loss(db, "-5000.00", dt.datetime(2026, 11, 19, 20, 0, tzinfo=dt.UTC))
    add_decision(db, "AAPL")

    assert run(db, broker, DAILY_LOSS_LIMIT="2000").counts["placed"] == 1


# --------------------------------------------------------------------------- broker refusals and outages


@pytest.mark.parametrize(("status", "message"), [
    (403, "insufficient buying power"),
    (422, "qty must be > 0"),
])
def test_broker_refusal_is_recorded_and_the_decision_is_not_retried(db, exchange, broker, status, message):
    exchange.fault(status=status, message=message, method="POST", path="/v2/orders", count=1)
    refused = add_decision(db, "AAPL")
    placed = add_decision(db, "MSFT", planned_entry="400", planned_sl="390", planned_tp="420")

    summary = run(db, broker)

    assert (summary.counts["refused"], summary.counts["placed"]) == (1, 1)
    reason = refusal(db, refused)
    assert reason == f"submit_order: HTTP {status} {message}"
    assert refusal_code(db, refused) == f"BROKER_{status}"
    [trade] = db.query("trade_journal", {"symbol": "AAPL"})
    assert (trade["status"], trade["exit_reason"]) == ("CANCELLED", "BROKER_REFUSED")
    [row] = db.query("order_execution", {"trade_journal_id": trade["id"]})
    assert (row["order_status"], row["error_message"], row["alpaca_order_id"]) == ("rejected", reason, None)
    assert decision(db, placed)["existing_order_id"] is not None
    assert [o["symbol"] for o in exchange_entries(exchange)] == ["MSFT"]

    again = run(db, broker)
    assert dict(again.counts) == {}


@pytest.mark.parametrize(("second_ticker", "second_plan", "limits"), [
    pytest.param("MSFT", {"planned_entry": "400", "planned_sl": "390", "planned_tp": "420", "planned_qty": 2},
                 {"MAX_TOTAL_EXPOSURE_PCT": "2"}, id="exposure"),
    pytest.param("MSFT", {"planned_entry": "400", "planned_sl": "390", "planned_tp": "420", "planned_qty": 2},
                 {"MAX_OPEN_TRADES": 1}, id="open_trades"),
    pytest.param("AAPL", {"planned_entry": "149"}, {}, id="same_symbol"),
    pytest.param("MSFT", {"planned_entry": "400", "planned_sl": "390", "planned_tp": "420", "planned_qty": 200},
                 {"MAX_POSITION_NOTIONAL": "90000", "MAX_POSITION_PCT_OF_EQUITY": "90"}, id="buying_power"),
])
def test_entry_refused_by_the_broker_does_not_count_toward_the_batch_limits(db, exchange, broker, second_ticker,
                                                                           second_plan, limits):
    exchange.fault(status=403, message="insufficient buying power", method="POST", path="/v2/orders", count=1)
    refused = add_decision(db, "AAPL", planned_qty=150 if "MAX_POSITION_NOTIONAL" in limits else 10)
    later = add_decision(db, second_ticker, **second_plan)

    summary = run(db, broker, **limits)

    assert (summary.counts["refused"], summary.counts["placed"]) == (1, 1)
    assert refusal_code(db, refused) == "BROKER_403"
    assert decision(db, later)["existing_order_id"] is not None
    assert [o["symbol"] for o in exchange_entries(exchange)] == [second_ticker]


def test_broker_500_leaves_the_decision_for_the_next_run_which_sends_it_once(db, exchange, broker):
    exchange.fault(status=500, method="POST", path="/v2/orders", count=1)
    decision_id = add_decision(db, "AAPL")

    first = run(db, broker)

    assert first.counts["deferred"] == 1
    assert decision(db, decision_id)["executed"] is False
    [reason] = audit_reasons(db, decision_id, "DECISION_DEFERRED")
    assert "submit_order: HTTP 500 internal server error" in reason
    [intent] = entries(db)
    assert (intent["order_status"], intent["alpaca_order_id"]) == ("pending", None)
    assert "outcome unknown, retried next run" in intent["error_message"]
    assert exchange.orders() == []

    second = run(db, broker)

    assert second.counts["placed"] == 1
    [sent] = exchange_entries(exchange)
    [entry] = entries(db)
    assert (entry["id"], entry["alpaca_order_id"], entry["order_status"]) == (intent["id"], sent["id"], "pending_new")
    assert entry["error_message"] is None
    assert decision(db, decision_id)["executed"] is True
    assert len(db.query("trade_journal")) == 1


def test_three_outages_in_a_row_end_the_run_and_the_rest_waits(db, exchange, broker):
    exchange.fault(status=503, method="POST", path="/v2/orders", count=3)
    ids = [add_decision(db, symbol, planned_entry="100", planned_sl="95", planned_tp="110")
           for symbol in ("AAPL", "MSFT", "NVDA", "AMD")]

    first = run(db, broker)

    assert first.outcome == "warning"
    assert first.counts["deferred"] == 3
    assert "3 outages in a row" in (first.error or "")
    assert not any(decision(db, d)["executed"] for d in ids)
    assert audit_reasons(db, ids[3], "DECISION_DEFERRED") == []  # never reached
    run_row = db.execute_one("SELECT outcome, error FROM program_run WHERE id = %s", (first.run_id,))
    assert run_row["outcome"] == "warning"

    second = run(db, broker)

    assert second.counts["placed"] == 4
    assert sorted(o["symbol"] for o in exchange_entries(exchange)) == ["AAPL", "AMD", "MSFT", "NVDA"]


def test_dropped_connection_before_the_broker_saw_the_order_is_retried_next_run(db, exchange, broker):
    exchange.fault(drop=True, method="POST", path="/v2/orders", count=1)
    decision_id = add_decision(db, "AAPL")

    assert run(db, broker).counts["deferred"] == 1
    assert "connection failed" in audit_reasons(db, decision_id, "DECISION_DEFERRED")[0]
    assert exchange.orders() == []

    assert run(db, broker).counts["placed"] == 1
    assert len(exchange_entries(exchange)) == 1


def test_order_accepted_but_connection_dropped_is_found_by_client_order_id_in_the_same_run(db, exchange, broker):
    exchange.fault(when="after", drop=True, method="POST", path="/v2/orders", count=1)
    decision_id = add_decision(db, "AAPL")

    summary = run(db, broker)

    assert summary.counts["placed"] == 1
    [sent] = exchange_entries(exchange)
    [entry] = entries(db)
    assert (entry["alpaca_order_id"], entry["order_status"]) == (sent["id"], "pending_new")
    assert decision(db, decision_id)["existing_order_id"] == sent["id"]
    assert broker.calls.counts["submit_order"] == 1
    assert broker.calls.counts["get_order_by_client_id"] == 1
    assert sorted(r["order_type"] for r in db.query("order_execution")) == ["ENTRY", "STOP_LOSS", "TAKE_PROFIT"]


def test_order_the_look_up_misses_is_adopted_when_the_broker_refuses_the_duplicate(db, exchange, broker):
    # Run 1: the order lands but the answer is lost, and the look-up meets an outage too.
    exchange.fault(when="after", status=500, method="POST", path="/v2/orders", count=1)
    exchange.fault(status=503, method="GET", path="/v2/orders:by_client_order_id", count=1)
    decision_id = add_decision(db, "AAPL")
    assert run(db, broker).counts["deferred"] == 1
    [landed] = exchange_entries(exchange)
    # Run 2: the look-up does not see it yet (a lagging index), so the order is sent again.
    exchange.fault(status=404, message="order not found", method="GET", path="/v2/orders:by_client_order_id",
                   count=1)

    second = run(db, broker)

    assert second.counts["placed"] == 1
    assert len(exchange_entries(exchange)) == 1
    assert exchange.stats()["requests"]["POST /v2/orders"] == 2  # the resend was refused as a duplicate
    assert entries(db)[0]["alpaca_order_id"] == landed["id"]
    assert decision(db, decision_id)["existing_order_id"] == landed["id"]


def test_answer_slower_than_the_timeout_for_an_accepted_order_is_resolved_by_look_up(db, exchange):
    slow_broker = AlpacaBroker(base_url=exchange.url, data_url=exchange.url, timeout=0.5)
    exchange.fault(when="after", delay_seconds=1.5, method="POST", path="/v2/orders", count=1)
    add_decision(db, "AAPL")

    summary = run(db, slow_broker)

    assert summary.counts["placed"] == 1
    [sent] = exchange_entries(exchange)
    assert entries(db)[0]["alpaca_order_id"] == sent["id"]


def test_timeout_before_the_order_lands_defers_and_the_late_order_is_adopted_not_resent(db, exchange):
    slow_broker = AlpacaBroker(base_url=exchange.url, data_url=exchange.url, timeout=0.5)
    exchange.fault(delay_seconds=1.2, method="POST", path="/v2/orders", count=1)  # processed after the delay
    decision_id = add_decision(db, "AAPL")

    first = run(db, slow_broker)

    assert first.counts["deferred"] == 1
    assert "no answer within 0.5s" in audit_reasons(db, decision_id, "DECISION_DEFERRED")[0]
    assert decision(db, decision_id)["executed"] is False
    late = wait_for(lambda: exchange_entries(exchange), 5, "the delayed order to land")

    second = run(db, slow_broker)

    assert second.counts["placed"] == 1
    assert slow_broker.calls.counts["submit_order"] == 1  # the second run looked it up, it did not resend
    assert len(exchange_entries(exchange)) == 1
    assert entries(db)[0]["alpaca_order_id"] == late[0]["id"]


# --------------------------------------------------------------------------- crashes and concurrency


@pytest.mark.parametrize("accepted", [pytest.param(False, id="not_at_the_broker"),
                                      pytest.param(True, id="accepted_answer_lost")])
def test_changed_client_order_prefix_still_recovers_the_decision_in_flight(db, exchange, broker, accepted):
    decision_id = add_decision(db, "AAPL")
    if accepted:  # the order lands, its answer is lost and the look-up fails too: outcome unknown
        exchange.fault(when="after", status=500, method="POST", path="/v2/orders", count=1)
        exchange.fault(status=500, method="GET", path="/v2/orders:by_client_order_id", count=1)
    else:
        exchange.fault(status=500, method="POST", path="/v2/orders", count=1)
    assert run(db, broker).counts["deferred"] == 1
    [intent] = entries(db)
    assert intent["client_order_id"].startswith("tm-")

    second = run(db, broker, CLIENT_ORDER_PREFIX="alt")

    assert second.counts["placed"] == 1
    sent = [o for o in exchange.orders() if o["side"] == "buy"]
    assert [o["client_order_id"] for o in sent] == [intent["client_order_id"]]  # one entry, the recorded id
    [entry] = entries(db)
    assert (entry["id"], entry["alpaca_order_id"]) == (intent["id"], sent[0]["id"])
    assert len(db.query("trade_journal")) == 1
    assert decision(db, decision_id)["existing_order_id"] == sent[0]["id"]


def _wait_until_disconnected(db: TradingDB, application_name: str, timeout: float = 10) -> None:
    wait_for(lambda: db.execute_one("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name LIKE %s",
                                    (f"{application_name}%",))["n"] == 0, timeout,
             f"the killed {application_name} connections to go")


def test_crash_after_the_broker_accepted_the_order_then_rerun_gives_one_order(db, exchange, broker, pg_config):
    decision_id = add_decision(db, "AAPL")
    exchange.fault(when="after", delay_seconds=20, method="POST", path="/v2/orders", count=1)
    env = {**os.environ, "TEST_DATABASE_URL": os.environ["TEST_DATABASE_URL"], "ALPACA_BASE_URL": exchange.url,
           "BROKER_TIMEOUT_SECONDS": "30", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "order_executor.py", "--test-mode"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: exchange_entries(exchange) or process.poll() is not None, 20, "the order at the exchange")
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        [intent] = entries(db)  # the intent was committed before the call
        assert (intent["order_status"], intent["alpaca_order_id"]) == ("pending", None)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout:
            process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    _wait_until_disconnected(db, "order_executor")

    summary = run(db, broker)

    assert summary.counts["placed"] == 1
    assert broker.calls.counts.get("submit_order", 0) == 0
    [sent] = exchange_entries(exchange)
    [entry] = entries(db)
    assert (entry["id"], entry["alpaca_order_id"], entry["order_status"]) == (intent["id"], sent["id"], "pending_new")
    assert entry["client_order_id"] == sent["client_order_id"]
    row = decision(db, decision_id)
    assert (row["executed"], row["existing_order_id"]) == (True, sent["id"])
    assert len(db.query("trade_journal")) == 1
    assert dict(run(db, broker).counts) == {}
    assert len(exchange_entries(exchange)) == 1


def test_two_runs_started_at_once_send_one_order_per_decision(db, make_db, exchange):
    symbols = ["AAPL", "MSFT", "NVDA", "AMD", "TSLA", "META", "GOOGL", "AMZN", "NFLX", "INTC"]
    ids = [add_decision(db, symbol, planned_entry="100", planned_sl="95", planned_tp="110", planned_qty=1)
           for symbol in symbols]
    barrier = threading.Barrier(2)
    results: list[RunSummary | BaseException] = []

    def one_run() -> None:
        connection = make_db()
        own_broker = AlpacaBroker(base_url=exchange.url, data_url=exchange.url, timeout=3)
        barrier.wait()
        try:
            results.append(run(connection, own_broker))
        except BaseException as exc:  # reported by the assertions below
            results.append(exc)

    threads = [threading.Thread(target=one_run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(results) == 2 and all(isinstance(r, RunSummary) for r in results), results
    assert sum(r.counts["placed"] for r in results if isinstance(r, RunSummary)) == len(ids)
    sent = exchange_entries(exchange)
    assert sorted(o["symbol"] for o in sent) == sorted(symbols)
    assert len({o["client_order_id"] for o in sent}) == len(ids)
    assert len(entries(db)) == len(ids)
    assert all(decision(db, d)["executed"] for d in ids)


def test_decision_locked_by_another_transaction_is_skipped_and_handled_next_run(db, make_db, exchange, broker):
    locked = add_decision(db, "AAPL")
    free = add_decision(db, "MSFT", planned_entry="400", planned_sl="390", planned_tp="420")
    other = make_db()

    with other.transaction():
        other.execute_one("SELECT id FROM analysis_decision WHERE id = %s FOR UPDATE", (locked,))
        first = run(db, broker)

    assert (first.counts["skipped"], first.counts["placed"]) == (1, 1)
    assert decision(db, locked)["executed"] is False
    assert [o["symbol"] for o in exchange_entries(exchange)] == ["MSFT"]
    assert decision(db, free)["executed"] is True

    second = run(db, broker)

    assert second.counts["placed"] == 1
    assert sorted(o["symbol"] for o in exchange_entries(exchange)) == ["AAPL", "MSFT"]


def test_rerun_with_nothing_to_do_changes_nothing(db, exchange, broker):
    trade_id = place_filled_trade(db, broker, exchange, "AAPL")
    add_decision(db, "MSFT", planned_entry="400", planned_sl="390", planned_tp="420")
    add_decision(db, "NVDA", planned_sl=None)
    add_decision(db, "AAPL", "NO_ACTION", trade_id=trade_id)
    run(db, broker)
    before, orders_before = snapshot(db), exchange.orders()
    exchange.reset_stats()

    again = run(db, broker)

    assert dict(again.counts) == {}
    assert snapshot(db) == before
    assert exchange.orders() == orders_before
    assert exchange.stats()["requests"] == {"GET /v2/clock": 1}  # the calendar: kept in market_calendar


# --------------------------------------------------------------------------- command line


@pytest.fixture
def cli_env(monkeypatch, exchange, pg_config) -> Iterator[None]:
    """Environment for ``main()``: the session's test database and the test exchange; the
    process-wide logging set-up of ``main`` is kept out of the other tests."""
    monkeypatch.setenv("ALPACA_BASE_URL", exchange.url)
    monkeypatch.setattr(logs, "_configured", True)
    root = logging.getLogger()
    level = root.level
    try:
        yield
    finally:
        root.setLevel(level)


def test_dry_run_prints_what_it_would_send_and_changes_nothing(db, exchange, broker, cli_env, capsys):
    trade_id = place_trade(db, broker, "NVDA", planned_entry="130", planned_sl="125", planned_tp="140")
    new = add_decision(db, "AAPL", planned_qty=10)
    bad = add_decision(db, "MSFT", planned_sl=None)
    amend = add_decision(db, "NVDA", "AMEND", trade_id=trade_id, planned_entry="129", planned_sl="124",
                         planned_tp="140")
    cancel = add_decision(db, "NVDA", "CANCEL", trade_id=trade_id)
    unknown = add_decision(db, "NVDA", "HOLD")
    tables = ("analysis_decision", "trade_journal", "order_execution", "audit_event", "program_run")
    before, orders_before = snapshot(db, tables), exchange.orders()
    exchange.reset_stats()

    code = order_executor.main(["--test-mode", "--dry-run"])

    out = capsys.readouterr().out
    assert code == 0
    assert "order_executor: success" in out
    assert (f"decision {new}: would_place - bracket buy 10 AAPL limit 150.00 stop 145.00 target 160.00 tif gtc "
            "(planned_qty)") in out
    assert f"decision {bad}: would_refuse - planned_sl is missing" in out
    assert (f"decision {amend}: would_place - bracket buy 10 NVDA limit 129.00 stop 124.00 target 140.00 tif gtc "
            f"(planned_qty), replacing trade {trade_id}") in out
    assert f"decision {cancel}: would_cancel - trade {trade_id} (ORDERED)" in out
    assert f"decision {unknown}: would_refuse - unknown primary_action 'HOLD'" in out
    assert snapshot(db, tables) == before
    assert exchange.orders() == orders_before
    assert set(exchange.stats()["requests"]) <= {"GET /v2/clock", "GET /v2/calendar", "GET /v2/account",
                                                 "GET /v2/assets", "GET /v2/stocks/quotes/latest"}


def test_command_line_run_places_the_orders_and_prints_the_summary(db, exchange, cli_env, capsys):
    add_decision(db, "AAPL")

    code = order_executor.main(["--test-mode", "--json"])

    out = capsys.readouterr().out
    assert code == 0
    assert '"placed": 1' in out
    assert len(exchange_entries(exchange)) == 1


def test_help_describes_the_options(capsys):
    with pytest.raises(SystemExit) as done:
        order_executor.main(["--help"])

    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in ("--test-mode", "--dry-run", "--json", "--log-level"):
        assert option in out
    assert "every approved decision becomes exactly one protected entry order" in out


def test_help_works_as_a_program():
    result = subprocess.run([sys.executable, "order_executor.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "--dry-run" in result.stdout


def test_benchmark_script_places_one_order_per_decision_with_one_call_each(db, capsys, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_executor", ROOT / "scripts" / "benchmark_executor.py")
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "benchmark_executor", benchmark)
    spec.loader.exec_module(benchmark)

    assert benchmark.main(["--n", "8", "--repeat", "1"]) == 0

    out = capsys.readouterr().out
    assert "8 decisions (median of 1):" in out and "baseline" in out
    assert "broker calls (client):   13 = 1.625 per decision (8 submit_order + 5 per run" in out
    assert "broker calls (exchange): 13 = 1.625 per decision" in out
    # the second run: the clock only (the date's calendar is kept in market_calendar)
    assert "second run, nothing to do" in out and "1 broker calls" in out


# --------------------------------------------------------------------------- issue 11: trade safety


def test_second_amend_of_the_same_trade_cancels_the_first_replacement_and_leaves_one_live_entry(
        db, exchange, broker):
    first_id = place_trade(db, broker, "AAPL")
    add_decision(db, "AAPL", "AMEND", trade_id=first_id, planned_entry="148.00", planned_sl="143.00",
                 planned_tp="158.00", planned_qty=12)
    assert run(db, broker).counts["amended"] == 1
    (second,) = db.query("trade_journal", {"status": "ORDERED"})
    # A second AMEND still names the original trade (the upstream flow only knows that one).
    amend = add_decision(db, "AAPL", "AMEND", trade_id=first_id, planned_entry="147.00", planned_sl="142.00",
                         planned_tp="157.00", planned_qty=11)

    summary = run(db, broker)

    assert summary.counts["amended"] == 1
    second = db.get_by_id("trade_journal", second["id"])
    assert (second["status"], second["exit_reason"]) == ("CANCELLED", "AMENDED")
    (third,) = db.query("trade_journal", {"status": "ORDERED"})
    assert third["replaces_trade_journal_id"] == second["id"]
    working = [o for o in exchange_entries(exchange) if o["status"] not in ("canceled", "filled", "expired")]
    assert len(working) == 1, working
    assert (Decimal(working[0]["limit_price"]), Decimal(working[0]["qty"])) == (Decimal("147.00"), Decimal("11"))
    assert decision(db, amend)["existing_trade_journal_id"] == third["id"]


class MonitorRacingBroker(AlpacaBroker):
    """The executor's real client. The moment the executor learns that the bracket it canceled is
    gone (the confirming look-up), the order monitor is started in another thread (its own
    connection and client), and the executor goes on when the monitor is done or ``grace``
    seconds pass: the CLOSE and the monitor run at once, in the window between cancel and sell."""

    def __init__(self, *, start_monitor: Callable[[], threading.Thread], grace: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_monitor, self.grace = start_monitor, grace
        self.monitor: threading.Thread | None = None

    def get_order(self, order_id: str):
        order = super().get_order(order_id)
        if self.monitor is None and any(o.status == "canceled" for o in order.walk()):
            self.monitor = self.start_monitor()
            self.monitor.join(self.grace)
        return order


def test_close_decision_racing_the_order_monitor_ends_flat_and_the_monitor_places_no_oco(
        db, make_db, exchange, broker):
    import order_monitor

    trade_id = place_filled_trade(db, broker, exchange, "AAPL")
    exchange.quotes(AAPL=("151.20", "151.30"))
    close = add_decision(db, "AAPL", "CLOSE", trade_id=trade_id)
    monitor_summaries: list[RunSummary] = []

    def start_monitor() -> threading.Thread:
        monitor_db = make_db()
        monitor_broker = AlpacaBroker(base_url=exchange.url, data_url=exchange.url, timeout=5)
        thread = threading.Thread(target=lambda: monitor_summaries.append(order_monitor.run_once(
            monitor_db, monitor_broker, settings=make_settings(), sleep=exchange.sleeper())))
        thread.start()
        return thread

    racing = MonitorRacingBroker(start_monitor=start_monitor, grace=1.5, base_url=exchange.url,
                                 data_url=exchange.url, timeout=5)

    summary = run(db, racing)
    assert racing.monitor is not None
    racing.monitor.join(30)

    assert not racing.monitor.is_alive()
    assert [s.outcome for s in monitor_summaries] != ["failed"], monitor_summaries
    assert summary.counts.get("closing") == 1, summary.as_dict()
    settle(db, broker, exchange)
    assert exchange.positions() == {}  # the CLOSE ended flat
    trade = db.get_by_id("trade_journal", trade_id)
    assert (trade["status"], trade["exit_reason"]) == ("CLOSED", "CLOSE_REQUESTED")
    assert [o for o in exchange.orders() if o["order_class"] == "oco"] == []  # no repair raced the exit
    assert audit_reasons(db, close, "DECISION_ACCEPTED") == [
        f"trade {trade_id}: protection canceled, HIGH exit (limit, then market) sent"]


def test_close_of_a_position_sold_outside_sends_no_sell_and_closes_it_as_outside(db, exchange, broker):
    trade_id = place_filled_trade(db, broker, exchange, "AAPL")
    person = AlpacaBroker(base_url=exchange.url, data_url=exchange.url, api_key="dashboard", secret_key="operator",
                          timeout=3)
    (leg,) = [o for o in exchange.orders() if o["side"] == "sell" and o["type"] == "stop"]
    person.cancel_order(leg["id"])
    exchange.quotes(AAPL=("152.00", "152.10"))  # the legs' cancels complete at this pass
    person.submit_order(OrderRequest(symbol="AAPL", qty=Decimal("10"), side="sell", kind="market",
                                     time_in_force="day", client_order_id="dashboard-close"))
    exchange.step()
    assert exchange.positions() == {}
    close = add_decision(db, "AAPL", "CLOSE", trade_id=trade_id)
    exchange.reset_stats()

    run(db, broker)

    assert "POST /v2/orders" not in exchange.stats()["routes"]  # nothing sold: nothing was held
    trade = db.get_by_id("trade_journal", trade_id)
    assert (trade["status"], trade["exit_reason"], trade["exit_price"], trade["actual_pnl"]) == (
        "CLOSED", "MANUAL_EXIT", Decimal("152.00"), Decimal("20.00"))
    assert decision(db, close)["executed"] is True
    assert exchange.positions() == {}


# --------------------------------------------------------------------------- stale plans (issue 11 scenario 15)


def test_a_decision_whose_stop_the_market_already_crossed_is_refused_as_stale_plan(db, exchange, broker):
    """At 09:45 AAPL trades at 144.50, under the plan's stop of 145: the limit at 150 would fill at
    once below its own stop and be stopped out the same second. Refused, nothing sent."""
    exchange.quotes(AAPL=("144.50", "144.60"))
    stale = add_decision(db, "AAPL", planned_entry=150, planned_sl=145, planned_tp=160)

    summary = run(db, broker, MAX_ENTRY_DRIFT_PCT="10")

    assert summary.counts["refused"] == 1
    assert refusal_code(db, stale) == "STALE_PLAN"
    assert "bid 144.50 is at or below planned_sl 145.00" in refusal(db, stale)
    assert decision(db, stale)["executed"] is True
    assert db.query("trade_journal") == [] and exchange.orders() == []


def test_a_decision_beyond_the_entry_drift_is_refused_as_stale_plan_and_one_within_is_placed(db, exchange, broker):
    exchange.quotes(AAPL=("159.90", "160.10"), MSFT=("151.90", "152.10"))
    drifted = add_decision(db, "AAPL", planned_entry=150, planned_sl=145, planned_tp=170)
    near = add_decision(db, "MSFT", planned_entry=150, planned_sl=145, planned_tp=170)

    summary = run(db, broker, MAX_ENTRY_DRIFT_PCT="3")

    assert summary.counts["refused"] == 1 and summary.counts["placed"] == 1
    assert refusal_code(db, drifted) == "STALE_PLAN"
    assert "trades at 160.00 (6.67% from planned_entry 150.00)" in refusal(db, drifted)
    assert "MAX_ENTRY_DRIFT_PCT 3%" in refusal(db, drifted)
    assert [o["symbol"] for o in exchange.orders() if o["side"] == "buy"] == ["MSFT"]
    assert broker.calls.counts["get_latest_quotes"] == 1  # one call for the batch
    intent = db.query("audit_event", {"entity_type": "decision", "entity_id": near, "event": "ORDER_INTENT"})
    assert intent[0]["details"]["quote_checked"] is True
    assert intent[0]["details"]["quote_check"] == ("quote bid 151.90 ask 152.10: 1.33% from planned_entry, "
                                                   "stop not crossed")


def test_a_stale_amendment_is_refused_and_leaves_the_old_entry_working(db, exchange, broker):
    trade_id = place_trade(db, broker, "AAPL")
    exchange.quotes(AAPL=("228.40", "228.60"))  # the limit at 150 rests
    amend = add_decision(db, "AAPL", "AMEND", trade_id=trade_id, planned_entry=200, planned_sl=190, planned_tp=240)

    assert run(db, broker, MAX_ENTRY_DRIFT_PCT="10").counts["refused"] == 1

    assert refusal_code(db, amend) == "STALE_PLAN"
    assert db.get_by_id("trade_journal", trade_id)["status"] == "ORDERED"
    assert [o["status"] for o in exchange.orders() if o["side"] == "buy"] == ["new"]


def test_a_decision_whose_quote_cannot_be_read_is_placed_with_a_recorded_warning(db, exchange, broker):
    """The data API answers 500: the entry is sent (its limit and its broker-held stop bound it),
    the intent's record and the run's warning say the plan was not compared with the market."""
    exchange.fault(status=500, method="GET", path="/v2/stocks/quotes/latest", count=5)
    placed = add_decision(db, "AAPL")

    summary = run(db, broker, MAX_ENTRY_DRIFT_PCT="3")

    assert summary.counts["placed"] == 1
    assert summary.outcome == "warning" and any("STALE_PLAN not checked" in note for note in summary.notes)
    intent = db.query("audit_event", {"entity_type": "decision", "entity_id": placed, "event": "ORDER_INTENT"})
    assert len(intent) == 1 and intent[0]["details"]["quote_checked"] is False
    assert "no quote for AAPL (the quote could not be read" in intent[0]["details"]["quote_check"]


# ------------------------------------------------------------- records that tell the truth (issue 11 scenario 19)


def test_a_second_close_of_a_trade_already_closing_is_not_recorded_as_a_market_sell_sent(db, exchange, broker):
    trade_id = place_filled_trade(db, broker, exchange, "AAPL")
    exchange.quotes(AAPL=("0", "151.30"))  # no bid: the market sell waits at the exchange
    first = add_decision(db, "AAPL", "CLOSE", trade_id=trade_id)
    second = add_decision(db, "AAPL", "CLOSE", trade_id=trade_id)

    summary = run(db, broker)

    assert summary.counts["closing"] == 2
    assert [o["side"] for o in exchange.orders() if o["type"] == "market"] == ["sell"]  # one sell, not two
    assert audit_reasons(db, first, "DECISION_ACCEPTED") == [
        f"trade {trade_id}: protection canceled, HIGH exit (limit, then market) sent"]
    [exit_row] = db.query("order_execution", {"order_type": "EXIT"})
    [reason] = audit_reasons(db, second, "DECISION_ACCEPTED")
    assert reason == (f"trade {trade_id} is already closing: its exit {exit_row['client_order_id']} "
                      f"({exit_row['order_status']}) works on the shares; no second sell sent")
    assert "market sell sent" not in reason


def test_a_cancel_processed_but_answered_5xx_is_resolved_by_looking_the_order_up(db, exchange, broker):
    trade_id = place_trade(db, broker, "AAPL")
    cancel = add_decision(db, "AAPL", "CANCEL", trade_id=trade_id)
    exchange.fault(status=500, method="DELETE", path="/v2/orders/*", when="after", count=1)

    summary = run(db, broker)

    assert summary.counts["cancelled"] == 1
    assert audit_reasons(db, cancel, "DECISION_ACCEPTED") == [f"trade {trade_id} entry canceled at the broker"]
    assert audit_reasons(db, cancel, "DECISION_REFUSED") == []
    trade = db.get_by_id("trade_journal", trade_id)
    assert (trade["status"], trade["exit_reason"]) == ("CANCELLED", "CANCEL_REQUESTED")
    assert {o["status"] for o in exchange.orders()} == {"canceled"}


def test_a_cancel_whose_answer_was_lost_and_recorded_by_the_monitor_first_is_accepted_not_refused(
        db, exchange, broker):
    """The cancel is processed but answered 500 and the look-up fails too: the decision waits. The
    order monitor then records the canceled entry; the next executor run finds its own cancel done
    instead of refusing the decision as "already CANCELLED"."""
    import order_monitor

    trade_id = place_trade(db, broker, "AAPL")
    cancel = add_decision(db, "AAPL", "CANCEL", trade_id=trade_id)
    exchange.fault(status=500, method="DELETE", path="/v2/orders/*", when="after", count=1)
    exchange.fault(status=503, method="GET", path="/v2/orders/*", count=1)

    first = run(db, broker)
    assert first.counts["deferred"] == 1 and first.outcome == "warning"
    exchange.clear_faults()
    exchange.step()  # the processed cancel completes at the exchange's next passes (legs one pass later)
    exchange.step()
    order_monitor.run_once(db, broker, settings=make_settings(), sleep=exchange.sleeper())
    trade = db.get_by_id("trade_journal", trade_id)
    assert (trade["status"], trade["exit_reason"]) == ("CANCELLED", "CANCEL_REQUESTED")

    second = run(db, broker)

    assert second.counts["cancelled"] == 1
    assert audit_reasons(db, cancel, "DECISION_REFUSED") == []
    assert audit_reasons(db, cancel, "DECISION_ACCEPTED") == [
        f"trade {trade_id} entry canceled at the broker (this decision's cancel, its answer lost, confirmed by "
        "looking the order up)"]


def test_decisions_deferred_by_broker_errors_end_the_run_as_a_warning(db, exchange, broker):
    from trading.program import exit_code

    deferred = add_decision(db, "AAPL")
    exchange.fault(status=503, method="POST", path="/v2/orders", count=5)

    summary = run(db, broker)

    assert summary.counts["deferred"] == 1
    assert summary.outcome == "warning" and exit_code(summary) == 1
    assert any(f"decision {deferred} deferred" in note for note in summary.notes)
    assert db.get_by_id("program_run", summary.run_id)["outcome"] == "warning"
    assert decision(db, deferred)["executed"] is False


# --------------------------------------------------------------------------- the trading state (issue 13)


def _set_state(db: TradingDB, mode: str, scope: str | None = None, reason: str = "operator says stop") -> None:
    from trading.state import record_trading_state

    record_trading_state(db, mode, reason=reason, changed_by="alice", scope=scope, confirm_reset=True)


def held_reasons(db: TradingDB, decision_id: int) -> list[str]:
    return audit_reasons(db, decision_id, "DECISION_HELD")


@pytest.mark.parametrize("mode", ["REDUCE_ONLY", "HALTED", "FLATTEN"])
def test_new_trade_is_held_back_under_each_restricted_state_and_placed_once_trading_resumes(db, exchange, broker,
                                                                                            mode):
    _set_state(db, mode)
    decision_id = add_decision(db, "AAPL")

    summary = run(db, broker)

    assert summary.counts["held_back"] == 1 and "placed" not in summary.counts
    row = decision(db, decision_id)
    assert row["executed"] is False and row["execution_time"] is None  # not executed, not refused
    assert audit_reasons(db, decision_id, "DECISION_REFUSED") == []
    [reason] = held_reasons(db, decision_id)
    assert reason.startswith(f"held back: trading is {mode} (account): operator says stop")
    assert exchange_entries(exchange) == [] and db.query("trade_journal") == []
    assert broker.calls.counts.get("submit_order", 0) == 0
    row = db.execute_one("SELECT counts FROM program_run WHERE id = %s", (summary.run_id,))
    assert row["counts"]["held_back"] == 1

    before = snapshot(db)
    assert run(db, broker).counts["held_back"] == 1
    assert snapshot(db) == before  # a rerun under the same state writes nothing new

    _set_state(db, "ACTIVE", reason="all clear")
    assert run(db, broker).counts["placed"] == 1
    assert decision(db, decision_id)["executed"] is True
    assert len(exchange_entries(exchange)) == 1


def test_a_symbol_in_reduce_only_holds_back_its_own_entries_and_no_other(db, exchange, broker):
    _set_state(db, "REDUCE_ONLY", scope="MSFT", reason="earnings tonight")
    aapl = add_decision(db, "AAPL")
    msft = add_decision(db, "MSFT", planned_entry=400, planned_sl=390, planned_tp=420)

    summary = run(db, broker)

    assert (summary.counts["placed"], summary.counts["held_back"]) == (1, 1)
    assert decision(db, aapl)["executed"] is True and decision(db, msft)["executed"] is False
    assert held_reasons(db, msft)[0].startswith("held back: trading is REDUCE_ONLY (MSFT): earnings tonight")
    assert [o["symbol"] for o in exchange_entries(exchange)] == ["AAPL"]


def test_close_and_cancel_run_under_reduce_only_and_wait_while_halted(db, exchange, broker):
    position_id = place_filled_trade(db, broker, exchange, "AAPL")
    exchange.quotes(AAPL=("151.20", "151.30"))  # between the stop and the target
    working_id = place_trade(db, broker, "MSFT", planned_entry=400, planned_sl=390, planned_tp=420)

    _set_state(db, "HALTED")
    close = add_decision(db, "AAPL", "CLOSE", trade_id=position_id)
    cancel = add_decision(db, "MSFT", "CANCEL", trade_id=working_id)
    halted = run(db, broker)

    assert halted.counts["held_back"] == 2
    assert decision(db, close)["executed"] is False and decision(db, cancel)["executed"] is False
    assert "no CLOSE is sent to the broker while HALTED" in held_reasons(db, close)[0]
    assert broker.calls.counts.get("cancel_order", 0) == 0 and exchange.positions() == {"AAPL": Decimal("10")}

    _set_state(db, "REDUCE_ONLY", reason="exits only")
    reduce_only = run(db, broker)

    assert (reduce_only.counts["closing"], reduce_only.counts["cancelled"]) == (1, 1)
    assert exchange.positions() == {}
    assert db.get_by_id("trade_journal", position_id)["exit_reason"] == "CLOSE_REQUESTED"
    assert db.get_by_id("trade_journal", working_id)["exit_reason"] == "CANCEL_REQUESTED"


def test_under_reduce_only_an_amend_that_adds_exposure_waits_and_one_that_reduces_it_runs(db, exchange, broker):
    trade_id = place_trade(db, broker, "AAPL")  # 10 @ 150 = 1500
    _set_state(db, "REDUCE_ONLY")
    larger = add_decision(db, "AAPL", "AMEND", trade_id=trade_id, planned_entry="149.00", planned_sl="144.00",
                          planned_tp="158.00", planned_qty=12)  # 1788

    assert run(db, broker).counts["held_back"] == 1
    assert "an amendment that adds exposure waits" in held_reasons(db, larger)[0]
    assert db.get_by_id("trade_journal", trade_id)["status"] == "ORDERED"

    db.execute_update('UPDATE analysis_decision SET "Approve" = false WHERE id = %s', (larger,))
    smaller = add_decision(db, "AAPL", "AMEND", trade_id=trade_id, planned_entry="148.00", planned_sl="143.00",
                           planned_tp="158.00", planned_qty=8)  # 1184
    summary = run(db, broker)

    assert summary.counts["amended"] == 1 and "held_back" not in summary.counts
    assert db.get_by_id("trade_journal", trade_id)["exit_reason"] == "AMENDED"
    exchange.step()  # the amended entry is answered pending_new and acknowledged at the next pass
    [working] = [o for o in exchange_entries(exchange) if o["status"] == "new"]
    assert (Decimal(working["qty"]), Decimal(working["limit_price"])) == (Decimal("8"), Decimal("148.00"))
    assert decision(db, smaller)["executed"] is True


def test_a_day_plan_held_since_an_earlier_trading_day_expires_but_a_gtc_plan_is_placed(db, own_exchange, own_broker):
    exchange, broker = own_exchange, own_broker
    _set_state(db, "HALTED")
    day_trade = add_decision(db, "AAPL", trade_style="DAYTRADE", planned_tp=None, time_in_force="day")
    swing = add_decision(db, "MSFT", planned_entry=400, planned_sl=390, planned_tp=420)
    assert run(db, broker).counts["held_back"] == 2

    exchange.clock(eastern("2026-11-23", "09:45"))  # Monday
    _set_state(db, "ACTIVE", reason="all clear")
    monday = run(db, broker)

    assert (monday.counts["refused"], monday.counts["placed"]) == (1, 1)
    assert "expired: held back by the trading state since 2026-11-20" in refusal(db, day_trade)
    assert refusal_code(db, day_trade) == "HELD_DECISION_EXPIRED"
    assert decision(db, swing)["executed"] is True
    assert [o["symbol"] for o in exchange_entries(exchange)] == ["MSFT"]


def test_dry_run_says_which_decisions_the_trading_state_would_hold(db, exchange, broker):
    _set_state(db, "REDUCE_ONLY", reason="exits only")
    decision_id = add_decision(db, "AAPL")
    before = snapshot(db)

    summary = run_once(db, broker, settings=make_settings(), dry_run=True)

    assert summary.counts["would_hold"] == 1
    assert any(f"decision {decision_id}: would_hold - held back: trading is REDUCE_ONLY" in n for n in summary.notes)
    assert snapshot(db) == before


def test_an_entry_whose_answer_was_lost_is_looked_up_and_recorded_while_halted_never_sent_again(db, exchange,
                                                                                              broker):
    exchange.fault(when="after", status=500, method="POST", path="/v2/orders", count=1)
    exchange.fault(status=503, method="GET", path="/v2/orders:by_client_order_id", count=1)
    decision_id = add_decision(db, "AAPL")
    assert run(db, broker).counts["deferred"] == 1
    [landed] = exchange_entries(exchange)  # at the broker, unknown to the database
    _set_state(db, "HALTED")

    summary = run(db, broker)

    assert summary.counts["placed"] == 1 and "held_back" not in summary.counts
    assert entries(db)[0]["alpaca_order_id"] == landed["id"]
    assert decision(db, decision_id)["executed"] is True
    assert exchange.stats()["requests"]["POST /v2/orders"] == 1  # looked up, not sent again


def test_an_entry_that_never_reached_the_broker_waits_while_halted_and_goes_once_trading_resumes(db, exchange,
                                                                                               broker):
    exchange.fault(status=503, method="POST", path="/v2/orders", count=1)
    decision_id = add_decision(db, "AAPL")
    assert run(db, broker).counts["deferred"] == 1
    _set_state(db, "HALTED")

    halted = run(db, broker)

    assert halted.counts["held_back"] == 1
    assert exchange.orders() == [] and entries(db)[0]["order_status"] == "pending"
    assert decision(db, decision_id)["executed"] is False
    assert held_reasons(db, decision_id)[0].startswith("held back: trading is HALTED (account)")

    _set_state(db, "ACTIVE", reason="all clear")
    assert run(db, broker).counts["placed"] == 1
    assert len(exchange_entries(exchange)) == 1 and decision(db, decision_id)["executed"] is True


# --------------------------------------------------------------------------- issue 16: speed at scale


def test_many_decisions_are_claimed_and_recorded_in_batches_each_one_order_recorded_before_it_was_sent(
        db, exchange, broker):
    ids = [add_decision(db, "AAPL", planned_qty=1) for _ in range(120)]  # more than one batch
    before = db.statement_count

    summary = run(db, broker, ALLOW_SAME_SYMBOL="true")

    statements = db.statement_count - before
    assert summary.outcome == "success" and summary.counts["placed"] == 120
    assert statements < 2 * len(ids), f"{statements} statements for {len(ids)} decisions"  # one by one: ~25 each
    assert broker.calls.counts["submit_order"] == 120  # one broker call per NEW_TRADE
    entries = db.query("order_execution", {"order_type": "ENTRY"}, order_by="id")
    assert len({e["client_order_id"] for e in entries}) == 120 and all(e["alpaca_order_id"] for e in entries)
    assert len([o for o in exchange.orders() if o["client_order_id"].startswith("tm-d")]) == 120  # entries
    for decision_id in ids:  # each decision's trail: the intent recorded before the acceptance
        events = [e["event"] for e in db.query("audit_event", {"entity_type": "decision", "entity_id": decision_id},
                                               order_by="id")]
        assert events == ["ORDER_INTENT", "DECISION_ACCEPTED"]
        assert decision(db, decision_id)["executed"] is True


def test_submissions_wait_for_the_rate_limit_window_instead_of_running_into_a_429(
        db, exchange, exchange_server, broker, monkeypatch):
    from paper_exchange.ratelimit import RateLimiter

    elapsed = [0.0]  # the limiter's clock: moves only when the executor waits
    started = time.time()
    monkeypatch.setattr(exchange_server, "rate_limits",
                        RateLimiter(20, monotonic=lambda: elapsed[0], wall=lambda: started + elapsed[0]))
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        elapsed[0] += seconds

    for _ in range(30):  # 30 submissions and the run's own calls: more than one window of 20
        add_decision(db, "AAPL", planned_qty=1)

    summary = run_once(db, broker, settings=make_settings(ALLOW_SAME_SYMBOL="true"), sleep=sleep)

    assert summary.outcome == "success" and summary.counts["placed"] == 30
    assert broker.calls.errors == {}  # never a 429
    assert summary.counts["rate_limit_waits"] >= 1 and all(0 < w <= 60 for w in waits)
    assert broker.rate_limit is not None and broker.rate_limit.limit == 20


def test_a_run_cut_short_by_a_429_leaves_the_decision_for_the_retry_job_which_places_it_once(db, exchange, broker):
    exchange.fault(status=429, message="rate limit exceeded", method="POST", path="/v2/orders", count=1)
    decision_id = add_decision(db, "AAPL")

    first = run(db, broker)

    assert first.outcome == "warning" and first.counts["deferred"] == 1
    assert order_executor.unfinished_work(db) is not None  # what the scheduler's retry job asks
    second = run(db, broker)
    assert second.counts["placed"] == 1 and decision(db, decision_id)["executed"] is True
    assert len([o for o in exchange.orders() if o["client_order_id"].startswith("tm-d")]) == 1  # one entry
    assert order_executor.unfinished_work(db) is None  # done: the retry job lets its next fires pass
