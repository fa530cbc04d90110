"""The positions endpoints: ``GET /v2/positions[/{symbol}]`` and closing positions.

A position is a :class:`~paper_exchange.positions.Position` (long, or short with a negative
qty in the margin account). Closing one submits a market order through the order intake: a
sell for a long, a buy to cover for a short, for all of it, a ``qty`` or a ``percentage``.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR
from typing import Any

from .errors import ExchangeError, forbidden, not_found, unprocessable
from .intake import Intake
from .money import ZERO, fmt, to_decimal
from .orders import CANCELED, Order, OrderSpec
from .positions import Position


class PositionsApi(Intake):
    """Position queries and closes (a part of :class:`~paper_exchange.engine.PaperExchange`)."""

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
