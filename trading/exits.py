"""Exits that escalate until filled: urgency, the price of each step, and the walk between runs.

A CLOSE decision, the day-end exit and the kill switch's flatten sell a whole position. How hard
they lean on the market is the exit's *urgency* (``EXIT_URGENCY_CLOSE``, ``EXIT_URGENCY_DAY_END``,
``EXIT_URGENCY_FLATTEN``):

- ``CRITICAL``: a market order at once (the flatten of the kill switch; a day trade found open
  the next morning).
- ``HIGH``: a limit at the bid (marketable for a sell), then a market order when it has not
  filled after one step (``EXIT_STEP_SECONDS``).
- ``NORMAL``: a limit at the mid, walked toward the bid in ``EXIT_WALK_STEPS`` steps, then a
  market order.

Prices are rounded *down* to the tick (a sell limit never rounds away from the bid). Without a
usable quote (no bid) a step is a market order. An escalation spans order-monitor runs: its
state is on the trade (``exit_urgency``, ``exit_step``, ``exit_next_step_at``), never in memory,
so a restarted program goes on where the last one stopped.

Protection between steps: the exit covers every share of the trade (its stop was canceled for
exactly that quantity when the exit was placed; Alpaca refuses a second sell of the same shares).
A walk step *replaces* the working limit's price (``PATCH``), so the shares stay covered by a
working sell at every moment; only the last step cancels the limit (confirmed) and sends the
market order for what the broker still holds.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from enum import StrEnum
from typing import Any

from trading import lifecycle
from trading.broker import Broker, Quote
from trading.errors import BrokerRejectedError, NotFoundError, TransientError
from trading.lifecycle import OrderType, TradeStatus
from trading.pricing import ZERO, display_price, tick_size

logger = logging.getLogger(__name__)

EXIT_STEP = "EXIT_STEP"
Row = dict[str, Any]


class Urgency(StrEnum):
    CRITICAL = "CRITICAL"
    HIGH = "HIGH"
    NORMAL = "NORMAL"


URGENCIES: frozenset[str] = frozenset(u.value for u in Urgency)
#: How hard each urgency leans on the market: an exit asked for more urgently takes over a
#: gentler one already working (a FLATTEN during a CLOSE's walk sells at the market now).
URGENCY_RANK: dict[Urgency, int] = {Urgency.NORMAL: 0, Urgency.HIGH: 1, Urgency.CRITICAL: 2}


def more_urgent(wanted: Urgency | str, working: Urgency | str | None) -> bool:
    """Whether an exit of urgency ``wanted`` should take over one working at ``working`` (an exit
    recorded without an urgency was a market order: nothing is more urgent than that)."""
    if working is None:
        return False
    return URGENCY_RANK[Urgency(wanted)] > URGENCY_RANK[Urgency(working)]


@dataclass(frozen=True)
class ExitStep:
    """One step of an exit: a market order, or a limit at ``limit_price``."""

    kind: str                       # market | limit
    limit_price: Decimal | None = None

    @property
    def is_market(self) -> bool:
        return self.kind == "market"


MARKET = ExitStep("market")


def _floor_to_tick(price: Decimal) -> Decimal:
    tick = tick_size(price)
    return (price / tick).to_integral_value(rounding=ROUND_FLOOR) * tick


def exit_step(urgency: Urgency | str, step: int, walk_steps: int, quote: Quote | None) -> ExitStep:
    """The order of step ``step`` (0 = the first) of an exit of ``urgency``."""
    urgency = Urgency(urgency)
    if urgency is Urgency.CRITICAL or quote is None or quote.bid <= ZERO:
        return MARKET
    bid = quote.bid
    if urgency is Urgency.HIGH:
        return ExitStep("limit", _floor_to_tick(bid)) if step == 0 else MARKET
    if step > walk_steps:
        return MARKET
    ask = quote.ask if quote.ask > bid else bid
    mid = (bid + ask) / 2
    price = mid - (mid - bid) * Decimal(step) / Decimal(max(walk_steps, 1))
    return ExitStep("limit", max(_floor_to_tick(price), _floor_to_tick(bid)))


def latest_quote(broker: Broker, symbol: str) -> Quote | None:
    """The symbol's quote, or None when the broker cannot say now (the step is then a market order)."""
    try:
        return broker.get_latest_quotes([symbol]).get(symbol)
    except TransientError:
        return None


class Escalator:
    """Moves working exits to their next step when it is due; run by every order-monitor run."""

    def __init__(self, db: Any, broker: Broker, protector: Any, *, now: dt.datetime,
                 count: Any = None, warn: Any = None) -> None:
        self.db = db
        self.broker = broker
        self.protector = protector
        self.now = now
        self.count = count or (lambda *_args: None)
        self.warn = warn or (lambda _note: None)
        self.settings = protector.settings.monitor

    def due(self) -> list[Row]:
        """Open trades whose exit has a next step due now."""
        return self.db.execute_query(
            "SELECT * FROM trade_journal WHERE status = %s AND exit_urgency IS NOT NULL AND exit_urgency <> %s "
            "AND exit_next_step_at IS NOT NULL AND exit_next_step_at <= %s ORDER BY id",
            (TradeStatus.POSITION.value, Urgency.CRITICAL.value, self.now))

    def advance_all(self) -> int:
        """Take every due exit one step further; returns how many moved."""
        moved = 0
        due = self.due()
        if not due:
            return 0
        # One quote call for every due exit (a quote the broker cannot give now: a market step).
        try:
            quotes = self.broker.get_latest_quotes(sorted({t["symbol"] for t in due}))
        except TransientError:
            quotes = {}
        for trade in due:
            try:
                if self.advance(trade, quotes.get(trade["symbol"])):
                    moved += 1
            except TransientError as exc:
                self.warn(f"trade {trade['id']} {trade['symbol']}: exit step deferred: {exc}")
                self.count("exit_steps_deferred")
        return moved

    def advance(self, trade: Row, quote: Quote | None) -> bool:
        """One step for one trade, under its lock. Returns whether an order was changed or sent."""
        with self.db.trade_lock(trade["id"]) as taken:
            if not taken:
                return False
            trade = self.db.get_by_id("trade_journal", trade["id"])
            if trade is None or trade["status"] != TradeStatus.POSITION.value:
                return False
            exits = self.db.query("order_execution", {"trade_journal_id": trade["id"],
                                                      "order_type": OrderType.EXIT.value}, order_by="id")
            working = [r for r in exits if r["order_status"] not in lifecycle.TERMINAL_ORDER_STATUSES]
            reason = (exits[-1].get("exit_reason") if exits else None) or lifecycle.ExitReason.CLOSE_REQUESTED.value
            step = int(trade["exit_step"] or 0) + 1
            walk = self.settings.exit_walk_steps
            nxt = exit_step(trade["exit_urgency"], step, walk, quote)
            if working and any(r["order_status"] == lifecycle.PENDING for r in working):
                return False  # an unanswered exit: the protector's look-up resolves it first
            changed = False
            if working and not nxt.is_market and working[0].get("alpaca_order_id"):
                changed = self._walk(trade, working[0], nxt)
            elif working:
                if self.protector.cancel_and_confirm(trade["id"], working, reason=f"exit step {step}: market order"):
                    changed = self.protector.flatten(trade["id"], reason, entry_reason=reason,
                                                     urgency=Urgency.CRITICAL, keep_escalation=True) \
                        == "exit_submitted"
            else:
                # The last limit ended unfilled (canceled outside, expired): the next step sells.
                changed = self.protector.flatten(trade["id"], reason, entry_reason=reason,
                                                 urgency=Urgency(trade["exit_urgency"]), step=step,
                                                 keep_escalation=True) == "exit_submitted"
            self.db.update("trade_journal", trade["id"], {
                "exit_step": step,
                "exit_next_step_at": None if nxt.is_market else self.now + dt.timedelta(
                    seconds=self.settings.exit_step_seconds)})
            self.protector.audit.record("trade", trade["id"], EXIT_STEP, symbol=trade["symbol"],
                                        old=str(step - 1), new=str(step),
                                        reason=f"{trade['exit_urgency']} exit step {step}: "
                                               + ("market order" if nxt.is_market
                                                  else f"limit {display_price(nxt.limit_price)}"),
                                        details={"bid": quote.bid if quote else None,
                                                 "ask": quote.ask if quote else None})
            self.count("exit_steps")
            return changed

    def _walk(self, trade: Row, row: Row, nxt: ExitStep) -> bool:
        """Move the working limit to the step's price by replacing it (the shares stay covered)."""
        assert nxt.limit_price is not None
        if row.get("limit_price") is not None and Decimal(row["limit_price"]) == nxt.limit_price:
            return False
        try:
            replacement = self.protector.replace_and_record(trade["id"], row, limit_price=nxt.limit_price)
        except (BrokerRejectedError, NotFoundError) as exc:
            # Filled or ended meanwhile: the monitor's next sync records what happened.
            self.warn(f"trade {trade['id']} {trade['symbol']}: exit limit not moved to {nxt.limit_price}: {exc}")
            return False
        logger.info("exit: trade %s %s limit %s -> %s (order %s)", trade["id"], trade["symbol"],
                    row.get("limit_price"), nxt.limit_price, replacement.id)
        return True
