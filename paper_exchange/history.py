"""The account's equity over time and ``GET /v2/account/portfolio/history`` built from it.

:class:`EquityHistory` is fed by the engine: a sample whenever time passes (each simulated minute
and each catch-up of the clock) and the equity at every session close. Equity is a step function
of time between samples, at minute resolution (a later sample in the same minute replaces the
earlier one). Intraday samples older than :data:`INTRADAY_DAYS` are dropped (Alpaca serves
intraday timeframes for 30 days only); daily closes are kept for the life of the account.

The answer follows Alpaca's rules where the exchange can: ``period`` (``N`` + D/W/M/A), ``start``,
``end`` (at most two of the three), ``date_end``, ``timeframe`` (1Min, 5Min, 15Min, 1H, 1D; default
by span), ``intraday_reporting`` (market_hours, extended_hours, continuous), ``pnl_reset``
(per_day, no_reset). Timestamps are left-labeled window starts in UNIX seconds; each equity is the
value at the end of its window (or now, for the window in progress). Intraday profit/loss is
against the previous session's closing equity (per day, or once with ``no_reset``); daily points
are against the close before the first point. The account has no cash flows: ``cashflow`` is {}.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .calendar import Session
from .errors import unprocessable
from .money import cents
from .timeutil import UTC, eastern_datetime, parse_timestamp, to_eastern

INTRADAY_DAYS = 30
_FRAMES = {"1Min": 60, "5Min": 300, "15Min": 900, "1H": 3600, "1D": 86400}
_PERIOD = re.compile(r"^(\d+)([DWMA])$")
_UNIT_DAYS = {"D": 1, "W": 7, "M": 30, "A": 365}
_REPORTING = ("market_hours", "extended_hours", "continuous")
_PNL_RESET = ("per_day", "no_reset")


class EquityHistory:
    """Equity samples (UNIX second, equity) and closing equity per trading day."""

    def __init__(self, moment: datetime | None = None, equity: Decimal | None = None) -> None:
        self._times: list[int] = []
        self._values: list[Decimal] = []
        self.closes: dict[date, Decimal] = {}
        if moment is not None and equity is not None:
            self.record(moment, equity)

    @property
    def first_time(self) -> int | None:
        """When the history begins (the account's creation or its last reset)."""
        return self._times[0] if self._times else None

    def record(self, moment: datetime, equity: Decimal) -> None:
        """Note the equity at ``moment`` (samples never go back in time)."""
        epoch = int(moment.timestamp())
        if self._times:
            if epoch < self._times[-1] or self._values[-1] == equity:
                return
            if epoch // 60 == self._times[-1] // 60 and len(self._times) > 1:
                self._times[-1], self._values[-1] = epoch, equity
                return
        self._times.append(epoch)
        self._values.append(equity)
        self._trim(epoch)

    def record_close(self, day: date, equity: Decimal) -> None:
        """The equity at the close of the session of ``day``."""
        self.closes[day] = equity

    def value_at(self, epoch: int) -> Decimal | None:
        """The equity at ``epoch`` (None before the history begins)."""
        index = bisect.bisect_right(self._times, epoch) - 1
        return self._values[index] if index >= 0 else None

    def close_before(self, day: date) -> tuple[date, Decimal] | None:
        """The latest recorded close strictly before ``day``."""
        earlier = [d for d in self.closes if d < day]
        if not earlier:
            return None
        last = max(earlier)
        return last, self.closes[last]

    def _trim(self, now_epoch: int) -> None:
        cut = now_epoch - (INTRADAY_DAYS + 2) * 86400
        if len(self._times) > 2 and self._times[1] < cut:
            keep = max(0, bisect.bisect_left(self._times, cut) - 1)  # the value in force at the cut stays
            del self._times[:keep]
            del self._values[:keep]

    def to_state(self) -> dict[str, Any]:
        """JSON-ready form for the state file."""
        return {
            "samples": [[t, str(v)] for t, v in zip(self._times, self._values, strict=True)],
            "closes": {d.isoformat(): str(v) for d, v in sorted(self.closes.items())},
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any] | None, moment: datetime, equity: Decimal) -> EquityHistory:
        """Rebuild a saved history (one starting at ``moment`` for a state file without one)."""
        if not data:
            return cls(moment, equity)
        history = cls()
        for epoch, value in data.get("samples", []):
            history._times.append(int(epoch))
            history._values.append(Decimal(value))
        history.closes = {date.fromisoformat(d): Decimal(v) for d, v in data.get("closes", {}).items()}
        return history


class PortfolioHistoryApi:
    """``GET /v2/account/portfolio/history`` of :class:`~paper_exchange.engine.PaperExchange` (a
    mixin: the engine provides ``_lock``, ``now()``, ``calendar``, ``equity_history`` and the
    live equity ``_equity()``)."""

    def portfolio_history(self, params: Mapping[str, str]) -> dict[str, Any]:
        """The equity series for the query parameters of the request (strings as sent)."""
        with self._lock:  # type: ignore[attr-defined]
            now: datetime = self.now()  # type: ignore[attr-defined]
            history: EquityHistory = self.equity_history  # type: ignore[attr-defined]
            history.record(now, self._equity())  # type: ignore[attr-defined]
            return _portfolio_history(self.calendar, history, now, params)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- the query
def _portfolio_history(
    calendar: Any, history: EquityHistory, now: datetime, params: Mapping[str, str]
) -> dict[str, Any]:
    period = params.get("period") or None
    start = _moment(params, "start")
    end = _moment(params, "end")
    if end is None and params.get("date_end"):
        try:
            day = date.fromisoformat(params["date_end"])
        except ValueError:
            raise unprocessable(f"invalid date_end: {params['date_end']!r}") from None
        end = eastern_datetime(day + timedelta(days=1), 0, 0) - timedelta(seconds=1)
    if start is not None and end is not None and period is not None:
        raise unprocessable("only two of start, end and period can be given")
    end = min(end or now, now)
    reporting = params.get("intraday_reporting") or "market_hours"
    if reporting not in _REPORTING:
        raise unprocessable(f"invalid intraday_reporting: {reporting!r}")
    if str(params.get("extended_hours", "")).lower() == "true" and not params.get("intraday_reporting"):
        reporting = "extended_hours"
    pnl_reset = params.get("pnl_reset") or "per_day"
    if pnl_reset not in _PNL_RESET:
        raise unprocessable(f"invalid pnl_reset: {pnl_reset!r}")
    span_days = _period_days(period) if period else None
    if start is None:
        start = end - timedelta(days=span_days if span_days is not None else 30)
    elif period is not None and span_days is not None:
        end = min(start + timedelta(days=span_days), now)
    if end < start:
        raise unprocessable("end must not be before start")
    span = end - start
    timeframe = params.get("timeframe") or ("1Min" if span < timedelta(days=7)
                                            else "15Min" if span < timedelta(days=30) else "1D")
    if timeframe not in _FRAMES:
        raise unprocessable(f"invalid timeframe: {timeframe!r} (1Min, 5Min, 15Min, 1H or 1D)")
    if timeframe != "1D" and span > timedelta(days=INTRADAY_DAYS, hours=23):
        raise unprocessable(f"intraday timeframes can be queried for {INTRADAY_DAYS} days at most; use 1D")
    if timeframe == "1D":
        return _daily(calendar, history, now, start, end)
    if period is not None and period.endswith("D") and params.get("start") is None:
        # "1D" intraday is the latest session (the one in progress, or the last one before now).
        sessions = _sessions_until(calendar, end, int(period[:-1]))
        if sessions:
            start = _day_start(sessions[0], reporting)
    return _intraday(calendar, history, now, start, end, _FRAMES[timeframe], timeframe, reporting, pnl_reset)


def _moment(params: Mapping[str, str], name: str) -> datetime | None:
    value = params.get(name)
    if not value:
        return None
    try:
        moment = parse_timestamp(value, name)
    except Exception:
        raise unprocessable(f"invalid {name}: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _period_days(period: str) -> int:
    match = _PERIOD.match(period)
    if not match or int(match.group(1)) < 1:
        raise unprocessable(f"invalid period: {period!r} (a number and D, W, M or A, such as 1M)")
    return int(match.group(1)) * _UNIT_DAYS[match.group(2)]


def _sessions_until(calendar: Any, end: datetime, count: int) -> list[Session]:
    """The last ``count`` sessions that opened at or before ``end``, oldest first."""
    sessions = [s for s in calendar.sessions(to_eastern(end).date() - timedelta(days=count * 2 + 10),
                                             to_eastern(end).date()) if s.open <= end]
    return sessions[-count:]


def _day_start(session: Session, reporting: str) -> datetime:
    if reporting == "extended_hours":
        return eastern_datetime(session.day, 4, 0)
    if reporting == "continuous":
        return eastern_datetime(session.day, 0, 0)
    return session.open


def _windows(calendar: Any, start: datetime, end: datetime, step: int, reporting: str) -> list[tuple[int, date]]:
    """Left edges of the windows in [start, end] (UNIX seconds) with their trading day."""
    first = int(start.timestamp()) // step * step
    last = int(end.timestamp())
    if reporting == "continuous":
        return [(t, to_eastern(datetime.fromtimestamp(t, UTC)).date()) for t in range(first, last + 1, step)]
    result = []
    for session in calendar.sessions(to_eastern(start).date(), to_eastern(end).date()):
        if reporting == "extended_hours":
            lo = eastern_datetime(session.day, 4, 0)
            hi = eastern_datetime(session.day, 17 if session.early_close else 20, 0)
        else:
            lo, hi = session.open, session.close
        t = max(int(lo.timestamp()), first)
        t = t - (t - int(lo.timestamp())) % step
        while t < int(hi.timestamp()) and t <= last:
            if t >= first:
                result.append((t, session.day))
            t += step
    return result


def _intraday(calendar: Any, history: EquityHistory, now: datetime, start: datetime, end: datetime,
              step: int, timeframe: str, reporting: str, pnl_reset: str) -> dict[str, Any]:
    now_epoch = int(now.timestamp())
    born = history.first_time or now_epoch
    points: list[tuple[int, date, Decimal]] = []
    for t, day in _windows(calendar, start, end, step, reporting):
        if t + step <= born:
            continue  # the account did not exist yet (or was reset since)
        value = history.value_at(min(t + step - 1, now_epoch))
        if value is not None:
            points.append((t, day, value))
    base_value, base_asof = _base(history, points[0][1] if points else to_eastern(now).date(),
                                  points[0][2] if points else None)
    bases: dict[date, Decimal] = {}
    result = _empty(timeframe, base_value, base_asof)
    for t, day, value in points:
        if pnl_reset == "per_day":
            if day not in bases:
                bases[day] = _base(history, day, value)[0] or value
            base = bases[day]
        else:
            base = base_value or value
        _append(result, t, value, base)
    return result


def _daily(calendar: Any, history: EquityHistory, now: datetime, start: datetime, end: datetime) -> dict[str, Any]:
    born = history.first_time or int(now.timestamp())
    points: list[tuple[int, date, Decimal]] = []
    for session in calendar.sessions(to_eastern(start).date(), to_eastern(end).date()):
        if int(session.close.timestamp()) <= born and session.day not in history.closes:
            continue
        if session.day in history.closes:
            value: Decimal | None = history.closes[session.day]
        elif session.open <= now < session.close:  # today's session, still trading
            value = history.value_at(int(now.timestamp()))
        else:
            continue
        if value is not None:
            points.append((int(eastern_datetime(session.day, 0, 0).timestamp()), session.day, value))
    base_value, base_asof = _base(history, points[0][1] if points else to_eastern(now).date(),
                                  points[0][2] if points else None)
    result = _empty("1D", base_value, base_asof)
    for t, _day, value in points:
        _append(result, t, value, base_value or value)
    return result


def _base(history: EquityHistory, day: date, first_value: Decimal | None) -> tuple[Decimal | None, date | None]:
    """The profit/loss base for points starting on ``day``: the close before it, else the first
    point itself (no ``base_value_asof`` then, as Alpaca for a new account)."""
    close = history.close_before(day)
    if close is not None:
        return close[1], close[0]
    return first_value, None


def _empty(timeframe: str, base_value: Decimal | None, base_asof: date | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "timestamp": [], "equity": [], "profit_loss": [], "profit_loss_pct": [],
        "base_value": float(cents(base_value)) if base_value is not None else 0.0,
        "timeframe": timeframe, "cashflow": {},
    }
    if base_asof is not None:
        result["base_value_asof"] = base_asof.isoformat()
    return result


def _append(result: dict[str, Any], t: int, value: Decimal, base: Decimal) -> None:
    profit = value - base
    result["timestamp"].append(t)
    result["equity"].append(float(cents(value)))
    result["profit_loss"].append(float(cents(profit)))
    pct = (profit / base).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP) if base else Decimal(0)
    result["profit_loss_pct"].append(float(pct))
