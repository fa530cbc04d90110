"""The console's web application: ``create_app(settings) -> FastAPI``.

Every answer is JSON with money as exact decimal strings and times in ISO 8601 with their zone.
Reads come from ``console.read_model``; writes from ``console.writes`` (decisions and the
trading state, never a broker call). Bad input is a 4xx with a message that says what was wrong,
an unreachable database a 503; FastAPI's OpenAPI page is at ``/docs`` (``/openapi.json``).

Security: writes need ``Authorization: Bearer <CONSOLE_TOKEN>``; when the console listens beyond
the loopback interface every request does. The token is never echoed, logged or put in an
answer (it is registered with the log scrubber).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import hmac
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from console.settings import ConsoleSettings
from trading.broker import Broker
from trading.errors import ConfigurationError, NotFoundError, RejectedError, TradingError, TransientError
from trading.logs import register_secret

logger = logging.getLogger(__name__)

API_TITLE = "trading-monitor operator console"


# --------------------------------------------------------------------------- JSON


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact: never a float
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)  # storage is UTC (TIMESTAMPTZ); say so
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"cannot answer {type(value).__name__} as JSON")


class ConsoleJSONResponse(JSONResponse):
    """JSON with Decimals as strings and aware ISO times (FastAPI's encoder would make floats)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_json_default, ensure_ascii=False, separators=(",", ":")).encode()


def answer(content: Any, status_code: int = 200) -> ConsoleJSONResponse:
    """An endpoint's answer (returned as a Response, so FastAPI does not re-encode it)."""
    return ConsoleJSONResponse(content, status_code=status_code)


def raw_answer(json_text: str, status_code: int = 200) -> Response:
    """An answer whose JSON text PostgreSQL already built (``json_agg``): passed on unparsed."""
    return Response(content=json_text.encode(), status_code=status_code, media_type="application/json")


class ApiError(Exception):
    """A request the console refuses, with the status and a message for the operator."""

    def __init__(self, status_code: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.details = details


# --------------------------------------------------------------------------- database connections


class ConnectionPool:
    """A few ``TradingDB`` connections shared by the request threads (one request, one connection)."""

    def __init__(self, make: Callable[[], Any], size: int, wait_seconds: float = 10.0) -> None:
        self._make = make
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._size = size
        self._created = 0
        self._lock = threading.Lock()
        self._wait = wait_seconds
        self._all: list[Any] = []

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        db = self._take()
        try:
            yield db
        finally:
            if db.in_transaction:  # never hand on a connection in the middle of a transaction
                db.close()
            self._idle.put(db)

    def _take(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._created < self._size:
                self._created += 1
                db = self._make()
                self._all.append(db)
                return db
        try:
            return self._idle.get(timeout=self._wait)
        except queue.Empty:
            raise ApiError(503, "every database connection of the console is busy; try again") from None

    def close(self) -> None:
        for db in self._all:
            with contextlib.suppress(Exception):
                db.close()


class BrokerSource:
    """The broker for reads only (the benchmark's bars, the health check), or why there is none.

    Connected on first use; a web request never changes anything at the broker."""

    def __init__(self, broker: Broker | None = None, connect: Callable[[], Broker] | None = None,
                 missing: str = "the console was started without a broker (--no-broker)") -> None:
        self._broker = broker
        self._connect = connect
        self._lock = threading.Lock()
        self.problem: str | None = None if broker is not None or connect is not None else missing

    def get(self) -> Broker | None:
        if self._broker is not None or self._connect is None:
            return self._broker
        with self._lock:
            if self._broker is None and self._connect is not None:
                try:
                    self._broker = self._connect()
                    self.problem = None
                except TradingError as exc:
                    self.problem = f"the broker could not be reached: {exc}"
                    return None
        return self._broker


# --------------------------------------------------------------------------- the app


def create_app(settings: ConsoleSettings, *, broker: Broker | None = None,
               connect_broker: Callable[[], Broker] | None = None,
               make_db: Callable[[], Any] | None = None) -> FastAPI:
    """The console for ``settings``: its database from ``settings.trading.postgres`` (the embedded
    one when nothing is configured), its broker (reads only) given or connected on first use."""
    from db_layer import TradingDB

    if settings.token:
        register_secret(settings.token.reveal())

    def new_db() -> Any:
        if make_db is not None:
            return make_db()
        return TradingDB(test_mode=settings.trading.test_mode, config=settings.trading.postgres,
                         application_name="console")

    pool = ConnectionPool(new_db, settings.pool_size)
    brokers = BrokerSource(broker, connect_broker)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        yield
        pool.close()

    app = FastAPI(title=API_TITLE, version="1", default_response_class=ConsoleJSONResponse, lifespan=lifespan,
                  description="Read the book (portfolio, positions, orders, trades, decisions) and act through the "
                              "contract: a Close or a changed level is an approved decision that the order monitor "
                              "carries out at its next run; a mode switch goes through the trading state.")
    app.state.settings = settings
    app.state.pool = pool
    app.state.brokers = brokers

    _install_error_handlers(app)
    _install_auth(app, settings)

    def database() -> Iterator[Any]:
        with pool.connection() as db:
            yield db

    app.state.database = database

    from console import dashboard, routes

    routes.add_routes(app, database, settings, brokers)
    dashboard.add_dashboard(app, brokers)
    return app


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization") or ""
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def token_ok(settings: ConsoleSettings, request: Request) -> bool:
    """Whether the request carries the configured bearer token (compared in constant time)."""
    given = _bearer(request)
    return bool(settings.token) and given is not None and hmac.compare_digest(
        given.encode(), settings.token.reveal().encode())


def require_token(request: Request) -> None:
    """The dependency of every write: the bearer token, or 401/403 saying what is missing."""
    settings: ConsoleSettings = request.app.state.settings
    if not settings.token:
        raise ApiError(403, "writes are disabled: set CONSOLE_TOKEN on the console's server and send it as "
                            "'Authorization: Bearer <token>'")
    if not token_ok(settings, request):
        raise ApiError(401, "this request needs the console's bearer token: 'Authorization: Bearer <CONSOLE_TOKEN>'")


WRITE = [Depends(require_token)]


def _install_auth(app: FastAPI, settings: ConsoleSettings) -> None:
    if settings.loopback:
        return

    from console.dashboard import is_public

    @app.middleware("http")
    async def every_request_needs_the_token(request: Request, call_next: Any) -> Any:
        # Beyond the loopback interface the book itself is confidential: reads need the token too.
        # The dashboard's page and files hold no data (a browser cannot send a bearer header when
        # it loads a page): they are served, and the page sends the token with every API call.
        if not is_public(request.url.path) and not token_ok(settings, request):
            return answer({"error": "this console listens beyond localhost: every request needs "
                                    "'Authorization: Bearer <CONSOLE_TOKEN>'"}, 401)
        return await call_next(request)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> ConsoleJSONResponse:
        return answer({"error": exc.message, **exc.details}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> ConsoleJSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
            problems.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
        return answer({"error": "invalid request: " + "; ".join(problems), "problems": problems}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> ConsoleJSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        return answer({"error": message}, exc.status_code)

    @app.exception_handler(NotFoundError)
    async def not_found(_request: Request, exc: NotFoundError) -> ConsoleJSONResponse:
        return answer({"error": str(exc)}, 404)

    @app.exception_handler(RejectedError)
    async def rejected(_request: Request, exc: RejectedError) -> ConsoleJSONResponse:
        return answer({"error": str(exc), "code": getattr(exc, "code", None)}, 409)

    @app.exception_handler(TransientError)
    async def unavailable(_request: Request, exc: TransientError) -> ConsoleJSONResponse:
        logger.warning("console: %s", exc)
        return answer({"error": f"temporarily unavailable: {exc}"}, 503)

    @app.exception_handler(ConfigurationError)
    async def misconfigured(_request: Request, exc: ConfigurationError) -> ConsoleJSONResponse:
        logger.error("console: configuration error: %s", exc)
        return answer({"error": f"configuration error: {exc}"}, 503)
