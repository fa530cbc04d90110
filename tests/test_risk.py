"""trading.risk: sizing, caps, and each limit of the gate with its numbers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from config import get_risk_limits
from trading.errors import RejectedError
from trading.plan import parse_plan
from trading.risk import RiskState, check_entry, size_position

D = Decimal


def limits(**env):
    base = {"MAX_POSITION_NOTIONAL": "50000", "MAX_POSITION_PCT_OF_EQUITY": "50", "MAX_TOTAL_EXPOSURE_PCT": "100",
            "MAX_OPEN_TRADES": "5", "MAX_ORDERS_PER_DAY": "5", "DAILY_LOSS_LIMIT": "1000", "RISK_PER_TRADE": "500"}
    base.update({k: str(v) for k, v in env.items()})
    return get_risk_limits(env=base)


def plan(**decision):
    base = {"planned_entry": 150, "planned_sl": 145, "planned_tp": 160, "trade_style": "SWING"}
    base.update(decision)
    return parse_plan({"id": 1, "ticker": decision.pop("ticker", "AAPL"), "decision": base})


def state(**values):
    base = {"equity": D("100000"), "buying_power": D("100000"), "open_trades": 0}
    base.update(values)
    return RiskState(**base)


def test_planned_qty_is_used_in_whole_shares():
    sizing = size_position(plan(planned_qty="10.7"), limits(), D("100000"))
    assert (sizing.qty, sizing.method, sizing.note) == (D("10"), "planned_qty", None)


def test_position_size_pct_of_equity():
    sizing = size_position(plan(position_size_pct=5), limits(), D("100000"))
    assert sizing.qty == D("33")  # 5,000 / 150 = 33.3


def test_fixed_risk_per_trade_divided_by_entry_minus_stop():
    sizing = size_position(plan(), limits(RISK_PER_TRADE=500), D("100000"))
    assert sizing.qty == D("100")  # 500 / (150 - 145)


def test_size_is_capped_by_max_notional_and_percent_of_equity_with_a_note():
    capped = size_position(plan(planned_qty=1000), limits(MAX_POSITION_NOTIONAL=15000), D("100000"))
    assert capped.qty == D("100") and "capped to 100 by MAX_POSITION_NOTIONAL" in capped.note
    by_pct = size_position(plan(planned_qty=1000), limits(MAX_POSITION_PCT_OF_EQUITY=3), D("100000"))
    assert by_pct.qty == D("20") and "MAX_POSITION_PCT_OF_EQUITY" in by_pct.note


def test_a_size_of_zero_shares_is_refused():
    with pytest.raises(RejectedError, match="zero shares") as caught:
        size_position(plan(planned_entry=150, planned_sl=100, planned_tp=200), limits(RISK_PER_TRADE=10),
                      D("100000"))
    assert caught.value.code == "RISK_SIZE_ZERO"


@pytest.mark.parametrize("risk_state, limit_env, qty, code, words", [
    ({"open_trades": 5}, {}, 10, "RISK_MAX_OPEN_TRADES", "MAX_OPEN_TRADES: 5 trades open, limit 5"),
    ({"entries_today": 5}, {}, 10, "RISK_MAX_ORDERS_PER_DAY", "5 entries placed today, limit 5"),
    ({"open_symbols": {"AAPL"}}, {}, 10, "RISK_SAME_SYMBOL", "a trade in AAPL is already open"),
    ({}, {"MAX_POSITION_NOTIONAL": 1000}, 10, "RISK_MAX_POSITION_NOTIONAL", "10 x 150.00 = 1,500.00 exceeds 1,000.00"),
    ({}, {"MAX_POSITION_PCT_OF_EQUITY": 1}, 10, "RISK_MAX_POSITION_PCT", "exceeds 1% of equity 100,000.00"),
    ({"exposure": D("99000")}, {}, 10, "RISK_MAX_TOTAL_EXPOSURE", "exposure 99,000.00 + 1,500.00 exceeds 100%"),
    ({"buying_power": D("1000")}, {}, 10, "RISK_BUYING_POWER", "1,500.00 needed, 1,000.00 available"),
    ({"realized_pnl_today": D("-1000")}, {}, 10, "RISK_DAILY_LOSS_LIMIT", "-1,000.00 is beyond the limit -1,000.00"),
    ({"equity": D("0")}, {}, 10, "RISK_EQUITY", "equity is 0.00"),
])
def test_each_limit_refuses_with_its_name_and_numbers(risk_state, limit_env, qty, code, words):
    with pytest.raises(RejectedError) as caught:
        check_entry(plan(), D(qty), limits(**limit_env), state(**risk_state))
    assert caught.value.code == code
    assert words in str(caught.value)


def test_same_symbol_is_allowed_when_configured():
    assert check_entry(plan(), D("10"), limits(ALLOW_SAME_SYMBOL="true"), state(open_symbols={"AAPL"})) == D("1500.00")


def test_buying_power_reserve_is_kept():
    with pytest.raises(RejectedError, match=r"less reserve 600\.00"):
        check_entry(plan(), D("10"), limits(MIN_BUYING_POWER_RESERVE=600), state(buying_power=D("2000")))


def test_accepted_entries_count_against_the_rest_of_the_batch():
    risk_state = state()
    lim = limits(MAX_OPEN_TRADES=2)
    for symbol in ("AAPL", "MSFT"):
        notional = check_entry(plan(ticker=symbol), D("10"), lim, risk_state)
        risk_state.accept(symbol, notional)
    assert (risk_state.open_trades, risk_state.entries_today) == (2, 2)
    assert risk_state.exposure == D("3000.00") and risk_state.buying_power == D("97000.00")
    with pytest.raises(RejectedError, match="MAX_OPEN_TRADES"):
        check_entry(plan(ticker="NVDA"), D("10"), lim, risk_state)
