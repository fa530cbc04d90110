"""The dashboard: a small static app (``console/static/``) served by the console, calling ``/api``.

``GET /`` is the page, ``/static/...`` its script, styles and the vendored Chart.js; nothing is
fetched from elsewhere at run time. The page holds no data of the book: everything it shows
comes from the API, so beyond the loopback interface the page and its files are served without
the token while every ``/api`` request still needs it (the operator types the token into the
page's login field; see docs/console.md).

``GET /api/market`` tells the page whether the market is open (it refreshes itself only then):
the broker's clock when there is a broker, else the regular session (weekdays 09:30-16:00
US/Eastern, holidays not known).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from console.app import BrokerSource, answer
from trading.errors import TradingError
from trading.market_time import to_eastern

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Paths served without the token beyond loopback: code and styles only, never data.
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = frozenset({"/", "/index.html", "/favicon.ico"})

SESSION_OPEN = dt.time(9, 30)
SESSION_CLOSE = dt.time(16, 0)
#: How often the page refreshes while the market is open (seconds).
REFRESH_SECONDS = 15


def is_public(path: str) -> bool:
    """Whether ``path`` is the page or one of its static files (no data of the book)."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def regular_session_open(now: dt.datetime) -> bool:
    """Weekdays 09:30-16:00 US/Eastern (the fallback without a broker; holidays unknown)."""
    eastern = to_eastern(now)
    return eastern.weekday() < 5 and SESSION_OPEN <= eastern.time() < SESSION_CLOSE


def market(brokers: BrokerSource, now: dt.datetime | None = None) -> dict[str, Any]:
    """Whether the market is open, from the broker's clock when there is one."""
    broker = brokers.get()
    problem = brokers.problem
    if broker is not None:
        try:
            clock = broker.get_clock()
            return {"is_open": clock.is_open, "timestamp": clock.timestamp, "next_open": clock.next_open,
                    "next_close": clock.next_close, "source": "broker", "refresh_seconds": REFRESH_SECONDS,
                    "note": None}
        except TradingError as exc:
            problem = f"the broker's clock could not be read: {exc}"
    moment = now or dt.datetime.now(dt.UTC)
    return {"is_open": regular_session_open(moment), "timestamp": moment, "next_open": None, "next_close": None,
            "source": "regular_session", "refresh_seconds": REFRESH_SECONDS,
            "note": f"{problem or 'no broker'}: the regular session (weekdays 09:30-16:00 ET) is assumed"}


def add_dashboard(app: FastAPI, brokers: BrokerSource) -> None:
    """Serve the page at ``/``, its files at ``/static`` and ``GET /api/market``."""
    index = STATIC_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        # no-cache: a new version of the console is picked up at the next load
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/market", tags=["health"], summary="Whether the market is open (the dashboard refreshes only then)")
    def get_market() -> Any:
        return answer(market(brokers))

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
