"""``GET /v2/account/portfolio/history`` from the exchange's own equity, through alpaca-py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import GetPortfolioHistoryRequest, MarketOrderRequest

from paper_exchange import PaperExchange
from paper_exchange.persistence import StateFile
from tests.paper_exchange_helpers import Exchange, running_exchange


def epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


@pytest.fixture
def ex() -> Iterator[Exchange]:
    """Friday 09:45 ET: 10 AAPL bought at the ask 150.30 (marked at the mid 150.25: equity
    99,999.50), then at 09:50 the quote rises by a dollar (equity 100,009.50)."""
    with running_exchange() as exchange:
        exchange.quote("AAPL", "150.20", "150.30")
        exchange.trading.submit_order(MarketOrderRequest(symbol="AAPL", qty=10, side=OrderSide.BUY,
                                                         time_in_force=TimeInForce.DAY))
        exchange.advance(1)  # filled by now, whether on arrival or at the next pass
        exchange.advance(299)
        exchange.quote("AAPL", "151.20", "151.30")
        exchange.advance(150)
        yield exchange


def history(ex: Exchange, **params: object):
    return ex.trading.get_portfolio_history(GetPortfolioHistoryRequest(**params))


def test_intraday_history_follows_the_equity_minute_by_minute_from_the_accounts_start(ex: Exchange) -> None:
    day = history(ex, period="1D", timeframe="1Min")
    assert day.timeframe == "1Min"
    assert day.timestamp[0] == epoch("2026-11-20T14:45:00")  # the account began at 09:45 ET
    assert day.timestamp[-1] == epoch("2026-11-20T14:52:00")  # the minute in progress
    assert all(b - a == 60 for a, b in zip(day.timestamp, day.timestamp[1:], strict=False))
    assert day.equity == [99999.5] * 5 + [100009.5] * 3
    # A new account has no earlier close: the first point is the base.
    assert day.base_value == 99999.5
    assert day.profit_loss == [0.0] * 5 + [10.0] * 3 and day.profit_loss_pct[-1] == 0.0001
    five = history(ex, period="1D", timeframe="5Min")
    assert five.timestamp == [epoch("2026-11-20T14:45:00"), epoch("2026-11-20T14:50:00")]
    assert five.equity == [99999.5, 100009.5]  # each window's value at its end (or now)


def test_the_next_session_is_measured_against_the_previous_close(ex: Exchange) -> None:
    ex.set_time("2026-11-23T14:40:00Z")  # Monday 09:40 ET, over the weekend
    monday = ex.api("GET", "/v2/account/portfolio/history?period=1D&timeframe=5Min", expect=200).json()
    assert monday["timestamp"] == [epoch("2026-11-23T14:30:00"), epoch("2026-11-23T14:35:00"),
                                   epoch("2026-11-23T14:40:00")]
    assert monday["base_value"] == 100009.5 and monday["base_value_asof"] == "2026-11-20"
    assert monday["profit_loss"] == [0.0, 0.0, 0.0] and monday["cashflow"] == {}
    ex.quote("AAPL", "149.20", "149.30")
    later = ex.api("GET", "/v2/account/portfolio/history?period=1D&timeframe=1Min", expect=200).json()
    assert later["equity"][-1] == 99989.5 and later["profit_loss"][-1] == -20.0
    assert later["profit_loss_pct"][-1] == -0.0002


def test_daily_history_has_one_point_per_trading_day(ex: Exchange) -> None:
    ex.set_time("2026-11-24T15:00:00Z")  # Tuesday 10:00 ET
    week = history(ex, period="1W", timeframe="1D")
    # Friday and Monday at their closes, Tuesday so far; no weekend days; New York midnights.
    assert week.timestamp == [epoch("2026-11-20T05:00:00"), epoch("2026-11-23T05:00:00"),
                              epoch("2026-11-24T05:00:00")]
    assert week.equity == [100009.5, 100009.5, 100009.5]
    assert week.timeframe == "1D"
    assert history(ex).timeframe == "1D"  # the default period is a month, shown daily


def test_history_begins_again_after_an_admin_reset(ex: Exchange) -> None:
    ex.admin("POST", "/admin/reset")
    ex.advance(60)
    day = history(ex, period="1D", timeframe="1Min")
    assert day.timestamp[0] == epoch("2026-11-20T14:52:00")
    assert set(day.equity) == {100000.0}


def test_malformed_history_queries_are_refused(ex: Exchange) -> None:
    for query, message in (
        ("period=3X", "invalid period: '3X' (a number and D, W, M or A, such as 1M)"),
        ("timeframe=2H", "invalid timeframe: '2H' (1Min, 5Min, 15Min, 1H or 1D)"),
        ("period=2M&timeframe=15Min", "intraday timeframes can be queried for 30 days at most; use 1D"),
        ("period=1W&start=2026-11-16T00:00:00Z&end=2026-11-20T00:00:00Z",
         "only two of start, end and period can be given"),
        ("start=tomorrow", "invalid start: 'tomorrow'"),
        ("intraday_reporting=sometimes", "invalid intraday_reporting: 'sometimes'"),
    ):
        response = ex.api("GET", f"/v2/account/portfolio/history?{query}")
        assert response.status_code == 422 and response.json() == {"code": 42210000, "message": message}, query


def test_the_equity_history_is_kept_in_the_state_file(tmp_path: Path) -> None:
    exchange = PaperExchange(seed=7, simulated_clock=True, start_time="2026-11-20T14:45:00Z", price_simulation=False)
    exchange.set_quote("AAPL", "150.20", "150.30")
    exchange.submit_order({"symbol": "AAPL", "qty": 10, "side": "buy", "type": "market", "time_in_force": "day"})
    exchange.advance(300)
    StateFile(tmp_path / "state.json", exchange).save()
    restored = PaperExchange(seed=7, simulated_clock=True, start_time="2026-11-20T14:45:00Z", price_simulation=False)
    StateFile(tmp_path / "state.json", restored).load()
    query = {"period": "1D", "timeframe": "1Min"}
    assert restored.portfolio_history(query) == exchange.portfolio_history(query)
