"""A cycle's writes in few round trips: the trades of one batch read once, written at the end.

``TradeBatch`` stands in for the database connection (``TradingDB``) while the order monitor
applies the broker's state to a batch of trades in one transaction. It is what ``Reconciler``,
``TradeBook``, ``OrderBook`` and ``Auditor`` already use (``insert``, ``update``, ``delete``,
``get_by_id``, ``query``, ``execute_*``), so the trade-by-trade logic is the same code as
everywhere else; only the round trips change:

- ``load(trade_ids)`` locks the batch's ``trade_journal`` rows (one ``SELECT ... ORDER BY id FOR
  UPDATE``: the row locks every trade change holds, taken in id order so two batches cannot
  deadlock) and reads their ``order_execution`` and ``position_tracking`` rows (one query each);
- reads of those rows are answered from memory, as the database would answer them inside the
  transaction (copies, so a caller's dict is never the stored one);
- inserts get their ids from the table's identity sequence in advance (``reserve_ids``, one
  statement per few hundred rows) and, like updates and deletes, wait in an ordered log;
- ``flush()`` writes the log as multi-row inserts (``insert_many``) and set-based updates
  (``update_many``, ``delete_many``): a handful of statements for the whole batch.

Anything it does not answer from memory (another table, raw SQL, a row it has not read) first
flushes the log and then goes to the database, so a read never misses a write. When one trade's
sync fails, the batch's transaction rolls back whole (nothing of it was committed) and the caller
replays the batch trade by trade, each in its own transaction: the trades before the failing one
commit, as they did when every trade had a transaction of its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

Row = dict[str, Any]

#: The tables whose rows of the loaded trades are kept in memory (by ``trade_journal_id``).
CACHED_TABLES = ("order_execution", "position_tracking")
#: Unique keys of ``order_execution``: a row of the batch's trades is the only one with its value.
UNIQUE_KEYS = frozenset({"alpaca_order_id", "client_order_id"})
#: Ids reserved per ``reserve_ids`` call (grows to this from 256 as a batch writes more).
MAX_ID_CHUNK = 2048


class TradeBatch:
    """The database as seen by one batch of trades inside one transaction (see the module doc)."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.trades: dict[int, Row] = {}
        self.rows: dict[str, dict[int, Row]] = {table: {} for table in CACHED_TABLES}
        #: The same rows by trade (``trade_journal_id``), so a trade's rows are found without a scan.
        self._by_trade: dict[str, dict[Any, dict[int, Row]]] = {table: {} for table in CACHED_TABLES}
        #: Rows inserted through the batch whose other columns (defaults) are not known yet.
        self._partial: dict[str, set[int]] = {}
        self._log: list[tuple[str, str, Any, Any]] = []   # (op, table, id, values)
        self._inserted: set[tuple[str, int]] = set()      # rows of the log's inserts
        self._ids: dict[str, list[int]] = {}
        self._chunk: dict[str, int] = {}
        #: Rows of other tables this transaction has locked (``hold``): their updates wait in the log.
        self._held: dict[str, set[int]] = {}

    def hold(self, table: str, row_ids: Sequence[int]) -> None:
        """Rows the caller locked in this transaction (for example claimed decisions): updates of
        them are queued like the batch's own instead of being sent one by one."""
        self._held.setdefault(table, set()).update(int(i) for i in row_ids)

    # ------------------------------------------------------------------ loading

    def load(self, trade_ids: Sequence[int]) -> dict[int, Row]:
        """Lock and read the trades, their orders and positions; returns the trades by id."""
        assert self.db.in_transaction, "load() must run inside db.transaction()"
        ids = sorted({int(i) for i in trade_ids})
        for row in self.db.execute_query("SELECT * FROM trade_journal WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                                         (ids,)):
            self.trades[row["id"]] = row
        for table in CACHED_TABLES:
            for row in self.db.execute_query(f"SELECT * FROM {table} WHERE trade_journal_id = ANY(%s) ORDER BY id",
                                             (ids,)):
                self._store(table, row)
        return {trade_id: dict(row) for trade_id, row in self.trades.items()}

    # ------------------------------------------------------------------ the connection's interface

    @property
    def in_transaction(self) -> bool:
        return bool(self.db.in_transaction)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[TradeBatch]:
        # Nested blocks are part of the batch's transaction (a failure rolls the whole batch back).
        yield self

    def columns(self, table: str) -> set[str]:
        return set(self.db.columns(table))

    def insert(self, table: str, values: Mapping[str, Any]) -> int:
        """Queue one row; returns the id it will have."""
        self.db._check_columns(table, list(values))
        row_id = self._next_id(table)
        values = dict(values)
        self._log.append(("insert", table, row_id, values))
        self._inserted.add((table, row_id))
        if table in self.rows or table == "trade_journal":
            defaults, complete = _defaults(table)
            row = {**defaults, **values, "id": row_id}
            if table == "trade_journal":
                self.trades[row_id] = row
            else:
                self._store(table, row)
            if not complete:
                self._partial.setdefault(table, set()).add(row_id)
        return row_id

    def update(self, table: str, row_id: int, values: Mapping[str, Any]) -> int:
        """Queue an update of one row; returns 1 (the rows it updates are rows it has read)."""
        values = dict(values)
        if not values:
            return 0
        if "updated_at" in self.db.columns(table) and "updated_at" not in values:
            values["updated_at"] = dt.datetime.now(dt.UTC)
        cached = self._cached(table, row_id)
        if cached is None and (table, row_id) not in self._inserted and row_id not in self._held.get(table, ()):
            # Not a row of the batch: whether it exists is the database's to say.
            self.flush()
            return int(self.db.update(table, row_id, values))
        self._log.append(("update", table, row_id, values))
        if cached is not None:
            cached.update(values)
        return 1

    def delete(self, table: str, row_id: int) -> int:
        cached = self._cached(table, row_id)
        if cached is None:
            self.flush()
            return int(self.db.delete(table, row_id))
        self._log.append(("delete", table, row_id, None))
        if table == "trade_journal":
            self.trades.pop(row_id, None)
        else:
            gone = self.rows[table].pop(row_id, None)
            if gone is not None:
                self._by_trade[table].get(gone.get("trade_journal_id"), {}).pop(row_id, None)
        return 1

    def get_by_id(self, table: str, row_id: int, *, for_update: bool = False) -> Row | None:
        cached = self._cached(table, row_id)
        if cached is not None:  # a batch trade is locked already; its rows are read under that lock
            self._complete(table, [row_id])
            return dict(cached)
        self.flush()
        return self.db.get_by_id(table, row_id, for_update=for_update)

    def query(self, table: str, where: Mapping[str, Any] | None = None,
              order_by: str | Sequence[str] | None = None, limit: int | None = None) -> list[Row]:
        where = dict(where or {})
        found = self._query_memory(table, where, order_by, limit)
        if found is not None:
            return found
        self.flush()
        return self.db.query(table, where, order_by=order_by, limit=limit)

    def execute_query(self, query: Any, params: Any = None) -> list[Row]:
        self.flush()
        return self.db.execute_query(query, params)

    def execute_one(self, query: Any, params: Any = None) -> Row | None:
        self.flush()
        return self.db.execute_one(query, params)

    def execute_update(self, query: Any, params: Any = None) -> int:
        self.flush()
        return int(self.db.execute_update(query, params))

    # ------------------------------------------------------------------ writing

    def flush(self) -> None:
        """Send the queued writes: multi-row inserts per table, set-based updates, then deletes."""
        if not self._log:
            return
        inserts: dict[str, dict[int, Row]] = {}
        updates: dict[str, dict[int, Row]] = {}
        deletes: dict[str, list[int]] = {}
        order: list[str] = []
        for op, table, row_id, values in self._log:
            if table not in order:
                order.append(table)
            pending = inserts.setdefault(table, {})
            if op == "insert":
                pending[row_id] = {"id": row_id, **values}
            elif op == "update":
                target = pending.get(row_id)
                if target is not None:
                    target.update(values)
                else:
                    updates.setdefault(table, {}).setdefault(row_id, {}).update(values)
            else:
                if pending.pop(row_id, None) is None:
                    deletes.setdefault(table, []).append(row_id)
                updates.get(table, {}).pop(row_id, None)
        self._log = []
        self._inserted.clear()
        for table in order:
            groups: dict[tuple[str, ...], list[Row]] = {}
            for row in inserts.get(table, {}).values():
                groups.setdefault(tuple(row), []).append(row)
            for rows in groups.values():
                self.db.insert_many(table, rows)
        for table in order:
            if updates.get(table):
                self.db.update_many(table, updates[table])
        for table in order:
            if deletes.get(table):
                self.db.delete_many(table, deletes[table])

    # ------------------------------------------------------------------ helpers

    def _next_id(self, table: str) -> int:
        pool = self._ids.setdefault(table, [])
        if not pool:
            size = self._chunk.get(table, 128) * 2
            self._chunk[table] = min(size, MAX_ID_CHUNK)
            pool.extend(reversed(self.db.reserve_ids(table, self._chunk[table])))
        return pool.pop()

    def _store(self, table: str, row: Row) -> None:
        self.rows[table][row["id"]] = row
        self._by_trade[table].setdefault(row.get("trade_journal_id"), {})[row["id"]] = row

    def _cached(self, table: str, row_id: int) -> Row | None:
        if table == "trade_journal":
            return self.trades.get(row_id)
        return self.rows.get(table, {}).get(row_id)

    def _complete(self, table: str, row_ids: Sequence[int]) -> None:
        """Rows inserted through the batch lack their defaulted columns: written, then read back."""
        partial = self._partial.get(table)
        wanted = [i for i in row_ids if partial and i in partial]
        if not wanted:
            return
        self.flush()
        for row in self.db.execute_query(f"SELECT * FROM {table} WHERE id = ANY(%s)", (wanted,)):
            if table == "trade_journal":
                self.trades[row["id"]] = row
            else:
                self._store(table, row)
            partial.discard(row["id"])  # type: ignore[union-attr]

    def _query_memory(self, table: str, where: dict[str, Any], order_by: str | Sequence[str] | None,
                      limit: int | None) -> list[Row] | None:
        """The answer from memory, or None when memory cannot be sure of it."""
        if table == "trade_journal":
            trade_id = where.get("id")
            if set(where) == {"id"} and isinstance(trade_id, int) and trade_id in self.trades:
                return [dict(self.trades[trade_id])]
            return None
        if table not in self.rows:
            return None
        trade_id = where.get("trade_journal_id")
        rows = self.rows[table].values()
        if isinstance(trade_id, int) and trade_id in self.trades:
            candidates = list(self._by_trade[table].get(trade_id, {}).values())
        elif set(where) & UNIQUE_KEYS and table == "order_execution":
            # A unique key of an order of the batch's locked trades (a protective leg, a replacement):
            # its row, if it exists, is one of theirs, all read under their locks. Should another
            # trade hold it (a broken record), the insert that follows violates the unique index,
            # the batch rolls back and the caller replays it trade by trade, reading the database.
            candidates = list(rows)
        else:
            return None
        found = [r for r in candidates if all(_matches(r.get(k), v) for k, v in where.items())]
        self._complete(table, [r["id"] for r in found])
        found = [self.rows[table][r["id"]] for r in found]
        items = [order_by] if isinstance(order_by, str) else list(order_by or ["id"])
        for item in reversed(items):
            name = item.lstrip("-")
            found.sort(key=lambda r: (r.get(name) is None, r.get(name)), reverse=item.startswith("-"))
        if limit is not None:
            found = found[:limit]
        return [dict(r) for r in found]


def _defaults(table: str) -> tuple[dict[str, Any], bool]:
    """The values PostgreSQL gives the columns an insert leaves out (from ``trading.schema``), and
    whether all of them are known here (else the row is read back when it is next read)."""
    from decimal import Decimal

    from trading import schema

    values: dict[str, Any] = {}
    complete = True
    for column in schema.TABLES_BY_NAME[table].columns:
        default = column.default
        if column.name == "id" or default is None:
            values[column.name] = None
        elif default == "now()":
            values[column.name] = dt.datetime.now(dt.UTC)
        elif default.startswith("'") and default.endswith("'"):
            values[column.name] = default[1:-1]
        elif default in ("true", "false"):
            values[column.name] = default == "true"
        elif default.lstrip("-").isdigit():
            values[column.name] = Decimal(default) if column.type.startswith("NUMERIC") else int(default)
        else:
            values[column.name] = None
            complete = False
    return values, complete


def _matches(value: Any, wanted: Any) -> bool:
    if wanted is None:
        return value is None
    if isinstance(wanted, (list, tuple, set, frozenset)):
        return value in wanted
    return bool(value == wanted)
