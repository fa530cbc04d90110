"""The NYSE regular session: trading days, holidays, early closes, opens and closes.

Holidays come from the ``holidays`` package (``holidays.financial_holidays("NYSE")``).
Early closes (13:00 ET) are three fixed NYSE rules kept here:

* the day after Thanksgiving,
* December 24 when it is a trading day,
* July 3 when it is a trading day (the day before Independence Day).

All datetimes handed out are aware and in UTC; the sessions are defined in New York time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import holidays

from .timeutil import eastern_datetime, to_eastern

REGULAR_OPEN = (9, 30)
REGULAR_CLOSE = (16, 0)
EARLY_CLOSE = (13, 0)


@dataclass(frozen=True)
class Session:
    """One trading day's regular session."""

    day: date
    open: datetime
    close: datetime
    early_close: bool

    def contains(self, moment: datetime) -> bool:
        """True when ``moment`` is within [open, close)."""
        return self.open <= moment < self.close


class NyseCalendar:
    """Trading days and regular-session times of the New York Stock Exchange."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holiday_years: dict[int, frozenset[date]] = {}

    def _holidays(self, year: int) -> frozenset[date]:
        with self._lock:
            cached = self._holiday_years.get(year)
            if cached is None:
                cached = frozenset(holidays.financial_holidays("NYSE", years=year).keys())
                self._holiday_years[year] = cached
            return cached

    def is_holiday(self, day: date) -> bool:
        """True when the exchange is closed all day for a holiday."""
        return day in self._holidays(day.year)

    def is_trading_day(self, day: date) -> bool:
        """True for weekdays that are not NYSE holidays."""
        return day.weekday() < 5 and not self.is_holiday(day)

    def is_early_close(self, day: date) -> bool:
        """True when the session on ``day`` closes at 13:00 ET."""
        if not self.is_trading_day(day):
            return False
        if day.month == 11 and day.weekday() == 4:
            thursday = day - timedelta(days=1)
            # Thanksgiving is the fourth Thursday of November: days 22..28.
            return 22 <= thursday.day <= 28
        return (day.month, day.day) in ((12, 24), (7, 3))

    def session(self, day: date) -> Session | None:
        """The regular session on ``day``, or None when the market is closed that day."""
        if not self.is_trading_day(day):
            return None
        early = self.is_early_close(day)
        close_hm = EARLY_CLOSE if early else REGULAR_CLOSE
        return Session(
            day=day,
            open=eastern_datetime(day, *REGULAR_OPEN),
            close=eastern_datetime(day, *close_hm),
            early_close=early,
        )

    def next_trading_day(self, day: date) -> date:
        """The first trading day strictly after ``day``."""
        candidate = day + timedelta(days=1)
        while not self.is_trading_day(candidate):
            candidate += timedelta(days=1)
        return candidate

    def sessions(self, start: date, end: date) -> list[Session]:
        """All sessions with ``start <= day <= end``."""
        result = []
        day = start
        while day <= end:
            session = self.session(day)
            if session is not None:
                result.append(session)
            day += timedelta(days=1)
        return result

    def current_or_next_session(self, moment: datetime) -> Session:
        """The session containing ``moment``, or else the next one to open after it."""
        day = to_eastern(moment).date()
        while True:
            session = self.session(day)
            if session is not None and moment < session.close:
                return session
            day += timedelta(days=1)

    def previous_session(self, moment: datetime) -> Session | None:
        """The last session that closed at or before ``moment`` (None before 1900)."""
        day = to_eastern(moment).date()
        for _ in range(20):
            session = self.session(day)
            if session is not None and session.close <= moment:
                return session
            day -= timedelta(days=1)
        return None

    def is_open(self, moment: datetime) -> bool:
        """True during a regular session."""
        session = self.session(to_eastern(moment).date())
        return session is not None and session.contains(moment)

    def next_open(self, moment: datetime) -> datetime:
        """The next session open strictly after ``moment`` (tomorrow's when open now)."""
        session = self.current_or_next_session(moment)
        if session.open > moment:
            return session.open
        following = self.session(self.next_trading_day(session.day))
        assert following is not None
        return following.open

    def next_close(self, moment: datetime) -> datetime:
        """The close of the current session, or of the next one when closed now."""
        return self.current_or_next_session(moment).close

    def boundaries(self, after: datetime, until: datetime) -> Iterator[tuple[datetime, str]]:
        """Opens and closes in ``(after, until]`` in time order, as ``(moment, "open"|"close")``."""
        session = self.current_or_next_session(after)
        while session.open <= until or session.close <= until:
            if after < session.open <= until:
                yield session.open, "open"
            if after < session.close <= until:
                yield session.close, "close"
            if session.close > until:
                return
            nxt = self.session(self.next_trading_day(session.day))
            assert nxt is not None
            session = nxt

    def settlement_date(self, day: date) -> date:
        """T+1 settlement: the next trading day."""
        return self.next_trading_day(day)
