"""trading/daily_report.py and scripts/eod_report.py: the end-of-day report agrees with the tables.

One trading day on the real database and the paper exchange: three entries placed and filled,
one refused, a take-profit and a stop closing two trades, one position left open under its
stop, a trading-state change and a breaker trip recorded by a run, a failed run, and the
previous close in ``portfolio_snapshot``. Every figure of the report is then compared with the
tables, computed here by SQL of its own, to the cent.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest

from scripts import eod_report
from tests.factories import add_decision, eastern, make_settings
from tests.monitor_support import execute, open_position, run_monitor
from trading.daily_report import EndOfDayReport, build_daily_report, day_window
from trading.notify import dollars
from trading.program import ProgramRunner, RunContext
from trading.state import TradingMode, record_trading_state

FRIDAY = dt.date(2026, 11, 20)
ROOT = Path(__file__).resolve().parent.parent


class Body:
    """A run that does what the test says (a breaker's trip, a failure)."""

    name = "report_test_program"

    def __init__(self, action=None) -> None:
        self.action = action

    def execute(self, ctx: RunContext) -> None:
        if self.action:
            self.action(ctx)


def trip_breaker(ctx: RunContext) -> None:
    # What a circuit breaker does: its trip on the audit trail, and the state change, in its run.
    ctx.audit.record("account", None, "BREAKER_TRIPPED", reason="6 broker errors in 5 minutes (limit 5)",
                     details={"breaker": "broker_errors", "figure": 6, "limit": 5})
    record_trading_state(ctx.db, TradingMode.REDUCE_ONLY, reason="6 broker errors in 5 minutes", changed_by="breaker",
                         source="breaker:broker_errors", program=ctx.summary.program, run_id=ctx.audit.run_id)


def fail(ctx: RunContext) -> None:
    raise KeyError("missing column")


def a_trading_day(db, exchange, broker) -> dict:
    """The day described above; returns the trades by symbol and the refused decision's id."""
    db.insert("portfolio_snapshot", {"taken_at": dt.datetime.fromisoformat(eastern("2026-11-19", "18:15")),
                                     "cash": D("100000"), "positions_value": D("0"), "equity": D("100000.00"),
                                     "unrealized_pnl": D("0"), "realized_pnl_today": D("0"), "open_positions": 0})
    win = open_position(db, exchange, broker, "AAPL", fill_at=("149.70", "149.80"))
    loss = open_position(db, exchange, broker, "MSFT", planned_entry="412.37", planned_sl="405.11",
                         planned_tp="430", planned_qty=3, fill_at=("412.30", "412.37"))
    held = open_position(db, exchange, broker, "NVDA", planned_entry="135", planned_sl="130.5", planned_tp="150",
                         planned_qty=20, fill_at=("134.90", "135.00"))
    refused = add_decision(db, "AMZN", planned_sl=155)   # a stop above the entry: refused
    execute(db, broker)
    exchange.quotes(AAPL=("160.25", "160.30"), MSFT=("405.00", "405.06"), NVDA=("137.10", "137.20"))
    run_monitor(db, broker)
    import position_monitor

    assert position_monitor.run_once(db, broker, settings=make_settings()).outcome == "success"
    settings = make_settings()
    assert ProgramRunner(Body(trip_breaker), db, broker, settings).run().outcome == "success"
    assert ProgramRunner(Body(fail), db, broker, settings).run().outcome == "failed"
    return {"win": win, "loss": loss, "held": held, "refused": refused}


def test_the_report_of_a_day_agrees_with_the_tables_to_the_cent(db, exchange, broker):
    day = a_trading_day(db, exchange, broker)
    program = EndOfDayReport(db, broker, make_settings())
    summary = program.run()
    assert summary.outcome == "success" and summary.counts["reports"] == 1

    start = day_window(FRIDAY)[0]
    (row,) = db.query("daily_report")
    assert row["report_date"] == FRIDAY and row["program_run_id"] == summary.run_id
    # decisions: 3 placed, 1 refused with its recorded reason
    assert (row["decisions"], row["decisions_refused"]) == (4, 1)
    refusal = db.query("audit_event", {"event": "DECISION_REFUSED"})[0]
    assert row["figures"]["decisions"]["refused"] == [{"decision_id": day["refused"], "symbol": "AMZN",
                                                       "reason": refusal["reason"], "action": "NEW_TRADE",
                                                       "code": refusal["details"]["code"]}]
    assert row["figures"]["decisions"]["accepted_by_action"] == {"NEW_TRADE": 3}
    # orders and fills
    assert row["orders"] == db.execute_one("SELECT count(*) AS n FROM order_execution")["n"]
    fills = db.execute_one("SELECT count(*) AS n, sum(realized_pnl) FILTER (WHERE side = 'sell') AS pnl, "
                           "sum(qty * price) FILTER (WHERE side = 'buy') AS bought FROM trade_fill")
    assert row["fills"] == fills["n"] == 5
    assert row["realized_pnl"] == fills["pnl"].quantize(D("0.01"))
    assert D(row["figures"]["orders"]["bought"]) == fills["bought"] == D("1498.00") + D("1237.11") + D("2700.00")
    # trades closed, by exit reason
    closed = db.execute_query("SELECT exit_reason, count(*) AS n, sum(actual_pnl) AS pnl FROM trade_journal "
                              "WHERE status = 'CLOSED' GROUP BY 1 ORDER BY 1")
    assert {k: (v["count"], D(v["pnl"])) for k, v in row["figures"]["closed"]["by_exit_reason"].items()} == \
        {r["exit_reason"]: (r["n"], r["pnl"]) for r in closed}
    assert {r["exit_reason"] for r in closed} == {"PROFIT_TAKEN", "STOPPED_OUT"}
    assert row["trades_closed"] == 2 and D(row["figures"]["closed"]["pnl"]) == sum(r["pnl"] for r in closed)
    assert db.get_by_id("trade_journal", day["win"]["id"])["actual_pnl"] == D("104.50")
    # the open position and its stop
    (position,) = db.query("position_tracking")
    stop = db.execute_one("SELECT stop_price FROM order_execution WHERE alpaca_order_id = %s",
                          (position["stop_loss_order_id"],))
    assert row["open_positions"] == 1 and row["unrealized_pnl"] == position["unrealized_pnl"] == D("43.00")
    assert [(p["symbol"], D(p["qty"]), D(p["stop_price"])) for p in row["figures"]["positions"]] == \
        [("NVDA", D("20"), stop["stop_price"])]
    # equity against the previous close
    today = db.execute_one("SELECT equity FROM portfolio_snapshot WHERE taken_at >= %s ORDER BY id DESC LIMIT 1",
                           (start,))
    assert (row["equity"], row["previous_equity"]) == (today["equity"], D("100000.00"))
    assert row["equity_change"] == today["equity"] - D("100000.00")
    # the state change, the trip, the failed run
    assert (row["state_changes"], row["breaker_trips"], row["failed_runs"]) == (1, 1, 1)
    failed = db.query("program_run", {"outcome": "failed"})[0]
    assert row["figures"]["runs"]["failed"][0]["run_id"] == failed["id"]

    text = program.report.text()
    assert row["body"] == text
    for line in (f"Trades closed: 2, P&L {dollars(sum(r['pnl'] for r in closed), signed=True)}",
                 "  PROFIT_TAKEN: 1 trade(s), +$104.50",
                 f"  NVDA trade {day['held']['id']}: 20 @ $135.00, now $137.15, +$43.00; stop $130.50",
                 f"Equity: {dollars(today['equity'])} against $100,000.00 at the previous close: "
                 f"{dollars(row['equity_change'], signed=True)}",
                 f"  refused {day['refused']} AMZN NEW_TRADE: {refusal['reason']}",
                 "by breaker (breaker:broker_errors): 6 broker errors in 5 minutes",
                 "Breaker trips: 1",
                 f"  failed report_test_program run {failed['id']}"):
        assert line in text, line
    # sent through the notifications (here: recorded, no NOTIFY_URLS configured)
    (message,) = db.query("notification_outbox", {"kind": "daily_report"})
    assert message["body"] == text and message["title"].startswith("End of day 2026-11-20: closed P&L")


def test_running_the_report_again_replaces_the_days_row_and_sends_it_once(db, exchange, broker):
    open_position(db, exchange, broker)
    first = EndOfDayReport(db, broker, make_settings()).run()
    exchange.quotes(AAPL=("160.25", "160.30"))
    run_monitor(db, broker)
    second = EndOfDayReport(db, broker, make_settings()).run()

    (row,) = db.query("daily_report")
    assert row["program_run_id"] == second.run_id != first.run_id
    assert (row["trades_closed"], row["open_positions"]) == (1, 0)
    assert len(db.query("notification_outbox", {"kind": "daily_report"})) == 1

    EndOfDayReport(db, broker, make_settings(), resend=True).run()
    assert len(db.query("notification_outbox", {"kind": "daily_report"})) == 2


def test_without_snapshots_the_equity_change_comes_from_the_broker_account(db, exchange, broker):
    report = build_daily_report(db, FRIDAY, now=dt.datetime.now(dt.UTC), broker=broker)
    account = broker.get_account()
    assert report.equity["source"] == "broker account equity against last_equity"
    assert report.equity["change"] == (account.equity - account.last_equity).quantize(D("0.01"))


def test_a_manual_state_change_counts_on_the_day_it_was_made(db):
    record_trading_state(db, TradingMode.HALTED, reason="going on holiday", changed_by="alice")
    made = db.query("audit_event", {"event": "TRADING_STATE_CHANGED"})[0]["occurred_at"]
    from trading.market_time import eastern_date

    report = build_daily_report(db, eastern_date(made), now=made)
    assert [(s["old"], s["new"], s["by"], s["source"]) for s in report.state_changes] == \
        [("ACTIVE", "HALTED", "alice", "manual")]
    assert build_daily_report(db, eastern_date(made) - dt.timedelta(days=1), now=made).state_changes == []


def cli(exchange, *args: str) -> subprocess.CompletedProcess:
    """The command, as an operator runs it (TEST_DATABASE_URL is set by the pg_config fixture)."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "eod_report.py"), *args], cwd=ROOT,
                          env=dict(os.environ, ALPACA_BASE_URL=exchange.url), capture_output=True, text=True,
                          timeout=120)


def test_the_command_prints_the_report_of_the_date_and_stores_it(db, exchange, broker):
    open_position(db, exchange, broker)
    result = cli(exchange, "--test-mode", "--date", "2026-11-20")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("End-of-day report 2026-11-20")
    assert "Open positions: 1" in result.stdout and "stop $145.00" in result.stdout
    assert db.query("daily_report")[0]["body"] == result.stdout.rstrip("\n")
    result = cli(exchange, "--test-mode", "--date", "2026-11-19", "--no-send")
    assert result.returncode == 0 and "Trades closed: 0" in result.stdout
    assert len(db.query("daily_report")) == 2
    assert len(db.query("notification_outbox", {"kind": "daily_report"})) == 1


def test_a_bad_date_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        eod_report.main(["--date", "20-11-2026"])
    assert stop.value.code == 2 and "YYYY-MM-DD" in capsys.readouterr().err
