"""The clock and the sessions: the exchange's time, its passage, and ``GET /v2/clock``/``calendar``.

With ``simulated_clock=True`` time moves only through :meth:`SessionClock.advance` and
:meth:`SessionClock.set_time`; otherwise it follows the wall clock and catches up lazily on
every call (:meth:`SessionClock._sync`). Passing time steps the price simulation minute by
minute with a matching pass after each step, opens sessions (``accepted`` orders become
``new``) and closes them (day orders expire, GTC orders end after 90 days, today's prices and
equity become yesterday's).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from .book import ONE_MICROSECOND
from .errors import CODE_CONFLICT, ExchangeError, bad_request
from .order_life import OrderLife
from .orders import ACCEPTED, CANCELED, EXPIRED, FILLED, NEW
from .timeutil import UTC, floor_minute, iso_eastern, iso_utc, parse_timestamp, utc_now

# Stepping the random walk minute by minute over a very long clock jump would take
# minutes of CPU; only the last 31 days of a jump are simulated step by step.
MAX_STEPPED_SPAN = timedelta(days=31)
# How often a partially filled order's remainder is re-evaluated without a new quote.
REEVALUATE_EVERY = timedelta(seconds=1)
CALENDAR_FIRST = date(1970, 1, 1)
CALENDAR_LAST = date(2029, 12, 31)


class SessionClock(OrderLife):
    """Time and sessions (a part of :class:`~paper_exchange.engine.PaperExchange`)."""

    _calendar_cache: list[dict[str, str]] | None

    def now(self) -> datetime:
        """The exchange's current time (UTC)."""
        with self._lock:
            self._sync()
            return self._now

    def is_open(self) -> bool:
        """True when orders can fill now."""
        with self._lock:
            self._sync()
            return self._market_open()

    def _sync(self) -> None:
        """Catch up with the wall clock (no-op with the simulated clock)."""
        if not self.simulated_clock:
            target = utc_now()
            if target > self._now:
                self._advance_to(target)
            if self._pending:
                due = sorted({o.symbol for o in self._pending.values() if self._is_due(o)})
                for symbol in due:
                    self._pass(symbol)

    def advance(self, seconds: float) -> dict[str, Any]:
        """Move the simulated clock forward by ``seconds``; return the clock."""
        if seconds < 0:
            raise bad_request("advance_seconds must be >= 0")
        with self._lock:
            self._require_simulated()
            self._advance_to(self._now + timedelta(seconds=seconds), reevaluate=True)
            self._touch()
            return self._clock_json()

    def set_time(self, moment: datetime | str) -> dict[str, Any]:
        """Move the simulated clock to ``moment``; return the clock.

        Forward moves pass time (walk steps, opens, closes, expiries). Backward moves are
        allowed only while there are no orders (for example right after :meth:`reset`),
        because order timestamps must never go back; they just set the time.
        """
        if isinstance(moment, str):
            moment = parse_timestamp(moment, "now")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        with self._lock:
            self._require_simulated()
            moment = moment.astimezone(UTC)
            if moment < self._now:
                if self._orders:
                    raise bad_request(
                        f"cannot move the simulated clock backwards while orders exist "
                        f"(now {iso_utc(self._now)}); POST /admin/reset first"
                    )
                self._now = moment
                self._last_stamp = None
                self._last_reevaluation = moment
                self._touch()
                return self._clock_json()
            self._advance_to(moment, reevaluate=True)
            self._touch()
            return self._clock_json()

    def _require_simulated(self) -> None:
        if not self.simulated_clock:
            raise ExchangeError(
                409,
                CODE_CONFLICT,
                "the exchange runs on the wall clock; start it with simulated_clock=True "
                "(--simulated-clock) to control time",
            )

    def _advance_to(self, target: datetime, reevaluate: bool = False) -> None:
        cursor = self._now
        if target > cursor:
            self.equity_history.record(cursor, self._equity())  # what happened while time stood still
            step_from = max(cursor, target - MAX_STEPPED_SPAN)
            for moment, kind in self.calendar.boundaries(cursor, target):
                self._run_minutes(cursor, moment, step_from)
                self._now = moment
                if kind == "open":
                    self._on_open(moment)
                else:
                    self._on_close(moment)
                cursor = moment
            self._run_minutes(cursor, target, step_from)
            self._now = target
            self.equity_history.record(target, self._equity())
            self._touch()
        if reevaluate or self._now - self._last_reevaluation >= REEVALUATE_EVERY:
            self._last_reevaluation = self._now
            self._match_all()

    def _run_minutes(self, start: datetime, end: datetime, step_from: datetime) -> None:
        """Step the random walk at each whole minute in (start, end] while trading."""
        if not self.market.simulate or end <= start:
            return
        if not self.always_open and not self.calendar.is_open(start):
            return  # the segment between two boundaries is entirely outside a session
        minute = floor_minute(max(start, step_from)) + timedelta(minutes=1)
        while minute <= end:
            if self._positions:  # the equity after the previous minute's step and matching
                self.equity_history.record(self._now, self._equity())
            self._now = minute
            for symbol in self.market.step(minute):
                if self._open_by_symbol.get(symbol):
                    self._pass(symbol)
            minute += timedelta(minutes=1)

    def _on_open(self, moment: datetime) -> None:
        # The previous close's equity becomes ``last_equity`` only now, as at Alpaca, where it
        # still shows the close before that for hours after a close (alpaca-py issue #341): so
        # after the close, equity against last_equity is still the day's change.
        if self._closing_equity is not None:
            self.last_equity, self._closing_equity = self._closing_equity, None
        if self.always_open:
            return
        for order in self._open_orders():
            if order.status == ACCEPTED:
                order.status = NEW
                order.updated_at = moment
        self._match_all()

    def _on_close(self, moment: datetime) -> None:
        """Session close: day orders end (``expired``), GTC orders past 90 days are
        canceled, and today's prices become ``lastday_price``; today's equity becomes
        ``last_equity`` at the next session's open (:meth:`_on_open`)."""
        if not self.always_open:
            closing_day = self.calendar.current_or_next_session(moment - ONE_MICROSECOND).day
            for order in self._open_orders():
                if (
                    order.time_in_force == "day"
                    and order.session_day is not None
                    and date.fromisoformat(order.session_day) <= closing_day
                ):
                    self._finish(order, EXPIRED, moment)
        for order in self._open_orders():
            if order.time_in_force == "gtc" and order.expires_at and order.expires_at <= moment:
                self._finish(order, CANCELED, moment)
        # Legs whose entry ended without a complete fill can never activate.
        for order in self._open_orders():
            if order.parent_id and not order.activated:
                parent = self._orders.get(order.parent_id)
                if parent is not None and parent.is_final and parent.status != FILLED:
                    self._finish(order, CANCELED, moment)
        self.equity_history.record_close(
            self.calendar.current_or_next_session(moment - ONE_MICROSECOND).day, self._equity())
        self.market.mark_close()
        self._closing_equity = self._equity()
        self.last_maintenance_margin = self._maintenance_margin()

    def _clock_json(self) -> dict[str, Any]:
        now = self._now
        return {
            "timestamp": iso_eastern(now),
            "is_open": self._market_open(),
            "next_open": iso_eastern(self.calendar.next_open(now)),
            "next_close": iso_eastern(self.calendar.next_close(now)),
        }

    def get_clock(self) -> dict[str, Any]:
        """``GET /v2/clock`` (times in ET offsets; agrees with the simulated session)."""
        with self._lock:
            self._sync()
            return self._clock_json()

    def get_calendar(self, start: date | None = None, end: date | None = None) -> list[dict[str, str]]:
        """``GET /v2/calendar``: trading days in [start, end] (default 1970..2029, like Alpaca)."""
        if start is None and end is None:
            if self._calendar_cache is None:
                self._calendar_cache = self._calendar_days(CALENDAR_FIRST, CALENDAR_LAST)
            return list(self._calendar_cache)
        return self._calendar_days(start or CALENDAR_FIRST, end or CALENDAR_LAST)

    def _calendar_days(self, start: date, end: date) -> list[dict[str, str]]:
        if end < start:
            return []
        return [
            {
                "date": s.day.isoformat(),
                "open": "09:30",
                "close": "13:00" if s.early_close else "16:00",
                "session_open": "0400",
                "session_close": "1700" if s.early_close else "2000",
                "settlement_date": self.calendar.settlement_date(s.day).isoformat(),
            }
            for s in self.calendar.sessions(start, end)
        ]
