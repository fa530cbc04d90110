"""Request counters for ``GET /admin/stats`` (Trading and Market-data API calls only)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class RequestStats:
    """Counts ``/v2`` requests by ``"METHOD /path"`` and by route template; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0
        self._by_path: Counter[str] = Counter()
        self._by_route: Counter[str] = Counter()

    def record(self, method: str, path: str, route: str) -> None:
        """Count one request."""
        with self._lock:
            self._total += 1
            self._by_path[f"{method} {path}"] += 1
            self._by_route[f"{method} {route}"] += 1

    def snapshot(self) -> dict[str, Any]:
        """``{"total": N, "requests": {"GET /v2/orders": n, ...}, "routes": {...}}``."""
        with self._lock:
            return {
                "total": self._total,
                "requests": dict(self._by_path),
                "routes": dict(self._by_route),
            }

    def reset(self) -> None:
        """Start counting from zero."""
        with self._lock:
            self._total = 0
            self._by_path.clear()
            self._by_route.clear()
