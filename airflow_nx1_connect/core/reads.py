"""Reading a snapshot's rows: keyset pages and constant-memory batches.

Every read is a keyset query on the hidden row number (`store.ROW_COLUMN`), so a page at
row 900,000 costs what a page at row 0 does, and a streamed read holds no transaction open
between batches. `read_raw_rows` returns values as the store keeps them (for encoders that
write them straight to text, see `core.types`); `read_rows` decodes them to Python values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_nx1_connect.core import types
from airflow_nx1_connect.core.errors import SnapshotNotFound
from airflow_nx1_connect.core.snapshots import Snapshot, use_bind
from airflow_nx1_connect.core.store import BATCH_SIZE, ROW_COLUMN
from airflow_nx1_connect.core.types import Column


def _rows_query(snapshot: Snapshot, cols: Sequence[Column]) -> tuple[sa.Select[Any], Any]:
    table = sa.table(snapshot.table_name, *(sa.column(c.name) for c in cols), sa.column(ROW_COLUMN))
    return sa.select(*(table.c[c.name] for c in cols)).order_by(table.c[ROW_COLUMN]), table


def read_rows(
    bind: Engine | Connection,
    snapshot: Snapshot,
    columns: Sequence[Column],
    *,
    start: int,
    limit: int,
) -> list[tuple[Any, ...]]:
    """Rows `start`..`start+limit-1` (0-based) of a snapshot, values decoded to Python types.

    A keyset read on the hidden row number: as fast at row 900,000 as at row 0.
    """
    rows = read_raw_rows(bind, snapshot, columns, start=start, limit=limit)
    decoders = types.converters(columns, "decode")
    if not decoders:
        return rows
    return [tuple(r) for r in types.convert_rows(rows, decoders)]


def iter_rows(
    engine: Engine,
    snapshot: Snapshot,
    columns: Sequence[Column],
    *,
    start: int = 0,
    batch_size: int = BATCH_SIZE,
) -> Iterator[list[tuple[Any, ...]]]:
    """Yield the snapshot's rows from `start` in decoded batches, in constant memory.

    Each batch is its own short keyset query, so a slow client holds no transaction open.
    """
    return _batches(read_rows, engine, snapshot, columns, start, batch_size)


def _batches(
    read: Callable[..., list[tuple[Any, ...]]],
    engine: Engine,
    snapshot: Snapshot,
    columns: Sequence[Column],
    start: int,
    batch_size: int,
) -> Iterator[list[tuple[Any, ...]]]:
    """Batches from `read` (read_rows or read_raw_rows), one short keyset query each."""
    position = start
    stop = snapshot.row_count
    while stop is None or position < stop:
        batch = read(engine, snapshot, columns, start=position, limit=batch_size)
        if not batch:
            return
        yield batch
        position += len(batch)


def read_raw_rows(
    bind: Engine | Connection,
    snapshot: Snapshot,
    columns: Sequence[Column],
    *,
    start: int,
    limit: int,
) -> list[tuple[Any, ...]]:
    """Like `read_rows`, but values as the store's driver returns them, not decoded.

    For encoders that turn stored values into text directly (the API's CSV), which is
    much faster than decoding to Python types first. Stored forms: see `core.types`.
    """
    query, table = _rows_query(snapshot, columns)
    query = query.where(table.c[ROW_COLUMN] > start).limit(limit)
    with use_bind(bind) as conn:
        try:
            return [tuple(r) for r in conn.execute(query)]
        except sa.exc.DBAPIError as exc:
            raise _missing_table(snapshot) from exc


def iter_raw_rows(
    engine: Engine,
    snapshot: Snapshot,
    columns: Sequence[Column],
    *,
    start: int = 0,
    batch_size: int = BATCH_SIZE,
) -> Iterator[list[tuple[Any, ...]]]:
    """Like `iter_rows` (batched keyset reads, constant memory), values not decoded."""
    return _batches(read_raw_rows, engine, snapshot, columns, start, batch_size)


def _missing_table(snapshot: Snapshot) -> SnapshotNotFound:
    return SnapshotNotFound(
        f"Snapshot {snapshot.id} of {snapshot.data_api!r} is no longer retained; "
        "ask for latest again."
    )
