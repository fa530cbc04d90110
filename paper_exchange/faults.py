"""Fault injection for the Trading/Market-data API (never for ``/admin``).

A rule answers matching requests with an error status, a delay, or a dropped
connection, for its next ``count`` matches. ``when="before"`` replaces the request (it is
not processed); ``when="after"`` lets the exchange process it (an order *is* accepted)
and then replaces the answer, which is how clients test "the broker accepted the order
but we never heard back".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import bad_request

DEFAULT_MESSAGES = {
    429: "rate limit exceeded",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}
MAX_DELAY_SECONDS = 600.0
RATE_LIMIT_PER_MINUTE = 200


@dataclass
class FaultRule:
    """One active fault rule."""

    id: int
    status: int | None
    delay_seconds: float
    drop: bool
    count: int
    method: str | None
    path: str | None
    when: str
    message: str | None
    code: int | None

    def matches(self, method: str, path: str) -> bool:
        """True for requests this rule applies to (path exact, or prefix ending in ``*``)."""
        if self.method is not None and self.method != method:
            return False
        if self.path is None:
            return True
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path

    def error_body(self) -> dict[str, Any]:
        """The ``{"code", "message"}`` body sent with the fault's status."""
        assert self.status is not None
        return {
            "code": self.code if self.code is not None else int(f"{self.status}10000"),
            "message": self.message or DEFAULT_MESSAGES.get(self.status, "injected fault"),
        }

    def headers(self) -> dict[str, str]:
        """Alpaca's rate-limit headers for a 429, nothing otherwise."""
        if self.status != 429:
            return {}
        now = int(time.time())
        return {
            "X-RateLimit-Limit": str(RATE_LIMIT_PER_MINUTE),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(now - now % 60 + 60),
        }

    def to_json(self) -> dict[str, Any]:
        """The rule as ``GET /admin/faults`` lists it."""
        return {
            "id": self.id,
            "status": self.status,
            "delay_seconds": self.delay_seconds,
            "drop": self.drop,
            "count": self.count,
            "method": self.method,
            "path": self.path,
            "when": self.when,
            "message": self.message,
            "code": self.code,
        }


class FaultInjector:
    """The list of active rules; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._next_id = 1

    def add(self, spec: Mapping[str, Any]) -> FaultRule:
        """Validate and add a rule from the ``POST /admin/faults`` body."""
        if not isinstance(spec, Mapping):
            raise bad_request("expected a JSON object")
        status = spec.get("status")
        if status is not None and (isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599):
            raise bad_request("status must be an HTTP status code")
        try:
            delay = float(spec.get("delay_seconds") or 0)
        except (TypeError, ValueError):
            raise bad_request("delay_seconds must be a number") from None
        if not 0 <= delay <= MAX_DELAY_SECONDS:
            raise bad_request(f"delay_seconds must be between 0 and {MAX_DELAY_SECONDS:g}")
        drop = spec.get("drop", False)
        if not isinstance(drop, bool):
            raise bad_request("drop must be true or false")
        if drop and status is not None:
            raise bad_request("a rule either drops the connection or answers a status, not both")
        if status is None and not drop and delay == 0:
            raise bad_request("a rule needs status, delay_seconds or drop")
        count = spec.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise bad_request("count must be a positive integer")
        when = spec.get("when", "before")
        if when not in ("before", "after"):
            raise bad_request('when must be "before" or "after"')
        method = spec.get("method")
        if method is not None:
            method = str(method).upper()
        path = spec.get("path")
        if path is not None:
            path = str(path)
            if path != "/" and path.endswith("/"):
                path = path.rstrip("/")
            if not path.startswith("/v2"):
                raise bad_request("faults apply to /v2/... paths only")
        code = spec.get("code")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            raise bad_request("code must be an integer")
        message = spec.get("message")
        with self._lock:
            rule = FaultRule(
                id=self._next_id,
                status=status,
                delay_seconds=delay,
                drop=drop,
                count=count,
                method=method,
                path=path,
                when=when,
                message=None if message is None else str(message),
                code=code,
            )
            self._next_id += 1
            self._rules.append(rule)
            return rule

    def take(self, method: str, path: str) -> FaultRule | None:
        """The first rule matching this request, consuming one of its uses."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.count -= 1
                    if rule.count <= 0:
                        self._rules.remove(rule)
                    return rule
            return None

    def list(self) -> list[dict[str, Any]]:
        """Active rules with their remaining counts."""
        with self._lock:
            return [rule.to_json() for rule in self._rules]

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()
