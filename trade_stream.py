"""trade_stream: record the broker's fills, cancels and rejections as they happen.

A long-running listener on Alpaca's ``trade_updates`` websocket (alpaca-py's ``TradingStream``;
the project's paper exchange serves the same protocol). For every event about one of our orders
it looks the order up at the broker and records what the broker says through the same code the
order monitor uses (``Protector.record`` → ``Reconciler.sync``: same transitions, same
idempotency), then, when an entry filled (in whole or in part), makes sure the shares have their
broker-held stop (``Protector.ensure``, following ``PARTIAL_ENTRY_POLICY``). So a fill is in the
tables within about a second, and the order monitor's next run finds nothing left to do.

Polling stays the source of truth: an event is only a hint that something changed. A dropped
event is caught by the next order-monitor run; a repeated or late one finds the row already
equal to the broker's order and changes nothing. One listener per database (an advisory lock);
its health (connected since, last event, events, errors) is kept in ``stream_status`` for the
health check. SIGINT/SIGTERM end it cleanly.

    .venv/bin/python trade_stream.py              # run until stopped (a service: deployment/)
    .venv/bin/python trade_stream.py --test-mode  # the test database and the test exchange
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

import trading.preflight  # noqa: F401  (one line, not a traceback, without the packages)
from config import Settings
from trading import lifecycle
from trading.audit import Auditor
from trading.broker import Broker, TradeUpdate
from trading.errors import NotFoundError, TradingError
from trading.lifecycle import OrderType
from trading.orders import OrderBook
from trading.program import open_program
from trading.protection import Protector, find_order
from trading.reconcile import Reconciler

logger = logging.getLogger(__name__)

PROGRAM = "trade_stream"
#: How long events are gathered before recording, so a burst about one order is one look-up.
COALESCE_SECONDS = 0.1
#: How often the listener writes its heartbeat to ``stream_status``.
HEARTBEAT_SECONDS = 15.0

Row = dict[str, Any]


class RecordOutcome(StrEnum):
    """What one trade update led to."""

    NOT_OURS = "not_ours"        # an order this system did not place (a person's, another system's)
    UNCHANGED = "unchanged"      # the row already says what the broker says (a repeated or late event)
    RECORDED = "recorded"        # the broker's order state was recorded on its row and trade
    PROTECTED = "protected"      # recorded, and the entry's filled shares were checked for their stop
    FAILED = "failed"            # could not be recorded now; the next order-monitor run will


class StreamRecorder:
    """Records trade updates the way the order monitor does (no decisions of its own)."""

    def __init__(self, db: Any, broker: Broker, settings: Settings) -> None:
        self.db = db
        self.broker = broker
        self.settings = settings
        self.auditor = Auditor(db, PROGRAM)
        self.reconciler = Reconciler(db, self.auditor)

    def row_for(self, update: TradeUpdate) -> Row | None:
        """Our row of the order the event is about (by broker id, then by client order id)."""
        row = self.reconciler.orders.by_alpaca_id(update.order.id)
        if row is None and update.order.client_order_id:
            rows = self.db.query("order_execution", {"client_order_id": update.order.client_order_id})
            row = rows[0] if rows else None
        return row if row is not None and row.get("trade_journal_id") is not None else None

    def record(self, update: TradeUpdate) -> RecordOutcome:
        """Record what the broker now says about the event's order; never trusts the event itself."""
        row = self.row_for(update)
        if row is None:
            return RecordOutcome.NOT_OURS
        trade_id = int(row["trade_journal_id"])
        try:
            order = find_order(self.broker, row.get("alpaca_order_id") or update.order.id, row.get("client_order_id"))
        except NotFoundError:
            return RecordOutcome.FAILED  # not found now: the monitor's not-found rules decide
        notes: list[str] = []
        protector = Protector(self.db, self.broker, self.reconciler, self.settings, now=update.at, warn=notes.append)
        changed = bool(OrderBook.differences(row, order)) or any(
            bool(OrderBook.differences(leg_row, leg)) for leg in order.legs
            if (leg_row := self.reconciler.orders.by_alpaca_id(leg.id)) is not None)
        if changed:
            protector.record(trade_id, row["id"], order)
        outcome = RecordOutcome.RECORDED if changed else RecordOutcome.UNCHANGED
        if row["order_type"] == OrderType.ENTRY.value and order.filled_qty > 0:
            trade = self.reconciler.trades.get(trade_id)
            if trade is not None and trade["status"] == lifecycle.TradeStatus.POSITION.value:
                protection = protector.ensure(trade_id)
                logger.info("%s: trade %s %s entry %s %s: protection %s", PROGRAM, trade_id, row["symbol"],
                            order.id, order.status, protection)
                outcome = RecordOutcome.PROTECTED if changed or protection == "repaired" else outcome
        for note in notes:
            logger.warning("%s: trade %s: %s", PROGRAM, trade_id, note)
        if changed:
            logger.info("%s: trade %s %s order %s (%s): %s, filled %s (event %s)", PROGRAM, trade_id,
                        row["symbol"], row["id"], row["order_type"], order.status, order.filled_qty, update.event)
        return outcome


class StreamStatus:
    """The listener's row in ``stream_status``: what the health check reads."""

    def __init__(self, db: Any, name: str = PROGRAM) -> None:
        self.db = db
        self.name = name
        self.row_id: int | None = None

    def started(self, now: dt.datetime) -> None:
        values = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": now, "connected_since": None,
                  "stopped_at": None, "heartbeat_at": now, "last_error": None}
        rows = self.db.query("stream_status", {"listener": self.name})
        if rows:
            self.row_id = int(rows[0]["id"])
            self.db.update("stream_status", self.row_id, values)
        else:
            self.row_id = self.db.insert("stream_status", {"listener": self.name, **values})

    def update(self, **values: Any) -> None:
        if self.row_id is not None:
            self.db.update("stream_status", self.row_id, values)

    def counted(self, now: dt.datetime, outcome: RecordOutcome) -> None:
        if self.row_id is None:
            return
        recorded = 1 if outcome in (RecordOutcome.RECORDED, RecordOutcome.PROTECTED) else 0
        self.db.execute_update(
            "UPDATE stream_status SET events_received = events_received + 1, "
            "orders_recorded = orders_recorded + %s, last_event_at = %s, heartbeat_at = %s, updated_at = now() "
            "WHERE id = %s", (recorded, now, now, self.row_id))


def wall_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TradeStreamListener:
    """The listener's loop: events arrive on the stream's thread, are recorded on this one."""

    def __init__(self, db: Any, broker: Any, settings: Settings, *,
                 stream_factory: Callable[..., Any] | None = None,
                 clock: Callable[[], dt.datetime] = wall_clock,
                 coalesce_seconds: float = COALESCE_SECONDS) -> None:
        self.db = db
        self.coalesce_seconds = coalesce_seconds
        self.broker = broker
        self.recorder = StreamRecorder(db, broker, settings)
        self.status = StreamStatus(db)
        self.clock = clock
        self.updates: queue.Queue[TradeUpdate] = queue.Queue()
        self.connected = threading.Event()
        self.counts: dict[str, int] = {}
        #: Events taken off the queue and recorded (or found not ours): what a caller that moves
        #: a simulated clock waits for before the next program run (scripts/simulate_day.py).
        self.events_handled = 0
        if stream_factory is None:
            from alpaca_client import TradeUpdateStream
            stream_factory = TradeUpdateStream
        self._stream = stream_factory(broker, self.updates.put, on_connect=self._on_connect)
        self._connected_at: dt.datetime | None = None

    def _on_connect(self) -> None:
        # Called on the stream's thread: only note it; the database is used from the main loop.
        self._connected_at = self.clock()
        self.connected.set()

    def run(self, stop: threading.Event) -> dict[str, int]:
        """Listen and record until ``stop`` is set; returns the counts by outcome."""
        self.status.started(self.clock())
        thread = threading.Thread(target=self._stream.run, name="trade-updates-stream", daemon=True)
        thread.start()
        last_beat = self.clock()
        reported_connect: dt.datetime | None = None
        try:
            while not stop.is_set():
                if self._connected_at is not None and self._connected_at != reported_connect:
                    reported_connect = self._connected_at
                    self.status.update(connected_since=reported_connect, last_error=None)
                    logger.info("%s: connected to the trade-updates stream", PROGRAM)
                batch, taken = self._next_batch()
                for update in batch:
                    self._record(update)
                self.events_handled += taken
                now = self.clock()
                if (now - last_beat).total_seconds() >= HEARTBEAT_SECONDS:
                    self.status.update(heartbeat_at=now)
                    last_beat = now
        finally:
            self._stream.stop()
            thread.join(timeout=10)
            self.status.update(stopped_at=self.clock(), connected_since=None)
        return dict(self.counts)

    def _next_batch(self) -> tuple[list[TradeUpdate], int]:
        """The events of the next moment, the latest per order (they are hints; one look-up each),
        and how many events they stand for."""
        try:
            first = self.updates.get(timeout=0.5)
        except queue.Empty:
            return [], 0
        latest: dict[str, TradeUpdate] = {first.order.id: first}
        taken = 1
        deadline = self.clock() + dt.timedelta(seconds=self.coalesce_seconds)
        while self.clock() < deadline:
            try:
                update = self.updates.get(timeout=self.coalesce_seconds / 4)
            except queue.Empty:
                continue
            latest[update.order.id] = update
            taken += 1
        return list(latest.values()), taken

    def _record(self, update: TradeUpdate) -> None:
        try:
            outcome = self.recorder.record(update)
        except TradingError as exc:
            # An outage or a refusal: recorded as the listener's last error; the poll repairs it.
            logger.warning("%s: event %s of order %s (%s) not recorded: %s", PROGRAM, update.event,
                           update.order.id, update.order.symbol, exc)
            outcome = RecordOutcome.FAILED
            try:
                self.status.update(last_error=str(exc)[:500])
            except TradingError:
                pass
        self.counts[outcome.value] = self.counts.get(outcome.value, 0) + 1
        try:
            self.status.counted(self.clock(), outcome)
        except TradingError as exc:
            logger.warning("%s: could not update stream_status: %s", PROGRAM, exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the listener until SIGINT/SIGTERM; exit 0 after a clean stop, 2 on a configuration error."""
    from alpaca_client import connect_broker

    opened = open_program(PROGRAM, (__doc__ or "").split("\n\n")[0], argv)
    if opened is None:
        return 2
    args, settings, db = opened
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    counts: dict[str, int] = {}
    try:
        db.connect()
        db.ensure_schema()
        broker = connect_broker(settings.alpaca, test_mode=args.test_mode)
        with db.advisory_lock(PROGRAM) as taken:
            if not taken:
                print(f"{PROGRAM}: another listener already runs on this database; not starting a second")
                return 0
            listener = TradeStreamListener(db, broker, settings)
            logger.info("%s: listening at %s for %s", PROGRAM, listener._stream.url or "Alpaca's stream",
                        broker.describe())
            counts = listener.run(stop)
    except TradingError as exc:
        logger.error("%s: %s", PROGRAM, exc)
        return 2
    finally:
        db.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"{PROGRAM}: stopped; events " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) if counts
          else f"{PROGRAM}: stopped; no events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
