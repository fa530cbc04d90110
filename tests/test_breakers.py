"""trading.breakers: the system stops itself, on the real PostgreSQL and the paper exchange.

Each breaker is driven by what the programs really record: losses are the paper exchange's
account (equity against ``last_equity``), broker errors are faults the exchange answers with,
database errors are connections PostgreSQL really drops, findings are the position monitor's
own reconciliation. Each must trip on its figure and not just below it.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import order_executor
import order_monitor
import position_monitor
from alpaca_client import AlpacaBroker
from tests.factories import add_decision, make_settings
from tests.monitor_support import check_invariants, open_groups, open_position, place_entry
from trading import audit
from trading.audit import Auditor
from trading.breakers import BREAKER_CLEARED, BREAKER_TRIPPED, Breakers
from trading.broker import OrderRequest
from trading.program import ProgramRunner, RunContext, wall_clock
from trading.state import TradingMode, read_trading_state, record_trading_state
from trading.trades import TradeBook

D = Decimal
LIMITED = make_settings(DAILY_LOSS_LIMIT="2000")


def breakers(db: Any, settings=None) -> Breakers:
    return Breakers(db, settings or make_settings(), Auditor(db, "test_breakers"))


def trips(db: Any, breaker: str) -> list[dict]:
    return db.execute_query("SELECT * FROM audit_event WHERE event = %s AND details ->> 'breaker' = %s ORDER BY id",
                            (BREAKER_TRIPPED, breaker))


def mode(db: Any) -> TradingMode:
    return read_trading_state(db).mode_for()


def no_sleep(_seconds: float) -> None:
    return None


# --------------------------------------------------------------------------- daily loss


def lose(exchange: Any, broker: AlpacaBroker, amount: str) -> None:
    """Move the account's cash so that equity is exactly ``amount`` below the previous close."""
    account = broker.get_account()
    loss_now = account.last_equity - account.equity
    exchange.cash(account.cash - (D(amount) - loss_now))
    after = broker.get_account()
    assert after.last_equity - after.equity == D(amount)


def test_daily_loss_at_the_limit_flattens_the_account_and_not_a_cent_below(db, exchange, broker):
    trade = open_position(db, exchange, broker, settings=LIMITED)
    exchange.quotes(AAPL=("149.00", "149.10"))  # part of the loss is the open position's

    lose(exchange, broker, "1999.99")
    below = position_monitor.run_once(db, broker, settings=LIMITED, sleep=exchange.sleeper())
    assert mode(db) is TradingMode.ACTIVE and trips(db, "daily_loss") == []
    assert below.outcome == "success"

    lose(exchange, broker, "2000.00")
    at_limit = position_monitor.run_once(db, broker, settings=LIMITED, sleep=exchange.sleeper())

    state = read_trading_state(db).account
    assert (state.mode, state.source, state.changed_by) == (TradingMode.FLATTEN, "breaker:daily_loss", "breaker")
    assert state.reason.startswith("daily loss 2000.00 reached DAILY_LOSS_LIMIT 2000.00")
    [trip] = trips(db, "daily_loss")
    figures = trip["details"]
    assert (D(figures["loss"]), D(figures["limit"])) == (D("2000.00"), D("2000.00"))
    assert D(figures["last_equity"]) - D(figures["equity"]) == D("2000.00")
    assert figures["trading_date"] == "2026-11-20" and figures["state_changed"] is True
    assert at_limit.outcome == "warning" and any("breaker daily_loss tripped" in n for n in at_limit.notes)
    # and the operator is told, with the figures to the cent (written with the trip, sent after it)
    [message] = db.query("notification_outbox", {"kind": "breaker_tripped"})
    assert message["title"] == "Breaker tripped: daily_loss -> FLATTEN (the account)"
    assert message["body"].startswith("daily_loss: $2,000.00 against the limit $2,000.00. daily loss 2000.00 reached")

    # The order monitor's next run flattens everything by itself, then the account is HALTED.
    order_monitor.run_once(db, broker, settings=LIMITED, sleep=exchange.sleeper())
    assert exchange.positions() == {} and open_groups(broker) == []
    check_invariants(db, broker)
    closed = db.get_by_id("trade_journal", trade["id"])
    assert (closed["status"], closed["exit_reason"]) == ("CLOSED", "FLATTENED")
    assert mode(db) is TradingMode.HALTED

    # A reset by hand holds for the rest of the day: the same day's loss does not flatten again.
    record_trading_state(db, TradingMode.ACTIVE, reason="checked, trading on", changed_by="alice", confirm_reset=True)
    position_monitor.run_once(db, broker, settings=LIMITED, sleep=exchange.sleeper())
    assert mode(db) is TradingMode.ACTIVE and len(trips(db, "daily_loss")) == 1


def test_a_loss_reset_by_hand_does_not_trip_again_before_the_next_open_and_the_open_starts_afresh(
        db, exchange, broker):
    lose(exchange, broker, "2500.00")
    position_monitor.run_once(db, broker, settings=LIMITED, sleep=exchange.sleeper())
    assert mode(db) is TradingMode.FLATTEN and len(trips(db, "daily_loss")) == 1
    record_trading_state(db, TradingMode.ACTIVE, reason="checked, trading on", changed_by="alice", confirm_reset=True)

    # Saturday and Monday before the open: last_equity is still Thursday's close at the broker,
    # so Friday's loss must not count again for a new date.
    for moment in ("2026-11-21T15:00:00Z", "2026-11-23T12:00:00Z"):
        exchange.clock(moment)
        assert broker.get_account().last_equity - broker.get_account().equity == D("2500.00")
        position_monitor.run_once(db, broker, settings=LIMITED, sleep=exchange.sleeper())
        assert mode(db) is TradingMode.ACTIVE and len(trips(db, "daily_loss")) == 1, moment

    # Monday's open: Friday's close is the previous close, and Monday has lost nothing yet.
    exchange.clock("2026-11-23T14:35:00Z")
    position_monitor.run_once(db, broker, settings=LIMITED, sleep=exchange.sleeper())
    assert mode(db) is TradingMode.ACTIVE and len(trips(db, "daily_loss")) == 1
    lose(exchange, broker, "2000.00")
    position_monitor.run_once(db, broker, settings=LIMITED, sleep=exchange.sleeper())
    assert mode(db) is TradingMode.FLATTEN and trips(db, "daily_loss")[-1]["details"]["trading_date"] == "2026-11-23"


def test_daily_loss_is_checked_at_the_start_of_the_executor_and_its_decisions_are_held(db, exchange, broker):
    lose(exchange, broker, "2500.00")
    decision_id = add_decision(db, "AAPL")
    broker.calls.reset()

    summary = order_executor.run_once(db, broker, settings=LIMITED)

    assert mode(db) is TradingMode.FLATTEN
    assert summary.counts["held_back"] == 1 and "placed" not in summary.counts
    assert db.get_by_id("analysis_decision", decision_id)["executed"] is False
    assert "submit_order" not in broker.calls.counts
    assert broker.calls.counts["get_account"] == 1  # read once: the breaker's read serves the risk gate too


def test_an_idle_executor_run_reads_no_account_for_the_loss_breaker(db, exchange, broker):
    lose(exchange, broker, "2500.00")
    broker.calls.reset()
    order_executor.run_once(db, broker, settings=LIMITED)
    assert "get_account" not in broker.calls.counts and mode(db) is TradingMode.ACTIVE


def test_the_order_monitor_reads_the_account_for_the_loss_only_while_trades_hold_shares(db, exchange, broker):
    # Resting entries cannot lose money: the monitor's run costs no account read, and a loss
    # made outside the system is the position monitor's to catch after its valuation.
    resting = place_entry(db, broker, "AAPL", LIMITED)
    exchange.quotes(AAPL=("155.00", "155.10"))  # above the 150 limit: the entry rests
    lose(exchange, broker, "2500.00")
    broker.calls.reset()
    order_monitor.run_once(db, broker, settings=LIMITED, sleep=exchange.sleeper())
    assert "get_account" not in broker.calls.counts and mode(db) is TradingMode.ACTIVE
    assert db.get_by_id("trade_journal", resting["id"])["status"] == "ORDERED"
    position_monitor.run_once(db, broker, settings=LIMITED, sleep=exchange.sleeper())
    assert mode(db) is TradingMode.FLATTEN and len(trips(db, "daily_loss")) == 1


def test_the_order_monitor_trips_the_loss_at_its_start_when_trades_hold_shares(db, exchange, broker):
    trade = open_position(db, exchange, broker, settings=LIMITED)
    lose(exchange, broker, "2500.00")
    broker.calls.reset()
    order_monitor.run_once(db, broker, settings=LIMITED, sleep=exchange.sleeper())
    assert broker.calls.counts["get_account"] == 1
    assert len(trips(db, "daily_loss")) == 1
    # the trip applies to this very run: everything is flattened
    assert exchange.positions() == {} and db.get_by_id("trade_journal", trade["id"])["exit_reason"] == "FLATTENED"


# --------------------------------------------------------------------------- broker errors


def failing_run(db: Any, broker: AlpacaBroker, exchange: Any) -> None:
    """One order-monitor run whose first broker call (the clock) fails with a 503."""
    exchange.fault(method="GET", path="/v2/clock", status=503, count=1)
    summary = order_monitor.run_once(db, broker, settings=make_settings(), sleep=exchange.sleeper())
    assert summary.outcome == "warning" and summary.counts["broker_errors"] == 1
    assert db.get_by_id("program_run", summary.run_id)["counts"]["broker_errors"] == 1


def test_more_than_five_broker_errors_in_five_minutes_reduce_only_then_ten_quiet_minutes_make_it_active(
        db, exchange, broker):
    for _ in range(5):
        failing_run(db, broker, exchange)
    assert breakers(db).check_broker_errors(wall_clock()) is None  # five is not more than five
    assert mode(db) is TradingMode.ACTIVE

    failing_run(db, broker, exchange)
    trip = breakers(db).check_broker_errors(wall_clock())

    assert trip is not None and trip.changed
    state = read_trading_state(db).account
    assert (state.mode, state.source) == (TradingMode.REDUCE_ONLY, "breaker:broker_errors")
    last_error = db.execute_one("SELECT max(finished_at) AS at FROM program_run")["at"]
    assert state.resume_after == last_error + dt.timedelta(minutes=10)
    [row] = trips(db, "broker_errors")
    assert (row["details"]["errors"], row["details"]["limit"], row["details"]["window_minutes"]) == (6, 5, 5)
    assert row["reason"].startswith("6 broker errors in the last 5 minutes (more than 5)")

    # Not yet quiet for ten minutes: it stays; then it lifts itself.
    assert breakers(db).check_broker_errors(last_error + dt.timedelta(minutes=9, seconds=59)) is None
    assert mode(db) is TradingMode.REDUCE_ONLY
    cleared = breakers(db).check_broker_errors(last_error + dt.timedelta(minutes=10))
    assert cleared is not None and cleared.mode is TradingMode.ACTIVE
    assert mode(db) is TradingMode.ACTIVE
    [clear] = db.query("audit_event", {"event": BREAKER_CLEARED})
    assert clear["reason"] == "no broker error for 10 minutes: ACTIVE again"
    # Six errors still in the window at that moment (driven time) do not trip it again while quiet:
    assert breakers(db).check_broker_errors(last_error + dt.timedelta(minutes=10)) is None


def test_a_broker_error_in_the_quiet_time_starts_the_quiet_time_again(db, exchange, broker):
    for _ in range(6):
        failing_run(db, broker, exchange)
    breakers(db).check_broker_errors(wall_clock())
    first = read_trading_state(db).account.resume_after

    failing_run(db, broker, exchange)
    breakers(db).check_broker_errors(wall_clock())

    later = read_trading_state(db).account.resume_after
    last_error = db.execute_one("SELECT max(finished_at) AS at FROM program_run")["at"]
    assert later == last_error + dt.timedelta(minutes=10) and later > first
    assert breakers(db).check_broker_errors(first) is None and mode(db) is TradingMode.REDUCE_ONLY
    assert len(trips(db, "broker_errors")) == 1  # one trip; the state's resume_after moved


def test_the_broker_error_breaker_at_the_start_of_a_run_holds_that_runs_new_entries(db, exchange, broker):
    for _ in range(6):
        failing_run(db, broker, exchange)
    decision_id = add_decision(db, "AAPL")

    summary = order_executor.run_once(db, broker, settings=make_settings())

    assert summary.counts["held_back"] == 1
    assert "REDUCE_ONLY (account): 6 broker errors" in \
        db.query("audit_event", {"event": audit.DECISION_HELD})[0]["reason"]
    assert db.get_by_id("analysis_decision", decision_id)["executed"] is False


def test_the_breaker_never_lifts_a_reduce_only_a_person_set(db, exchange, broker):
    record_trading_state(db, TradingMode.REDUCE_ONLY, reason="my call", changed_by="alice")
    for _ in range(6):
        failing_run(db, broker, exchange)
    assert breakers(db).check_broker_errors(wall_clock()) is None
    assert breakers(db).check_broker_errors(wall_clock() + dt.timedelta(hours=1)) is None
    state = read_trading_state(db).account
    assert (state.mode, state.source, state.reason) == (TradingMode.REDUCE_ONLY, "manual", "my call")
    assert trips(db, "broker_errors") == []


# --------------------------------------------------------------------------- database errors


class DroppedConnectionBody:
    """A program whose connection PostgreSQL drops in the middle of its run (an outage)."""

    name = "test_breakers_db"

    def __init__(self, make_db: Any) -> None:
        self.killer = make_db()

    def execute(self, ctx: RunContext) -> None:
        pid = ctx.db.execute_one("SELECT pg_backend_pid() AS pid")["pid"]
        self.killer.execute_query("SELECT pg_terminate_backend(%s)", (pid,))
        ctx.db.execute_query("SELECT 1")  # the dropped connection: a database error


def dropped_connection_run(make_db: Any, broker: AlpacaBroker) -> None:
    program_db = make_db()
    summary = ProgramRunner(DroppedConnectionBody(make_db), program_db, broker, make_settings()).run()
    assert summary.outcome == "warning" and summary.counts["database_errors"] == 1, summary.as_dict()


def test_more_than_three_database_errors_in_a_minute_halt_trading_until_someone_resumes(db, make_db, exchange,
                                                                                         broker):
    for _ in range(3):
        dropped_connection_run(make_db, broker)
    recorded = db.execute_query("SELECT counts FROM program_run WHERE program = 'test_breakers_db'")
    assert [row["counts"]["database_errors"] for row in recorded] == [1, 1, 1]
    assert breakers(db).check_database_errors(wall_clock()) is None  # three is not more than three

    dropped_connection_run(make_db, broker)
    trip = breakers(db).check_database_errors(wall_clock())

    assert trip is not None and mode(db) is TradingMode.HALTED
    [row] = trips(db, "database_errors")
    assert (row["details"]["errors"], row["details"]["limit"], row["details"]["window_seconds"]) == (4, 3, 60)
    # Manual reset: a minute later the errors are out of the window, and it stays HALTED.
    assert breakers(db).check_database_errors(wall_clock() + dt.timedelta(minutes=2)) is None
    assert breakers(db).check_broker_errors(wall_clock() + dt.timedelta(hours=1)) is None
    assert mode(db) is TradingMode.HALTED


def test_database_errors_older_than_the_window_do_not_count(db, make_db, exchange, broker):
    for _ in range(4):
        dropped_connection_run(make_db, broker)
    first = db.execute_one("SELECT min(finished_at) AS at FROM program_run")["at"]
    # Seen from a moment when the first error is just over a minute old: three in the window.
    assert breakers(db).check_database_errors(first + dt.timedelta(seconds=60)) is None
    assert mode(db) is TradingMode.ACTIVE


# --------------------------------------------------------------------------- reconciliation


def buy_outside(exchange: Any, symbol: str, qty: int) -> None:
    person = AlpacaBroker(base_url=exchange.url, data_url=exchange.url, api_key="dashboard", secret_key="operator",
                          timeout=3)
    person.submit_order(OrderRequest(symbol=symbol, qty=D(qty), side="buy", kind="market", time_in_force="day",
                                     client_order_id=f"person-{symbol}-{qty}"))
    exchange.step()  # answered pending_new, filled at the exchange's next pass


def test_a_position_the_system_does_not_know_reduces_only_until_acknowledged(db, exchange, broker):
    open_position(db, exchange, broker)
    exchange.quotes(MSFT=("399.90", "400.00"))
    buy_outside(exchange, "MSFT", 5)

    summary = position_monitor.run_once(db, broker, settings=make_settings(), sleep=exchange.sleeper())

    state = read_trading_state(db).account
    assert (state.mode, state.source) == (TradingMode.REDUCE_ONLY, "breaker:reconciliation")
    assert "ORPHAN_POSITION MSFT" in state.reason
    [trip] = trips(db, "reconciliation")
    [message] = db.query("notification_outbox", {"kind": "breaker_tripped"})
    assert message["body"].startswith("reconciliation: 1 finding(s). reconciliation found a critical disagreement")
    [orphan] = db.query("audit_event", {"event": audit.ORPHAN_POSITION})
    assert trip["details"]["last_event_id"] == orphan["id"]
    assert trip["details"]["findings"][0]["symbol"] == "MSFT"
    assert summary.counts["orphans"] == 1

    # Acknowledged by a resume: the same finding does not trip again.
    record_trading_state(db, TradingMode.ACTIVE, reason="MSFT is mine, bought by hand", changed_by="alice")
    position_monitor.run_once(db, broker, settings=make_settings(), sleep=exchange.sleeper())
    order_monitor.run_once(db, broker, settings=make_settings(), sleep=exchange.sleeper())
    assert mode(db) is TradingMode.ACTIVE and len(trips(db, "reconciliation")) == 1

    # A new finding does.
    buy_outside(exchange, "MSFT", 3)
    position_monitor.run_once(db, broker, settings=make_settings(), sleep=exchange.sleeper())
    assert mode(db) is TradingMode.REDUCE_ONLY and len(trips(db, "reconciliation")) == 2


def test_an_outside_sale_is_booked_but_is_no_critical_disagreement(db, exchange, broker):
    trade = open_position(db, exchange, broker)
    person = AlpacaBroker(base_url=exchange.url, data_url=exchange.url, api_key="dashboard", secret_key="operator",
                          timeout=3)
    [stop] = db.query("order_execution", {"trade_journal_id": trade["id"], "order_type": "STOP_LOSS"})
    person.cancel_order(stop["alpaca_order_id"])  # the exchange cancels the whole bracket group
    exchange.step()  # the cancel completes (legs one pass after their parent)
    exchange.step()
    exchange.quotes(AAPL=("151.00", "151.10"))
    person.submit_order(OrderRequest(symbol="AAPL", qty=D(4), side="sell", kind="market", time_in_force="day",
                                     client_order_id="person-sell-4"))
    exchange.step()

    position_monitor.run_once(db, broker, settings=make_settings(), sleep=exchange.sleeper())

    assert db.query("audit_event", {"event": audit.QUANTITY_MISMATCH}) != []
    assert mode(db) is TradingMode.ACTIVE and trips(db, "reconciliation") == []


def test_a_short_or_a_sell_beyond_the_shares_held_trips_the_reconciliation_breaker(db):
    recorder = Auditor(db, "position_monitor")
    recorder.record("broker_position", None, audit.SHORT_POSITION, symbol="TSLA", new=D("-3"),
                    reason="broker holds a short position of -3 TSLA: a sell beyond the shares held")
    first = breakers(db).check_reconciliation()
    assert first is not None and mode(db) is TradingMode.REDUCE_ONLY

    record_trading_state(db, TradingMode.ACTIVE, reason="checked", changed_by="alice")
    from tests.test_trades import open_trade

    trade = open_trade(db, TradeBook(db, recorder), qty="5")
    with db.transaction():  # a sell of 6 booked on a position of 5, as the programs book a fill
        TradeBook(db, recorder).apply_exit_fill(trade, D("6"), D("151.00"), wall_clock(), "MANUAL_EXIT", "outside")
    recorder.record("trade", 8, audit.ORDER_ANOMALY, symbol="AAPL", reason="late fill, recorded")  # not critical
    second = breakers(db).check_reconciliation()

    assert second is not None and mode(db) is TradingMode.REDUCE_ONLY
    [_, trip] = trips(db, "reconciliation")
    assert [f["event"] for f in trip["details"]["findings"]] == ["ORDER_ANOMALY"]
    assert breakers(db).check_reconciliation() is None  # covered


def test_a_breaker_never_loosens_a_stricter_state(db):
    record_trading_state(db, TradingMode.HALTED, reason="my call", changed_by="alice")
    Auditor(db, "position_monitor").record("broker_position", None, audit.ORPHAN_POSITION, symbol="MSFT", new=5,
                                           reason="unknown")
    trip = breakers(db).check_reconciliation()
    assert trip is not None and not trip.changed  # recorded (and so acknowledged by the next resume)
    state = read_trading_state(db).account
    assert (state.mode, state.reason) == (TradingMode.HALTED, "my call")
