"""trading/notify.py: notifications recorded with their change and sent once, over real HTTP.

The receiving service is a JSON webhook on 127.0.0.1 (tests/notification_receiver.py), reached
through apprise's ``json://`` exactly as a real service would be. Crashes are real: a program
run in a child process is killed (before its delivery step, or by the receiver right after the
message arrived), and the next run in this process finishes the job.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest

from tests.factories import add_decision, make_settings
from tests.monitor_support import execute, open_position, place_entry, run_monitor
from tests.notification_receiver import NotificationReceiver, closed_port_url
from trading import notify
from trading.logs import make_handler
from trading.notify import NotificationKind, deliver_notifications, dollars, record_breaker_trip, record_notification
from trading.program import ProgramRunner, RunContext, register_secrets
from trading.state import TradingMode, record_trading_state

ROOT = Path(__file__).resolve().parent.parent


def outbox(db, **where):
    return db.query("notification_outbox", where, order_by="id")


def settings_for(*urls: str, **env):
    return make_settings(NOTIFY_URLS=",".join(urls), **env)


# --------------------------------------------------------------------------- what is recorded


def test_an_entry_placed_is_recorded_with_the_decision_and_sent_once_after_the_commit(db, broker):
    with NotificationReceiver() as receiver:
        settings = settings_for(receiver.url)
        trade = place_entry(db, broker, settings=settings, planned_entry="150.5", planned_qty=7)

        (row,) = outbox(db)
        assert (row["kind"], row["status"], row["attempts"], row["trade_journal_id"], row["decision_id"]) == \
            ("entry_placed", "sent", 1, trade["id"], trade["initial_analysis_id"])
        assert row["title"] == "Entry placed: buy 7 AAPL limit $150.50"
        assert "stop $145.00, target $160.00, notional $1,053.50" in row["body"]
        assert row["sent_at"] is not None and row["last_error"] is None
        assert row["delivered_to"] == [notify.destinations(settings.notify)[0].label]
        assert receiver.titles() == ["Entry placed: buy 7 AAPL limit $150.50"]

        run_monitor(db, broker, settings)  # a later run has nothing more to send
        assert receiver.titles() == ["Entry placed: buy 7 AAPL limit $150.50"]


def test_an_entry_fill_and_a_take_profit_exit_are_told_with_their_prices_and_pnl_to_the_cent(db, exchange, broker):
    with NotificationReceiver() as receiver:
        settings = settings_for(receiver.url)
        trade = open_position(db, exchange, broker, settings=settings, fill_at=("149.70", "149.80"))
        exchange.quotes(AAPL=("160.25", "160.30"))
        run_monitor(db, broker, settings)

    assert [row["kind"] for row in outbox(db)] == ["entry_placed", "entry_filled", "exit_filled"]
    assert all(row["status"] == "sent" for row in outbox(db))
    assert receiver.titles() == ["Entry placed: buy 10 AAPL limit $150.00", "Entry filled: 10 AAPL @ $149.80",
                                 "Exit filled: AAPL +$104.50 (PROFIT_TAKEN)"]
    exit_row = outbox(db, kind="exit_filled")[0]
    closed = db.get_by_id("trade_journal", trade["id"])
    assert closed["actual_pnl"] == D("104.50")
    assert exit_row["body"] == (f"trade {trade['id']} (SWING): 10 AAPL bought at $149.80, sold at $160.25; "
                                "P&L +$104.50, exit reason PROFIT_TAKEN")
    assert "cost $1,498.00" in outbox(db, kind="entry_filled")[0]["body"]


def test_a_refused_decision_is_told_with_its_reason(db, broker):
    decision_id = add_decision(db, "AAPL", planned_sl=155)  # a stop above the entry
    execute(db, broker)

    (row,) = outbox(db)
    assert (row["kind"], row["decision_id"], row["symbol"]) == ("decision_refused", decision_id, "AAPL")
    assert row["title"] == f"Decision {decision_id} refused: AAPL NEW_TRADE"
    refusal = db.query("audit_event", {"event": "DECISION_REFUSED"})[0]
    assert row["body"].startswith(refusal["reason"]) and row["audit_event_id"] == refusal["id"]
    assert row["status"] == "not_configured"  # no NOTIFY_URLS: recorded, nothing sent


def test_a_repaired_protection_is_told_with_its_new_stop(db, exchange, broker):
    from tests.test_order_monitor import rows

    trade = open_position(db, exchange, broker, trade_style="DAYTRADE", planned_tp=None, planned_qty=7)
    broker.cancel_order(rows(db, trade["id"], "STOP_LOSS")[0]["alpaca_order_id"])
    run_monitor(db, broker)

    (row,) = outbox(db, kind="protection_repaired")
    assert row["title"] == f"Protection repaired: AAPL trade {trade['id']}"
    assert "placed stop for 7" in row["body"] and row["body"].endswith("stop $145.00")


def test_a_trading_state_change_is_recorded_in_its_transaction_and_rolled_back_with_it(db):
    record_trading_state(db, TradingMode.HALTED, reason="broker outage", changed_by="alice")
    (row,) = outbox(db)
    assert (row["kind"], row["title"]) == ("trading_state_changed", "Trading state account: ACTIVE -> HALTED")
    assert row["body"] == "account: ACTIVE -> HALTED by alice (manual): broker outage"

    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.transaction():
        record_trading_state(db, TradingMode.REDUCE_ONLY, reason="calmer", changed_by="bob", confirm_reset=True,
                             scope="MSFT")
        raise Boom
    assert len(outbox(db)) == 1 and db.query("trading_state", {"scope": "MSFT"}) == []


def test_a_breaker_trip_shows_money_to_the_cent_and_counts_as_counts(db):
    record_breaker_trip(db, "daily loss", figure_value=D("-2000.005"), limit=D("2000"), new_mode="FLATTEN",
                        reason="realized and unrealized since the open beyond DAILY_LOSS_LIMIT")
    record_breaker_trip(db, "broker errors", figure_value=6, limit=5, new_mode="REDUCE_ONLY",
                        reason="more than 5 broker errors in 5 minutes", scope="AAPL")
    loss, errors = outbox(db)
    assert loss["title"] == "Breaker tripped: daily loss -> FLATTEN (the account)"
    assert loss["body"].startswith("daily loss: -$2,000.01 against the limit $2,000.00.")
    assert errors["body"].startswith("broker errors: 6 against the limit 5.") and errors["symbol"] == "AAPL"


@pytest.mark.parametrize(("amount", "signed", "text"), [
    (D("1234.5"), False, "$1,234.50"), (D("-0.005"), False, "-$0.01"), (D("0.004"), True, "$0.00"),
    (D("102.5"), True, "+$102.50"), (D("-16.66"), True, "-$16.66"), (None, False, "n/a")])
def test_money_in_messages_is_shown_to_the_cent(amount, signed, text):
    assert dollars(amount, signed=signed) == text


# --------------------------------------------------------------------------- exactly once across crashes

CHILD = r"""
import os, sys
from alpaca_client import AlpacaBroker
from db_layer import TradingDB
from tests.factories import make_settings
import order_executor
import trading.program

stage, exchange_url, notify_url = sys.argv[1:4]
if stage == "before-send":
    # The process dies at the moment its delivery step would start: everything is committed.
    trading.program.deliver_notifications = lambda *args, **kwargs: os._exit(17)
db = TradingDB(test_mode=True)
db.connect()
broker = AlpacaBroker(base_url=exchange_url, data_url=exchange_url, timeout=5)
order_executor.run_once(db, broker, settings=make_settings(NOTIFY_URLS=notify_url))
os._exit(0)
"""


def run_child(stage: str, exchange_url: str, notify_url: str, receiver: NotificationReceiver | None = None) -> int:
    process = subprocess.Popen([sys.executable, "-c", CHILD, stage, exchange_url, notify_url], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    if receiver is not None:
        receiver.kill_pid = process.pid
    return process.wait(timeout=120)


def test_a_crash_between_the_commit_and_the_send_sends_it_on_the_next_run_exactly_once(db, exchange, broker):
    decision_id = add_decision(db, "AAPL")
    with NotificationReceiver() as receiver:
        assert run_child("before-send", exchange.url, receiver.url) == 17
        (row,) = outbox(db)
        assert (row["kind"], row["status"], row["attempts"], row["decision_id"]) == \
            ("entry_placed", "pending", 0, decision_id)
        assert receiver.received == []

        settings = settings_for(receiver.url)
        run_monitor(db, broker, settings)   # the next run of any program sends it
        run_monitor(db, broker, settings)   # and the one after sends nothing more

        assert receiver.titles() == ["Entry placed: buy 10 AAPL limit $150.00"]
        assert [(r["status"], r["attempts"]) for r in outbox(db)] == [("sent", 1)]


def test_a_crash_after_the_message_arrived_is_not_sent_twice_and_shows_as_unknown(db, exchange, broker, caplog):
    add_decision(db, "AAPL")
    with NotificationReceiver(mode="kill") as receiver:
        assert run_child("after-send", exchange.url, receiver.url, receiver) == -9   # killed by the receiver
        assert receiver.titles() == ["Entry placed: buy 10 AAPL limit $150.00"]
        (row,) = outbox(db)
        # the attempt was recorded before the network call
        assert (row["status"], row["attempts"], row["sent_at"]) == ("sending", 1, None)

        receiver.mode = "ok"
        settings = settings_for(receiver.url)
        caplog.set_level(logging.WARNING)
        run_monitor(db, broker, settings)
        run_monitor(db, broker, settings)

        assert receiver.requests == 1   # never sent again
        (row,) = outbox(db)
        assert (row["status"], row["attempts"]) == ("unknown", 1)
        assert "not resent" in row["last_error"]
        assert "marked unknown, not resent" in caplog.text


# --------------------------------------------------------------------------- services that are down


def test_a_service_that_is_down_does_not_fail_the_run_and_the_message_stays_undelivered(db, broker):
    url = closed_port_url()
    settings = settings_for(url)
    register_secrets(settings)   # as every program does at start
    lines = io.StringIO()
    handler = make_handler(lines)   # the programs' own log handler, at DEBUG: apprise names URLs there
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logging.getLogger("apprise").setLevel(logging.DEBUG)
    try:
        add_decision(db, "AAPL")
        summary = execute(db, broker, settings)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        logging.getLogger("apprise").setLevel(logging.WARNING)

    assert summary.outcome == "success" and summary.counts["placed"] == 1
    (row,) = outbox(db)
    assert (row["status"], row["attempts"], row["delivered_to"]) == ("pending", 1, [])
    assert row["next_attempt_at"] > row["last_attempt_at"] and "Connection error" in row["last_error"]
    assert any("notifications: retry 1" in note for note in summary.notes)

    run_monitor(db, broker, settings)   # before its retry time: not tried again
    assert outbox(db)[0]["attempts"] == 1
    # The URL is a secret: not in the logs, not in the table.
    secret = url.split("/hooks/")[1]
    assert "Loaded JSON URL" in lines.getvalue() and "/hooks/***" in lines.getvalue()
    assert secret not in lines.getvalue() and secret not in str(db.query("notification_outbox"))


def test_a_service_that_does_not_answer_in_time_is_marked_unknown_and_not_resent(db):
    with NotificationReceiver(mode="hang") as receiver:
        receiver.hang_seconds = 3
        config = settings_for(receiver.url, NOTIFY_TIMEOUT_SECONDS=1).notify
        with db.transaction():
            record_notification(db, NotificationKind.RUN_FAILED, "order_monitor: run 9 failed", "boom")

        first = deliver_notifications(db, config)
        later = deliver_notifications(db, config, clock=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=1))

    assert (first.unknown, later.unknown, later.sent) == (1, 0, 0)
    (row,) = outbox(db)
    assert (row["status"], row["attempts"]) == ("unknown", 1) and "no answer within 1 s" in row["last_error"]
    assert receiver.requests == 1


def test_an_error_answer_is_retried_with_backoff_and_given_up_after_the_last_attempt(db):
    with NotificationReceiver(mode="error") as receiver:
        config = settings_for(receiver.url, NOTIFY_MAX_ATTEMPTS=2).notify
        record_notification(db, NotificationKind.RUN_FAILED, "order_monitor: run 9 failed", "boom")
        now = dt.datetime.now(dt.UTC)

        assert deliver_notifications(db, config, clock=lambda: now).retry == 1
        assert deliver_notifications(db, config, clock=lambda: now).retry == 0   # not due yet
        assert deliver_notifications(db, config, clock=lambda: now + dt.timedelta(minutes=2)).failed == 1
        assert deliver_notifications(db, config, clock=lambda: now + dt.timedelta(days=1)).failed == 0

    (row,) = outbox(db)
    assert (row["status"], row["attempts"]) == ("failed", 2) and receiver.requests == 2


def test_with_two_services_a_retry_goes_only_to_the_one_that_missed_it(db):
    with NotificationReceiver() as first, NotificationReceiver(mode="error") as second:
        config = settings_for(first.url, second.url).notify
        record_notification(db, NotificationKind.DAILY_REPORT, "End of day", "report")
        now = dt.datetime.now(dt.UTC)
        deliver_notifications(db, config, clock=lambda: now)
        assert (outbox(db)[0]["status"], len(first.received), second.requests) == ("pending", 1, 1)

        second.mode = "ok"
        deliver_notifications(db, config, clock=lambda: now + dt.timedelta(minutes=2))

    (row,) = outbox(db)
    assert row["status"] == "sent" and len(row["delivered_to"]) == 2
    assert (len(first.received), len(second.received)) == (1, 1)


def test_without_notify_urls_nothing_is_sent_and_the_rows_say_so(db):
    record_notification(db, NotificationKind.RUN_FAILED, "order_monitor: run 9 failed", "boom")
    report = deliver_notifications(db, make_settings().notify)
    assert report.not_configured == 1
    assert [(r["status"], r["attempts"]) for r in outbox(db)] == [("not_configured", 0)]


def test_a_dedup_key_records_one_notification(db):
    assert record_notification(db, "daily_report", "a", "b", dedup_key="daily_report:2026-11-20") is not None
    assert record_notification(db, "daily_report", "a", "b", dedup_key="daily_report:2026-11-20") is None
    assert len(outbox(db)) == 1


# --------------------------------------------------------------------------- runs


class Body:
    name = "notify_test_program"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def execute(self, ctx: RunContext) -> None:
        if self.fail:
            raise KeyError("missing")


def test_the_first_failed_run_of_a_series_is_told_once(db, broker):
    settings = make_settings()
    runs = [ProgramRunner(Body(fail), db, broker, settings).run() for fail in (True, True, False, True)]
    assert [s.outcome for s in runs] == ["failed", "failed", "success", "failed"]
    told = outbox(db, kind="run_failed")
    assert [r["program_run_id"] for r in told] == [runs[0].run_id, runs[3].run_id]
    assert told[0]["title"] == f"notify_test_program: run {runs[0].run_id} failed" and "KeyError" in told[0]["body"]


def test_runs_skipped_in_a_row_for_a_held_lock_are_told_once_at_the_threshold(db, broker, make_db):
    settings = make_settings(NOTIFY_SKIPPED_RUNS=3)
    other = make_db()
    with other.advisory_lock(Body.name) as taken:
        assert taken
        outcomes = [ProgramRunner(Body(), db, broker, settings).run().outcome for _ in range(4)]
    assert outcomes == ["skipped"] * 4
    (row,) = outbox(db)
    assert (row["kind"], row["title"]) == ("runs_skipped", "notify_test_program: 3 runs in a row skipped")

    assert ProgramRunner(Body(), db, broker, settings).run().outcome == "success"   # the series ends
    with other.advisory_lock(Body.name):
        for _ in range(3):
            ProgramRunner(Body(), db, broker, settings).run()
    assert len(outbox(db, kind="runs_skipped")) == 2


def test_a_standby_whose_twin_keeps_finishing_its_runs_is_not_told_it_is_stuck(db, broker, make_db):
    settings = make_settings(NOTIFY_SKIPPED_RUNS=3)
    twin = make_db()
    with twin.advisory_lock(Body.name) as taken:
        assert taken
        for _ in range(5):
            assert ProgramRunner(Body(), db, broker, settings).run().outcome == "skipped"
            # the twin scheduler's run, which held the lock, finishes before the next fire time
            twin.insert("program_run", {"program": Body.name, "outcome": "success",
                                        "finished_at": dt.datetime.now(dt.UTC)})
    assert outbox(db, kind="runs_skipped") == []
