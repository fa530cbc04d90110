"""Alpaca's request rate limit: so many requests per minute per API key.

Alpaca answers ``429 {"code": 42910000, "message": "rate limit exceeded"}`` once a key has
made its allowance of requests in the current minute (200 on the Trading API), and sends
``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (the UNIX time
at which the allowance is renewed) with every answer. :class:`RateLimiter` keeps one fixed
one-minute window per key: the window opens with the key's first request and the full
allowance returns when it ends.

Time here is the wall clock even when the exchange runs on a simulated clock: the limit is
about how fast a client calls, not about market time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import CODE_RATE_LIMITED, ExchangeError

#: Alpaca's allowance on the Trading API (requests per minute per key).
ALPACA_REQUESTS_PER_MINUTE = 200
WINDOW_SECONDS = 60.0
RATE_LIMITED_MESSAGE = "rate limit exceeded"
# Windows of keys idle for longer than this are forgotten (bounded memory under many keys).
_FORGET_AFTER_SECONDS = 3 * WINDOW_SECONDS


@dataclass(frozen=True)
class RateDecision:
    """The limiter's verdict on one request and the headers that tell the client about it."""

    allowed: bool
    limit: int
    remaining: int
    reset_epoch: int

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-Limit``, ``X-RateLimit-Remaining``, ``X-RateLimit-Reset``."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_epoch),
        }

    def error(self) -> ExchangeError:
        """The 429 Alpaca answers beyond the limit."""
        return ExchangeError(429, CODE_RATE_LIMITED, RATE_LIMITED_MESSAGE)


@dataclass
class _Window:
    opened: float  # monotonic seconds
    used: int


class RateLimiter:
    """Counts requests per key in fixed one-minute windows; thread-safe.

    Args:
        limit: requests allowed per key and window (Alpaca: 200 per minute).
        monotonic: the clock that measures windows (injectable for tests of this module).
        wall: the clock that dates ``X-RateLimit-Reset`` (UNIX seconds).
    """

    def __init__(
        self,
        limit: int = ALPACA_REQUESTS_PER_MINUTE,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.limit = check_limit(limit)
        self._monotonic = monotonic
        self._wall = wall
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def take(self, key: str) -> RateDecision:
        """Count one request of ``key``; the decision says whether it may be served."""
        now = self._monotonic()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window.opened >= WINDOW_SECONDS:
                if window is None and len(self._windows) > 1000:
                    self._forget_idle(now)
                window = _Window(opened=now, used=0)
                self._windows[key] = window
            allowed = window.used < self.limit
            if allowed:
                window.used += 1
            remaining = self.limit - window.used
            seconds_left = WINDOW_SECONDS - (now - window.opened)
        reset = math.ceil(self._wall() + seconds_left)
        return RateDecision(allowed=allowed, limit=self.limit, remaining=remaining, reset_epoch=reset)

    def reset(self) -> None:
        """Forget every window (``POST /admin/reset``): each key has its full allowance again."""
        with self._lock:
            self._windows.clear()

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, w in self._windows.items() if now - w.opened >= _FORGET_AFTER_SECONDS]:
            del self._windows[key]


def check_limit(limit: int) -> int:
    """A limit is a whole number of requests per minute, at least 1."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"rate limit must be a whole number of requests per minute >= 1, not {limit!r}")
    return limit


#: The allowance the test fixtures, the demo and the benchmarks give (headers kept, never a 429):
#: a fast suite makes far more than 200 calls a minute, which is a property of the suite, not of
#: the programs. Tests of the limit itself use Alpaca's 200 or less.
UNTHROTTLED_REQUESTS_PER_MINUTE = 1_000_000
