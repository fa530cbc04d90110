"""HTTP front end: Alpaca's Trading API v2 and market-data routes plus the admin API.

Built on ``http.server.ThreadingHTTPServer`` with HTTP/1.1 keep-alive. Every answer is
JSON (or empty for 204), errors are ``{"code", "message"}`` with Alpaca's status codes (also
for HEAD, OPTIONS, unknown methods and malformed requests), and the server never redirects
(a trailing slash is simply ignored). Keyed ``/v2`` requests are counted against Alpaca's rate
limit (:mod:`paper_exchange.ratelimit`) and every answer to them carries its headers.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .engine import PaperExchange
from .errors import (
    CODE_BAD_REQUEST,
    CODE_INTERNAL,
    CODE_METHOD_NOT_ALLOWED,
    CODE_NOT_FOUND,
    CODE_UNAUTHORIZED,
    ExchangeError,
    bad_request,
    unprocessable,
)
from .faults import FaultInjector, FaultRule
from .ratelimit import ALPACA_REQUESTS_PER_MINUTE, RateDecision, RateLimiter
from .stats import RequestStats
from .stream import TradeUpdateStream
from .timeutil import parse_timestamp

log = logging.getLogger(__name__)

SERVICE_NAME = "paper_exchange"
MAX_BODY_BYTES = 1_000_000


@dataclass
class Request:
    """A parsed request handed to a route handler."""

    method: str
    path: str
    params: dict[str, str]
    body: Any
    match: re.Match[str]


@dataclass
class Response:
    """What a handler answers: a status, a JSON-able payload (None = empty) and headers."""

    status: int
    payload: Any = None
    headers: dict[str, str] | None = None


Handler = Callable[["ExchangeServer", Request], Response]
_ROUTES: list[tuple[str, re.Pattern[str], str, Handler]] = []


#: What ``_apply_fault`` returns after closing the connection without an answer.
_DROPPED = Response(0, None)


def route(method: str, template: str) -> Callable[[Handler], Handler]:
    """Register a handler for ``METHOD template`` (``{name}`` captures one path segment)."""
    escaped = re.escape(template).replace(r"\{", "{").replace(r"\}", "}")
    pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", escaped) + "$")

    def register(handler: Handler) -> Handler:
        _ROUTES.append((method, pattern, template, handler))
        return handler

    return register


def _allowed_methods(path: str) -> list[str]:
    """The methods served on ``path`` (the ``Allow`` header of a 405)."""
    return sorted({m for m, pattern, _t, _h in _ROUTES if pattern.match(path)})


def _find_route(method: str, path: str) -> tuple[Handler | None, re.Match[str] | None, str, bool]:
    """(handler, match, template, path_known) for a request."""
    known = False
    for route_method, pattern, template, handler in _ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        known = True
        if route_method == method:
            return handler, match, template, True
    return None, None, path, known


# ---------------------------------------------------------------------------- helpers
def _flag(params: dict[str, str], name: str) -> bool:
    """Query booleans arrive as ``True``/``true``/``1`` (alpaca-py capitalises them)."""
    value = params.get(name)
    if value is None or value == "":
        return False
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise unprocessable(f"invalid {name}: {value!r}")


def _int_param(params: dict[str, str], name: str, default: int | None, status: int = 422) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        if status == 400:
            raise bad_request(f"invalid {name}: {value!r}") from None
        raise unprocessable(f"invalid {name}: {value!r}") from None


def _time_param(params: dict[str, str], name: str, status: int = 422) -> Any:
    value = params.get(name)
    if not value:
        return None
    try:
        return parse_timestamp(value, name)
    except ExchangeError:
        if status == 400:
            raise bad_request(f"invalid {name}: {value!r}") from None
        raise


def _object_body(request: Request) -> dict[str, Any]:
    if not isinstance(request.body, dict):
        raise bad_request("request body must be a JSON object")
    return request.body


# ---------------------------------------------------------------------------- trading API
@route("GET", "/v2/account")
def _account(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.get_account())


@route("GET", "/v2/account/configurations")
def _configurations(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.get_account_configurations())


@route("PATCH", "/v2/account/configurations")
def _update_configurations(server: ExchangeServer, request: Request) -> Response:
    if not isinstance(request.body, dict):
        raise unprocessable("request body must be a JSON object")
    return Response(200, server.exchange.update_account_configurations(request.body))


@route("GET", "/v2/account/portfolio/history")
def _portfolio_history(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.portfolio_history(request.params))


@route("GET", "/v2/clock")
def _clock(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.get_clock())


@route("GET", "/v2/calendar")
def _calendar(server: ExchangeServer, request: Request) -> Response:
    start = _time_param(request.params, "start", status=400)
    end = _time_param(request.params, "end", status=400)
    return Response(
        200,
        server.exchange.get_calendar(start.date() if start else None, end.date() if end else None),
    )


@route("GET", "/v2/assets")
def _assets(server: ExchangeServer, request: Request) -> Response:
    return Response(
        200,
        server.exchange.list_assets(request.params.get("status"), request.params.get("asset_class")),
    )


@route("GET", "/v2/assets/{symbol_or_id}")
def _asset(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.get_asset(request.match["symbol_or_id"]))


@route("POST", "/v2/orders")
def _submit(server: ExchangeServer, request: Request) -> Response:
    if not isinstance(request.body, dict):
        raise unprocessable("request body must be a JSON object")
    return Response(200, server.exchange.submit_order(request.body))


@route("GET", "/v2/orders")
def _orders(server: ExchangeServer, request: Request) -> Response:
    p = request.params
    symbols = p.get("symbols")
    return Response(
        200,
        server.exchange.list_orders(
            status=(p.get("status") or "open").lower(),
            limit=_int_param(p, "limit", 50) or 0,
            after=_time_param(p, "after"),
            until=_time_param(p, "until"),
            direction=(p.get("direction") or "desc").lower(),
            nested=_flag(p, "nested"),
            symbols=[s for s in symbols.split(",") if s.strip()] if symbols else None,
            side=p.get("side") or None,
        ),
    )


@route("DELETE", "/v2/orders")
def _cancel_all(server: ExchangeServer, request: Request) -> Response:
    return Response(207, server.exchange.cancel_all_orders())


@route("GET", "/v2/orders:by_client_order_id")
def _by_client_id(server: ExchangeServer, request: Request) -> Response:
    client_order_id = request.params.get("client_order_id")
    if not client_order_id:
        raise unprocessable("client_order_id is required")
    return Response(
        200,
        server.exchange.get_order_by_client_id(client_order_id, _flag(request.params, "nested")),
    )


@route("GET", "/v2/orders/{order_id}")
def _order(server: ExchangeServer, request: Request) -> Response:
    return Response(
        200, server.exchange.get_order(request.match["order_id"], _flag(request.params, "nested"))
    )


@route("PATCH", "/v2/orders/{order_id}")
def _replace(server: ExchangeServer, request: Request) -> Response:
    if not isinstance(request.body, dict):
        raise unprocessable("request body must be a JSON object")
    return Response(200, server.exchange.replace_order(request.match["order_id"], request.body))


@route("DELETE", "/v2/orders/{order_id}")
def _cancel(server: ExchangeServer, request: Request) -> Response:
    server.exchange.cancel_order(request.match["order_id"])
    return Response(204)


@route("GET", "/v2/positions")
def _positions(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.list_positions())


@route("DELETE", "/v2/positions")
def _close_all(server: ExchangeServer, request: Request) -> Response:
    return Response(
        207, server.exchange.close_all_positions(_flag(request.params, "cancel_orders"))
    )


@route("GET", "/v2/positions/{symbol_or_id}")
def _position(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.get_position(request.match["symbol_or_id"]))


@route("DELETE", "/v2/positions/{symbol_or_id}")
def _close(server: ExchangeServer, request: Request) -> Response:
    return Response(
        200,
        server.exchange.close_position(
            request.match["symbol_or_id"],
            qty=request.params.get("qty") or None,
            percentage=request.params.get("percentage") or None,
        ),
    )


# ---------------------------------------------------------------------------- market data
@route("GET", "/v2/stocks/quotes/latest")
def _latest_quotes(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.latest_quotes(request.params.get("symbols", "")))


@route("GET", "/v2/stocks/trades/latest")
def _latest_trades(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.latest_trades(request.params.get("symbols", "")))


@route("GET", "/v2/stocks/bars/latest")
def _latest_bars(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.latest_bars(request.params.get("symbols", "")))


@route("GET", "/v2/stocks/{symbol}/bars/latest")
def _latest_bar(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.latest_bar(request.match["symbol"]))


@route("GET", "/v2/stocks/snapshots")
def _snapshots(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.stock_snapshots(request.params.get("symbols", "")))


@route("GET", "/v2/stocks/{symbol}/snapshot")
def _snapshot(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.stock_snapshot(request.match["symbol"]))


@route("GET", "/v2/stocks/bars")
def _bars(server: ExchangeServer, request: Request) -> Response:
    p = request.params
    return Response(
        200,
        server.exchange.bars(
            p.get("symbols", ""),
            p.get("timeframe", ""),
            start=_time_param(p, "start", status=400),
            end=_time_param(p, "end", status=400),
            limit=_int_param(p, "limit", None, status=400),
            page_token=p.get("page_token") or None,
            sort=(p.get("sort") or "asc").lower(),
        ),
    )


# ---------------------------------------------------------------------------- admin API
@route("GET", "/admin/health")
def _health(server: ExchangeServer, request: Request) -> Response:
    return Response(200, {"service": SERVICE_NAME, "status": "ok", "url": server.url})


@route("POST", "/admin/quotes")
def _set_quotes(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.set_quotes(_object_body(request)))


@route("GET", "/admin/stream")
def _get_admin_stream(server: ExchangeServer, request: Request) -> Response:
    """Where the trade-updates websocket listens (404 when this server has none)."""
    if server.stream is None:
        return Response(404, {"code": CODE_NOT_FOUND, "message": "this exchange serves no trade-updates stream"})
    return Response(200, {"url": server.stream.url, "events_published": server.stream.events_published})


@route("GET", "/admin/clock")
def _get_admin_clock(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.exchange.get_clock())


@route("POST", "/admin/clock")
def _set_clock(server: ExchangeServer, request: Request) -> Response:
    body = _object_body(request)
    if ("now" in body) == ("advance_seconds" in body):
        raise bad_request('give exactly one of "now" or "advance_seconds"')
    if "now" in body:
        return Response(200, server.exchange.set_time(str(body["now"])))
    try:
        seconds = float(body["advance_seconds"])
    except (TypeError, ValueError):
        raise bad_request("advance_seconds must be a number") from None
    return Response(200, server.exchange.advance(seconds))


@route("GET", "/admin/faults")
def _list_faults(server: ExchangeServer, request: Request) -> Response:
    return Response(200, {"faults": server.faults.list()})


@route("POST", "/admin/faults")
def _add_fault(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.faults.add(_object_body(request)).to_json())


@route("DELETE", "/admin/faults")
def _clear_faults(server: ExchangeServer, request: Request) -> Response:
    server.faults.clear()
    return Response(200, {"faults": []})


@route("GET", "/admin/stats")
def _get_stats(server: ExchangeServer, request: Request) -> Response:
    return Response(200, server.stats.snapshot())


@route("DELETE", "/admin/stats")
def _reset_stats(server: ExchangeServer, request: Request) -> Response:
    server.stats.reset()
    return Response(200, server.stats.snapshot())


@route("POST", "/admin/reset")
def _reset(server: ExchangeServer, request: Request) -> Response:
    body = request.body if isinstance(request.body, dict) else {}
    server.exchange.reset(starting_cash=body.get("cash"))
    server.faults.clear()
    server.stats.reset()
    server.rate_limits.reset()
    return Response(200, server.exchange.state())


@route("POST", "/admin/symbols")
def _add_symbols(server: ExchangeServer, request: Request) -> Response:
    return Response(200, {"assets": server.exchange.add_symbols(_object_body(request))})


@route("POST", "/admin/account")
def _set_account(server: ExchangeServer, request: Request) -> Response:
    body = _object_body(request)
    if "cash" not in body:
        raise bad_request('expected {"cash": amount}')
    try:
        return Response(200, server.exchange.set_cash(body["cash"]))
    except ExchangeError as error:
        raise bad_request(error.message) from None


@route("POST", "/admin/config")
def _configure(server: ExchangeServer, request: Request) -> Response:
    body = _object_body(request)
    return Response(
        200, server.exchange.configure(partial_fill_probability=body.get("partial_fill_probability"))
    )


@route("GET", "/admin/state")
def _state(server: ExchangeServer, request: Request) -> Response:
    state = server.exchange.state()
    state["faults"] = server.faults.list()
    return Response(200, state)


# ---------------------------------------------------------------------------- HTTP plumbing
def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "paper-exchange/1.0"
    # Responses go out in one write, but small replies must not wait for Nagle.
    disable_nagle_algorithm = True
    # Idle keep-alive connections are closed after this many seconds.
    timeout = 300
    server: _HTTPServer
    # Rate-limit headers of the request being answered (sent with whatever the answer is).
    rate_headers: dict[str, str] = {}

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_OPTIONS(self) -> None:
        self._handle("OPTIONS")

    def __getattr__(self, name: str) -> Any:
        # Any other method (TRACE, FOO, ...) is routed too, so that it gets a JSON 404/405
        # instead of the standard library's 501 HTML page.
        if name.startswith("do_") and name[3:].isalpha():
            method = name[3:]
            return lambda: self._handle(method)
        raise AttributeError(name)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the standard library raises itself (malformed request line or headers, URI
        too long) answer Alpaca-style JSON like every other error."""
        self.close_connection = True
        self._send(Response(code, {"code": code * 100000 + 10000, "message": (message or "bad request").lower()}))

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines only (never headers, so API keys are never logged).
        log.debug("%s - %s", self.address_string(), format % args)

    def _handle(self, method: str) -> None:
        app = self.server.app
        split = urlsplit(self.path)
        path = split.path
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/")  # never redirect; /v2/orders/ is /v2/orders
        params = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        try:
            raw = self._read_body()
        except ExchangeError as error:
            self.close_connection = True
            self._send(Response(error.status, error.body()))
            return
        is_api = path.startswith("/v2/") or path == "/v2"
        handler, match, template, known = _find_route(method, path)
        fault: FaultRule | None = None
        if is_api:
            app.stats.record(method, path, template)
            rate = self._take_rate(path)
            if rate is not None:
                self.rate_headers = rate.headers()
                if not rate.allowed:  # not processed, no fault consumed: Alpaca never saw it
                    self._send(Response(429, rate.error().body()))
                    return
            fault = app.faults.take(method, path)
            if fault is not None and fault.when == "before":
                answer = self._apply_fault(fault)
                if answer is not None:  # dropped or answered: the request is not processed
                    if answer is not _DROPPED:
                        self._send(answer)
                    return
                fault = None  # a pure delay: now process normally
        response = self._dispatch(
            method=method, path=path, params=params, raw=raw,
            handler=handler, match=match, known=known, is_api=is_api,
        )
        if fault is not None:  # when == "after": the request was processed
            answer = self._apply_fault(fault)
            if answer is _DROPPED:
                return
            response = answer or response
        self._send(response)

    def _take_rate(self, path: str) -> RateDecision | None:
        """Count the request against its key's allowance (Trading and Market-data API apart,
        as they are two services at Alpaca); None for a request without credentials (it is
        answered 401 and counts against no key)."""
        key = self.headers.get("APCA-API-KEY-ID", "").strip() or self.headers.get("Authorization", "").strip()
        if not key or not self._authorized():
            return None
        service = "data" if path.startswith("/v2/stocks/") else "trading"
        return self.server.app.rate_limits.take(f"{service}:{key}")

    def _apply_fault(self, fault: FaultRule) -> Response | None:
        """Wait the fault's delay, then drop the connection (returns ``_DROPPED``), or return the
        fault's answer, or None for a pure delay (the normal answer stands)."""
        if fault.delay_seconds:
            time.sleep(fault.delay_seconds)
        if fault.drop:
            self._drop()
            return _DROPPED
        if fault.status is not None:
            return Response(fault.status, fault.error_body(), fault.headers())
        return None

    def _dispatch(
        self,
        *,
        method: str,
        path: str,
        params: dict[str, str],
        raw: bytes,
        handler: Handler | None,
        match: re.Match[str] | None,
        known: bool,
        is_api: bool,
    ) -> Response:
        app = self.server.app
        if is_api and not self._authorized():
            return Response(401, {"code": CODE_UNAUTHORIZED, "message": "request is not authorized"})
        if handler is None or match is None:
            if known:
                allowed = ", ".join(_allowed_methods(path))
                return Response(405, {"code": CODE_METHOD_NOT_ALLOWED, "message": "method not allowed"},
                                {"Allow": allowed})
            return Response(404, {"code": CODE_NOT_FOUND, "message": "endpoint not found"})
        try:
            body = json.loads(raw, parse_float=Decimal) if raw.strip() else None
        except (ValueError, UnicodeDecodeError):
            return Response(400, {"code": CODE_BAD_REQUEST, "message": "request body format is invalid"})
        try:
            return handler(app, Request(method, path, params, body, match))
        except ExchangeError as error:
            return Response(error.status, error.body())
        except Exception:
            log.exception("internal error on %s %s", method, path)
            return Response(500, {"code": CODE_INTERNAL, "message": "internal server error"})

    def _authorized(self) -> bool:
        key = self.headers.get("APCA-API-KEY-ID", "").strip()
        secret = self.headers.get("APCA-API-SECRET-KEY", "").strip()
        if key and secret:
            return True
        # OAuth / basic-auth clients of alpaca-py send Authorization instead.
        return bool(self.headers.get("Authorization", "").strip())

    def _read_body(self) -> bytes:
        length_header = self.headers.get("Content-Length")
        if not length_header:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            raise bad_request("invalid Content-Length") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise ExchangeError(413, 41310000, "request body too large")
        return self.rfile.read(length)

    def _send(self, response: Response) -> None:
        status = response.status
        body = b""
        if response.payload is not None and status != 204:
            body = json.dumps(response.payload, separators=(",", ":"), default=_json_default).encode()
        headers = {**self.rate_headers, **(response.headers or {})}
        self.rate_headers = {}
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Status"
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"Server: {self.server_version}",
            f"Date: {formatdate(usegmt=True)}",
        ]
        if status != 204:
            lines.append("Content-Type: application/json; charset=utf-8")
            lines.append(f"Content-Length: {len(body)}")
        for name, value in headers.items():
            lines.append(f"{name}: {value}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # A HEAD answer says how long the body would be but sends none (HTTP forbids it).
        self.wfile.write(head if getattr(self, "command", None) == "HEAD" else head + body)
        self.log_request(status, len(body))

    def _drop(self) -> None:
        """Close the connection without answering (a fault with ``drop``)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: ExchangeServer

    def __init__(self, address: tuple[str, int], app: ExchangeServer) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        with self._connections_lock:
            self._connections.add(conn)
        return conn, address

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Close idle keep-alive connections so their threads end."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class ExchangeServer:
    """An HTTP server over a :class:`PaperExchange`.

    Use :func:`start_server` for a background server (tests, the demo), or
    :meth:`serve_forever` to block (the CLI). ``url`` is what to give alpaca-py as
    ``url_override`` (and to use as ``ALPACA_BASE_URL`` / ``ALPACA_DATA_URL``).

    ``rate_limit`` is the allowance of requests per minute per API key, counted apart for the
    Trading and the Market-data API (Alpaca: 200); tests raise it so that a fast suite is not
    throttled, and every answer still carries the ``X-RateLimit-*`` headers.
    """

    def __init__(
        self,
        exchange: PaperExchange | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit: int = ALPACA_REQUESTS_PER_MINUTE,
        stream_port: int | None = None,
    ) -> None:
        self.exchange = exchange if exchange is not None else PaperExchange()
        # The trade-updates websocket (paper_exchange/stream.py) on a port of its own; None: off.
        self.stream: TradeUpdateStream | None = (
            None if stream_port is None else TradeUpdateStream(self.exchange, host, stream_port))
        self.faults = FaultInjector()
        self.stats = RequestStats()
        self.rate_limits = RateLimiter(rate_limit)
        self._httpd = _HTTPServer((host, port), self)
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        """Base URL without ``/v2`` and without a trailing slash."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host  # noqa: S104 - only a URL
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> ExchangeServer:
        """Serve in a background daemon thread; returns self."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"paper-exchange-{self.port}", daemon=True,
        )
        self._thread.start()
        if self.stream is not None:
            self.stream.start()
        log.info("paper exchange listening on %s", self.url)
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` is called from another thread."""
        log.info("paper exchange listening on %s", self.url)
        if self.stream is not None:
            self.stream.start()
        self._httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop accepting requests, close open connections and release the port."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.stream is not None:
            self.stream.stop()
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ExchangeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    host: str = "127.0.0.1",
    port: int = 0,
    exchange: PaperExchange | None = None,
    rate_limit: int = ALPACA_REQUESTS_PER_MINUTE,
    stream_port: int | None = None,
) -> ExchangeServer:
    """Start a server in the background (port 0 picks a free port) and return its handle.

    ``rate_limit``: requests per minute per API key (Alpaca's 200 unless raised).

    ``handle.url`` is the base URL for alpaca-py, ``handle.exchange`` the engine (drive it
    directly or through the admin API), ``handle.stop()`` shuts it down cleanly.
    """
    return ExchangeServer(exchange=exchange, host=host, port=port, rate_limit=rate_limit,
                          stream_port=stream_port).start()
