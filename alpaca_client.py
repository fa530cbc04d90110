"""The broker wrapper: the only module that imports alpaca-py.

``AlpacaBroker`` speaks to Alpaca (paper or live) or to any Alpaca-compatible server (the
project's paper exchange) through alpaca-py's ``TradingClient`` and
``StockHistoricalDataClient``, and hands the programs the project's own types
(``trading.broker``). It adds what alpaca-py lacks for a system that must not hang or guess:

- every HTTP call is bounded by a timeout (alpaca-py sets none);
- alpaca-py's own retries (three 3-second sleeps on 429/504) are switched off: a failed call
  raises at once and the program retries on its next cycle;
- JSON numbers are parsed as ``Decimal`` and responses are taken raw, so prices and
  quantities stay exact;
- failures become the project's error families: ``BrokerUnavailableError`` (transient; with
  ``outcome_unknown`` when a state-changing request may have landed), ``BrokerRejectedError`` /
  ``DuplicateClientOrderIdError`` (refused), ``NotFoundError`` (404), ``ConfigurationError``
  (bad keys);
- every call is counted per operation in ``calls`` (benchmarks, rate budget).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import Any

import requests
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import StockBarsRequest, StockLatestQuoteRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import (
    AssetClass,
    AssetStatus,
    OrderClass,
    OrderSide,
    QueryOrderStatus,
    TimeInForce,
)
from alpaca.trading.requests import (
    GetAssetsRequest,
    GetCalendarRequest,
    GetOrderByIdRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
)
from alpaca.trading.stream import TradingStream

from config import VAR_DIR, AlpacaConfig, get_alpaca_config
from trading.broker import (
    Account,
    Asset,
    Bar,
    BrokerOrder,
    BrokerPosition,
    CallCounter,
    Clock,
    OrderRequest,
    Quote,
    TradeUpdate,
    TradingDay,
)
from trading.errors import (
    BrokerRejectedError,
    BrokerUnavailableError,
    ConfigurationError,
    DuplicateClientOrderIdError,
    NotFoundError,
)

logger = logging.getLogger(__name__)

#: Alpaca's cap on one order listing.
MAX_PAGE = 500
#: Latest quotes are asked for in chunks of this many symbols (URL length stays modest).
QUOTE_CHUNK = 1000


class _BoundedSession(requests.Session):
    """A requests session that always sets a timeout and parses JSON numbers as Decimal."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        response = super().request(method, url, *args, **kwargs)
        setattr(response, "json", partial(response.json, parse_float=Decimal))  # noqa: B010
        return response


# --------------------------------------------------------------------------- parsing


def _dec(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, Decimal):
        return value
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise BrokerUnavailableError(f"broker sent a malformed number {value!r}") from None


def _time(value: Any) -> dt.datetime | None:
    """An ISO timestamp (``Z`` or offset, up to nanoseconds) as an aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        stamp = value
    else:
        text = str(value).replace("Z", "+00:00")
        if "." in text:  # Python takes at most 6 fractional digits; Alpaca may send 9
            head, rest = text.split(".", 1)
            digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]  # up to the offset, not into it
            tail = rest[len(digits):]
            text = f"{head}.{digits[:6].ljust(6, '0')}{tail}"
        stamp = dt.datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.astimezone(dt.UTC)


def _required_time(value: Any, name: str) -> dt.datetime:
    stamp = _time(value)
    if stamp is None:
        raise BrokerUnavailableError(f"broker answer lacks {name}")
    return stamp


def _word(value: Any) -> str:
    return str(getattr(value, "value", value) or "").lower()


def parse_order(raw: dict[str, Any]) -> BrokerOrder:
    """A raw Alpaca order (with its legs) as a ``BrokerOrder``; the status word is kept as sent
    (lower-cased) and validated by the monitor through ``trading.lifecycle``."""
    legs = tuple(parse_order(leg) for leg in (raw.get("legs") or []))
    return BrokerOrder(
        id=str(raw["id"]),
        client_order_id=str(raw.get("client_order_id") or ""),
        symbol=str(raw.get("symbol") or ""),
        side=_word(raw.get("side")),
        kind=_word(raw.get("type") or raw.get("order_type")),
        order_class=_word(raw.get("order_class")),
        status=_word(raw.get("status")),
        qty=_dec(raw.get("qty")) or Decimal("0"),
        filled_qty=_dec(raw.get("filled_qty")) or Decimal("0"),
        filled_avg_price=_dec(raw.get("filled_avg_price")),
        limit_price=_dec(raw.get("limit_price")),
        stop_price=_dec(raw.get("stop_price")),
        time_in_force=_word(raw.get("time_in_force")),
        submitted_at=_time(raw.get("submitted_at")),
        created_at=_time(raw.get("created_at")),
        updated_at=_time(raw.get("updated_at")),
        filled_at=_time(raw.get("filled_at")),
        canceled_at=_time(raw.get("canceled_at")),
        expired_at=_time(raw.get("expired_at")),
        failed_at=_time(raw.get("failed_at")),
        replaced_by=str(raw["replaced_by"]) if raw.get("replaced_by") else None,
        replaces=str(raw["replaces"]) if raw.get("replaces") else None,
        legs=legs,
    )


def parse_position(raw: dict[str, Any]) -> BrokerPosition:
    """A raw Alpaca position as a ``BrokerPosition``."""
    qty = _dec(raw.get("qty")) or Decimal("0")
    available = _dec(raw.get("qty_available"))
    return BrokerPosition(
        symbol=str(raw["symbol"]),
        qty=qty,
        qty_available=qty if available is None else available,
        avg_entry_price=_dec(raw.get("avg_entry_price")) or Decimal("0"),
        cost_basis=_dec(raw.get("cost_basis")) or Decimal("0"),
        current_price=_dec(raw.get("current_price")),
        market_value=_dec(raw.get("market_value")),
        unrealized_pl=_dec(raw.get("unrealized_pl")),
        side=_word(raw.get("side")) or "long",
    )


def _error_body(exc: APIError) -> tuple[int | None, str]:
    try:
        body = json.loads(str(exc))
        return body.get("code"), str(body.get("message", ""))
    except (ValueError, TypeError, AttributeError):
        return None, str(exc)[:300]


# --------------------------------------------------------------------------- the broker


class AlpacaBroker:
    """The ``trading.broker.Broker`` implementation on alpaca-py."""

    def __init__(self, *, base_url: str, data_url: str | None = None, api_key: str = "local",
                 secret_key: str = "local", paper: bool = True,  # noqa: S107 (placeholder a local exchange accepts)
                 timeout: float = 10.0, stream_url: str | None = None, local: bool | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.data_url = (data_url or base_url).rstrip("/")
        self.paper = paper
        # The project's own paper exchange (anything not at alpaca.markets): it names its stream
        # at /admin/stream.
        self.local = ("alpaca.markets" not in self.base_url) if local is None else local
        self._stream_url = stream_url
        self._stream_keys = (api_key, secret_key)  # only for the stream's authentication message
        self.timeout = timeout
        self.calls = CallCounter()
        self.last_account: Account | None = None
        self._trading = TradingClient(api_key, secret_key, paper=paper, raw_data=True, url_override=self.base_url)
        self._data = StockHistoricalDataClient(api_key, secret_key, raw_data=True, url_override=self.data_url)
        for client in (self._trading, self._data):
            client._session = _BoundedSession(timeout)  # every call bounded
            client._retry = 0  # no hidden sleeps: the program retries on its next cycle

    def describe(self) -> str:
        """Where the broker is (no keys)."""
        return f"{'paper' if self.paper else 'LIVE'} broker at {self.base_url}"

    # -- the one place that turns alpaca-py and requests failures into the project's errors --

    def _call(self, operation: str, fn: Callable[[], Any], *, mutating: bool = False) -> Any:
        """Run one alpaca-py call (raw JSON in, raw JSON out), counted and with errors translated."""
        self.calls.add(operation)
        try:
            return self._translated(operation, fn, mutating=mutating)
        except BrokerUnavailableError:
            self.calls.add_error(operation)
            raise

    def _translated(self, operation: str, fn: Callable[[], Any], *, mutating: bool) -> Any:
        try:
            return fn()
        except APIError as exc:
            status = exc.status_code
            code, message = _error_body(exc)
            text = f"{operation}: HTTP {status} {message}".strip()
            if status == 404:
                raise NotFoundError(text) from None
            if status in (401,):
                raise ConfigurationError(f"{operation}: the broker refused the API keys (HTTP 401)") from None
            if status == 429:
                raise BrokerUnavailableError(f"{operation}: rate limited (HTTP 429)", status=429) from None
            if status is not None and 400 <= status < 500:
                if "client_order_id must be unique" in message:
                    raise DuplicateClientOrderIdError(text, status=status, broker_code=code) from None
                raise BrokerRejectedError(text, status=status, broker_code=code) from None
            raise BrokerUnavailableError(text, status=status, outcome_unknown=mutating) from None
        except requests.Timeout:
            raise BrokerUnavailableError(f"{operation}: no answer within {self.timeout:g}s",
                                         outcome_unknown=mutating) from None
        except requests.RequestException as exc:
            raise BrokerUnavailableError(f"{operation}: connection failed ({type(exc).__name__})",
                                         outcome_unknown=mutating) from None
        except ValueError as exc:  # a body that is not the JSON we expect
            raise BrokerUnavailableError(f"{operation}: unreadable answer ({exc})", outcome_unknown=mutating) from None

    # -- the trade-updates stream ---------------------------------------------------------

    def stream_url(self) -> str | None:
        """Where the trade-updates websocket is: the configured URL, the one the project's paper
        exchange names, or None (alpaca-py's own for paper or live)."""
        if self._stream_url:
            return self._stream_url
        if not self.local:
            return None
        try:
            answer = requests.get(f"{self.base_url}/admin/stream", timeout=self.timeout)
        except requests.RequestException as exc:
            raise BrokerUnavailableError(f"stream_url: connection failed ({type(exc).__name__})") from None
        if answer.status_code == 404:
            raise ConfigurationError(f"the paper exchange at {self.base_url} serves no trade-updates stream "
                                     "(started with --stream-port -1?)")
        if answer.status_code != 200:
            raise BrokerUnavailableError(f"stream_url: HTTP {answer.status_code}")
        return str(answer.json()["url"])

    # -- market time ----------------------------------------------------------------------

    def get_clock(self) -> Clock:
        """The broker's clock (market time, or the paper exchange's simulated time)."""
        raw = self._call("get_clock", self._trading.get_clock)
        return Clock(timestamp=_required_time(raw.get("timestamp"), "timestamp"),
                     is_open=bool(raw["is_open"]),
                     next_open=_required_time(raw.get("next_open"), "next_open"),
                     next_close=_required_time(raw.get("next_close"), "next_close"))

    def get_calendar(self, start: dt.date, end: dt.date) -> list[TradingDay]:
        """Trading days from ``start`` to ``end`` with their session times (UTC)."""
        from trading.market_time import EASTERN

        raw = self._call("get_calendar", lambda: self._trading.get_calendar(GetCalendarRequest(start=start, end=end)))
        days = []
        for item in raw:
            day = dt.date.fromisoformat(str(item["date"]))
            open_, close = (dt.time.fromisoformat(str(item[key])) for key in ("open", "close"))
            days.append(TradingDay(
                date=day,
                open=EASTERN.localize(dt.datetime.combine(day, open_)).astimezone(dt.UTC),
                close=EASTERN.localize(dt.datetime.combine(day, close)).astimezone(dt.UTC)))
        return days

    # -- account and assets ---------------------------------------------------------------

    def get_account(self) -> Account:
        """Cash, equity and buying power."""
        raw = self._call("get_account", self._trading.get_account)
        account = Account(cash=_dec(raw["cash"]) or Decimal("0"), equity=_dec(raw["equity"]) or Decimal("0"),
                          buying_power=_dec(raw["buying_power"]) or Decimal("0"),
                          status=_word(raw.get("status")).upper(),
                          last_equity=_dec(raw.get("last_equity")),
                          id=str(raw["id"]) if raw.get("id") else None,
                          number=str(raw["account_number"]) if raw.get("account_number") else None)
        self.last_account = account
        return account

    def list_assets(self) -> dict[str, Asset]:
        """Every active US equity the broker knows, by symbol (one call)."""
        request = GetAssetsRequest(status=AssetStatus.ACTIVE, asset_class=AssetClass.US_EQUITY)
        raw = self._call("list_assets", lambda: self._trading.get_all_assets(request))
        return {str(item["symbol"]): Asset(symbol=str(item["symbol"]), tradable=bool(item.get("tradable")),
                                           status=_word(item.get("status")),
                                           fractionable=bool(item.get("fractionable")))
                for item in raw}

    # -- orders ---------------------------------------------------------------------------

    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        """Send an order. An unclear outcome raises ``BrokerUnavailableError(outcome_unknown=True)``:
        look the order up by its client order id before doing anything else."""
        alpaca_request = _to_alpaca_request(request)
        raw = self._call("submit_order", lambda: self._trading.submit_order(alpaca_request), mutating=True)
        return parse_order(raw)

    def replace_order(self, order_id: str, *, stop_price: Decimal | None = None,
                      limit_price: Decimal | None = None) -> BrokerOrder:
        """Change a working (or held) order's prices; the broker answers with the order that
        replaces it (a new id; the old one ends ``replaced``). An unclear outcome raises
        ``BrokerUnavailableError(outcome_unknown=True)``: look the old order up before retrying."""
        request = ReplaceOrderRequest(stop_price=None if stop_price is None else float(stop_price),
                                      limit_price=None if limit_price is None else float(limit_price))
        raw = self._call("replace_order", lambda: self._trading.replace_order_by_id(order_id, request),
                         mutating=True)
        return parse_order(raw)

    def get_order(self, order_id: str) -> BrokerOrder:
        """One order by broker id, with its legs."""
        raw = self._call("get_order", lambda: self._trading.get_order_by_id(
            order_id, GetOrderByIdRequest(nested=True)))
        return parse_order(raw)

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder:
        """One order by its client order id."""
        raw = self._call("get_order_by_client_id", lambda: self._trading.get_order_by_client_id(client_order_id))
        return parse_order(raw)

    def list_orders(self, *, status: str = "all", after: dt.datetime | None = None,
                    until: dt.datetime | None = None, limit: int = MAX_PAGE, direction: str = "asc",
                    nested: bool = True, symbols: list[str] | None = None) -> list[BrokerOrder]:
        """One page of orders (at most 500), filtered as Alpaca's ``GET /v2/orders``."""
        request = GetOrdersRequest(status=QueryOrderStatus(status), after=after, until=until,
                                   limit=min(limit, MAX_PAGE), direction=Sort(direction), nested=nested,
                                   symbols=symbols)
        raw = self._call("list_orders", lambda: self._trading.get_orders(request))
        return [parse_order(item) for item in raw]

    def list_orders_since(self, after: dt.datetime, *, status: str = "all",
                          page_size: int = MAX_PAGE) -> list[BrokerOrder]:
        """Every order submitted after ``after``, oldest first, paging on ``submitted_at``.

        ``after`` is exclusive at the broker, so each next page starts one microsecond before
        the last order seen and duplicates are dropped by id: orders sharing a timestamp at a
        page boundary are not lost.
        """
        seen: dict[str, BrokerOrder] = {}
        cursor = after
        while True:
            page = self.list_orders(status=status, after=cursor, limit=page_size, direction="asc", nested=True)
            new = 0
            for order in page:
                if order.id not in seen:
                    seen[order.id] = order
                    new += 1
            if len(page) < page_size:
                break
            last = page[-1].submitted_at
            if last is None:
                break
            # A full page of nothing new means more than a page shares one timestamp: step past it.
            cursor = last if new == 0 else max(last - dt.timedelta(microseconds=1), cursor)
            if new == 0 and last <= after:
                break
        return list(seen.values())

    def cancel_order(self, order_id: str) -> None:
        """Ask the broker to cancel an order (and its group). 422 if it can no longer be canceled."""
        self._call("cancel_order", lambda: self._trading.cancel_order_by_id(order_id), mutating=True)

    # -- positions and quotes ------------------------------------------------------------

    def list_positions(self) -> list[BrokerPosition]:
        """Every position the broker holds (one call)."""
        raw = self._call("list_positions", self._trading.get_all_positions)
        return [parse_position(item) for item in raw]

    def get_position(self, symbol: str) -> BrokerPosition | None:
        """The broker's position in ``symbol`` right now (one call); None when none is held.

        Every sell is sized from this answer read at that moment, never from the database alone.
        """
        try:
            raw = self._call("get_position", lambda: self._trading.get_open_position(symbol))
        except NotFoundError:
            return None
        return parse_position(raw)

    def get_account_configurations(self) -> dict[str, Any]:
        """``GET /v2/account/configurations`` (``no_shorting``, ``suspend_trade``, ...) as sent.
        Raises ``NotFoundError`` when the broker has no such endpoint."""
        raw = self._call("get_account_configurations",
                         lambda: self._trading.get("/account/configurations"))
        return dict(raw)

    def get_latest_quotes(self, symbols: list[str]) -> dict[str, Quote]:
        """The latest quote of each symbol (one call per 1,000 symbols); symbols without a quote
        are absent from the result."""
        quotes: dict[str, Quote] = {}
        unique = sorted(set(symbols))
        for start in range(0, len(unique), QUOTE_CHUNK):
            chunk = unique[start:start + QUOTE_CHUNK]
            request = StockLatestQuoteRequest(symbol_or_symbols=chunk)
            raw = self._call("get_latest_quotes", partial(self._data.get_stock_latest_quote, request))
            for symbol, item in (raw or {}).items():
                quotes[symbol] = Quote(symbol=symbol, bid=_dec(item.get("bp")) or Decimal("0"),
                                       ask=_dec(item.get("ap")) or Decimal("0"), timestamp=_time(item.get("t")))
        return quotes

    def get_bars(self, symbol: str, start: dt.datetime, end: dt.datetime, *, minutes: int) -> list[Bar]:
        """``symbol``'s bars of ``minutes`` minutes (1440 or more: daily bars) from ``start`` to
        ``end``, oldest first (alpaca-py follows the pages). Bar prices are market data (JSON
        numbers): they become Decimals through their text, never used for account money."""
        if minutes >= 1440:
            frame = TimeFrame(minutes // 1440, TimeFrameUnit.Day)
        elif minutes % 60 == 0:
            frame = TimeFrame(minutes // 60, TimeFrameUnit.Hour)
        else:
            frame = TimeFrame(max(1, minutes), TimeFrameUnit.Minute)
        request = StockBarsRequest(symbol_or_symbols=symbol, timeframe=frame, start=start, end=end)
        raw = self._call("get_bars", partial(self._data.get_stock_bars, request)) or {}
        bars = []
        for item in raw.get(symbol, []) if isinstance(raw, dict) else []:
            bars.append(Bar(symbol=symbol, start=_required_time(item.get("t"), "t"), open=_dec(item.get("o")) or ZERO_D,
                            high=_dec(item.get("h")) or ZERO_D, low=_dec(item.get("l")) or ZERO_D,
                            close=_dec(item.get("c")) or ZERO_D, volume=_dec(item.get("v")) or ZERO_D))
        return bars


ZERO_D = Decimal("0")


class _ListeningStream(TradingStream):
    """alpaca-py's ``TradingStream`` that also says when a connection is authenticated and
    listening (alpaca-py keeps that to itself; the listener records it for the health check)."""

    def __init__(self, *args: Any, on_connect: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_connect = on_connect

    async def _start_ws(self) -> None:
        await super()._start_ws()
        self._on_connect()


class TradeUpdateStream:
    """The broker's trade-updates stream as the project's ``TradeUpdate`` events.

    ``run()`` blocks (call it from a thread of its own) until ``stop()``; alpaca-py reconnects with
    its own backoff (1 s doubling to 30 s) when the connection drops."""

    def __init__(self, broker: AlpacaBroker, on_update: Callable[[TradeUpdate], None],
                 on_connect: Callable[[], None] = lambda: None) -> None:
        self.url = broker.stream_url()
        key, secret = broker._stream_keys
        self._on_update = on_update
        self._stream = _ListeningStream(key, secret, paper=broker.paper, raw_data=True, url_override=self.url,
                                        on_connect=on_connect)
        self._stream.subscribe_trade_updates(self._dispatch)
        self._started = False

    async def _dispatch(self, message: dict[str, Any]) -> None:
        try:
            update = parse_trade_update(message.get("data") or {})
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("trade-updates stream: unreadable event skipped (%s)", exc)
            return
        self._on_update(update)

    def run(self) -> None:
        """Connect, authenticate, listen and deliver events until ``stop()``."""
        self._started = True
        self._stream.run()

    def stop(self) -> None:
        """End ``run()`` (from another thread)."""
        if self._started and self._stream._loop is not None:
            self._stream.stop()


def parse_trade_update(data: dict[str, Any]) -> TradeUpdate:
    """One ``trade_updates`` event's ``data`` as the project's type."""
    at = _time(data.get("timestamp")) or dt.datetime.now(dt.UTC)
    return TradeUpdate(event=_word(data["event"]), order=parse_order(data["order"]), at=at,
                       price=_dec(data.get("price")), qty=_dec(data.get("qty")),
                       position_qty=_dec(data.get("position_qty")))


def _to_alpaca_request(request: OrderRequest) -> MarketOrderRequest | LimitOrderRequest | StopOrderRequest:
    """The alpaca-py request object for an ``OrderRequest``."""
    common: dict[str, Any] = {
        "symbol": request.symbol,
        "qty": float(request.qty),
        "side": OrderSide(request.side),
        "time_in_force": TimeInForce(request.time_in_force),
        "client_order_id": request.client_order_id,
    }
    if request.order_class != "simple":
        common["order_class"] = OrderClass(request.order_class)
    if request.take_profit_price is not None:
        common["take_profit"] = TakeProfitRequest(limit_price=float(request.take_profit_price))
    if request.stop_loss_price is not None:
        common["stop_loss"] = StopLossRequest(stop_price=float(request.stop_loss_price))
    if request.kind == "market":
        return MarketOrderRequest(**common)
    if request.kind == "limit":
        # An OCO has no top-level limit: its take-profit leg carries it.
        if request.limit_price is not None:
            common["limit_price"] = float(request.limit_price)
        return LimitOrderRequest(**common)
    if request.kind == "stop":
        return StopOrderRequest(stop_price=float(request.stop_price or 0), **common)
    raise ValueError(f"unsupported order kind {request.kind!r}")


def connect_broker(config: AlpacaConfig | None = None, *, test_mode: bool = False) -> AlpacaBroker:
    """The broker the configuration names; the embedded paper exchange is started on demand
    (or reused) with its state kept in ``var/paper_exchange`` (port ``PAPER_EXCHANGE_PORT``), or
    for ``--test-mode`` a separate one in ``var/paper_exchange_test`` on the next port, so test
    runs never see the normal runs' orders and positions."""
    config = config or get_alpaca_config(test_mode=test_mode)
    if config.mode == "embedded":
        from paper_exchange.service import ensure_running

        name, port = ("paper_exchange_test", config.embedded_port + 1) if test_mode else \
            ("paper_exchange", config.embedded_port)
        url = ensure_running(Path(VAR_DIR) / name, port=port)
        return AlpacaBroker(base_url=url, data_url=url, timeout=config.timeout_seconds, stream_url=config.stream_url,
                            local=True)
    assert config.base_url is not None
    return AlpacaBroker(base_url=config.base_url, data_url=config.data_url, api_key=config.api_key.reveal(),
                        secret_key=config.secret_key.reveal(), paper=config.paper, timeout=config.timeout_seconds,
                        stream_url=config.stream_url, local=config.mode == "local")
