"""Publishing under concurrency (issue 22, defects 2-4): overlapping runs, backfills, admin
actions during a long write; both stores, real threads and processes."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_nx1_connect.core import control, reads, writer
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.errors import LatestMoved, SnapshotNotFound

COLUMNS = [snaps.Column("k", "INTEGER"), snaps.Column("v", "TEXT")]
#: How long the first run waits for the second to publish (it never does with the fix).
OVERLAP_S = 3.0


def _register(engine: sa.Engine, name: str = "ledger") -> None:
    snaps.register_data_api(engine, name=name, kind="engineer", dag_id="d", task_id=name)


def _rows(engine: sa.Engine, snapshot: snaps.Snapshot) -> list[tuple[Any, ...]]:
    cols = snaps.resolve_columns(snapshot, None)
    return [tuple(r) for batch in reads.iter_rows(engine, snapshot, cols) for r in batch]


def _latest_rows(engine: sa.Engine, name: str = "ledger") -> list[tuple[Any, ...]]:
    return _rows(engine, snaps.latest_snapshot(engine, name))


class Run(threading.Thread):
    """One `write_snapshot` in a thread of its own; `error` holds what it raised."""

    def __init__(self, engine: sa.Engine, batches: Any, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.engine, self.batches, self.kwargs = engine, batches, kwargs
        self.result: snaps.Snapshot | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.result = writer.write_snapshot(
                self.engine, data_api="ledger", columns=COLUMNS, batches=self.batches, **self.kwargs
            )
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


def _paused(rows: Sequence[tuple[Any, ...]], started: threading.Event, other: Run) -> Iterator:
    """The rows, once the other run has published or OVERLAP_S passed (a slow source)."""
    started.set()
    other.done.wait(OVERLAP_S)
    yield list(rows)


@pytest.mark.parametrize("mode", ["append", "merge"])
def test_overlapping_runs_lose_no_rows(engine: sa.Engine, mode: str) -> None:
    """Defect 2: two runs that overlap both build on the same previous snapshot; the one
    that published last used to drop the other's rows ([0] + 1 and [0] + 2 gave [0, 2]).
    Now the result is as if one ran after the other."""
    _register(engine)
    kwargs: dict[str, Any] = {"write_mode": mode}
    if mode == "merge":
        kwargs["merge_keys"] = ["k"]
    writer.write_snapshot(
        engine, data_api="ledger", columns=COLUMNS, batches=[[(0, "base")]], **kwargs
    )
    started = threading.Event()
    second = Run(engine, [[(2, "second")]], **kwargs)
    first = Run(engine, None, **kwargs)
    first.batches = _paused([(1, "first")], started, second)
    first.start()
    assert started.wait(30), "the first run never read its source"
    second.start()
    first.join(60)
    second.join(60)
    assert first.error is None and second.error is None, (first.error, second.error)
    assert sorted(_latest_rows(engine)) == [(0, "base"), (1, "first"), (2, "second")]
    # The second waited for the first and built on it: it is the latest.
    assert first.result is not None and second.result is not None
    assert snaps.latest_snapshot(engine, "ledger").id == second.result.id
    assert second.result.row_count == 3 and first.result.row_count == 2


_APPEND = """
import sys, time
from airflow_nx1_connect.core import engines, store, writer
from airflow_nx1_connect.core.types import Column
engine = engines.create_store_engine(sys.argv[1])
first, n = int(sys.argv[2]), int(sys.argv[3])
rows = [(i, f"row {i}") for i in range(first, first + n)]
def batches():  # a source that takes a while, so the two runs overlap
    for i in range(0, n, 5000):
        time.sleep(0.1)
        yield rows[i : i + 5000]
writer.write_snapshot(
    engine, data_api="ledger", columns=[Column("k", "INTEGER"), Column("v", "TEXT")],
    batches=batches(), write_mode="append",
)
"""


@pytest.mark.slow  # spawns processes
def test_overlapping_append_processes_keep_every_row(engine: sa.Engine) -> None:
    """Two rule runs in processes of their own, appending 60,000 rows each at once."""
    _register(engine)
    writer.write_snapshot(
        engine, data_api="ledger", columns=COLUMNS, batches=[[(-1, "base")]], write_mode="append"
    )
    url = engine.url.render_as_string(hide_password=False)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _APPEND, url, str(first), "60000"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for first in (0, 100_000)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    latest = snaps.latest_snapshot(engine, "ledger")
    assert latest.row_count == 120_001
    keys_seen = [r[0] for r in _latest_rows(engine)]
    assert sorted(keys_seen) == [-1, *range(60_000), *range(100_000, 160_000)]
    # Each run's rows stay together, in its order, after the rows it built on.
    assert keys_seen[0] == -1
    assert keys_seen[1:] in (
        [*range(60_000), *range(100_000, 160_000)],
        [*range(100_000, 160_000), *range(60_000)],
    )


def test_an_append_whose_base_moved_publishes_nothing(engine: sa.Engine) -> None:
    """A writer that skips the build lock (an older version in a mixed deployment) moves
    the latest while an append builds on it: the append fails (retryable), publishes
    nothing, and the other's snapshot stays latest."""
    _register(engine)
    writer.write_snapshot(
        engine, data_api="ledger", columns=COLUMNS, batches=[[(0, "a")]], write_mode="append"
    )

    def moving() -> Iterator[list[tuple[Any, ...]]]:
        yield [(1, "b")]
        with engine.begin() as conn:  # what an old writer's publish does
            conn.execute(
                sa.update(sa.table("nx1_data_apis", sa.column("latest_snapshot_id"))).values(
                    latest_snapshot_id=intruder.id
                )
            )

    intruder = writer.write_snapshot(
        engine, data_api="ledger", columns=COLUMNS, batches=[[(9, "z")]], retention=10
    )
    base = writer.write_snapshot(
        engine, data_api="ledger", columns=COLUMNS, batches=[[(0, "a")]], retention=10
    )
    assert snaps.latest_snapshot(engine, "ledger").id == base.id
    with pytest.raises(LatestMoved, match="Retry the task"):
        writer.write_snapshot(
            engine,
            data_api="ledger",
            columns=COLUMNS,
            batches=moving(),
            write_mode="append",
            retention=10,
        )
    assert snaps.latest_snapshot(engine, "ledger").id == intruder.id
    assert len(snaps.list_snapshots(engine, "ledger")) == 3
    tables = [t for t in sa.inspect(engine).get_table_names() if t.startswith("nx1_snap_")]
    assert len(tables) == 3, "the failed run's table is dropped"


def _at(day: int) -> dt.datetime:
    return dt.datetime(2026, 1, day, tzinfo=dt.timezone.utc)


def _write(engine: sa.Engine, value: str, end: dt.datetime | None) -> snaps.Snapshot:
    return writer.write_snapshot(
        engine,
        data_api="ledger",
        columns=COLUMNS,
        batches=[[(1, value)]],
        data_interval_end=end,
        run_id=f"run {value}",
        retention=10,
    )


def test_a_backfill_is_published_but_does_not_replace_fresher_data(engine: sa.Engine) -> None:
    """Defect 3: with overwrite, latest is the snapshot with the newest data_interval_end;
    an older interval that finishes later is published and retained, not latest."""
    _register(engine)
    fresh = _write(engine, "week 2", _at(15))
    backfill = _write(engine, "week 1", _at(8))
    assert snaps.latest_snapshot(engine, "ledger").id == fresh.id
    assert backfill.status == "published"
    assert snaps.get_snapshot(engine, "ledger", backfill.id).id == backfill.id
    assert [s.id for s in snaps.list_snapshots(engine, "ledger")] == [backfill.id, fresh.id]
    assert _rows(engine, backfill) == [(1, "week 1")]
    # A tie: the later publish wins. A newer interval wins.
    tie = _write(engine, "week 2 again", _at(15))
    assert snaps.latest_snapshot(engine, "ledger").id == tie.id
    newer = _write(engine, "week 3", _at(22))
    assert snaps.latest_snapshot(engine, "ledger").id == newer.id
    # A run without a data interval (e.g. a manual run of an unscheduled DAG) cannot be
    # ordered by interval: the later publish wins, and after it any interval does.
    manual = _write(engine, "manual", None)
    assert snaps.latest_snapshot(engine, "ledger").id == manual.id
    old = _write(engine, "old", _at(1))
    assert snaps.latest_snapshot(engine, "ledger").id == old.id


def test_append_and_merge_build_on_the_latest_whatever_its_interval(engine: sa.Engine) -> None:
    """With append/merge each run builds on what is latest when it publishes and becomes
    latest, whatever its interval."""
    _register(engine)
    writer.write_snapshot(
        engine,
        data_api="ledger",
        columns=COLUMNS,
        batches=[[(1, "new")]],
        write_mode="append",
        data_interval_end=_at(15),
    )
    late = writer.write_snapshot(
        engine,
        data_api="ledger",
        columns=COLUMNS,
        batches=[[(2, "old")]],
        write_mode="append",
        data_interval_end=_at(8),
    )
    assert snaps.latest_snapshot(engine, "ledger").id == late.id
    assert _latest_rows(engine) == [(1, "new"), (2, "old")]


# ---------------------------------------------------------------------------------------
# Admin actions while a rule writes (SQLite's one write lock)
# ---------------------------------------------------------------------------------------

_BIG_WRITE = """
import sys
from airflow_nx1_connect.core import engines, store, writer
from airflow_nx1_connect.core.types import Column
engine = engines.create_store_engine(sys.argv[1])
n = int(sys.argv[2])
def batches():
    for start in range(0, n, 10_000):
        stop = start + 10_000
        yield [(i, f"name {i}", i * 0.5, f"category {i % 50}") for i in range(start, stop)]
writer.write_snapshot(
    engine, data_api="ledger", index_columns=["v"],
    columns=[Column("k", "INTEGER"), Column("v", "TEXT"), Column("r", "REAL"), Column("c", "TEXT")],
    batches=batches(),
)
print("done", flush=True)
"""


@pytest.mark.slow  # spawns processes
def test_admin_actions_complete_while_a_rule_writes(engine: sa.Engine) -> None:
    """Defect 4: a SQLite write held the database's write lock for its whole stream, so
    `keys revoke` waited for it and failed with "database is locked" after 10 s. Now
    every admin action completes while a write of 1,500,000 rows (from a source as fast
    as memory) goes on; each one's time is reported."""
    _register(engine)
    actor = control.Actor("test")
    url = engine.url.render_as_string(hide_password=False)
    proc = subprocess.Popen(
        [sys.executable, "-c", _BIG_WRITE, url, "1500000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not snaps.list_snapshots(engine, "ledger", statuses=("writing",)):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the write never started"
            time.sleep(0.05)
        times: list[float] = []
        actions = 0
        while proc.poll() is None and actions < 40:
            began = time.monotonic()
            made = control.create_key(engine, data_api="ledger", days=3, actor=actor)
            times.append(time.monotonic() - began)
            for action in (
                lambda: control.extend_key(engine, made.key.id, days=9, actor=actor),
                lambda: control.revoke_key(engine, made.key.id, actor=actor),
                lambda: control.delete_key(engine, made.key.id, actor=actor),
            ):
                began = time.monotonic()
                action()
                times.append(time.monotonic() - began)
            actions += 4
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "done" in out, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert actions >= 6, "the write ended before the admin actions could be timed"
    print(f"admin actions during the write: {len(times)}, slowest {max(times):.3f} s")
    assert max(times) < 1.0, sorted(times)[-5:]
    latest = snaps.latest_snapshot(engine, "ledger")
    assert latest.row_count == 1_500_000


@pytest.mark.slow  # spawns processes
def test_the_next_read_after_a_publish_sees_it(engine: sa.Engine) -> None:
    """A publish by another process is what the very next read in this one returns."""
    _register(engine)
    writer.write_snapshot(engine, data_api="ledger", columns=COLUMNS, batches=[[(1, "a")]])
    url = engine.url.render_as_string(hide_password=False)
    for n in (10, 20):
        done = subprocess.run(
            [sys.executable, "-c", _BIG_WRITE, url, str(n * 1000)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert snaps.latest_snapshot(engine, "ledger").row_count == n * 1000


def test_nothing_is_latest_before_the_first_publish(engine: sa.Engine) -> None:
    _register(engine)
    with pytest.raises(SnapshotNotFound):
        snaps.latest_snapshot(engine, "ledger")


def test_a_stream_of_a_snapshot_retired_meanwhile_fails_never_shortens(
    engine: sa.Engine,
) -> None:
    """Retention takes a snapshot's table out of service at once (SQLite: renamed, then
    emptied in short transactions): a stream that started before errors on its next batch
    instead of ending early with part of the rows."""
    _register(engine)
    rows = [(i, f"row {i}") for i in range(25_000)]
    old = writer.write_snapshot(engine, data_api="ledger", columns=COLUMNS, batches=[rows])
    stream = reads.iter_raw_rows(engine, old, snaps.resolve_columns(old, None))
    assert len(next(stream)) == 10_000
    writer.write_snapshot(
        engine, data_api="ledger", columns=COLUMNS, batches=[[(1, "new")]], retention=1
    )
    with pytest.raises(SnapshotNotFound):
        list(stream)
    tables = sa.inspect(engine).get_table_names()
    assert old.table_name not in tables
    assert not [t for t in tables if t.startswith("nx1_trash_")]
