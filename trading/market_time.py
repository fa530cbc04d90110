"""Market time: the broker's clock and calendar, read once per run and passed down as ``now``.

Every decision that depends on the market's time (is the market open, is today a trading day,
is it time for the day-end exit, which day a daily limit counts) reads a ``MarketTime``.
Against Alpaca it is the market's time; against the paper exchange with a simulated clock it
is the simulated time, which is how tests and the simulated day move time for the programs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

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


def read_market_time(broker: Broker) -> MarketTime:
    """Ask the broker for its clock and today's calendar entry (two calls)."""
    clock = broker.get_clock()
    today = eastern_date(clock.timestamp)
    days = broker.get_calendar(today, today)
    session = next((day for day in days if day.date == today), None)
    return MarketTime(now=clock.timestamp, is_open=clock.is_open, next_open=clock.next_open,
                      next_close=clock.next_close, session=session)


def trading_dates(broker: Broker, start: dt.date | None, end: dt.date) -> list[dt.date]:
    """The broker's trading days after ``start`` up to ``end`` come from one calendar call for
    ``start``..``end``; none (no call) when there is no ``start`` or no day after it."""
    if start is None or start >= end:
        return []
    return [day.date for day in broker.get_calendar(start, end)]
