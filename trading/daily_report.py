"""The end-of-day report: what happened on one trading day, from the tables.

Built by the scheduler's ``eod_report`` job at 16:30 ET (``EOD_REPORT_TIME``) and by hand with
``.venv/bin/python scripts/eod_report.py --date YYYY-MM-DD``. The day is the US/Eastern calendar
date (midnight to midnight ET). Sections, each read from the table that is the record of it:

- **decisions** by outcome (``audit_event`` DECISION_*: accepted by action, refused with their
  reasons, held back or deferred), and those still waiting now;
- **orders and fills**: orders created that day by type and status (``order_execution``), fills
  by side with quantity and notional (``trade_fill``), the realised P&L of every sell;
- **trades closed** with P&L by exit reason (``trade_journal``);
- **open positions with their stops** (``position_tracking`` and the stop orders; as of the moment
  the report is made);
- **equity** against the previous close: the day's last ``portfolio_snapshot`` against the last one
  before the day; without snapshots, the broker account's ``equity`` and ``last_equity``;
- **trading-state changes and breaker trips** (``audit_event`` TRADING_STATE_CHANGED, BREAKER_TRIPPED);
- **failed runs** (``program_run``).

Stored in ``daily_report`` (one row per date: a re-run replaces it), printed as text, and sent
through the notifications (once per date; ``--resend`` sends it again).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from config import Settings, load_settings
from trading import audit, lifecycle
from trading.broker import Broker
from trading.errors import TransientError
from trading.market_time import EASTERN, MarketTime, read_market_time
from trading.notify import NotificationKind, dollars, price, quantity, record_notification
from trading.pricing import ZERO, money
from trading.program import ProgramRunner, RunContext, RunSummary

logger = logging.getLogger(__name__)

PROGRAM = "eod_report"
Row = dict[str, Any]


#: When an audit event happened in market time: its run's market time (the broker's clock, which
#: the paper exchange may simulate), else the moment it was written (a person's command).
EVENT_TIME = "coalesce((SELECT r.market_time FROM program_run r WHERE r.id = a.program_run_id), a.occurred_at)"
#: When a run happened in market time.
RUN_TIME = "coalesce(market_time, started_at)"


def day_window(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """Midnight to midnight US/Eastern of ``day``, in UTC."""
    start = EASTERN.localize(dt.datetime.combine(day, dt.time(0, 0)))
    end = EASTERN.localize(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0, 0)))
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


@dataclass
class DailyReport:
    """The figures of one day and their text."""

    day: dt.date
    generated_at: dt.datetime
    decisions: dict[str, Any] = field(default_factory=dict)
    orders: dict[str, Any] = field(default_factory=dict)
    closed: dict[str, Any] = field(default_factory=dict)
    positions: list[Row] = field(default_factory=list)
    equity: dict[str, Any] = field(default_factory=dict)
    state_changes: list[Row] = field(default_factory=list)
    breaker_trips: list[Row] = field(default_factory=list)
    runs: dict[str, Any] = field(default_factory=dict)

    @property
    def unrealized_pnl(self) -> Decimal:
        return money(sum((Decimal(p["unrealized_pnl"] or 0) for p in self.positions), ZERO))

    def figures(self) -> dict[str, Any]:
        """Everything, as stored in ``daily_report.figures`` (money as exact decimal strings)."""
        return {"date": self.day.isoformat(), "decisions": self.decisions, "orders": self.orders,
                "closed": self.closed, "positions": self.positions, "equity": self.equity,
                "state_changes": self.state_changes, "breaker_trips": self.breaker_trips, "runs": self.runs,
                "unrealized_pnl": self.unrealized_pnl}

    def title(self) -> str:
        change = self.equity.get("change")
        return (f"End of day {self.day}: closed P&L {dollars(self.closed.get('pnl', ZERO), signed=True)}"
                + (f", equity {dollars(change, signed=True)}" if change is not None else ""))

    def text(self) -> str:
        """The report for people (money to the cent)."""
        lines = [f"End-of-day report {self.day} (made {self.generated_at.astimezone(EASTERN):%Y-%m-%d %H:%M} ET)"]
        d = self.decisions
        outcomes = ", ".join(f"{k} {v}" for k, v in d["by_outcome"].items()) or "none"
        lines += ["", f"Decisions: {d['total']} ({outcomes})"]
        for action, count in d["accepted_by_action"].items():
            lines.append(f"  accepted {action}: {count}")
        for item in d["refused"]:
            lines.append(f"  refused {item['decision_id']} {item['symbol'] or '?'} {item['action'] or ''}: "
                         f"{item['reason']}" + (f" ({item['code']})" if item.get("code") else ""))
        for item in d["held"]:
            lines.append(f"  {item['event'].removeprefix('DECISION_').lower()} {item['decision_id']} "
                         f"{item['symbol'] or '?'}: {item['reason']}")
        lines.append(f"  waiting now (approved, not executed): {d['waiting']}")
        o = self.orders
        lines += ["", f"Orders: {o['total']}"]
        for key, count in o["by_type_status"].items():
            lines.append(f"  {key}: {count}")
        lines.append(f"Fills: {o['fills']} (bought {quantity(o['bought_qty'])} shares for {dollars(o['bought'])}, "
                     f"sold {quantity(o['sold_qty'])} for {dollars(o['sold'])}); realised on sells "
                     f"{dollars(o['realized_pnl'], signed=True)}")
        c = self.closed
        lines += ["", f"Trades closed: {c['count']}, P&L {dollars(c['pnl'], signed=True)}"]
        for reason, item in c["by_exit_reason"].items():
            lines.append(f"  {reason}: {item['count']} trade(s), {dollars(item['pnl'], signed=True)}")
        for trade in c["trades"]:
            lines.append(f"  trade {trade['trade_id']} {trade['symbol']}: {quantity(trade['qty'])} @ "
                         f"{price(trade['entry'])} -> {price(trade['exit'])}, {dollars(trade['pnl'], signed=True)} "
                         f"({trade['exit_reason']})")
        lines += ["", f"Open positions: {len(self.positions)}, unrealised {dollars(self.unrealized_pnl, signed=True)}"]
        for p in self.positions:
            stop = f"stop {price(p['stop_price'])}" if p["stop_price"] is not None else "NO STOP AT THE BROKER"
            lines.append(f"  {p['symbol']} trade {p['trade_id']}: {quantity(p['qty'])} @ {price(p['avg_entry_price'])},"
                         f" now {price(p['current_price'])}, {dollars(p['unrealized_pnl'], signed=True)}; {stop}")
        e = self.equity
        if e.get("change") is not None:
            lines += ["", f"Equity: {dollars(e['equity'])} against {dollars(e['previous'])} at the previous close: "
                          f"{dollars(e['change'], signed=True)} ({e['source']})"]
        else:
            lines += ["", f"Equity: not known ({e.get('source') or 'no snapshot and no broker figures'})"]
        lines += ["", f"Trading-state changes: {len(self.state_changes)}"]
        for item in self.state_changes:
            lines.append(f"  {item['at']} {item['scope']}: {item['old']} -> {item['new']} by {item['by']} "
                         f"({item['source']}): {item['reason']}")
        lines.append(f"Breaker trips: {len(self.breaker_trips)}")
        for item in self.breaker_trips:
            lines.append(f"  {item['at']} {item['scope']}: {item['reason']}")
        r = self.runs
        lines += ["", f"Runs: {r['total']} ({', '.join(f'{k} {v}' for k, v in r['by_outcome'].items()) or 'none'})"]
        for item in r["failed"]:
            lines.append(f"  failed {item['program']} run {item['run_id']} at {item['at']}: {item['error']}")
        return "\n".join(lines)


def _at(moment: dt.datetime | None) -> str:
    return f"{moment.astimezone(EASTERN):%H:%M:%S}" if moment else "?"


def build_daily_report(db: Any, day: dt.date, *, now: dt.datetime, broker: Broker | None = None) -> DailyReport:
    """The report of ``day`` from the tables (the broker only for equity when no snapshot says)."""
    start, end = day_window(day)
    report = DailyReport(day=day, generated_at=now)
    report.decisions = _decisions(db, start, end)
    report.orders = _orders(db, start, end)
    report.closed = _closed(db, start, end)
    report.positions = _positions(db)
    report.equity = _equity(db, day, start, end, broker)
    report.state_changes = [{
        "at": _at(row["at"]), "scope": (row.get("details") or {}).get("scope") or row["symbol"] or "ACCOUNT",
        "old": row["old_value"], "new": row["new_value"], "reason": row["reason"],
        "by": (row.get("details") or {}).get("changed_by") or row["program"],
        "source": (row.get("details") or {}).get("source") or "manual"}
        for row in _events(db, ["TRADING_STATE_CHANGED"], start, end)]
    report.breaker_trips = [{
        "at": _at(row["at"]), "scope": row["symbol"] or "ACCOUNT", "reason": row["reason"],
        "details": row.get("details")}
        for row in _events(db, [audit.BREAKER_TRIPPED], start, end)]
    report.runs = _runs(db, start, end)
    return report


def _events(db: Any, events: list[str], start: dt.datetime, end: dt.datetime) -> list[Row]:
    """The audit rows of ``events`` that happened in ``[start, end)`` (market time), in order."""
    return db.execute_query(
        f"SELECT a.*, {EVENT_TIME} AS at FROM audit_event a WHERE a.event = ANY(%s) "
        f"AND {EVENT_TIME} >= %s AND {EVENT_TIME} < %s ORDER BY a.id", (events, start, end))


def _decisions(db: Any, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    # The last outcome of each decision that day (a decision deferred, then placed, counts as placed).
    rows = db.execute_query(
        f"SELECT DISTINCT ON (a.entity_id) a.entity_id, a.event, a.symbol, a.reason, a.details FROM audit_event a "
        f"WHERE a.entity_type = 'decision' AND a.event LIKE 'DECISION\\_%%' AND {EVENT_TIME} >= %s "
        f"AND {EVENT_TIME} < %s ORDER BY a.entity_id, a.id DESC", (start, end))
    by_outcome: dict[str, int] = {}
    accepted: dict[str, int] = {}
    refused: list[Row] = []
    held: list[Row] = []
    for row in rows:
        outcome = row["event"].removeprefix("DECISION_").lower()
        by_outcome[outcome] = by_outcome.get(outcome, 0) + 1
        details = row.get("details") or {}
        if row["event"] == audit.DECISION_ACCEPTED:
            action = details.get("primary_action") or "?"
            accepted[action] = accepted.get(action, 0) + 1
        elif row["event"] == audit.DECISION_REFUSED:
            refused.append({"decision_id": row["entity_id"], "symbol": row["symbol"], "reason": row["reason"],
                            "action": details.get("primary_action"), "code": details.get("code")})
        else:
            held.append({"decision_id": row["entity_id"], "symbol": row["symbol"], "event": row["event"],
                         "reason": row["reason"]})
    waiting = db.execute_one('SELECT count(*) AS n FROM analysis_decision WHERE executed = false AND "Approve" = true')
    return {"total": len(rows), "by_outcome": dict(sorted(by_outcome.items())),
            "accepted_by_action": dict(sorted(accepted.items())), "refused": refused, "held": held,
            "waiting": int(waiting["n"]) if waiting else 0}


def _orders(db: Any, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    # Orders by the broker's submission time (the market's clock); intents never answered by their creation.
    rows = db.execute_query("SELECT order_type, order_status, count(*) AS n FROM order_execution "
                            "WHERE coalesce(submitted_at, created_at) >= %s "
                            "AND coalesce(submitted_at, created_at) < %s GROUP BY 1, 2 ORDER BY 1, 2", (start, end))
    fills = db.execute_one(
        "SELECT count(*) AS n, "
        "coalesce(sum(qty) FILTER (WHERE side = 'buy'), 0) AS bought_qty, "
        "coalesce(sum(qty * price) FILTER (WHERE side = 'buy'), 0) AS bought, "
        "coalesce(sum(qty) FILTER (WHERE side = 'sell'), 0) AS sold_qty, "
        "coalesce(sum(qty * price) FILTER (WHERE side = 'sell'), 0) AS sold, "
        "coalesce(sum(realized_pnl) FILTER (WHERE side = 'sell'), 0) AS realized "
        "FROM trade_fill WHERE filled_at >= %s AND filled_at < %s", (start, end)) or {}
    return {"total": sum(int(r["n"]) for r in rows),
            "by_type_status": {f"{r['order_type']} {r['order_status']}": int(r["n"]) for r in rows},
            "fills": int(fills.get("n") or 0), "bought_qty": Decimal(fills.get("bought_qty") or 0),
            "bought": money(Decimal(fills.get("bought") or 0)), "sold_qty": Decimal(fills.get("sold_qty") or 0),
            "sold": money(Decimal(fills.get("sold") or 0)), "realized_pnl": money(Decimal(fills.get("realized") or 0))}


def _closed(db: Any, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    trades = db.execute_query("SELECT * FROM trade_journal WHERE status = 'CLOSED' AND exit_date >= %s AND "
                              "exit_date < %s ORDER BY exit_date, id", (start, end))
    by_reason: dict[str, dict[str, Any]] = {}
    for trade in trades:
        item = by_reason.setdefault(trade["exit_reason"] or "?", {"count": 0, "pnl": ZERO})
        item["count"] += 1
        item["pnl"] += Decimal(trade["actual_pnl"] or 0)
    return {"count": len(trades), "pnl": money(sum((Decimal(t["actual_pnl"] or 0) for t in trades), ZERO)),
            "by_exit_reason": {reason: {"count": item["count"], "pnl": money(item["pnl"])}
                               for reason, item in sorted(by_reason.items())},
            "trades": [{"trade_id": t["id"], "symbol": t["symbol"], "qty": t["actual_qty"], "entry": t["actual_entry"],
                        "exit": t["exit_price"], "pnl": t["actual_pnl"], "exit_reason": t["exit_reason"]}
                       for t in trades]}


def _positions(db: Any) -> list[Row]:
    rows = db.execute_query(
        "SELECT p.*, (SELECT o.stop_price FROM order_execution o WHERE o.trade_journal_id = p.trade_journal_id "
        "AND o.order_type = 'STOP_LOSS' AND (o.alpaca_order_id = p.stop_loss_order_id OR o.order_status = ANY(%s)) "
        "ORDER BY (o.alpaca_order_id = p.stop_loss_order_id) DESC NULLS LAST, o.id DESC LIMIT 1) AS stop_price "
        "FROM position_tracking p ORDER BY p.symbol, p.trade_journal_id",
        (sorted(lifecycle.PROTECTING_ORDER_STATUSES),))
    return [{"trade_id": r["trade_journal_id"], "symbol": r["symbol"], "qty": r["qty"],
             "avg_entry_price": r["avg_entry_price"], "current_price": r["current_price"],
             "unrealized_pnl": r["unrealized_pnl"], "stop_price": r["stop_price"]} for r in rows]


def _equity(db: Any, day: dt.date, start: dt.datetime, end: dt.datetime, broker: Broker | None) -> dict[str, Any]:
    last = db.execute_one("SELECT * FROM portfolio_snapshot WHERE taken_at >= %s AND taken_at < %s AND equity IS NOT "
                          "NULL ORDER BY taken_at DESC, id DESC LIMIT 1", (start, end))
    before = db.execute_one("SELECT * FROM portfolio_snapshot WHERE taken_at < %s AND equity IS NOT NULL "
                            "ORDER BY taken_at DESC, id DESC LIMIT 1", (start,))
    if last is not None and before is not None:
        equity, previous = Decimal(last["equity"]), Decimal(before["equity"])
        return {"equity": equity, "previous": previous, "change": money(equity - previous),
                "source": f"portfolio_snapshot {last['id']} against {before['id']}"}
    if broker is not None:
        try:
            account = broker.get_account()
        except TransientError as exc:
            return {"source": f"no snapshots for both days and the broker is unavailable: {exc}"}
        if account.last_equity is not None:
            return {"equity": account.equity, "previous": account.last_equity,
                    "change": money(account.equity - account.last_equity),
                    "source": "broker account equity against last_equity"}
    return {"source": "no portfolio_snapshot of this day and of a day before it"}


def _runs(db: Any, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    rows = db.execute_query(f"SELECT outcome, count(*) AS n FROM program_run WHERE {RUN_TIME} >= %s AND "
                            f"{RUN_TIME} < %s GROUP BY 1 ORDER BY 1", (start, end))
    failed = db.execute_query(f"SELECT id, program, {RUN_TIME} AS started_at, error FROM program_run WHERE "
                              f"outcome = 'failed' AND {RUN_TIME} >= %s AND {RUN_TIME} < %s ORDER BY id", (start, end))
    return {"total": sum(int(r["n"]) for r in rows), "by_outcome": {r["outcome"]: int(r["n"]) for r in rows},
            "failed": [{"run_id": r["id"], "program": r["program"], "at": _at(r["started_at"]),
                        "error": r["error"]} for r in failed]}


def record_daily_report(db: Any, report: DailyReport, *, run_id: int | None = None, notify: bool = True,
                        resend: bool = False) -> int:
    """Store ``report`` (replacing the row of its date) and, with ``notify``, put it in the outbox
    in the same transaction: once per date, or again with ``resend``. Returns the row id."""
    c, o = report.closed, report.orders
    values = {
        "report_date": report.day, "generated_at": report.generated_at, "program_run_id": run_id,
        "decisions": report.decisions["total"], "decisions_refused": len(report.decisions["refused"]),
        "orders": o["total"], "fills": o["fills"], "trades_closed": c["count"], "realized_pnl": o["realized_pnl"],
        "open_positions": len(report.positions), "unrealized_pnl": report.unrealized_pnl,
        "equity": report.equity.get("equity"), "previous_equity": report.equity.get("previous"),
        "equity_change": report.equity.get("change"), "state_changes": len(report.state_changes),
        "breaker_trips": len(report.breaker_trips), "failed_runs": len(report.runs["failed"]),
        "figures": report.figures(), "body": report.text(),
    }
    columns = list(values)
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in columns if name != "report_date")
    with db.transaction():
        row = db.execute_one(
            f"INSERT INTO daily_report ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT (report_date) DO UPDATE SET {updates}, updated_at = now() RETURNING id",
            tuple(values[name] for name in columns))
        assert row is not None
        if notify:
            key = f"daily_report:{report.day}" + (f":{report.generated_at.isoformat()}" if resend else "")
            record_notification(db, NotificationKind.DAILY_REPORT, report.title(), values["body"], program=PROGRAM,
                                run_id=run_id, dedup_key=key)
    return int(row["id"])


def _market_time_or_wall_clock(broker: Broker) -> Callable[[], MarketTime]:
    """The broker's clock; while the broker is down, the machine's (a report reads the tables)."""
    def read() -> MarketTime:
        try:
            return read_market_time(broker)
        except TransientError as exc:
            logger.warning("%s: the broker's clock is unavailable (%s): using the machine's clock", PROGRAM, exc)
            now = dt.datetime.now(dt.UTC)
            return MarketTime(now=now, is_open=False, next_open=now, next_close=now, session=None)
    return read


class EndOfDayReport:
    """The report as a program (lock, ``program_run``, notifications sent at the end)."""

    name = PROGRAM

    def __init__(self, db: Any, broker: Broker, settings: Settings | None = None, *, day: dt.date | None = None,
                 clock: Callable[[], MarketTime] | None = None, notify: bool = True, resend: bool = False) -> None:
        self.db = db
        self.broker = broker
        self.settings = settings or load_settings()
        self.day = day
        self.clock = clock or _market_time_or_wall_clock(broker)
        self.notify = notify
        self.resend = resend
        self.report: DailyReport | None = None

    def run(self) -> RunSummary:
        return ProgramRunner(self, self.db, self.broker, self.settings, clock=self.clock).run()

    def execute(self, ctx: RunContext) -> None:
        day = self.day or ctx.market.trading_date
        self.report = build_daily_report(self.db, day, now=ctx.now, broker=self.broker)
        report_id = record_daily_report(self.db, self.report, run_id=ctx.audit.run_id, notify=self.notify,
                                        resend=self.resend)
        ctx.summary.add("reports")
        ctx.summary.notes.append(f"daily_report {report_id} for {day}")
        logger.info("%s: report for %s stored (daily_report %s)", PROGRAM, day, report_id)
