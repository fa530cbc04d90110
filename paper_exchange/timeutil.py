"""Parsing and formatting of RFC 3339 timestamps, the way Alpaca writes them."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, tzinfo

from .errors import unprocessable


def _eastern() -> tzinfo:
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo("America/New_York")
    except Exception:  # pragma: no cover - only on machines without a tz database
        import pytz  # a project dependency that ships its own database

        return pytz.timezone("America/New_York")


EASTERN = _eastern()

_FRACTION = re.compile(r"(\.\d{6})\d+")
_SPACE_OFFSET = re.compile(r"(T[\d:.]+) (\d{2}:?\d{2})$")


def parse_timestamp(text: str, field: str = "timestamp") -> datetime:
    """Parse an RFC 3339 date-time or a plain date into an aware UTC datetime.

    Accepts ``Z`` or numeric offsets, nanosecond fractions (truncated to microseconds),
    and ``YYYY-MM-DD`` (midnight UTC). Naive date-times are taken as UTC, like alpaca-py.
    """
    # A "+00:00" offset sent unencoded in a query string arrives as " 00:00".
    raw = _SPACE_OFFSET.sub(r"\1+\2", text.strip()) if text else text
    if not raw:
        raise unprocessable(f"invalid {field}: empty")
    try:
        if len(raw) == 10:
            d = date.fromisoformat(raw)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        raw = _FRACTION.sub(r"\1", raw)
        if raw.endswith(("Z", "z")):
            raw = raw[:-1] + "+00:00"
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise unprocessable(f"invalid {field}: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso_utc(value: datetime) -> str:
    """``2026-11-20T14:45:00.123456Z`` (microseconds always present, like Alpaca's order times)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_eastern(value: datetime) -> str:
    """``2026-11-20T09:45:00-05:00`` as the clock endpoint reports (ET offset)."""
    local = value.astimezone(EASTERN)
    if local.microsecond:
        return local.isoformat(timespec="microseconds")
    return local.isoformat(timespec="seconds")


def eastern_datetime(day: date, hour: int, minute: int) -> datetime:
    """An aware datetime for a wall time in New York on ``day``, converted to UTC."""
    localize = getattr(EASTERN, "localize", None)
    if localize is not None:  # pragma: no cover - pytz fallback
        local = localize(datetime(day.year, day.month, day.day, hour, minute))  # noqa: DTZ001
    else:
        local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=EASTERN)
    return local.astimezone(UTC)


def to_eastern(value: datetime) -> datetime:
    """Convert an aware datetime to US Eastern time."""
    return value.astimezone(EASTERN)


def floor_minute(value: datetime) -> datetime:
    """Truncate to the start of the minute."""
    return value.replace(second=0, microsecond=0)


def next_minute(value: datetime) -> datetime:
    """The first whole minute strictly after ``value``."""
    return floor_minute(value) + timedelta(minutes=1)


def utc_now() -> datetime:
    """The real current time, aware, in UTC."""
    return datetime.now(UTC)
