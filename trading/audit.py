"""The audit trail: one append-only row per state change and per refused input.

Operators answer "what happened to decision 42 and why" with SQL::

    SELECT occurred_at, program, event, old_value, new_value, reason
    FROM audit_event WHERE entity_type = 'decision' AND entity_id = 42 ORDER BY id;

Audit rows are written on the caller's connection: inside a transaction they commit (or roll
back) together with the change they describe, so the trail never claims a change that did
not happen. The events that an operator is also told about (an entry placed or filled, an exit
filled, a decision refused, a protection repaired: ``trading.notify.NOTIFYING_EVENTS``) put
their message in ``notification_outbox`` in the same transaction as their audit row.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Protocol

from trading import notify

logger = logging.getLogger(__name__)


class _Inserts(Protocol):
    def insert(self, table: str, values: dict[str, Any]) -> int: ...


# Event names used across the programs (free text is allowed, these keep SQL filters stable).
DECISION_ACCEPTED = "DECISION_ACCEPTED"
DECISION_REFUSED = "DECISION_REFUSED"
DECISION_DEFERRED = "DECISION_DEFERRED"
#: Held back by the trading state (REDUCE_ONLY, HALTED, FLATTEN): neither placed nor refused; it
#: runs when trading resumes, unless it expired meanwhile.
DECISION_HELD = "DECISION_HELD"
ORDER_INTENT = "ORDER_INTENT"
ORDER_SUBMITTED = "ORDER_SUBMITTED"
ORDER_REFUSED = "ORDER_REFUSED"
ORDER_STATUS = "ORDER_STATUS"
ORDER_FILL = "ORDER_FILL"
ORDER_NOT_FOUND = "ORDER_NOT_FOUND"
ORDER_CANCEL_REQUESTED = "ORDER_CANCEL_REQUESTED"
ORDER_ANOMALY = "ORDER_ANOMALY"
TRADE_STATUS = "TRADE_STATUS"
TRADE_UPDATED = "TRADE_UPDATED"
POSITION_OPENED = "POSITION_OPENED"
POSITION_CHANGED = "POSITION_CHANGED"
POSITION_CLOSED = "POSITION_CLOSED"
PROTECTION_REPAIRED = "PROTECTION_REPAIRED"
PROTECTION_MISSING = "PROTECTION_MISSING"
ORPHAN_POSITION = "ORPHAN_POSITION"
#: The broker holds a short position: a sell beyond the shares held went through somewhere.
SHORT_POSITION = "SHORT_POSITION"
QUANTITY_MISMATCH = "QUANTITY_MISMATCH"
PRICE_UNAVAILABLE = "PRICE_UNAVAILABLE"
RUN_ABORTED = "RUN_ABORTED"
RECONCILE_FAILED = "RECONCILE_FAILED"
#: A circuit breaker tripped (its figures in ``details``): the end-of-day report lists these.
BREAKER_TRIPPED = "BREAKER_TRIPPED"
#: An operator's request through the console (console/): a Close or a level change recorded as
#: an approved decision, which the order monitor then carries out.
CONSOLE_REQUEST = "CONSOLE_REQUEST"


class Auditor:
    """Writes audit rows for one program run."""

    def __init__(self, db: _Inserts, program: str, run_id: int | None = None) -> None:
        self.db = db
        self.program = program
        self.run_id = run_id

    def record(self, entity_type: str, entity_id: int | None, event: str, *, symbol: str | None = None,
               old: Any = None, new: Any = None, reason: str | None = None,
               details: dict[str, Any] | None = None) -> int:
        """Append one audit row (and its notification, for the events that have one); returns its id."""
        values = {
            "program": self.program,
            "program_run_id": self.run_id,
            "entity_type": entity_type,
            "entity_id": entity_id,
            "symbol": symbol,
            "event": event,
            "old_value": None if old is None else str(getattr(old, "value", old)),
            "new_value": None if new is None else str(getattr(new, "value", new)),
            "reason": reason,
            "details": details,
        }
        if event not in notify.NOTIFYING_EVENTS:
            return self.db.insert("audit_event", values)
        # The message commits with the audit row, hence with the change: inside the caller's
        # transaction when one is open, else in one of its own.
        in_transaction = getattr(self.db, "in_transaction", True)
        transaction = getattr(self.db, "transaction", None)
        with transaction() if transaction is not None and not in_transaction else contextlib.nullcontext():
            audit_id = self.db.insert("audit_event", values)
            notify.record_for_audit_event(self.db, audit_id, values)
        return audit_id
