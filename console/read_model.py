"""What the console shows, read from the contract tables through ``db_layer``'s query methods.

Each function answers one endpoint with one or a few SQL statements (never one per row: the
book may hold hundreds of positions and a hundred thousand orders). Rows come back as plain
dicts with ``Decimal`` money and timezone-aware UTC times; ``console.app`` turns them into JSON
(money as strings, times in ISO form with their zone).
"""

from __future__ import annotations

import datetime as dt
import json
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

#: One JSON text built by PostgreSQL: 500 positions of thirty values each are rendered there in a
#: few milliseconds instead of being converted to Python objects and back (money as ``::text``:
#: the exact NUMERIC text, which is what ``str(Decimal)`` gives too; times as ISO with the zone).
POSITIONS_JSON_SQL = """
SELECT count(*) AS n, coalesce(json_agg(json_build_object(
    'symbol', p.symbol, 'trade_id', p.trade_journal_id, 'position_id', p.id, 'trade_style', t.trade_style,
    'qty', p.qty::text, 'entry_price', p.avg_entry_price::text, 'cost_basis', p.cost_basis::text,
    'current_price', p.current_price::text, 'market_value', p.market_value::text,
    'unrealized_pnl', p.unrealized_pnl::text, 'unrealized_pnl_pct', p.unrealized_pnl_pct::text,
    'last_updated', p.last_updated, 'entry_date', t.entry_date, 'days_open', t.days_open,
    'stop', json_build_object('planned', t.planned_sl::text, 'held', o.stop_price::text,
                              'held_qty', coalesce(o.stop_qty, 0)::text),
    'target', json_build_object('planned', t.planned_tp::text, 'held', o.target_price::text),
    'trailing', CASE WHEN t.trailing_stop_pct IS NULL AND t.trail_price IS NULL THEN NULL ELSE json_build_object(
        'pct', t.trailing_stop_pct::text, 'price', t.trail_price::text,
        'high_water_mark', t.high_water_mark::text) END,
    'protection', CASE WHEN coalesce(o.exits_open, 0) > 0 THEN 'exiting'
                       WHEN p.qty > 0 AND coalesce(o.stop_qty, 0) >= p.qty THEN 'protected'
                       WHEN coalesce(o.stop_qty, 0) > 0 THEN 'partial' ELSE 'unprotected' END,
    'exit_urgency', t.exit_urgency) ORDER BY p.symbol, p.id), '[]')::text AS positions
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
"""


def positions_json(db: Any) -> tuple[str, int]:
    """Every open position with its live values, its stop and target levels (as planned and as
    held at the broker) and its protection state: the JSON array's text and the count."""
    row = db.execute_one(POSITIONS_JSON_SQL, {"open": OPEN_STATUSES, "protecting": PROTECTING_STATUSES})
    assert row is not None
    return row["positions"], int(row["n"])


def positions(db: Any) -> list[Row]:
    """``positions_json`` as Python values (money as ``Decimal``-exact strings)."""
    return list(json.loads(positions_json(db)[0]))


# --------------------------------------------------------------------------- paging


@dataclass(frozen=True)
class Page:
    """A page of a listing: ``limit`` rows from ``offset``."""

    limit: int = 100
    offset: int = 0

    def describe(self, total: int) -> Row:
        return {"limit": self.limit, "offset": self.offset, "total": total,
                "next_offset": self.offset + self.limit if self.offset + self.limit < total else None}


def where_clause(*filters: tuple[str, str, Any]) -> tuple[str, Row]:
    """`` WHERE a AND b`` (or nothing) and its parameters, from ``(condition, name, value)``
    filters; a filter applies when its value is given (not None, not an empty list or text).
    Lists become arrays for ``= ANY(%(name)s)``."""
    chosen = [(condition, name, list(value) if isinstance(value, tuple) else value)
              for condition, name, value in filters
              if value is not None and not (isinstance(value, (str, tuple, list)) and not value)]
    clause = (" WHERE " + " AND ".join(condition for condition, _, _ in chosen)) if chosen else ""
    return clause, {name: value for _, name, value in chosen}


def page_of(db: Any, page: Page, source: str, clause: str, params: Row) -> Row:
    """The page's description with the total number of rows of ``source`` under ``clause``."""
    total = db.execute_one(f"SELECT count(*) AS n FROM {source}{clause}", params)
    return page.describe(int(total["n"]) if total else 0)


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The UTC start and end of a US/Eastern calendar day."""
    from trading.market_time import EASTERN

    start = EASTERN.localize(dt.datetime.combine(day, dt.time(0, 0)))
    end = EASTERN.localize(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0, 0)))
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


# --------------------------------------------------------------------------- the equity curve

HISTORY_SQL = """
SELECT taken_at, equity, cash, positions_value, unrealized_pnl, realized_pnl_today, open_positions
FROM portfolio_snapshot
WHERE (%(start)s::timestamptz IS NULL OR taken_at >= %(start)s) AND (%(end)s::timestamptz IS NULL OR taken_at < %(end)s)
ORDER BY taken_at, id
"""
#: The S&P 500 stand-in whose bars make the benchmark series.
BENCHMARK_SYMBOL = "SPY"


def bar_minutes(span: dt.timedelta) -> int:
    """The bar size for a curve spanning ``span``: 10-minute bars for a day or two, hourly for a
    month, daily beyond (a few hundred points at most)."""
    if span <= dt.timedelta(days=2):
        return 10
    if span <= dt.timedelta(days=31):
        return 60
    return 1440


def history(db: Any, broker: Any, broker_problem: str | None, start: dt.datetime | None,
            end: dt.datetime | None) -> Row:
    """The snapshots (the equity curve) with the benchmark: SPY's closes scaled so that it starts
    at the curve's first equity (``benchmark`` at each snapshot: the last close at or before it).
    Without a broker (or bars) the benchmark is absent and ``benchmark_note`` says why."""
    points = db.execute_query(HISTORY_SQL, {"start": start, "end": end})
    series = [{"at": p["taken_at"], "equity": p["equity"], "cash": p["cash"], "positions_value": p["positions_value"],
               "unrealized_pnl": p["unrealized_pnl"], "realized_pnl_today": p["realized_pnl_today"],
               "open_positions": p["open_positions"], "benchmark": None} for p in points]
    result: Row = {"points": series, "count": len(series), "benchmark_symbol": BENCHMARK_SYMBOL,
                   "benchmark_note": None}
    with_equity = [p for p in series if p["equity"] is not None]
    if not with_equity:
        result["benchmark_note"] = "no snapshot with equity: nothing to compare"
        return result
    if broker is None:
        result["benchmark_note"] = f"no benchmark: {broker_problem or 'no broker'}"
        return result
    from trading.errors import TradingError

    first, last = with_equity[0]["at"], with_equity[-1]["at"]
    minutes = bar_minutes(last - first)
    try:
        # From one bar before the first snapshot, so the first point has a close to start from.
        lead = dt.timedelta(days=4) if minutes >= 1440 else dt.timedelta(minutes=minutes)
        bars = broker.get_bars(BENCHMARK_SYMBOL, first - lead, last + dt.timedelta(minutes=1), minutes=minutes)
    except TradingError as exc:
        result["benchmark_note"] = f"no benchmark: the broker's {BENCHMARK_SYMBOL} bars could not be read ({exc})"
        return result
    # A bar's close is known at its end (a daily bar's at the session's close, 16:00 ET).
    known_after = dt.timedelta(minutes=minutes) if minutes < 1440 else dt.timedelta(hours=16)
    closes = [(bar.start + known_after, bar.close) for bar in bars if bar.close > ZERO]
    if not closes:
        result["benchmark_note"] = f"no benchmark: the broker has no {BENCHMARK_SYMBOL} bars for these dates"
        return result
    index, base_close, base_equity = 0, None, Decimal(with_equity[0]["equity"])
    for point in series:
        while index + 1 < len(closes) and closes[index + 1][0] <= point["at"]:
            index += 1
        close = closes[index][1]
        if base_close is None:
            base_close = close
        point["benchmark"] = (base_equity * close / base_close).quantize(CENT)
    result["benchmark_bar_minutes"] = minutes
    return result


# --------------------------------------------------------------------------- P&L

PNL_TOTALS_SQL = """
SELECT (SELECT coalesce(sum(realized_pnl), 0) FROM trade_fill WHERE side = 'sell') AS realized,
       (SELECT coalesce(sum(unrealized_pnl), 0) FROM position_tracking) AS unrealized,
       (SELECT count(*) FROM trade_journal WHERE status = 'CLOSED') AS closed_trades,
       (SELECT count(*) FROM trade_journal WHERE status = 'CLOSED' AND actual_pnl > 0) AS winners,
       (SELECT count(*) FROM trade_journal WHERE status = 'CLOSED' AND actual_pnl < 0) AS losers
"""
PNL_BY_DAY_SQL = """
SELECT (filled_at AT TIME ZONE 'America/New_York')::date AS day, coalesce(sum(realized_pnl), 0) AS realized,
       count(*) AS sells
FROM trade_fill WHERE side = 'sell' GROUP BY 1 ORDER BY 1
"""
PNL_BY_REASON_SQL = """
SELECT coalesce(exit_reason, 'UNKNOWN') AS exit_reason, count(*) AS trades, coalesce(sum(actual_pnl), 0) AS pnl,
       count(*) FILTER (WHERE actual_pnl > 0) AS winners, count(*) FILTER (WHERE actual_pnl < 0) AS losers
FROM trade_journal WHERE status = 'CLOSED' GROUP BY 1 ORDER BY 1
"""


def pnl(db: Any) -> Row:
    """Realised P&L (the ``trade_fill`` ledger of every sell, partial exits included), unrealised
    (the open positions as last valued), by US/Eastern day and by exit reason of closed trades."""
    totals = db.execute_one(PNL_TOTALS_SQL) or {}
    realized, unrealized = Decimal(totals.get("realized") or 0), Decimal(totals.get("unrealized") or 0)
    return {"realized": realized, "unrealized": unrealized, "total": realized + unrealized,
            "closed_trades": totals.get("closed_trades", 0), "winners": totals.get("winners", 0),
            "losers": totals.get("losers", 0),
            "by_day": [{"day": r["day"], "realized": r["realized"], "sells": r["sells"]}
                       for r in db.execute_query(PNL_BY_DAY_SQL)],
            "by_exit_reason": db.execute_query(PNL_BY_REASON_SQL)}


# --------------------------------------------------------------------------- orders

ORDER_COLUMNS = """
o.id, o.trade_journal_id AS trade_id, t.initial_analysis_id AS decision_id, o.symbol, o.order_type AS type, o.side,
o.order_status AS status, o.qty, o.limit_price, o.stop_price, o.filled_qty, o.filled_avg_price, o.submitted_at,
o.filled_at, o.canceled_at, o.created_at, o.updated_at, o.client_order_id, o.alpaca_order_id,
o.parent_alpaca_order_id, o.order_class, o.order_kind, o.time_in_force, o.exit_reason, o.error_message
"""


@dataclass(frozen=True)
class OrderFilter:
    """The filters of ``GET /api/orders`` (already validated)."""

    statuses: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    symbol: str | None = None
    trade_id: int | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None

    def where(self) -> tuple[str, Row]:
        # The order's time: when it was sent (its intent's creation when never sent).
        return where_clause(("o.order_status = ANY(%(statuses)s)", "statuses", self.statuses),
                            ("o.order_type = ANY(%(types)s)", "types", self.types),
                            ("o.symbol = %(symbol)s", "symbol", self.symbol),
                            ("o.trade_journal_id = %(trade_id)s", "trade_id", self.trade_id),
                            ("coalesce(o.submitted_at, o.created_at) >= %(start)s", "start", self.start),
                            ("coalesce(o.submitted_at, o.created_at) < %(end)s", "end", self.end))


#: The listing's columns as JSON-ready values (money as exact text), for ``json_agg`` in SQL.
ORDER_JSON_COLUMNS = """
o.id, o.trade_journal_id AS trade_id, t.initial_analysis_id AS decision_id, o.symbol, o.order_type AS type, o.side,
o.order_status AS status, o.qty::text AS qty, o.limit_price::text AS limit_price, o.stop_price::text AS stop_price,
o.filled_qty::text AS filled_qty, o.filled_avg_price::text AS filled_avg_price, o.submitted_at, o.filled_at,
o.canceled_at, o.created_at, o.updated_at, o.client_order_id, o.alpaca_order_id, o.parent_alpaca_order_id,
o.order_class, o.order_kind, o.time_in_force, o.exit_reason, o.error_message
"""


def orders_json(db: Any, where: OrderFilter, page: Page) -> str:
    """One page of orders, newest first, each with its trade and decision ids, and the total: the
    answer's JSON text (rendered by PostgreSQL: a hundred rows of 25 values in a millisecond)."""
    clause, params = where.where()
    row = db.execute_one(
        f"SELECT coalesce(json_agg(x ORDER BY x.id DESC), '[]')::text AS orders FROM (SELECT {ORDER_JSON_COLUMNS} "
        f"FROM order_execution o LEFT JOIN trade_journal t ON t.id = o.trade_journal_id{clause} "
        "ORDER BY o.id DESC LIMIT %(limit)s OFFSET %(offset)s) x",
        {**params, "limit": page.limit, "offset": page.offset})
    described = page_of(db, page, "order_execution o", clause, params)
    assert row is not None
    return f'{{"orders":{row["orders"]},"page":{json.dumps(described)}}}'


AUDIT_COLUMNS = "id, occurred_at, program, program_run_id, entity_type, entity_id, symbol, event, old_value, " \
                "new_value, reason, details"


def order(db: Any, order_id: int) -> Row | None:
    """One order with its audit events (intent, submission, status changes, fills)."""
    row = db.execute_one(f"SELECT {ORDER_COLUMNS} FROM order_execution o LEFT JOIN trade_journal t "
                         "ON t.id = o.trade_journal_id WHERE o.id = %s", (order_id,))
    if row is None:
        return None
    row["audit"] = db.execute_query(f"SELECT {AUDIT_COLUMNS} FROM audit_event WHERE entity_type = 'order' "
                                    "AND entity_id = %s ORDER BY id", (order_id,))
    return row


# --------------------------------------------------------------------------- trades

TRADE_COLUMNS = """
t.id, t.initial_analysis_id AS decision_id, t.symbol, t.trade_style, t.status, t.planned_entry, t.planned_sl,
t.planned_tp, t.planned_qty, t.actual_entry, t.actual_qty, t.entry_date, t.exit_date, t.exit_price, t.actual_pnl,
t.realized_pnl, t.exited_qty, t.exit_reason, t.days_open, t.trailing_stop_pct, t.trail_price, t.high_water_mark,
t.replaces_trade_journal_id, t.created_at, t.updated_at,
p.current_price, p.market_value, p.unrealized_pnl, p.unrealized_pnl_pct
"""


def _with_pnl(row: Row) -> Row:
    """The trade's P&L: realised so far plus the open shares' unrealised P&L."""
    realized = row["actual_pnl"] if row["status"] == "CLOSED" and row["actual_pnl"] is not None \
        else Decimal(row.get("realized_pnl") or 0)
    unrealized = row.get("unrealized_pnl")
    row["pnl"] = {"realized": realized, "unrealized": unrealized,
                  "total": realized + (Decimal(unrealized) if unrealized is not None else ZERO)}
    return row


def trades(db: Any, statuses: tuple[str, ...], symbol: str | None, page: Page) -> Row:
    """One page of trades, newest first, each with its P&L."""
    clause, params = where_clause(("t.status = ANY(%(statuses)s)", "statuses", statuses),
                                  ("t.symbol = %(symbol)s", "symbol", symbol))
    rows = db.execute_query(f"SELECT {TRADE_COLUMNS} FROM trade_journal t LEFT JOIN position_tracking p "
                            f"ON p.trade_journal_id = t.id{clause} ORDER BY t.id DESC "
                            "LIMIT %(limit)s OFFSET %(offset)s", {**params, "limit": page.limit, "offset": page.offset})
    return {"trades": [_with_pnl(row) for row in rows], "page": page_of(db, page, "trade_journal t", clause, params)}


DECISION_COLUMNS = "id, created_at, ticker, primary_action, approved, executed, execution_time, trade_journal_id " \
                   "AS trade_id, outcome, code, reason, outcome_at, program"


def trade(db: Any, trade_id: int) -> Row | None:
    """The whole story of one trade: its decision (and every decision naming it), its orders,
    its fills, and every audit event about the trade, its orders, its position and its decisions."""
    row = db.execute_one(f"SELECT {TRADE_COLUMNS} FROM trade_journal t LEFT JOIN position_tracking p "
                         "ON p.trade_journal_id = t.id WHERE t.id = %s", (trade_id,))
    if row is None:
        return None
    _with_pnl(row)
    row["decisions"] = db.execute_query(
        f"SELECT {DECISION_COLUMNS}, (SELECT d.decision FROM analysis_decision d WHERE d.id = v.id) AS plan "
        "FROM decision_outcome v WHERE v.id = %(decision)s OR v.trade_journal_id = %(trade)s ORDER BY v.id",
        {"decision": row["decision_id"], "trade": trade_id})
    row["orders"] = db.execute_query(
        f"SELECT {ORDER_COLUMNS} FROM order_execution o LEFT JOIN trade_journal t ON t.id = o.trade_journal_id "
        "WHERE o.trade_journal_id = %s ORDER BY o.id", (trade_id,))
    row["fills"] = db.execute_query(
        "SELECT id, order_execution_id AS order_id, side, qty, price, realized_pnl, filled_at, source "
        "FROM trade_fill WHERE trade_journal_id = %s ORDER BY filled_at, id", (trade_id,))
    order_ids = [o["id"] for o in row["orders"]]
    decision_ids = [d["id"] for d in row["decisions"]]
    row["audit"] = db.execute_query(
        f"SELECT {AUDIT_COLUMNS} FROM audit_event WHERE (entity_type = 'trade' AND entity_id = %(trade)s) "
        "OR (entity_type = 'order' AND entity_id = ANY(%(orders)s)) "
        "OR (entity_type = 'decision' AND entity_id = ANY(%(decisions)s)) "
        "OR (entity_type = 'position' AND entity_id IN (SELECT id FROM position_tracking "
        "WHERE trade_journal_id = %(trade)s)) ORDER BY id",
        {"trade": trade_id, "orders": order_ids, "decisions": decision_ids})
    return row


# --------------------------------------------------------------------------- decisions


def decisions(db: Any, outcomes: tuple[str, ...], actions: tuple[str, ...], ticker: str | None, page: Page) -> Row:
    """One page of decisions, newest first, with their outcome and, for refusals, the reason and code."""
    clause, params = where_clause(("outcome = ANY(%(outcomes)s)", "outcomes", outcomes),
                                  ("upper(primary_action) = ANY(%(actions)s)", "actions", actions),
                                  ("upper(ticker) = %(ticker)s", "ticker", ticker))
    rows = db.execute_query(f"SELECT {DECISION_COLUMNS} FROM decision_outcome{clause} ORDER BY id DESC "
                            "LIMIT %(limit)s OFFSET %(offset)s", {**params, "limit": page.limit, "offset": page.offset})
    return {"decisions": rows, "page": page_of(db, page, "decision_outcome", clause, params)}


# --------------------------------------------------------------------------- triggers

TRIGGERS_SQL = """
SELECT t.id AS trade_id, t.symbol, t.status, t.trade_style, t.planned_sl, t.planned_tp, t.trailing_stop_pct,
       t.trail_price, t.high_water_mark, p.qty,
       o.stop_order_id, o.stop_price, o.stop_status, o.target_order_id, o.target_price, o.target_status
FROM trade_journal t
LEFT JOIN position_tracking p ON p.trade_journal_id = t.id
LEFT JOIN (
    SELECT trade_journal_id,
           max(id) FILTER (WHERE order_type = 'STOP_LOSS') AS stop_order_id,
           max(stop_price) FILTER (WHERE order_type = 'STOP_LOSS') AS stop_price,
           max(order_status) FILTER (WHERE order_type = 'STOP_LOSS') AS stop_status,
           max(id) FILTER (WHERE order_type = 'TAKE_PROFIT') AS target_order_id,
           max(limit_price) FILTER (WHERE order_type = 'TAKE_PROFIT') AS target_price,
           max(order_status) FILTER (WHERE order_type = 'TAKE_PROFIT') AS target_status
    FROM order_execution
    WHERE order_status = ANY(%(protecting)s) AND order_type IN ('STOP_LOSS', 'TAKE_PROFIT')
      AND trade_journal_id IN (SELECT id FROM trade_journal WHERE status IN ('ORDERED', 'POSITION'))
    GROUP BY trade_journal_id
) o ON o.trade_journal_id = t.id
WHERE t.status IN ('ORDERED', 'POSITION')
ORDER BY t.symbol, t.id
"""
#: Approved level changes not carried out yet (the order monitor's next run does).
PENDING_CHANGES_SQL = """
SELECT id, existing_trade_journal_id AS trade_id, primary_action, decision, created_at FROM analysis_decision
WHERE executed = false AND "Approve" = true AND primary_action IN ('AMEND', 'CLOSE')
  AND existing_trade_journal_id IS NOT NULL ORDER BY id
"""
TRIGGER_KINDS = ("stop", "target", "trailing")


def triggers(db: Any) -> Row:
    """The stop, target and trailing levels of every open trade: ``id`` is ``<trade>:<kind>``,
    ``level`` the plan's, ``held`` the price of the broker-held order; changes approved but not
    yet carried out are listed under ``pending``."""
    items = []
    for row in db.execute_query(TRIGGERS_SQL, {"protecting": PROTECTING_STATUSES}):
        base = {"trade_id": row["trade_id"], "symbol": row["symbol"], "trade_status": row["status"],
                "trade_style": row["trade_style"], "qty": row["qty"]}
        items.append({**base, "id": f"{row['trade_id']}:stop", "kind": "stop", "level": row["planned_sl"],
                      "held": row["stop_price"], "order_id": row["stop_order_id"], "order_status": row["stop_status"]})
        if row["planned_tp"] is not None or row["target_order_id"] is not None:
            items.append({**base, "id": f"{row['trade_id']}:target", "kind": "target", "level": row["planned_tp"],
                          "held": row["target_price"], "order_id": row["target_order_id"],
                          "order_status": row["target_status"]})
        if row["trailing_stop_pct"] is not None or row["trail_price"] is not None:
            items.append({**base, "id": f"{row['trade_id']}:trailing", "kind": "trailing",
                          "level": row["trailing_stop_pct"], "trail_price": row["trail_price"],
                          "high_water_mark": row["high_water_mark"], "held": row["stop_price"],
                          "order_id": row["stop_order_id"], "order_status": row["stop_status"]})
    from trading.plan import LEVEL_KEYS

    pending = []
    for r in db.execute_query(PENDING_CHANGES_SQL):
        plan = r["decision"] if isinstance(r["decision"], dict) else {}
        pending.append({"decision_id": r["id"], "trade_id": r["trade_id"], "action": r["primary_action"],
                        "change": {key: plan[key] for key in LEVEL_KEYS if key in plan},
                        "source": plan.get("source"), "operator": plan.get("operator"), "reason": plan.get("reason"),
                        "created_at": r["created_at"]})
    return {"triggers": items, "count": len(items), "pending": pending}


# --------------------------------------------------------------------------- runs

RUNS_SQL = """
SELECT id, program, started_at, finished_at, market_time, outcome, counts, error, host, pid
FROM program_run WHERE (%(program)s::text IS NULL OR program = %(program)s) ORDER BY id DESC LIMIT %(limit)s
"""
LAST_RUNS_SQL = """
SELECT DISTINCT ON (program) id, program, started_at, finished_at, market_time, outcome, error
FROM program_run ORDER BY program, id DESC
"""


def runs(db: Any, program: str | None, limit: int) -> Row:
    """The latest program runs (newest first) and each program's last run."""
    return {"runs": db.execute_query(RUNS_SQL, {"program": program, "limit": limit}),
            "last_by_program": db.execute_query(LAST_RUNS_SQL)}


# --------------------------------------------------------------------------- trading mode


def trading_mode(db: Any, settings: Any) -> Row:
    """The trading state (the account's mode and every symbol's) and the broker mode, which only
    the environment chooses: live needs ``ALPACA_PAPER=false`` and ``ALPACA_LIVE_CONFIRM``."""
    from trading.state import read_trading_state

    state = read_trading_state(db)

    def scope(item: Any) -> Row:
        return {"scope": item.scope, "mode": item.mode.value, "reason": item.reason, "changed_by": item.changed_by,
                "changed_at": item.changed_at, "source": item.source, "resume_after": item.resume_after}

    alpaca = settings.alpaca
    return {"mode": state.account.mode.value, "account": scope(state.account),
            "symbols": [scope(state.symbols[name]) for name in sorted(state.symbols)],
            "summary": state.summary(),
            "broker": {"mode": alpaca.mode, "paper": alpaca.paper, "live_allowed": alpaca.mode == "live",
                       "how_live_is_chosen": "only by the environment: ALPACA_PAPER=false and ALPACA_LIVE_CONFIRM "
                                             "with live keys, read when a program starts"}}
