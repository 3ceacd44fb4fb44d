"""Data APIs and their snapshots: registration, the write lifecycle, publish, retention, reads.

Lifecycle of one run (`write_snapshot`):

1. a `writing` record is committed, and the writer takes a *lease* on it (a PostgreSQL
   advisory lock, or an flock on a file beside a SQLite store) that the operating system
   or server releases if the process dies;
2. the snapshot's own table `nx1_snap_<id>` is created and filled in one transaction
   (batched `executemany` on SQLite, `COPY` on PostgreSQL);
3. one short transaction marks it `published` and moves the data API's latest pointer;
4. retention drops published snapshots beyond `snapshot_retention`.

A failing run drops its table and marks the record `failed`. A killed run leaves a
`writing` record whose lease is free; `cleanup_abandoned` (next run, `db migrate`) removes it.
Readers only ever see `published` snapshots, so what is served changes in one step.
"""

from __future__ import annotations

import datetime as dt
import decimal
import fcntl
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

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
    snapshots,
    utcnow,
)

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
SNAPSHOT_ID_RE = re.compile(r"^[0-9a-f]{32}$")
#: Hidden row-number column of every snapshot table: 1..row_count in snapshot order.
ROW_COLUMN = "__nx1_row__"
TABLE_PREFIX = "nx1_snap_"
WRITE_MODES = ("overwrite", "append", "merge")
FAMILIES = ("TEXT", "INTEGER", "REAL", "NUMERIC", "BOOLEAN", "DATE", "TIMESTAMP", "JSON")
#: Rows per executemany / COPY chunk and per streamed read.
BATCH_SIZE = 10_000
PROGRESS_EVERY_S = 5.0


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

    def summary(self) -> dict[str, Any]:
        """The public summary used in API bodies and XCom (no rows)."""
        return {
            "id": self.id,
            "run_id": self.run_id,
            "data_interval_end": iso(self.data_interval_end),
            "published_at": iso(self.published_at),
            "row_count": self.row_count,
        }


@dataclass(frozen=True)
class Column:
    """A snapshot column: its name and type family (one of FAMILIES)."""

    name: str
    type: str


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 UTC text with a `Z`, or None."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _data_api(row: Any) -> DataApi:
    m = row._mapping
    return DataApi(**{f: m[f] for f in DataApi.__dataclass_fields__})


def _snapshot(row: Any) -> Snapshot:
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
) -> DataApi:
    """Create the data API on a rule's first run, or refresh its description.

    Fails with RuleError when the name belongs to another DAG/task or to the other kind.
    """
    validate_name(name)
    if kind not in KINDS:
        raise RuleError(f"Kind must be one of {', '.join(KINDS)}, not {kind!r}.")
    now = utcnow()
    with engine.begin() as conn:
        row = conn.execute(sa.select(data_apis).where(data_apis.c.name == name)).first()
        if row is None:
            try:
                conn.execute(
                    data_apis.insert().values(
                        name=name,
                        kind=kind,
                        description=description,
                        question=question,
                        dag_id=dag_id,
                        task_id=task_id,
                        conn_id=conn_id,
                        write_mode=write_mode,
                        created_at=now,
                        updated_at=now,
                        latest_snapshot_id=None,
                    )
                )
            except sa.exc.IntegrityError:
                # Registered by a concurrent first run: check ownership below.
                pass
            else:
                return get_data_api(conn, name)
        existing = get_data_api(conn, name)
        if existing.kind != kind:
            raise RuleError(
                f"Data API {name!r} is an {existing.kind} data API; this {kind} task cannot "
                "publish to it. Choose another data_api name."
            )
        owner = (existing.dag_id, existing.task_id)
        if existing.dag_id is not None and owner != (dag_id, task_id):
            raise RuleError(
                f"Data API {name!r} belongs to task {existing.task_id!r} of DAG "
                f"{existing.dag_id!r}; each data API is tied to one rule. Choose another "
                f"data_api name, or delete it first with: nx1-connect apis delete {name}"
            )
        conn.execute(
            data_apis.update()
            .where(data_apis.c.name == name)
            .values(
                description=description,
                question=question,
                conn_id=conn_id,
                write_mode=write_mode,
                dag_id=dag_id,
                task_id=task_id,
                updated_at=now,
            )
        )
        return get_data_api(conn, name)


def get_data_api(bind: Engine | Connection, name: str) -> DataApi:
    """The data API called `name`, or DataApiNotFound."""
    with _connect(bind) as conn:
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
    with _connect(bind) as conn:
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
        for table in tables:
            _drop_table(conn, table)


@contextmanager
def _connect(bind: Engine | Connection) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.connect() as conn:
            yield conn


# ---------------------------------------------------------------------------------------
# Snapshot reads
# ---------------------------------------------------------------------------------------


def latest_snapshot(bind: Engine | Connection, name: str) -> Snapshot:
    """The latest published snapshot of a data API, or SnapshotNotFound."""
    query = (
        sa.select(snapshots)
        .select_from(data_apis.join(snapshots, snapshots.c.id == data_apis.c.latest_snapshot_id))
        .where(data_apis.c.name == name, snapshots.c.status == "published")
    )
    with _connect(bind) as conn:
        row = conn.execute(query).first()
    if row is None:
        raise SnapshotNotFound(f"Data API {name!r} has no published snapshot yet.")
    return _snapshot(row)


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
    with _connect(bind) as conn:
        return [_snapshot(r) for r in conn.execute(query)]


def get_snapshot(bind: Engine | Connection, name: str, snapshot_id: str) -> Snapshot:
    """A retained published snapshot of data API `name`, or SnapshotNotFound."""
    if not isinstance(snapshot_id, str) or not SNAPSHOT_ID_RE.match(snapshot_id):
        raise SnapshotNotFound(f"No snapshot {snapshot_id!r} is retained for {name!r}.")
    query = sa.select(snapshots).where(
        snapshots.c.id == snapshot_id,
        snapshots.c.data_api == name,
        snapshots.c.status == "published",
    )
    with _connect(bind) as conn:
        row = conn.execute(query).first()
    if row is None:
        raise SnapshotNotFound(f"No snapshot {snapshot_id!r} is retained for {name!r}.")
    return _snapshot(row)


def _decoder(family: str) -> Callable[[Any], Any] | None:
    if family == "NUMERIC":
        return lambda v: v if isinstance(v, decimal.Decimal) else decimal.Decimal(str(v))
    if family == "BOOLEAN":
        return bool
    if family == "DATE":
        return lambda v: v if isinstance(v, dt.date) else dt.date.fromisoformat(v)
    if family == "TIMESTAMP":
        return lambda v: v if isinstance(v, dt.datetime) else dt.datetime.fromisoformat(v)
    if family == "JSON":
        return lambda v: json.loads(v) if isinstance(v, str) else v
    return None


def _decode_rows(rows: Sequence[Sequence[Any]], families: Sequence[str]) -> list[tuple[Any, ...]]:
    decoders = [(i, d) for i, f in enumerate(families) if (d := _decoder(f)) is not None]
    if not decoders:
        return [tuple(r) for r in rows]
    out = []
    for r in rows:
        values = list(r)
        for i, d in decoders:
            if values[i] is not None:
                values[i] = d(values[i])
        out.append(tuple(values))
    return out


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
    return _decode_rows(rows, [c.type for c in columns])


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
    much faster than decoding to Python types first. Stored forms: see `_encoder`.
    """
    query, table = _rows_query(snapshot, columns)
    query = query.where(table.c[ROW_COLUMN] > start).limit(limit)
    with _connect(bind) as conn:
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


# ---------------------------------------------------------------------------------------
# Column types
# ---------------------------------------------------------------------------------------

# PostgreSQL type OIDs (psycopg2 and psycopg give these as type_code).
_PG_OIDS = {
    16: "BOOLEAN",
    20: "INTEGER",
    21: "INTEGER",
    23: "INTEGER",
    26: "INTEGER",
    700: "REAL",
    701: "REAL",
    1700: "NUMERIC",
    1082: "DATE",
    1114: "TIMESTAMP",
    1184: "TIMESTAMP",
    114: "JSON",
    3802: "JSON",
    25: "TEXT",
    1043: "TEXT",
    1042: "TEXT",
    19: "TEXT",
    2950: "TEXT",
}
_NAME_FAMILIES = [
    ("bool", "BOOLEAN"),
    ("bigint", "INTEGER"),
    ("smallint", "INTEGER"),
    ("tinyint", "INTEGER"),
    ("int", "INTEGER"),
    ("double", "REAL"),
    ("float", "REAL"),
    ("real", "REAL"),
    ("decimal", "NUMERIC"),
    ("numeric", "NUMERIC"),
    ("timestamp", "TIMESTAMP"),
    ("datetime", "TIMESTAMP"),
    ("date", "DATE"),
    ("json", "JSON"),
]


def family_from_type_code(type_code: Any, dialect: str | None = None) -> str | None:
    """A type family from a DB-API `cursor.description` type code, when it can be told."""
    if type_code is None:
        return None
    if isinstance(type_code, int) and not isinstance(type_code, bool):
        return _PG_OIDS.get(type_code) if dialect in ("postgres", "postgresql") else None
    name = str(getattr(type_code, "name", type_code)).lower()
    for needle, family in _NAME_FAMILIES:
        if needle in name:
            return family
    if any(s in name for s in ("char", "text", "string", "uuid")):
        return "TEXT"
    return None


def family_of_value(value: Any) -> str | None:
    """The type family of one Python value (None for None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "INTEGER"
    if isinstance(value, float):
        return "REAL"
    if isinstance(value, decimal.Decimal):
        return "NUMERIC"
    if isinstance(value, dt.datetime):
        return "TIMESTAMP"
    if isinstance(value, dt.date):
        return "DATE"
    if isinstance(value, dict | list):
        return "JSON"
    return "TEXT"


def _widen(a: str | None, b: str | None) -> str | None:
    if a is None or a == b:
        return b
    if b is None:
        return a
    if {a, b} == {"INTEGER", "REAL"}:
        return "REAL"
    if {a, b} <= {"INTEGER", "NUMERIC"}:
        return "NUMERIC"
    return "TEXT"


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
            family = _widen(family, family_of_value(row[i]))
        if family is None:
            family = family_from_type_code(description[i][1], dialect)
        columns.append(Column(name, family or "TEXT"))
    return columns


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------

_SQLITE_TYPES = {
    "TEXT": "TEXT",
    "INTEGER": "INTEGER",
    "REAL": "REAL",
    "NUMERIC": "TEXT",
    "BOOLEAN": "INTEGER",
    "DATE": "TEXT",
    "TIMESTAMP": "TEXT",
    "JSON": "TEXT",
}
_PG_TYPES = {
    "TEXT": "text",
    "INTEGER": "bigint",
    "REAL": "double precision",
    "NUMERIC": "numeric",
    "BOOLEAN": "boolean",
    "DATE": "date",
    "TIMESTAMP": "text",
    "JSON": "text",
}


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def _encoder(family: str, dialect: str) -> Callable[[Any], Any] | None:
    """How a Python value of a family is stored (None: as it is)."""
    if family == "JSON":
        return lambda v: v if isinstance(v, str) else json.dumps(v, default=_json_default)
    if family == "TIMESTAMP":
        return lambda v: v.isoformat() if isinstance(v, dt.date) else str(v)
    if dialect == "sqlite":
        if family == "NUMERIC":
            return str
        if family == "DATE":
            return lambda v: v.isoformat() if isinstance(v, dt.date) else str(v)
        if family == "TEXT":
            return lambda v: v if isinstance(v, str) else _text(v)
    elif family == "TEXT":
        return lambda v: v if isinstance(v, str) else _text(v)
    return None


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _encode_batch(
    rows: Sequence[Sequence[Any]], encoders: Sequence[tuple[int, Callable[[Any], Any]]]
) -> Sequence[Sequence[Any]]:
    """Rows with the encoded columns converted; `rows` itself when nothing needs it.

    Every encoder leaves `str` and None as they are, so a column holding only those
    (checked with C-level `map`, no Python loop per row) is skipped; the others are
    converted a column at a time. Most batches go to the driver untouched.
    """
    if not encoders or not rows:
        return rows
    todo = []
    for i, enc in encoders:
        kinds = set(map(type, map(itemgetter(i), rows)))
        kinds.discard(str)
        kinds.discard(type(None))
        if kinds:
            todo.append((i, enc))
    if not todo:
        return rows
    cols: list[Sequence[Any]] = list(zip(*rows, strict=True))
    for i, enc in todo:
        cols[i] = [None if v is None else enc(v) for v in cols[i]]
    return list(zip(*cols, strict=True))


def quote(engine_or_conn: Engine | Connection, name: str) -> str:
    """A safely quoted identifier for the bind's dialect."""
    return engine_or_conn.dialect.identifier_preparer.quote_identifier(name)


def _drop_table(conn: Connection, table: str) -> None:
    conn.execute(sa.text(f"DROP TABLE IF EXISTS {quote(conn, table)}"))


def _create_table_sql(conn: Connection, table: str, columns: Sequence[Column]) -> str:
    dialect = conn.dialect.name
    types = _SQLITE_TYPES if dialect == "sqlite" else _PG_TYPES
    row_def = (
        f"{quote(conn, ROW_COLUMN)} INTEGER PRIMARY KEY"
        if dialect == "sqlite"
        else f"{quote(conn, ROW_COLUMN)} bigint GENERATED BY DEFAULT AS IDENTITY"
    )
    cols = ", ".join(f"{quote(conn, c.name)} {types[c.type]}" for c in columns)
    return f"CREATE TABLE {quote(conn, table)} ({row_def}{', ' if cols else ''}{cols})"


class _Lease:
    """Proof that a `writing` snapshot's writer is alive, released by the OS or server on death.

    PostgreSQL: a session advisory lock on a dedicated connection. SQLite: an exclusive
    flock on a file in a `<store>.nx1-leases` folder beside the database file.
    """

    def __init__(self, engine: Engine, snapshot_id: str) -> None:
        self.engine = engine
        self.snapshot_id = snapshot_id
        self._conn: Connection | None = None
        self._fd: int | None = None

    @staticmethod
    def _lock_key(snapshot_id: str) -> int:
        return int.from_bytes(hashlib.sha256(snapshot_id.encode()).digest()[:8], "big", signed=True)

    @staticmethod
    def _lease_dir(engine: Engine) -> Path | None:
        database = engine.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        return Path(database).expanduser().resolve().with_name(Path(database).name + ".nx1-leases")

    def _path(self) -> Path | None:
        folder = self._lease_dir(self.engine)
        return folder / f"{self.snapshot_id}.lease" if folder else None

    def acquire(self) -> None:
        if self.engine.dialect.name == "postgresql":
            self._conn = self.engine.connect()
            self._conn.execute(
                sa.text("SELECT pg_advisory_lock(:k)"), {"k": self._lock_key(self.snapshot_id)}
            )
            self._conn.commit()
            return
        path = self._path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(
                    sa.text("SELECT pg_advisory_unlock(:k)"),
                    {"k": self._lock_key(self.snapshot_id)},
                )
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None
        if self._fd is not None:
            path = self._path()
            if path is not None:
                path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    @classmethod
    def is_abandoned(cls, engine: Engine, snapshot_id: str) -> bool:
        """True when no live process holds the lease of this `writing` snapshot."""
        if engine.dialect.name == "postgresql":
            key = cls._lock_key(snapshot_id)
            with engine.connect() as conn:
                got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
                if got:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
            return bool(got)
        folder = cls._lease_dir(engine)
        if folder is None:
            return False
        path = folder / f"{snapshot_id}.lease"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        else:
            path.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)


def cleanup_abandoned(engine: Engine, data_api: str | None = None) -> int:
    """Remove `writing` snapshots whose writer died (and their tables). Returns how many."""
    query = sa.select(snapshots.c.id, snapshots.c.table_name).where(snapshots.c.status == "writing")
    if data_api is not None:
        query = query.where(snapshots.c.data_api == data_api)
    with engine.connect() as conn:
        candidates = conn.execute(query).all()
    removed = 0
    for snapshot_id, table in candidates:
        if not _Lease.is_abandoned(engine, snapshot_id):
            continue
        with engine.begin() as conn:
            _drop_table(conn, table)
            conn.execute(
                snapshots.delete().where(
                    snapshots.c.id == snapshot_id, snapshots.c.status == "writing"
                )
            )
        log.info("Removed snapshot %s left half-written by a run that was killed.", snapshot_id)
        removed += 1
    return removed


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
    retention: int = 5,
    logger: logging.Logger | None = None,
) -> Snapshot:
    """Write one complete snapshot of `data_api` from row batches and publish it.

    `batches` is consumed once, lazily (a source cursor's `fetchmany` loop), so memory
    stays flat whatever the row count. On any error the half snapshot is dropped, its
    record marked `failed`, the error re-raised, and the latest snapshot is unchanged.
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
            )
        )
    lease = _Lease(engine, snapshot_id)
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
    cols = ", ".join(quote(conn, k) for k in merge_keys)
    return f"CREATE INDEX {quote(conn, table + '_mk')} ON {quote(conn, table)} ({cols})"


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
    encoders = [(i, e) for i, c in enumerate(columns) if (e := _encoder(c.type, "sqlite"))]
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
                cur.executemany(insert, _encode_batch(batch, encoders))
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
    encoders = [(i, e) for i, c in enumerate(columns) if (e := _encoder(c.type, "postgresql"))]
    # The row number is sent by the client (no per-row sequence call in the server).
    cols = ", ".join(quote(conn, n) for n in [ROW_COLUMN, *(c.name for c in columns)])
    count = 0
    try:
        with raw.cursor() as cur:
            cur.execute(_create_table_sql(conn, table, columns))
            if previous is not None and mode == "append":
                cur.execute(_previous_rows_sql(conn, table, columns, previous, mode, merge_keys))
                count += max(cur.rowcount, 0)
            with cur.copy(f"COPY {quote(conn, table)} ({cols}) FROM STDIN") as copy:
                write_rows = _copy_writer(copy)
                for batch in batches:
                    if batch:
                        write_rows(_encode_batch(batch, encoders), count + 1)
                        count += len(batch)
                        progress.add(len(batch))
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


_concat: Callable[..., tuple[Any, ...]] = tuple.__add__


def _copy_writer(copy: Any) -> Callable[[Sequence[Sequence[Any]], int], None]:
    """A function writing a batch of rows, numbered from `first`, to a psycopg text `COPY`.

    With psycopg's row formatter a whole batch is numbered (C-level `map`), formatted
    into one buffer by a C-level loop and sent in one `write`: no Python call per row.
    If psycopg's internals ever change, it falls back to the public `write_row`.
    """
    try:
        from psycopg._copy_base import TextFormatter, format_row_text

        formatter = copy.formatter
        transformer = formatter.transformer
        usable = type(formatter) is TextFormatter
    except (ImportError, AttributeError):
        usable = False
    if not usable:

        def write_each(rows: Sequence[Sequence[Any]], first: int) -> None:
            for number, row in enumerate(rows, start=first):
                copy.write_row((number, *row))

        return write_each

    def write_batch(rows: Sequence[Sequence[Any]], first: int) -> None:
        if not isinstance(rows[0], tuple):
            rows = list(map(tuple, rows))
        # (n,) + row for each row, at C level.
        numbered = map(_concat, zip(range(first, first + len(rows))), rows)
        buffer = bytearray()
        deque(map(format_row_text, numbered, repeat(transformer), repeat(buffer)), maxlen=0)
        copy.write(buffer)

    return write_batch


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
    return _snapshot(row)


def _mark_failed(engine: Engine, snapshot_id: str, table: str, exc: BaseException) -> None:
    message = (str(exc).strip() or type(exc).__name__)[:2000]
    try:
        with engine.begin() as conn:
            _drop_table(conn, table)
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
        latest_id = conn.execute(
            sa.select(data_apis.c.latest_snapshot_id).where(data_apis.c.name == data_api)
        ).scalar()
        published = list_snapshots(conn, data_api)
        doomed = [s for s in published[keep:] if s.id != latest_id]
        # Failed records carry no table; keep only the newest few for diagnosis.
        failed = list_snapshots(conn, data_api, statuses=("failed",))[keep:]
        for s in doomed:
            _drop_table(conn, s.table_name)
        ids = [s.id for s in doomed + failed]
        if ids:
            conn.execute(snapshots.delete().where(snapshots.c.id.in_(ids)))
    return len(doomed)
