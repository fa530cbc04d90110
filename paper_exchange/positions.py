"""Positions: average-cost bookkeeping of long and short holdings and their Alpaca JSON form.

A short position has a negative ``qty`` and a negative ``cost_basis`` (qty x average entry
price, as Alpaca shows it), so ``market_value - cost_basis`` is the unrealized P/L either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .money import ZERO, fmt, fmt_money, fmt_price
from .timeutil import iso_utc, parse_timestamp
from .universe import asset_id

RATIO_PLACES = Decimal("1e-16")


@dataclass
class Position:
    """A position: signed quantity and signed total cost basis (average-cost method)."""

    symbol: str
    qty: Decimal
    cost_basis: Decimal
    opened_at: datetime

    @property
    def avg_entry_price(self) -> Decimal:
        """Cost basis per share (positive for longs and shorts)."""
        return self.cost_basis / self.qty if self.qty else ZERO

    @property
    def side(self) -> str:
        """``long`` or ``short``."""
        return "short" if self.qty < 0 else "long"

    def buy(self, qty: Decimal, price: Decimal, moment: datetime | None = None) -> None:
        """Shares bought at ``price``: add to a long, or cover a short (a cover beyond the
        short opens a long at ``price``; the engine refuses such orders, this keeps the
        books right if one fills anyway)."""
        self._trade(qty, price, moment)

    def sell(self, qty: Decimal, price: Decimal, moment: datetime | None = None) -> None:
        """Shares sold at ``price``: reduce a long (the cost basis shrinks at the average
        entry price), or open/increase a short."""
        self._trade(-qty, price, moment)

    def _trade(self, signed: Decimal, price: Decimal, moment: datetime | None) -> None:
        if self.qty == 0 or (self.qty > 0) == (signed > 0):
            self.qty += signed
            self.cost_basis += signed * price
            return
        closing = min(abs(signed), abs(self.qty))
        direction = Decimal(1) if signed > 0 else Decimal(-1)
        if closing == abs(self.qty):
            self.qty, self.cost_basis = ZERO, ZERO
        else:
            self.cost_basis += direction * closing * self.avg_entry_price
            self.qty += direction * closing
        rest = abs(signed) - closing
        if rest > 0:  # flipped through zero: the rest opens the other side at this price
            self.qty = direction * rest
            self.cost_basis = direction * rest * price
            if moment is not None:
                self.opened_at = moment

    def to_json(
        self,
        exchange: str,
        current_price: Decimal | None,
        lastday_price: Decimal,
        qty_available: Decimal,
        opened_today: bool,
    ) -> dict[str, Any]:
        """The position as Alpaca's Position object (numbers as strings)."""
        price = current_price if current_price is not None else self.avg_entry_price
        market_value = self.qty * price
        unrealized = market_value - self.cost_basis
        plpc = unrealized / abs(self.cost_basis) if self.cost_basis else ZERO
        if opened_today or lastday_price <= 0:
            intraday, intraday_pc = unrealized, plpc
        else:
            intraday = self.qty * (price - lastday_price)
            intraday_pc = intraday / abs(self.qty * lastday_price)
        change = (price - lastday_price) / lastday_price if lastday_price > 0 else ZERO
        return {
            "asset_id": asset_id(self.symbol),
            "symbol": self.symbol,
            "exchange": exchange,
            "asset_class": "us_equity",
            "asset_marginable": True,
            "qty": fmt(self.qty),
            # Shorts show a negative qty_available, as Alpaca does.
            "qty_available": fmt(max(qty_available, ZERO) if self.qty > 0 else min(qty_available, ZERO)),
            "avg_entry_price": fmt_price(self.avg_entry_price),
            "side": self.side,
            "market_value": fmt_money(market_value),
            "cost_basis": fmt_money(self.cost_basis),
            "unrealized_pl": fmt_money(unrealized),
            "unrealized_plpc": _ratio(plpc),
            "unrealized_intraday_pl": fmt_money(intraday),
            "unrealized_intraday_plpc": _ratio(intraday_pc),
            "current_price": fmt(price),
            "lastday_price": fmt(lastday_price),
            "change_today": _ratio(change),
        }

    def to_state(self) -> dict[str, Any]:
        """Lossless JSON-ready form."""
        return {
            "symbol": self.symbol,
            "qty": str(self.qty),
            "cost_basis": str(self.cost_basis),
            "opened_at": iso_utc(self.opened_at),
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> Position:
        """Rebuild from :meth:`to_state`."""
        return cls(
            symbol=data["symbol"],
            qty=Decimal(data["qty"]),
            cost_basis=Decimal(data["cost_basis"]),
            opened_at=parse_timestamp(data["opened_at"]),
        )


def _ratio(value: Decimal) -> str:
    return fmt(value.quantize(RATIO_PLACES, rounding=ROUND_HALF_UP))
