"""A notification service for tests: a JSON webhook on 127.0.0.1, served from a thread.

apprise's ``json://127.0.0.1:PORT/hook`` posts ``{"title": ..., "message": ...}`` here, over
real HTTP, exactly as it would post to a real service. ``mode`` decides the answer:

- ``ok``: 200, the message counts as delivered;
- ``error``: 500 (the service refuses it; the message is kept);
- ``hang``: the answer comes after ``hang_seconds`` (longer than the sender waits);
- ``kill``: the message is kept, then the process ``kill_pid`` is killed (SIGKILL) before the
  answer: a sender that crashes after its message arrived.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class NotificationReceiver:
    """``with NotificationReceiver() as receiver:`` then ``receiver.url`` and ``receiver.received``."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.hang_seconds = 4.0
        self.kill_pid: int | None = None
        self.received: list[dict[str, Any]] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                with receiver._lock:
                    receiver.requests += 1
                    mode = receiver.mode
                    if mode in ("ok", "hang", "kill"):
                        receiver.received.append(payload)
                if mode == "kill" and receiver.kill_pid:
                    os.kill(receiver.kill_pid, signal.SIGKILL)
                    time.sleep(0.2)
                if mode == "hang":
                    time.sleep(receiver.hang_seconds)
                status = 500 if mode == "error" else 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="notification-receiver", daemon=True)

    @property
    def url(self) -> str:
        """The apprise URL of this service (a path that looks like a webhook token)."""
        return f"json://127.0.0.1:{self.port}/hooks/t0ken-s3cret-abcdef123456"

    def titles(self) -> list[str]:
        with self._lock:
            return [item.get("title", "") for item in self.received]

    def __enter__(self) -> NotificationReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """An apprise URL of 127.0.0.1 where nothing listens (a service that is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"json://127.0.0.1:{port}/hooks/d0wn-s3cret-abcdef123456"
