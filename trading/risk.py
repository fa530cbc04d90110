"""Position sizing and the risk gate every new entry passes before anything is sent.

Sizing: ``planned_qty`` if the plan gives one, else ``position_size_pct`` of equity, else
``RISK_PER_TRADE / (entry - stop)``; whole shares, rounded down; always capped by
``MAX_POSITION_NOTIONAL`` and ``MAX_POSITION_PCT_OF_EQUITY`` (the cap is noted, not refused).

Gate: open trades, entries today, same symbol, total exposure, buying power and today's
realised loss. The ``RiskState`` is read once per run and updated as entries are accepted, so
a batch of decisions cannot together exceed a limit that each alone would pass. Each refusal
is a ``RejectedError`` whose code names the limit and whose message gives the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from config import RiskLimits
from trading.errors import RejectedError
from trading.plan import TradePlan
from trading.pricing import ZERO, money, whole_shares

HUNDRED = Decimal("100")


def _fmt(amount: Decimal) -> str:
    return f"{money(amount):,}"


@dataclass
class RiskState:
    """What the gate needs to know about the account and the book right now."""

    equity: Decimal
    buying_power: Decimal
    open_trades: int
    open_symbols: set[str] = field(default_factory=set)
    exposure: Decimal = ZERO            # market value of positions + notional of working entries
    entries_today: int = 0
    realized_pnl_today: Decimal = ZERO

    def accept(self, symbol: str, notional: Decimal) -> Reservation:
        """Count an accepted entry against the limits for the rest of the batch; the returned
        reservation gives it back with ``release`` if the broker then refuses the entry."""
        reservation = Reservation(symbol, notional, new_symbol=symbol not in self.open_symbols)
        self.open_trades += 1
        self.open_symbols.add(symbol)
        self.exposure += notional
        self.entries_today += 1
        self.buying_power -= notional
        return reservation

    def release(self, reservation: Reservation) -> None:
        """Undo ``accept`` for an entry that was never placed (the broker refused it), so a refused
        entry does not take buying power, exposure, a trade slot or its symbol from later decisions."""
        self.open_trades -= 1
        if reservation.new_symbol:
            self.open_symbols.discard(reservation.symbol)
        self.exposure -= reservation.notional
        self.entries_today -= 1
        self.buying_power += reservation.notional


@dataclass(frozen=True)
class Reservation:
    """What one accepted entry took from the batch's limits."""

    symbol: str
    notional: Decimal
    new_symbol: bool


@dataclass(frozen=True)
class Sizing:
    qty: Decimal
    method: str
    note: str | None = None


def size_position(plan: TradePlan, limits: RiskLimits, equity: Decimal) -> Sizing:
    """How many whole shares to buy."""
    if plan.qty is not None:
        qty, method = whole_shares(plan.qty), "planned_qty"
    elif plan.size_pct is not None:
        qty, method = whole_shares(equity * plan.size_pct / HUNDRED / plan.entry), f"{plan.size_pct}% of equity"
    else:
        risk_per_share = plan.entry - plan.stop
        qty, method = whole_shares(limits.risk_per_trade / risk_per_share), \
            f"risk {_fmt(limits.risk_per_trade)} / {risk_per_share} per share"
    caps = [
        ("MAX_POSITION_NOTIONAL", whole_shares(limits.max_position_notional / plan.entry)),
        ("MAX_POSITION_PCT_OF_EQUITY", whole_shares(equity * limits.max_position_pct_of_equity / HUNDRED / plan.entry)),
    ]
    note = None
    for name, cap in caps:
        if qty > cap:
            note = f"{method} gave {qty} shares, capped to {max(cap, ZERO)} by {name}"
            qty = max(cap, ZERO)
    if qty < 1:
        raise RejectedError(
            f"position size is zero shares ({method} at entry {plan.entry}"
            + (f"; {note}" if note else "") + ")", code="RISK_SIZE_ZERO")
    return Sizing(qty, method, note)


def check_entry(plan: TradePlan, qty: Decimal, limits: RiskLimits, state: RiskState) -> Decimal:
    """Refuse the entry if it breaks a limit; returns its notional when it passes."""
    notional = qty * plan.entry
    if state.equity <= ZERO:
        raise RejectedError(f"account equity is {_fmt(state.equity)}: no new entries", code="RISK_EQUITY")
    if state.realized_pnl_today <= -limits.daily_loss_limit:
        raise RejectedError(
            f"DAILY_LOSS_LIMIT: realized P&L today {_fmt(state.realized_pnl_today)} is beyond the limit "
            f"-{_fmt(limits.daily_loss_limit)}: no new entries today", code="RISK_DAILY_LOSS_LIMIT")
    if state.open_trades + 1 > limits.max_open_trades:
        raise RejectedError(f"MAX_OPEN_TRADES: {state.open_trades} trades open, limit {limits.max_open_trades}",
                            code="RISK_MAX_OPEN_TRADES")
    if state.entries_today + 1 > limits.max_orders_per_day:
        raise RejectedError(f"MAX_ORDERS_PER_DAY: {state.entries_today} entries placed today, "
                            f"limit {limits.max_orders_per_day}", code="RISK_MAX_ORDERS_PER_DAY")
    if plan.symbol in state.open_symbols and not limits.allow_same_symbol:
        raise RejectedError(f"ALLOW_SAME_SYMBOL=false: a trade in {plan.symbol} is already open",
                            code="RISK_SAME_SYMBOL")
    if notional > limits.max_position_notional:
        raise RejectedError(f"MAX_POSITION_NOTIONAL: {qty} x {plan.entry} = {_fmt(notional)} exceeds "
                            f"{_fmt(limits.max_position_notional)}", code="RISK_MAX_POSITION_NOTIONAL")
    pct_cap = state.equity * limits.max_position_pct_of_equity / HUNDRED
    if notional > pct_cap:
        raise RejectedError(f"MAX_POSITION_PCT_OF_EQUITY: {_fmt(notional)} exceeds "
                            f"{limits.max_position_pct_of_equity}% of equity {_fmt(state.equity)} "
                            f"= {_fmt(pct_cap)}", code="RISK_MAX_POSITION_PCT")
    exposure_cap = state.equity * limits.max_total_exposure_pct / HUNDRED
    if state.exposure + notional > exposure_cap:
        raise RejectedError(f"MAX_TOTAL_EXPOSURE_PCT: exposure {_fmt(state.exposure)} + {_fmt(notional)} "
                            f"exceeds {limits.max_total_exposure_pct}% of equity = {_fmt(exposure_cap)}",
                            code="RISK_MAX_TOTAL_EXPOSURE")
    available = state.buying_power - limits.min_buying_power_reserve
    if notional > available:
        raise RejectedError(f"buying power: {_fmt(notional)} needed, {_fmt(state.buying_power)} available"
                            + (f" less reserve {_fmt(limits.min_buying_power_reserve)}"
                               if limits.min_buying_power_reserve else ""), code="RISK_BUYING_POWER")
    return notional
