"""`Prefer: wait` never holds a request thread of a real `airflow api-server` (issue 22, 7).

An api-server and a dag-processor, no scheduler: a run requested through the data API
stays `queued`. 100 requests wait for it (`GET .../runs/{id}`, `Prefer: wait=15`) on each
mount; meanwhile Airflow's own `/api/v2/monitor/health` answers within 1 s, every time,
and every waiter gets its answer (the run, still queued) once its wait is over. Before,
each waiter slept in a sync handler on the thread pool Airflow's routes use: the health
check timed out.
"""

from __future__ import annotations

import secrets
import sqlite3
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest

from tests.api_server import (
    api_server_env,
    free_port,
    migrate_airflow,
    running_airflow_components,
    running_api_server,
)
from tests.web.helpers import MOUNTS

pytestmark = pytest.mark.slow

WAITERS = 100
WAIT_S = 15

DAG = textwrap.dedent(
    """
    import pendulum
    from airflow.sdk import DAG

    from airflow_nx1_connect.operators import AskRuleOperator

    with DAG(dag_id="nx1_waits", schedule=None, catchup=False,
             start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
             is_paused_upon_creation=False) as dag:
        AskRuleOperator(task_id="ask", data_api="waited", conn_id="nx1_waits_src",
                        sql="SELECT id FROM t")
    """
)

_SETUP = """
import sys
from airflow_nx1_connect.core import engines
from airflow_nx1_connect.core import keys, store
from airflow_nx1_connect.core import snapshots as snaps
engine = engines.create_store_engine(sys.argv[1])
store.migrate(engine)
snaps.register_data_api(engine, name="waited", kind="ask", dag_id="nx1_waits", task_id="ask")
print(keys.create_key(engine, data_api="waited", days=1, scopes=["run"]).secret)
"""


@dataclass
class Server:
    url: str
    key: str
    run_id: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import subprocess
    import sys

    home = tmp_path_factory.mktemp("airflow-waits")
    dags = home / "dags"
    dags.mkdir()
    (dags / "nx1_waits.py").write_text(DAG)
    source = home / "source.db"
    with closing(sqlite3.connect(source)) as conn, conn:
        conn.execute("CREATE TABLE t (id INTEGER)")
    store_url = f"sqlite:///{home / 'nx1_store.db'}"
    key = subprocess.run(
        [sys.executable, "-c", _SETUP, store_url], capture_output=True, text=True, check=True
    ).stdout.strip()
    port = free_port()
    env = api_server_env(
        home,
        store_url,
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),
        AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW_CONN_NX1_WAITS_SRC="sqlite://" + quote(str(source), safe=""),
    )
    migrate_airflow(env)
    with (
        running_api_server(env, home, port=port) as (url, _log),
        running_airflow_components(env, home, components=("dag-processor",)),
    ):
        # Until the dag-processor has parsed the DAG file, a run is refused (409).
        deadline = time.monotonic() + 180
        while True:
            r = httpx.post(
                f"{url}/nx1/api/v1/data-apis/waited/runs", headers={"X-API-Key": key}, timeout=30
            )
            if r.status_code == 202:
                break
            assert r.status_code == 409, r.text
            assert time.monotonic() < deadline, "the DAG was never parsed"
            time.sleep(2)
        assert r.json()["state"] == "queued"  # no scheduler: it stays queued
        yield Server(url, key, r.json()["run_id"])


@pytest.mark.parametrize("mount", MOUNTS)
def test_a_hundred_waiters_hold_no_request_thread(server: Server, mount: str) -> None:
    url = f"{server.url}{mount}/data-apis/waited/runs/{quote(server.run_id, safe='')}"
    headers = {"X-API-Key": server.key, "Prefer": f"wait={WAIT_S}"}
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def wait() -> None:
        with httpx.Client(timeout=WAIT_S + 60) as client:
            r = client.get(url, headers=headers)
        with lock:
            answers.append(r)

    started = time.monotonic()
    with ThreadPoolExecutor(WAITERS) as pool:
        for _ in range(WAITERS):
            pool.submit(wait)
        time.sleep(3)  # every waiter has been sent and is waiting now
        health_times = []
        for _ in range(5):
            began = time.monotonic()
            health = httpx.get(f"{server.url}/api/v2/monitor/health", timeout=10)
            health_times.append(time.monotonic() - began)
            assert health.status_code == 200
            time.sleep(1)
    took = time.monotonic() - started
    assert max(health_times) < 1.0, health_times
    assert len(answers) == WAITERS
    assert {r.status_code for r in answers} == {200}, {r.text[:200] for r in answers}
    assert all(r.headers["preference-applied"] == f"wait={WAIT_S}" for r in answers)
    assert all(r.json()["state"] == "queued" for r in answers)
    assert WAIT_S <= took < WAIT_S + 30, took
