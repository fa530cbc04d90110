"""Logging, configured once per process.

Every line carries the time (UTC), level, program and logger name; modules log with
``logging.getLogger(__name__)`` and put ids and symbols in their messages. A redacting filter
removes any registered secret from every record as a last line of defence (secrets are also
kept out of messages in the first place, see ``config.Secret``).
"""

from __future__ import annotations

import logging
import sys
import time

_configured = False
_handler: logging.Handler | None = None
_secrets: set[str] = set()
_program = "trading-monitor"


class _ContextFilter(logging.Filter):
    """Adds the program name and scrubs registered secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.program = _program
        if _secrets:
            message = record.getMessage()
            scrubbed = message
            for secret in _secrets:
                scrubbed = scrubbed.replace(secret, "***")
            if scrubbed != message:
                record.msg, record.args = scrubbed, None
        return True


def register_secret(value: str | None) -> None:
    """Never print ``value`` in a log line (ignored for short placeholder strings)."""
    if value and len(value) >= 6:
        _secrets.add(value)


def set_program(name: str) -> None:
    """Name the program shown on every log line."""
    global _program
    _program = name


def configure_logging(level: str = "INFO", program: str | None = None) -> None:
    """Configure the root logger once (later calls only change the level and program)."""
    global _configured, _handler
    if program:
        set_program(program)
    root = logging.getLogger()
    root.setLevel(level.upper())
    if _configured:
        return
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(program)s %(name)s: %(message)s",
                                  "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(_ContextFilter())
    root.addHandler(handler)
    _handler = handler
    # Third-party chatter stays at WARNING unless asked for.
    for noisy in ("urllib3", "apscheduler.executors.default", "apscheduler.scheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    _configured = True
