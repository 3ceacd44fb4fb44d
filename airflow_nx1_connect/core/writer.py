"""Writing a snapshot: the whole lifecycle of one run's result.

`write_snapshot`:

1. removes what killed runs of this data API left behind (`cleanup_abandoned`), once;
2. commits a `writing` record and takes its lease (`core.lease`), which dies with the
   process;
3. creates and fills the snapshot's own table `nx1_snap_<id>` in one transaction
   (batched `executemany` on SQLite, `COPY` on PostgreSQL: `core.pg_copy`);
4. publishes it: one short transaction marks it `published` and moves the data API's
   latest pointer;
5. applies retention (published snapshots beyond `snapshot_retention` are dropped).

A failing run drops its table and marks the record `failed`; the latest snapshot is
unchanged. A killed run leaves a `writing` record whose lease is free; the next run of
that data API (or `nx1-connect db migrate`) removes it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_nx1_connect.core import types
from airflow_nx1_connect.core.clock import utcnow
from airflow_nx1_connect.core.errors import RuleError, SnapshotNotFound
from airflow_nx1_connect.core.lease import Lease
from airflow_nx1_connect.core.pg_copy import copy_rows
from airflow_nx1_connect.core.snapshots import (
    Snapshot,
    latest_snapshot,
    list_snapshots,
    snapshot_from_row,
)
from airflow_nx1_connect.core.store import (
    ROW_COLUMN,
    TABLE_PREFIX,
    data_apis,
    drop_table,
    quote,
    retired_snapshots,
    snapshots,
)
from airflow_nx1_connect.core.types import Column

log = logging.getLogger(__name__)

WRITE_MODES = ("overwrite", "append", "merge")
PROGRESS_EVERY_S = 5.0


# ---------------------------------------------------------------------------------------
# Columns of a result
# ---------------------------------------------------------------------------------------


def infer_columns(
    description: Sequence[Sequence[Any]],
    sample: Sequence[Sequence[Any]],
    dialect: str | None = None,
) -> list[Column]:
    """Columns from a cursor description, types from its codes or else from sample values.

    Raises RuleError for an empty or duplicate column name, naming the column.
    """
    names = [str(d[0]) if d[0] is not None else "" for d in description]
    seen: set[str] = set()
    for position, name in enumerate(names, start=1):
        if not name.strip():
            raise RuleError(
                f"Column {position} of the result has no name; give it one with AS in the SQL."
            )
        if name == ROW_COLUMN:
            raise RuleError(f"Column name {ROW_COLUMN!r} is reserved; rename it in the SQL.")
        if len(name.encode()) > 63:
            raise RuleError(
                f"Column name {name!r} is longer than 63 bytes; shorten it with AS in the SQL."
            )
        if name.lower() in seen:
            raise RuleError(
                f"Column name {name!r} appears twice in the result; give one an alias with AS."
            )
        seen.add(name.lower())
    columns = []
    for i, name in enumerate(names):
        family: str | None = None
        for row in sample:
            family = types.widen(family, types.family_of_value(row[i]))
        if family is None:
            family = types.family_from_type_code(description[i][1], dialect)
        columns.append(Column(name, family or "TEXT"))
    return columns


# ---------------------------------------------------------------------------------------
# Cleanup of killed runs
# ---------------------------------------------------------------------------------------


def cleanup_abandoned(engine: Engine, data_api: str | None = None) -> int:
    """Remove `writing` snapshots whose writer died (and their tables). Returns how many."""
    query = sa.select(snapshots.c.id, snapshots.c.table_name).where(snapshots.c.status == "writing")
    if data_api is not None:
        query = query.where(snapshots.c.data_api == data_api)
    with engine.connect() as conn:
        candidates = conn.execute(query).all()
    removed = 0
    for snapshot_id, table in candidates:
        if not Lease.is_abandoned(engine, snapshot_id):
            continue
        with engine.begin() as conn:
            drop_table(conn, table)
            conn.execute(
                snapshots.delete().where(
                    snapshots.c.id == snapshot_id, snapshots.c.status == "writing"
                )
            )
        log.info("Removed snapshot %s left half-written by a run that was killed.", snapshot_id)
        removed += 1
    return removed


# ---------------------------------------------------------------------------------------
# The write
# ---------------------------------------------------------------------------------------


@dataclass
class _Progress:
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


def write_snapshot(
    engine: Engine,
    *,
    data_api: str,
    columns: Sequence[Column],
    batches: Iterable[Sequence[Sequence[Any]]],
    run_id: str | None = None,
    data_interval_end: dt.datetime | None = None,
    write_mode: str = "overwrite",
    merge_keys: Sequence[str] | None = None,
    key_columns: Sequence[str] | None = None,
    index_columns: Sequence[str] | None = None,
    retention: int = 5,
    logger: logging.Logger | None = None,
) -> Snapshot:
    """Write one complete snapshot of `data_api` from row batches and publish it.

    `batches` is consumed once, lazily (a source cursor's `fetchmany` loop), so memory
    stays flat whatever the row count. On any error the half snapshot is dropped, its
    record marked `failed`, the error re-raised, and the latest snapshot is unchanged.
    `key_columns` (for merge: `merge_keys`) identify a row; they and `index_columns` get
    indexes after the bulk load, before the publish.
    """
    logger = logger or log
    if write_mode not in WRITE_MODES:
        raise RuleError(f"write_mode must be one of {', '.join(WRITE_MODES)}, not {write_mode!r}.")
    names = [c.name for c in columns]
    if write_mode == "merge":
        missing = [k for k in (merge_keys or []) if k not in names]
        if not merge_keys or missing:
            raise RuleError(
                f"merge needs merge_keys that are columns of the result; missing: "
                f"{', '.join(missing) or '(none given)'}; the result has {', '.join(names)}."
            )
        key_columns = merge_keys
    keys = list(key_columns or [])
    indexed = list(dict.fromkeys([*(index_columns or []), *keys[:1]]))
    for what, wanted in (("key_columns", keys), ("index_columns", indexed)):
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise RuleError(
                f"{what} must be columns of the result; {', '.join(unknown)} is not. "
                f"The result has {', '.join(names)}."
            )
    cleanup_abandoned(engine, data_api)
    previous: Snapshot | None = None
    if write_mode in ("append", "merge"):
        try:
            previous = latest_snapshot(engine, data_api)
        except SnapshotNotFound:
            previous = None
        if previous is not None:
            _check_same_shape(previous, columns, write_mode)

    snapshot_id = uuid.uuid4().hex
    table = TABLE_PREFIX + snapshot_id
    with engine.begin() as conn:
        conn.execute(
            snapshots.insert().values(
                id=snapshot_id,
                data_api=data_api,
                run_id=run_id,
                data_interval_end=data_interval_end,
                status="writing",
                row_count=None,
                columns=names,
                column_types=[c.type for c in columns],
                created_at=utcnow(),
                published_at=None,
                table_name=table,
                key_columns=keys or None,
                indexed_columns=indexed or None,
            )
        )
    lease = Lease(engine, snapshot_id)
    lease.acquire()
    try:
        progress = _Progress(logger)
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                row_count = _fill_sqlite(
                    conn, table, columns, batches, previous, write_mode, merge_keys, progress
                )
            else:
                row_count = _fill_postgres(
                    conn, table, columns, batches, previous, write_mode, merge_keys, progress
                )
        _build_indexes(engine, table, keys, index_columns or [])
        elapsed = time.monotonic() - progress.started
        logger.info(
            "Snapshot %s written: %d rows in %.2f s (%.0f rows/s)",
            snapshot_id,
            row_count,
            elapsed,
            row_count / max(elapsed, 1e-9),
        )
        published = _publish(engine, snapshot_id, data_api, row_count)
    except BaseException as exc:
        _mark_failed(engine, snapshot_id, table, exc)
        raise
    finally:
        lease.release()
    apply_retention(engine, data_api, retention)
    return published


def _build_indexes(
    engine: Engine, table: str, key_columns: Sequence[str], index_columns: Sequence[str]
) -> None:
    """Index the key columns (one index) and each index column, so filters on them are
    index lookups. Runs after the bulk load and before the publish."""
    statements = []
    if key_columns:
        statements.append(_index_sql(engine, table, table + "_mk", key_columns))
    for position, column in enumerate(dict.fromkeys(index_columns)):
        if list(key_columns[:1]) == [column] and len(key_columns) == 1:
            continue  # the key index already is this index
        statements.append(_index_sql(engine, table, f"{table}_i{position}", [column]))
    if not statements:
        return
    with engine.begin() as conn:
        for sql in statements:
            conn.execute(sa.text(sql))
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(f"ANALYZE {quote(conn, table)}"))


def _index_sql(bind: Engine | Connection, table: str, name: str, columns: Sequence[str]) -> str:
    cols = ", ".join(quote(bind, c) for c in columns)
    return f"CREATE INDEX IF NOT EXISTS {quote(bind, name)} ON {quote(bind, table)} ({cols})"


def _check_same_shape(previous: Snapshot, columns: Sequence[Column], mode: str) -> None:
    if previous.columns != [c.name for c in columns]:
        raise RuleError(
            f"{mode} needs the same columns as the previous snapshot: it had "
            f"{', '.join(previous.columns)}, this run returns "
            f"{', '.join(c.name for c in columns)}. "
            "Run once with write_mode='overwrite' to change the shape."
        )


def _previous_rows_sql(
    conn: Connection,
    target: str,
    columns: Sequence[Column],
    previous: Snapshot,
    mode: str,
    merge_keys: Sequence[str] | None,
) -> str:
    cols = ", ".join(quote(conn, c.name) for c in columns)
    prev = quote(conn, previous.table_name)
    row = quote(conn, ROW_COLUMN)
    sql = f"INSERT INTO {quote(conn, target)} ({cols}) SELECT {cols} FROM {prev} AS p"
    if mode == "merge":
        same = " IS " if conn.dialect.name == "sqlite" else " IS NOT DISTINCT FROM "
        cond = " AND ".join(
            f"n.{quote(conn, k)}{same}p.{quote(conn, k)}" for k in (merge_keys or [])
        )
        sql += f" WHERE NOT EXISTS (SELECT 1 FROM {quote(conn, target)} AS n WHERE {cond})"
    return sql + f" ORDER BY p.{row}"


def _merge_index_sql(conn: Connection, table: str, merge_keys: Sequence[str]) -> str:
    return _index_sql(conn, table, table + "_mk", merge_keys)


def _fill_sqlite(
    conn: Connection,
    table: str,
    columns: Sequence[Column],
    batches: Iterable[Sequence[Sequence[Any]]],
    previous: Snapshot | None,
    mode: str,
    merge_keys: Sequence[str] | None,
    progress: _Progress,
) -> int:
    raw = conn.connection.driver_connection
    assert raw is not None
    encoders = types.converters(columns, "store", "sqlite")
    insert = (
        f"INSERT INTO {quote(conn, table)} ({', '.join(quote(conn, c.name) for c in columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)})"
    )
    cur = raw.cursor()
    try:
        count = 0
        cur.execute("BEGIN IMMEDIATE")
        cur.execute(_create_table_sql(conn, table, columns))
        if previous is not None and mode == "append":
            cur.execute(_previous_rows_sql(conn, table, columns, previous, mode, merge_keys))
            count += max(cur.rowcount, 0)
        for batch in batches:
            if batch:
                cur.executemany(insert, types.convert_columns(batch, encoders))
                count += len(batch)
                progress.add(len(batch))
        if previous is not None and mode == "merge":
            cur.execute(_merge_index_sql(conn, table, merge_keys or []))
            cur.execute(_previous_rows_sql(conn, table, columns, previous, mode, merge_keys))
            count += max(cur.rowcount, 0)
        cur.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.rollback()
        raise
    finally:
        cur.close()
    return int(count)


def _fill_postgres(
    conn: Connection,
    table: str,
    columns: Sequence[Column],
    batches: Iterable[Sequence[Sequence[Any]]],
    previous: Snapshot | None,
    mode: str,
    merge_keys: Sequence[str] | None,
    progress: _Progress,
) -> int:
    raw = conn.connection.driver_connection
    assert raw is not None
    encoders = types.converters(columns, "store", "postgresql")
    # The row number is sent by the client (no per-row sequence call in the server).
    cols = ", ".join(quote(conn, n) for n in [ROW_COLUMN, *(c.name for c in columns)])
    count = 0
    try:
        with raw.cursor() as cur:
            cur.execute(_create_table_sql(conn, table, columns))
            if previous is not None and mode == "append":
                cur.execute(_previous_rows_sql(conn, table, columns, previous, mode, merge_keys))
                count += max(cur.rowcount, 0)
            count += copy_rows(
                cur,
                f"COPY {quote(conn, table)} ({cols}) FROM STDIN",
                columns,
                (types.convert_columns(batch, encoders) for batch in batches if batch),
                count + 1,
                progress.add,
            )
            if previous is not None and mode == "merge":
                if count:
                    # Previous rows get identity numbers after the ones sent explicitly.
                    cur.execute(
                        "SELECT setval(pg_get_serial_sequence(%s, %s), %s)",
                        (quote(conn, table), ROW_COLUMN, count),
                    )
                cur.execute(_merge_index_sql(conn, table, merge_keys or []))
                cur.execute(f"ANALYZE {quote(conn, table)}")
                cur.execute(_previous_rows_sql(conn, table, columns, previous, mode, merge_keys))
                count += max(cur.rowcount, 0)
            cur.execute(
                f"ALTER TABLE {quote(conn, table)} ADD PRIMARY KEY ({quote(conn, ROW_COLUMN)})"
            )
        raw.commit()
    except BaseException:
        raw.rollback()
        raise
    return count


def _publish(engine: Engine, snapshot_id: str, data_api: str, row_count: int) -> Snapshot:
    """Mark the snapshot published and make it the latest, in one short transaction."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            snapshots.update()
            .where(snapshots.c.id == snapshot_id)
            .values(status="published", published_at=now, row_count=row_count)
        )
        conn.execute(
            data_apis.update()
            .where(data_apis.c.name == data_api)
            .values(latest_snapshot_id=snapshot_id, updated_at=now)
        )
        row = conn.execute(sa.select(snapshots).where(snapshots.c.id == snapshot_id)).one()
    return snapshot_from_row(row)


def _mark_failed(engine: Engine, snapshot_id: str, table: str, exc: BaseException) -> None:
    message = (str(exc).strip() or type(exc).__name__)[:2000]
    try:
        with engine.begin() as conn:
            drop_table(conn, table)
            conn.execute(
                snapshots.update()
                .where(snapshots.c.id == snapshot_id, snapshots.c.status == "writing")
                .values(status="failed", error=message)
            )
    except Exception:  # the store itself may be what failed; cleanup_abandoned finishes later
        log.warning("Could not mark snapshot %s failed; it will be cleaned up later.", snapshot_id)


def apply_retention(engine: Engine, data_api: str, keep: int) -> int:
    """Keep the newest `keep` published snapshots (and the latest); drop the rest.

    Returns how many published snapshots were dropped.
    """
    keep = max(keep, 1)
    with engine.begin() as conn:
        # A no-op write first (returning the latest id): it takes the data API's row lock
        # (PostgreSQL) or the write lock (SQLite) before anything is read, so concurrent
        # passes run one after the other and each snapshot is dropped and retired once.
        latest_id = conn.execute(
            data_apis.update()
            .where(data_apis.c.name == data_api)
            .values(latest_snapshot_id=data_apis.c.latest_snapshot_id)
            .returning(data_apis.c.latest_snapshot_id)
        ).scalar()
        published = list_snapshots(conn, data_api)
        doomed = [s for s in published[keep:] if s.id != latest_id]
        # Failed records carry no table; keep only the newest few for diagnosis.
        failed = list_snapshots(conn, data_api, statuses=("failed",))[keep:]
        for s in doomed:
            drop_table(conn, s.table_name)
        if doomed:
            # Remembered so that the change feed can tell "no longer retained" (410).
            now = utcnow()
            conn.execute(
                retired_snapshots.insert(),
                [
                    {
                        "id": s.id,
                        "data_api": data_api,
                        "published_at": s.published_at,
                        "retired_at": now,
                    }
                    for s in doomed
                ],
            )
        ids = [s.id for s in doomed + failed]
        if ids:
            conn.execute(snapshots.delete().where(snapshots.c.id.in_(ids)))
    return len(doomed)


def _create_table_sql(conn: Connection, table: str, columns: Sequence[Column]) -> str:
    dialect = conn.dialect.name
    row_def = (
        f"{quote(conn, ROW_COLUMN)} INTEGER PRIMARY KEY"
        if dialect == "sqlite"
        else f"{quote(conn, ROW_COLUMN)} bigint GENERATED BY DEFAULT AS IDENTITY"
    )
    cols = ", ".join(f"{quote(conn, c.name)} {types.sql_type(c.type, dialect)}" for c in columns)
    return f"CREATE TABLE {quote(conn, table)} ({row_def}{', ' if cols else ''}{cols})"
