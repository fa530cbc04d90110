"""Order and trade life: the status vocabularies and the only transitions allowed between them.

Everything that changes an ``order_execution.order_status`` or a ``trade_journal.status``
asks this module first. Alpaca's status words are mapped here and nowhere else; a word not
listed raises ``UnknownStatusError`` instead of being guessed. The schema's CHECK
constraints are generated from the same sets, so the database and the code cannot disagree.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from trading.errors import UnknownStatusError

# --------------------------------------------------------------------------- order statuses

#: Our own status before the broker has answered: the intent is recorded, the request may or
#: may not have reached the broker (look it up by client_order_id before doing anything).
PENDING: Final = "pending"
#: Our own conclusion after repeated direct look-ups (by id and by client order id) found
#: nothing at the broker. Not a broker word; reversible if the order shows up again.
NOT_FOUND: Final = "not_found"

#: Every status word Alpaca's Trading API v2 uses for an order.
ALPACA_ORDER_STATUSES: Final = frozenset({
    "new", "partially_filled", "filled", "done_for_day", "canceled", "expired", "replaced",
    "pending_cancel", "pending_replace", "accepted", "pending_new", "accepted_for_bidding",
    "stopped", "rejected", "suspended", "calculated", "held",
})

ORDER_STATUSES: Final = ALPACA_ORDER_STATUSES | {PENDING, NOT_FOUND}

#: Finished: nothing more will happen to the order at the broker.
TERMINAL_ORDER_STATUSES: Final = frozenset({"filled", "canceled", "expired", "replaced", "rejected", NOT_FOUND})

#: Sent but not yet working at the exchange.
IN_FLIGHT_ORDER_STATUSES: Final = frozenset({PENDING, "pending_new", "accepted", "accepted_for_bidding"})

#: Open at the broker: may still fill (``held`` legs included: the broker arms them itself).
OPEN_ORDER_STATUSES: Final = ORDER_STATUSES - TERMINAL_ORDER_STATUSES - {PENDING}

#: Open orders that count as broker-held protection. ``pending_cancel`` does not: it is on
#: its way out and must be replaced.
PROTECTING_ORDER_STATUSES: Final = OPEN_ORDER_STATUSES - {"pending_cancel"}

#: Ended without filling anything more (the filled part, if any, stays filled).
ENDED_UNFILLED_STATUSES: Final = frozenset({"canceled", "expired", "rejected", NOT_FOUND})


def _allowed_from_open() -> frozenset[str]:
    # The monitor polls every few minutes, so a working order can be seen next in any later
    # state (new -> filled, held -> canceled, ...). It can never go back to our ``pending``.
    return ORDER_STATUSES - {PENDING}


#: from-status -> statuses it may move to. Terminal statuses have no way out except where noted.
ORDER_TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    # The first answer of the broker (or the first look-up after a crash) may be anything.
    PENDING: ORDER_STATUSES - {PENDING},
    # ``not_found`` was only our conclusion; if the broker shows the order after all, the
    # broker is the truth and its status is taken.
    NOT_FOUND: ALPACA_ORDER_STATUSES,
    "filled": frozenset(),
    "canceled": frozenset(),
    "expired": frozenset(),
    "replaced": frozenset(),
    "rejected": frozenset(),
    **{status: _allowed_from_open() for status in OPEN_ORDER_STATUSES},
}


def map_alpaca_order_status(word: str) -> str:
    """The order status for a word the broker sent; unknown words raise, never guessed.

    alpaca-py hands enums whose ``value`` is the word; plain strings work too.
    """
    value = getattr(word, "value", word)
    text = str(value).lower()
    if text not in ALPACA_ORDER_STATUSES:
        raise UnknownStatusError(f"unknown Alpaca order status {value!r}")
    return text


def order_transition_allowed(current: str, new: str) -> bool:
    """Whether an order may move from ``current`` to ``new`` (same status is always allowed)."""
    if current == new:
        return True
    if current not in ORDER_TRANSITIONS:
        raise UnknownStatusError(f"unknown order status in the database: {current!r}")
    return new in ORDER_TRANSITIONS[current]


def is_terminal(status: str) -> bool:
    """Whether the order has finished at the broker."""
    return status in TERMINAL_ORDER_STATUSES


def is_protecting(status: str) -> bool:
    """Whether an order in this status still counts as a live broker-held exit."""
    return status in PROTECTING_ORDER_STATUSES


# --------------------------------------------------------------------------- order roles


class OrderType(StrEnum):
    """What an order is for, in ``order_execution.order_type``."""

    ENTRY = "ENTRY"
    STOP_LOSS = "STOP_LOSS"
    TAKE_PROFIT = "TAKE_PROFIT"
    EXIT = "EXIT"


PROTECTIVE_ORDER_TYPES: Final = frozenset({OrderType.STOP_LOSS.value, OrderType.TAKE_PROFIT.value})
EXIT_ORDER_TYPES: Final = frozenset({OrderType.STOP_LOSS.value, OrderType.TAKE_PROFIT.value, OrderType.EXIT.value})
ORDER_SIDES: Final = frozenset({"buy", "sell"})

# --------------------------------------------------------------------------- trade statuses


class TradeStatus(StrEnum):
    """The life of a trade in ``trade_journal.status``."""

    ORDERED = "ORDERED"      # entry sent, nothing filled yet
    POSITION = "POSITION"    # shares held (all or part of the entry filled)
    CLOSED = "CLOSED"        # every share sold; exit_price and actual_pnl are final
    CANCELLED = "CANCELLED"  # the entry ended with nothing filled


TRADE_TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    TradeStatus.ORDERED.value: frozenset({TradeStatus.POSITION.value, TradeStatus.CANCELLED.value}),
    TradeStatus.POSITION.value: frozenset({TradeStatus.CLOSED.value}),
    TradeStatus.CLOSED.value: frozenset(),
    # Only a trade cancelled on our own conclusion that its entry was not at the broker
    # (``trade_may_reopen``): the entry showing up filled after all makes it a position.
    TradeStatus.CANCELLED.value: frozenset({TradeStatus.POSITION.value}),
}
OPEN_TRADE_STATUSES: Final = frozenset({TradeStatus.ORDERED.value, TradeStatus.POSITION.value})
TRADE_STATUSES: Final = frozenset(TRADE_TRANSITIONS)
TRADE_STYLES: Final = frozenset({"SWING", "DAYTRADE"})


def trade_transition_allowed(current: str, new: str) -> bool:
    """Whether a trade may move from ``current`` to ``new`` (same status is always allowed)."""
    if current == new:
        return True
    if current not in TRADE_TRANSITIONS:
        raise UnknownStatusError(f"unknown trade status in the database: {current!r}")
    return new in TRADE_TRANSITIONS[current]


class ExitReason(StrEnum):
    """Why a trade ended, in ``trade_journal.exit_reason``.

    CLOSED trades: STOPPED_OUT, PROFIT_TAKEN, DAY_END_EXIT, CLOSE_REQUESTED (a CLOSE
    decision), MANUAL_EXIT (closed outside the system with no exit order of ours),
    TRAILING_STOP (the stop of a trailing trade, after it was raised at least once), FLATTENED
    (sold by the order monitor because the trading state was FLATTEN; also the reason of a
    trade CANCELLED when FLATTEN canceled its unfilled entry).
    CANCELLED trades: CANCEL_REQUESTED (a CANCEL decision), AMENDED (replaced by an AMEND
    decision), ENTRY_EXPIRED, ENTRY_CANCELED (canceled at the broker from outside),
    ENTRY_REJECTED (the broker accepted then rejected it), BROKER_REFUSED (refused at
    submission), DAY_END_CANCEL (an unfilled DAYTRADE entry at the day-end exit),
    ENTRY_NOT_FOUND (the broker never had the order).
    """

    STOPPED_OUT = "STOPPED_OUT"
    PROFIT_TAKEN = "PROFIT_TAKEN"
    MANUAL_EXIT = "MANUAL_EXIT"
    DAY_END_EXIT = "DAY_END_EXIT"
    CLOSE_REQUESTED = "CLOSE_REQUESTED"
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    AMENDED = "AMENDED"
    ENTRY_EXPIRED = "ENTRY_EXPIRED"
    ENTRY_CANCELED = "ENTRY_CANCELED"
    ENTRY_REJECTED = "ENTRY_REJECTED"
    BROKER_REFUSED = "BROKER_REFUSED"
    DAY_END_CANCEL = "DAY_END_CANCEL"
    ENTRY_NOT_FOUND = "ENTRY_NOT_FOUND"
    TRAILING_STOP = "TRAILING_STOP"
    FLATTENED = "FLATTENED"


EXIT_REASONS: Final = frozenset(reason.value for reason in ExitReason)

#: Cancel reasons that were only the system's conclusion, not the broker's word: such a trade
#: reopens when its entry is found filled later (the broker is the truth).
REOPENABLE_CANCEL_REASONS: Final = frozenset({ExitReason.ENTRY_NOT_FOUND.value})


def trade_may_reopen(status: str, exit_reason: str | None) -> bool:
    """Whether a finished trade takes a late entry fill as its position (CANCELLED as ENTRY_NOT_FOUND)."""
    return status == TradeStatus.CANCELLED.value and exit_reason in REOPENABLE_CANCEL_REASONS

#: The exit reason a filled exit order gives its trade, by order type.
EXIT_REASON_BY_ORDER_TYPE: Final = {
    OrderType.STOP_LOSS.value: ExitReason.STOPPED_OUT.value,
    OrderType.TAKE_PROFIT.value: ExitReason.PROFIT_TAKEN.value,
}

#: The reason a trade is CANCELLED when its entry ends with nothing filled, by final status.
CANCEL_REASON_BY_ENTRY_STATUS: Final = {
    "expired": ExitReason.ENTRY_EXPIRED.value,
    "canceled": ExitReason.ENTRY_CANCELED.value,
    "rejected": ExitReason.ENTRY_REJECTED.value,
    NOT_FOUND: ExitReason.ENTRY_NOT_FOUND.value,
}

# --------------------------------------------------------------------------- decisions

PRIMARY_ACTIONS: Final = frozenset({"NEW_TRADE", "CANCEL", "AMEND", "CLOSE", "NO_ACTION"})

# --------------------------------------------------------------------------- program runs

RUN_OUTCOMES: Final = frozenset({"running", "success", "warning", "failed", "skipped"})
