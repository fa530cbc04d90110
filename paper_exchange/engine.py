"""The exchange engine: :class:`PaperExchange`, assembled from its parts, with the control API.

``PaperExchange`` holds all state behind one lock and exposes two faces:

* the Trading/Market-data API (``submit_order``, ``list_orders``, ``get_account``, ...)
  taking request-shaped input and returning Alpaca-shaped JSON dicts, or raising
  :class:`~paper_exchange.errors.ExchangeError` with Alpaca's status and body; the HTTP
  server is a thin router over these methods;
* the control API (``set_quote``, ``advance``, ``set_time``, ``add_symbols``,
  ``set_cash``, ``reset``, ``state``) that the admin endpoints and the demo use.

It is made of one base class per concept, each in its module, all sharing the state that
:class:`~paper_exchange.book.OrderBook` declares:

* :mod:`~paper_exchange.book`: the state, the order index and groups, ``GET /v2/orders``;
* :mod:`~paper_exchange.account`: cash, margin, buying power, ``GET /v2/account``;
* :mod:`~paper_exchange.matching`: orders against the quote, fills and what a fill sets off;
* :mod:`~paper_exchange.order_life`: ``pending_new``/``pending_cancel``/``pending_replace`` and
  the matching pass (where an acknowledgement, a cancel or a replace completes);
* :mod:`~paper_exchange.intake`: ``POST /v2/orders`` and the checks of a new order;
* :mod:`~paper_exchange.cancel_replace`: cancel and replace requests;
* :mod:`~paper_exchange.positions_api`: the positions endpoints and closing positions;
* :mod:`~paper_exchange.clock`: the passage of time, sessions, ``/v2/clock``, ``/v2/calendar``;
* :mod:`~paper_exchange.market_data`: assets, latest quotes and trades, bars;
* :mod:`~paper_exchange.configurations`, :mod:`~paper_exchange.snapshots`,
  :mod:`~paper_exchange.history`: account configurations, snapshots and latest bars,
  portfolio history.

This module keeps the constructor, the control API and the state file's ``to_state`` /
``load_state``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from .account import ACCOUNT_TYPES
from .calendar import NyseCalendar
from .cancel_replace import CancelReplace
from .clock import SessionClock
from .configurations import AccountConfigurations, AccountConfigurationsApi
from .errors import bad_request
from .history import EquityHistory, PortfolioHistoryApi
from .market import Market, check_symbol, parse_quote_side
from .market_data import MarketDataApi
from .money import fmt, fmt_money, to_decimal
from .orders import PENDING_CANCEL, PENDING_NEW, PENDING_REPLACE, Order
from .positions import Position
from .positions_api import PositionsApi
from .snapshots import MarketSnapshotsApi
from .timeutil import UTC, iso_utc, parse_timestamp, utc_now

STATE_VERSION = 1
DEFAULT_STARTING_CASH = Decimal("100000")
#: Wall-clock time before a new order is acknowledged (``pending_new`` -> ``new``) and before
#: a requested cancel or replace completes.
DEFAULT_ACK_LATENCY_SECONDS = 0.05


class PaperExchange(
    SessionClock,
    CancelReplace,
    PositionsApi,
    MarketDataApi,
    AccountConfigurationsApi,
    MarketSnapshotsApi,
    PortfolioHistoryApi,
):
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
        self._now = now
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
        self._calendar_cache = None
        self._init_book()
        self.revision = 0

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
                "closing_equity": None if self._closing_equity is None else str(self._closing_equity),
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
            closing = data.get("closing_equity")
            self._closing_equity = None if closing is None else Decimal(closing)
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
                    self._open(order)
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
def _probability(value: float) -> float:
    try:
        probability = float(value)
    except (TypeError, ValueError):
        raise bad_request(f"invalid probability: {value!r}") from None
    if not 0.0 <= probability <= 1.0:
        raise bad_request("partial_fill_probability must be between 0 and 1")
    return probability
