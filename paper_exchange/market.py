"""Quotes, last trades and the seeded random-walk price simulator of every symbol.

Each simulated symbol has its own ``random.Random`` seeded from ``(seed, symbol)``, so a
symbol's path depends only on the seed and the number of steps taken, never on other
symbols, request timing or wall time. One step is one minute of market time. A symbol
whose quote is set by hand (``/admin/quotes``) becomes *manual* and stops moving.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from .bars import BarSeries, synthesize_history
from .calendar import NyseCalendar
from .errors import bad_request
from .money import fmt, round_to_tick, tick_for, to_decimal
from .timeutil import UTC, iso_utc, parse_timestamp
from .universe import Asset, default_assets

MID_PLACES = Decimal("0.000001")
MIN_PRICE = Decimal("0.01")
MINUTES_PER_YEAR = 252 * 390


@dataclass
class Quote:
    """Best bid and offer. A zero price means no bid (or no ask), as in Alpaca's data."""

    bid: Decimal
    ask: Decimal
    bid_size: int
    ask_size: int
    time: datetime

    @property
    def mid(self) -> Decimal | None:
        """Midpoint, or the one side present, or None when the book is empty."""
        if self.bid > 0 and self.ask > 0:
            return (self.bid + self.ask) / 2
        if self.bid > 0:
            return self.bid
        if self.ask > 0:
            return self.ask
        return None


@dataclass
class LastTrade:
    """The most recent print of a symbol (a simulated print or one of our fills)."""

    price: Decimal
    size: int
    time: datetime
    id: int


@dataclass
class SymbolState:
    """Everything the market knows about one symbol."""

    asset: Asset
    mid: Decimal
    quote: Quote | None
    manual: bool
    rng: random.Random
    last_trade: LastTrade | None
    lastday_price: Decimal
    bars: BarSeries


class Market:
    """The universe of symbols with their quotes and price simulation.

    Not thread-safe by itself: the engine calls it under its own lock.
    """

    def __init__(
        self,
        calendar: NyseCalendar,
        now: datetime,
        *,
        seed: int = 0,
        simulate: bool = True,
        include_default_universe: bool = True,
        symbols: Mapping[str, Any] | Iterable[str] | None = None,
        annual_volatility: float = 0.30,
        history_days: int = 30,
    ) -> None:
        self._calendar = calendar
        self.seed = seed
        self.simulate = simulate
        self.include_default_universe = include_default_universe
        self.annual_volatility = annual_volatility
        self.sigma = annual_volatility / math.sqrt(MINUTES_PER_YEAR)
        self.history_days = history_days
        self._extra_symbols = _normalize_symbols(symbols)
        self._symbols: dict[str, SymbolState] = {}
        self._trade_ids = 0
        self.reset(now)

    # ------------------------------------------------------------------ universe
    def reset(self, now: datetime) -> None:
        """Back to the starting universe and prices, every symbol simulated again."""
        self._symbols = {}
        universe = default_assets() if self.include_default_universe else {}
        for symbol, price in self._extra_symbols.items():
            if symbol in universe:
                if price is not None:
                    universe[symbol].price = price
            else:
                universe[symbol] = _new_asset(symbol, price or Decimal("100"))
        for asset in universe.values():
            self._add(asset, now)

    def _add(self, asset: Asset, now: datetime) -> SymbolState:
        state = SymbolState(
            asset=asset,
            mid=asset.price,
            quote=None,
            manual=False,
            rng=seeded_rng(f"{self.seed}:{asset.symbol}"),
            last_trade=None,
            lastday_price=asset.price,
            bars=BarSeries(),
        )
        self._symbols[asset.symbol] = state
        if self.simulate:
            state.quote = self._make_quote(state, now)
            self._print(state, round_to_tick(state.mid), 100, now)
        return state

    def symbols(self) -> list[str]:
        """All known symbols, sorted."""
        return sorted(self._symbols)

    def has(self, symbol: str) -> bool:
        """True when ``symbol`` is part of the universe."""
        return symbol in self._symbols

    def state(self, symbol: str) -> SymbolState | None:
        """The state of ``symbol`` or None."""
        return self._symbols.get(symbol)

    def assets(self) -> list[Asset]:
        """All assets sorted by symbol."""
        return [self._symbols[s].asset for s in sorted(self._symbols)]

    def find_asset(self, symbol_or_id: str) -> Asset | None:
        """Look an asset up by symbol (case-insensitive) or by asset id."""
        state = self._symbols.get(symbol_or_id.upper())
        if state is not None:
            return state.asset
        for candidate in self._symbols.values():
            if candidate.asset.id == symbol_or_id.lower():
                return candidate.asset
        return None

    def add_symbols(self, specs: Mapping[str, Any], now: datetime) -> list[Asset]:
        """Add or update assets: ``{"ZZZZ": {"price": 12.5, "tradable": false}}``.

        New symbols start at ``price`` (default $100) and are simulated when the
        simulation is on. For a known symbol, ``tradable``/``name``/``exchange`` are
        updated and ``price`` re-anchors the simulated mid.
        """
        changed = []
        for raw_symbol, raw_spec in specs.items():
            symbol = _check_symbol(raw_symbol)
            spec = raw_spec if isinstance(raw_spec, Mapping) else {"price": raw_spec}
            price = _positive(spec["price"], f"{symbol}.price") if spec.get("price") is not None else None
            state = self._symbols.get(symbol)
            if state is None:
                asset = _new_asset(symbol, price or Decimal("100"))
                state = self._add(asset, now)
            elif price is not None and not state.manual:
                state.mid = price
                state.asset.price = price
                if self.simulate:
                    state.quote = self._make_quote(state, now)
            if "tradable" in spec:
                state.asset.tradable = bool(spec["tradable"])
            if spec.get("name"):
                state.asset.name = str(spec["name"])
            if spec.get("exchange"):
                state.asset.exchange = str(spec["exchange"]).upper()
            if spec.get("status") in ("active", "inactive"):
                state.asset.status = str(spec["status"])
            changed.append(state.asset)
        return changed

    # ------------------------------------------------------------------ quotes
    def set_quote(
        self,
        symbol: str,
        bid: Decimal,
        ask: Decimal,
        now: datetime,
        *,
        bid_size: int = 100,
        ask_size: int = 100,
    ) -> Quote:
        """Set a manual quote; unknown symbols join the universe. The symbol stops moving."""
        state = self._symbols.get(symbol)
        if state is None:
            reference = ask if bid <= 0 else bid
            state = self._add(_new_asset(symbol, reference if reference > 0 else Decimal("100")), now)
        first_manual = not state.manual
        state.manual = True
        state.quote = Quote(bid=bid, ask=ask, bid_size=bid_size, ask_size=ask_size, time=now)
        mid = state.quote.mid
        if mid is not None:
            state.mid = mid.quantize(MID_PLACES)
            if first_manual:
                # Taking manual control resets the reference: until the next session
                # close, the first manual quote is the symbol's "last day" price.
                state.lastday_price = round_to_tick(mid)
            self._print(state, round_to_tick(mid), 0, now)
        return state.quote

    def quote(self, symbol: str) -> Quote | None:
        """The current quote of ``symbol`` (None when none was ever set or simulated)."""
        state = self._symbols.get(symbol)
        return state.quote if state else None

    def current_price(self, symbol: str) -> Decimal | None:
        """Mark price used for positions: the quote's midpoint rounded to the tick,
        else the last trade, else the asset's reference price."""
        state = self._symbols.get(symbol)
        if state is None:
            return None
        if state.quote is not None and state.quote.mid is not None:
            return round_to_tick(state.quote.mid)
        if state.last_trade is not None:
            return state.last_trade.price
        return None

    def record_fill(self, symbol: str, price: Decimal, qty: Decimal, now: datetime) -> None:
        """A fill of ours prints as the symbol's latest trade."""
        state = self._symbols.get(symbol)
        if state is not None:
            self._print(state, price, int(qty) if qty >= 1 else 1, now)

    def mark_close(self) -> None:
        """At a session close, today's price becomes every symbol's ``lastday_price``."""
        for symbol, state in self._symbols.items():
            price = self.current_price(symbol)
            if price is not None:
                state.lastday_price = price

    # ------------------------------------------------------------------ simulation
    def step(self, now: datetime) -> list[str]:
        """Advance every simulated symbol by one minute ending at ``now``; return them."""
        if not self.simulate:
            return []
        moved = []
        for symbol, state in self._symbols.items():
            if state.manual:
                continue
            self._step_symbol(state, now)
            moved.append(symbol)
        return moved

    def _step_symbol(self, state: SymbolState, now: datetime) -> None:
        rng = state.rng
        previous = state.mid
        shock = rng.gauss(0.0, 1.0)
        factor = math.exp(self.sigma * shock - 0.5 * self.sigma * self.sigma)
        state.mid = max(MIN_PRICE, (state.mid * Decimal(repr(factor))).quantize(MID_PLACES))
        state.quote = self._make_quote(state, now)
        volume = rng.randint(20, 600) * 100
        price = round_to_tick(state.mid)
        self._print(state, price, volume // 50 or 1, now, bar=False)
        minute = int((now - timedelta(minutes=1)).timestamp())
        minute -= minute % 60
        wiggle = abs(rng.gauss(0.0, 1.0)) * self.sigma * 0.5
        high = max(previous, state.mid) * Decimal(repr(1 + wiggle))
        low = min(previous, state.mid) * Decimal(repr(1 - wiggle))
        bars = state.bars
        bars.record(minute, float(round_to_tick(high)), volume, open_price=float(round_to_tick(previous)))
        bars.record(minute, float(round_to_tick(low)), 0)
        bars.record(minute, float(price), 0)

    def _make_quote(self, state: SymbolState, now: datetime) -> Quote:
        rng = state.rng
        spread_bps = Decimal(repr(round(rng.uniform(1.0, 5.0), 3)))
        half = state.mid * spread_bps / Decimal(20000)
        bid = round_to_tick(state.mid - half, "down")
        ask = round_to_tick(state.mid + half, "up")
        if bid <= 0:
            bid = tick_for(state.mid)
        if ask - bid < tick_for(bid):
            ask = bid + tick_for(bid)
        sizes = rng.randint(1, 9) * 100, rng.randint(1, 9) * 100
        return Quote(bid=bid, ask=ask, bid_size=sizes[0], ask_size=sizes[1], time=now)

    def _print(self, state: SymbolState, price: Decimal, size: int, now: datetime, bar: bool = True) -> None:
        self._trade_ids += 1
        state.last_trade = LastTrade(price=price, size=max(size, 1), time=now, id=self._trade_ids)
        if bar:
            minute = int(now.timestamp())
            state.bars.record(minute - minute % 60, float(price), size)

    # ------------------------------------------------------------------ bars
    def bar_series(self, symbol: str, now: datetime) -> BarSeries | None:
        """The symbol's minute bars, with synthesized history in front (made once)."""
        state = self._symbols.get(symbol)
        if state is None:
            return None
        series = state.bars
        if not series.history_done:
            series.history_done = True
            if series.times:
                end_before = datetime.fromtimestamp(series.times[0], UTC)
                end_price = series.opens[0]
            else:
                end_before = now
                end_price = float(state.mid)
            rng = seeded_rng(f"{self.seed}:{symbol}:history")
            tick = float(tick_for(Decimal(repr(end_price))))
            series.prepend(
                synthesize_history(
                    calendar=self._calendar,
                    rng=rng,
                    end_before=end_before,
                    end_price=end_price,
                    days=self.history_days,
                    sigma=self.sigma,
                    tick=tick,
                )
            )
        return series

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Any]:
        """JSON-ready snapshot (bars are not persisted; their history is re-synthesized)."""
        symbols = {}
        for symbol, st in self._symbols.items():
            version, internal, gauss_next = st.rng.getstate()
            symbols[symbol] = {
                "name": st.asset.name,
                "exchange": st.asset.exchange,
                "price": fmt(st.asset.price),
                "tradable": st.asset.tradable,
                "status": st.asset.status,
                "mid": fmt(st.mid),
                "manual": st.manual,
                "lastday_price": fmt(st.lastday_price),
                "quote": None
                if st.quote is None
                else {
                    "bid": fmt(st.quote.bid),
                    "ask": fmt(st.quote.ask),
                    "bid_size": st.quote.bid_size,
                    "ask_size": st.quote.ask_size,
                    "time": iso_utc(st.quote.time),
                },
                "last_trade": None
                if st.last_trade is None
                else {
                    "price": fmt(st.last_trade.price),
                    "size": st.last_trade.size,
                    "time": iso_utc(st.last_trade.time),
                    "id": st.last_trade.id,
                },
                "rng": [version, list(internal), gauss_next],
            }
        return {"trade_ids": self._trade_ids, "symbols": symbols}

    def load_state(self, data: Mapping[str, Any]) -> None:
        """Restore a snapshot made by :meth:`to_state`."""
        self._trade_ids = int(data.get("trade_ids", 0))
        self._symbols = {}
        for symbol, raw in data.get("symbols", {}).items():
            asset = Asset(
                symbol=symbol,
                name=raw["name"],
                exchange=raw["exchange"],
                price=Decimal(raw["price"]),
                tradable=bool(raw["tradable"]),
                status=raw.get("status", "active"),
            )
            rng = seeded_rng("")
            version, internal, gauss_next = raw["rng"]
            rng.setstate((version, tuple(internal), gauss_next))
            quote = raw.get("quote")
            trade = raw.get("last_trade")
            self._symbols[symbol] = SymbolState(
                asset=asset,
                mid=Decimal(raw["mid"]),
                quote=None
                if quote is None
                else Quote(
                    bid=Decimal(quote["bid"]),
                    ask=Decimal(quote["ask"]),
                    bid_size=int(quote["bid_size"]),
                    ask_size=int(quote["ask_size"]),
                    time=parse_timestamp(quote["time"]),
                ),
                manual=bool(raw["manual"]),
                rng=rng,
                last_trade=None
                if trade is None
                else LastTrade(
                    price=Decimal(trade["price"]),
                    size=int(trade["size"]),
                    time=parse_timestamp(trade["time"]),
                    id=int(trade["id"]),
                ),
                lastday_price=Decimal(raw["lastday_price"]),
                bars=BarSeries(),
            )


def seeded_rng(key: str) -> random.Random:
    """A reproducible RNG for the simulation (string seeds hash with SHA-512, so the same
    key gives the same sequence on every run, independent of PYTHONHASHSEED)."""
    return random.Random(key)  # noqa: S311 - simulation, not cryptography


def _check_symbol(raw: Any) -> str:
    symbol = str(raw).strip().upper()
    if not symbol or len(symbol) > 12 or not all(c.isalnum() or c in "./-" for c in symbol):
        raise bad_request(f"invalid symbol {raw!r}")
    return symbol


def _positive(value: Any, field: str) -> Decimal:
    try:
        number = to_decimal(value, field)
    except Exception:
        raise bad_request(f"invalid {field}: {value!r}") from None
    if number <= 0:
        raise bad_request(f"{field} must be > 0")
    return number


def _new_asset(symbol: str, price: Decimal) -> Asset:
    return Asset(symbol=symbol, name=f"{symbol} (paper exchange)", exchange="NASDAQ", price=price)


def _normalize_symbols(symbols: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Decimal | None]:
    if symbols is None:
        return {}
    if isinstance(symbols, Mapping):
        result: dict[str, Decimal | None] = {}
        for symbol, price in symbols.items():
            result[_check_symbol(symbol)] = None if price is None else _positive(price, f"{symbol}.price")
        return result
    return {_check_symbol(symbol): None for symbol in symbols}


def check_symbol(raw: Any) -> str:
    """Validate and upper-case a symbol given to the admin API (400 when malformed)."""
    return _check_symbol(raw)


def parse_quote_side(value: Any, field: str) -> Decimal:
    """Parse a bid/ask for ``/admin/quotes``: a non-negative number or numeric string."""
    try:
        number = to_decimal(value, field)
    except Exception:
        raise bad_request(f"invalid {field}: {value!r}") from None
    if number < 0:
        raise bad_request(f"{field} must be >= 0")
    return number
