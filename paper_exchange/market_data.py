"""Assets and market data: ``GET /v2/assets``, latest quotes and trades, and bars.

The answers come from the simulated market (:class:`~paper_exchange.market.Market`); the
snapshot and latest-bar endpoints are in :mod:`paper_exchange.snapshots`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from .bars import TimeFrame, aggregate, iter_symbols
from .book import OrderBook
from .errors import bad_request, not_found
from .market import SymbolState
from .timeutil import eastern_datetime, iso_utc, to_eastern
from .universe import tape_for


class MarketDataApi(OrderBook):
    """Assets and market data (a part of :class:`~paper_exchange.engine.PaperExchange`)."""

    def list_assets(self, status: str | None = None, asset_class: str | None = None) -> list[dict[str, Any]]:
        """``GET /v2/assets`` (only ``us_equity`` exists here)."""
        with self._lock:
            if asset_class and asset_class != "us_equity":
                return []
            return [a.to_json() for a in self.market.assets() if status in (None, "", a.status)]

    def get_asset(self, symbol_or_id: str) -> dict[str, Any]:
        """``GET /v2/assets/{symbol_or_asset_id}``."""
        with self._lock:
            asset = self.market.find_asset(symbol_or_id)
            if asset is None:
                raise not_found("asset not found")
            return asset.to_json()

    def latest_quotes(self, symbols: str | Iterable[str]) -> dict[str, Any]:
        """``GET /v2/stocks/quotes/latest``: ``{"quotes": {SYM: {...}}}`` for known symbols."""
        return {"quotes": self._latest(symbols, _quote_json)}

    def latest_trades(self, symbols: str | Iterable[str]) -> dict[str, Any]:
        """``GET /v2/stocks/trades/latest``: the last print (simulated or one of our fills)."""
        return {"trades": self._latest(symbols, _trade_json)}

    def _latest(
        self, symbols: str | Iterable[str], row: Callable[[SymbolState], dict[str, Any] | None]
    ) -> dict[str, Any]:
        """``row(state)`` of each requested symbol that is known and has one, in request order."""
        wanted = symbol_list(symbols)
        with self._lock:
            self._sync()
            result = {}
            for symbol in wanted:
                state = self.market.state(symbol)
                value = None if state is None else row(state)
                if value is not None:
                    result[symbol] = value
            return result

    def bars(
        self,
        symbols: str | Iterable[str],
        timeframe: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
        page_token: str | None = None,
        sort: str = "asc",
    ) -> dict[str, Any]:
        """``GET /v2/stocks/bars``: aggregated bars with page tokens (limit across symbols)."""
        frame = TimeFrame.parse(timeframe)
        wanted = sorted(symbol_list(symbols))
        limit = 1000 if limit is None else limit
        if not 1 <= limit <= 10000:
            raise bad_request("invalid limit: must be between 1 and 10000")
        if sort not in ("asc", "desc"):
            raise bad_request(f"invalid sort: {sort!r}")
        offset = _decode_page_token(page_token)
        with self._lock:
            self._sync()
            now = self._now
            if start is None:
                # Alpaca's default: the beginning of the current (New York) day.
                start = eastern_datetime(to_eastern(now).date(), 0, 0)
            end = min(end or now, now)
            rows: list[tuple[str, dict[str, Any]]] = []
            for symbol in wanted:
                series = self.market.bar_series(symbol, now)
                if series is None:
                    continue
                symbol_bars = aggregate(series, frame, start, end)
                if sort == "desc":
                    symbol_bars.reverse()
                rows.extend((symbol, bar) for bar in symbol_bars)
        page = rows[offset : offset + limit]
        result: dict[str, list[dict[str, Any]]] = {}
        for symbol, bar in page:
            result.setdefault(symbol, []).append(bar)
        more = offset + limit < len(rows)
        return {"bars": result, "next_page_token": _encode_page_token(offset + limit) if more else None}


def symbol_list(symbols: str | Iterable[str]) -> list[str]:
    """The symbols of a request (a comma-separated string or a list), upper case; 400 when none."""
    if isinstance(symbols, str):
        result = list(iter_symbols(symbols))
    else:
        result = [s.strip().upper() for s in symbols if s and s.strip()]
    if not result:
        raise bad_request("symbols is required")
    return result


def _quote_json(state: SymbolState) -> dict[str, Any] | None:
    q = state.quote
    if q is None:
        return None
    return {
        "t": iso_utc(q.time),
        "ax": "V",
        "ap": float(q.ask),
        "as": q.ask_size,
        "bx": "V",
        "bp": float(q.bid),
        "bs": q.bid_size,
        "c": ["R"],
        "z": tape_for(state.asset.exchange),
    }


def _trade_json(state: SymbolState) -> dict[str, Any] | None:
    t = state.last_trade
    if t is None:
        return None
    return {
        "t": iso_utc(t.time),
        "x": "V",
        "p": float(t.price),
        "s": t.size,
        "c": ["@"],
        "i": t.id,
        "z": tape_for(state.asset.exchange),
    }


def _encode_page_token(offset: int) -> str:

    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_page_token(token: str | None) -> int:
    if not token:
        return 0

    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        prefix, _, number = text.partition(":")
        if prefix != "offset":
            raise ValueError(text)
        return max(0, int(number))
    except Exception:
        raise bad_request("invalid page_token") from None
