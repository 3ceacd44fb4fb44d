"""Writing a snapshot: the whole lifecycle of one run's result.

`write_snapshot`:

1. removes what killed runs of this data API left behind (`cleanup_abandoned`), once;
2. commits a `writing` record and takes its lease (`core.lease`), which dies with the
   process;
3. an `append` or `merge` run takes the data API's build lock (`lease.BuildLock`) and reads
   the latest snapshot it builds on; the lock is held until its publish, so runs that
   overlap in time publish as if one came after the other (every run's rows are kept);
4. creates and fills the snapshot's own table `nx1_snap_<id>` (`core.filling`): on
   PostgreSQL in one transaction (`COPY`: `core.pg_copy`); on SQLite in short transactions
   of one batch each (indexes made before the rows), so no write holds SQLite's one write
   lock for longer than a batch and admin actions never wait for a whole run (the
   `writing` status keeps the half-built table out of sight);
5. runs the rule's publish checks (`core.checks`) on the staged table, in SQL;
6. publishes it: one short transaction marks it `published` and moves the data API's
   latest pointer; `overwrite`: only if its `data_interval_end` is not older than the
   latest's (a backfill is published and retained, but does not replace fresher data);
   `append` / `merge`: always, and only if the latest is still the one it built on;
7. applies retention (published snapshots beyond `snapshot_retention` are dropped).

A failing run (or failed checks) drops its table and records the failure on the data API
(`last_failure`, cleared by the next publish); the latest snapshot is unchanged. A killed
run leaves a `writing` record whose lease is free; the next run of that data API (or
`nx1-connect db migrate`) removes it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_nx1_connect.core import checks as publish_checks
from airflow_nx1_connect.core import filling, types, webhooks
from airflow_nx1_connect.core.clock import utcnow
from airflow_nx1_connect.core.errors import ChecksFailed, LatestMoved, RuleError, SnapshotNotFound
from airflow_nx1_connect.core.lease import BuildLock, Lease
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
    empty_trash,
    retire_table,
    retired_snapshots,
    snapshots,
)
from airflow_nx1_connect.core.types import Column

log = logging.getLogger(__name__)

WRITE_MODES = ("overwrite", "append", "merge")


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
            trash = retire_table(conn, table)
            conn.execute(
                snapshots.delete().where(
                    snapshots.c.id == snapshot_id, snapshots.c.status == "writing"
                )
            )
        empty_trash(engine, [trash] if trash else [])
        log.info("Removed snapshot %s left half-written by a run that was killed.", snapshot_id)
        removed += 1
    empty_trash(engine)  # what a process that died while dropping tables left
    return removed


# ---------------------------------------------------------------------------------------
# The write
# ---------------------------------------------------------------------------------------


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
    checks: publish_checks.Checks | None = None,
    retention: int = 5,
    logger: logging.Logger | None = None,
) -> Snapshot:
    """Write one complete snapshot of `data_api` from row batches and publish it.

    `batches` is consumed once, lazily (a source cursor's `fetchmany` loop), so memory
    stays flat whatever the row count. On any error (failed `checks` included: a
    ChecksFailed naming each one) the half snapshot is dropped, the failure recorded on
    the data API, the error re-raised, and the latest snapshot is unchanged. `key_columns`
    (for merge: `merge_keys`) identify a row; they and `index_columns` get indexes before
    the publish. See the module docstring for overlapping runs and backfills.
    """
    logger = logger or log
    names = [c.name for c in columns]
    keys, indexed = _row_keys(names, write_mode, merge_keys, key_columns, index_columns)
    if checks is not None:
        publish_checks.check_columns(checks, names)
    cleanup_abandoned(engine, data_api)

    snapshot_id = uuid.uuid4().hex
    table = TABLE_PREFIX + snapshot_id
    _record_writing(
        engine, snapshot_id, data_api, run_id, data_interval_end, columns, keys, indexed
    )
    lease = Lease(engine, snapshot_id)
    lease.acquire()
    build = BuildLock(engine, data_api)
    try:
        previous: Snapshot | None = None
        if write_mode in ("append", "merge"):
            _take(build, data_api, logger)
            previous = _latest_or_none(engine, data_api)
            if previous is not None:
                _check_same_shape(previous, columns, write_mode)
        fill = filling.Fill(
            table, columns, keys, index_columns or [], previous, write_mode, merge_keys
        )
        row_count = _fill(engine, fill, batches, logger)
        if write_mode == "overwrite":
            _take(build, data_api, logger)
        if checks is not None:
            _run_checks(engine, data_api, table, checks, row_count, previous, write_mode)
        published, moved = _publish(engine, snapshot_id, data_api, row_count, write_mode, previous)
    except BaseException as exc:
        _mark_failed(engine, snapshot_id, table, data_api, run_id, exc)
        raise
    finally:
        build.release()
        lease.release()
    if not moved:
        logger.info(
            "Snapshot %s (data interval ending %s) is published and retained, but the latest "
            "snapshot of %r has a newer data interval and stays latest (a backfill).",
            snapshot_id,
            data_interval_end,
            data_api,
        )
    apply_retention(engine, data_api, retention)
    return published


def _row_keys(
    names: list[str],
    write_mode: str,
    merge_keys: Sequence[str] | None,
    key_columns: Sequence[str] | None,
    index_columns: Sequence[str] | None,
) -> tuple[list[str], list[str]]:
    """(key columns, indexed columns) of a run, checked against the result's column names."""
    if write_mode not in WRITE_MODES:
        raise RuleError(f"write_mode must be one of {', '.join(WRITE_MODES)}, not {write_mode!r}.")
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
    return keys, indexed


def _record_writing(
    engine: Engine,
    snapshot_id: str,
    data_api: str,
    run_id: str | None,
    data_interval_end: dt.datetime | None,
    columns: Sequence[Column],
    keys: list[str],
    indexed: list[str],
) -> None:
    """Commit the run's `writing` record (its table does not exist yet)."""
    with engine.begin() as conn:
        conn.execute(
            snapshots.insert().values(
                id=snapshot_id,
                data_api=data_api,
                run_id=run_id,
                data_interval_end=data_interval_end,
                status="writing",
                row_count=None,
                columns=[c.name for c in columns],
                column_types=[c.type for c in columns],
                created_at=utcnow(),
                published_at=None,
                table_name=TABLE_PREFIX + snapshot_id,
                key_columns=keys or None,
                indexed_columns=indexed or None,
            )
        )


def _fill(
    engine: Engine,
    fill: filling.Fill,
    batches: Iterable[Sequence[Sequence[Any]]],
    logger: logging.Logger,
) -> int:
    """Create, fill and index the run's table (`core.filling`); its row count."""
    progress = filling.Progress(logger)
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            row_count = filling.fill_sqlite(conn, fill, batches, progress)
        else:
            row_count = filling.fill_postgres(conn, fill, batches, progress)
    if engine.dialect.name != "sqlite":
        filling.build_indexes(engine, fill.table, fill.key_columns, fill.index_columns)
    elapsed = time.monotonic() - progress.started
    logger.info(
        "Snapshot %s written: %d rows in %.2f s (%.0f rows/s)",
        fill.table.removeprefix(TABLE_PREFIX),
        row_count,
        elapsed,
        row_count / max(elapsed, 1e-9),
    )
    return row_count


def _take(build: BuildLock, data_api: str, logger: logging.Logger) -> None:
    """Take the data API's build lock, saying so when another run holds it."""
    if not build.acquire(blocking=False):
        logger.info(
            "Another run of data API %r is publishing; waiting for it, so that this run "
            "builds on its snapshot.",
            data_api,
        )
        build.acquire()


def _latest_or_none(engine: Engine, data_api: str) -> Snapshot | None:
    try:
        return latest_snapshot(engine, data_api)
    except SnapshotNotFound:
        return None


def _run_checks(
    engine: Engine,
    data_api: str,
    table: str,
    checks: publish_checks.Checks,
    row_count: int,
    previous: Snapshot | None,
    write_mode: str,
) -> None:
    """Raise ChecksFailed naming each failed check and its measured value."""
    if write_mode == "overwrite":
        previous = _latest_or_none(engine, data_api)
    with engine.connect() as conn:
        failures = publish_checks.run(
            conn,
            table,
            checks,
            row_count=row_count,
            previous_row_count=previous.row_count if previous is not None else None,
        )
    if failures:
        raise ChecksFailed(
            f"Publish checks failed for data API {data_api!r}, so nothing was published and "
            f"the latest snapshot is unchanged: {'; '.join(str(f) for f in failures)}."
        )


def _check_same_shape(previous: Snapshot, columns: Sequence[Column], mode: str) -> None:
    if previous.columns != [c.name for c in columns]:
        raise RuleError(
            f"{mode} needs the same columns as the previous snapshot: it had "
            f"{', '.join(previous.columns)}, this run returns "
            f"{', '.join(c.name for c in columns)}. "
            "Run once with write_mode='overwrite' to change the shape."
        )


def _publish(
    engine: Engine,
    snapshot_id: str,
    data_api: str,
    row_count: int,
    write_mode: str,
    previous: Snapshot | None,
) -> tuple[Snapshot, bool]:
    """Mark the snapshot published and, where it is the newest, the latest: one short
    transaction. Returns (the snapshot, whether it became the latest).

    The data API's row is written first (a no-op), which takes its row lock (PostgreSQL)
    or the write lock (SQLite) before the latest pointer is read: a compare-and-swap.
    """
    now = utcnow()
    with engine.begin() as conn:
        current = _lock_data_api(conn, data_api)
        if current is None:
            raise RuleError(
                f"Data API {data_api!r} was deleted while this run wrote its snapshot; "
                "nothing was published. Run the task again to register it anew."
            )
        latest_id = current[0]
        if write_mode == "overwrite":
            moved = _newer_than_latest(conn, snapshot_id, latest_id)
        else:
            expected = previous.id if previous is not None else None
            if latest_id != expected:
                raise LatestMoved(
                    f"The latest snapshot of {data_api!r} changed while this {write_mode} run "
                    f"built on {expected or 'nothing'} (now {latest_id}); nothing was "
                    "published. Retry the task: it builds on the new latest snapshot."
                )
            moved = True
        conn.execute(
            snapshots.update()
            .where(snapshots.c.id == snapshot_id)
            .values(status="published", published_at=now, row_count=row_count)
        )
        values: dict[str, Any] = {
            "updated_at": now,
            "last_failure_run_id": None,
            "last_failure_at": None,
            "last_failure_detail": None,
        }
        if moved:
            values["latest_snapshot_id"] = snapshot_id
        conn.execute(data_apis.update().where(data_apis.c.name == data_api).values(**values))
        row = conn.execute(sa.select(snapshots).where(snapshots.c.id == snapshot_id)).one()
        # The outbox: the event (and its deliveries) commits with the publish, or not at all.
        webhooks.record_publish(conn, snapshot_from_row(row), latest_id, now)
    return snapshot_from_row(row), moved


def _lock_data_api(conn: Connection, data_api: str) -> Any:
    """A no-op write of the data API's row, returning (its latest snapshot id,), or None
    when there is no such data API: it holds the row lock (PostgreSQL) or the write lock
    (SQLite) until the transaction ends, so the latest pointer read is the one written."""
    return conn.execute(
        data_apis.update()
        .where(data_apis.c.name == data_api)
        .values(latest_snapshot_id=data_apis.c.latest_snapshot_id)
        .returning(data_apis.c.latest_snapshot_id)
    ).first()


def _newer_than_latest(conn: Connection, snapshot_id: str, latest_id: str | None) -> bool:
    """True unless both have a data interval and this snapshot's ends before the latest's
    (a tie: the later publish wins; without an interval, the later publish wins)."""
    if latest_id is None:
        return True
    ends = dict(
        conn.execute(
            sa.select(snapshots.c.id, snapshots.c.data_interval_end).where(
                snapshots.c.id.in_([snapshot_id, latest_id])
            )
        ).all()
    )
    mine, theirs = ends.get(snapshot_id), ends.get(latest_id)
    return mine is None or theirs is None or mine >= theirs


def _mark_failed(
    engine: Engine,
    snapshot_id: str,
    table: str,
    data_api: str,
    run_id: str | None,
    exc: BaseException,
) -> None:
    """Drop the half-written table, mark its record failed (failed checks: remove it, so
    nothing of the run stays), and record the failure on the data API."""
    message = (str(exc).strip() or type(exc).__name__)[:2000]
    try:
        with engine.begin() as conn:
            trash = retire_table(conn, table)
            mine = sa.and_(snapshots.c.id == snapshot_id, snapshots.c.status == "writing")
            if isinstance(exc, ChecksFailed):
                conn.execute(snapshots.delete().where(mine))
            else:
                conn.execute(snapshots.update().where(mine).values(status="failed", error=message))
        empty_trash(engine, [trash] if trash else [])
        record_failure(engine, data_api, run_id, message)
    except Exception:  # the store itself may be what failed; cleanup_abandoned finishes later
        log.warning("Could not mark snapshot %s failed; it will be cleaned up later.", snapshot_id)


def record_failure(engine: Engine, data_api: str, run_id: str | None, detail: str) -> None:
    """Remember a failed run of `data_api` (`last_failure`) until its next publish."""
    with engine.begin() as conn:
        conn.execute(
            data_apis.update()
            .where(data_apis.c.name == data_api)
            .values(
                last_failure_run_id=run_id,
                last_failure_at=utcnow(),
                last_failure_detail=(detail.strip() or "The run failed.")[:2000],
            )
        )


def apply_retention(engine: Engine, data_api: str, keep: int) -> int:
    """Keep the newest `keep` published snapshots (and the latest); drop the rest.

    Returns how many published snapshots were dropped.
    """
    keep = max(keep, 1)
    with engine.begin() as conn:
        # A no-op write first (returning the latest id): it takes the data API's row lock
        # (PostgreSQL) or the write lock (SQLite) before anything is read, so concurrent
        # passes run one after the other and each snapshot is dropped and retired once.
        locked = _lock_data_api(conn, data_api)
        latest_id = locked[0] if locked is not None else None
        published = list_snapshots(conn, data_api)
        doomed = [s for s in published[keep:] if s.id != latest_id]
        # Failed records carry no table; keep only the newest few for diagnosis.
        failed = list_snapshots(conn, data_api, statuses=("failed",))[keep:]
        trash = [t for t in (retire_table(conn, s.table_name) for s in doomed) if t]
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
    empty_trash(engine, trash)
    return len(doomed)
