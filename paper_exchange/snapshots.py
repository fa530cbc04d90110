"""Market-data snapshots and latest bars, composed from the exchange's quotes, prints and bars.

* ``GET /v2/stocks/snapshots?symbols=A,B`` -> ``{"A": {latestTrade, latestQuote, minuteBar,
  dailyBar, prevDailyBar}, ...}`` (no wrapping key, as Alpaca); ``GET /v2/stocks/{symbol}/snapshot``
  -> the same object with ``symbol``.
* ``GET /v2/stocks/bars/latest?symbols=A,B`` -> ``{"bars": {"A": bar}}``;
  ``GET /v2/stocks/{symbol}/bars/latest`` -> ``{"symbol", "bar"}``.

``minuteBar`` and the latest bar are the last 1-minute bar at or before now; ``dailyBar`` is the
bar of the latest trading day that has one (today once the session traded), ``prevDailyBar`` the
day before it. A member the exchange has no data for is left out (the schemas make none of them
nullable); symbols the exchange does not know are left out of the multi-symbol answers and
answered 404 by the single-symbol ones.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from .bars import TimeFrame, aggregate
from .errors import not_found
from .market_data import symbol_list
from .timeutil import UTC, eastern_datetime, to_eastern

# How far back to look for the last minute bar and the last two daily bars: further than any
# market closure (a long weekend plus holidays).
_LOOKBACK = timedelta(days=14)
_MINUTE = TimeFrame(1, "Min")
_DAY = TimeFrame(1, "Day")


class MarketSnapshotsApi:
    """Snapshot and latest-bar endpoints of :class:`~paper_exchange.engine.PaperExchange` (a
    mixin built on the engine's public market-data methods and its lock)."""

    def stock_snapshots(self, symbols: str | Iterable[str]) -> dict[str, Any]:
        """``GET /v2/stocks/snapshots``: one snapshot per known symbol."""
        with self._lock:  # type: ignore[attr-defined]
            now = self.now()  # type: ignore[attr-defined]
            quotes = self.latest_quotes(symbols)["quotes"]  # type: ignore[attr-defined]
            trades = self.latest_trades(symbols)["trades"]  # type: ignore[attr-defined]
            result: dict[str, Any] = {}
            for symbol in _known(self, symbols):
                snapshot: dict[str, Any] = {}
                if symbol in trades:
                    snapshot["latestTrade"] = trades[symbol]
                if symbol in quotes:
                    snapshot["latestQuote"] = quotes[symbol]
                minute, daily = self._latest_bars(symbol, now)
                if minute is not None:
                    snapshot["minuteBar"] = minute
                if daily:
                    snapshot["dailyBar"] = daily[0]
                if len(daily) > 1:
                    snapshot["prevDailyBar"] = daily[1]
                result[symbol] = snapshot
            return result

    def stock_snapshot(self, symbol: str) -> dict[str, Any]:
        """``GET /v2/stocks/{symbol}/snapshot``."""
        snapshots = self.stock_snapshots([symbol.upper()])
        if not snapshots:
            raise not_found(f"no snapshot for {symbol.upper()}: unknown symbol")
        name, snapshot = next(iter(snapshots.items()))
        return {"symbol": name, **snapshot}

    def latest_bars(self, symbols: str | Iterable[str]) -> dict[str, Any]:
        """``GET /v2/stocks/bars/latest``: the last minute bar of each known symbol."""
        with self._lock:  # type: ignore[attr-defined]
            now = self.now()  # type: ignore[attr-defined]
            bars = {}
            for symbol in _known(self, symbols):
                minute, _daily = self._latest_bars(symbol, now, daily=False)
                if minute is not None:
                    bars[symbol] = minute
            return {"bars": bars}

    def latest_bar(self, symbol: str) -> dict[str, Any]:
        """``GET /v2/stocks/{symbol}/bars/latest``."""
        bars = self.latest_bars([symbol.upper()])["bars"]
        if not bars:
            raise not_found(f"no bar for {symbol.upper()}")
        name, bar = next(iter(bars.items()))
        return {"symbol": name, "bar": bar}

    def _latest_bars(
        self, symbol: str, now: datetime, daily: bool = True
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """(the last minute bar, [the latest daily bar, the one before]) of ``symbol``: the same
        bars ``GET /v2/stocks/bars`` answers, aggregated over the last two trading days only."""
        series = self.market.bar_series(symbol, now)  # type: ignore[attr-defined]
        if series is None:
            return None, []
        recent = series.indices(now - _LOOKBACK, now)
        if not recent:
            return None, []
        last = datetime.fromtimestamp(series.times[recent[-1]], UTC)
        minute = aggregate(series, _MINUTE, last, last)[0]
        if not daily:
            return minute, []
        day_start = eastern_datetime(to_eastern(last).date(), 0, 0)
        first_today = bisect.bisect_left(series.times, int(day_start.timestamp()))
        since = day_start
        if first_today > 0:  # the trading day before, whenever it was
            before = datetime.fromtimestamp(series.times[first_today - 1], UTC)
            since = eastern_datetime(to_eastern(before).date(), 0, 0)
        days = aggregate(series, _DAY, since, now)
        return minute, days[::-1][:2]


def _known(exchange: Any, symbols: str | Iterable[str]) -> list[str]:
    """The requested symbols the exchange knows, in request order (400 when none is given)."""
    return [s for s in symbol_list(symbols) if exchange.market.state(s) is not None]
