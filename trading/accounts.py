"""Which broker account a trade belongs to, and the rule that it is never reconciled against another.

Every trade records the broker account it was placed in (``trade_journal.broker_account``, the
account number of ``/v2/account``). Pointing the same database at another account (setting
Alpaca keys after using the local exchange, or another account's keys) would otherwise make the
monitors find none of the trades' orders and shares and close every open trade as MANUAL_EXIT
at its last price. Instead, each program, at the start of its run:

- adopts the trades with no account recorded (rows written before this column existed) as the
  account it sees first: the history before the upgrade is taken to be that account's;
- finds the open trades (ORDERED, POSITION) recorded under another account and leaves them
  alone: no sync, no protection repair, no day-end exit, no outside-change booking, no CANCEL,
  AMEND or CLOSE. Each is recorded once per account pair (``audit_event`` ``ACCOUNT_MISMATCH``
  with the reason) and logged every run with what to do, and the run ends as ``warning``.

What to do is in docs/operations.md ("Trades of another broker account"): point the programs back
at the account the trades belong to, or close them by hand if that account is gone for good.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from trading.audit import Auditor
from trading.broker import Broker
from trading.lifecycle import OPEN_TRADE_STATUSES

logger = logging.getLogger(__name__)

ACCOUNT_MISMATCH = "ACCOUNT_MISMATCH"


def account_identity(broker: Broker) -> str | None:
    """The account these keys reach (the account number, else its id): the last account read on
    this broker object, read now if none was (one call per broker object: keys do not change)."""
    account = getattr(broker, "last_account", None) or broker.get_account()
    return account.identity


def what_to_do(recorded: str, current: str | None) -> str:
    """The operator's two ways out, named with both accounts."""
    return (f"point the programs back at broker account {recorded} (its ALPACA_API_KEY/ALPACA_SECRET_KEY, or "
            f"the local exchange it was placed on), or, if account {recorded} is gone for good, close the trade "
            "by hand as docs/operations.md \"Trades of another broker account\" says; the broker now is account "
            f"{current}")


class AccountGuard:
    """Applies the one-account rule for one program run."""

    def __init__(self, db: Any, broker: Broker, auditor: Auditor, warn: Callable[[str], None]) -> None:
        self.db = db
        self.broker = broker
        self.audit = auditor
        self.warn = warn

    def foreign_trades(self) -> frozenset[int]:
        """Adopt unrecorded trades, then the ids of the open trades recorded under another account
        (recorded, logged and warned); the program leaves them alone this run."""
        current = account_identity(self.broker)
        if current is None:
            return frozenset()  # a broker that names no account: nothing to compare
        # SKIP LOCKED: a row another program is changing right now is adopted next run; the
        # adoption never waits on (or deadlocks with) a running program's trade lock.
        adopted = self.db.execute_update(
            "UPDATE trade_journal SET broker_account = %s, updated_at = now() WHERE id IN (SELECT id FROM "
            "trade_journal WHERE broker_account IS NULL FOR UPDATE SKIP LOCKED)", (current,))
        if adopted:
            logger.info("%s trade(s) without a broker account recorded adopted as account %s", adopted, current)
        rows = self.db.execute_query(
            "SELECT id, symbol, status, broker_account FROM trade_journal WHERE status = ANY(%s) "
            "AND broker_account <> %s ORDER BY id", (sorted(OPEN_TRADE_STATUSES), current))
        for trade in rows:
            self._refuse(trade, current)
        if rows:
            self.warn(f"{len(rows)} open trade(s) belong to another broker account than {current} and were left "
                      f"alone (trade ids {', '.join(str(r['id']) for r in rows)}): see audit_event {ACCOUNT_MISMATCH}")
        return frozenset(int(r["id"]) for r in rows)

    def _refuse(self, trade: dict[str, Any], current: str) -> None:
        recorded = trade["broker_account"]
        reason = (f"trade {trade['id']} {trade['symbol']} ({trade['status']}) was placed in broker account "
                  f"{recorded}, but the broker now is account {current}: not reconciled (nothing closed, nothing "
                  f"sent, the record kept as it is). To resolve: {what_to_do(recorded, current)}")
        logger.warning("%s", reason)
        last = self.db.execute_one(
            "SELECT old_value, new_value FROM audit_event WHERE entity_type = 'trade' AND entity_id = %s "
            "AND event = %s ORDER BY id DESC LIMIT 1", (trade["id"], ACCOUNT_MISMATCH))
        if last is not None and (last["old_value"], last["new_value"]) == (recorded, current):
            return  # recorded once per account pair; the log says it every run
        self.audit.record("trade", trade["id"], ACCOUNT_MISMATCH, symbol=trade["symbol"], old=recorded, new=current,
                          reason=reason, details={"recorded_account": recorded, "broker_account": current})
