"""Market time: the broker's clock and calendar, read once per run and passed down as ``now``.

Every decision that depends on the market's time (is the market open, is today a trading day,
is it time for the day-end exit, which day a daily limit counts) reads a ``MarketTime``.
Against Alpaca it is the market's time; against the paper exchange with a simulated clock it
is the simulated time, which is how tests and the simulated day move time for the programs.
The programs read the clock from the broker every run and today's calendar entry from the
database (``StoredCalendar``: read from the broker once per date, kept in ``market_calendar``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pytz

from trading.broker import Broker, TradingDay

EASTERN = pytz.timezone("America/New_York")
UTC = dt.UTC


def to_eastern(moment: dt.datetime) -> dt.datetime:
    """``moment`` in US/Eastern, for schedules and display."""
    return moment.astimezone(EASTERN)


def eastern_date(moment: dt.datetime) -> dt.date:
    """The US/Eastern calendar date of ``moment``: the trading day it counts for."""
    return to_eastern(moment).date()


@dataclass(frozen=True)
class MarketTime:
    """One reading of the broker's clock and calendar.

    ``session`` is today's trading session (None on weekends and holidays).
    """

    now: dt.datetime
    is_open: bool
    next_open: dt.datetime
    next_close: dt.datetime
    session: TradingDay | None

    @property
    def trading_date(self) -> dt.date:
        """The US/Eastern date of ``now``."""
        return eastern_date(self.now)

    @property
    def is_trading_day(self) -> bool:
        return self.session is not None

    @property
    def day_start(self) -> dt.datetime:
        """Midnight US/Eastern of the current date, in UTC: where "today" starts for daily limits."""
        midnight = EASTERN.localize(dt.datetime.combine(self.trading_date, dt.time(0, 0)))
        return midnight.astimezone(UTC)

    def day_end_exit_time(self, minutes_before_close: int) -> dt.datetime | None:
        """When day trades must be flattened today (None on a non-trading day).

        Early closes move it: 10 minutes before a 13:00 close is 12:50.
        """
        if self.session is None:
            return None
        return self.session.close - dt.timedelta(minutes=minutes_before_close)

    def in_day_end_window(self, minutes_before_close: int) -> bool:
        """True from the day-end exit time until the session's close."""
        exit_time = self.day_end_exit_time(minutes_before_close)
        return exit_time is not None and self.session is not None and exit_time <= self.now < self.session.close

    def after_close(self) -> bool:
        """True on a trading day after its close."""
        return self.session is not None and self.now >= self.session.close

    def describe(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"{to_eastern(self.now):%Y-%m-%d %H:%M:%S %Z} (market {state})"


def read_market_time(broker: Broker, calendar: StoredCalendar | None = None) -> MarketTime:
    """Ask the broker for its clock (one call) and today's calendar entry: from ``calendar`` (the
    database's copy, read from the broker once per date) when given, else from the broker (a
    second call)."""
    clock = broker.get_clock()
    today = eastern_date(clock.timestamp)
    if calendar is not None:
        session = calendar.session(today)
    else:
        days = broker.get_calendar(today, today)
        session = next((day for day in days if day.date == today), None)
    return MarketTime(now=clock.timestamp, is_open=clock.is_open, next_open=clock.next_open,
                      next_close=clock.next_close, session=session)


class StoredCalendar:
    """The broker's calendar kept in the ``market_calendar`` table, one row per date.

    A program run needs today's session (open, close, early close, or none on a holiday). The
    first run of a date asks the broker (``/v2/calendar`` for that date, one call) and keeps the
    answer; every later run that date reads the row (one SELECT). The clock is never kept: it
    is read from the broker every run. A person who knows the broker's calendar changed for a
    date (rare: exchanges announce closures in advance) deletes that date's row; the next run
    reads it again.
    """

    def __init__(self, db: Any, broker: Broker) -> None:
        self.db = db
        self.broker = broker

    def session(self, day: dt.date) -> TradingDay | None:
        """The trading session of ``day`` (None: not a trading day)."""
        row = self.db.execute_one("SELECT session_open, session_close FROM market_calendar WHERE calendar_date = %s",
                                  (day,))
        if row is not None:
            if row["session_open"] is None:
                return None
            return TradingDay(date=day, open=row["session_open"], close=row["session_close"])
        session = next((found for found in self.broker.get_calendar(day, day) if found.date == day), None)
        self.db.execute_update(
            "INSERT INTO market_calendar (calendar_date, session_open, session_close) VALUES (%s, %s, %s) "
            "ON CONFLICT (calendar_date) DO UPDATE SET session_open = EXCLUDED.session_open, "
            "session_close = EXCLUDED.session_close, fetched_at = now()",
            (day, session.open if session else None, session.close if session else None))
        return session


def trading_dates(broker: Broker, start: dt.date | None, end: dt.date) -> list[dt.date]:
    """The broker's trading days after ``start`` up to ``end`` come from one calendar call for
    ``start``..``end``; none (no call) when there is no ``start`` or no day after it."""
    if start is None or start >= end:
        return []
    return [day.date for day in broker.get_calendar(start, end)]
