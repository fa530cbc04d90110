"""trade_stream.py: the trade-updates listener against the paper exchange's websocket, on PostgreSQL.

The exchange here serves its stream (``stream_port=0``); alpaca-py's ``TradingStream`` connects to
it through ``alpaca_client.TradeUpdateStream``. Waits are bounded (a deadline, then a failure with
what was seen), never a sleep that hopes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from alpaca_client import AlpacaBroker, TradeUpdateStream, parse_order
from paper_exchange import PaperExchange
from paper_exchange.server import start_server
from tests.factories import FRIDAY_0945, ExchangeAdmin, make_settings
from tests.monitor_support import check_invariants, place_entry, rows, run_monitor
from trade_stream import RecordOutcome, StreamRecorder, TradeStreamListener
from trading.broker import TradeUpdate

DEADLINE = 10.0


def wait_for(condition: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    """Poll ``condition`` until it is truthy or the deadline passes (then fail saying ``what``)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {deadline:g}s: {what}")


@pytest.fixture
def streaming():
    """A paper exchange that serves the trade-updates stream, and a broker on it."""
    handle = start_server(exchange=PaperExchange(seed=7, simulated_clock=True, start_time=FRIDAY_0945,
                                                 price_simulation=False), stream_port=0)
    # A running exchange takes matching passes by itself: acknowledgements, fills and cancels
    # complete while the listener works (the simulated clock does not move).
    stop = threading.Event()

    def pump() -> None:
        while not stop.wait(0.05):
            handle.exchange.advance(0)

    pumping = threading.Thread(target=pump, daemon=True)
    pumping.start()
    try:
        yield handle, ExchangeAdmin(handle.url), AlpacaBroker(base_url=handle.url, data_url=handle.url, timeout=3)
    finally:
        stop.set()
        pumping.join(timeout=5)
        handle.stop()


@pytest.fixture
def listening(db, streaming, make_db) -> Iterator[tuple[TradeStreamListener, Any, ExchangeAdmin, AlpacaBroker]]:
    """The listener running in a thread on its own connection, connected to the stream."""
    handle, admin, broker = streaming
    listener = TradeStreamListener(make_db(), AlpacaBroker(base_url=handle.url, timeout=3), make_settings())
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(listener.connected.is_set, "the listener connects and listens")
        yield listener, handle, admin, broker
    finally:
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive(), "the listener did not stop when asked"


def test_the_exchange_speaks_alpacas_stream_protocol_to_alpaca_py(streaming):
    handle, admin, broker = streaming
    events: list[TradeUpdate] = []
    stream = TradeUpdateStream(broker, events.append, on_connect=lambda: None)
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: handle.stream.events_published >= 0 and stream._stream._running, "alpaca-py connects")
        admin.quotes(AAPL=("149.90", "150.00"))
        order = broker.submit_order(_market_buy("AAPL", "5", "stream-proto-1"))
        wait_for(lambda: any(e.event == "fill" for e in events), f"a fill event (saw {[e.event for e in events]})")
    finally:
        stream.stop()
        thread.join(timeout=10)
    fill = next(e for e in events if e.event == "fill")
    assert fill.order.id == order.id and fill.order.status == "filled"
    assert (fill.qty, fill.price, fill.position_qty) == (Decimal("5"), Decimal("150"), Decimal("5"))


def test_a_client_with_no_keys_is_refused_by_the_stream(streaming):
    handle, _admin, _broker = streaming
    from websockets.sync.client import connect

    with connect(handle.stream.url) as ws:
        ws.send('{"action": "authenticate", "data": {"key_id": "", "secret_key": ""}}')
        assert '"unauthorized"' in ws.recv(timeout=5)


def test_listener_records_an_entry_fill_and_protects_it_before_any_monitor_run(listening, db):
    _listener, _handle, admin, broker = listening
    trade = place_entry(db, broker, "AAPL", planned_entry=150, planned_sl=145, planned_tp=160)
    admin.quotes(AAPL=("149.90", "150.00"))  # the limit entry fills

    wait_for(lambda: db.get_by_id("trade_journal", trade["id"])["status"] == "POSITION",
             "the trade becomes a POSITION from the stream alone")
    entry = rows(db, trade["id"], "ENTRY")[0]
    assert (entry["order_status"], entry["filled_qty"], entry["filled_avg_price"]) == ("filled", 10, Decimal("150"))
    assert db.query("trade_fill", {"trade_journal_id": trade["id"]})[0]["price"] == Decimal("150")
    check_invariants(db, broker)  # the position has its stop, exactly as after a monitor run
    events = db.query("audit_event", {"entity_type": "order", "entity_id": entry["id"]})
    assert "trade_stream" in {e["program"] for e in events}

    summary = run_monitor(db, broker)  # the poll finds nothing left to do
    assert summary.counts.get("fills", 0) == 0 and summary.counts.get("orders_updated", 0) == 0, summary.as_dict()
    status = db.query("stream_status", {"listener": "trade_stream"})[0]
    assert status["connected_since"] is not None and status["events_received"] >= 1
    assert status["orders_recorded"] >= 1


def test_partially_filled_entry_is_protected_as_soon_as_the_listener_sees_the_partial_fill(listening, db):
    _listener, _handle, admin, broker = listening
    admin.configure(partial_fill_probability=1.0)  # the first fill of an eligible order is partial
    trade = place_entry(db, broker, "AAPL", planned_entry=150, planned_sl=145, planned_tp=160)
    admin.quotes(AAPL=("149.90", "150.00"))

    # PARTIAL_ENTRY_POLICY=cancel_remainder (the default): the rest is canceled, the filled shares protected.
    wait_for(lambda: rows(db, trade["id"], "STOP_LOSS") and db.get_by_id("trade_journal", trade["id"])["status"]
             == "POSITION", "the partial fill gives a POSITION with a stop, from the stream alone")
    position = db.query("position_tracking", {"trade_journal_id": trade["id"]})[0]
    assert 0 < position["qty"] < 10
    wait_for(lambda: _protected(db, broker), "the filled shares have a broker-held stop for their whole quantity")


def test_a_trailing_raise_the_listener_records_first_keeps_the_raised_stop_and_needs_no_repair(listening, db):
    """Found by the demo with the listener on: the listener recorded the stop leg ``replaced``
    without its successor, the order monitor then found no stop, canceled the target and placed
    a new OCO at the plan's old stop: every raise undone, 29 replaces and 28 repairs in a day."""
    import position_monitor

    _listener, _handle, admin, broker = listening
    trade = place_entry(db, broker, "AAPL", planned_entry=150, planned_sl=145, planned_tp=160, trailing_stop_pct=5)
    admin.quotes(AAPL=("149.90", "150.00"))
    wait_for(lambda: _protected(db, broker), "the entry fills and its stop is recorded, from the stream alone")

    admin.quotes(AAPL=("157.90", "158.10"))  # mid 158.00: the trail puts the stop at 150.10
    position_monitor.run_once(db, broker, settings=make_settings(), sleep=lambda _s: None)
    old = [r for r in rows(db, trade["id"], "STOP_LOSS") if r["stop_price"] == Decimal("145")]
    wait_for(lambda: db.get_by_id("order_execution", old[0]["id"])["order_status"] == "replaced",
             "the listener records the old stop leg as replaced")

    summary = run_monitor(db, broker)
    assert summary.counts.get("protection_repaired", 0) == 0, summary.as_dict()
    live = [r for r in rows(db, trade["id"], "STOP_LOSS") if r["order_status"] in ("new", "accepted", "held")]
    assert [r["stop_price"] for r in live] == [Decimal("150.10")]
    assert [r["order_status"] for r in rows(db, trade["id"], "TAKE_PROFIT")] == ["new"]  # the target stays
    check_invariants(db, broker)


def test_a_dropped_event_is_caught_by_the_next_poll_and_a_late_one_changes_nothing(streaming, db):
    _handle, admin, broker = streaming
    trade = place_entry(db, broker, "AAPL", planned_entry=150, planned_sl=145, planned_tp=160)
    entry = rows(db, trade["id"], "ENTRY")[0]
    admin.quotes(AAPL=("149.90", "150.00"))  # filled while no listener runs: the event is lost
    run_monitor(db, broker)
    assert db.get_by_id("trade_journal", trade["id"])["status"] == "POSITION"
    before = _record_counts(db)

    recorder = StreamRecorder(db, broker, make_settings())
    order = broker.get_order(entry["alpaca_order_id"])
    stale = TradeUpdate(event="partial_fill", order=order, at=order.filled_at or order.submitted_at,
                        price=Decimal("150"), qty=Decimal("3"))
    assert recorder.record(stale) in (RecordOutcome.UNCHANGED,)
    assert recorder.record(TradeUpdate(event="fill", order=order, at=order.filled_at)) == RecordOutcome.UNCHANGED
    assert _record_counts(db) == before  # no second fill, no second stop, no audit row
    check_invariants(db, broker)


def test_an_event_about_someone_elses_order_is_not_ours(streaming, db):
    _handle, admin, broker = streaming
    admin.quotes(MSFT=("399.90", "400.00"))
    order = broker.submit_order(_market_buy("MSFT", "1", "a-person-in-alpacas-app"))
    recorder = StreamRecorder(db, broker, make_settings())
    assert recorder.record(TradeUpdate(event="new", order=order, at=order.submitted_at)) == RecordOutcome.NOT_OURS
    assert db.query("order_execution") == []


def test_an_unreadable_event_is_skipped_and_the_stream_goes_on(streaming):
    _handle, _admin, broker = streaming
    seen: list[TradeUpdate] = []
    stream = TradeUpdateStream(broker, seen.append)
    asyncio.run(stream._dispatch({"stream": "trade_updates", "data": {"event": "fill"}}))  # no order in it
    order = {"id": "x", "client_order_id": "c", "symbol": "AAPL", "side": "buy", "type": "market", "order_class": "",
             "status": "filled", "qty": "1", "filled_qty": "1", "filled_avg_price": "150", "time_in_force": "day",
             "submitted_at": "2026-11-20T14:45:00Z"}
    asyncio.run(stream._dispatch({"stream": "trade_updates", "data": {"event": "fill", "order": order,
                                                                      "timestamp": "2026-11-20T14:45:01Z"}}))
    assert [u.order for u in seen] == [parse_order(order)]


def test_listener_stops_cleanly_and_says_so_in_stream_status(streaming, make_db, db):
    handle, _admin, _broker = streaming
    listener = TradeStreamListener(make_db(), AlpacaBroker(base_url=handle.url, timeout=3), make_settings())
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    wait_for(listener.connected.is_set, "the listener connects")
    wait_for(lambda: (db.query("stream_status") or [{}])[0].get("connected_since"), "connected_since recorded")
    stop.set()
    thread.join(timeout=15)
    assert not thread.is_alive()
    status = db.query("stream_status", {"listener": "trade_stream"})[0]
    assert status["stopped_at"] is not None and status["connected_since"] is None


def test_main_without_a_stream_at_the_exchange_is_a_configuration_error(exchange):
    # The session's exchange serves no stream: the listener says so and exits 2 instead of retrying forever.
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, str(root / "trade_stream.py"), "--test-mode"], cwd=root,
                            env=dict(os.environ, ALPACA_BASE_URL=exchange.url), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "serves no trade-updates stream" in result.stderr + result.stdout


# ---------------------------------------------------------------------------- helpers


def _market_buy(symbol: str, qty: str, client_order_id: str) -> Any:
    from trading.broker import OrderRequest

    return OrderRequest(symbol=symbol, qty=Decimal(qty), side="buy", kind="market", time_in_force="day",
                        client_order_id=client_order_id)


def _protected(db: Any, broker: AlpacaBroker) -> bool:
    try:
        check_invariants(db, broker)
    except AssertionError:
        return False
    return True


def _record_counts(db: Any) -> dict[str, int]:
    return {table: db.execute_one(f"SELECT count(*) AS n FROM {table}")["n"]
            for table in ("order_execution", "trade_fill", "audit_event", "position_tracking")}


def test_the_listener_service_files_run_trade_stream_unprivileged_and_restart_it_on_failure():
    from tests.factories import deployment_files

    service, job = deployment_files("trading-monitor-stream.service", "com.trading.monitor.stream.plist")
    assert service["User"] not in ("", "root") and service["EnvironmentFile"] == "/etc/trading-monitor/env"
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    assert service["ExecStart"].endswith(".venv/bin/python /opt/trading-monitor/trade_stream.py")
    assert job["Label"] == "com.trading.monitor.stream" and job["UserName"] not in ("", "root")
    assert job["ProgramArguments"][-1].endswith("/trade_stream.py")
    assert job["KeepAlive"] == {"SuccessfulExit": False}
