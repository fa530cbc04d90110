"""Logging, configured once per process.

Two formats (``LOG_FORMAT``):

- ``text`` (the default, for people): time (UTC), level, program, logger name and message, then
  the ids that apply in brackets, e.g. ``[run_id=42 decision_id=7]``.
- ``json`` (for machines): one JSON object per line with ``time``, ``level``, ``program``,
  ``logger``, ``message`` and, where they apply, ``run_id``, ``decision_id``, ``trade_id``,
  ``order_id`` and ``symbol`` (plus ``exception`` with the traceback). One trade's story is
  then ``jq 'select(.trade_id == 17)'`` away.

The ids come from a context (``contextvars``) that the code sets where it knows them: the run
harness sets ``run_id`` for the whole run (``trading.program``), the executor sets the
``decision_id`` of the decision it works on, the per-trade lock sets ``trade_id``. A log call
may also pass them itself: ``logger.info("...", extra={"order_id": "abc"})``.

A redacting filter removes any registered secret from every line (message, exception text,
the whole formatted output) as a last line of defence; secrets are also kept out of messages in
the first place (see ``config.Secret``).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

#: The ids a log line carries where they apply, in this order.
CONTEXT_FIELDS: tuple[str, ...] = ("run_id", "decision_id", "trade_id", "order_id", "symbol")
FORMATS: tuple[str, ...] = ("text", "json")

_configured = False
_handler: logging.Handler | None = None
_secrets: set[str] = set()
_program = "trading-monitor"
_format = "text"
_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("trading_log_context", default={})  # noqa: B039


# --------------------------------------------------------------------------- the ids of a line


def log_fields() -> dict[str, Any]:
    """The ids set in the current context (a copy)."""
    return dict(_context.get())


def bind_log_fields(**ids: Any) -> contextvars.Token[dict[str, Any]]:
    """Add (or, with None, remove) ids for every later line of this context; returns the token
    that ``reset_log_fields`` takes to restore the previous ids."""
    unknown = set(ids) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log field(s) {sorted(unknown)}: use {', '.join(CONTEXT_FIELDS)}")
    current = dict(_context.get())
    for key, value in ids.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    return _context.set(current)


def reset_log_fields(token: contextvars.Token[dict[str, Any]]) -> None:
    """Restore the ids as they were before ``bind_log_fields`` returned ``token``."""
    _context.reset(token)


@contextlib.contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Every line inside the block carries ``ids`` (``with log_context(trade_id=17): ...``)."""
    token = bind_log_fields(**ids)
    try:
        yield
    finally:
        reset_log_fields(token)


# --------------------------------------------------------------------------- secrets


def register_secret(value: str | None) -> None:
    """Never print ``value`` in a log line (ignored for short placeholder strings)."""
    if value and len(value) >= 6:
        _secrets.add(value)


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***`` (longest first, so a secret that
    contains another is removed whole). Also for text stored in the database (``last_error``)."""
    if not _secrets or not text:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


class _ContextFilter(logging.Filter):
    """Adds the program name and the context's ids, and scrubs registered secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.program = _program
        for key, value in _context.get().items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        if _secrets:
            message = record.getMessage()
            scrubbed = scrub(message)
            if scrubbed != message:
                record.msg, record.args = scrubbed, None
        return True


# --------------------------------------------------------------------------- formats


def _ids(record: logging.LogRecord) -> dict[str, Any]:
    return {key: getattr(record, key) for key in CONTEXT_FIELDS if getattr(record, key, None) is not None}


class TextFormatter(logging.Formatter):
    """The line for people: ``time level program logger: message [ids]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(program)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = _ids(record)
        if ids:
            first, newline, rest = line.partition("\n")
            line = first + " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]" + newline + rest
        return scrub(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``LOG_FORMAT=json``)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, dt.UTC)
        item: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "program": getattr(record, "program", _program),
            "logger": record.name,
            "message": record.getMessage(),
        }
        item.update(_ids(record))
        if record.exc_info:
            item["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            item["exception"] = record.exc_text
        return scrub(json.dumps(item, default=str, ensure_ascii=False))


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``text`` or ``json``."""
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: use text or json")
    return JsonFormatter() if log_format == "json" else TextFormatter()


def make_handler(stream: TextIO, log_format: str = "text") -> logging.Handler:
    """A handler writing ``log_format`` lines to ``stream``, with the ids and the secret scrubber
    (what ``configure_logging`` puts on the root logger)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(log_format))
    handler.addFilter(_ContextFilter())
    return handler


def set_program(name: str) -> None:
    """Name the program shown on every log line."""
    global _program
    _program = name


def configure_logging(level: str = "INFO", program: str | None = None, log_format: str | None = None) -> None:
    """Configure the root logger once (later calls change the level, program and format)."""
    global _configured, _handler, _format
    if program:
        set_program(program)
    root = logging.getLogger()
    root.setLevel(level.upper())
    if log_format is not None and log_format != _format:
        _format = log_format
        if _handler is not None:
            _handler.setFormatter(make_formatter(_format))
    # Third-party chatter stays at WARNING unless asked for (apprise's debug lines show URLs).
    for noisy in ("urllib3", "apscheduler.executors.default", "apscheduler.scheduler", "apprise"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    if _configured:
        return
    handler = make_handler(sys.stderr, _format)
    root.addHandler(handler)
    _handler = handler
    _configured = True
