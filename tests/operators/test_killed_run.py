"""A rule run SIGKILLed mid-write (a real subprocess running the operator) never changes
what is served, and the next run cleans its half snapshot up. Both stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import sqlalchemy as sa

from airflow_nx1_connect.core import lease, store
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.errors import SnapshotNotFound
from tests.operators.conftest import SALES, latest_rows, ti_states

pytestmark = pytest.mark.slow  # a rule run in a real subprocess, SIGKILLed

DAG_SOURCE = """
import pendulum
from airflow.sdk import DAG
from airflow_nx1_connect.operators import AskRuleOperator

with DAG("DAG_ID", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    AskRuleOperator(task_id="rule", data_api="{name}", conn_id="nx1_src_sqlite",
                    sql="SELECT * FROM sales ORDER BY id")
"""

# The same task, run by a separate process on an endless-looking result (100M rows). Its
# rows written so far go to the file {progress} after each batch, so the test waits for them.
WRITER = """
from pathlib import Path
from types import SimpleNamespace
from airflow_nx1_connect.core import writer
from airflow_nx1_connect.operators import AskRuleOperator

write_snapshot = writer.write_snapshot

def counted(*args, batches, **kwargs):
    def each():
        rows = 0
        for batch in batches:
            yield batch  # resumed once the writer has written this batch
            rows += len(batch)
            Path({progress!r}).write_text(str(rows))
    return write_snapshot(*args, batches=each(), **kwargs)

writer.write_snapshot = counted

op = AskRuleOperator(
    task_id="rule", data_api={name!r}, conn_id="nx1_src_sqlite",
    sql="WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000) "
        "SELECT x AS id, 'row ' || x AS label FROM c",
)
ti = SimpleNamespace(dag_id={dag_id!r}, task_id="rule", run_id="doomed")
op.execute({{"ti": ti, "run_id": "doomed", "data_interval_end": None}})
"""


def _wait_for_writing(engine, name, proc, progress, rows=50_000, timeout=60.0):
    """The `writing` record of the child's run, once it has written `rows` rows into it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        writing = snaps.list_snapshots(engine, name, statuses=("writing",))
        written = int(progress.read_text() or 0) if progress.exists() else 0
        if writing and written >= rows:
            return writing[0]
        time.sleep(0.1)
    raise AssertionError(f"the writer never got {rows} rows into a `writing` snapshot")


def _snapshot_tables(engine):
    return {t for t in sa.inspect(engine).get_table_names() if t.startswith(store.TABLE_PREFIX)}


def test_sigkill_mid_write_keeps_previous_snapshot_and_next_run_cleans_up(
    engine, sqlite_source, make_dag, tmp_path
):
    name = f"killed_{engine.dialect.name[:2]}"
    dag = make_dag(DAG_SOURCE.format(name=name))
    assert ti_states(dag.test()) == {"rule": "success"}
    first = snaps.latest_snapshot(engine, name)

    progress = tmp_path / "rows"
    script = WRITER.format(name=name, dag_id=dag.dag_id, progress=str(progress))
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        doomed = _wait_for_writing(engine, name, proc, progress)  # rows are streaming in
        assert proc.poll() is None, "the writer finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    # What is served did not change; the half snapshot is invisible.
    assert snaps.latest_snapshot(engine, name).id == first.id
    assert latest_rows(engine, name) == SALES
    assert [s.id for s in snaps.list_snapshots(engine, name)] == [first.id]
    try:
        snaps.get_snapshot(engine, name, doomed.id)
    except SnapshotNotFound:
        pass
    else:
        raise AssertionError("a half-written snapshot was served")
    left = snaps.list_snapshots(engine, name, statuses=("writing",))
    assert [s.id for s in left] == [doomed.id]

    # The writer's lease dies with it (the PostgreSQL server may take a moment to notice).
    deadline = time.monotonic() + 20
    while not lease.Lease.is_abandoned(engine, doomed.id):
        assert time.monotonic() < deadline, "the killed writer's lease was never released"
        time.sleep(0.2)

    # The next run removes the abandoned record and table, then publishes normally.
    assert ti_states(dag.test()) == {"rule": "success"}
    assert snaps.list_snapshots(engine, name, statuses=("writing", "failed")) == []
    published = snaps.list_snapshots(engine, name)
    assert len(published) == 2 and published[1].id == first.id
    assert latest_rows(engine, name) == SALES
    assert _snapshot_tables(engine) == {s.table_name for s in published}
