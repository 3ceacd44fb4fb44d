"""The change feed: the rows inserted, deleted and updated between two retained snapshots.

Computed in the store by one SQL statement over the two snapshot tables, never by loading
them into Python:

1. the multiset difference of the two snapshots: the rows of both tables, tagged with
   their side, grouped by every column (`GROUP BY` treats NULLs as equal, so comparisons
   are NULL-safe and hashable); a group whose counts differ contributes `|count since -
   count to|` rows to the side with more (a row present twice before and once after is
   one `delete`). A recursive CTE repeats a row that many times (rarely more than once);
2. with key columns, the changed rows are paired by key (and by occurrence, should a key
   repeat): a key on both sides is an `update` (the new values), on the `to` side only an
   `insert`, on the `since` side only a `delete`. Only the (small) difference is
   partitioned, with window functions, so no join and no NULL-unsafe `=`;
3. the order is deterministic, so `start` pages are stable: deletes first, in the `since`
   snapshot's row order, then inserts and updates in the `to` snapshot's row order.

For a key with a policy (`scoped`), each side is read through the key's row filter and the
difference is over the key's allowed columns only. Identifiers are quoted, values (offsets,
limits, filter values) bound. A whole feed is read with one
streamed query (`iter_changes`: a server-side cursor on PostgreSQL), in constant memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_nx1_connect.core import policy as policies
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.engines import read_deadline
from airflow_nx1_connect.core.errors import SnapshotGone, SnapshotNotFound, ValidationError
from airflow_nx1_connect.core.policy import KeyPolicy
from airflow_nx1_connect.core.reads import Filter, filter_clause
from airflow_nx1_connect.core.snapshots import Snapshot, use_bind
from airflow_nx1_connect.core.store import BATCH_SIZE, ROW_COLUMN, quote, retired_snapshots
from airflow_nx1_connect.core.types import Column

#: The operation column that leads every change row.
OP_COLUMN = "_op"
OPS = ("insert", "update", "delete")
# Internal column names of the feed's SQL (a snapshot column can never be called so: the
# writer reserves the `__nx1_` prefix's row column, and these are as unlikely).
_SIDE = "__nx1_side__"
_POS = "__nx1_pos__"
_COPY = "__nx1_copy__"
_NA = "__nx1_na__"
_NB = "__nx1_nb__"
_RA = "__nx1_ra__"
_RB = "__nx1_rb__"
_KN = "__nx1_kn__"
_PAIR = "__nx1_pair__"


@dataclass(frozen=True)
class FeedSpan:
    """The two snapshots a change feed goes between, and how rows are identified."""

    data_api: str
    since: Snapshot
    to: Snapshot
    key_columns: list[str]
    #: A key's view (`scoped`): the columns the difference is over (None: every column),
    #: and the row filter each side is read through.
    diff_columns: list[str] | None = None
    filters: tuple[Filter, ...] = ()

    @property
    def empty(self) -> bool:
        """True when both ends are the same snapshot (an empty feed, no query needed)."""
        return self.since.id == self.to.id


def resolve(
    bind: Engine | Connection,
    name: str,
    since: str,
    to: str | None,
    policy: KeyPolicy = policies.NO_POLICY,
) -> FeedSpan:
    """The feed from snapshot `since` to snapshot `to` (default: the latest) of `name`.

    SnapshotNotFound for an id that never was a snapshot of this data API; SnapshotGone
    for one dropped by retention, or when the two snapshots' columns or key columns differ
    (a feed cannot span a change of shape): the app resyncs from `latest`. For a key with
    a `policy`, the feed is `scoped` to it: PolicyNotApplicable (403) first when either
    snapshot does not fit it, and a SnapshotGone names only the columns the key may see.
    """
    with use_bind(bind) as conn:
        latest = snaps.latest_snapshot(conn, name)
        to_snap = latest if to is None or to == latest.id else _retained(conn, name, to)
        since_snap = to_snap if since == to_snap.id else _retained(conn, name, since)
    if not policy.empty:
        dialect = bind.dialect.name
        resolve_shapes(
            name,
            policies.view(policy, since_snap, dialect).visible,
            policies.view(policy, to_snap, dialect).visible,
        )
        if since_snap.key_columns != to_snap.key_columns:
            raise SnapshotGone(
                f"The key columns of {name!r} changed between snapshot {since_snap.id} and "
                f"{to_snap.id}, so no change feed spans them. Resync: read "
                f"/data-apis/{name}/latest in full, then ask for changes since its snapshot id."
            )
        span = FeedSpan(name, since_snap, to_snap, list(to_snap.key_columns))
        return scoped(span, policy, dialect)
    return resolve_shapes(name, since_snap, to_snap)


def resolve_shapes(name: str, since_snap: Snapshot, to_snap: Snapshot) -> FeedSpan:
    """The span between two snapshots, or SnapshotGone when their columns or key columns
    differ (the messages name the columns of the snapshots as given)."""
    if (since_snap.columns, since_snap.column_types) != (to_snap.columns, to_snap.column_types):
        raise SnapshotGone(
            f"The columns of {name!r} changed between snapshot {since_snap.id} "
            f"({', '.join(since_snap.columns)}) and {to_snap.id} ({', '.join(to_snap.columns)}), "
            f"so no change feed spans them. Resync: read /data-apis/{name}/latest in full, "
            "then ask for changes since its snapshot id."
        )
    if since_snap.key_columns != to_snap.key_columns:
        raise SnapshotGone(
            f"The key columns of {name!r} changed between snapshot {since_snap.id} "
            f"({', '.join(since_snap.key_columns) or 'none'}) and {to_snap.id} "
            f"({', '.join(to_snap.key_columns) or 'none'}), so no change feed spans them. "
            f"Resync: read /data-apis/{name}/latest in full, then ask for changes since its "
            "snapshot id."
        )
    return FeedSpan(name, since_snap, to_snap, list(to_snap.key_columns))


def _retained(conn: Connection, name: str, snapshot_id: str) -> Snapshot:
    try:
        return snaps.get_snapshot(conn, name, snapshot_id)
    except SnapshotNotFound:
        if not snaps.SNAPSHOT_ID_RE.match(snapshot_id):
            raise
        retired = conn.execute(
            sa.select(retired_snapshots.c.id).where(
                retired_snapshots.c.id == snapshot_id, retired_snapshots.c.data_api == name
            )
        ).first()
        if retired is None:
            raise
        raise SnapshotGone(
            f"Snapshot {snapshot_id} of {name!r} is no longer retained (only the newest "
            f"snapshots are kept). Resync: read /data-apis/{name}/latest in full, then ask "
            "for changes since its snapshot id."
        ) from None


def scoped(span: FeedSpan, policy: KeyPolicy, dialect: str) -> FeedSpan:
    """The feed between a key's views of the two snapshots (`core.policy`): each side
    read through the key's row filter, compared on the allowed columns only. A row that
    leaves the filter is a `delete`, one that enters it an `insert`; a change only in
    hidden columns is none. Rows pair into `update`s only when every key column is
    visible. PolicyNotApplicable (403) when either snapshot does not fit the policy."""
    if policy.empty:
        return span
    policies.view(policy, span.since, dialect)
    visible = policies.view(policy, span.to, dialect).visible
    keys = span.key_columns if all(k in visible.columns for k in span.key_columns) else []
    return dataclasses.replace(
        span, key_columns=keys, diff_columns=list(visible.columns), filters=policy.filters
    )


def feed_columns(span: FeedSpan, wanted: Sequence[str] | None = None) -> list[Column]:
    """The feed's columns: `_op` (TEXT), then the snapshot's columns (or the subset `wanted`)."""
    if wanted and OP_COLUMN in wanted:
        raise ValidationError(
            f"{OP_COLUMN} always comes first in a change feed; leave it out of columns.",
            field="columns",
        )
    to = span.to
    if span.diff_columns is not None:  # a key's view: the other columns are unknown
        types = dict(zip(to.columns, to.column_types, strict=True))
        to = dataclasses.replace(
            to, columns=span.diff_columns, column_types=[types[c] for c in span.diff_columns]
        )
    return [Column(OP_COLUMN, "TEXT"), *snaps.resolve_columns(to, wanted)]


def _side_filter(bind: Engine | Connection, span: FeedSpan, snapshot: Snapshot) -> str:
    """` WHERE <the key's row filter>` on `snapshot`'s table ("" without one)."""
    if not span.filters:
        return ""
    sql, _ = filter_clause(bind.dialect, snapshot, span.filters)
    return f" WHERE {sql}"


def _filter_params(bind: Engine | Connection, span: FeedSpan) -> dict[str, Any]:
    if not span.filters:
        return {}
    return filter_clause(bind.dialect, span.to, span.filters)[1]


def changes_sql(bind: Engine | Connection, span: FeedSpan, columns: Sequence[Column]) -> str:
    """The feed's SELECT (`_op`, then `columns`), ordered, with `:start` / `:limit` bound.

    `columns` are the output columns after `_op` (a subset of the snapshot's); the
    difference is always over whole rows.
    """

    def q(name: str) -> str:
        return quote(bind, name)

    every = [q(c) for c in (span.to.columns if span.diff_columns is None else span.diff_columns)]
    cols = ", ".join(every)
    keys = [q(k) for k in span.key_columns]
    row = q(ROW_COLUMN)
    side, pos, copy = q(_SIDE), q(_POS), q(_COPY)
    na, nb, ra, rb = q(_NA), q(_NB), q(_RA), q(_RB)
    sel = (", " + cols) if cols else ""
    group = f" GROUP BY {cols}" if cols else ""
    sql = (
        "WITH RECURSIVE "
        f"u AS (SELECT 0 AS {side}, {row} AS {pos}{sel} FROM {q(span.since.table_name)}"
        f"{_side_filter(bind, span, span.since)} "
        f"UNION ALL SELECT 1, {row}{sel} FROM {q(span.to.table_name)}"
        f"{_side_filter(bind, span, span.to)}), "
        f"g AS (SELECT SUM(1 - {side}) AS {na}, SUM({side}) AS {nb}, "
        f"MIN(CASE WHEN {side} = 0 THEN {pos} END) AS {ra}, "
        f"MIN(CASE WHEN {side} = 1 THEN {pos} END) AS {rb}{sel} FROM u{group} "
        f"HAVING SUM(1 - {side}) <> SUM({side})), "
        f"d AS (SELECT CASE WHEN {na} > {nb} THEN 0 ELSE 1 END AS {side}, "
        f"CASE WHEN {na} > {nb} THEN {ra} ELSE {rb} END AS {pos}, "
        f"ABS({na} - {nb}) AS {copy}{sel} FROM g "
        f"UNION ALL SELECT {side}, {pos}, {copy} - 1{sel} FROM d WHERE {copy} > 1)"
    )
    out = ", ".join(q(c.name) for c in columns if c.name != OP_COLUMN)
    out = (", " + out) if out else ""
    order = f" ORDER BY {side}, {pos}, {copy}"
    if keys:
        kn, pair = q(_KN), q(_PAIR)
        by_key = ", ".join(keys)
        sql += (
            f", k AS (SELECT {side}, {pos}, {copy}{sel}, ROW_NUMBER() OVER "
            f"(PARTITION BY {by_key}, {side} ORDER BY {pos}, {copy}) AS {kn} FROM d), "
            f"p AS (SELECT {side}, {pos}, {copy}{sel}, COUNT(*) OVER "
            f"(PARTITION BY {by_key}, {kn}) AS {pair} FROM k) "
            f"SELECT CASE WHEN {side} = 0 THEN 'delete' WHEN {pair} > 1 THEN 'update' "
            f"ELSE 'insert' END AS {q(OP_COLUMN)}{out} FROM p "
            f"WHERE {side} = 1 OR {pair} = 1"
        )
    else:
        sql += (
            f" SELECT CASE WHEN {side} = 0 THEN 'delete' ELSE 'insert' END AS {q(OP_COLUMN)}"
            f"{out} FROM d"
        )
    sql += order
    # SQLite needs a LIMIT before OFFSET (-1: none); PostgreSQL takes LIMIT NULL as none.
    return sql + " LIMIT :limit OFFSET :start"


def _params(
    bind: Engine | Connection, start: int, limit: int | None, span: FeedSpan | None = None
) -> dict[str, Any]:
    if limit is None:
        limit_value: int | None = -1 if bind.dialect.name == "sqlite" else None
    else:
        limit_value = limit
    filters = _filter_params(bind, span) if span is not None else {}
    return {**filters, "start": start, "limit": limit_value}


def read_changes(
    bind: Engine | Connection,
    span: FeedSpan,
    columns: Sequence[Column],
    *,
    start: int,
    limit: int,
) -> list[tuple[Any, ...]]:
    """Changes `start`..`start+limit-1` of the feed, values as stored (`_op` first)."""
    if span.empty:
        return []
    with use_bind(bind) as conn:
        sql = sa.text(changes_sql(conn, span, columns))
        try:
            with read_deadline(conn):
                return [tuple(r) for r in conn.execute(sql, _params(conn, start, limit, span))]
        except sa.exc.DBAPIError as exc:
            _raise_if_gone(conn, span, exc)
            raise


def iter_changes(
    engine: Engine,
    span: FeedSpan,
    columns: Sequence[Column],
    *,
    start: int = 0,
    batch_size: int = BATCH_SIZE,
) -> Iterator[list[tuple[Any, ...]]]:
    """The feed from `start` in batches, values as stored: one streamed query, constant memory.

    The query runs (and its errors raise) when the first batch is asked for; the
    connection is held until the iterator ends or is closed.
    """
    if span.empty:
        return
    with engine.connect() as conn:
        sql = sa.text(changes_sql(conn, span, columns))
        streaming = conn.execution_options(stream_results=True, yield_per=batch_size)
        try:
            with read_deadline(conn):
                result = streaming.execute(sql, _params(conn, start, None, span))
        except sa.exc.DBAPIError as exc:
            _raise_if_gone(conn, span, exc)
            raise
        partitions = result.partitions(batch_size)
        while True:
            with read_deadline(conn):  # each batch within the read bound, not the stream
                partition = next(partitions, None)
            if partition is None:
                return
            yield [tuple(r) for r in partition]


def _raise_if_gone(conn: Connection, span: FeedSpan, exc: BaseException) -> None:
    """A snapshot table dropped by retention while the feed was read: SnapshotGone."""
    conn.rollback()
    for snapshot in (span.since, span.to):
        try:
            snaps.get_snapshot(conn, span.data_api, snapshot.id)
        except SnapshotNotFound:
            raise SnapshotGone(
                f"Snapshot {snapshot.id} of {span.data_api!r} was dropped by retention while "
                f"the feed was read. Resync: read /data-apis/{span.data_api}/latest in full, "
                "then ask for changes since its snapshot id."
            ) from exc
