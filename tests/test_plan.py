"""trading.plan: decisions parsed, validated, or refused with a reason an operator can act on."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from trading.errors import RejectedError
from trading.plan import check_against_quote, decision_payload, parse_plan, referenced_ids

D = Decimal


def row(decision=None, ticker="AAPL", **extra):
    base = {"planned_entry": 150, "planned_sl": 145, "planned_tp": 160, "trade_style": "SWING", "planned_qty": 10}
    if decision is None:
        decision = base
    elif isinstance(decision, dict):
        decision = {**base, **decision}
        decision = {k: v for k, v in decision.items() if v is not None}
    return {"id": 1, "ticker": ticker, "decision": decision, **extra}


def refusal(decision=None, **extra) -> str:
    with pytest.raises(RejectedError) as caught:
        parse_plan(row(decision, **extra))
    assert caught.value.code == "INVALID_DECISION"
    return str(caught.value)


def test_swing_plan_is_parsed_with_prices_on_the_tick():
    plan = parse_plan(row({"planned_entry": "150.123", "planned_sl": 145.004, "planned_tp": "160.1"}))
    assert (plan.symbol, plan.trade_style, plan.time_in_force) == ("AAPL", "SWING", "gtc")
    assert (plan.entry, plan.stop, plan.target, plan.qty) == (D("150.12"), D("145.00"), D("160.10"), D("10"))


def test_daytrade_plan_needs_no_target_and_is_a_day_order():
    plan = parse_plan(row({"trade_style": "daytrade", "planned_tp": None}, ticker=" msft "))
    assert (plan.symbol, plan.trade_style, plan.target, plan.time_in_force) == ("MSFT", "DAYTRADE", None, "day")


def test_double_encoded_json_from_n8n_is_accepted():
    text = json.dumps({"planned_entry": 150, "planned_sl": 145, "planned_tp": 160, "trade_style": "SWING"})
    assert parse_plan(row(text)).entry == D("150.00")
    assert parse_plan(row(json.dumps(text))).stop == D("145.00")


@pytest.mark.parametrize("decision, words", [
    ('{"planned_entry": 150,', "decision is not valid JSON"),
    ("[1, 2]", "must be a JSON object, got list"),
    ("", "decision is empty"),
])
def test_malformed_decisions_are_refused(decision, words):
    assert words in refusal(decision)


def test_null_decision_is_refused():
    with pytest.raises(RejectedError, match="decision is missing"):
        parse_plan({"id": 1, "ticker": "AAPL", "decision": None})


@pytest.mark.parametrize("changes, words", [
    ({"planned_entry": None}, "planned_entry is missing"),
    ({"planned_sl": "abc"}, "planned_sl 'abc' is not a number"),
    ({"planned_entry": -150}, "planned_entry must be positive, got -150"),
    ({"planned_sl": 0}, "planned_sl must be positive"),
    ({"planned_sl": 151}, "planned_sl 151 must be below planned_entry 150"),
    ({"planned_tp": 149}, "planned_tp 149 must be above planned_entry 150"),
    ({"planned_tp": None}, "planned_tp is missing"),
    ({"trade_style": "SCALP"}, "trade_style must be SWING or DAYTRADE, got 'SCALP'"),
    ({"planned_sl": "149.996"}, "less than $0.01 below planned_entry"),
    ({"planned_qty": 0}, "planned_qty must be positive"),
    ({"position_size_pct": 150}, "position_size_pct must be a percent between 0 and 100"),
    ({"time_in_force": "ioc"}, "time_in_force must be day or gtc"),
    ({"trade_style": "DAYTRADE", "time_in_force": "gtc"}, "DAYTRADE is flat by the close"),
    ({"ticker": "MSFT"}, "differs from the row's ticker 'AAPL'"),
])
def test_impossible_plans_are_refused_with_the_field_and_value(changes, words):
    assert words in refusal(changes)


@pytest.mark.parametrize("ticker", [None, "", "not a ticker", "TOOLONGSYMBOL", "12AB"])
def test_invalid_tickers_are_refused(ticker):
    assert "ticker" in refusal(ticker=ticker)


def test_decision_payload_requires_an_object():
    assert decision_payload({"a": 1}) == {"a": 1}
    with pytest.raises(RejectedError):
        decision_payload(42)


def test_referenced_ids_come_from_columns_then_json():
    assert referenced_ids({"existing_trade_journal_id": 7, "decision": {}}) == (7, None)
    assert referenced_ids({"decision": {"existing_trade_journal_id": "8", "existing_order_id": "abc"}}) == (8, "abc")
    assert referenced_ids({"decision": "not json", "existing_order_id": "x-1"}) == (None, "x-1")
    with pytest.raises(RejectedError, match="is not a number"):
        referenced_ids({"existing_trade_journal_id": "seven", "decision": {}})


@pytest.mark.parametrize("value", ["1,05", "1,050.00", "150,25"])
def test_number_with_a_comma_is_refused_as_ambiguous_not_stripped(value):
    assert "ambiguous" in refusal({"planned_entry": value, "planned_sl": "1", "planned_tp": "2000"})


@pytest.mark.parametrize("key, value", [
    ("planned_entry", D("1e30")), ("planned_entry", "1e40"), ("planned_qty", "1e40"), ("planned_qty", 1e30),
    ("planned_tp", "1e28"), ("planned_sl", "1e-30"),
])
def test_absurd_magnitudes_are_refused_once_with_a_reason_not_an_arithmetic_error(key, value):
    # the other prices are scaled so that only the magnitude itself can be the reason
    wide = {"planned_entry": "100", "planned_sl": "50", "planned_tp": "1e29"} if key == "planned_tp" else \
        {"planned_entry": "1e31", "planned_sl": "1", "planned_tp": "1e32"} if key == "planned_entry" else {}
    reason = refusal({**wide, key: value})
    assert key in reason and ("too large" in reason or "too small" in reason or "precision" in reason), reason


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "nan", "inf"])
def test_not_a_number_and_infinity_are_refused(value):
    assert "planned_entry" in refusal({"planned_entry": value})


def test_nan_written_as_a_json_constant_is_refused():
    text = '{"planned_entry": NaN, "planned_sl": 145, "planned_tp": 160, "trade_style": "SWING"}'
    assert "planned_entry" in refusal(text)


@pytest.mark.parametrize(("bid", "ask", "drift", "stale"), [
    ("149.90", "150.10", "5", None),
    ("145.00", "145.10", "5", "bid 145.00 is at or below planned_sl 145.00"),
    ("0", "144.99", "5", "ask 144.99 is at or below planned_sl 145.00"),  # no bid: the ask says
    ("157.60", "157.80", "5", "trades at 157.70 (5.13% from planned_entry 150.00)"),
    ("157.60", "157.80", "0", None),  # 0: drift not checked
    ("142.40", "142.60", "0", "bid 142.40 is at or below planned_sl"),  # the stop check stays
])
def test_a_plan_is_compared_with_the_latest_quote(bid, ask, drift, stale):
    plan = parse_plan(row())
    if stale is None:
        assert "stop not crossed" in check_against_quote(plan, D(bid), D(ask), D(drift))
        return
    with pytest.raises(RejectedError) as caught:
        check_against_quote(plan, D(bid), D(ask), D(drift))
    assert caught.value.code == "STALE_PLAN" and stale in str(caught.value)
