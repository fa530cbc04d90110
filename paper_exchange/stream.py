"""The trade-updates stream: Alpaca's websocket protocol for order events.

alpaca-py's ``TradingStream`` (``url_override=stream_url``) connects, authenticates and listens
exactly as it does at Alpaca::

    → {"action": "authenticate", "data": {"key_id": "...", "secret_key": "..."}}
    ← {"stream": "authorization", "data": {"action": "authenticate", "status": "authorized"}}
    → {"action": "listen", "data": {"streams": ["trade_updates"]}}
    ← {"stream": "listening", "data": {"streams": ["trade_updates"]}}
    ← {"stream": "trade_updates", "data": {"event": "fill", "order": {...}, "timestamp": "...",
                                           "price": "150.25", "qty": "10", "position_qty": "10"}}

Events are found by watching the book, not by hooks inside the engine: a watcher thread compares
each order's (status, filled quantity) with what it saw last and publishes one event per change
(``pending_new``, ``new``, ``partial_fill``, ``fill``, ``canceled``, ``expired``, ``rejected``,
``replaced``, ``pending_cancel``, ``pending_replace``). An order that changes twice between two
looks gives one event with its latest state, as a reconnecting Alpaca client may also see; the
consumers must (and ours do) treat events as hints and the order itself as the truth.

Served on a port of its own (the HTTP server's ``/admin/stream`` names it), because the
standard library's HTTP server cannot hand a connection over to a websocket.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from decimal import Decimal
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from .money import ZERO, fmt, fmt_price
from .orders import Order
from .timeutil import iso_utc

log = logging.getLogger(__name__)

#: How often the watcher looks at the book (seconds).
POLL_INTERVAL = 0.05
#: Status → the trade-update event Alpaca sends when an order reaches it (fills are told apart
#: by quantity: a partial fill of a still-working order is ``partial_fill``).
EVENT_BY_STATUS: dict[str, str] = {
    "pending_new": "pending_new",
    "accepted": "new",
    "new": "new",
    "partially_filled": "partial_fill",
    "filled": "fill",
    "canceled": "canceled",
    "expired": "expired",
    "rejected": "rejected",
    "replaced": "replaced",
    "pending_cancel": "pending_cancel",
    "pending_replace": "pending_replace",
    "done_for_day": "done_for_day",
}


class TradeUpdateStream:
    """A websocket server that publishes the exchange's order events to listening clients."""

    def __init__(self, exchange: Any, host: str = "127.0.0.1", port: int = 0,
                 poll_interval: float = POLL_INTERVAL) -> None:
        self.exchange = exchange
        self.poll_interval = poll_interval
        self._clients: set[queue.Queue[str | None]] = set()
        self._clients_lock = threading.Lock()
        self._seen: dict[str, tuple[str, Decimal, Decimal]] = {}
        self._stopped = threading.Event()
        self._server: Server = serve(self._handle, host, port)
        self.host = host
        self.port = int(self._server.socket.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self.events_published = 0

    @property
    def url(self) -> str:
        """What to give alpaca-py's ``TradingStream`` as ``url_override``."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host  # noqa: S104 - only a URL
        return f"ws://{host}:{self.port}/stream"

    def start(self) -> TradeUpdateStream:
        """Serve and watch in background daemon threads; returns self."""
        self._prime()
        for target, name in ((self._server.serve_forever, "serve"), (self._watch, "watch")):
            thread = threading.Thread(target=target, name=f"paper-exchange-stream-{name}-{self.port}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Close every client connection and release the port."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        with self._clients_lock:
            for client in self._clients:
                client.put(None)
        self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout=5)

    # ------------------------------------------------------------------ clients
    def _handle(self, connection: ServerConnection) -> None:
        """One client: authenticate, listen, then receive events until it leaves."""
        try:
            if not self._authenticate(connection):
                return
            if not self._listen(connection):
                return
            outbox: queue.Queue[str | None] = queue.Queue()
            with self._clients_lock:
                if not self._clients:
                    self._prime()  # nobody watched until now: only changes from here on are news
                self._clients.add(outbox)
            try:
                while not self._stopped.is_set():
                    try:
                        message = outbox.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    if message is None:
                        return
                    connection.send(message)
            finally:
                with self._clients_lock:
                    self._clients.discard(outbox)
        except ConnectionClosed:
            return

    @staticmethod
    def _authenticate(connection: ServerConnection) -> bool:
        message = _read(connection)
        data = message.get("data") or {}
        # Both forms Alpaca accepts: {"action": "authenticate", "data": {key_id, secret_key}}
        # and the older {"action": "auth", "key": ..., "secret": ...}.
        key = data.get("key_id") or message.get("key")
        secret = data.get("secret_key") or message.get("secret")
        ok = message.get("action") in ("authenticate", "auth") and bool(key) and bool(secret)
        status = "authorized" if ok else "unauthorized"
        connection.send(json.dumps({"stream": "authorization",
                                    "data": {"action": "authenticate", "status": status}}))
        return ok

    @staticmethod
    def _listen(connection: ServerConnection) -> bool:
        message = _read(connection)
        if message.get("action") != "listen":
            connection.send(json.dumps({"stream": "listening", "data": {"streams": [],
                                        "error": "expected a listen action"}}))
            return False
        streams = [s for s in (message.get("data") or {}).get("streams", []) if s == "trade_updates"]
        connection.send(json.dumps({"stream": "listening", "data": {"streams": streams}}))
        return bool(streams)

    # ------------------------------------------------------------------ events
    def _prime(self) -> None:
        """Remember the book as it is, so only later changes are published."""
        with self.exchange._lock:
            self._seen.clear()
            for order in self.exchange._order_list:
                self._seen[order.id] = _signature(order)

    def _watch(self) -> None:
        while not self._stopped.wait(self.poll_interval):
            with self._clients_lock:
                if not self._clients:
                    continue  # nobody listens: do not spend the book's lock on looking
            try:
                self.publish_changes()
            except Exception:  # the watcher must outlive one bad look at the book
                log.exception("trade-updates stream: watching the book failed")

    def publish_changes(self) -> int:
        """Publish one event per order changed since the last look; returns how many."""
        self.exchange.now()  # with the wall clock this lets due fills happen
        events: list[dict[str, Any]] = []
        with self.exchange._lock:
            for order in self.exchange._order_list:
                signature = _signature(order)
                before = self._seen.get(order.id)
                if before == signature:
                    continue
                self._seen[order.id] = signature
                event = self._event(order, before)
                if event is not None:
                    events.append(event)
        if events:
            with self._clients_lock:
                clients = list(self._clients)
            for event in events:
                message = json.dumps({"stream": "trade_updates", "data": event})
                for client in clients:
                    client.put(message)
            self.events_published += len(events)
        return len(events)

    def _event(self, order: Order, before: tuple[str, Decimal, Decimal] | None) -> dict[str, Any] | None:
        name = EVENT_BY_STATUS.get(order.status)
        if name is None:  # held legs and other quiet states: Alpaca sends nothing
            return None
        legs = [self.exchange._orders[leg_id] for leg_id in order.leg_ids if leg_id in self.exchange._orders]
        event: dict[str, Any] = {"event": name, "order": order.to_json(legs=legs or None),
                                 "timestamp": iso_utc(order.updated_at)}
        filled_before = before[1] if before else ZERO
        notional_before = before[2] if before else ZERO
        fill_qty = order.filled_qty - filled_before
        if fill_qty > 0:
            price = (order.filled_notional - notional_before) / fill_qty
            position = self.exchange._positions.get(order.symbol)
            event.update({"execution_id": f"{order.id}-{fmt(order.filled_qty)}", "price": fmt_price(price),
                          "qty": fmt(fill_qty),
                          "position_qty": fmt(position.qty) if position is not None else "0"})
            if order.last_fill_at is not None:
                event["timestamp"] = iso_utc(order.last_fill_at)
            if name not in ("fill", "partial_fill"):
                # The fill and the end came together (a cancel that lost the race): say the fill.
                event["event"] = "fill" if order.filled_qty >= order.qty else "partial_fill"
        return event


def _signature(order: Order) -> tuple[str, Decimal, Decimal]:
    return (order.status, order.filled_qty, order.filled_notional)


def _read(connection: ServerConnection) -> dict[str, Any]:
    raw = connection.recv(timeout=10)
    try:
        message = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return message if isinstance(message, dict) else {}
