"""scripts/simulate_day.py: the simulated trading day end to end, short.

The short day is the early close after Thanksgiving (the market shuts at 13:00, so the
day-trade exit is at 12:50) with the monitors every 30 and 60 minutes; everything else is the
demo as ``make demo`` runs it, on the test database instead of the embedded demo database.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from decimal import Decimal

import pytest

from config import get_schedule_config
from db_layer import TradingDB
from scripts import simulate_day
from scripts.simulate_day import main, next_trading_day, run_day

EARLY_CLOSE = dt.date(2026, 11, 27)
SHORT = get_schedule_config({"ORDER_MONITOR_INTERVAL_MINUTES": "30", "POSITION_MONITOR_INTERVAL_MINUTES": "60"})


@pytest.fixture(scope="module")
def short_day(pg_config):
    out = io.StringIO()
    result = run_day(EARLY_CLOSE, seed=42, postgres=pg_config, schedule=SHORT, out=out)
    return result, out.getvalue()


def test_a_short_simulated_day_runs_the_schedule_end_to_end(short_day, pg_config):
    result, output = short_day
    assert "2026-11-27: 09:30-13:00 ET (early close)" in output
    assert "Day-trade exit at 12:50 ET" in output
    assert re.search(r"^09:45 ET  order_executor +success  decisions=11, placed=10, refused=1$", output, re.M)
    assert re.search(r"^12:50 ET  daytrade_exit ", output, re.M)
    assert re.search(r"^12:00 ET  order_executor \(demo extra\) +success  amended=1, cancelled=1, closing=1, "
                     r"decisions=3$",
                     output, re.M)
    assert result.runs["order_executor"] == 1 and result.runs["daytrade_exit"] == 1
    assert result.runs["order_monitor"] == 8  # 09:30-13:00 every 30 min: the session ends at the early close
    assert result.runs["position_monitor"] == 4  # 09:30, 10:30, 11:30, 12:30
    assert result.runs["order_monitor_evening"] == 1 and result.runs["position_monitor_evening"] == 1
    assert result.runs["eod_report"] == 1
    assert result.outcomes == {"success": sum(result.runs.values())}

    with TradingDB(config=pg_config) as db:
        trades = db.query("trade_journal", order_by="id")
        decisions = {row["id"]: row for row in db.query("analysis_decision")}
        events = db.query("audit_event", {"entity_type": "decision", "event": "DECISION_REFUSED"})
    # Every day trade is flat by the close; the swing trades keep their protection overnight.
    day_trades = [t for t in trades if t["trade_style"] == "DAYTRADE"]
    assert len(day_trades) == 2 and all(t["status"] == "CLOSED" for t in day_trades)
    assert {t["exit_reason"] for t in day_trades} <= {"DAY_END_EXIT", "STOPPED_OUT"}
    assert "DAY_END_EXIT" in {t["exit_reason"] for t in day_trades}
    by_reason = {t["exit_reason"] for t in trades if t["status"] == "CANCELLED"}
    assert by_reason == {"CANCEL_REQUESTED", "AMENDED"}
    # The malformed decision is refused with its reason; the unapproved one is left alone.
    assert [e["entity_id"] for e in events] == [result.decision_ids["malformed"]]
    assert decisions[result.decision_ids["unapproved"]]["executed"] is False
    # Each fill was booked once, by the listener or by a poll (the summary's count is the table's).
    fills = db_fills(pg_config)
    assert sum(fills.values()) == result.fills_recorded and fills.get("trade_stream", 0) > 0
    # The summary and the health check close the day; the database stays for SQL.
    assert "Decisions by outcome: amended (new trade placed) 1, cancelled 1, closing (exit placed) 1, " \
           "ignored (not approved) 1, placed 10, refused (INVALID_DECISION) 1" in output
    assert re.search(r"DAY_END_EXIT +1 ", output)
    assert "Realized P&L" in output and "Unrealized P&L" in output
    assert f"psql -h {pg_config.host} -p {pg_config.port} -U {pg_config.user} {pg_config.dbname}" in output
    health = output.split("Health check at 18:15 ET")[1]
    assert health.count("\n  OK ") == 11
    # the end-of-day report ran at 16:30 and is stored (sent once NOTIFY_URLS names a service)
    assert re.search(r"^16:30 ET  eod_report +success  reports=1$", output, re.M)
    assert output.rstrip().endswith('Next: run the programs yourself, step by step: README.md, '
                                    '"Running the programs by hand".') or "make console" in output.splitlines()[-1]


def _dollars(text: str) -> Decimal:
    sign = -1 if text.startswith("-") else 1
    return sign * Decimal(text.lstrip("+-$").replace(",", ""))


def db_fills(pg_config) -> dict[str, int]:
    with TradingDB(config=pg_config) as db:
        rows = db.execute_query("SELECT program, count(*) AS n FROM audit_event WHERE event = 'ORDER_FILL' GROUP BY 1")
    return {r["program"]: int(r["n"]) for r in rows}


def test_the_hourly_lines_add_up_and_prices_show_their_tick(short_day):
    _, output = short_day
    hourly = re.findall(r"equity \$([\d,.]+) = start \$([\d,.]+) \+ realized ([+-]\$[\d,.]+) "
                        r"\+ unrealized ([+-]\$[\d,.]+)(?:, not yet booked ([+-]\$[\d,.]+))?;", output)
    assert len(hourly) == 4  # 10:00, 11:00, 12:00, 13:00 (the close)
    for equity, start, realized, unrealized, unbooked in hourly:
        assert _dollars("$" + equity) == _dollars("$" + start) + _dollars(realized) + _dollars(unrealized) + (
            _dollars(unbooked) if unbooked else 0)
    prices = re.findall(r"(?:@|limit|stop|target) (\d+(?:\.\d+)?)", output)
    assert prices and all(re.fullmatch(r"\d+\.\d{2,}", price) for price in prices), prices


def test_next_steps_name_make_console_only_once_it_exists(tmp_path):
    (tmp_path / "Makefile").write_text("demo:\n\ttrue\n")
    assert [line for line in simulate_day.next_steps(tmp_path) if "make console" in line] == []
    (tmp_path / "Makefile").write_text("demo:\n\ttrue\nconsole: $(STAMP)\n\ttrue\n")
    assert simulate_day.next_steps(tmp_path)[-1] == "Or look at this day in the operator console: make console"


def _story(output: str) -> str:
    """The output without what differs between runs (wall time, the exchange's port, how many
    events the stream's watcher coalesced)."""
    return "\n".join(line for line in output.splitlines()
                     if "Wall time" not in line and "127.0.0.1:" not in line and " trade_stream " not in line)


def test_the_same_seed_repeats_the_same_day(short_day, pg_config):
    _, first = short_day
    again = io.StringIO()
    run_day(EARLY_CLOSE, seed=42, postgres=pg_config, schedule=SHORT, out=again)
    assert _story(again.getvalue()) == _story(first)
    other = io.StringIO()
    run_day(EARLY_CLOSE, seed=7, postgres=pg_config, schedule=SHORT, out=other)
    assert _story(other.getvalue()) != _story(first)


def test_a_holiday_or_weekend_is_refused_with_the_next_trading_day(capsys):
    assert main(["--date", "2026-11-26"]) == 2
    assert "2026-11-26 is not a trading day (an NYSE holiday)" in capsys.readouterr().err
    assert main(["--date", "2026-11-28"]) == 2
    error = capsys.readouterr().err
    assert "a weekend day" in error and "The next trading day is 2026-11-30" in error
    with pytest.raises(SystemExit):
        main(["--date", "27/11/2026"])
    with pytest.raises(ValueError, match="not a trading day"):
        run_day(dt.date(2026, 11, 26), postgres=simulate_day.demo_postgres_config())


def test_the_default_day_is_today_or_the_next_trading_day():
    assert next_trading_day(dt.date(2026, 11, 20)) == dt.date(2026, 11, 20)
    assert next_trading_day(dt.date(2026, 11, 26)) == dt.date(2026, 11, 27)
    assert next_trading_day(dt.date(2026, 11, 28)) == dt.date(2026, 11, 30)


def test_the_demo_uses_its_own_database_of_the_embedded_cluster():
    config = simulate_day.demo_postgres_config()
    assert config.dbname == "trading_monitor_demo" and config.host == "127.0.0.1" and config.embedded


def test_a_whole_day_on_the_default_schedule_never_moves_the_clock_back(pg_config):
    """The day-trade exit's waits passed the simulated clock beyond 15:50:00, and the order
    monitor due at 15:50 then asked the exchange to move back: the demo died with a traceback."""
    out = io.StringIO()
    result = run_day(dt.date(2026, 11, 20), seed=42, postgres=pg_config, out=out)
    assert result.runs["daytrade_exit"] == 1 and result.runs["order_monitor"] >= 78
    assert result.outcomes == {"success": sum(result.runs.values())}
    assert re.search(r"^15:50 ET  daytrade_exit +success", out.getvalue(), re.M)


def test_the_demo_shows_a_trailing_stop_an_escalating_exit_and_who_recorded_the_fills(short_day, pg_config):
    """Issue 14's demo: META's stop follows its high; the CLOSE of AAPL walks from the mid to the
    bid in the thinned market; the listener records fills beside the programs."""
    result, output = short_day
    raises = re.findall(r"trade \d+ META: stop raised: trailing stop: high [\d.]+, stop ([\d.]+) -> ([\d.]+)", output)
    assert raises and all(Decimal(new) > Decimal(old) for old, new in raises)
    assert [Decimal(new) for _, new in raises] == sorted(Decimal(new) for _, new in raises)  # upward only
    assert re.search(r"trade 1 AAPL SWING: closing, a NORMAL exit: limit [\d.]+ first", output)
    steps = re.findall(r"trade 1 AAPL: exit step: NORMAL exit step (\d): limit ([\d.]+)", output)
    assert [int(n) for n, _ in steps][:2] == [1, 2] and Decimal(steps[0][1]) > Decimal(steps[1][1])  # toward the bid
    recorded = re.search(r"^Fills recorded: (\d+) by the trade-updates stream, (\d+) by polling", output, re.M)
    assert recorded is not None and int(recorded.group(1)) > 0
    assert int(recorded.group(1)) + int(recorded.group(2)) == result.fills_recorded


def test_a_loss_day_flattens_the_account_by_itself_and_the_report_and_notifications_say_so(pg_config):
    """Issue 13: a loss beyond the limit in the simulated day flattens the account by itself."""
    out = io.StringIO()
    run_day(EARLY_CLOSE, seed=42, postgres=pg_config, schedule=SHORT, out=out, loss_day=True)
    output = out.getvalue()
    assert re.search(r"^12:30 ET  crash: 10 symbols fall 1.5 % at once$", output, re.M)
    with TradingDB(config=pg_config) as db:
        assert db.query("trade_journal", {"status": "POSITION"}) == []
        flattened = db.query("trade_journal", {"exit_reason": "FLATTENED"})
        state = db.query("trading_state")[0]
        kinds = {r["kind"] for r in db.query("notification_outbox")}
        [report] = db.query("daily_report")
    assert flattened and (state["mode"], state["source"]) == ("HALTED", "breaker:daily_loss")
    assert {"breaker_tripped", "trading_state_changed", "daily_report"} <= kinds
    assert "Breaker trips: 1" in report["body"]
    assert "ACTIVE -> FLATTEN by breaker (breaker:daily_loss)" in report["body"]
    assert "The end-of-day report (daily_report, sent through the notifications) says:" in output
    assert "breaker_tripped 1" in output
