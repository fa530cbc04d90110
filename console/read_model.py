"""What the console shows, read from the contract tables through ``db_layer``'s query methods.

Each function answers one endpoint with one or a few SQL statements (never one per row: the
book may hold hundreds of positions and a hundred thousand orders). Rows come back as plain
dicts with ``Decimal`` money and timezone-aware UTC times; ``console.app`` turns them into JSON
(money as strings, times in ISO form with their zone).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from trading import lifecycle
from trading.pricing import ZERO

Row = dict[str, Any]

HUNDRED = Decimal(100)
CENT = Decimal("0.01")

#: Orders that still work at the broker (``held`` legs included), as the programs count them.
OPEN_STATUSES = sorted(lifecycle.OPEN_ORDER_STATUSES)
#: Orders that protect shares (a ``pending_cancel`` stop is on its way out).
PROTECTING_STATUSES = sorted(lifecycle.PROTECTING_ORDER_STATUSES)


def pct(part: Decimal | None, whole: Decimal | None) -> Decimal | None:
    """``part`` as a percentage of ``whole``, to two decimals (None when ``whole`` is zero or unknown)."""
    if part is None or whole is None or whole == ZERO:
        return None
    return (Decimal(part) * HUNDRED / Decimal(whole)).quantize(CENT)


# --------------------------------------------------------------------------- portfolio

PORTFOLIO_SQL = """
WITH latest AS (
    SELECT * FROM portfolio_snapshot ORDER BY taken_at DESC, id DESC LIMIT 1
), day AS (
    SELECT (date_trunc('day', taken_at AT TIME ZONE 'America/New_York') AT TIME ZONE 'America/New_York') AS start
    FROM latest
), before_today AS (
    SELECT s.equity, s.taken_at FROM portfolio_snapshot s, day
    WHERE s.taken_at < day.start AND s.equity IS NOT NULL ORDER BY s.taken_at DESC, s.id DESC LIMIT 1
), first_today AS (
    SELECT s.equity, s.taken_at FROM portfolio_snapshot s, day
    WHERE s.taken_at >= day.start AND s.equity IS NOT NULL ORDER BY s.taken_at, s.id LIMIT 1
)
SELECT l.taken_at, l.cash, l.positions_value, l.equity, l.unrealized_pnl, l.realized_pnl_today, l.open_positions,
       b.equity AS previous_equity, b.taken_at AS previous_taken_at,
       f.equity AS first_equity, f.taken_at AS first_taken_at
FROM latest l LEFT JOIN before_today b ON true LEFT JOIN first_today f ON true
"""

ALLOCATION_SQL = """
SELECT symbol, sum(qty) AS qty, coalesce(sum(market_value), 0) AS market_value,
       coalesce(sum(unrealized_pnl), 0) AS unrealized_pnl, max(last_updated) AS last_updated
FROM position_tracking GROUP BY symbol ORDER BY symbol
"""


def portfolio(db: Any) -> Row:
    """Cash, positions value, equity and today's P&L ($ and %) from the latest portfolio snapshot
    (the position monitor writes one per run), with the allocation by symbol for the pie.

    Today's P&L is the latest equity against the last snapshot before the latest snapshot's
    trading day (``previous_close``); without one, against the day's first snapshot."""
    latest = db.execute_one(PORTFOLIO_SQL)
    allocation = db.execute_query(ALLOCATION_SQL)
    if latest is None:
        return {"as_of": None, "cash": None, "positions_value": None, "equity": None, "unrealized_pnl": None,
                "realized_pnl_today": None, "open_positions": 0, "today_pnl": None, "today_pnl_pct": None,
                "today_base": None, "allocation": _allocation(allocation, None, None),
                "note": "no portfolio snapshot yet: the position monitor writes one at each run"}
    equity = latest["equity"]
    if latest["previous_equity"] is not None:
        base = {"kind": "previous_close", "equity": latest["previous_equity"], "taken_at": latest["previous_taken_at"]}
    elif latest["first_equity"] is not None:
        base = {"kind": "first_snapshot_today", "equity": latest["first_equity"], "taken_at": latest["first_taken_at"]}
    else:
        base = None
    today = equity - base["equity"] if base is not None and equity is not None else None
    return {"as_of": latest["taken_at"], "cash": latest["cash"], "positions_value": latest["positions_value"],
            "equity": equity, "unrealized_pnl": latest["unrealized_pnl"],
            "realized_pnl_today": latest["realized_pnl_today"], "open_positions": latest["open_positions"],
            "today_pnl": today, "today_pnl_pct": pct(today, base["equity"] if base else None), "today_base": base,
            "allocation": _allocation(allocation, latest["cash"], equity)}


def _allocation(rows: list[Row], cash: Decimal | None, equity: Decimal | None) -> list[Row]:
    """Each symbol's market value and its share of equity, then the cash."""
    items = [{"symbol": row["symbol"], "qty": row["qty"], "market_value": row["market_value"],
              "unrealized_pnl": row["unrealized_pnl"], "weight_pct": pct(row["market_value"], equity)}
             for row in rows]
    if cash is not None:
        items.append({"symbol": "CASH", "qty": None, "market_value": cash, "unrealized_pnl": None,
                      "weight_pct": pct(cash, equity)})
    return items


# --------------------------------------------------------------------------- positions

POSITIONS_SQL = """
SELECT p.id AS position_id, p.trade_journal_id AS trade_id, p.symbol, p.qty, p.avg_entry_price, p.cost_basis,
       p.current_price, p.market_value, p.unrealized_pnl, p.unrealized_pnl_pct, p.last_updated,
       t.trade_style, t.status AS trade_status, t.planned_entry, t.planned_sl, t.planned_tp, t.trailing_stop_pct,
       t.trail_price, t.high_water_mark, t.entry_date, t.days_open, t.realized_pnl, t.exit_urgency,
       o.stop_price, coalesce(o.stop_qty, 0) AS stop_qty, o.target_price, coalesce(o.exits_open, 0) AS exits_open
FROM position_tracking p
JOIN trade_journal t ON t.id = p.trade_journal_id
LEFT JOIN (
    SELECT trade_journal_id,
           max(stop_price) FILTER (WHERE order_type = 'STOP_LOSS' AND order_status = ANY(%(protecting)s)) AS stop_price,
           sum(qty - filled_qty) FILTER (WHERE order_type = 'STOP_LOSS' AND order_status = ANY(%(protecting)s))
               AS stop_qty,
           max(limit_price) FILTER (WHERE order_type = 'TAKE_PROFIT' AND order_status = ANY(%(protecting)s))
               AS target_price,
           count(*) FILTER (WHERE order_type = 'EXIT') AS exits_open
    FROM order_execution
    WHERE (order_status = ANY(%(open)s) OR order_status = 'pending')
      AND trade_journal_id IN (SELECT trade_journal_id FROM position_tracking)
    GROUP BY trade_journal_id
) o ON o.trade_journal_id = p.trade_journal_id
ORDER BY p.symbol, p.id
"""


def protection_state(qty: Decimal, stop_qty: Decimal, exits_open: int) -> str:
    """``protected`` (a live stop covers every share), ``exiting`` (an exit order works on the
    shares), ``partial`` (a stop covers some) or ``unprotected``; the order monitor repairs the
    last two at its next run."""
    if exits_open:
        return "exiting"
    if qty > ZERO and stop_qty >= qty:
        return "protected"
    return "partial" if stop_qty > ZERO else "unprotected"


def positions(db: Any) -> list[Row]:
    """Every open position with its live values, its stop and target levels (as planned and as
    held at the broker) and its protection state."""
    rows = db.execute_query(POSITIONS_SQL, {"open": OPEN_STATUSES, "protecting": PROTECTING_STATUSES})
    answer = []
    for row in rows:
        answer.append({
            "symbol": row["symbol"], "trade_id": row["trade_id"], "position_id": row["position_id"],
            "trade_style": row["trade_style"], "qty": row["qty"], "entry_price": row["avg_entry_price"],
            "cost_basis": row["cost_basis"], "current_price": row["current_price"],
            "market_value": row["market_value"], "unrealized_pnl": row["unrealized_pnl"],
            "unrealized_pnl_pct": row["unrealized_pnl_pct"], "last_updated": row["last_updated"],
            "entry_date": row["entry_date"], "days_open": row["days_open"],
            "stop": {"planned": row["planned_sl"], "held": row["stop_price"], "held_qty": row["stop_qty"]},
            "target": {"planned": row["planned_tp"], "held": row["target_price"]},
            "trailing": None if row["trailing_stop_pct"] is None and row["trail_price"] is None else {
                "pct": row["trailing_stop_pct"], "price": row["trail_price"],
                "high_water_mark": row["high_water_mark"]},
            "protection": protection_state(Decimal(row["qty"]), Decimal(row["stop_qty"]), int(row["exits_open"])),
            "exit_urgency": row["exit_urgency"],
        })
    return answer


# --------------------------------------------------------------------------- paging


@dataclass(frozen=True)
class Page:
    """A page of a listing: ``limit`` rows from ``offset``."""

    limit: int = 100
    offset: int = 0

    def describe(self, total: int) -> Row:
        return {"limit": self.limit, "offset": self.offset, "total": total,
                "next_offset": self.offset + self.limit if self.offset + self.limit < total else None}


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The UTC start and end of a US/Eastern calendar day."""
    from trading.market_time import EASTERN

    start = EASTERN.localize(dt.datetime.combine(day, dt.time(0, 0)))
    end = EASTERN.localize(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0, 0)))
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)
