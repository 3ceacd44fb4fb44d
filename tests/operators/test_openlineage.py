"""OpenLineage events of rule runs, through Airflow's OpenLineage provider and its file transport.

One DAG reads a PostgreSQL source (an Ask joining two tables), a MariaDB source (an Engineer
merge) and fails on purpose (an Ask on a missing table). It runs twice as a deployment runs
it: with `airflow dags test`, and triggered under a real scheduler (LocalExecutor, the
dag-processor and the api-server's execution API). Both times the file transport
(`[openlineage] transport = {"type": "file", ...}`) gets, per task, START then COMPLETE (or
FAIL): inputs are the tables the SQL parser finds through the Connection's hook, the one
output is namespace `nx1`, name the data API, with the snapshot's schema and, on COMPLETE,
its row count. Without the provider the lineage methods return None.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from airflow_nx1_connect.core import engines
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.operators import AskRuleOperator, EngineerRuleOperator
from tests.operators.conftest import MYSQL, MYSQL_CONN, PG_CONN, my_exec, pg_exec

BIN = Path(sys.executable).parent

OL_DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_nx1_connect.operators import AskRuleOperator, EngineerRuleOperator

with DAG("{dag_id}", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    AskRuleOperator(
        task_id="top_categories", data_api="{p}_top", conn_id="{pg}",
        description="Units sold per category",
        sql="SELECT p.category, SUM(o.units) AS units FROM orders AS o "
            "JOIN products AS p ON p.name = o.product GROUP BY p.category ORDER BY units DESC",
    )
    EngineerRuleOperator(
        task_id="balances", data_api="{p}_balances", conn_id="{my}",
        sql="SELECT account, SUM(amount) AS total FROM {p}_tx GROUP BY account",
        write_mode="merge", merge_keys=["account"],
    )
    AskRuleOperator(
        task_id="broken", data_api="{p}_broken", conn_id="{pg}",
        sql="SELECT * FROM no_such_table",
    )
"""


def _sources(schema: str, prefix: str) -> None:
    pg_exec(
        schema,
        "CREATE TABLE orders (id int PRIMARY KEY, product text, units int);"
        "CREATE TABLE products (name text PRIMARY KEY, category text);"
        "INSERT INTO orders VALUES (1, 'espresso', 3), (2, 'bagel', 5), (3, 'latte', 4);"
        "INSERT INTO products VALUES ('espresso', 'coffee'), ('latte', 'coffee'),"
        " ('bagel', 'bakery');",
    )
    my_exec(
        f"CREATE TABLE {prefix}_tx (id INT PRIMARY KEY, account VARCHAR(20), "
        "amount DECIMAL(10, 2))",
        f"INSERT INTO {prefix}_tx VALUES (1, 'A', 10.50), (2, 'B', 20.00), (3, 'A', 1.25)",
    )


def _transport(events: Path) -> str:
    return json.dumps({"type": "file", "log_file_path": str(events), "append": True})


def _events(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Task job name (`dag_id.task_id`) -> its run events, in the order written."""
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        event = json.loads(line)
        by_job[event["job"]["name"]].append(event)
    return by_job


def _check_events(
    events: dict[str, list[dict[str, Any]]], dag_id: str, schema: str, prefix: str, engine: Any
) -> dict[str, Any]:
    """The lineage the contract describes, task by task; returns one COMPLETE event."""
    pg_conn = json.loads(os.environ[f"AIRFLOW_CONN_{PG_CONN.upper()}"])
    pg_ns = f"postgres://{pg_conn['host']}:{pg_conn['port']}"
    my_ns = f"mysql://{MYSQL['host']}:{MYSQL['port']}"
    expected_inputs = {
        "top_categories": {(pg_ns, f"test.{schema}.orders"), (pg_ns, f"test.{schema}.products")},
        "balances": {(my_ns, f"{MYSQL['database']}.{prefix}_tx")},
        "broken": {(pg_ns, f"test.{schema}.no_such_table")},
    }
    expected_schema = {
        "top_categories": [("category", "TEXT"), ("units", "INTEGER")],
        "balances": [("account", "TEXT"), ("total", "NUMERIC")],
    }
    for task_id, inputs in expected_inputs.items():
        run = events[f"{dag_id}.{task_id}"]
        final = "FAIL" if task_id == "broken" else "COMPLETE"
        assert [e["eventType"] for e in run] == ["START", final], task_id
        assert len({e["run"]["runId"] for e in run}) == 1
        api = f"{prefix}_{task_id.split('_')[0]}"  # the DAG's data API names
        for event in run:
            assert {(d["namespace"], d["name"]) for d in event["inputs"]} == inputs, task_id
            (output,) = event["outputs"]
            assert (output["namespace"], output["name"]) == ("nx1", api)
        start, end = run
        assert "outputStatistics" not in start["outputs"][0].get("outputFacets", {})
        if final == "FAIL":
            assert "outputStatistics" not in end["outputs"][0].get("outputFacets", {})
            assert "schema" not in end["outputs"][0]["facets"]  # nothing was ever published
            continue
        snapshot = snaps.latest_snapshot(engine, api)
        output = end["outputs"][0]
        fields = [(f["name"], f["type"]) for f in output["facets"]["schema"]["fields"]]
        assert fields == expected_schema[task_id]
        assert fields == list(zip(snapshot.columns, snapshot.column_types, strict=True))
        assert output["outputFacets"]["outputStatistics"]["rowCount"] == snapshot.row_count == 2
        # The input tables' own columns, read by the parser through the hook.
        assert all("schema" in d["facets"] for d in end["inputs"])
    top = events[f"{dag_id}.top_categories"][1]
    assert top["outputs"][0]["facets"]["documentation"]["description"] == (
        "Units sold per category"
    )
    assert "SUM(o.units)" in top["job"]["facets"]["sql"]["query"]
    return top


@pytest.mark.slow  # spawns processes
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_airflow_dags_test_emits_lineage(
    engine, store_env, pg_source, mysql_source, airflow_db, tmp_path
):
    schema, prefix = pg_source, mysql_source
    _sources(schema, prefix)
    dag_id = f"nx1_ol_{uuid.uuid4().hex[:8]}"
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / f"{dag_id}.py").write_text(
        OL_DAG.format(dag_id=dag_id, p=prefix, pg=PG_CONN, my=MYSQL_CONN)
    )
    events = tmp_path / "events.jsonl"
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": _transport(events),
    }
    done = subprocess.run(
        [str(BIN / "airflow"), "dags", "test", dag_id],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert events.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    _check_events(_events(events), dag_id, schema, prefix, engine)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scheduler_runs_emit_lineage(pg_source, mysql_source, tmp_path):
    """The same DAG triggered under a scheduler (LocalExecutor): each task's process emits."""
    from tests.api_server import running_api_server
    from tests.distributed.cluster import Processes, deployment, scheduler_healthy, wait_for

    schema, prefix = pg_source, mysql_source
    _sources(schema, prefix)
    dag_id = f"nx1_ol_sched_{uuid.uuid4().hex[:8]}"
    events = tmp_path / "events.jsonl"
    extra = {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": _transport(events),
        f"AIRFLOW_CONN_{PG_CONN.upper()}": os.environ[f"AIRFLOW_CONN_{PG_CONN.upper()}"],
        f"AIRFLOW_CONN_{MYSQL_CONN.upper()}": os.environ[f"AIRFLOW_CONN_{MYSQL_CONN.upper()}"],
    }
    dag_file = {f"{dag_id}.py": OL_DAG.format(dag_id=dag_id, p=prefix, pg=PG_CONN, my=MYSQL_CONN)}
    with deployment(tmp_path, dag_file, extra) as dep:
        procs = Processes(dep)
        try:
            procs.start("scheduler", "airflow", "scheduler")
            procs.start("dag-processor", "airflow", "dag-processor")
            with running_api_server(dep.env, dep.home, port=dep.api_port):
                wait_for(
                    "the scheduler", lambda: procs.check_alive() or scheduler_healthy(dep), 120
                )
                wait_for(
                    "the DAG parsed",
                    lambda: (
                        procs.check_alive()
                        or dep.meta("SELECT 1 FROM serialized_dag WHERE dag_id = %s", (dag_id,))
                    ),
                    120,
                )
                dep.run("airflow", "dags", "trigger", dag_id, "--run-id", "ol_run")

                def finished() -> Any:
                    procs.check_alive()
                    rows = dep.meta(
                        "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = 'ol_run'",
                        (dag_id,),
                    )
                    return rows and rows[0][0] in ("success", "failed")

                wait_for("the triggered run to finish", finished, 240)
                states = dict(
                    dep.meta(
                        "SELECT task_id, state FROM task_instance WHERE dag_id = %s", (dag_id,)
                    )
                )
                assert states == {
                    "top_categories": "success",
                    "balances": "success",
                    "broken": "failed",
                }, "\n".join(p.tail(3000) for p in procs.procs.values())
        finally:
            procs.stop_all()
        engine = engines.get_engine(dep.store_url)
        try:
            top = _check_events(_events(events), dag_id, schema, prefix, engine)
        finally:
            engines.dispose_engines()
    assert top["run"]["facets"]["airflow"]["taskInstance"]["try_number"] == 1


def test_without_the_openlineage_provider_nothing_is_reported(monkeypatch):
    # As if apache-airflow-providers-openlineage were not installed: its import fails.
    monkeypatch.setitem(sys.modules, "airflow.providers.openlineage.extractors", None)
    for op in (
        AskRuleOperator(task_id="a", data_api="a", conn_id="nowhere", sql="SELECT 1"),
        EngineerRuleOperator(task_id="e", data_api="e", conn_id="nowhere", sql="SELECT 1"),
    ):
        assert op.get_openlineage_facets_on_start() is None
        assert op.get_openlineage_facets_on_complete(None) is None
        assert op.get_openlineage_facets_on_failure(None) is None


def test_lineage_still_names_the_output_when_the_connection_is_missing():
    op = AskRuleOperator(task_id="a", data_api="weekly", conn_id="nx1_no_such_conn", sql="SELECT 1")
    lineage = op.get_openlineage_facets_on_failure(None)
    assert lineage is not None and lineage.inputs == []
    (output,) = lineage.outputs
    assert (output.namespace, output.name) == ("nx1", "weekly")
