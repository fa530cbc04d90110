"""The exchange engine: account, orders, positions, matching and the passage of time.

``PaperExchange`` holds all state behind one lock and exposes two faces:

* the Trading/Market-data API (``submit_order``, ``list_orders``, ``get_account``, ...)
  taking request-shaped input and returning Alpaca-shaped JSON dicts, or raising
  :class:`~paper_exchange.errors.ExchangeError` with Alpaca's status and body; the HTTP
  server is a thin router over these methods;
* the control API (``set_quote``, ``advance``, ``set_time``, ``add_symbols``,
  ``set_cash``, ``reset``, ``state``) that the admin endpoints and the demo use.

Time: with ``simulated_clock=True`` the clock only moves through :meth:`advance` /
:meth:`set_time`; otherwise it follows the wall clock and catches up lazily on every call.
Passing time steps the price simulation minute by minute, matches resting orders after
each step, opens and closes sessions, and expires day orders at the close.

Order life (the default, as at Alpaca): a new order is answered ``pending_new`` (``accepted``
while the market is closed) and becomes ``new`` at the exchange's next matching pass once the
acknowledgement latency has passed (on the simulated clock: at the next clock step or quote
change); only then can it fill. A cancel is answered at once but the order passes through
``pending_cancel`` (it can still fill meanwhile: the fill wins) and is ``canceled`` at the end
of the next pass; the legs of a group follow their parent one pass later. A replace passes
through ``pending_replace`` (the old order stops working) and completes at the next pass.
``instant=True`` keeps the older behaviour (matching on submission, immediate cancels).

The account is a margin account by default (Reg T, multiplier 2, shorting enabled); see
:meth:`PaperExchange.get_account` for the buying-power rules. ``account_type="cash"`` gives a
long-only cash account.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from .account import ACCOUNT_TYPES
from .bars import TimeFrame, aggregate, iter_symbols
from .book import ONE_MICROSECOND
from .calendar import NyseCalendar
from .cancel_replace import CancelReplace
from .configurations import AccountConfigurations, AccountConfigurationsApi
from .errors import (
    CODE_CONFLICT,
    ExchangeError,
    bad_request,
    forbidden,
    not_found,
    unprocessable,
)
from .history import EquityHistory, PortfolioHistoryApi
from .market import Market, check_symbol, parse_quote_side
from .money import ZERO, fmt, fmt_money, to_decimal
from .orders import (
    ACCEPTED,
    CANCELED,
    EXPIRED,
    FILLED,
    NEW,
    PENDING_CANCEL,
    PENDING_NEW,
    PENDING_REPLACE,
    Order,
    OrderSpec,
)
from .positions import Position
from .snapshots import MarketSnapshotsApi
from .timeutil import (
    UTC,
    eastern_datetime,
    floor_minute,
    iso_eastern,
    iso_utc,
    parse_timestamp,
    to_eastern,
    utc_now,
)
from .universe import tape_for

log = logging.getLogger(__name__)

STATE_VERSION = 1
DEFAULT_STARTING_CASH = Decimal("100000")
# Stepping the random walk minute by minute over a very long clock jump would take
# minutes of CPU; only the last 31 days of a jump are simulated step by step.
MAX_STEPPED_SPAN = timedelta(days=31)
# How often a partially filled order's remainder is re-evaluated without a new quote.
REEVALUATE_EVERY = timedelta(seconds=1)
CALENDAR_FIRST = date(1970, 1, 1)
CALENDAR_LAST = date(2029, 12, 31)
#: Wall-clock time before a new order is acknowledged (``pending_new`` -> ``new``) and before
#: a requested cancel or replace completes.
DEFAULT_ACK_LATENCY_SECONDS = 0.05


class PaperExchange(CancelReplace, AccountConfigurationsApi, MarketSnapshotsApi, PortfolioHistoryApi):
    """An Alpaca-compatible paper exchange engine (no HTTP; see :mod:`paper_exchange.server`).

    Args:
        seed: seeds the price simulation (one RNG per symbol) and the partial-fill RNG.
        simulated_clock: when True, time moves only through :meth:`advance`/:meth:`set_time`.
        start_time: the simulated clock's starting moment (aware datetime or ISO string);
            defaults to the current wall time. Ignored with the wall clock.
        starting_cash: cash after construction and after :meth:`reset` ($100,000).
        symbols: extra symbols for the universe, as a list or ``{"SYM": price}``.
        include_default_universe: include the ~40 built-in liquid tickers.
        price_simulation: run the seeded random walk; when False only manual quotes exist.
        partial_fill_probability: chance that an eligible fill is partial (0 = never).
        always_open: ignore NYSE hours (the market never closes and day orders never
            expire). Defaults to True with the wall clock, False with the simulated clock.
        annual_volatility: volatility of the random walk.
        history_days: trading days of synthesized minute-bar history before the start.
        instant: the old, kinder order life: match on submission, cancel and replace at
            once (no ``pending_new``/``pending_cancel``/``pending_replace``). Default False.
        ack_latency: wall-clock seconds before an order is acknowledged and a cancel or
            replace completes (default 0.05; the simulated clock uses its next pass).
        account_type: ``"margin"`` (default: multiplier 2, short selling) or ``"cash"``
            (multiplier 1, long only: a sell beyond the shares held is refused).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        simulated_clock: bool = False,
        start_time: datetime | str | None = None,
        starting_cash: Decimal | int | str = DEFAULT_STARTING_CASH,
        symbols: Mapping[str, Any] | Iterable[str] | None = None,
        include_default_universe: bool = True,
        price_simulation: bool = True,
        partial_fill_probability: float = 0.0,
        always_open: bool | None = None,
        annual_volatility: float = 0.30,
        history_days: int = 30,
        instant: bool = False,
        ack_latency: float = DEFAULT_ACK_LATENCY_SECONDS,
        account_type: str = "margin",
    ) -> None:
        self._lock = threading.RLock()
        self.seed = seed
        if account_type not in ACCOUNT_TYPES:
            raise ValueError(f"account_type must be one of {ACCOUNT_TYPES}, not {account_type!r}")
        if ack_latency < 0:
            raise ValueError("ack_latency must be >= 0")
        self.instant = instant
        self.ack_latency = timedelta(seconds=ack_latency)
        self.account_type = account_type
        self.simulated_clock = simulated_clock
        self.always_open = (not simulated_clock) if always_open is None else always_open
        self.starting_cash = to_decimal(starting_cash, "starting_cash")
        self.partial_fill_probability = _probability(partial_fill_probability)
        self._initial_partial_fill_probability = self.partial_fill_probability
        self.calendar = NyseCalendar()
        if isinstance(start_time, str):
            start_time = parse_timestamp(start_time, "start_time")
        if start_time is not None and start_time.tzinfo is None:
            start_time = start_time.replace(tzinfo=UTC)
        now = start_time.astimezone(UTC) if (simulated_clock and start_time) else utc_now()
        self._now: datetime = now
        self.account_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"paper-exchange-account:{seed}"))
        self.account_number = "PA" + str(uuid.UUID(self.account_id).int)[:10]
        self.account_created_at = now
        self.market = Market(
            self.calendar,
            now,
            seed=seed,
            simulate=price_simulation,
            include_default_universe=include_default_universe,
            symbols=symbols,
            annual_volatility=annual_volatility,
            history_days=history_days,
        )
        self._calendar_cache: list[dict[str, str]] | None = None
        self._init_book()
        self.revision = 0

    # ================================================================== state basics
    def now(self) -> datetime:
        """The exchange's current time (UTC)."""
        with self._lock:
            self._sync()
            return self._now

    def is_open(self) -> bool:
        """True when orders can fill now."""
        with self._lock:
            self._sync()
            return self._market_open()

    # ================================================================== time
    def _sync(self) -> None:
        """Catch up with the wall clock (no-op with the simulated clock)."""
        if not self.simulated_clock:
            target = utc_now()
            if target > self._now:
                self._advance_to(target)
            if self._pending:
                due = sorted({o.symbol for o in self._pending.values() if self._is_due(o)})
                for symbol in due:
                    self._pass(symbol)

    def advance(self, seconds: float) -> dict[str, Any]:
        """Move the simulated clock forward by ``seconds``; return the clock."""
        if seconds < 0:
            raise bad_request("advance_seconds must be >= 0")
        with self._lock:
            self._require_simulated()
            self._advance_to(self._now + timedelta(seconds=seconds), reevaluate=True)
            self._touch()
            return self._clock_json()

    def set_time(self, moment: datetime | str) -> dict[str, Any]:
        """Move the simulated clock to ``moment``; return the clock.

        Forward moves pass time (walk steps, opens, closes, expiries). Backward moves are
        allowed only while there are no orders (for example right after :meth:`reset`),
        because order timestamps must never go back; they just set the time.
        """
        if isinstance(moment, str):
            moment = parse_timestamp(moment, "now")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        with self._lock:
            self._require_simulated()
            moment = moment.astimezone(UTC)
            if moment < self._now:
                if self._orders:
                    raise bad_request(
                        f"cannot move the simulated clock backwards while orders exist "
                        f"(now {iso_utc(self._now)}); POST /admin/reset first"
                    )
                self._now = moment
                self._last_stamp = None
                self._last_reevaluation = moment
                self._touch()
                return self._clock_json()
            self._advance_to(moment, reevaluate=True)
            self._touch()
            return self._clock_json()

    def _require_simulated(self) -> None:
        if not self.simulated_clock:
            raise ExchangeError(
                409,
                CODE_CONFLICT,
                "the exchange runs on the wall clock; start it with simulated_clock=True "
                "(--simulated-clock) to control time",
            )

    def _advance_to(self, target: datetime, reevaluate: bool = False) -> None:
        cursor = self._now
        if target > cursor:
            self.equity_history.record(cursor, self._equity())  # what happened while time stood still
            step_from = max(cursor, target - MAX_STEPPED_SPAN)
            for moment, kind in self.calendar.boundaries(cursor, target):
                self._run_minutes(cursor, moment, step_from)
                self._now = moment
                if kind == "open":
                    self._on_open(moment)
                else:
                    self._on_close(moment)
                cursor = moment
            self._run_minutes(cursor, target, step_from)
            self._now = target
            self.equity_history.record(target, self._equity())
            self._touch()
        if reevaluate or self._now - self._last_reevaluation >= REEVALUATE_EVERY:
            self._last_reevaluation = self._now
            self._match_all()

    def _run_minutes(self, start: datetime, end: datetime, step_from: datetime) -> None:
        """Step the random walk at each whole minute in (start, end] while trading."""
        if not self.market.simulate or end <= start:
            return
        if not self.always_open and not self.calendar.is_open(start):
            return  # the segment between two boundaries is entirely outside a session
        minute = floor_minute(max(start, step_from)) + timedelta(minutes=1)
        while minute <= end:
            if self._positions:  # the equity after the previous minute's step and matching
                self.equity_history.record(self._now, self._equity())
            self._now = minute
            for symbol in self.market.step(minute):
                if self._open_by_symbol.get(symbol):
                    self._pass(symbol)
            minute += timedelta(minutes=1)

    def _on_open(self, moment: datetime) -> None:
        if self.always_open:
            return
        for order in self._open_orders():
            if order.status == ACCEPTED:
                order.status = NEW
                order.updated_at = moment
        self._match_all()

    def _on_close(self, moment: datetime) -> None:
        """Session close: day orders end (``expired``), GTC orders past 90 days are
        canceled, and today's prices and equity become ``lastday_price``/``last_equity``."""
        if not self.always_open:
            closing_day = self.calendar.current_or_next_session(moment - ONE_MICROSECOND).day
            for order in self._open_orders():
                if (
                    order.time_in_force == "day"
                    and order.session_day is not None
                    and date.fromisoformat(order.session_day) <= closing_day
                ):
                    self._finish(order, EXPIRED, moment)
        for order in self._open_orders():
            if order.time_in_force == "gtc" and order.expires_at and order.expires_at <= moment:
                self._finish(order, CANCELED, moment)
        # Legs whose entry ended without a complete fill can never activate.
        for order in self._open_orders():
            if order.parent_id and not order.activated:
                parent = self._orders.get(order.parent_id)
                if parent is not None and parent.is_final and parent.status != FILLED:
                    self._finish(order, CANCELED, moment)
        self.equity_history.record_close(
            self.calendar.current_or_next_session(moment - ONE_MICROSECOND).day, self._equity())
        self.market.mark_close()
        self.last_equity = self._equity()
        self.last_maintenance_margin = self._maintenance_margin()

    # ================================================================== positions
    def _position_json(self, position: Position) -> dict[str, Any]:
        state = self.market.state(position.symbol)
        exchange = state.asset.exchange if state else "NASDAQ"
        lastday = state.lastday_price if state else position.avg_entry_price
        previous_close = self.calendar.previous_session(self._now)
        opened_today = previous_close is None or position.opened_at >= previous_close.close
        return position.to_json(
            exchange=exchange,
            current_price=self.market.current_price(position.symbol),
            lastday_price=lastday,
            qty_available=self._qty_available(position.symbol),
            opened_today=opened_today,
        )

    def _find_position(self, symbol_or_id: str) -> Position:
        asset = self.market.find_asset(symbol_or_id)
        symbol = asset.symbol if asset else symbol_or_id.upper()
        position = self._positions.get(symbol)
        if position is None:
            raise not_found("position does not exist")
        return position

    def list_positions(self) -> list[dict[str, Any]]:
        """``GET /v2/positions`` sorted by symbol."""
        with self._lock:
            self._sync()
            return [self._position_json(self._positions[s]) for s in sorted(self._positions)]

    def get_position(self, symbol_or_id: str) -> dict[str, Any]:
        """``GET /v2/positions/{symbol_or_asset_id}``."""
        with self._lock:
            self._sync()
            return self._position_json(self._find_position(symbol_or_id))

    def close_position(
        self, symbol_or_id: str, qty: Any = None, percentage: Any = None
    ) -> dict[str, Any]:
        """``DELETE /v2/positions/{symbol}``: a market order that closes all, ``qty`` or
        ``percentage`` of the position (a sell for a long, a buy to cover for a short)."""
        with self._lock:
            self._sync()
            order = self._close(self._find_position(symbol_or_id), qty, percentage)
            self._touch()
            return order.to_json()

    def _close(self, position: Position, qty: Any, percentage: Any) -> Order:
        if qty is not None and percentage is not None:
            raise unprocessable("only one of qty or percentage may be given")
        held = abs(position.qty)
        amount = held
        if qty is not None:
            amount = to_decimal(qty, "qty")
            if amount <= 0:
                raise unprocessable("qty must be > 0")
            if amount > held:
                raise forbidden(
                    f"insufficient qty available for order (requested: {fmt(amount)}, "
                    f"available: {fmt(held)})"
                )
        elif percentage is not None:
            pct = to_decimal(percentage, "percentage")
            if not ZERO < pct <= 100:
                raise unprocessable("percentage must be > 0 and <= 100")
            amount = held * pct / 100
            if held == held.to_integral_value():
                # Fractions are only sold when the position itself is fractional.
                amount = amount.to_integral_value(rounding=ROUND_FLOOR)
            if amount <= 0:
                raise unprocessable("percentage is too small to sell a whole share")
        spec = OrderSpec(
            symbol=position.symbol,
            qty=amount,
            side="buy" if position.qty < 0 else "sell",
            type="market",
            time_in_force="day",
            order_class="simple",
            client_order_id=None,
        )
        order, _ = self._submit(spec)
        return order

    def close_all_positions(self, cancel_orders: bool = False) -> list[dict[str, Any]]:
        """``DELETE /v2/positions``: 207 items ``{symbol, status, body}``.

        With ``cancel_orders`` the open orders are canceled at once (no ``pending_cancel``),
        so the closing orders never meet shares still held by them."""
        with self._lock:
            self._sync()
            if cancel_orders:
                for order in list(self._order_list):
                    self._finish(order, CANCELED, self._event_time())
            result = []
            for symbol in sorted(self._positions):
                position = self._positions.get(symbol)
                if position is None:
                    continue
                try:
                    order = self._close(position, None, None)
                    result.append({"symbol": symbol, "status": 200, "body": order.to_json()})
                except ExchangeError as error:
                    result.append({"symbol": symbol, "status": error.status, "body": error.body()})
            self._touch()
            return result

    # ================================================================== account, clock, calendar
    def _clock_json(self) -> dict[str, Any]:
        now = self._now
        return {
            "timestamp": iso_eastern(now),
            "is_open": self._market_open(),
            "next_open": iso_eastern(self.calendar.next_open(now)),
            "next_close": iso_eastern(self.calendar.next_close(now)),
        }

    def get_clock(self) -> dict[str, Any]:
        """``GET /v2/clock`` (times in ET offsets; agrees with the simulated session)."""
        with self._lock:
            self._sync()
            return self._clock_json()

    def get_calendar(self, start: date | None = None, end: date | None = None) -> list[dict[str, str]]:
        """``GET /v2/calendar``: trading days in [start, end] (default 1970..2029, like Alpaca)."""
        if start is None and end is None:
            if self._calendar_cache is None:
                self._calendar_cache = self._calendar_days(CALENDAR_FIRST, CALENDAR_LAST)
            return list(self._calendar_cache)
        return self._calendar_days(start or CALENDAR_FIRST, end or CALENDAR_LAST)

    def _calendar_days(self, start: date, end: date) -> list[dict[str, str]]:
        if end < start:
            return []
        return [
            {
                "date": s.day.isoformat(),
                "open": "09:30",
                "close": "13:00" if s.early_close else "16:00",
                "session_open": "0400",
                "session_close": "1700" if s.early_close else "2000",
                "settlement_date": self.calendar.settlement_date(s.day).isoformat(),
            }
            for s in self.calendar.sessions(start, end)
        ]

    # ================================================================== assets & market data
    def list_assets(self, status: str | None = None, asset_class: str | None = None) -> list[dict[str, Any]]:
        """``GET /v2/assets`` (only ``us_equity`` exists here)."""
        with self._lock:
            if asset_class and asset_class != "us_equity":
                return []
            return [a.to_json() for a in self.market.assets() if status in (None, "", a.status)]

    def get_asset(self, symbol_or_id: str) -> dict[str, Any]:
        """``GET /v2/assets/{symbol_or_asset_id}``."""
        with self._lock:
            asset = self.market.find_asset(symbol_or_id)
            if asset is None:
                raise not_found("asset not found")
            return asset.to_json()

    def latest_quotes(self, symbols: str | Iterable[str]) -> dict[str, Any]:
        """``GET /v2/stocks/quotes/latest``: ``{"quotes": {SYM: {...}}}`` for known symbols."""
        wanted = _symbol_list(symbols)
        with self._lock:
            self._sync()
            quotes = {}
            for symbol in wanted:
                state = self.market.state(symbol)
                if state is None or state.quote is None:
                    continue
                q = state.quote
                quotes[symbol] = {
                    "t": iso_utc(q.time),
                    "ax": "V",
                    "ap": float(q.ask),
                    "as": q.ask_size,
                    "bx": "V",
                    "bp": float(q.bid),
                    "bs": q.bid_size,
                    "c": ["R"],
                    "z": tape_for(state.asset.exchange),
                }
            return {"quotes": quotes}

    def latest_trades(self, symbols: str | Iterable[str]) -> dict[str, Any]:
        """``GET /v2/stocks/trades/latest``: the last print (simulated or one of our fills)."""
        wanted = _symbol_list(symbols)
        with self._lock:
            self._sync()
            trades = {}
            for symbol in wanted:
                state = self.market.state(symbol)
                if state is None or state.last_trade is None:
                    continue
                t = state.last_trade
                trades[symbol] = {
                    "t": iso_utc(t.time),
                    "x": "V",
                    "p": float(t.price),
                    "s": t.size,
                    "c": ["@"],
                    "i": t.id,
                    "z": tape_for(state.asset.exchange),
                }
            return {"trades": trades}

    def bars(
        self,
        symbols: str | Iterable[str],
        timeframe: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
        page_token: str | None = None,
        sort: str = "asc",
    ) -> dict[str, Any]:
        """``GET /v2/stocks/bars``: aggregated bars with page tokens (limit across symbols)."""
        frame = TimeFrame.parse(timeframe)
        wanted = sorted(_symbol_list(symbols))
        limit = 1000 if limit is None else limit
        if not 1 <= limit <= 10000:
            raise bad_request("invalid limit: must be between 1 and 10000")
        if sort not in ("asc", "desc"):
            raise bad_request(f"invalid sort: {sort!r}")
        offset = _decode_page_token(page_token)
        with self._lock:
            self._sync()
            now = self._now
            if start is None:
                # Alpaca's default: the beginning of the current (New York) day.
                start = eastern_datetime(to_eastern(now).date(), 0, 0)
            end = min(end or now, now)
            rows: list[tuple[str, dict[str, Any]]] = []
            for symbol in wanted:
                series = self.market.bar_series(symbol, now)
                if series is None:
                    continue
                symbol_bars = aggregate(series, frame, start, end)
                if sort == "desc":
                    symbol_bars.reverse()
                rows.extend((symbol, bar) for bar in symbol_bars)
        page = rows[offset : offset + limit]
        result: dict[str, list[dict[str, Any]]] = {}
        for symbol, bar in page:
            result.setdefault(symbol, []).append(bar)
        more = offset + limit < len(rows)
        return {"bars": result, "next_page_token": _encode_page_token(offset + limit) if more else None}

    # ================================================================== control API
    def set_quote(
        self,
        symbol: str,
        bid: Any,
        ask: Any,
        bid_size: int = 100,
        ask_size: int = 100,
    ) -> dict[str, Any]:
        """Set one symbol's quote (it becomes manual) and match its resting orders."""
        return self.set_quotes({symbol: {"bid": bid, "ask": ask, "bid_size": bid_size, "ask_size": ask_size}})

    def set_quotes(self, quotes: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /admin/quotes``: ``{"AAPL": {"bid": 150.2, "ask": 150.3}, ...}``.

        Each symbol becomes manual (the simulator stops moving it until reset); unknown
        symbols join the universe. Resting orders are matched at once.
        """
        if not isinstance(quotes, Mapping) or not quotes:
            raise bad_request('expected {"SYMBOL": {"bid": ..., "ask": ...}, ...}')
        parsed = []
        for raw_symbol, spec in quotes.items():
            symbol = check_symbol(raw_symbol)
            if not isinstance(spec, Mapping) or "bid" not in spec or "ask" not in spec:
                raise bad_request(f"{symbol}: expected an object with bid and ask")
            bid = parse_quote_side(spec["bid"], f"{symbol}.bid")
            ask = parse_quote_side(spec["ask"], f"{symbol}.ask")
            if bid > 0 and ask > 0 and bid > ask:
                raise bad_request(f"{symbol}: bid {fmt(bid)} is above ask {fmt(ask)}")
            sizes = [int(spec.get(k, 100) or 0) for k in ("bid_size", "ask_size")]
            parsed.append((symbol, bid, ask, sizes))
        with self._lock:
            self._sync()
            result = {}
            for symbol, bid, ask, sizes in parsed:
                quote = self.market.set_quote(symbol, bid, ask, self._now, bid_size=sizes[0], ask_size=sizes[1])
                result[symbol] = {"bid": fmt(quote.bid), "ask": fmt(quote.ask), "manual": True}
            for symbol, *_ in parsed:
                self._pass(symbol)
            self._touch()
            return {"quotes": result}

    def add_symbols(self, specs: Mapping[str, Any]) -> list[dict[str, Any]]:
        """``POST /admin/symbols``: ``{"ZZZZ": {"price": 12.5, "tradable": false}}``."""
        if not isinstance(specs, Mapping) or not specs:
            raise bad_request('expected {"SYMBOL": {"price": ...}, ...}')
        with self._lock:
            self._sync()
            assets = self.market.add_symbols(specs, self._now)
            self._touch()
            return [a.to_json() for a in assets]

    def set_cash(self, cash: Any) -> dict[str, Any]:
        """``POST /admin/account``: set the cash balance."""
        amount = to_decimal(cash, "cash")
        with self._lock:
            self.cash = amount
            self._touch()
            return {"cash": fmt_money(self.cash)}

    def configure(self, partial_fill_probability: float | None = None) -> dict[str, Any]:
        """``POST /admin/config``: runtime settings (the partial-fill probability)."""
        with self._lock:
            if partial_fill_probability is not None:
                self.partial_fill_probability = _probability(partial_fill_probability)
            self._touch()
            return {"partial_fill_probability": self.partial_fill_probability}

    def reset(self, starting_cash: Any = None) -> None:
        """``POST /admin/reset``: no orders, no positions, starting cash, market back to
        its starting prices and seeds (manual quotes forgotten), partial fills back to the
        constructor's setting. The clock keeps its time."""
        with self._lock:
            self._sync()
            if starting_cash is not None:
                self.starting_cash = to_decimal(starting_cash, "cash")
            self.partial_fill_probability = self._initial_partial_fill_probability
            self.market.reset(self._now)
            self._init_book()
            self._touch()

    def state(self) -> dict[str, Any]:
        """``GET /admin/state``: orders (all, flat), positions, cash and clock, for tests."""
        with self._lock:
            self._sync()
            return {
                "now": iso_utc(self._now),
                "clock": self._clock_json(),
                "simulated_clock": self.simulated_clock,
                "always_open": self.always_open,
                "instant": self.instant,
                "account_type": self.account_type,
                "cash": fmt_money(self.cash),
                "equity": fmt_money(self._equity()),
                "buying_power": fmt_money(self._buying_power()),
                "partial_fill_probability": self.partial_fill_probability,
                "positions": [self._position_json(self._positions[s]) for s in sorted(self._positions)],
                "orders": [o.to_json() for o in self._order_list],
                "quotes": {
                    s: {"bid": fmt(q.bid), "ask": fmt(q.ask), "manual": st.manual}
                    for s in self.market.symbols()
                    if (st := self.market.state(s)) is not None and (q := st.quote) is not None
                },
            }

    # ================================================================== persistence
    def to_state(self) -> dict[str, Any]:
        """Everything needed to resume: orders, positions, cash, clock, quotes, RNGs."""
        with self._lock:
            version, internal, gauss_next = self._fill_rng.getstate()
            return {
                "version": STATE_VERSION,
                "seed": self.seed,
                "simulated_clock": self.simulated_clock,
                "now": iso_utc(self._now),
                "last_stamp": iso_utc(self._last_stamp) if self._last_stamp else None,
                "seq": self._seq,
                "starting_cash": str(self.starting_cash),
                "cash": str(self.cash),
                "last_equity": str(self.last_equity),
                "last_maintenance_margin": str(self.last_maintenance_margin),
                "account_id": self.account_id,
                "account_number": self.account_number,
                "account_created_at": iso_utc(self.account_created_at),
                "partial_fill_probability": self.partial_fill_probability,
                "configurations": self.configurations.to_json(),
                "equity_history": self.equity_history.to_state(),
                "orders": [o.to_state() for o in self._order_list],
                "positions": [p.to_state() for p in self._positions.values()],
                "fill_rng": [version, list(internal), gauss_next],
                "market": self.market.to_state(),
            }

    def load_state(self, data: Mapping[str, Any]) -> None:
        """Restore :meth:`to_state` output. With the wall clock, time then catches up."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {data.get('version')!r}")
        with self._lock:
            saved_now = parse_timestamp(data["now"])
            self._now = saved_now if self.simulated_clock else min(saved_now, utc_now())
            self.seed = int(data.get("seed", self.seed))
            self.starting_cash = Decimal(data["starting_cash"])
            self._init_book()
            self.cash = Decimal(data["cash"])
            self.last_equity = Decimal(data["last_equity"])
            self.last_maintenance_margin = Decimal(data.get("last_maintenance_margin", "0"))
            self.account_created_at = parse_timestamp(data["account_created_at"])
            self.account_id = str(data.get("account_id", self.account_id))
            self.account_number = str(data.get("account_number", self.account_number))
            self.partial_fill_probability = float(data.get("partial_fill_probability", 0.0))
            self.configurations = AccountConfigurations.from_state(data.get("configurations"))
            self.equity_history = EquityHistory.from_state(data.get("equity_history"), self._now, self.cash)
            self._seq = int(data["seq"])
            self._last_stamp = parse_timestamp(data["last_stamp"]) if data.get("last_stamp") else None
            version, internal, gauss_next = data["fill_rng"]
            self._fill_rng.setstate((version, tuple(internal), gauss_next))
            self.market.load_state(data["market"])
            for raw in data["orders"]:
                order = Order.from_state(raw)
                self._orders[order.id] = order
                self._order_list.append(order)
                self._stamps.append(order.submitted_at)
                self._by_client_id[order.client_order_id] = order.id
                if not order.is_final:
                    self._open_by_symbol.setdefault(order.symbol, {})[order.id] = order
                if order.status in (PENDING_CANCEL, PENDING_REPLACE) or (
                    order.status == PENDING_NEW and order.becomes is None
                ):
                    self._pending[order.id] = order
            for raw in data["positions"]:
                position = Position.from_state(raw)
                self._positions[position.symbol] = position
            self._last_reevaluation = self._now
            self._touch()


# ====================================================================== helpers


def _symbol_list(symbols: str | Iterable[str]) -> list[str]:
    if isinstance(symbols, str):
        result = list(iter_symbols(symbols))
    else:
        result = [s.strip().upper() for s in symbols if s and s.strip()]
    if not result:
        raise bad_request("symbols is required")
    return result


def _probability(value: float) -> float:
    try:
        probability = float(value)
    except (TypeError, ValueError):
        raise bad_request(f"invalid probability: {value!r}") from None
    if not 0.0 <= probability <= 1.0:
        raise bad_request("partial_fill_probability must be between 0 and 1")
    return probability


def _encode_page_token(offset: int) -> str:
    import base64

    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_page_token(token: str | None) -> int:
    if not token:
        return 0
    import base64

    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        prefix, _, number = text.partition(":")
        if prefix != "offset":
            raise ValueError(text)
        return max(0, int(number))
    except Exception:
        raise bad_request("invalid page_token") from None
