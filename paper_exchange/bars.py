"""Minute bars per symbol and their aggregation into Alpaca's bar timeframes.

The exchange records one 1-minute bar per random-walk step (simulated symbols) or per
minute in which a manual quote changed. Older history is synthesized on demand: a
seeded backward random walk over regular-session minutes that ends exactly at the first
recorded price, so indicators computed from ``GET /v2/stocks/bars`` see a continuous,
deterministic series. Bar prices are market data and travel as JSON numbers (doubles),
so they are stored as floats in compact arrays; no account money is computed from them.
"""

from __future__ import annotations

import bisect
import math
import random
import re
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .calendar import NyseCalendar, Session
from .errors import CODE_BAD_REQUEST, ExchangeError
from .timeutil import UTC, eastern_datetime, to_eastern

_TIMEFRAME = re.compile(r"^(\d+)(Min|T|Hour|H|Day|D|Week|W|Month|M)$")
_UNITS = {"T": "Min", "H": "Hour", "D": "Day", "W": "Week", "M": "Month"}
MAX_RECORDED_MINUTES = 60 * 24 * 45  # keep about 45 days of recorded minutes per symbol


@dataclass(frozen=True)
class TimeFrame:
    """A bar timeframe such as 5Min, 1Hour, 1Day, 1Week or 3Month."""

    amount: int
    unit: str  # Min, Hour, Day, Week, Month

    @classmethod
    def parse(cls, text: str) -> TimeFrame:
        """Parse Alpaca's timeframe notation (``1Min``/``1T``, ``1Hour``/``1H``, ...)."""
        match = _TIMEFRAME.match(text or "")
        if not match:
            raise ExchangeError(400, CODE_BAD_REQUEST, f"invalid timeframe: {text!r}")
        amount, unit = int(match.group(1)), _UNITS.get(match.group(2), match.group(2))
        limits = {"Min": 59, "Hour": 23, "Day": 1, "Week": 1, "Month": 12}
        if amount < 1 or amount > limits[unit] or (unit == "Month" and amount not in (1, 2, 3, 4, 6, 12)):
            raise ExchangeError(400, CODE_BAD_REQUEST, f"invalid timeframe: {text!r}")
        return cls(amount, unit)

    def bucket(self, minute: datetime) -> datetime:
        """Start of the bar that contains ``minute`` (UTC-aligned intraday, ET-midnight daily+)."""
        if self.unit == "Min":
            epoch = int(minute.timestamp())
            size = self.amount * 60
            return datetime.fromtimestamp(epoch - epoch % size, UTC)
        if self.unit == "Hour":
            epoch = int(minute.timestamp())
            size = self.amount * 3600
            return datetime.fromtimestamp(epoch - epoch % size, UTC)
        day = to_eastern(minute).date()
        if self.unit == "Week":
            day = day - timedelta(days=day.weekday())
        elif self.unit == "Month":
            month0 = (day.month - 1) // self.amount * self.amount
            day = day.replace(month=month0 + 1, day=1)
        return eastern_datetime(day, 0, 0)


@dataclass
class BarSeries:
    """One symbol's 1-minute bars, ascending by minute (epoch seconds of the bar start)."""

    times: array = field(default_factory=lambda: array("q"))
    opens: array = field(default_factory=lambda: array("d"))
    highs: array = field(default_factory=lambda: array("d"))
    lows: array = field(default_factory=lambda: array("d"))
    closes: array = field(default_factory=lambda: array("d"))
    volumes: array = field(default_factory=lambda: array("q"))
    history_done: bool = False

    def record(self, minute_epoch: int, price: float, volume: int, open_price: float | None = None) -> None:
        """Add ``price`` to the bar of ``minute_epoch`` (creating it after the last one)."""
        if self.times and self.times[-1] == minute_epoch:
            self.highs[-1] = max(self.highs[-1], price)
            self.lows[-1] = min(self.lows[-1], price)
            self.closes[-1] = price
            self.volumes[-1] += volume
            return
        if self.times and self.times[-1] > minute_epoch:
            return  # never rewrite the past
        first = open_price if open_price is not None else (self.closes[-1] if self.closes else price)
        self.times.append(minute_epoch)
        self.opens.append(first)
        self.highs.append(max(first, price))
        self.lows.append(min(first, price))
        self.closes.append(price)
        self.volumes.append(volume)
        if len(self.times) > MAX_RECORDED_MINUTES + 50_000:
            self._trim()

    def _trim(self) -> None:
        cut = len(self.times) - MAX_RECORDED_MINUTES
        for arr in (self.times, self.opens, self.highs, self.lows, self.closes, self.volumes):
            del arr[:cut]

    def prepend(self, rows: list[tuple[int, float, float, float, float, int]]) -> None:
        """Put older synthesized bars in front of the recorded ones."""
        if not rows:
            return
        self.times = array("q", [r[0] for r in rows]) + self.times
        self.opens = array("d", [r[1] for r in rows]) + self.opens
        self.highs = array("d", [r[2] for r in rows]) + self.highs
        self.lows = array("d", [r[3] for r in rows]) + self.lows
        self.closes = array("d", [r[4] for r in rows]) + self.closes
        self.volumes = array("q", [r[5] for r in rows]) + self.volumes

    def indices(self, start: datetime, end: datetime) -> range:
        """Indices of bars whose minute starts within [start, end]."""
        lo = bisect.bisect_left(self.times, int(start.timestamp()))
        hi = bisect.bisect_right(self.times, int(end.timestamp()))
        return range(lo, hi)


def synthesize_history(
    *,
    calendar: NyseCalendar,
    rng: random.Random,
    end_before: datetime,
    end_price: float,
    days: int,
    sigma: float,
    tick: float,
) -> list[tuple[int, float, float, float, float, int]]:
    """A backward random walk over the regular-session minutes of ``days`` trading days.

    The walk ends at ``end_price`` at the last session minute before ``end_before`` so the
    history joins the recorded series without a jump.
    """
    minutes: list[int] = []
    day = to_eastern(end_before).date()
    sessions: list[Session] = []
    while len(sessions) < days:
        session = calendar.session(day)
        if session is not None and session.open < end_before:
            sessions.append(session)
        day -= timedelta(days=1)
    limit = int(end_before.timestamp())
    for session in reversed(sessions):
        t = int(session.open.timestamp())
        close = int(session.close.timestamp())
        while t < close and t < limit:
            minutes.append(t)
            t += 60
    rows: list[tuple[int, float, float, float, float, int]] = []
    price = end_price
    for minute in reversed(minutes):
        close_price = price
        open_price = max(tick, price / math.exp(sigma * rng.gauss(0.0, 1.0)))
        wiggle = abs(rng.gauss(0.0, 1.0)) * sigma * 0.5
        high = max(open_price, close_price) * (1 + wiggle)
        low = min(open_price, close_price) * (1 - wiggle)
        volume = rng.randint(20, 600) * 100
        rows.append(
            (minute, _tick(open_price, tick), _tick(high, tick), _tick(low, tick), _tick(close_price, tick), volume)
        )
        price = open_price
    rows.reverse()
    return rows


def _tick(value: float, tick: float) -> float:
    places = 2 if tick >= 0.01 else 4
    return round(value, places)


def aggregate(
    series: BarSeries, timeframe: TimeFrame, start: datetime, end: datetime
) -> list[dict[str, object]]:
    """Alpaca bar objects (``t,o,h,l,c,v,n,vw``) for bars starting within [start, end]."""
    result: list[dict[str, object]] = []
    bucket: datetime | None = None
    o = h = low = c = pv = 0.0
    volume = 0
    bucket_cache: dict[int, datetime] = {}
    for i in series.indices(start, end):
        minute = series.times[i]
        minute_bucket = bucket_cache.get(minute)
        if minute_bucket is None:
            minute_bucket = timeframe.bucket(datetime.fromtimestamp(minute, UTC))
            bucket_cache[minute] = minute_bucket
        if minute_bucket != bucket:
            if bucket is not None:
                result.append(_bar(bucket, o, h, low, c, volume, pv))
            bucket = minute_bucket
            o, h, low, volume, pv = series.opens[i], series.highs[i], series.lows[i], 0, 0.0
        h = max(h, series.highs[i])
        low = min(low, series.lows[i])
        c = series.closes[i]
        volume += series.volumes[i]
        pv += (series.highs[i] + series.lows[i] + series.closes[i]) / 3 * series.volumes[i]
    if bucket is not None:
        result.append(_bar(bucket, o, h, low, c, volume, pv))
    return result


def _bar(
    bucket: datetime, o: float, h: float, low: float, c: float, volume: int, pv: float
) -> dict[str, object]:
    return {
        "t": bucket.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "o": o,
        "h": h,
        "l": low,
        "c": c,
        "v": volume,
        "n": max(1, volume // 100),
        # Volume-weighted typical price; the close when nothing traded (manual quotes).
        "vw": round(pv / volume, 4) if volume else c,
    }


def iter_symbols(text: str | None) -> Iterable[str]:
    """Split a comma-separated symbol list, upper-cased, without blanks or duplicates."""
    seen: dict[str, None] = {}
    for part in (text or "").split(","):
        symbol = part.strip().upper()
        if symbol:
            seen[symbol] = None
    return list(seen)
