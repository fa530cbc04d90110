"""Helpers for the order monitor's tests: run it, open trades quickly, and check the invariants.

``check_invariants`` is called after every monitor run in ``test_order_monitor.py`` and
``test_integration.py``. It asserts, from the database *and* from the paper exchange (read
through a separate ``AlpacaBroker`` so the monitor's call counts are not disturbed):

- every POSITION trade has one ``position_tracking`` row, and protecting STOP_LOSS rows whose
  remaining quantity (qty - filled_qty) equals the position's quantity; the position points at
  one of those stops;
- the exchange holds exactly the shares the database says, per symbol, and never a short position
  (the exchange is a margin account like Alpaca paper: a sell beyond the shares held would open a
  short there, so this check catches every oversell);
- the exchange's open sell orders for a symbol cover exactly the position: one stop (held or
  working) for every share, order groups that together never cover more than the position,
  and working (non-``held``) sells that never exceed the shares held;
- every ``order_execution`` row the exchange knows agrees with it (status, qty, filled qty);
- finished trades (CLOSED, CANCELLED) have no open order rows and no position row;
- the audit trail explains the present: the last status an order's or trade's audit rows
  name is its status now, and every position opened or closed left its row.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import order_executor
import order_monitor
from alpaca_client import AlpacaBroker
from config import Settings
from tests.factories import ExchangeAdmin, add_decision, make_settings
from trading import lifecycle
from trading.broker import BrokerOrder
from trading.program import RunSummary

ZERO = Decimal(0)
STOP_KINDS = ("stop", "stop_limit", "trailing_stop")


def run_monitor(db: Any, broker: AlpacaBroker, settings: Settings | None = None, *, check: bool = True,
                waiting: Iterable[int] = ()) -> RunSummary:
    """One order monitor run, then the invariants.

    The run starts after one matching pass of the exchange (scheduled runs are minutes apart, so
    what was sent or canceled before has been acknowledged or completed by then), and its waits
    between cancel confirmations pass the exchange's simulated clock (no real sleeping), so cancels
    complete as they would at Alpaca. What the run itself sends is checked as answered (pending).

    ``waiting``: trades whose filled shares may be unprotected while their entry still works
    (``PARTIAL_ENTRY_POLICY=wait``).
    """
    ExchangeAdmin(broker.base_url).step()
    summary = order_monitor.run_once(db, broker, settings=settings or make_settings(), sleep=exchange_sleep(broker))
    assert summary.outcome != "failed", summary.as_dict()
    if check:
        check_invariants(db, broker, waiting=waiting)
    return summary


def exchange_sleep(broker: AlpacaBroker) -> Any:
    """A program's ``sleep`` that passes the paper exchange's simulated clock instead."""
    return ExchangeAdmin(broker.base_url).sleeper()


def execute(db: Any, broker: AlpacaBroker, settings: Settings | None = None) -> RunSummary:
    summary = order_executor.run_once(db, broker, settings=settings or make_settings(), sleep=exchange_sleep(broker))
    assert summary.outcome in ("success", "warning"), summary.as_dict()
    return summary


def place_entry(db: Any, broker: AlpacaBroker, symbol: str = "AAPL", settings: Settings | None = None,
                **plan: Any) -> dict[str, Any]:
    """An approved NEW_TRADE decision placed by the executor; returns its trade row."""
    decision_id = add_decision(db, symbol, **plan)
    execute(db, broker, settings)
    trades = db.query("trade_journal", {"initial_analysis_id": decision_id})
    assert len(trades) == 1, f"decision {decision_id} placed no trade: {db.query('audit_event')[-1:]}"
    return trades[0]


def open_position(db: Any, exchange: ExchangeAdmin, broker: AlpacaBroker, symbol: str = "AAPL",
                  fill_at: tuple[str, str] = ("149.90", "150.00"), settings: Settings | None = None,
                  **plan: Any) -> dict[str, Any]:
    """Place an entry, fill it at ``fill_at`` (bid, ask) and let the monitor record the position."""
    trade = place_entry(db, broker, symbol, settings, **plan)
    exchange.quotes(**{symbol: fill_at})
    run_monitor(db, broker, settings)
    trade = db.get_by_id("trade_journal", trade["id"])
    assert trade["status"] == "POSITION"
    return trade


def rows(db: Any, trade_id: int, order_type: str | None = None) -> list[dict[str, Any]]:
    where: dict[str, Any] = {"trade_journal_id": trade_id}
    if order_type:
        where["order_type"] = order_type
    return db.query("order_execution", where, order_by="id")


def audit_events(db: Any, event: str, entity_type: str | None = None, entity_id: int | None = None) -> list[dict]:
    where: dict[str, Any] = {"event": event}
    if entity_type:
        where["entity_type"] = entity_type
    if entity_id is not None:
        where["entity_id"] = entity_id
    return db.query("audit_event", where, order_by="id")


def viewer(broker: AlpacaBroker) -> AlpacaBroker:
    """A second client on the same exchange, so checks do not count as the monitor's calls."""
    return AlpacaBroker(base_url=broker.base_url, data_url=broker.data_url, timeout=5)


def open_groups(broker: AlpacaBroker, symbol: str | None = None) -> list[BrokerOrder]:
    """The exchange's open order groups (nested), optionally for one symbol."""
    groups: list[BrokerOrder] = []
    after = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    for order in viewer(broker).list_orders_since(after, status="open"):
        if symbol is None or order.symbol == symbol:
            groups.append(order)
    return groups


def open_sells(group: BrokerOrder) -> list[BrokerOrder]:
    """The group's open sells; the held legs of an entry that has not completely filled are not
    active yet (they can never sell anything) and do not count."""
    if group.side == "buy" and group.status != "filled":
        return []
    return [o for o in group.walk() if o.side == "sell" and not o.terminal]


def remaining(order: BrokerOrder) -> Decimal:
    return order.qty - order.filled_qty


def check_invariants(db: Any, broker: AlpacaBroker, *, waiting: Iterable[int] = ()) -> None:
    """The monitor's promises after a run, from the database and the exchange (see module doc)."""
    waiting = set(waiting)
    look = viewer(broker)
    exchange_positions = {p.symbol: p.qty for p in look.list_positions()}
    shorts = {symbol: qty for symbol, qty in exchange_positions.items() if qty < ZERO}
    assert not shorts, f"short positions at the exchange (a sell beyond the shares held): {shorts}"
    groups_by_symbol: dict[str, list[BrokerOrder]] = defaultdict(list)
    for group in open_groups(broker):
        if open_sells(group):
            groups_by_symbol[group.symbol].append(group)

    db_qty: dict[str, Decimal] = defaultdict(Decimal)
    waiting_symbols: set[str] = set()
    for trade in db.query("trade_journal", order_by="id"):
        positions = db.query("position_tracking", {"trade_journal_id": trade["id"]})
        orders = rows(db, trade["id"])
        if trade["status"] != "POSITION":
            assert positions == [], f"trade {trade['id']} is {trade['status']} but has a position row"
            still_open = [(r["id"], r["order_type"], r["order_status"]) for r in orders
                          if r["order_status"] in lifecycle.OPEN_ORDER_STATUSES or r["order_status"] == "pending"]
            if trade["status"] in ("CLOSED", "CANCELLED"):
                assert still_open == [], f"finished trade {trade['id']} has open orders {still_open}"
            continue
        assert len(positions) == 1, f"trade {trade['id']} has {len(positions)} position rows"
        position = positions[0]
        qty = Decimal(position["qty"])
        assert qty > ZERO
        db_qty[trade["symbol"]] += qty
        if trade["id"] in waiting:
            waiting_symbols.add(trade["symbol"])
            continue
        stops = [r for r in orders if r["order_type"] == "STOP_LOSS" and lifecycle.is_protecting(r["order_status"])]
        covered = sum((Decimal(r["qty"]) - Decimal(r["filled_qty"]) for r in stops), ZERO)
        assert covered == qty, f"trade {trade['id']}: stops cover {covered} of {qty} shares ({stops})"
        assert position["stop_loss_order_id"] in {r["alpaca_order_id"] for r in stops}, \
            f"trade {trade['id']}: position points at {position['stop_loss_order_id']}, not at a live stop"

    for symbol in set(exchange_positions) | set(db_qty) | set(groups_by_symbol):
        held = exchange_positions.get(symbol, ZERO)
        assert held == db_qty.get(symbol, ZERO), \
            f"{symbol}: exchange holds {held}, database positions {db_qty.get(symbol, ZERO)}"
        groups = groups_by_symbol.get(symbol, [])
        working = sum((remaining(o) for g in groups for o in open_sells(g) if o.status != "held"), ZERO)
        assert working <= held, f"{symbol}: working sells for {working} shares, only {held} held"
        group_cover = sum((max(remaining(o) for o in open_sells(g)) for g in groups), ZERO)
        assert group_cover <= held, f"{symbol}: sell groups cover {group_cover} shares, only {held} held"
        if symbol in waiting_symbols:
            continue
        stop_cover = sum((remaining(o) for g in groups for o in open_sells(g) if o.kind in STOP_KINDS), ZERO)
        assert stop_cover == held, f"{symbol}: exchange stops cover {stop_cover} of {held} shares"
        assert group_cover == held, f"{symbol}: sell groups cover {group_cover} of {held} shares"

    check_audit_trail(db)

    by_id = {o["id"]: o for o in ExchangeAdmin(broker.base_url).orders()}
    for row in db.query("order_execution", order_by="id"):
        order = by_id.get(row["alpaca_order_id"])
        if order is None:
            continue
        assert row["order_status"] == order["status"], \
            f"row {row['id']} ({row['order_type']}) is {row['order_status']}, the exchange says {order['status']}"
        assert Decimal(row["filled_qty"]) == Decimal(order["filled_qty"]), f"row {row['id']} filled_qty"
        assert Decimal(row["qty"]) == Decimal(order["qty"]), f"row {row['id']} qty"


def exchange_order(exchange: ExchangeAdmin, alpaca_order_id: str) -> dict[str, Any]:
    return next(o for o in exchange.orders() if o["id"] == alpaca_order_id)


def working_sells(exchange: ExchangeAdmin, symbol: str = "AAPL") -> list[dict[str, Any]]:
    """Open sell orders of ``symbol`` at the exchange that hold shares (not ``held``)."""
    return [o for o in exchange.orders() if o["symbol"] == symbol and o["side"] == "sell"
            and o["status"] not in ("filled", "canceled", "expired", "replaced", "rejected", "held")]


ORDER_EVENTS = ("ORDER_INTENT", "ORDER_SUBMITTED", "ORDER_STATUS", "ORDER_NOT_FOUND", "ORDER_REFUSED")


def check_audit_trail(db: Any) -> None:
    """Every status change landed in ``audit_event``: the latest audited status is the status now."""
    last_order: dict[int, str] = {}
    last_trade: dict[int, str] = {}
    positions: dict[str, set[int]] = defaultdict(set)
    for event in db.query("audit_event", order_by="id"):
        if event["entity_type"] == "order" and event["event"] in ORDER_EVENTS and event["new_value"] is not None:
            last_order[event["entity_id"]] = event["new_value"]
        elif event["entity_type"] == "trade" and event["event"] == "TRADE_STATUS":
            last_trade[event["entity_id"]] = event["new_value"]
        elif event["entity_type"] == "position" and event["event"] in ("POSITION_OPENED", "POSITION_CLOSED"):
            positions[event["event"]].add(int(event["details"]["trade_journal_id"]))
    for row in db.query("order_execution", order_by="id"):
        assert last_order.get(row["id"]) == row["order_status"], \
            f"order row {row['id']} is {row['order_status']}, its audit trail says {last_order.get(row['id'])}"
    for trade in db.query("trade_journal", order_by="id"):
        assert last_trade.get(trade["id"]) == trade["status"], \
            f"trade {trade['id']} is {trade['status']}, its audit trail says {last_trade.get(trade['id'])}"
        if trade["status"] in ("POSITION", "CLOSED"):
            assert trade["id"] in positions["POSITION_OPENED"], f"trade {trade['id']}: no POSITION_OPENED"
        if trade["status"] == "CLOSED":
            assert trade["id"] in positions["POSITION_CLOSED"], f"trade {trade['id']}: no POSITION_CLOSED"
