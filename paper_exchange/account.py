"""The account: cash, equity, margin and buying power, and ``GET /v2/account``.

A margin account by default, like an Alpaca paper account (Reg T: 50% initial and 30%
maintenance margin, multiplier 2, short selling); ``account_type="cash"`` is long only with
buying power equal to cash. Open orders that open positions hold buying power, open orders
that close positions hold shares (:meth:`Account._qty_available`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from . import fills
from .book import OrderBook
from .money import ZERO, fmt_money
from .orders import HELD, PENDING_REPLACE, Order
from .timeutil import iso_utc

ACCOUNT_TYPES = ("margin", "cash")
#: Reg T: 50% initial margin (so buying power is twice the excess equity), 30% maintenance.
INITIAL_MARGIN_RATE = Decimal("0.5")
MAINTENANCE_MARGIN_RATE = Decimal("0.3")
MARGIN_MULTIPLIER = Decimal(2)


class Account(OrderBook):
    """Money views of the exchange's state (a part of :class:`~paper_exchange.engine.PaperExchange`)."""

    @property
    def shorting_enabled(self) -> bool:
        """Short sales are possible in the margin account only."""
        return self.account_type == "margin"

    def _reserves(self, order: Order, exclude: Order | None) -> bool:
        """Whether an open order holds shares or buying power: held legs do not, nor does an
        order being replaced (its pending replacement holds them instead)."""
        return order is not exclude and order.live_status != HELD and order.status != PENDING_REPLACE

    def _reserved_shares(self, symbol: str, exclude: Order | None = None, side: str = "sell") -> Decimal:
        """Shares held for open orders of ``side`` (held legs do not hold shares): sells hold a
        long position's shares, buys a short position's."""
        total = ZERO
        for order in self._open_by_symbol.get(symbol, {}).values():
            if order.side == side and self._reserves(order, exclude):
                total += order.remaining
        return total

    def _qty_available(self, symbol: str, exclude: Order | None = None) -> Decimal:
        """Shares free for a closing order: long qty minus open sells, or (negative) short qty
        plus open buys."""
        position = self._positions.get(symbol)
        held = position.qty if position else ZERO
        if held < 0:
            return held + self._reserved_shares(symbol, exclude, side="buy")
        return held - self._reserved_shares(symbol, exclude)

    def _reserved_cash(self, exclude: Order | None = None) -> Decimal:
        """Notional held for open orders that open positions: remaining qty times the
        reservation price (buys: limit, ask or stop; short sales: limit, stop or bid).

        Kept per order: a hold is priced again only after its order changed
        (:data:`~paper_exchange.orders.HOLD_FIELDS`), except holds priced by the quote (market
        buys, stop buys, market short sales), which are priced at every count. So a new order
        costs about the same whatever the book holds (a walk of the whole book for every order
        made a run of 5,000 entries quadratic). ``tests/test_paper_exchange_account.py`` checks
        it against a full walk."""
        for order in self._stale_holds.values():
            self._price_hold(order)
        self._stale_holds.clear()
        total = self._fixed_holds_total
        for order in self._quoted_holds.values():
            total += self._hold(order)
        if exclude is not None and self._counted(exclude):
            total -= self._hold(exclude)
        return total

    def _counted(self, order: Order) -> bool:
        """Whether an order holds buying power: it is in the working book, opens a position
        and reserves."""
        return (self._open_by_symbol.get(order.symbol, {}).get(order.id) is order
                and order.opens_position and self._reserves(order, None))

    def _price_hold(self, order: Order) -> None:
        """Bring one order's hold up to date after a change (or its end)."""
        self._fixed_holds_total -= self._fixed_holds.pop(order.id, ZERO)
        self._quoted_holds.pop(order.id, None)
        if not self._counted(order):
            return
        if _priced_by_quote(order):
            self._quoted_holds[order.id] = order
        else:
            hold = self._hold(order)
            self._fixed_holds[order.id] = hold
            self._fixed_holds_total += hold

    def _hold(self, order: Order) -> Decimal:
        """The buying power one open order holds now."""
        quote, last = self.market.quote(order.symbol), self._last_price(order.symbol)
        if order.side == "buy":
            price = fills.reservation_price(order, quote, last)
        else:
            price = fills.short_reservation_price(order, quote, last)
        return order.remaining * price

    def _buying_power(self, exclude: Order | None = None) -> Decimal:
        """Cash account: cash minus open buys. Margin account (Reg T, multiplier 2): twice the
        equity above the initial margin (50% of the gross position value), minus open orders
        that open positions."""
        if self.account_type == "cash":
            return max(ZERO, self.cash - self._reserved_cash(exclude))
        excess = max(ZERO, self._equity() - self._initial_margin())
        return max(ZERO, excess * MARGIN_MULTIPLIER - self._reserved_cash(exclude))

    def _non_marginable_buying_power(self) -> Decimal:
        if self.account_type == "cash":
            return self._buying_power()
        excess = max(ZERO, self._equity() - self._initial_margin())
        return max(ZERO, excess - self._reserved_cash())

    def _gross_position_value(self) -> Decimal:
        long_value, short_value = self._market_values()
        return long_value - short_value

    def _initial_margin(self) -> Decimal:
        if self.account_type == "cash":
            return self._gross_position_value()
        return self._gross_position_value() * INITIAL_MARGIN_RATE

    def _maintenance_margin(self) -> Decimal:
        if self.account_type == "cash":
            return self._gross_position_value()
        return self._gross_position_value() * MAINTENANCE_MARGIN_RATE

    def _last_price(self, symbol: str) -> Decimal | None:
        state = self.market.state(symbol)
        if state is None:
            return None
        if state.last_trade is not None:
            return state.last_trade.price
        return self.market.current_price(symbol)

    def _market_values(self) -> tuple[Decimal, Decimal]:
        """(long market value, short market value); the short value is negative."""
        long_value = short_value = ZERO
        for symbol, position in self._positions.items():
            price = self.market.current_price(symbol)
            value = position.qty * (price if price is not None else position.avg_entry_price)
            if value < 0:
                short_value += value
            else:
                long_value += value
        return long_value, short_value

    def _equity(self) -> Decimal:
        long_value, short_value = self._market_values()
        return self.cash + long_value + short_value

    def get_account(self) -> dict[str, Any]:
        """``GET /v2/account``.

        Margin account (the default, like an Alpaca paper account): ``multiplier`` "2",
        ``shorting_enabled`` true; ``initial_margin`` is 50% and ``maintenance_margin`` 30% of
        the gross position value (long plus absolute short market value); ``buying_power`` =
        ``regt_buying_power`` = max(equity - initial_margin, 0) x 2, minus the notional held by
        open orders that open positions (Alpaca's rule for multiplier 2);
        ``non_marginable_buying_power`` is the same at 1x. Cash account: multiplier "1", no
        shorting, buying power = cash minus the notional held by open buy orders.
        """
        with self._lock:
            self._sync()
            long_value, short_value = self._market_values()
            equity = self.cash + long_value + short_value
            buying_power = self._buying_power()
            margin = self.account_type == "margin"
            previous = self.calendar.previous_session(self._now)
            account = {
                "id": self.account_id,
                "account_number": self.account_number,
                "status": "ACTIVE",
                "crypto_status": "INACTIVE",
                "currency": "USD",
                "buying_power": fmt_money(buying_power),
                "regt_buying_power": fmt_money(buying_power),
                "non_marginable_buying_power": fmt_money(self._non_marginable_buying_power()),
                "options_buying_power": fmt_money(self._non_marginable_buying_power()),
                "cash": fmt_money(self.cash),
                "accrued_fees": "0",
                "pending_transfer_in": "0",
                "pending_transfer_out": "0",
                "portfolio_value": fmt_money(equity),
                "equity": fmt_money(equity),
                "last_equity": fmt_money(self.last_equity),
                "long_market_value": fmt_money(long_value),
                "short_market_value": fmt_money(short_value),
                "position_market_value": fmt_money(long_value - short_value),
                "initial_margin": fmt_money(self._initial_margin()),
                "maintenance_margin": fmt_money(self._maintenance_margin()),
                "last_maintenance_margin": fmt_money(self.last_maintenance_margin),
                "sma": "0",
                "multiplier": "2" if margin else "1",
                "shorting_enabled": self.shorting_enabled,
                "trading_blocked": False,
                "transfers_blocked": False,
                "account_blocked": False,
                "trade_suspended_by_user": False,
                "created_at": iso_utc(self.account_created_at),
                "balance_asof": (previous.day if previous else self._now.date()).isoformat(),
                "intraday_adjustments": "0",
                "pending_reg_taf_fees": "0",
                "options_approved_level": 0,
                "options_trading_level": 0,
            }
            return self.configurations.apply_to_account(account)


def _priced_by_quote(order: Order) -> bool:
    """Whether an order's hold moves with the quote (see :func:`fills.reservation_price` and
    :func:`fills.short_reservation_price`): a buy without a limit, a short sale with neither
    a limit nor a stop."""
    if order.side == "buy":
        return not (order.type in ("limit", "stop_limit") and order.limit_price is not None)
    return order.limit_price is None and order.stop_price is None
