"""Creating and filling one snapshot's table, per store: SQLite in short transactions of one
batch each (indexes before the rows), PostgreSQL in one transaction with `COPY`; the previous
snapshot's rows copied in for `append` and `merge`. `core.writer` runs the whole lifecycle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_nx1_connect.core import types
from airflow_nx1_connect.core.engines import (
    SQLITE_AUTOCHECKPOINT,
    SQLITE_BUSY_TIMEOUT_MS,
    take_sqlite_write_lock,
)
from airflow_nx1_connect.core.pg_copy import copy_rows
from airflow_nx1_connect.core.snapshots import Snapshot
from airflow_nx1_connect.core.store import ROW_COLUMN, quote
from airflow_nx1_connect.core.types import Column

PROGRESS_EVERY_S = 5.0
#: Rows of a previous snapshot copied per SQLite transaction (append, merge).
COPY_CHUNK = 20_000


@dataclass
class Progress:
    log: logging.Logger
    every: float = PROGRESS_EVERY_S
    started: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)
    rows: int = 0

    def add(self, n: int) -> None:
        self.rows += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.rows / max(now - self.started, 1e-9)
            self.log.info("Snapshot write: %d rows so far, %.0f rows/s", self.rows, rate)


@dataclass(frozen=True)
class Fill:
    """What one run writes into its table: the table, the result's columns, the indexes,
    and the previous snapshot it builds on (append, merge)."""

    table: str
    columns: Sequence[Column]
    key_columns: Sequence[str]
    index_columns: Sequence[str]
    previous: Snapshot | None
    mode: str
    merge_keys: Sequence[str] | None


def index_statements(
    bind: Engine | Connection, table: str, key_columns: Sequence[str], index_columns: Sequence[str]
) -> list[str]:
    """CREATE INDEX of the key columns (one index) and of each index column."""
    statements = []
    if key_columns:
        statements.append(index_sql(bind, table, table + "_mk", key_columns))
    for position, column in enumerate(dict.fromkeys(index_columns)):
        if list(key_columns[:1]) == [column] and len(key_columns) == 1:
            continue  # the key index already is this index
        statements.append(index_sql(bind, table, f"{table}_i{position}", [column]))
    return statements


def build_indexes(
    engine: Engine, table: str, key_columns: Sequence[str], index_columns: Sequence[str]
) -> None:
    """Index the key columns and each index column after a PostgreSQL bulk load, so
    filters on them are index lookups; then ANALYZE."""
    statements = index_statements(engine, table, key_columns, index_columns)
    if not statements:
        return
    with engine.begin() as conn:
        for sql in statements:
            conn.execute(sa.text(sql))
        conn.execute(sa.text(f"ANALYZE {quote(conn, table)}"))


def index_sql(bind: Engine | Connection, table: str, name: str, columns: Sequence[str]) -> str:
    cols = ", ".join(quote(bind, c) for c in columns)
    return f"CREATE INDEX IF NOT EXISTS {quote(bind, name)} ON {quote(bind, table)} ({cols})"


def previous_rows_sql(conn: Connection, fill: Fill, previous: Snapshot, ranged: bool) -> str:
    """INSERT the previous snapshot's rows (merge: those whose keys the new rows lack), in
    their order; `ranged`: only those with row numbers in (:lo, :hi]."""
    cols = ", ".join(quote(conn, c.name) for c in fill.columns)
    target = quote(conn, fill.table)
    row = quote(conn, ROW_COLUMN)
    source = quote(conn, previous.table_name)
    sql = f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {source} AS p"
    where = []
    if ranged:  # SQLite's placeholders
        where.append(f"p.{row} > ? AND p.{row} <= ?")
    if fill.mode == "merge":
        same = " IS " if conn.dialect.name == "sqlite" else " IS NOT DISTINCT FROM "
        cond = " AND ".join(
            f"n.{quote(conn, k)}{same}p.{quote(conn, k)}" for k in (fill.merge_keys or [])
        )
        where.append(f"NOT EXISTS (SELECT 1 FROM {target} AS n WHERE {cond})")
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + f" ORDER BY p.{row}"


def fill_sqlite(
    conn: Connection,
    fill: Fill,
    batches: Iterable[Sequence[Sequence[Any]]],
    progress: Progress,
) -> int:
    """Create and fill the table in transactions of one batch each; the row count.

    SQLite has one write lock per database: each transaction holds it for one batch's
    insert only (the next batch is read from the source and converted outside it), so
    admin actions and other runs' catalogue writes get in between batches. Indexes are
    made before the rows for the same reason (a CREATE INDEX after the load would hold
    the lock for the whole table).
    """
    raw = conn.connection.driver_connection
    assert raw is not None
    encoders = types.converters(fill.columns, "store", "sqlite")
    insert = (
        f"INSERT INTO {quote(conn, fill.table)} "
        f"({', '.join(quote(conn, c.name) for c in fill.columns)}) "
        f"VALUES ({', '.join('?' for _ in fill.columns)})"
    )
    cur = raw.cursor()

    def transaction(sql: str, params: Any = (), many: bool = False) -> int:
        take_sqlite_write_lock(raw, busy_timeout_off=True)
        try:
            if many:
                cur.executemany(sql, params)
            else:
                cur.execute(sql, params)
            changed = max(cur.rowcount, 0)
            cur.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                raw.rollback()
            raise
        return changed

    def copy_previous(previous: Snapshot) -> int:
        sql = previous_rows_sql(conn, fill, previous, ranged=True)
        copied, low, last = 0, 0, int(previous.row_count or 0)
        while low < last:
            copied += transaction(sql, (low, low + COPY_CHUNK))
            low += COPY_CHUNK
        return copied

    # For the fill: no busy handler (the lock is polled, see take_sqlite_write_lock), and
    # a checkpoint every ~40 MB of WAL instead of every 4 MB (a checkpoint per few batch
    # commits cost about a sixth of the write's time).
    cur.execute("PRAGMA busy_timeout = 0")
    cur.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_AUTOCHECKPOINT * 10}")
    try:
        take_sqlite_write_lock(raw, busy_timeout_off=True)
        cur.execute(create_table_sql(conn, fill.table, fill.columns))
        # (A merge's key columns are its merge keys: their index serves the merge too.)
        for sql in index_statements(conn, fill.table, fill.key_columns, fill.index_columns):
            cur.execute(sql)
        cur.execute("COMMIT")
        count = 0
        if fill.previous is not None and fill.mode == "append":
            count += copy_previous(fill.previous)
        for batch in batches:
            if batch:
                transaction(insert, types.convert_columns(batch, encoders), many=True)
                count += len(batch)
                progress.add(len(batch))
        if fill.previous is not None and fill.mode == "merge":
            count += copy_previous(fill.previous)
    except BaseException:
        if raw.in_transaction:
            raw.rollback()
        raise
    finally:
        cur.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_AUTOCHECKPOINT}")
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.close()
    return int(count)


def fill_postgres(
    conn: Connection,
    fill: Fill,
    batches: Iterable[Sequence[Sequence[Any]]],
    progress: Progress,
) -> int:
    """Create and fill the table in one transaction (`COPY`); the row count. PostgreSQL
    lets every other writer and reader go on meanwhile."""
    raw = conn.connection.driver_connection
    assert raw is not None
    encoders = types.converters(fill.columns, "store", "postgresql")
    table, previous = fill.table, fill.previous
    # The row number is sent by the client (no per-row sequence call in the server).
    cols = ", ".join(quote(conn, n) for n in [ROW_COLUMN, *(c.name for c in fill.columns)])
    count = 0
    try:
        with raw.cursor() as cur:
            cur.execute(create_table_sql(conn, table, fill.columns))
            if previous is not None and fill.mode == "append":
                cur.execute(previous_rows_sql(conn, fill, previous, ranged=False))
                count += max(cur.rowcount, 0)
            count += copy_rows(
                cur,
                f"COPY {quote(conn, table)} ({cols}) FROM STDIN",
                fill.columns,
                (types.convert_columns(batch, encoders) for batch in batches if batch),
                count + 1,
                progress.add,
            )
            if previous is not None and fill.mode == "merge":
                if count:
                    # Previous rows get identity numbers after the ones sent explicitly.
                    cur.execute(
                        "SELECT setval(pg_get_serial_sequence(%s, %s), %s)",
                        (quote(conn, table), ROW_COLUMN, count),
                    )
                cur.execute(index_sql(conn, table, table + "_mk", fill.merge_keys or []))
                cur.execute(f"ANALYZE {quote(conn, table)}")
                cur.execute(previous_rows_sql(conn, fill, previous, ranged=False))
                count += max(cur.rowcount, 0)
            cur.execute(
                f"ALTER TABLE {quote(conn, table)} ADD PRIMARY KEY ({quote(conn, ROW_COLUMN)})"
            )
        raw.commit()
    except BaseException:
        raw.rollback()
        raise
    return count


def create_table_sql(conn: Connection, table: str, columns: Sequence[Column]) -> str:
    dialect = conn.dialect.name
    row_def = (
        f"{quote(conn, ROW_COLUMN)} INTEGER PRIMARY KEY"
        if dialect == "sqlite"
        else f"{quote(conn, ROW_COLUMN)} bigint GENERATED BY DEFAULT AS IDENTITY"
    )
    cols = ", ".join(f"{quote(conn, c.name)} {types.sql_type(c.type, dialect)}" for c in columns)
    return f"CREATE TABLE {quote(conn, table)} ({row_def}{', ' if cols else ''}{cols})"
