"""The invariants of design.md §6, checked against the broker and the database after a program run.

The broker is read through the real alpaca-py client (``AlpacaBroker``, a viewer of its own so
the programs' call counts are untouched): every order with its legs, every position. The
database is read on its own connection. ``Checker.check`` returns the violations it finds (it
never asserts), each named after its invariant:

``one_entry_per_decision`` (§6.1)
    at most one trade per decision in the database, and at most one entry order at the broker
    per decision (a replacement of that order is the same entry); at most one working entry per trade.
``stop_covers_position`` (§6.2, after a settled order_monitor run)
    every POSITION trade has broker-held stops (rows and broker orders) for exactly its quantity,
    and for every symbol the broker's open stops cover exactly the shares the system holds.
``no_short_no_oversell`` (§6.3, §6.8, after every run)
    no short position at the broker; the working sells of a symbol never exceed the shares held,
    nor do its sell groups; no trade's own sells ever filled more than its entries bought.
``rows_agree_with_broker`` (§6.4, after a settled order_monitor run)
    every order row agrees with the broker's order (status, qty, filled qty); the shares of the
    POSITION trades of a symbol are what the broker holds, less what people bought outside
    (orphans, never adopted); finished trades have no open order and no position row; the audit
    trail's last word on each order and trade is its status now.
``pnl_exact`` (§6.5, after every run)
    every CLOSED trade: ``actual_pnl == (exit_price - actual_entry) * actual_qty`` to the cent,
    the entry is the broker's entry fills (quantity and notional to the cent), and a trade exited
    only by its own orders has the P&L of its fills to the cent.
``nothing_lost`` (§6.6, after a settled run; and at the end of the day)
    every order of the system at the broker (its client order id prefix, or a leg or replacement
    of one) that is open or filled has its row; at the end of the day every approved decision is
    executed and has an outcome in ``decision_outcome``.

"Settled" means: the order monitor ran alone, to its end, with no fault and no kill in that
slot (what a faulted or killed run could not do, the next settled run must have done).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from alpaca_client import AlpacaBroker
from order_monitor import STALE_INTENT
from trading import lifecycle
from trading.broker import BrokerOrder
from trading.pricing import money

INVARIANTS: tuple[str, ...] = ("one_entry_per_decision", "stop_covers_position", "no_short_no_oversell",
                               "rows_agree_with_broker", "pnl_exact", "nothing_lost")
ZERO = Decimal(0)
CENT = Decimal("0.01")
STOP_KINDS = ("stop", "stop_limit", "trailing_stop")
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
REPLACED = ("replaced", "pending_replace")
ORDER_EVENTS = ("ORDER_INTENT", "ORDER_SUBMITTED", "ORDER_STATUS", "ORDER_NOT_FOUND", "ORDER_REFUSED")

Row = dict[str, Any]


@dataclass(frozen=True)
class Violation:
    """One broken promise, with the run after which it was seen."""

    invariant: str
    message: str
    after: str

    def line(self) -> str:
        return f"[{self.invariant}] after {self.after}: {self.message}"


@dataclass
class Truth:
    """One reading of the broker and the database."""

    positions: dict[str, Decimal]
    orders: list[BrokerOrder]          # every order, legs included (flat)
    roots: list[BrokerOrder]           # top-level orders with their legs
    parent: dict[str, str]             # leg id -> parent id
    trades: list[Row]
    rows: list[Row]
    tracking: list[Row]
    decisions: list[Row]
    audit: list[Row]

    @property
    def by_id(self) -> dict[str, BrokerOrder]:
        return {o.id: o for o in self.orders}


class Checker:
    """Reads the truth and checks the invariants; ``db_factory()`` gives a fresh connection."""

    def __init__(self, db_factory: Callable[[], Any], broker_url: str, *, prefix: str = "tm") -> None:
        self.db_factory = db_factory
        self.viewer = AlpacaBroker(base_url=broker_url, data_url=broker_url, timeout=15)
        self.prefix = prefix
        self._entry = re.compile(rf"^{re.escape(prefix)}-d(\d+)-[0-9a-f]{{8}}-e$")
        self._trade = re.compile(rf"^{re.escape(prefix)}-t(\d+)-[0-9a-f]{{8}}-")
        self._stale: dict[int, tuple[Any, ...]] = {}

    # ------------------------------------------------------------------ reading

    def read(self) -> Truth:
        positions = {p.symbol: p.qty for p in self.viewer.list_positions()}
        roots = self.viewer.list_orders_since(EPOCH, status="all")
        flat: dict[str, BrokerOrder] = {}
        parent: dict[str, str] = {}
        # A replaced order keeps listing its legs, which now belong to its replacement: walk the
        # replaced ones first so a leg's parent is the live one, and never count them as a group.
        # One whose replace is in flight (pending_replace) has stopped working: its replacement
        # (pending_new) is the order now.
        for root in sorted(roots, key=lambda o: o.status not in REPLACED):
            for order in root.walk():
                flat[order.id] = order
                for leg in order.legs:
                    parent[leg.id] = order.id
        top = [o for o in roots if o.id not in parent and o.status not in REPLACED]
        db = self.db_factory()
        try:
            return Truth(positions=positions, orders=list(flat.values()), roots=top, parent=parent,
                         trades=db.query("trade_journal", order_by="id"),
                         rows=db.query("order_execution", order_by="id"),
                         tracking=db.query("position_tracking", order_by="id"),
                         decisions=db.query("analysis_decision", order_by="id"),
                         audit=db.query("audit_event", order_by="id"))
        finally:
            db.close()

    def _owner(self, truth: Truth, order: BrokerOrder, by_alpaca: dict[str, Row], by_client: dict[str, Row],
               by_id: dict[str, BrokerOrder], depth: int = 0) -> int | None:
        """The trade an order at the broker belongs to (None: not the system's, or not yet known)."""
        row = by_alpaca.get(order.id) or by_client.get(order.client_order_id)
        if row is not None:
            return int(row["trade_journal_id"])
        match = self._trade.match(order.client_order_id)
        if match:
            return int(match.group(1))
        match = self._entry.match(order.client_order_id)
        if match:
            decision = int(match.group(1))
            for trade in truth.trades:
                if trade["initial_analysis_id"] == decision:
                    return int(trade["id"])
            return None
        if depth > 50:
            return None
        for linked in (truth.parent.get(order.id), order.replaces):
            if linked and linked in by_id:
                found = self._owner(truth, by_id[linked], by_alpaca, by_client, by_id, depth + 1)
                if found is not None:
                    return found
        return None

    def is_systems(self, truth: Truth, order: BrokerOrder, by_id: dict[str, BrokerOrder]) -> bool:
        """Sent by the system (its prefix), or a leg or replacement of such an order."""
        seen = 0
        current: BrokerOrder | None = order
        while current is not None and seen < 50:
            if current.client_order_id.startswith(f"{self.prefix}-"):
                return True
            link = truth.parent.get(current.id) or current.replaces
            current = by_id.get(link) if link else None
            seen += 1
        return False

    def _outside_shares(self, truth: Truth, symbol: str) -> Decimal:
        """Shares of ``symbol`` people bought outside and still hold, from the broker's orders (an
        answer lost on its way to the person does not hide an order): their filled buys since
        their last filled sell, which closed the whole position (the only sells people make here)."""
        by_id = truth.by_id
        shares = ZERO
        theirs = [o for o in truth.orders if o.symbol == symbol and o.filled_qty > ZERO
                  and not self.is_systems(truth, o, by_id)]
        for order in sorted(theirs, key=lambda o: (o.submitted_at or o.created_at or EPOCH, o.id)):
            shares = shares + order.filled_qty if order.side == "buy" else ZERO
        return shares

    # ------------------------------------------------------------------ checking

    def check(self, after: str, *, settled: bool, end_of_day: bool = False) -> list[Violation]:
        """Every invariant that applies after this run; the violations found."""
        truth = self.read()
        found: list[Violation] = []

        def add(invariant: str, message: str) -> None:
            found.append(Violation(invariant, message, after))

        self._one_entry(truth, add)
        self._no_short(truth, add)
        self._pnl(truth, add)
        if settled:
            self._stops(truth, add)
            self._rows_agree(truth, add)
            self._nothing_lost(truth, add)
        if end_of_day:
            self._decisions_have_outcomes(truth, add)
        return found

    def _one_entry(self, truth: Truth, add: Callable[[str, str], None]) -> None:
        per_decision: dict[int, list[int]] = defaultdict(list)
        for trade in truth.trades:
            if trade["initial_analysis_id"] is not None:
                per_decision[int(trade["initial_analysis_id"])].append(int(trade["id"]))
        for decision, trades in per_decision.items():
            if len(trades) > 1:
                add("one_entry_per_decision", f"decision {decision} has trades {trades}")
        entries: dict[int, list[str]] = defaultdict(list)
        for order in truth.roots:
            match = self._entry.match(order.client_order_id)
            if match and not order.replaces:
                entries[int(match.group(1))].append(order.id)
        for decision, ids in entries.items():
            if len(ids) > 1:
                add("one_entry_per_decision", f"decision {decision}: {len(ids)} entry orders at the broker {ids}")
        by_id = truth.by_id
        by_alpaca = {r["alpaca_order_id"]: r for r in truth.rows if r["alpaca_order_id"]}
        by_client = {r["client_order_id"]: r for r in truth.rows if r["client_order_id"]}
        working: dict[int, list[str]] = defaultdict(list)
        for order in truth.roots:
            if order.side == "buy" and not order.terminal and self.is_systems(truth, order, by_id):
                trade = self._owner(truth, order, by_alpaca, by_client, by_id)
                if trade is not None:
                    working[trade].append(order.id)
        for trade, ids in working.items():
            if len(ids) > 1:
                add("one_entry_per_decision", f"trade {trade}: {len(ids)} working entries {ids}")

    def _no_short(self, truth: Truth, add: Callable[[str, str], None]) -> None:
        for symbol, qty in truth.positions.items():
            if qty < ZERO:
                add("no_short_no_oversell", f"{symbol}: short {qty} at the broker")
        for symbol in {o.symbol for o in truth.roots}:
            held = max(truth.positions.get(symbol, ZERO), ZERO)
            groups = [g for g in truth.roots if g.symbol == symbol and _open_sells(g)]
            # The legs of one group (OCO, bracket) reserve the same shares once: the largest counts.
            working = sum((max((_remaining(o) for o in _open_sells(g) if o.status != "held"), default=ZERO)
                           for g in groups), ZERO)
            if working > held:
                add("no_short_no_oversell", f"{symbol}: working sells for {working} shares, {held} held")
            cover = sum((max(_remaining(o) for o in _open_sells(g)) for g in groups), ZERO)
            if cover > held:
                add("no_short_no_oversell", f"{symbol}: sell groups cover {cover} shares, {held} held")
        by_id = truth.by_id
        by_alpaca = {r["alpaca_order_id"]: r for r in truth.rows if r["alpaca_order_id"]}
        by_client = {r["client_order_id"]: r for r in truth.rows if r["client_order_id"]}
        bought: dict[int, Decimal] = defaultdict(Decimal)
        sold: dict[int, Decimal] = defaultdict(Decimal)
        for order in truth.orders:
            if order.filled_qty <= ZERO or not self.is_systems(truth, order, by_id):
                continue
            trade = self._owner(truth, order, by_alpaca, by_client, by_id)
            if trade is None:
                continue
            (bought if order.side == "buy" else sold)[trade] += order.filled_qty
        for trade, qty in sold.items():
            if qty > bought.get(trade, ZERO):
                add("no_short_no_oversell", f"trade {trade}: its sells filled {qty} shares, its entries bought "
                                            f"{bought.get(trade, ZERO)}")

    def _fills(self, truth: Truth) -> dict[int, dict[str, list[BrokerOrder]]]:
        by_id = truth.by_id
        by_alpaca = {r["alpaca_order_id"]: r for r in truth.rows if r["alpaca_order_id"]}
        by_client = {r["client_order_id"]: r for r in truth.rows if r["client_order_id"]}
        fills: dict[int, dict[str, list[BrokerOrder]]] = defaultdict(lambda: {"buy": [], "sell": []})
        for order in truth.orders:
            if order.filled_qty > ZERO and self.is_systems(truth, order, by_id):
                trade = self._owner(truth, order, by_alpaca, by_client, by_id)
                if trade is not None:
                    fills[trade][order.side].append(order)
        return fills

    def _pnl(self, truth: Truth, add: Callable[[str, str], None]) -> None:
        fills = self._fills(truth)
        for trade in truth.trades:
            if trade["status"] != "CLOSED" or not trade["actual_qty"]:
                continue
            tid = int(trade["id"])
            qty, entry, exit_price, pnl = (Decimal(trade["actual_qty"]), trade["actual_entry"], trade["exit_price"],
                                           trade["actual_pnl"])
            if entry is None or exit_price is None or pnl is None:
                add("pnl_exact", f"trade {tid} CLOSED without entry/exit/pnl ({entry}, {exit_price}, {pnl})")
                continue
            expected = money((Decimal(exit_price) - Decimal(entry)) * qty)
            if Decimal(pnl) != expected:
                add("pnl_exact", f"trade {tid}: actual_pnl {pnl}, (exit {exit_price} - entry {entry}) x {qty} = "
                                 f"{expected}")
            buys = fills[tid]["buy"]
            bought = sum((o.filled_qty for o in buys), ZERO)
            cost = sum((o.filled_qty * (o.filled_avg_price or ZERO) for o in buys), ZERO)
            if bought != qty:
                add("pnl_exact", f"trade {tid}: actual_qty {qty}, its entries filled {bought} at the broker")
                continue
            if money(Decimal(entry) * qty) != money(cost):
                add("pnl_exact", f"trade {tid}: entry {entry} x {qty} = {money(Decimal(entry) * qty)}, the broker's "
                                 f"entry fills cost {money(cost)}")
            sells = fills[tid]["sell"]
            sold = sum((o.filled_qty for o in sells), ZERO)
            if sold == qty:
                proceeds = sum((o.filled_qty * (o.filled_avg_price or ZERO) for o in sells), ZERO)
                if money(proceeds - cost) != Decimal(pnl):
                    add("pnl_exact", f"trade {tid} ({trade['exit_reason']}): actual_pnl {pnl}, its fills give "
                                     f"{money(proceeds - cost)}")

    def _stops(self, truth: Truth, add: Callable[[str, str], None]) -> None:
        db_qty: dict[str, Decimal] = defaultdict(Decimal)
        by_id = truth.by_id
        # A person closing a position after the close queues a sell that holds every share until
        # the open: the broker refuses any stop for them ("insufficient qty available"), and the
        # shares are sold at the open. The system reports the position UNPROTECTED and cannot do
        # more, so a symbol whose shares the person's own sells hold entirely is not checked here.
        person_selling: dict[str, Decimal] = defaultdict(Decimal)
        for group in truth.roots:
            for order in _open_sells(group):
                if not self.is_systems(truth, order, by_id):
                    person_selling[group.symbol] += _remaining(order)
        held_by_person = {symbol for symbol, qty in person_selling.items()
                          if qty > ZERO and qty >= truth.positions.get(symbol, ZERO)}
        for trade in truth.trades:
            if trade["status"] != "POSITION" or trade["symbol"] in held_by_person:
                continue
            positions = [p for p in truth.tracking if p["trade_journal_id"] == trade["id"]]
            if len(positions) != 1:
                continue  # rows_agree_with_broker reports it
            qty = Decimal(positions[0]["qty"])
            db_qty[trade["symbol"]] += qty
            stops = [r for r in truth.rows if r["trade_journal_id"] == trade["id"] and r["order_type"] == "STOP_LOSS"
                     and lifecycle.is_protecting(r["order_status"])]
            covered = sum((Decimal(r["qty"]) - Decimal(r["filled_qty"]) for r in stops), ZERO)
            if covered != qty:
                add("stop_covers_position", f"trade {trade['id']} {trade['symbol']}: stop rows cover {covered} of "
                                            f"{qty} shares")
            elif positions[0]["stop_loss_order_id"] not in {r["alpaca_order_id"] for r in stops}:
                add("stop_covers_position", f"trade {trade['id']}: its position points at stop "
                                            f"{positions[0]['stop_loss_order_id']}, not at a live one")
        for symbol in (set(truth.positions) | set(db_qty)) - held_by_person:
            held = truth.positions.get(symbol, ZERO)
            system = held - self._outside_shares(truth, symbol)
            stop_cover = sum((_remaining(o) for g in truth.roots if g.symbol == symbol for o in _open_sells(g)
                              if o.kind in STOP_KINDS and self.is_systems(truth, o, by_id)), ZERO)
            if system > ZERO and stop_cover != system:
                add("stop_covers_position", f"{symbol}: the broker's stops cover {stop_cover} of the system's "
                                            f"{system} shares ({held} held)")

    def _rows_agree(self, truth: Truth, add: Callable[[str, str], None]) -> None:
        by_id = truth.by_id
        # A row may lag an order that changed during the run that wrote it (the run's own waits
        # pass the exchange's clock after it recorded the order): the promise is that it agrees
        # after the *next* monitor run, so a row that still disagrees with the same broker state
        # at the next settled check is the violation.
        stale: dict[int, tuple[Any, ...]] = {}
        for row in truth.rows:
            order = by_id.get(row["alpaca_order_id"] or "")
            if order is None:
                continue
            if row["order_status"] != order.status:
                message = (f"order row {row['id']} ({row['order_type']}, trade {row['trade_journal_id']}) is "
                           f"{row['order_status']}, the broker says {order.status}")
            elif Decimal(row["filled_qty"]) != order.filled_qty or Decimal(row["qty"]) != order.qty:
                message = (f"order row {row['id']}: qty {row['qty']} filled {row['filled_qty']}, the broker says "
                           f"{order.qty} filled {order.filled_qty}")
            else:
                continue
            key = (row["order_status"], row["filled_qty"], order.status, order.filled_qty, order.qty, order.updated_at)
            stale[int(row["id"])] = key
            if self._stale.get(int(row["id"])) == key:
                add("rows_agree_with_broker", message + " (still, after the next monitor run)")
        self._stale = stale
        db_qty: dict[str, Decimal] = defaultdict(Decimal)
        for trade in truth.trades:
            positions = [p for p in truth.tracking if p["trade_journal_id"] == trade["id"]]
            if trade["status"] == "POSITION":
                if len(positions) != 1:
                    add("rows_agree_with_broker", f"trade {trade['id']} is POSITION with {len(positions)} "
                                                  "position rows")
                    continue
                db_qty[trade["symbol"]] += Decimal(positions[0]["qty"])
                continue
            if positions:
                add("rows_agree_with_broker", f"trade {trade['id']} is {trade['status']} but has a position row")
            if trade["status"] in ("CLOSED", "CANCELLED"):
                still = [(r["id"], r["order_type"], r["order_status"]) for r in truth.rows
                         if r["trade_journal_id"] == trade["id"] and (r["order_status"] in lifecycle.OPEN_ORDER_STATUSES
                                                                      or r["order_status"] == "pending")
                         and not self._in_flight(r, truth)]
                if still:
                    add("rows_agree_with_broker", f"finished trade {trade['id']} has open order rows {still}")
        for symbol in set(truth.positions) | set(db_qty):
            held = truth.positions.get(symbol, ZERO)
            system = held - self._outside_shares(truth, symbol)
            if system != db_qty.get(symbol, ZERO):
                add("rows_agree_with_broker", f"{symbol}: the broker holds {held} ({system} the system's), the "
                                              f"POSITION trades {db_qty.get(symbol, ZERO)}")
        by_alpaca = {r["alpaca_order_id"]: r for r in truth.rows if r["alpaca_order_id"]}
        by_client = {r["client_order_id"]: r for r in truth.rows if r["client_order_id"]}
        status = {int(t["id"]): t["status"] for t in truth.trades}
        for order in truth.orders:
            if order.terminal or not self.is_systems(truth, order, by_id):
                continue
            trade = self._owner(truth, order, by_alpaca, by_client, by_id)
            if trade is not None and status.get(trade) in ("CLOSED", "CANCELLED"):
                if truth.parent.get(order.id) and order.status == "held":
                    root = by_id.get(truth.parent[order.id])
                    if root is not None and root.terminal and root.filled_qty == ZERO:
                        continue  # a held leg of an entry that never filled can never sell
                add("rows_agree_with_broker", f"trade {trade} is {status[trade]} but its order {order.id} "
                                              f"({order.kind} {order.side}) is {order.status} at the broker")
        self._audit_trail(truth, add)

    @staticmethod
    def _in_flight(row: Row, truth: Truth) -> bool:
        """An intent the broker has no order for, younger than the monitor's ``STALE_INTENT``: by
        the system's rule it may still be on its way (another program sending it), and it is
        concluded ``not_found`` once older. That age is wall-clock time, and a chaos day passes in
        seconds of it, so such an intent is left to the rule instead of counted as lost."""
        if row["order_status"] != "pending" or row.get("alpaca_order_id"):
            return False
        if any(o.client_order_id == row["client_order_id"] for o in truth.orders):
            return False
        return dt.datetime.now(dt.UTC) - row["created_at"] < STALE_INTENT

    def _audit_trail(self, truth: Truth, add: Callable[[str, str], None]) -> None:
        last_order: dict[int, str] = {}
        last_trade: dict[int, str] = {}
        for event in truth.audit:
            if event["entity_type"] == "order" and event["event"] in ORDER_EVENTS and event["new_value"] is not None:
                last_order[event["entity_id"]] = event["new_value"]
            elif event["entity_type"] == "trade" and event["event"] == "TRADE_STATUS":
                last_trade[event["entity_id"]] = event["new_value"]
        for row in truth.rows:
            if last_order.get(row["id"]) != row["order_status"]:
                add("rows_agree_with_broker", f"order row {row['id']} is {row['order_status']}, its audit trail says "
                                              f"{last_order.get(row['id'])}")
        for trade in truth.trades:
            if last_trade.get(trade["id"]) != trade["status"]:
                add("rows_agree_with_broker", f"trade {trade['id']} is {trade['status']}, its audit trail says "
                                              f"{last_trade.get(trade['id'])}")

    def _nothing_lost(self, truth: Truth, add: Callable[[str, str], None]) -> None:
        known = {r["alpaca_order_id"] for r in truth.rows if r["alpaca_order_id"]}
        known_clients = {r["client_order_id"] for r in truth.rows if r["client_order_id"]}
        by_id = truth.by_id
        for order in truth.orders:
            if order.id in known or order.client_order_id in known_clients:
                continue
            if not self.is_systems(truth, order, by_id):
                continue
            if order.terminal and order.filled_qty == ZERO:
                continue  # canceled before anything happened (an unfilled entry's legs, a replaced leg)
            add("nothing_lost", f"the broker's order {order.id} ({order.client_order_id}, {order.kind} {order.side} "
                                f"{order.qty} {order.symbol}, {order.status}, filled {order.filled_qty}) has no row")

    def _decisions_have_outcomes(self, truth: Truth, add: Callable[[str, str], None]) -> None:
        db = self.db_factory()
        try:
            outcomes = {int(r["id"]): r for r in db.execute_query("SELECT * FROM decision_outcome")}
        finally:
            db.close()
        for decision in truth.decisions:
            if not decision["Approve"]:
                continue
            outcome = outcomes.get(int(decision["id"]))
            if not decision["executed"]:
                add("nothing_lost", f"decision {decision['id']} ({decision['primary_action']} {decision['ticker']}) "
                                    f"approved but never executed (outcome {outcome and outcome['outcome']})")
            elif outcome is None or outcome["outcome"] not in ("accepted", "refused", "executed"):
                add("nothing_lost", f"decision {decision['id']} executed without an outcome "
                                    f"({outcome and outcome['outcome']})")


def _open_sells(group: BrokerOrder) -> list[BrokerOrder]:
    """A group's open sells; the held legs of an entry not completely filled cannot sell yet, and
    an order whose replace is in flight counts through its replacement."""
    if group.side == "buy" and group.status != "filled":
        return []
    return [o for o in group.walk() if o.side == "sell" and not o.terminal and o.status not in REPLACED]


def _remaining(order: BrokerOrder) -> Decimal:
    return order.qty - order.filled_qty


def count(violations: Iterable[Violation]) -> dict[str, int]:
    """Violations per invariant, every invariant listed."""
    counts = dict.fromkeys(INVARIANTS, 0)
    for violation in violations:
        counts[violation.invariant] += 1
    return counts
