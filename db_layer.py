"""The database layer: the only module that imports psycopg2.

``TradingDB`` wraps one PostgreSQL connection. Outside a ``transaction()`` block every
statement commits on its own; inside one, everything commits together or not at all (nested
blocks become savepoints). Values always travel as query parameters; table and column names
are checked against the live catalog and composed with ``psycopg2.sql``, so an unknown
identifier is a clear ``ValueError``, never SQL injection.

Rows come back as plain dicts; ``NUMERIC`` arrives as ``Decimal`` and ``TIMESTAMPTZ`` as a
timezone-aware UTC ``datetime`` (the session time zone is UTC). JSON values are written with
Decimals as exact strings and read with numbers as ``Decimal``.

Example::

    with TradingDB() as db:
        db.create_schema()
        trade_id = db.insert("trade_journal", {"symbol": "AAPL", "trade_style": "SWING"})
        with db.transaction():
            db.update("trade_journal", trade_id, {"status": "POSITION"})
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from config import PostgresConfig, get_postgres_config
from trading import schema
from trading.errors import ConfigurationError, DatabaseUnavailableError, WriteConflictError
from trading.logs import bind_log_fields, reset_log_fields

logger = logging.getLogger(__name__)

Row = dict[str, Any]
Params = Mapping[str, Any] | Sequence[Any] | None


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if hasattr(value, "value"):  # enums
        return value.value
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def to_json(value: Any) -> str:
    """JSON text with Decimals as exact strings and datetimes in ISO form."""
    return json.dumps(value, default=_json_default, sort_keys=True)


class _Json(psycopg2.extras.Json):
    def dumps(self, obj: Any) -> str:
        return to_json(obj)


psycopg2.extensions.register_adapter(dict, _Json)
# Numbers inside JSON/JSONB come back as Decimal, never float (decision plans carry prices).
_json_loads = partial(json.loads, parse_float=decimal.Decimal)
psycopg2.extras.register_default_json(globally=True, loads=_json_loads)
psycopg2.extras.register_default_jsonb(globally=True, loads=_json_loads)

#: SQLSTATE classes that mean "the connection or server is in trouble; try again later".
_TRANSIENT_SQLSTATES = ("08", "53", "57", "40")


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return True
    code = getattr(exc, "pgcode", None) or ""
    return code[:2] in _TRANSIENT_SQLSTATES


#: Embedded (database, port) pairs already started and created in this process.
_ENSURED: set[tuple[str, int]] = set()
#: Embedded (database, port) pairs whose schema this process has created.
_SCHEMA_READY: set[tuple[str, int]] = set()


#: First key of the per-trade advisory locks (``pg_advisory_lock(TRADE_LOCK_CLASS, trade_id)``).
TRADE_LOCK_CLASS = 0x7472  # "tr"
#: How long a program waits for another program to finish changing a trade's orders.
TRADE_LOCK_WAIT_SECONDS = 30.0
TRADE_LOCK_POLL_SECONDS = 0.05


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    digest = hashlib.sha256(f"trading-monitor:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class TradingDB:
    """One connection to the trading database.

    ``test_mode`` selects the test database (``TEST_DATABASE_URL`` or the embedded test
    database); ``config`` overrides the environment entirely.
    """

    def __init__(self, test_mode: bool = False, config: PostgresConfig | None = None, *,
                 application_name: str = "trading-monitor", connect_timeout: int = 5) -> None:
        self.test_mode = test_mode
        self.config = config or get_postgres_config(test_mode=test_mode)
        self.application_name = application_name
        self.connect_timeout = connect_timeout
        self._conn: psycopg2.extensions.connection | None = None
        self._depth = 0
        self._columns: dict[str, set[str]] | None = None
        self._types: dict[str, dict[str, str]] = {}
        self._lock = threading.RLock()
        #: Database errors met on this connection (outages, dropped connections, deadlocks: the
        #: transient kind): each program run records its share in ``program_run.counts``, which
        #: the database-error breaker (trading/breakers.py) reads.
        self.error_count = 0
        #: Statements sent on this connection (transaction control included): the benchmarks read
        #: it to print statements per run and per filled trade (the driver's own count).
        self.statement_count = 0

    # ------------------------------------------------------------------ connection

    def _ensure_embedded(self, *, again: bool = False) -> bool:
        """Start the embedded cluster and database once per process (two subprocesses), not on
        every connection; ``again`` re-checks after a failed connection (stopped meanwhile).
        Returns whether it checked now."""
        key = (self.config.dbname, self.config.port)
        if not self.config.embedded or (key in _ENSURED and not again):
            return False
        from trading.embedded_postgres import ensure_embedded_database

        ensure_embedded_database(self.config.dbname, self.config.port)
        _ENSURED.add(key)
        return True

    def _open(self) -> psycopg2.extensions.connection:
        checked_now = self._ensure_embedded()
        try:
            conn = self._connect()
        except psycopg2.OperationalError:
            if not checked_now:
                self._ensure_embedded(again=True)  # stopped since it was checked? (no-op when configured)
            conn = self._connect_or_explain()
        conn.autocommit = True
        if self.config.decision_schema:
            # NocoDB keeps a table created in a base in the base's schema: analysis_decision is
            # found there, the system's own tables stay in the first schema (public).
            with conn.cursor() as cursor:
                cursor.execute("SELECT set_config('search_path', current_setting('search_path') || ', ' "
                               "|| quote_ident(%s), false)", (self.config.decision_schema,))
        return conn

    def _connect(self) -> psycopg2.extensions.connection:
        # trading.program marks the session as one of the programs: the schema's outside-change
        # trigger records only sessions without it (NocoDB, psql), so no write is audited twice.
        program = re.sub(r"[^A-Za-z0-9_.:-]", "_", self.application_name) or "trading-monitor"
        return psycopg2.connect(**self.config.connect_kwargs(), connect_timeout=self.connect_timeout,
                                application_name=self.application_name,
                                options=f"-c timezone=UTC -c {schema.PROGRAM_SETTING}={program}")

    def _connect_or_explain(self) -> psycopg2.extensions.connection:
        try:
            return self._connect()
        except psycopg2.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if self.config.password and self.config.password.reveal() in reason:
                reason = reason.replace(self.config.password.reveal(), "***")
            self.error_count += 1
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL at {self.config.host}:{self.config.port}, database "
                f"{self.config.dbname!r} as {self.config.user!r}: {reason}") from None

    def connect(self) -> TradingDB:
        """Open the connection (idempotent); raises ``DatabaseUnavailableError`` naming host, port, database."""
        if self._conn is None or self._conn.closed:
            self._conn = self._open()
            self._depth = 0
            self._columns = None
            self._types = {}
            key = (self.config.dbname, self.config.port)
            if self.config.embedded and key not in _SCHEMA_READY:
                # The embedded database is the project's own: ready to use (psql, NocoDB) on first
                # touch, with schema work only when its recorded version is behind.
                if not self.schema_is_current():
                    self._create_schema(only_if_behind=True)
                _SCHEMA_READY.add(key)
        return self

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
        self._depth = 0

    def __enter__(self) -> TradingDB:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            if self._depth:
                raise DatabaseUnavailableError("the database connection was lost inside a transaction")
            self.connect()
        assert self._conn is not None
        return self._conn

    # ------------------------------------------------------------------ transactions

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[TradingDB]:
        """Everything inside commits together, or rolls back if the block raises.

        Nested blocks are savepoints: an inner failure that the outer block catches undoes only
        the inner part.
        """
        with self._lock:
            conn = self._connection()
            savepoint = f"sp_{self._depth}" if self._depth else None
            # A server that died (restart, pg_terminate_backend) fails BEGIN or SAVEPOINT like any
            # other statement: translated the same way, so one outage has one outcome.
            self._control(conn, f"SAVEPOINT {savepoint}" if savepoint else "BEGIN")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._depth -= 1
                if not conn.closed:
                    with contextlib.suppress(psycopg2.Error), conn.cursor() as cur:
                        cur.execute(f"ROLLBACK TO SAVEPOINT {savepoint}" if savepoint else "ROLLBACK")
                if conn.closed and self._conn is conn:
                    self._conn = None  # the next statement outside a transaction reconnects
                raise
            else:
                self._depth -= 1
                self._control(conn, f"RELEASE SAVEPOINT {savepoint}" if savepoint else "COMMIT")

    def _control(self, conn: psycopg2.extensions.connection, statement: str) -> None:
        """Run a transaction-control statement; driver errors become the project's errors."""
        self.statement_count += 1
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        except psycopg2.Error as exc:
            raise self._translate(exc) from exc

    # ------------------------------------------------------------------ raw SQL

    def _translate(self, exc: psycopg2.Error) -> Exception:
        """The project's error for a driver error: an outage (connection lost, server shutting
        down, deadlock, serialization failure) is ``DatabaseUnavailableError``, a unique key
        another writer took first is ``WriteConflictError``; anything else (a bug: syntax, a
        check constraint) stays the driver's error and fails the run."""
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if _is_transient(exc):
            self.error_count += 1
            if self._conn is not None and self._conn.closed:
                self._conn = None
            return DatabaseUnavailableError(f"database error ({getattr(exc, 'pgcode', None) or 'connection'}): "
                                            f"{first_line}")
        if isinstance(exc, psycopg2.errors.UniqueViolation):
            constraint = getattr(getattr(exc, "diag", None), "constraint_name", None)
            return WriteConflictError(f"another writer got there first ({constraint or 'unique key'}): {first_line}",
                                      constraint=constraint)
        return exc

    def _execute(self, query: str | sql.Composable, params: Params) -> psycopg2.extensions.cursor:
        conn = self._connection()
        cur = conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        self.statement_count += 1
        try:
            cur.execute(query, params)
        except psycopg2.Error as exc:
            cur.close()
            raise self._translate(exc) from exc
        return cur

    def execute_query(self, query: str | sql.Composable, params: Params = None) -> list[Row]:
        """Run a statement that returns rows; the rows as dicts."""
        with self._lock:
            cur = self._execute(query, params)
            try:
                return [dict(row) for row in cur.fetchall()] if cur.description else []
            finally:
                cur.close()

    def execute_one(self, query: str | sql.Composable, params: Params = None) -> Row | None:
        """The first row of a query, or None."""
        rows = self.execute_query(query, params)
        return rows[0] if rows else None

    def execute_update(self, query: str | sql.Composable, params: Params = None) -> int:
        """Run a statement that changes rows; the number of rows it touched."""
        with self._lock:
            cur = self._execute(query, params)
            try:
                return cur.rowcount
            finally:
                cur.close()

    # ------------------------------------------------------------------ identifiers

    def columns(self, table: str) -> set[str]:
        """The columns of ``table`` from the live catalog; ``ValueError`` for an unknown table."""
        if self._columns is None or table not in self._columns:
            # Every table the search path resolves (analysis_decision may live in DECISION_SCHEMA).
            rows = self.execute_query(
                "SELECT c.relname AS table_name, a.attname AS column_name FROM pg_class c "
                "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
                "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.relnamespace = ANY("
                "SELECT oid FROM pg_namespace WHERE nspname = ANY(current_schemas(false))) "
                "AND pg_table_is_visible(c.oid)")
            catalog: dict[str, set[str]] = {}
            for row in rows:
                catalog.setdefault(row["table_name"], set()).add(row["column_name"])
            self._columns = catalog
        if table not in self._columns:
            raise ValueError(f"unknown table {table!r}")
        return self._columns[table]

    def _check_columns(self, table: str, names: Sequence[str]) -> None:
        known = self.columns(table)
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"unknown column(s) {', '.join(map(repr, unknown))} in table {table!r}")

    # ------------------------------------------------------------------ row helpers

    def insert(self, table: str, values: Mapping[str, Any]) -> int:
        """Insert one row; returns its new ``id``."""
        self._check_columns(table, list(values))
        names = list(values)
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
            sql.Identifier(table),
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder(name) for name in names),
        ) if names else sql.SQL("INSERT INTO {} DEFAULT VALUES RETURNING id").format(sql.Identifier(table))
        row = self.execute_one(query, dict(values))
        assert row is not None
        return int(row["id"])

    def update(self, table: str, row_id: int, values: Mapping[str, Any]) -> int:
        """Set ``values`` on the row with ``id = row_id``; returns 1, or 0 if there is no such row.

        ``updated_at`` is stamped automatically on tables that have it.
        """
        values = dict(values)
        self._check_columns(table, list(values))
        if "updated_at" in self.columns(table) and "updated_at" not in values:
            values["updated_at"] = dt.datetime.now(dt.UTC)
        if not values:
            return 0
        query = sql.SQL("UPDATE {} SET {} WHERE id = %(__id)s").format(
            sql.Identifier(table),
            sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in values),
        )
        return self.execute_update(query, {**values, "__id": row_id})

    def insert_many(self, table: str, rows: Sequence[Mapping[str, Any]], *, page_size: int = 1000) -> int:
        """Insert ``rows`` (each with the same columns) in multi-row statements of up to
        ``page_size`` rows (``psycopg2.extras.execute_values``); returns the number inserted.

        Columns left out get their defaults; give ``id`` (from ``reserve_ids``) when the caller
        needs to know it."""
        if not rows:
            return 0
        names = list(rows[0])
        self._check_columns(table, names)
        if any(list(row) != names for row in rows):
            raise ValueError(f"insert_many into {table!r}: every row needs the same columns in the same order")
        query = sql.SQL("INSERT INTO {} ({}) VALUES %s").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, names)))
        return self._execute_values(query, [tuple(row[name] for name in names) for row in rows], page_size)

    def update_many(self, table: str, changes: Mapping[int, Mapping[str, Any]], *, page_size: int = 1000) -> int:
        """Set each row's own values (``{row id: {column: value}}``) in set-based statements:
        one ``UPDATE ... FROM (VALUES ...)`` per set of columns (and per ``page_size`` rows).
        ``updated_at`` is stamped as ``update()`` does. Returns the number of rows updated."""
        if not changes:
            return 0
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        stamp = "updated_at" in self.columns(table)
        now = dt.datetime.now(dt.UTC)
        for row_id, given in changes.items():
            values = dict(given)
            if stamp and "updated_at" not in values:
                values["updated_at"] = now
            if not values:
                continue
            names = tuple(sorted(values))
            groups.setdefault(names, []).append((int(row_id), *(values[name] for name in names)))
        types = self.column_types(table)
        touched = 0
        for names, rows in groups.items():
            self._check_columns(table, list(names))
            # The VALUES list has no column types of its own (an all-NULL column would be text):
            # each value is cast to its column's type.
            query = sql.SQL("UPDATE {t} SET {sets} FROM (VALUES %s) AS v(__id, {cols}) WHERE {t}.id = v.__id").format(
                t=sql.Identifier(table),
                sets=sql.SQL(", ").join(sql.SQL("{} = v.{}::{}").format(
                    sql.Identifier(n), sql.Identifier(n), sql.SQL(types[n])) for n in names),
                cols=sql.SQL(", ").join(map(sql.Identifier, names)))
            touched += self._execute_values(query, rows, page_size)
        return touched

    def delete_many(self, table: str, row_ids: Sequence[int]) -> int:
        """Delete the rows with these ids in one statement; returns the number deleted."""
        if not row_ids:
            return 0
        self.columns(table)
        return self.execute_update(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(table)),
                                   ([int(i) for i in row_ids],))

    def reserve_ids(self, table: str, count: int) -> list[int]:
        """``count`` new ids from the identity sequence of ``table`` (one statement), for rows that
        ``insert_many`` writes later; ids never reused, unused ones are just gaps."""
        if count <= 0:
            return []
        self.columns(table)
        rows = self.execute_query("SELECT nextval(pg_get_serial_sequence(%s, 'id')) AS id "
                                  "FROM generate_series(1, %s)", (table, int(count)))
        return [int(row["id"]) for row in rows]

    def column_types(self, table: str) -> dict[str, str]:
        """``{column: SQL type}`` of ``table`` from the live catalog (cached per connection)."""
        cached = self._types.get(table)
        if cached is None:
            self.columns(table)
            rows = self.execute_query(
                "SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type FROM pg_attribute a "
                "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped", (table,))
            cached = self._types[table] = {row["name"]: row["type"] for row in rows}
        return cached

    def _execute_values(self, query: sql.Composable, rows: Sequence[tuple[Any, ...]], page_size: int) -> int:
        if not rows:
            return 0
        with self._lock:
            conn = self._connection()
            touched = 0
            with conn.cursor() as cur:
                for start in range(0, len(rows), page_size):
                    self.statement_count += 1
                    try:
                        psycopg2.extras.execute_values(cur, query, rows[start:start + page_size], page_size=page_size)
                    except psycopg2.Error as exc:
                        raise self._translate(exc) from exc
                    touched += max(cur.rowcount, 0)
            return touched

    def delete(self, table: str, row_id: int) -> int:
        """Delete the row with ``id = row_id``; returns the number of rows deleted."""
        self.columns(table)
        return self.execute_update(sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(table)), (row_id,))

    def get_by_id(self, table: str, row_id: int, *, for_update: bool = False) -> Row | None:
        """The row with ``id = row_id`` or None; ``for_update`` locks it until the transaction ends."""
        self.columns(table)
        query = sql.SQL("SELECT * FROM {} WHERE id = %s{}").format(
            sql.Identifier(table), sql.SQL(" FOR UPDATE") if for_update else sql.SQL(""))
        return self.execute_one(query, (row_id,))

    def query(self, table: str, where: Mapping[str, Any] | None = None,
              order_by: str | Sequence[str] | None = None, limit: int | None = None) -> list[Row]:
        """Rows of ``table`` matching every ``where`` item.

        A value of None matches NULL, a list/tuple/set matches any of its items, anything else
        matches equal. ``order_by`` names columns, a leading ``-`` sorts descending.
        """
        where = dict(where or {})
        self._check_columns(table, list(where))
        conditions: list[sql.Composable] = []
        params: dict[str, Any] = {}
        for index, (column, value) in enumerate(where.items()):
            ident = sql.Identifier(column)
            if value is None:
                conditions.append(sql.SQL("{} IS NULL").format(ident))
            elif isinstance(value, (list, tuple, set, frozenset)):
                params[f"w{index}"] = list(value)
                conditions.append(sql.SQL("{} = ANY({})").format(ident, sql.Placeholder(f"w{index}")))
            else:
                params[f"w{index}"] = value
                conditions.append(sql.SQL("{} = {}").format(ident, sql.Placeholder(f"w{index}")))
        query: sql.Composable = sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))
        if conditions:
            query = sql.SQL("{} WHERE {}").format(query, sql.SQL(" AND ").join(conditions))
        if order_by:
            items = [order_by] if isinstance(order_by, str) else list(order_by)
            names = [item.lstrip("-") for item in items]
            self._check_columns(table, names)
            query = sql.SQL("{} ORDER BY {}").format(query, sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(item.lstrip("-")),
                                        sql.SQL("DESC" if item.startswith("-") else "ASC")) for item in items))
        if limit is not None:
            if int(limit) < 0:
                raise ValueError("limit must not be negative")
            query = sql.SQL("{} LIMIT {}").format(query, sql.Literal(int(limit)))
        return self.execute_query(query, params)

    # ------------------------------------------------------------------ locks

    @contextlib.contextmanager
    def advisory_lock(self, name: str) -> Iterator[bool]:
        """Try to take the session advisory lock ``name`` without waiting; yields whether it was taken.

        The lock lives on its own connection, so it is independent of this connection's
        transactions; it is released when the block ends, and by PostgreSQL if the process dies
        (the connection goes with it).
        """
        holder = TradingDB(self.test_mode, self.config, application_name=f"{self.application_name}:lock:{name}",
                           connect_timeout=self.connect_timeout)
        holder.connect()
        try:
            row = holder.execute_one("SELECT pg_try_advisory_lock(%s) AS taken", (lock_key(name),))
            taken = bool(row and row["taken"])
            try:
                yield taken
            finally:
                if taken and holder.connected:
                    with contextlib.suppress(Exception):
                        holder.execute_query("SELECT pg_advisory_unlock(%s)", (lock_key(name),))
        finally:
            holder.close()

    @contextlib.contextmanager
    def trade_lock(self, trade_id: int, *, wait_seconds: float = TRADE_LOCK_WAIT_SECONDS) -> Iterator[bool]:
        """Hold the per-trade advisory lock while one program changes a trade's orders at the broker
        (cancel, confirm, submit); yields whether it was taken within ``wait_seconds``.

        A session lock on this connection (two-key form: ``TRADE_LOCK_CLASS``, the trade id), so it
        spans the several short transactions of a cancel-confirm-submit sequence and is re-entrant
        (nested holds by the same program stack). PostgreSQL releases it if the process dies.
        """
        deadline = time.monotonic() + wait_seconds
        while True:
            row = self.execute_one("SELECT pg_try_advisory_lock(%s, %s) AS taken", (TRADE_LOCK_CLASS, int(trade_id)))
            if row and row["taken"]:
                break
            if time.monotonic() >= deadline:
                yield False
                return
            time.sleep(TRADE_LOCK_POLL_SECONDS)
        token = bind_log_fields(trade_id=int(trade_id))  # the lines about this trade carry its id
        try:
            yield True
        finally:
            reset_log_fields(token)
            if self.connected:
                with contextlib.suppress(Exception):
                    self.execute_query("SELECT pg_advisory_unlock(%s, %s)", (TRADE_LOCK_CLASS, int(trade_id)))

    # ------------------------------------------------------------------ schema

    def create_schema(self) -> None:
        """Create every table, column, constraint and index of the contract; safe to run again.

        Always runs the DDL (tests, benchmarks, a forced repair); programs call
        ``ensure_schema()``, which runs it only when the recorded version is behind."""
        self._create_schema(only_if_behind=False)

    def schema_is_current(self) -> bool:
        """Whether the database was brought up to this code's schema version (two cheap SELECTs,
        no DDL, no table lock beyond a read of the one-row version table)."""
        row = self.execute_one("SELECT to_regclass(%s) IS NOT NULL AS present", (schema.SCHEMA_VERSION_TABLE,))
        if not (row and row["present"]):
            return False
        row = self.execute_one(sql.SQL("SELECT version FROM {} WHERE id = 1").format(
            sql.Identifier(schema.SCHEMA_VERSION_TABLE)))
        return row is not None and row["version"] == schema.schema_version()

    def _create_schema(self, *, only_if_behind: bool) -> None:
        """The schema work, once: under its own advisory lock (a second program starting at the
        same moment waits for the first one's DDL, then finds the version current and does none),
        bounded by ``lock_timeout`` so it never waits for ever behind a running program's reads."""
        try:
            with self.transaction():
                self.execute_update(f"SET LOCAL lock_timeout = '{schema.SCHEMA_LOCK_TIMEOUT}'")
                self.execute_update("SELECT pg_advisory_xact_lock(%s)", (schema.SCHEMA_LOCK_KEY,))
                if only_if_behind and self.schema_is_current():
                    return
                for statement in schema.schema_statements() + schema.version_table_statements():
                    self.execute_update(statement)
                self.execute_update(
                    sql.SQL("INSERT INTO {} (id, version, applied_at, applied_by) VALUES (1, %s, now(), %s) "
                            "ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, "
                            "applied_at = EXCLUDED.applied_at, applied_by = EXCLUDED.applied_by").format(
                        sql.Identifier(schema.SCHEMA_VERSION_TABLE)),
                    (schema.schema_version(), self.application_name))
        except psycopg2.errors.LockNotAvailable as exc:
            raise DatabaseUnavailableError(
                f"the schema update waited more than {schema.SCHEMA_LOCK_TIMEOUT} for other programs' locks; "
                "it is tried again at the next start") from exc
        finally:
            self._columns = None
            self._types = {}

    def missing_schema(self) -> list[str]:
        """What the contract needs and this database lacks (``table`` or ``table.column``)."""
        self._columns = None
        self._types = {}
        missing: list[str] = []
        for table in schema.TABLES:
            try:
                present = self.columns(table.name)
            except ValueError:
                missing.append(table.name)
                continue
            missing.extend(f"{table.name}.{name}" for name in table.column_names() if name not in present)
        return missing

    def ensure_schema(self) -> None:
        """Make the schema usable: on the embedded and test databases brought up to date when its
        recorded version is behind (else one cheap SELECT, no DDL: two programs starting at once
        never collide on schema locks); on a configured production database only checked (the
        programs' role may not run DDL): anything missing stops the program with the command that
        fixes it."""
        if self.config.embedded or self.test_mode:
            if not self.schema_is_current():
                self._create_schema(only_if_behind=True)
            return
        missing = self.missing_schema()
        self.check_decision_schema()
        if missing:
            hint = ""
            if "analysis_decision" in missing:
                elsewhere = [row["table_schema"] for row in self.execute_query(
                    "SELECT table_schema FROM information_schema.tables WHERE table_name = 'analysis_decision' "
                    "ORDER BY 1")]
                if elsewhere:
                    hint = (f" (analysis_decision exists in schema {', '.join(elsewhere)}: set "
                            f"DECISION_SCHEMA={elsewhere[0]})")
            raise ConfigurationError(
                f"the database {self.config.dbname!r} lacks {', '.join(missing[:8])}"
                f"{' and more' if len(missing) > 8 else ''}{hint}: run "
                ".venv/bin/python scripts/create_production_tables.py")

    def table_schema(self, table: str) -> str | None:
        """The schema that ``table`` resolves to on this connection's search path (``None``: not found)."""
        row = self.execute_one("SELECT n.nspname AS schema FROM pg_class c JOIN pg_namespace n "
                               "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)", (table,))
        return row["schema"] if row else None

    def check_decision_schema(self) -> None:
        """Refuse a ``DECISION_SCHEMA`` whose analysis_decision is shadowed by one earlier on the path."""
        wanted = self.config.decision_schema
        found = self.table_schema("analysis_decision")
        if wanted and found not in (None, wanted):
            raise ConfigurationError(
                f"DECISION_SCHEMA is {wanted!r} but analysis_decision resolves to schema {found!r} first: "
                f"rename or drop {found}.analysis_decision, or unset DECISION_SCHEMA")


def is_unique_violation(exc: BaseException) -> bool:
    """Whether ``exc`` is a unique-constraint violation (another writer got there first)."""
    return isinstance(exc, (WriteConflictError, psycopg2.errors.UniqueViolation))
