"""Runs on demand on a real Airflow: api-server, scheduler and dag-processor (LocalExecutor).

One Airflow per module (a fresh AIRFLOW_HOME and SQLite metadata DB, a DAGs folder with
two Ask rules on a SQLite source: one DAG unpaused, one paused), the snapshot store a
SQLite file. An app with a `run` key triggers its rule (two apps at once get one run),
waits with `Prefer: wait`, and reads the snapshot the run published; a paused DAG is 409,
a key without the run scope 403.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.api_server import free_port, running_airflow_components, running_api_server

pytestmark = pytest.mark.slow

MOUNTS = ("/pluginsv2/nx1/api/v1", "/nx1/api/v1")
ROWS = [(1, "Espresso", 120), (2, "Bagel", 98), (3, "Crème brûlée", 7)]

DAGS = textwrap.dedent(
    """
    import pendulum
    from airflow.sdk import DAG

    from airflow_nx1_connect.operators import AskRuleOperator

    for dag_id, paused, api in (("nx1_runs_live", False, "top_sales"),
                                ("nx1_runs_paused", True, "paused_sales")):
        with DAG(dag_id=dag_id, schedule=None, catchup=False,
                 start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
                 is_paused_upon_creation=paused) as dag:
            AskRuleOperator(task_id="ask", data_api=api, conn_id="nx1_runs_src",
                            sql="SELECT id, product, units FROM sales ORDER BY units DESC")
        globals()[dag_id] = dag
    """
)


@dataclass
class Airflow:
    url: str
    run_key: str
    read_key: str
    paused_key: str
    logs: list[Path]


def _store(store_url: str) -> tuple[str, str, str]:
    from airflow_nx1_connect.core import engines, keys, store
    from airflow_nx1_connect.core import snapshots as snaps

    engine = engines.create_store_engine(store_url)
    try:
        store.migrate(engine)
        for name, dag_id in (("top_sales", "nx1_runs_live"), ("paused_sales", "nx1_runs_paused")):
            snaps.register_data_api(engine, name=name, kind="ask", dag_id=dag_id, task_id="ask")
        run = keys.create_key(engine, data_api="top_sales", days=1, scopes=["run"]).secret
        read = keys.create_key(engine, data_api="top_sales", days=1).secret
        paused = keys.create_key(engine, data_api="paused_sales", days=1, scopes=["run"]).secret
    finally:
        engine.dispose()
    return run, read, paused


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    """A running api-server, scheduler and dag-processor, stopped after the module."""
    home = tmp_path_factory.mktemp("airflow-runs")
    dags = home / "dags"
    dags.mkdir()
    (dags / "nx1_runs_dags.py").write_text(DAGS)
    source = home / "source.db"
    with closing(sqlite3.connect(source)) as conn, conn:
        conn.execute("CREATE TABLE sales (id INTEGER, product TEXT, units INTEGER)")
        conn.executemany("INSERT INTO sales VALUES (?, ?, ?)", ROWS)
    store_url = f"sqlite:///{home / 'nx1_store.db'}"
    run_key, read_key, paused_key = _store(store_url)
    port = free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
        ),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": store_url,
        "PYTHONUNBUFFERED": "1",
        "AIRFLOW_CONN_NX1_RUNS_SRC": "sqlite://" + quote(str(source), safe=""),
    }
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    with (
        running_api_server(env, home, port=port) as (url, log),
        running_airflow_components(env, home) as logs,
    ):
        yield Airflow(url, run_key, read_key, paused_key, [log, *logs.values()])


def _post(url: str, key: str, name: str = "top_sales", **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/data-apis/{name}/runs", headers={"X-API-Key": key, **headers}, timeout=90
    )


def _logs(airflow: Airflow) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in airflow.logs)


def test_paused_dag_is_409_and_read_key_is_403(airflow: Airflow) -> None:
    # Until the dag-processor has parsed the DAGs file, the DAG is "not in Airflow" (409 too).
    deadline = time.monotonic() + 120
    for mount in MOUNTS:
        while True:
            answer = _post(airflow.url + mount, airflow.paused_key, "paused_sales")
            assert answer.status_code == 409, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
            if "is paused" in answer.json()["detail"]:
                break
            assert time.monotonic() < deadline, _logs(airflow)
            time.sleep(1)
        refused = _post(airflow.url + mount, airflow.read_key)
        assert refused.status_code == 403, refused.text
        assert refused.json()["type"].endswith("missing-scope")


def test_trigger_wait_read(airflow: Airflow) -> None:
    # Two apps at the same moment, one through each mount: one run.
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda m: _post(airflow.url + m, airflow.run_key), MOUNTS))
    for answer in answers:
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["state"] in ("queued", "running")
        assert answer.headers["location"] == body["status_url"]
    run_ids = {a.json()["run_id"] for a in answers}
    assert len(run_ids) == 1, [a.json() for a in answers]
    run_id = run_ids.pop()
    assert run_id.startswith("manual__")

    # Asking again while it is queued or running returns it; wait until it ends.
    deadline = time.monotonic() + 180
    while True:
        answer = _post(airflow.url + MOUNTS[1], airflow.run_key, Prefer="wait=20")
        assert answer.headers["preference-applied"] == "wait=20"
        body = answer.json()
        if answer.status_code == 200:
            break
        assert answer.status_code == 202 and body["run_id"] == run_id, answer.text
        assert time.monotonic() < deadline, _logs(airflow)
    assert body["run_id"] == run_id and body["state"] == "success", (body, _logs(airflow))
    snapshot = body["snapshot"]
    assert snapshot["run_id"] == run_id and snapshot["row_count"] == len(ROWS)

    key = {"X-API-Key": airflow.read_key}
    for mount in MOUNTS:
        status = httpx.get(
            f"{airflow.url}{mount}/data-apis/top_sales/runs/{quote(run_id, safe='')}",
            headers=key,
            timeout=30,
        )
        assert status.status_code == 200, status.text
        assert status.json() == {"run_id": run_id, "state": "success", "snapshot": snapshot}
        latest = httpx.get(
            f"{airflow.url}{mount}/data-apis/top_sales/latest", headers=key, timeout=30
        )
        assert latest.status_code == 200, latest.text
        assert latest.json()["snapshot"] == snapshot
        assert latest.json()["data"]["data"] == [list(r) for r in ROWS]

    # The run has ended: the next request starts a new one.
    again = _post(airflow.url + MOUNTS[0], airflow.run_key)
    assert again.status_code == 202 and again.json()["run_id"] != run_id, again.text
