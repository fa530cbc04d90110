"""trading.lifecycle: the status vocabularies and the transition tables."""

from __future__ import annotations

import pytest

from trading import lifecycle
from trading.errors import UnknownStatusError


@pytest.mark.parametrize("word", sorted(lifecycle.ALPACA_ORDER_STATUSES))
def test_every_alpaca_status_word_is_mapped(word):
    assert lifecycle.map_alpaca_order_status(word) == word
    assert lifecycle.map_alpaca_order_status(word.upper()) == word


def test_enum_values_from_alpaca_py_are_mapped():
    from alpaca.trading.enums import OrderStatus

    assert lifecycle.map_alpaca_order_status(OrderStatus.PARTIALLY_FILLED) == "partially_filled"


@pytest.mark.parametrize("word", ["open", "done", "", "FILLED_PARTIALLY", "pending"])
def test_unknown_status_words_raise_instead_of_being_guessed(word):
    with pytest.raises(UnknownStatusError):
        lifecycle.map_alpaca_order_status(word)


def test_status_sets_partition_the_vocabulary():
    statuses = lifecycle.ORDER_STATUSES
    assert lifecycle.TERMINAL_ORDER_STATUSES | lifecycle.OPEN_ORDER_STATUSES | {lifecycle.PENDING} == statuses
    assert not lifecycle.TERMINAL_ORDER_STATUSES & lifecycle.OPEN_ORDER_STATUSES
    assert "held" in lifecycle.PROTECTING_ORDER_STATUSES
    assert "pending_cancel" not in lifecycle.PROTECTING_ORDER_STATUSES
    assert set(lifecycle.ORDER_TRANSITIONS) == statuses


@pytest.mark.parametrize("terminal", ["filled", "canceled", "expired", "replaced", "rejected"])
def test_terminal_orders_never_move_again(terminal):
    assert lifecycle.is_terminal(terminal)
    for other in lifecycle.ORDER_STATUSES - {terminal}:
        assert not lifecycle.order_transition_allowed(terminal, other)
    assert lifecycle.order_transition_allowed(terminal, terminal)


def test_working_orders_may_jump_to_any_later_state_but_never_back_to_pending():
    assert lifecycle.order_transition_allowed("new", "filled")
    assert lifecycle.order_transition_allowed("held", "canceled")
    assert lifecycle.order_transition_allowed("partially_filled", "expired")
    assert not lifecycle.order_transition_allowed("new", lifecycle.PENDING)


def test_pending_takes_the_first_answer_and_not_found_can_be_revived_by_the_broker():
    assert all(lifecycle.order_transition_allowed(lifecycle.PENDING, s)
               for s in lifecycle.ORDER_STATUSES - {lifecycle.PENDING})
    assert lifecycle.order_transition_allowed(lifecycle.NOT_FOUND, "filled")
    assert not lifecycle.order_transition_allowed(lifecycle.NOT_FOUND, lifecycle.PENDING)


def test_unknown_current_status_raises():
    with pytest.raises(UnknownStatusError):
        lifecycle.order_transition_allowed("weird", "new")
    with pytest.raises(UnknownStatusError):
        lifecycle.trade_transition_allowed("OPEN", "CLOSED")


@pytest.mark.parametrize("current, new, allowed", [
    ("ORDERED", "POSITION", True), ("ORDERED", "CANCELLED", True), ("POSITION", "CLOSED", True),
    ("ORDERED", "CLOSED", False), ("POSITION", "CANCELLED", False), ("CLOSED", "POSITION", False),
    ("CANCELLED", "ORDERED", False), ("CLOSED", "CLOSED", True),
])
def test_trade_transitions(current, new, allowed):
    assert lifecycle.trade_transition_allowed(current, new) is allowed


def test_every_entry_ending_has_a_cancel_reason_and_every_exit_type_a_reason():
    assert set(lifecycle.CANCEL_REASON_BY_ENTRY_STATUS) == set(lifecycle.ENDED_UNFILLED_STATUSES)
    assert set(lifecycle.CANCEL_REASON_BY_ENTRY_STATUS.values()) <= lifecycle.EXIT_REASONS
    assert set(lifecycle.EXIT_REASON_BY_ORDER_TYPE) == lifecycle.PROTECTIVE_ORDER_TYPES
