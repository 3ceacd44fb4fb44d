"""Writer faults and concurrency, on SQLite and PostgreSQL stores (real processes).

1. A run SIGKILLed mid-write leaves the previous snapshot served byte for byte, the half
   snapshot invisible, and the next run removes it.
3. Two runs of the same data API at once both finish; latest is one of them; retention
   holds; no orphan tables. Retention passes run at once retire each snapshot once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from airflow_nx1_connect.core import reads, store, writer
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.store import snapshots as snapshots_table

pytestmark = pytest.mark.slow  # writer processes, SIGKILLed

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = [snaps.Column("i", "INTEGER"), snaps.Column("tag", "TEXT")]


def _writer(
    url: str, name: str, rows: int, every: int, tag: str, tmp_path: Path
) -> subprocess.Popen:
    """A writer process; its rows written so far go to the file `proc.progress` names."""
    progress = tmp_path / f"{tag}.rows"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.reliability.writer_proc",
            url,
            name,
            str(rows),
            str(every),
            tag,
            str(progress),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.progress = progress  # type: ignore[attr-defined]
    return proc


def _rows_written(proc: subprocess.Popen) -> int:
    try:
        return int(proc.progress.read_text() or 0)  # type: ignore[attr-defined]
    except FileNotFoundError:
        return 0


def _served_bytes(engine, name: str) -> tuple[str, bytes]:
    snap = snaps.latest_snapshot(engine, name)
    cols = snaps.resolve_columns(snap, None)
    body = b"".join(
        repr(row).encode() + b"\n" for batch in reads.iter_rows(engine, snap, cols) for row in batch
    )
    return snap.id, body


def _snap_tables(engine) -> set[str]:
    return {t for t in sa.inspect(engine).get_table_names() if t.startswith(store.TABLE_PREFIX)}


def _records(engine, status: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(snapshots_table.c.id, snapshots_table.c.table_name).where(
                snapshots_table.c.status == status
            )
        ).all()


def _wait_for_writing(
    engine, proc: subprocess.Popen, rows: int = 10_000, timeout: float = 60
) -> str:
    """Wait until the child has a `writing` record and has written `rows` rows into its
    table (it reports them after each batch); its record's id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "writer exited"
        writing = _records(engine, "writing")
        if writing and _rows_written(proc) >= rows:
            return writing[0][0]
        time.sleep(0.05)
    raise AssertionError(f"the writer never got {rows} rows into a `writing` snapshot")


def test_killed_writer_leaves_previous_snapshot_served(engine, store_url, tmp_path):
    snaps.register_data_api(engine, name="ledger", kind="engineer", dag_id="d", task_id="t")
    first = writer.write_snapshot(
        engine, data_api="ledger", columns=COLUMNS, batches=[[(1, "a"), (2, "é'\"")]]
    )
    before = _served_bytes(engine, "ledger")
    tables_before = _snap_tables(engine)

    proc = _writer(store_url, "ledger", 5_000_000, 2_000, "killed", tmp_path)
    half_id = _wait_for_writing(engine, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # What is served is byte for byte what was served before; the half snapshot is invisible.
    assert _served_bytes(engine, "ledger") == before
    assert [s.id for s in snaps.list_snapshots(engine, "ledger")] == [first.id]
    assert half_id in {r[0] for r in _records(engine, "writing")}
    # Its rows were never committed: no table beyond those before (the record waits for cleanup).
    assert _snap_tables(engine) <= tables_before | {store.TABLE_PREFIX + half_id}

    # The next run cleans it up and publishes normally.
    nxt = writer.write_snapshot(engine, data_api="ledger", columns=COLUMNS, batches=[[(3, "c")]])
    assert _records(engine, "writing") == []
    assert store.TABLE_PREFIX + half_id not in _snap_tables(engine)
    assert snaps.latest_snapshot(engine, "ledger").id == nxt.id


def test_live_writer_is_not_cleaned_up_by_another_run(engine, store_url, tmp_path):
    snaps.register_data_api(engine, name="ledger", kind="engineer", dag_id="d", task_id="t")
    proc = _writer(store_url, "ledger", 60_000, 2_000, "slow", tmp_path)
    live_id = _wait_for_writing(engine, proc)
    assert writer.cleanup_abandoned(engine, "ledger") == 0
    assert live_id in {r[0] for r in _records(engine, "writing")}
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == live_id


def test_concurrent_runs_of_one_data_api_stay_consistent(engine, store_url, tmp_path):
    snaps.register_data_api(engine, name="ledger", kind="engineer", dag_id="d", task_id="t")
    for n in range(2):
        writer.write_snapshot(
            engine, data_api="ledger", columns=COLUMNS, batches=[[(n, "seed")]], retention=3
        )
    procs = [_writer(store_url, "ledger", 30_000, 5_000, f"run{k}", tmp_path) for k in range(2)]
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        ids.append(out.strip())

    latest = snaps.latest_snapshot(engine, "ledger")
    assert latest.id in ids and latest.row_count == 30_000
    published = snaps.list_snapshots(engine, "ledger")
    assert len(published) == 3  # retention=3 holds
    assert set(ids) <= {s.id for s in published}
    assert _records(engine, "writing") == []
    # No orphan tables: every snapshot table belongs to a retained published snapshot.
    assert _snap_tables(engine) == {s.table_name for s in published}
    # Each retained snapshot is whole.
    for s in published:
        rows = [r for b in reads.iter_rows(engine, s, snaps.resolve_columns(s, None)) for r in b]
        assert len(rows) == s.row_count


def test_concurrent_retention_passes_retire_each_snapshot_once(engine):
    """Retention run by several runs' ends at once: each dropped snapshot is retired once.

    Without a lock per data API, two passes read the same published list and both try to
    record the same retired id (a unique violation on PostgreSQL, a busy snapshot on SQLite).
    """
    snaps.register_data_api(engine, name="ledger", kind="engineer", dag_id="d", task_id="t")
    made = [
        writer.write_snapshot(
            engine, data_api="ledger", columns=COLUMNS, batches=[[(n, "x")]], retention=100
        )
        for n in range(12)
    ]
    for rnd, keep in enumerate((9, 6, 3, 1)):
        before = len(snaps.list_snapshots(engine, "ledger"))
        start = threading.Barrier(4)
        errors: list[BaseException] = []
        dropped: list[int] = []

        def retain(keep: int = keep, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                dropped.append(writer.apply_retention(engine, "ledger", keep))
            except BaseException as exc:  # collected for the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=retain) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == [], f"round {rnd}: {errors[0]!r}"
        assert sum(dropped) == before - keep  # each dropped by exactly one pass
        kept = snaps.list_snapshots(engine, "ledger")
        assert [s.id for s in kept] == [s.id for s in reversed(made)][:keep]
    with engine.connect() as conn:
        retired = conn.execute(sa.select(store.retired_snapshots.c.id)).scalars().all()
    assert sorted(retired) == sorted(s.id for s in made[:-1])
    assert _snap_tables(engine) == {made[-1].table_name}
