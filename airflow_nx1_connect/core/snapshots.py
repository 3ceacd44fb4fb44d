"""The catalogue: data APIs and their snapshots' records (register, look up, delete).

What a snapshot holds is read by `core.reads`; how one is written and published is
`core.writer`. Readers only ever see `published` snapshots, so what is served changes in
one step (the data API's `latest_snapshot_id`, moved by the writer's publish).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_nx1_connect.core.clock import iso, utcnow
from airflow_nx1_connect.core.errors import (
    DataApiNotFound,
    RuleError,
    SnapshotNotFound,
    ValidationError,
)
from airflow_nx1_connect.core.store import (
    KINDS,
    api_keys,
    data_apis,
    empty_trash,
    retire_table,
    snapshots,
)
from airflow_nx1_connect.core.types import Column

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
SNAPSHOT_ID_RE = re.compile(r"^[0-9a-f]{32}$")


# ---------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataApi:
    """A data API: the named read-only endpoint of one rule."""

    name: str
    kind: str
    description: str | None
    question: str | None
    dag_id: str | None
    task_id: str | None
    conn_id: str | None
    write_mode: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    latest_snapshot_id: str | None
    key_columns: list[str] = field(default_factory=list)
    index_columns: list[str] = field(default_factory=list)
    last_failure_run_id: str | None = None
    last_failure_at: dt.datetime | None = None
    last_failure_detail: str | None = None

    def last_failure(self) -> dict[str, Any] | None:
        """The last failed run `{"run_id", "at", "detail"}`, or None when the last run
        published (or none failed)."""
        if self.last_failure_at is None:
            return None
        return {
            "run_id": self.last_failure_run_id,
            "at": iso(self.last_failure_at),
            "detail": self.last_failure_detail,
        }


@dataclass(frozen=True)
class Snapshot:
    """One run's result. Only `published` snapshots are ever served."""

    id: str
    data_api: str
    run_id: str | None
    data_interval_end: dt.datetime | None
    status: str
    row_count: int | None
    columns: list[str]
    column_types: list[str]
    created_at: dt.datetime
    published_at: dt.datetime | None
    table_name: str
    error: str | None = None
    key_columns: list[str] = field(default_factory=list)
    indexed_columns: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The public summary used in API bodies and XCom (no rows)."""
        return {
            "id": self.id,
            "run_id": self.run_id,
            "data_interval_end": iso(self.data_interval_end),
            "published_at": iso(self.published_at),
            "row_count": self.row_count,
        }


def _data_api(row: Any) -> DataApi:
    m = row._mapping
    values = {f: m[f] for f in DataApi.__dataclass_fields__}
    values["key_columns"] = list(values["key_columns"] or [])
    values["index_columns"] = list(values["index_columns"] or [])
    return DataApi(**values)


def snapshot_from_row(row: Any) -> Snapshot:
    """A Snapshot from a row of `nx1_snapshots`."""
    m = row._mapping
    return Snapshot(
        id=m["id"],
        data_api=m["data_api"],
        run_id=m["run_id"],
        data_interval_end=m["data_interval_end"],
        status=m["status"],
        row_count=m["row_count"],
        columns=list(m["columns"] or []),
        column_types=list(m["column_types"] or []),
        created_at=m["created_at"],
        published_at=m["published_at"],
        table_name=m["table_name"],
        error=m["error"],
        key_columns=list(m["key_columns"] or []),
        indexed_columns=list(m["indexed_columns"] or []),
    )


# ---------------------------------------------------------------------------------------
# Data APIs
# ---------------------------------------------------------------------------------------


def validate_name(name: str) -> str:
    """Return `name` if it is a valid data API slug, else raise ValidationError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(
            f"Data API name {name!r} is not valid: use 1-63 characters, a lowercase letter "
            "first, then lowercase letters, digits or underscores (e.g. weekly_top_product).",
            field="data_api",
        )
    return name


def register_data_api(
    engine: Engine,
    *,
    name: str,
    kind: str,
    description: str | None = None,
    question: str | None = None,
    dag_id: str | None = None,
    task_id: str | None = None,
    conn_id: str | None = None,
    write_mode: str | None = None,
    key_columns: Sequence[str] | None = None,
    index_columns: Sequence[str] | None = None,
) -> DataApi:
    """Create the data API on a rule's first run, or refresh its description.

    Fails with RuleError when the name belongs to another DAG/task or to the other kind.
    """
    validate_name(name)
    if kind not in KINDS:
        raise RuleError(f"Kind must be one of {', '.join(KINDS)}, not {kind!r}.")
    now = utcnow()
    rule = {
        "description": description,
        "question": question,
        "conn_id": conn_id,
        "write_mode": write_mode,
        "key_columns": list(key_columns or []) or None,
        "index_columns": list(index_columns or []) or None,
        "dag_id": dag_id,
        "task_id": task_id,
        "updated_at": now,
    }
    with engine.begin() as conn:
        row = conn.execute(sa.select(data_apis.c.name).where(data_apis.c.name == name)).first()
        if row is None:
            try:
                with conn.begin_nested():  # a concurrent first run may insert it meanwhile
                    conn.execute(
                        data_apis.insert().values(
                            name=name, kind=kind, created_at=now, latest_snapshot_id=None, **rule
                        )
                    )
            except sa.exc.IntegrityError:
                pass  # registered by that concurrent first run: check ownership below
            else:
                return get_data_api(conn, name)
        _check_owner(get_data_api(conn, name), kind, dag_id, task_id)
        conn.execute(data_apis.update().where(data_apis.c.name == name).values(**rule))
        return get_data_api(conn, name)


def _check_owner(existing: DataApi, kind: str, dag_id: str | None, task_id: str | None) -> None:
    """RuleError unless the rule (its kind, DAG and task) may publish to `existing`."""
    if existing.kind != kind:
        raise RuleError(
            f"Data API {existing.name!r} is an {existing.kind} data API; this {kind} task "
            "cannot publish to it. Choose another data_api name."
        )
    if existing.dag_id is not None and (existing.dag_id, existing.task_id) != (dag_id, task_id):
        raise RuleError(
            f"Data API {existing.name!r} belongs to task {existing.task_id!r} of DAG "
            f"{existing.dag_id!r}; each data API is tied to one rule. Choose another "
            f"data_api name, or delete it first with: nx1-connect apis delete {existing.name}"
        )


def get_data_api(bind: Engine | Connection, name: str) -> DataApi:
    """The data API called `name`, or DataApiNotFound."""
    with use_bind(bind) as conn:
        row = conn.execute(sa.select(data_apis).where(data_apis.c.name == name)).first()
    if row is None:
        raise DataApiNotFound(
            f"No data API is called {name!r}. List them with: nx1-connect apis list"
        )
    return _data_api(row)


def list_data_apis(bind: Engine | Connection, kinds: Iterable[str] | None = None) -> list[DataApi]:
    """All data APIs (optionally of some kinds), by name."""
    query = sa.select(data_apis).order_by(data_apis.c.name)
    if kinds is not None:
        query = query.where(data_apis.c.kind.in_(list(kinds)))
    with use_bind(bind) as conn:
        return [_data_api(r) for r in conn.execute(query)]


def delete_data_api(engine: Engine, name: str) -> None:
    """Delete a data API with all its keys, snapshot records and snapshot tables."""
    get_data_api(engine, name)
    with engine.begin() as conn:
        tables = (
            conn.execute(sa.select(snapshots.c.table_name).where(snapshots.c.data_api == name))
            .scalars()
            .all()
        )
        conn.execute(api_keys.delete().where(api_keys.c.data_api == name))
        conn.execute(snapshots.delete().where(snapshots.c.data_api == name))
        conn.execute(data_apis.delete().where(data_apis.c.name == name))
        trash = [t for t in (retire_table(conn, table) for table in tables) if t]
    empty_trash(engine, trash)


@contextmanager
def use_bind(bind: Engine | Connection) -> Iterator[Connection]:
    """The connection itself, or a new one from the engine (closed afterwards)."""
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.connect() as conn:
            yield conn


# ---------------------------------------------------------------------------------------
# Snapshot reads
# ---------------------------------------------------------------------------------------


# Built once: the two reads every rows request makes (building a statement per call costs
# more than running it).
_LATEST = (
    sa.select(snapshots)
    .select_from(data_apis.join(snapshots, snapshots.c.id == data_apis.c.latest_snapshot_id))
    .where(data_apis.c.name == sa.bindparam("name"), snapshots.c.status == "published")
)
_BY_ID = sa.select(snapshots).where(
    snapshots.c.id == sa.bindparam("snapshot_id"),
    snapshots.c.data_api == sa.bindparam("name"),
    snapshots.c.status == "published",
)


def latest_snapshot(bind: Engine | Connection, name: str) -> Snapshot:
    """The latest published snapshot of a data API, or SnapshotNotFound."""
    with use_bind(bind) as conn:
        row = conn.execute(_LATEST, {"name": name}).first()
    if row is None:
        raise SnapshotNotFound(f"Data API {name!r} has no published snapshot yet.")
    return snapshot_from_row(row)


def list_snapshots(
    bind: Engine | Connection, name: str, *, statuses: Sequence[str] = ("published",)
) -> list[Snapshot]:
    """Snapshots of a data API with the given statuses, newest first."""
    query = (
        sa.select(snapshots)
        .where(snapshots.c.data_api == name, snapshots.c.status.in_(list(statuses)))
        .order_by(
            snapshots.c.published_at.desc().nulls_last(),
            snapshots.c.created_at.desc(),
            snapshots.c.id.desc(),
        )
    )
    with use_bind(bind) as conn:
        return [snapshot_from_row(r) for r in conn.execute(query)]


def get_snapshot(bind: Engine | Connection, name: str, snapshot_id: str) -> Snapshot:
    """A retained published snapshot of data API `name`, or SnapshotNotFound."""
    if not isinstance(snapshot_id, str) or not SNAPSHOT_ID_RE.match(snapshot_id):
        raise SnapshotNotFound(f"No snapshot {snapshot_id!r} is retained for {name!r}.")
    with use_bind(bind) as conn:
        row = conn.execute(_BY_ID, {"snapshot_id": snapshot_id, "name": name}).first()
    if row is None:
        raise SnapshotNotFound(f"No snapshot {snapshot_id!r} is retained for {name!r}.")
    return snapshot_from_row(row)


def resolve_columns(snapshot: Snapshot, wanted: Sequence[str] | None) -> list[Column]:
    """The snapshot's columns, or the subset `wanted` in that order (ValidationError if unknown)."""
    types = dict(zip(snapshot.columns, snapshot.column_types, strict=True))
    if not wanted:
        return [Column(n, types[n]) for n in snapshot.columns]
    unknown = [c for c in wanted if c not in types]
    if unknown:
        raise ValidationError(
            f"Unknown column {unknown[0]!r}; this snapshot has: {', '.join(snapshot.columns)}.",
            field="columns",
        )
    if len(set(wanted)) != len(wanted):
        raise ValidationError("A column is named twice in columns.", field="columns")
    return [Column(n, types[n]) for n in wanted]
