"""Saving and loading the exchange's state to a JSON file (for the standalone daemon).

Writes are atomic (write a temporary file in the same directory, fsync, rename), happen
at most about once per second from a background thread when something changed, and
once more on clean shutdown. Bars and fault rules are not saved: bar history is
re-synthesized, faults are a testing tool of one process.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path

from .engine import PaperExchange

log = logging.getLogger(__name__)


class StateFile:
    """Keeps ``exchange`` saved in ``path``."""

    def __init__(self, path: Path | str, exchange: PaperExchange, interval: float = 1.0) -> None:
        self.path = Path(path)
        self.exchange = exchange
        self.interval = interval
        self._saved_revision: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()

    def load(self) -> bool:
        """Load the file into the exchange if it exists; return whether it did."""
        if not self.path.exists():
            return False
        with self.path.open(encoding="utf-8") as handle:
            data = json.load(handle)
        self.exchange.load_state(data)
        self._saved_revision = self.exchange.revision
        log.info("loaded exchange state from %s", self.path)
        return True

    def save(self) -> None:
        """Write the current state atomically (skipped when nothing changed)."""
        with self._write_lock:
            revision = self.exchange.revision
            if revision == self._saved_revision:
                return
            data = self.exchange.to_state()  # a consistent snapshot, taken under the engine lock
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".json", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(data, handle, separators=(",", ":"))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            self._saved_revision = revision

    def start(self) -> None:
        """Save in the background whenever the state changed, at most every ``interval``."""
        self._thread = threading.Thread(target=self._run, name="paper-exchange-saver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.save()
            except Exception:
                log.exception("could not save the exchange state to %s", self.path)

    def stop(self) -> None:
        """Stop the background thread and save one last time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.save()
