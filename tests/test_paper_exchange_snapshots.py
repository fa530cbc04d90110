"""Market-data snapshots and latest bars, through alpaca-py's StockHistoricalDataClient."""

from __future__ import annotations

from datetime import UTC, datetime

from alpaca.data.requests import StockLatestBarRequest, StockLatestQuoteRequest, StockSnapshotRequest
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest

from tests.paper_exchange_helpers import running_exchange

MONDAY_1000_ET = "2026-11-23T15:00:00Z"


def test_a_snapshot_has_the_latest_quote_trade_and_minute_bar_and_the_last_two_daily_bars() -> None:
    with running_exchange(price_simulation=True) as ex:
        ex.set_time(MONDAY_1000_ET)
        snapshots = ex.data.get_stock_snapshot(StockSnapshotRequest(symbol_or_symbols=["SPY", "MSFT"]))
        assert set(snapshots) == {"SPY", "MSFT"}
        spy = snapshots["SPY"]
        quote = ex.data.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols="SPY"))["SPY"]
        assert (spy.latest_quote.bid_price, spy.latest_quote.ask_price) == (quote.bid_price, quote.ask_price)
        assert spy.latest_trade.timestamp == datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
        assert spy.minute_bar.timestamp == datetime(2026, 11, 23, 14, 59, tzinfo=UTC)  # the last whole minute
        assert spy.minute_bar.close == spy.latest_trade.price
        # The daily bars are Monday's (so far) and the Friday before the weekend, at New York midnight.
        assert spy.daily_bar.timestamp == datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
        assert spy.previous_daily_bar.timestamp == datetime(2026, 11, 20, 5, 0, tzinfo=UTC)
        assert spy.daily_bar.close == spy.minute_bar.close
        assert spy.daily_bar.open == spy.previous_daily_bar.close  # the walk does not gap overnight


def test_our_own_fill_is_the_latest_trade_and_the_minute_bar_of_a_manually_quoted_symbol() -> None:
    with running_exchange() as ex:
        ex.quote("AAPL", "150.20", "150.30")
        ex.trading.submit_order(MarketOrderRequest(symbol="AAPL", qty=4, side=OrderSide.BUY,
                                                   time_in_force=TimeInForce.DAY))
        ex.advance(60)
        snapshot = ex.data.get_stock_snapshot(StockSnapshotRequest(symbol_or_symbols="AAPL"))["AAPL"]
        assert snapshot.latest_trade.price == 150.30 and snapshot.latest_trade.size == 4
        assert (snapshot.latest_quote.bid_price, snapshot.latest_quote.ask_price) == (150.20, 150.30)
        assert snapshot.minute_bar.close == 150.30
        latest = ex.data.get_stock_latest_bar(StockLatestBarRequest(symbol_or_symbols=["AAPL"]))["AAPL"]
        assert latest.timestamp == snapshot.minute_bar.timestamp and latest.close == 150.30


def test_unknown_symbols_are_left_out_and_a_single_symbol_answer_names_its_symbol() -> None:
    with running_exchange(price_simulation=True) as ex:
        ex.advance(120)
        body = ex.api("GET", "/v2/stocks/snapshots?symbols=SPY,NOPEQ", expect=200).json()
        assert set(body) == {"SPY"}
        assert set(body["SPY"]) == {"latestTrade", "latestQuote", "minuteBar", "dailyBar", "prevDailyBar"}
        single = ex.api("GET", "/v2/stocks/spy/snapshot", expect=200).json()
        assert single["symbol"] == "SPY" and single["latestQuote"] == body["SPY"]["latestQuote"]
        assert ex.api("GET", "/v2/stocks/NOPEQ/snapshot").status_code == 404
        bars = ex.api("GET", "/v2/stocks/bars/latest?symbols=SPY,NOPEQ", expect=200).json()
        assert set(bars["bars"]) == {"SPY"}
        one = ex.api("GET", "/v2/stocks/SPY/bars/latest", expect=200).json()
        assert one == {"symbol": "SPY", "bar": bars["bars"]["SPY"]}
        assert ex.api("GET", "/v2/stocks/snapshots?symbols=").status_code == 400
