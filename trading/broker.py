"""The broker as the programs see it: the project's own types, independent of alpaca-py.

``alpaca_client.AlpacaBroker`` implements ``Broker`` with alpaca-py; the programs only use
these types. Money and quantities are ``Decimal``; times are timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from trading.lifecycle import is_terminal


@dataclass(frozen=True)
class BrokerOrder:
    """One order as the broker reports it (``legs`` filled in when asked for nested orders)."""

    id: str
    client_order_id: str
    symbol: str
    side: str                     # buy | sell
    kind: str                     # market | limit | stop | stop_limit | trailing_stop
    order_class: str              # simple | bracket | oco | oto | ""
    status: str                   # one of trading.lifecycle.ALPACA_ORDER_STATUSES
    qty: Decimal
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    time_in_force: str
    submitted_at: dt.datetime | None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    filled_at: dt.datetime | None = None
    canceled_at: dt.datetime | None = None
    expired_at: dt.datetime | None = None
    failed_at: dt.datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    legs: tuple[BrokerOrder, ...] = ()

    @property
    def terminal(self) -> bool:
        """Whether nothing more will happen to this order."""
        return is_terminal(self.status)

    @property
    def ended_at(self) -> dt.datetime | None:
        """When the order stopped working without (more) fills: cancel, expiry or failure."""
        return self.canceled_at or self.expired_at or self.failed_at

    def walk(self) -> Iterable[BrokerOrder]:
        """This order and all its legs, depth first."""
        yield self
        for leg in self.legs:
            yield from leg.walk()


@dataclass(frozen=True)
class OrderRequest:
    """An order to send. ``order_class`` bracket/oto carry protective legs; oco is two exits.

    ``take_profit_price`` is the take-profit leg's limit; ``stop_loss_price`` the stop leg's stop.
    """

    symbol: str
    qty: Decimal
    side: str
    kind: str
    time_in_force: str
    client_order_id: str
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    order_class: str = "simple"
    take_profit_price: Decimal | None = None
    stop_loss_price: Decimal | None = None


@dataclass(frozen=True)
class BrokerPosition:
    """A position the broker holds."""

    symbol: str
    qty: Decimal
    qty_available: Decimal
    avg_entry_price: Decimal
    cost_basis: Decimal
    current_price: Decimal | None = None
    market_value: Decimal | None = None
    unrealized_pl: Decimal | None = None
    side: str = "long"


@dataclass(frozen=True)
class Quote:
    """The latest quote of a symbol; a side of zero means none."""

    symbol: str
    bid: Decimal
    ask: Decimal
    timestamp: dt.datetime | None = None


@dataclass(frozen=True)
class Bar:
    """One price bar of a symbol (market data: the close is the figure charts use)."""

    symbol: str
    start: dt.datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal


@dataclass(frozen=True)
class Account:
    """The account figures the risk gate and the portfolio snapshot need."""

    cash: Decimal
    equity: Decimal
    buying_power: Decimal
    status: str
    last_equity: Decimal | None = None
    #: The broker's account id and account number (``/v2/account`` ``id``, ``account_number``).
    id: str | None = None
    number: str | None = None

    @property
    def identity(self) -> str | None:
        """What a trade records as its broker account: the account number people see in the
        broker's dashboard, else the account id."""
        return self.number or self.id


@dataclass(frozen=True)
class Asset:
    """A symbol the broker knows."""

    symbol: str
    tradable: bool
    status: str = "active"
    fractionable: bool = False


@dataclass(frozen=True)
class Clock:
    """The broker's clock: the market's time (or the paper exchange's simulated time)."""

    timestamp: dt.datetime
    is_open: bool
    next_open: dt.datetime
    next_close: dt.datetime


@dataclass(frozen=True)
class TradingDay:
    """One trading day of the broker's calendar, session open and close as UTC datetimes."""

    date: dt.date
    open: dt.datetime
    close: dt.datetime


@dataclass(frozen=True)
class TradeUpdate:
    """One event of the broker's trade-updates stream (``fill``, ``partial_fill``, ``canceled``, ...).

    A hint, not the truth: events can be dropped, repeated or reordered, so the listener looks
    the order up before recording anything. ``price``/``qty`` are this event's own fill, if any."""

    event: str
    order: BrokerOrder
    at: dt.datetime
    price: Decimal | None = None
    qty: Decimal | None = None
    position_qty: Decimal | None = None


@dataclass
class CallCounter:
    """Broker calls made, by operation: what the benchmarks and rate budgets read."""

    counts: dict[str, int] = field(default_factory=dict)
    #: Calls the broker did not answer usefully (timeouts, dropped connections, 5xx, 429), by
    #: operation: each run records its share in ``program_run.counts`` for the broker-error breaker.
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, operation: str) -> None:
        self.counts[operation] = self.counts.get(operation, 0) + 1

    def add_error(self, operation: str) -> None:
        self.errors[operation] = self.errors.get(operation, 0) + 1

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        self.counts.clear()
        self.errors.clear()


class Broker(Protocol):
    """What the programs need from a broker. Every call is bounded in time and raises only the
    project's errors (``trading.errors``)."""

    calls: CallCounter
    #: The last account read (``get_account``): which account these keys reach.
    last_account: Account | None

    def get_clock(self) -> Clock: ...
    def get_calendar(self, start: dt.date, end: dt.date) -> list[TradingDay]: ...
    def get_account(self) -> Account: ...
    def get_account_configurations(self) -> dict[str, object]: ...
    def list_assets(self) -> dict[str, Asset]: ...
    def submit_order(self, request: OrderRequest) -> BrokerOrder: ...
    def replace_order(self, order_id: str, *, stop_price: Decimal | None = None,
                      limit_price: Decimal | None = None) -> BrokerOrder: ...
    def get_order(self, order_id: str) -> BrokerOrder: ...
    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder: ...
    def list_orders(self, *, status: str = "all", after: dt.datetime | None = None,
                    until: dt.datetime | None = None, limit: int = 500, direction: str = "asc",
                    nested: bool = True, symbols: list[str] | None = None) -> list[BrokerOrder]: ...
    def list_orders_since(self, after: dt.datetime, *, status: str = "all",
                          page_size: int = 500) -> list[BrokerOrder]: ...
    def cancel_order(self, order_id: str) -> None: ...
    def list_positions(self) -> list[BrokerPosition]: ...
    def get_position(self, symbol: str) -> BrokerPosition | None: ...
    def get_latest_quotes(self, symbols: list[str]) -> dict[str, Quote]: ...
    def get_bars(self, symbol: str, start: dt.datetime, end: dt.datetime, *, minutes: int) -> list[Bar]: ...
