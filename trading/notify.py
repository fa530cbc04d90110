"""Notifications: written to an outbox with the change they report, sent once after commit.

**Recording.** ``record_notification(db, kind, title, body, ...)`` inserts a ``notification_outbox``
row on the caller's connection: inside the caller's transaction it commits (or rolls back)
together with the change it reports, so a message never claims a change that did not happen
and no committed change loses its message. The trade events are recorded by the audit trail
itself (``trading.audit.Auditor.record`` calls ``record_for_audit_event``): an entry placed
(``DECISION_ACCEPTED`` with a broker order), an entry filled (trade → ``POSITION``), an exit
filled (trade → ``CLOSED``, with its P&L), a decision refused, a protection repaired. The
trading state (``trading.state.record_trading_state``), the breakers (``record_breaker_trip``),
the run harness (failed runs, runs skipped for a held lock) and the end-of-day report call
``record_notification`` themselves. Money is shown to the cent (``dollars``).

**Sending.** ``deliver_notifications(db, config)`` runs at the end of every program run, after
its commits (``trading.program.ProgramRunner``), and in ``scripts/eod_report.py``. Through
apprise, to every URL of ``NOTIFY_URLS`` (no URL: rows are marked ``not_configured`` and nothing
is sent). Each message exactly once per destination:

1. the delivery holds the advisory lock ``notification_delivery`` (one deliverer at a time;
   another program finding it taken leaves the sending to the holder);
2. a row still ``sending`` under that lock belongs to an attempt whose process died during the
   network call: the service may or may not have it, so it becomes ``unknown`` and is **not**
   resent (resend by hand: ``UPDATE notification_outbox SET status = 'pending' WHERE id = …``);
3. before the network call the row is marked ``sending`` with ``attempts + 1`` (committed);
4. each destination that answers success is added to ``delivered_to`` at once (a retry never
   resends to it); all done → ``sent`` with ``sent_at``;
5. a refused connection or an error answer → back to ``pending`` with ``last_error`` and a
   doubling ``next_attempt_at``; after ``NOTIFY_MAX_ATTEMPTS`` → ``failed``;
6. no answer within ``NOTIFY_TIMEOUT_SECONDS`` → ``unknown`` (the request may have arrived).

A service that is down costs one refused connection per run (the destination is skipped for
the rest of that delivery), a hung one at most ``NOTIFY_TIMEOUT_SECONDS``, and the whole step
at most ``NOTIFY_BUDGET_SECONDS``: it never fails a run. Undelivered rows stay in SQL::

    SELECT id, created_at, kind, status, attempts, last_error FROM notification_outbox
    WHERE status <> 'sent' ORDER BY id;

URLs are secrets: they are never logged or stored; a destination is named by a label
(``json#3fa2c1d0``: the scheme and a digest of the URL).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

from config import NotifyConfig, Secret
from trading.logs import scrub

logger = logging.getLogger(__name__)

CENT = Decimal("0.01")
DELIVERY_LOCK = "notification_delivery"
#: Rows read per round of a delivery.
BATCH = 50
#: The first retry waits this long, doubling per failed attempt up to ``MAX_RETRY_DELAY``.
RETRY_DELAY = dt.timedelta(minutes=1)
MAX_RETRY_DELAY = dt.timedelta(hours=1)
#: apprise's own read timeout is longer than ours, so a hung service is seen as "no answer in
#: time" (outcome unknown) by the join below, never as an apprise failure that would be retried.
READ_TIMEOUT_MARGIN_SECONDS = 5


class NotificationKind(StrEnum):
    ENTRY_PLACED = "entry_placed"
    ENTRY_FILLED = "entry_filled"
    EXIT_FILLED = "exit_filled"
    DECISION_REFUSED = "decision_refused"
    PROTECTION_REPAIRED = "protection_repaired"
    TRADING_STATE_CHANGED = "trading_state_changed"
    BREAKER_TRIPPED = "breaker_tripped"
    RUN_FAILED = "run_failed"
    RUNS_SKIPPED = "runs_skipped"
    DAILY_REPORT = "daily_report"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"
    NOT_CONFIGURED = "not_configured"


# --------------------------------------------------------------------------- money in messages


def _cents(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


def dollars(value: Any, *, signed: bool = False) -> str:
    """Money to the cent: ``$1,234.50``, ``-$12.30``; ``signed`` adds ``+`` to gains (P&L)."""
    if value is None:
        return "n/a"
    amount = _cents(value)
    sign = "-" if amount < 0 else ("+" if signed and amount > 0 else "")
    return f"{sign}${abs(amount):,.2f}"


def price(value: Any) -> str:
    """A share price: to the cent, or with its sub-cent digits when it has them ($0.1234)."""
    if value is None:
        return "n/a"
    amount = Decimal(str(value))
    if amount == amount.quantize(CENT):
        return f"${amount.quantize(CENT):,.2f}"
    return f"${amount.normalize():,f}"


def quantity(value: Any) -> str:
    """Shares without trailing zeros (``10``, ``2.5``)."""
    if value is None:
        return "?"
    amount = Decimal(str(value))
    return f"{amount.normalize():f}" if amount != amount.to_integral_value() else f"{amount.to_integral_value():f}"


def figure(value: Any) -> str:
    """A breaker's figure: money (a Decimal) to the cent, a count as is."""
    return dollars(value) if isinstance(value, Decimal) else str(value)


# --------------------------------------------------------------------------- recording


def record_notification(db: Any, kind: NotificationKind | str, title: str, body: str, *,
                        program: str | None = None, run_id: int | None = None, symbol: str | None = None,
                        decision_id: int | None = None, trade_id: int | None = None,
                        audit_event_id: int | None = None, dedup_key: str | None = None) -> int | None:
    """Put one message in the outbox, on ``db``'s connection: call it inside the transaction of the
    change it reports. Returns the row id, or None when ``dedup_key`` was recorded already."""
    kind = NotificationKind(kind)
    row = db.execute_one(
        "INSERT INTO notification_outbox (kind, title, body, program, program_run_id, symbol, decision_id, "
        "trade_journal_id, audit_event_id, dedup_key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING RETURNING id",
        (kind.value, title.strip() or kind.value, body, program, run_id, symbol, decision_id, trade_id,
         audit_event_id, dedup_key))
    return int(row["id"]) if row else None


def record_breaker_trip(db: Any, breaker: str, *, figure_value: Any, limit: Any, new_mode: str, reason: str,
                        scope: str = "ACCOUNT", program: str | None = None, run_id: int | None = None) -> int | None:
    """The "breaker tripped" message (for the circuit breakers; call it in the trip's transaction).

    ``figure_value`` and ``limit``: a Decimal is money (shown to the cent), an int a count; a
    breaker without a limit (the reconciliation trips on any critical finding) passes None."""
    where = "the account" if scope == "ACCOUNT" else scope
    title = f"Breaker tripped: {breaker} -> {new_mode} ({where})"
    against = f" against the limit {figure(limit)}" if limit is not None else ""
    body = f"{breaker}: {figure(figure_value)}{against}. {reason}. Trading is now {new_mode} for {where}."
    return record_notification(db, NotificationKind.BREAKER_TRIPPED, title, body, program=program, run_id=run_id,
                               symbol=None if scope == "ACCOUNT" else scope)


def record_state_change(db: Any, *, scope: str, old_mode: str, new_mode: str, reason: str, changed_by: str,
                        source: str, program: str | None = None, run_id: int | None = None,
                        audit_event_id: int | None = None) -> int | None:
    """The "trading state changed" message (``trading.state.record_trading_state`` calls it)."""
    where = "account" if scope == "ACCOUNT" else scope
    title = f"Trading state {where}: {old_mode} -> {new_mode}"
    body = f"{where}: {old_mode} -> {new_mode} by {changed_by} ({source}): {reason}"
    return record_notification(db, NotificationKind.TRADING_STATE_CHANGED, title, body, program=program,
                               run_id=run_id, symbol=None if scope == "ACCOUNT" else scope,
                               audit_event_id=audit_event_id)


#: The audit events that are also notifications (``record_for_audit_event``).
NOTIFYING_EVENTS: frozenset[str] = frozenset({"DECISION_ACCEPTED", "DECISION_REFUSED", "TRADE_STATUS",
                                              "PROTECTION_REPAIRED"})


def record_for_audit_event(db: Any, audit_event_id: int, event: Mapping[str, Any]) -> int | None:
    """The message an audit row calls for, if any, recorded on the same connection (the Auditor
    calls this inside the audit row's transaction)."""
    name = event.get("event")
    if name not in NOTIFYING_EVENTS:
        return None
    details: Mapping[str, Any] = event.get("details") or {}
    symbol = event.get("symbol")
    common: dict[str, Any] = {"program": event.get("program"), "run_id": event.get("program_run_id"), "symbol": symbol,
              "audit_event_id": audit_event_id}
    if name == "DECISION_REFUSED":
        action = details.get("primary_action") or "decision"
        code = details.get("code")
        return record_notification(
            db, NotificationKind.DECISION_REFUSED, f"Decision {event.get('entity_id')} refused: {symbol or '?'} "
                                                   f"{action}",
            f"{event.get('reason') or 'no reason recorded'}" + (f" ({code})" if code else ""),
            decision_id=event.get("entity_id"), **common)
    if name == "DECISION_ACCEPTED":
        if not details.get("alpaca_order_id") or details.get("primary_action") not in ("NEW_TRADE", "AMEND"):
            return None
        trade = db.get_by_id("trade_journal", details["trade_journal_id"]) if details.get("trade_journal_id") \
            else None
        if trade is None:
            return None
        qty, entry = trade.get("planned_qty"), trade.get("planned_entry")
        notional = Decimal(qty) * Decimal(entry) if qty is not None and entry is not None else None
        title = f"Entry placed: buy {quantity(qty)} {trade['symbol']} limit {price(entry)}"
        body = (f"trade {trade['id']} ({trade['trade_style']}, decision {event.get('entity_id')}): "
                f"buy {quantity(qty)} {trade['symbol']} limit {price(entry)}, stop {price(trade.get('planned_sl'))}"
                + (f", target {price(trade.get('planned_tp'))}" if trade.get("planned_tp") is not None else "")
                + f", notional {dollars(notional)}; order {details['alpaca_order_id']}")
        return record_notification(db, NotificationKind.ENTRY_PLACED, title, body,
                                   decision_id=event.get("entity_id"), trade_id=trade["id"], **common)
    if name == "TRADE_STATUS":
        new = event.get("new_value")
        if new not in ("POSITION", "CLOSED"):
            return None
        trade = db.get_by_id("trade_journal", event.get("entity_id"))
        if trade is None:
            return None
        qty, entry = trade.get("actual_qty"), trade.get("actual_entry")
        if new == "POSITION":
            cost = Decimal(qty) * Decimal(entry) if qty is not None and entry is not None else None
            return record_notification(
                db, NotificationKind.ENTRY_FILLED, f"Entry filled: {quantity(qty)} {trade['symbol']} @ {price(entry)}",
                f"trade {trade['id']} ({trade['trade_style']}): bought {quantity(qty)} {trade['symbol']} at "
                f"{price(entry)}, cost {dollars(cost)}; stop {price(trade.get('planned_sl'))}"
                + (f", target {price(trade.get('planned_tp'))}" if trade.get("planned_tp") is not None else ""),
                decision_id=trade.get("initial_analysis_id"), trade_id=trade["id"], **common)
        pnl = trade.get("actual_pnl")
        return record_notification(
            db, NotificationKind.EXIT_FILLED,
            f"Exit filled: {trade['symbol']} {dollars(pnl, signed=True)} ({trade.get('exit_reason')})",
            f"trade {trade['id']} ({trade['trade_style']}): {quantity(qty)} {trade['symbol']} bought at "
            f"{price(entry)}, sold at {price(trade.get('exit_price'))}; P&L {dollars(pnl, signed=True)}, "
            f"exit reason {trade.get('exit_reason')}",
            decision_id=trade.get("initial_analysis_id"), trade_id=trade["id"], **common)
    # PROTECTION_REPAIRED
    stop = details.get("stop")
    target = details.get("take_profit")
    return record_notification(
        db, NotificationKind.PROTECTION_REPAIRED,
        f"Protection repaired: {symbol or '?'} trade {event.get('entity_id')}",
        f"{event.get('reason') or 'protection replaced'}; stop {price(stop)}"
        + (f", target {price(target)}" if target is not None else ""),
        trade_id=event.get("entity_id"), **common)


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Destination:
    """One notification service: the URL (a secret) and the label stored and shown instead."""

    label: str
    url: Secret


def destinations(config: NotifyConfig) -> list[Destination]:
    """The configured services; the label is the scheme and a digest of the URL."""
    found: list[Destination] = []
    for url in config.urls:
        text = url.reveal()
        scheme = text.partition("://")[0].lower() or "url"
        found.append(Destination(f"{scheme}#{hashlib.sha256(text.encode()).hexdigest()[:8]}", url))
    return found


def _with_timeouts(url: str, timeout: int) -> str:
    """The URL with apprise's connect and read timeouts, unless it sets them itself."""
    extra = [item for item in (f"cto={timeout}", f"rto={timeout + READ_TIMEOUT_MARGIN_SECONDS}")
             if f"{item.split('=')[0]}=" not in url.partition("?")[2]]
    if not extra:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(extra)


@dataclass(frozen=True)
class SendResult:
    """``ok``; else ``unknown`` (no answer in time: it may have arrived) or a plain failure."""

    ok: bool
    unknown: bool = False
    error: str = ""


class _Capture(logging.Handler):
    """apprise's warnings during one send (the only place it says why a send failed). apprise
    sends from threads of its own, so every apprise warning of the moment is taken: one delivery
    runs at a time (the delivery lock)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def send_message(destination: Destination, title: str, body: str, timeout: int) -> SendResult:
    """Send one message to one service through apprise, waiting at most ``timeout`` seconds.

    The send runs on a daemon thread: one that has not answered in time is left behind (its
    outcome is unknown) and never holds up the run."""
    import apprise

    outcome: dict[str, Any] = {}
    capture_holder: dict[str, _Capture] = {}

    def work() -> None:
        capture = _Capture()
        capture_holder["capture"] = capture
        apprise_logger = logging.getLogger("apprise")
        apprise_logger.addHandler(capture)
        try:
            client = apprise.Apprise()
            if not client.add(_with_timeouts(destination.url.reveal(), timeout)):
                outcome["error"] = "apprise does not understand this URL"
                return
            outcome["ok"] = bool(client.notify(title=title, body=body))
        except Exception as exc:  # a plugin's bug must not end the run
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            apprise_logger.removeHandler(capture)

    worker = threading.Thread(target=work, name=f"notify-{destination.label}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return SendResult(False, unknown=True, error=f"no answer within {timeout} s: the service may have it")
    if outcome.get("ok"):
        return SendResult(True)
    capture = capture_holder.get("capture")
    said = "; ".join(capture.messages) if capture and capture.messages else ""
    return SendResult(False, error=scrub(outcome.get("error") or said or "the service did not accept the message"))


@dataclass
class DeliveryReport:
    """What one delivery step did."""

    sent: int = 0
    retry: int = 0
    failed: int = 0
    unknown: int = 0
    not_configured: int = 0
    skipped: str = ""            # why nothing was tried ("another program is delivering")
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.skipped:
            return f"notifications: {self.skipped}"
        parts = [f"{name} {getattr(self, name)}" for name in ("sent", "retry", "failed", "unknown", "not_configured")
                 if getattr(self, name)]
        return "notifications: " + (", ".join(parts) if parts else "nothing to send")


def _wall_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _retry_at(now: dt.datetime, attempts: int) -> dt.datetime:
    return now + min(RETRY_DELAY * 2 ** max(attempts - 1, 0), MAX_RETRY_DELAY)


def deliver_notifications(db: Any, config: NotifyConfig, *, clock: Callable[[], dt.datetime] = _wall_clock,
                          monotonic: Callable[[], float] = time.monotonic) -> DeliveryReport:
    """Send what the outbox holds, each message once per destination (see the module's text).
    Never raises for a service that is down; database errors propagate to the caller."""
    report = DeliveryReport()
    targets = destinations(config)
    if not targets:
        report.not_configured = db.execute_update(
            "UPDATE notification_outbox SET status = 'not_configured', updated_at = now(), "
            "last_error = 'NOTIFY_URLS is empty: nothing is sent' WHERE status = 'pending'")
        return report
    deadline = monotonic() + config.budget_seconds
    with db.advisory_lock(DELIVERY_LOCK) as taken:
        if not taken:
            report.skipped = "another program is delivering them"
            return report
        orphaned = db.execute_update(
            "UPDATE notification_outbox SET status = 'unknown', updated_at = now(), last_error = "
            "'an attempt was under way when its program ended: the service may have it, so it is not resent "
            "(set status to pending to send it again)' WHERE status = 'sending'")
        if orphaned:
            report.unknown += orphaned
            logger.warning("notifications: %s message(s) were being sent when a program ended; marked unknown, "
                           "not resent (see notification_outbox)", orphaned)
        down: set[str] = set()
        tried: set[int] = set()
        while monotonic() < deadline:
            rows = [row for row in db.execute_query(
                "SELECT * FROM notification_outbox WHERE status = 'pending' AND (next_attempt_at IS NULL OR "
                "next_attempt_at <= %s) ORDER BY id LIMIT %s", (clock(), BATCH + len(tried))) if row["id"] not in tried]
            if not rows:
                break
            for row in rows:
                if monotonic() >= deadline:
                    break
                tried.add(row["id"])
                _deliver_one(db, config, row, targets, down, report, clock, deadline, monotonic)
    if report.sent or report.retry or report.failed or report.unknown:
        logger.info("%s", report.line())
    return report


def _deliver_one(db: Any, config: NotifyConfig, row: Mapping[str, Any], targets: list[Destination],
                 down: set[str], report: DeliveryReport, clock: Callable[[], dt.datetime], deadline: float,
                 monotonic: Callable[[], float]) -> None:
    delivered = list(row.get("delivered_to") or [])
    todo = [target for target in targets if target.label not in delivered]
    if todo and all(target.label in down for target in todo):
        return  # its services failed earlier in this delivery: no attempt is spent on it now
    attempts = int(row["attempts"]) + 1
    claimed = db.execute_update(
        "UPDATE notification_outbox SET status = 'sending', attempts = %s, last_attempt_at = %s, updated_at = now() "
        "WHERE id = %s AND status = 'pending'", (attempts, clock(), row["id"]))
    if not claimed:
        return
    errors: list[str] = []
    unknown = False
    for target in todo:
        if target.label in down:
            errors.append(f"{target.label}: not tried (failed earlier in this delivery)")
            continue
        remaining = max(1, min(config.timeout_seconds, int(deadline - monotonic()) or 1))
        result = send_message(target, row["title"], row["body"], remaining)
        if result.ok:
            delivered.append(target.label)
            db.execute_update("UPDATE notification_outbox SET delivered_to = %s::jsonb, updated_at = now() "
                              "WHERE id = %s", (json.dumps(delivered), row["id"]))
            continue
        down.add(target.label)
        errors.append(f"{target.label}: {result.error}")
        if result.unknown:
            unknown = True
    error_text = scrub("; ".join(errors))[:2000] or None
    if not errors:
        db.execute_update("UPDATE notification_outbox SET status = 'sent', sent_at = %s, last_error = NULL, "
                          "updated_at = now() WHERE id = %s", (clock(), row["id"]))
        report.sent += 1
        return
    if unknown:
        status = DeliveryStatus.UNKNOWN
        report.unknown += 1
    elif attempts >= config.max_attempts:
        status = DeliveryStatus.FAILED
        report.failed += 1
    else:
        status = DeliveryStatus.PENDING
        report.retry += 1
    db.execute_update("UPDATE notification_outbox SET status = %s, last_error = %s, next_attempt_at = %s, "
                      "updated_at = now() WHERE id = %s",
                      (status.value, error_text, _retry_at(clock(), attempts) if status is DeliveryStatus.PENDING
                       else None, row["id"]))
    report.errors.append(f"notification {row['id']}: {error_text}")
    logger.warning("notification %s (%s) not delivered (%s, attempt %s): %s", row["id"], row["kind"], status.value,
                   attempts, error_text)
