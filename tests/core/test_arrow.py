"""Reading a snapshot into Arrow (`core.arrow`), on real SQLite and PostgreSQL.

On PostgreSQL the driver's read (ADBC) must give exactly the record batches the row path
gives, batch by batch, hold nothing open between batches, and close its connection when
closed. On SQLite no second SQLite library is ever opened: the batches come through
`sqlite3`, and an Arrow read leaves the store whole and current for this process.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from airflow_nx1_connect.core import arrow, reads, writer
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.errors import SnapshotNotFound
from airflow_nx1_connect.core.types import Column
from tests.conftest import pg_admin_url

COLUMNS = [
    Column("id", "INTEGER"),
    Column("name", "TEXT"),
    Column("amount", "NUMERIC"),
    Column("ok", "BOOLEAN"),
    Column("day", "DATE"),
    Column("ts", "TIMESTAMP"),
    Column("local", "TIMESTAMP"),
    Column("meta", "JSON"),
    Column("score", "REAL"),
]
ROWS = 25_003
#: `name` is NULL on the first rows, past the driver's default type-inference window.
NULL_NAMES = 12_000


def source_rows() -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = [
        (0, None, None, None, None, None, None, None, None),
        (
            -1,
            'Crème "brûlée"\n日本語 🚀',
            decimal.Decimal("-0.000001"),
            True,
            dt.date(1999, 12, 31),
            dt.datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.timezone.utc),
            dt.datetime(2026, 1, 2, 3, 4, 5),
            {"tags": ["a", "ü"]},
            -2.25,
        ),
    ]
    for i in range(1, ROWS - 1):
        rows.append(
            (
                i,
                None if i < NULL_NAMES else f"row {i}",
                decimal.Decimal(i) / 100,
                i % 2 == 0,
                dt.date(2026, 1, 1) + dt.timedelta(days=i % 365),
                dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=i),
                dt.datetime(2026, 1, 1) + dt.timedelta(seconds=i),  # naive: cast per value
                {"i": i},
                i / 4,
            )
        )
    return rows


@pytest.fixture
def snapshot(engine: sa.Engine) -> snaps.Snapshot:
    snaps.register_data_api(engine, name="wide", kind="ask", dag_id="d", task_id="t")
    rows = source_rows()
    batches = [rows[i : i + 4_000] for i in range(0, len(rows), 4_000)]
    return writer.write_snapshot(engine, data_api="wide", columns=COLUMNS, batches=batches)


def by_rows(engine: sa.Engine, snapshot: snaps.Snapshot, start: int = 0) -> pa.Table:
    """The same rows through the row path (stored values converted value by value)."""
    rows = reads.iter_raw_rows(engine, snapshot, COLUMNS, start=start)
    return pa.Table.from_batches(list(arrow.from_rows(COLUMNS, rows)), arrow.arrow_schema(COLUMNS))


@pytest.mark.parametrize("start", [0, 9_999, 25_000])
def test_arrow_read_equals_the_row_path(
    start: int, engine: sa.Engine, snapshot: snaps.Snapshot, caplog: pytest.LogCaptureFixture
) -> None:
    reader = arrow._DriverReader.open(engine)
    if engine.dialect.name == "postgresql":
        assert reader is not None, "the store's ADBC driver must be used on PostgreSQL"
        reader.close()
    else:
        assert reader is None, "no second SQLite library may open a SQLite store"
    caplog.set_level(logging.DEBUG, logger="airflow_nx1_connect.core.arrow")

    batches = list(arrow.iter_record_batches(engine, snapshot, COLUMNS, start=start))

    assert not [r for r in caplog.records if "fell back" in r.getMessage()]
    assert [b.num_rows for b in batches][:1] == [min(10_000, ROWS - start)]
    table = pa.Table.from_batches(batches, arrow.arrow_schema(COLUMNS))
    assert table.schema == arrow.arrow_schema(COLUMNS)
    assert table.num_rows == ROWS - start
    expected = by_rows(engine, snapshot, start)
    assert table.equals(expected)
    # And the values are the source's.
    source = source_rows()[start:]
    assert table.column("id").to_pylist() == [r[0] for r in source]
    assert table.column("name").to_pylist() == [r[1] for r in source]
    assert table.column("ok").to_pylist() == [r[3] for r in source]
    assert table.column("day").to_pylist() == [r[4] for r in source]
    if start == 0:
        got = table.slice(0, 2).to_pylist()
        assert got[0] == dict.fromkeys((c.name for c in COLUMNS), None) | {"id": 0}
        assert decimal.Decimal(got[1]["amount"]) == decimal.Decimal("-0.000001")
        assert got[1]["ts"] == dt.datetime(
            1999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.timezone.utc
        )
        assert got[1]["local"] == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def test_no_lock_held_between_batches(engine: sa.Engine, snapshot: snaps.Snapshot) -> None:
    """A paused stream (a slow client) holds no transaction: the table can be dropped
    (retention: its record and its table) at once, and the stream then says the snapshot
    is gone."""
    batches = arrow.iter_record_batches(engine, snapshot, COLUMNS)
    assert next(batches).num_rows == 10_000
    drop = f'DROP TABLE "{snapshot.table_name}"'
    forget = f"DELETE FROM nx1_snapshots WHERE id = '{snapshot.id}'"
    if engine.dialect.name == "sqlite":
        with closing(sqlite3.connect(engine.url.database, timeout=2)) as conn, conn:
            conn.execute(forget)
            conn.execute(drop)
    else:
        schema = engine.url.query["options"].split("=", 1)[1]
        with psycopg.connect(pg_admin_url()) as conn:
            conn.execute("SET lock_timeout = '2s'")
            conn.execute(f'SET search_path = "{schema}"')
            conn.execute(forget)
            conn.execute(drop)
    with pytest.raises(SnapshotNotFound, match="no longer retained"):
        next(batches)


def open_store_files(engine: sa.Engine) -> int:
    """How many of this process's descriptors are the store's connections (PostgreSQL:
    server sessions of the Arrow reader; SQLite: the database file opened)."""
    if engine.dialect.name == "postgresql":
        count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        with psycopg.connect(pg_admin_url(), autocommit=True) as conn:
            row = conn.execute(count, (arrow.APPLICATION_NAME,)).fetchone()
            return int(row[0]) if row else 0
    database = os.path.realpath(str(engine.url.database))
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if _target(fd) == database)


def _target(fd: Path) -> str | None:
    try:
        return os.readlink(fd)
    except OSError:
        return None


@pytest.mark.slow  # spawns processes
def test_closing_the_stream_closes_the_driver_connection(
    engine: sa.Engine, snapshot: snaps.Snapshot
) -> None:
    """PostgreSQL: the reader's own session ends with the stream. SQLite: the stream opens
    nothing of its own (its batches come from the pool every read uses)."""
    reads.read_raw_rows(engine, snapshot, COLUMNS, start=0, limit=1)  # the pool's connection
    before = open_store_files(engine)
    batches = arrow.iter_record_batches(engine, snapshot, COLUMNS)
    next(batches)
    if engine.dialect.name == "postgresql":
        assert open_store_files(engine) > before
    else:
        assert open_store_files(engine) == before
    batches.close()
    assert open_store_files(engine) == before


_PUBLISH = """
import sys
from airflow_nx1_connect.core import engines, writer
from airflow_nx1_connect.core.types import Column
engine = engines.create_store_engine(sys.argv[1])
snapshot = writer.write_snapshot(
    engine, data_api="wide", columns=[Column("id", "INTEGER")], batches=[[(1,), (2,)]]
)
print(snapshot.id)
"""


def publish_from_another_process(url: str) -> str:
    """Publish a snapshot of `wide` from a separate Python process; its id."""
    done = subprocess.run(
        [sys.executable, "-c", _PUBLISH, url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_an_arrow_read_leaves_the_store_whole_and_current(
    engine: sa.Engine, snapshot: snaps.Snapshot
) -> None:
    """Issue 22, defect 1: after a whole-snapshot Arrow read in this process, a publish
    from another process is seen as `latest`, and the store file is intact. With a second
    SQLite library (ADBC's) in the process, the read closed its connection, which dropped
    the pool's POSIX locks; ADBC's copy deleted the WAL under them: `latest` stayed the
    old id here, later reads failed as "malformed" and integrity_check failed."""
    url = engine.url.render_as_string(hide_password=False)
    first = publish_from_another_process(url)
    assert snaps.latest_snapshot(engine, "wide").id == first
    latest = snaps.latest_snapshot(engine, "wide")
    read = arrow.iter_record_batches(engine, latest, snaps.resolve_columns(latest, None))
    assert sum(b.num_rows for b in read) == 2
    second = publish_from_another_process(url)
    assert snaps.latest_snapshot(engine, "wide").id == second
    # This process's own writes still land in the store, and the file is whole.
    writer.apply_retention(engine, "wide", 1)
    assert [s.id for s in snaps.list_snapshots(engine, "wide")] == [second]
    if engine.dialect.name == "sqlite":
        with closing(sqlite3.connect(engine.url.database)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_without_the_driver_the_same_batches_come_from_rows(
    engine: sa.Engine, snapshot: snaps.Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store the driver cannot open is read as rows instead, with the same batches."""
    assert arrow._DriverReader.open(sa.create_engine("sqlite://")) is None
    fast = list(arrow.iter_record_batches(engine, snapshot, COLUMNS, start=5))
    monkeypatch.setattr(arrow._DriverReader, "open", classmethod(lambda _cls, _engine: None))
    slow = list(arrow.iter_record_batches(engine, snapshot, COLUMNS, start=5))
    assert [b.num_rows for b in slow] == [b.num_rows for b in fast] == [10_000, 10_000, 4_998]
    assert all(s.equals(f) for s, f in zip(slow, fast, strict=True))
