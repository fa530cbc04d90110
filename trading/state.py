"""The trading state: the kill switch kept in the database (invariant 10 of the design).

One row of ``trading_state`` per scope: ``ACCOUNT`` (the whole account) or a symbol. No row
means ``ACTIVE``. The modes, from the least to the most restrictive:

- ``ACTIVE``       everything runs.
- ``REDUCE_ONLY``  no new entries; exits, protection and monitoring go on.
- ``HALTED``       nothing new is sent to the broker except protection repairs; monitors still record.
- ``FLATTEN``      cancel every open order of the managed trades, close their positions, then ``HALTED``.

A symbol's effective mode is the stricter of the account's and its own. Every change carries a
reason and who made it, and is written to ``audit_event`` (and its notification to
``notification_outbox``) in the same transaction. Leaving
``HALTED`` or ``FLATTEN`` for a less restrictive mode is a reset and needs ``confirm_reset``
(an explicit command); ``FLATTEN`` → ``HALTED`` is how a finished flatten ends and needs none.
Every program reads the state once at the start of its run (``read_trading_state``).

Who changes it: a person with ``scripts/trading_state.py`` (halt, flatten, reduce-only, resume)
or by editing the row in SQL/NocoDB (the database completes and validates the edit and audits
it: ``trading.schema``), the order monitor when a flatten is finished (FLATTEN -> HALTED), and the
circuit breakers (``trading.breakers``, source ``breaker:<name>``), which only make it stricter.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from trading.errors import RejectedError
from trading.notify import record_state_change

ACCOUNT_SCOPE = "ACCOUNT"
TRADING_STATE_CHANGED = "TRADING_STATE_CHANGED"
#: Serialises state changes (two programs' breakers, a person's command): the first change of a
#: scope inserts its row, and two inserts at once would collide on the unique scope.
TRADING_STATE_LOCK_KEY = 727_002


class TradingMode(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCE_ONLY = "REDUCE_ONLY"
    HALTED = "HALTED"
    FLATTEN = "FLATTEN"


#: How restrictive each mode is; a symbol obeys the stricter of the account's mode and its own.
STRICTNESS: dict[TradingMode, int] = {TradingMode.ACTIVE: 0, TradingMode.REDUCE_ONLY: 1,
                                       TradingMode.HALTED: 2, TradingMode.FLATTEN: 3}
#: Modes that stay until someone resets them explicitly.
RESET_REQUIRED: frozenset[TradingMode] = frozenset({TradingMode.HALTED, TradingMode.FLATTEN})
MODES: frozenset[str] = frozenset(mode.value for mode in TradingMode)


class TradingStateRefused(RejectedError):
    """A state change that is not allowed as asked (no reason, unknown mode, reset without confirmation)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="TRADING_STATE_REFUSED")


class _Database(Protocol):
    def execute_query(self, query: str, params: Any = None) -> list[dict[str, Any]]: ...
    def execute_one(self, query: str, params: Any = None) -> dict[str, Any] | None: ...
    def insert(self, table: str, values: dict[str, Any]) -> int: ...
    def update(self, table: str, row_id: int, values: dict[str, Any]) -> int: ...
    def transaction(self) -> Any: ...


@dataclass(frozen=True)
class ScopeState:
    """The recorded mode of one scope."""

    scope: str
    mode: TradingMode
    reason: str | None = None
    changed_by: str | None = None
    changed_at: dt.datetime | None = None
    source: str | None = None              # "manual", or the breaker that set it
    resume_after: dt.datetime | None = None  # a breaker that lifts itself: not before this moment

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ScopeState:
        return cls(scope=row["scope"], mode=TradingMode(row["mode"]), reason=row.get("reason"),
                   changed_by=row.get("changed_by"), changed_at=row.get("changed_at"),
                   source=row.get("source"), resume_after=row.get("resume_after"))


@dataclass(frozen=True)
class TradingState:
    """The whole state as read at the start of a run."""

    account: ScopeState = field(default_factory=lambda: ScopeState(ACCOUNT_SCOPE, TradingMode.ACTIVE))
    symbols: Mapping[str, ScopeState] = field(default_factory=dict)

    def mode_for(self, symbol: str | None = None) -> TradingMode:
        """The mode that applies to ``symbol`` (the account's when None): the stricter of the two."""
        mode = self.account.mode
        own = self.symbols.get(symbol.upper()) if symbol else None
        if own is not None and STRICTNESS[own.mode] > STRICTNESS[mode]:
            mode = own.mode
        return mode

    def scope_for(self, symbol: str | None = None) -> ScopeState:
        """The scope whose mode applies to ``symbol`` (for the reason recorded with a held decision)."""
        own = self.symbols.get(symbol.upper()) if symbol else None
        if own is not None and STRICTNESS[own.mode] > STRICTNESS[self.account.mode]:
            return own
        return self.account

    def allows_entries(self, symbol: str | None = None) -> bool:
        """New entries (NEW_TRADE, the new entry of an AMEND) only while ACTIVE."""
        return self.mode_for(symbol) is TradingMode.ACTIVE

    def allows_exits(self, symbol: str | None = None) -> bool:
        """Closing orders (CLOSE, day-end exit, flatten): not while HALTED, where only protection is sent."""
        return self.mode_for(symbol) is not TradingMode.HALTED

    def flatten_requested(self, symbol: str | None = None) -> bool:
        return self.mode_for(symbol) is TradingMode.FLATTEN

    def restricted_scopes(self) -> list[ScopeState]:
        """Every scope that is not ACTIVE, the account first."""
        scopes = [self.account] + [self.symbols[name] for name in sorted(self.symbols)]
        return [scope for scope in scopes if scope.mode is not TradingMode.ACTIVE]

    def flatten_scopes(self) -> list[ScopeState]:
        """The scopes whose mode is FLATTEN, the account first."""
        return [scope for scope in self.restricted_scopes() if scope.mode is TradingMode.FLATTEN]

    def summary(self) -> str:
        """One line for a run's notes: ``ACTIVE``, or each restricted scope with its reason."""
        restricted = self.restricted_scopes()
        if not restricted:
            return "ACTIVE"
        return "; ".join(f"{'account' if scope.scope == ACCOUNT_SCOPE else scope.scope} {scope.mode.value}"
                         + (f" ({scope.reason})" if scope.reason else "") for scope in restricted)

    def describe(self, symbol: str | None = None) -> str:
        """One line for logs and held-decision reasons, e.g. ``HALTED (account): broker outage``."""
        scope = self.scope_for(symbol)
        where = "account" if scope.scope == ACCOUNT_SCOPE else scope.scope
        return f"{scope.mode.value} ({where})" + (f": {scope.reason}" if scope.reason else "")


def normalise_scope(scope: str | None) -> str:
    """``ACCOUNT`` for the whole account, else the upper-case symbol."""
    text = (scope or ACCOUNT_SCOPE).strip().upper()
    if not text or not text.replace(".", "").replace("/", "").isalnum():
        raise TradingStateRefused(f"invalid scope {scope!r}: use ACCOUNT or a ticker symbol")
    return text


def read_trading_state(db: _Database) -> TradingState:
    """Every scope's recorded mode (missing rows are ACTIVE)."""
    rows = db.execute_query("SELECT * FROM trading_state ORDER BY id")
    account = ScopeState(ACCOUNT_SCOPE, TradingMode.ACTIVE)
    symbols: dict[str, ScopeState] = {}
    for row in rows:
        state = ScopeState.from_row({**row, "scope": str(row["scope"]).strip().upper()})
        if state.scope == ACCOUNT_SCOPE:
            account = state
        else:
            symbols[state.scope] = state
    return TradingState(account=account, symbols=symbols)


def record_trading_state(db: _Database, mode: TradingMode | str, *, reason: str, changed_by: str,
                         scope: str | None = None, confirm_reset: bool = False, source: str = "manual",
                         resume_after: dt.datetime | None = None, program: str | None = None,
                         run_id: int | None = None, now: dt.datetime | None = None,
                         details: dict[str, Any] | None = None,
                         only_from: frozenset[TradingMode] | None = None) -> ScopeState:
    """Set the mode of ``scope`` (default: the account) with a reason; audited in the same transaction.

    Raises ``TradingStateRefused`` for an empty reason, an unknown mode, or a reset from
    ``HALTED``/``FLATTEN`` without ``confirm_reset``. Setting the mode a scope already has
    changes nothing and writes nothing (a rerun is a no-op). ``only_from``: change only a scope
    whose mode (read under the lock) is one of these, else leave it and return it as it is (a
    program acting on the state it read at the start of its run never overrides a person's
    change made since).
    """
    try:
        target = TradingMode(str(getattr(mode, "value", mode)).strip().upper())
    except ValueError:
        raise TradingStateRefused(f"unknown trading mode {mode!r}: use one of {', '.join(sorted(MODES))}") from None
    if not reason or not reason.strip():
        raise TradingStateRefused("a trading state change needs a reason")
    if not changed_by or not changed_by.strip():
        raise TradingStateRefused("a trading state change needs to say who made it")
    scope_name = normalise_scope(scope)
    moment = now or dt.datetime.now(dt.UTC)
    with db.transaction():
        db.execute_query("SELECT pg_advisory_xact_lock(%s)", (TRADING_STATE_LOCK_KEY,))
        row = db.execute_one("SELECT * FROM trading_state WHERE scope = %s FOR UPDATE", (scope_name,))
        current = TradingMode(row["mode"]) if row else TradingMode.ACTIVE
        if only_from is not None and current not in only_from:
            return ScopeState.from_row(row) if row else ScopeState(scope_name, TradingMode.ACTIVE)
        if current is target and row is not None and row.get("resume_after") == resume_after:
            return ScopeState.from_row(row)
        if row is None and target is TradingMode.ACTIVE:
            return ScopeState(scope_name, TradingMode.ACTIVE)
        is_reset = current in RESET_REQUIRED and STRICTNESS[target] < STRICTNESS[current]
        finishing_flatten = current is TradingMode.FLATTEN and target is TradingMode.HALTED
        if is_reset and not finishing_flatten and not confirm_reset:
            raise TradingStateRefused(
                f"{scope_name} is {current.value}: leaving it for {target.value} is a reset and needs an explicit "
                "confirmation (scripts/trading_state.py resume --confirm, or confirm_reset=True)")
        values = {"scope": scope_name, "mode": target.value, "reason": reason.strip(),
                  "changed_by": changed_by.strip(), "changed_at": moment, "source": source,
                  "resume_after": resume_after}
        if row is None:
            db.insert("trading_state", values)
        else:
            db.update("trading_state", int(row["id"]), values)
        audit_id = db.insert("audit_event", {
            "program": program or changed_by.strip(), "program_run_id": run_id, "entity_type": "trading_state",
            "entity_id": None if row is None else int(row["id"]),
            "symbol": None if scope_name == ACCOUNT_SCOPE else scope_name, "event": TRADING_STATE_CHANGED,
            "old_value": current.value, "new_value": target.value, "reason": reason.strip(),
            "details": {"changed_by": changed_by.strip(), "source": source, "scope": scope_name,
                        "resume_after": resume_after.isoformat() if resume_after else None, **(details or {})},
        })
        # The operator is told in the same transaction (sent after commit, once: trading.notify).
        record_state_change(db, scope=scope_name, old_mode=current.value, new_mode=target.value,
                            reason=reason.strip(), changed_by=changed_by.strip(), source=source,
                            program=program or changed_by.strip(), run_id=run_id, audit_event_id=audit_id)
        stored = db.execute_one("SELECT * FROM trading_state WHERE scope = %s", (scope_name,))
    assert stored is not None
    return ScopeState.from_row(stored)
