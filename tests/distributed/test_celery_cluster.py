"""The production deployment of docs/production.md, run for real on this machine.

One cluster for the module, every process on free ports: PostgreSQL as Airflow's metadata
database, the Celery result backend and the snapshot store (a fresh database, dropped after),
Redis as the Celery broker (a database number of its own, flushed before and after), the
scheduler, the dag-processor, one `airflow celery worker` and `airflow api-server --workers 2`.
Both `airflow db migrate` and `nx1-connect db migrate` run first, as a deployer runs them.

1. The example DAG `retail_weekly_top_product`, triggered with the CLI, is run by the Celery
   worker and publishes its snapshot.
2. 8 concurrent clients read through the api-server; both of its worker processes answer
   (seen through /proc), and every response is whole and byte-identical.
3. A key revoked with `nx1-connect keys revoke` is refused by both worker processes at once.
4. The Celery worker is SIGKILLed in the middle of a large snapshot write: the previous
   snapshot is still served; a new worker runs the retried task, which publishes, and no
   half-written table or record is left.
"""

from __future__ import annotations

import csv
import datetime as dt
import http.client
import io
import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dags_examples.demo_data import create_retail_db, sqlite_conn_uri
from tests.api_server import free_port, running_api_server
from tests.distributed.cluster import (
    ROOT,
    Deployment,
    Processes,
    api_worker_pids,
    descendants,
    scheduler_healthy,
    serving_pid,
    settings,
    wait_for,
    worker_ready,
)

# About 3 minutes on an idle 2-core machine; the limit leaves room for a busy one.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

EXAMPLE_DAG = "retail_weekly_top_product"
EXAMPLE_API = "weekly_top_product"
LARGE_DAG = "nx1_dist_large"
LARGE_API = "dist_large"
FIRST_ROWS = 20_000  # the large DAG's first run (its `rows` param's default)
LARGE_ROWS = 3_000_000  # the run whose worker is killed mid-write, then retried
KILL_AFTER_ROWS = 200_000  # rows already sent by COPY when the worker is killed
MOUNTS = ("/nx1/api/v1", "/pluginsv2/nx1/api/v1")
# docs/production.md's commands, as this module runs them.
MIGRATE = (("airflow", "db", "migrate"), ("nx1-connect", "db", "migrate"))
SCHEDULER = ("airflow", "scheduler")
DAG_PROCESSOR = ("airflow", "dag-processor")
CELERY_WORKER = ("airflow", "celery", "worker")
API_WORKERS = 2  # airflow api-server --workers 2
CLIENTS = 8
ROUNDS = 4

# A test-only rule: `rows` generated rows from a SQLite source, retried once after 2 s.
LARGE_DAG_SOURCE = f'''
import datetime

import pendulum
from airflow.sdk import DAG

from airflow_nx1_connect.operators import AskRuleOperator

with DAG(
    "{LARGE_DAG}",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={{"rows": {FIRST_ROWS}}},
) as dag:
    AskRuleOperator(
        task_id="generated_rows",
        data_api="{LARGE_API}",
        conn_id="gen",
        sql="WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
        "WHERE x < {{{{ params.rows | int }}}}) SELECT x AS id, 'row ' || x AS label FROM c",
        retries=1,
        retry_delay=datetime.timedelta(seconds=2),
    )
'''


@dataclass
class Cluster:
    dep: Deployment
    procs: Processes
    api_pids: list[int]
    runs: dict[str, str] = field(default_factory=dict)  # dag_id -> run_id of its first run
    keys: dict[str, str] = field(default_factory=dict)  # description -> key


# ---------------------------------------------------------------------------------------
# Airflow runs
# ---------------------------------------------------------------------------------------


def _trigger(dep: Deployment, dag_id: str, run_id: str, conf: dict | None = None) -> tuple:
    logical = dt.datetime.now(dt.timezone.utc).isoformat()
    argv = ["airflow", "dags", "trigger", dag_id, "--run-id", run_id, "--logical-date", logical]
    if conf:
        argv += ["--conf", json.dumps(conf)]
    return tuple(argv)


def _run_state(dep: Deployment, dag_id: str, run_id: str) -> str | None:
    rows = dep.meta("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", (dag_id, run_id))
    return rows[0][0] if rows else None


def _wait_run(cluster: Cluster, dag_id: str, run_id: str, timeout: float = 150) -> None:
    def done() -> bool:
        cluster.procs.check_alive("scheduler", "dag-processor")
        state = _run_state(cluster.dep, dag_id, run_id)
        if state == "failed":
            raise AssertionError(
                f"{dag_id} run {run_id} failed: {_tis(cluster.dep, dag_id, run_id)}\n"
                + "\n".join(p.tail(2000) for p in cluster.procs.procs.values())
            )
        return state == "success"

    wait_for(f"{dag_id} run {run_id} to succeed", done, timeout)


def _tis(dep: Deployment, dag_id: str, run_id: str) -> list[tuple[Any, ...]]:
    return dep.meta(
        "SELECT task_id, state, try_number, pid, hostname FROM task_instance "
        "WHERE dag_id = %s AND run_id = %s",
        (dag_id, run_id),
    )


def _published(dep: Deployment, data_api: str) -> list[tuple[Any, ...]]:
    """(id, run_id, row_count, table_name) of published snapshots, newest first."""
    return dep.store(
        "SELECT id, run_id, row_count, table_name FROM nx1_snapshots "
        "WHERE data_api = %s AND status = 'published' ORDER BY published_at DESC",
        (data_api,),
    )


# ---------------------------------------------------------------------------------------
# Clients: one keep-alive connection each, with the api-server worker process it reached
# ---------------------------------------------------------------------------------------


class Client:
    def __init__(self, port: int, api_pids: list[int]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.connect()
        assert self.conn.sock is not None
        client_port = self.conn.sock.getsockname()[1]
        self.pid = wait_for(
            "the api-server worker of a new connection",
            lambda: serving_pid(port, client_port, api_pids),
            10,
            every=0.05,
        )

    def get(self, path: str, key: str | None = None) -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.conn.request("GET", path, headers=headers)
        response = self.conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body

    def close(self) -> None:
        self.conn.close()


def _clients(cluster: Cluster) -> list[Client]:
    """CLIENTS connections, at least one to each api-server worker process.

    The kernel hands each new connection to whichever worker accepts first: connections are
    opened until both workers hold at least one (a surplus one is closed at once).
    """
    clients: list[Client] = []
    try:
        for _ in range(200):
            client = Client(cluster.dep.api_port, cluster.api_pids)
            workers = {c.pid for c in clients}
            if len(clients) < CLIENTS - 1 or len(workers | {client.pid}) == 2:
                clients.append(client)
            else:
                client.close()
            if len(clients) == CLIENTS:
                return clients
        raise AssertionError(f"200 new connections all reached one api-server worker: {workers}")
    except BaseException:
        for c in clients:
            c.close()
        raise


def _warm_up_execution_api(cluster: Cluster) -> None:
    """One request to the execution API on each api-server worker process.

    Each worker builds its execution API on its first request (seconds; tens of seconds on a
    busy machine): done while the first DAG runs are being triggered, not when their tasks
    first call it.
    """
    clients = _clients(cluster)
    first = {c.pid: c for c in clients}
    answers: list[int] = []
    threads = [
        threading.Thread(target=lambda c=c: answers.append(c.get("/execution/health")[0]))
        for c in first.values()
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        for c in clients:
            c.close()
    assert answers == [200, 200], answers


# ---------------------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from tests.distributed.cluster import deployment

    tmp = tmp_path_factory.mktemp("nx1-dist")
    sources = tmp / "sources"
    sources.mkdir()
    create_retail_db(sources / "retail.db")
    connections = {
        "AIRFLOW_CONN_RETAIL": sqlite_conn_uri(sources / "retail.db"),
        "AIRFLOW_CONN_GEN": sqlite_conn_uri(sources / "gen.db"),
    }
    examples = ROOT / "dags_examples"
    dag_files: dict[str, Path | str] = {
        f"{EXAMPLE_DAG}.py": examples / f"{EXAMPLE_DAG}.py",
        "sql": examples / "sql",
        f"{LARGE_DAG}.py": LARGE_DAG_SOURCE,
    }
    with deployment(tmp, dag_files, connections, migrate=MIGRATE) as dep:
        procs = Processes(dep)
        try:
            # Every process starts at once; the api-server's start is waited for first.
            procs.start("scheduler", *SCHEDULER)
            procs.start("dag-processor", *DAG_PROCESSOR)
            worker = procs.start("worker-1", *CELERY_WORKER, "--celery-hostname", "worker-1@%h")
            with running_api_server(dep.env, dep.home, workers=API_WORKERS, port=dep.api_port):
                api_pids = wait_for(
                    f"the api-server's {API_WORKERS} worker processes",
                    lambda: p if len(p := api_worker_pids(dep.api_port)) == API_WORKERS else None,
                    60,
                )
                wait_for(
                    "the scheduler's health check",
                    lambda: procs.check_alive() or scheduler_healthy(dep),
                    120,
                )
                wait_for(
                    "the Celery worker", lambda: procs.check_alive() or worker_ready(worker), 120
                )
                wait_for(
                    "both DAGs parsed",
                    lambda: (
                        procs.check_alive()
                        or len(
                            dep.meta(
                                "SELECT dag_id FROM serialized_dag WHERE dag_id = ANY(%s)",
                                ([EXAMPLE_DAG, LARGE_DAG],),
                            )
                        )
                        == 2
                    ),
                    120,
                )
                yield Cluster(dep, procs, api_pids)
        finally:
            procs.stop_all()


@pytest.fixture(scope="module")
def published(cluster: Cluster) -> Cluster:
    """Both DAGs triggered once with the CLI (at once) and run; keys made with the CLI."""
    dep = cluster.dep
    runs = {EXAMPLE_DAG: "dist_example_1", LARGE_DAG: "dist_large_1"}
    with ThreadPoolExecutor(1) as pool:
        warm_up = pool.submit(_warm_up_execution_api, cluster)
        dep.run_all(*(_trigger(dep, dag_id, run_id) for dag_id, run_id in runs.items()))
        warm_up.result()
    for dag_id, run_id in runs.items():
        _wait_run(cluster, dag_id, run_id)
    cluster.runs = runs
    wanted = {"example": EXAMPLE_API, "large": LARGE_API, "revoke": EXAMPLE_API}
    made = dep.run_all(
        *(
            ("nx1-connect", "keys", "create", "--data-api", api, "--days", "1", "--description", d)
            for d, api in wanted.items()
        )
    )
    cluster.keys = {d: out.strip() for d, out in zip(wanted, made, strict=True)}
    return cluster


# ---------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------


def test_example_dag_is_run_by_the_celery_worker_and_published(published: Cluster) -> None:
    dep = published.dep
    run_id = published.runs[EXAMPLE_DAG]
    [(task_id, state, try_number, _pid, _host)] = _tis(dep, EXAMPLE_DAG, run_id)
    assert (task_id, state, try_number) == (EXAMPLE_API, "success", 1)
    # Celery ran it: its result is in the PostgreSQL result backend, its log names the task
    # (both written just after the task itself reported success).
    worker_log = published.procs.procs["worker-1"].log
    wait_for(
        "Celery to record both tasks' success",
        lambda: (
            [r[0] for r in dep.meta("SELECT status FROM celery_taskmeta")] == ["SUCCESS", "SUCCESS"]
        ),
        30,
    )
    wait_for(
        "the worker to log the task's success",
        lambda: (
            "execute_workload" in (text := worker_log.read_text(errors="replace"))
            and "succeeded" in text
        ),
        30,
    )
    # Its snapshot is published, and the data API serves it.
    [(snapshot_id, snap_run, rows, _table)] = _published(dep, EXAMPLE_API)
    assert snap_run == run_id and rows > 0
    client = Client(dep.api_port, published.api_pids)
    try:
        status, _, body = client.get(
            f"{MOUNTS[0]}/data-apis/{EXAMPLE_API}/latest", published.keys["example"]
        )
    finally:
        client.close()
    assert status == 200, body
    assert json.loads(body)["snapshot"]["id"] == snapshot_id
    assert json.loads(body)["snapshot"]["row_count"] == rows


def _check_whole(path: str, body: bytes, expected: dict[str, Any]) -> None:
    """A response body is complete: JSON that parses with all its rows, or the whole CSV."""
    if "format=csv" in path:
        lines = list(csv.reader(io.StringIO(body.decode())))
        assert len(lines) == expected["rows"] + 1, (path, len(lines))
        assert lines[-1] == [str(expected["rows"]), f"row {expected['rows']}"]
        return
    doc = json.loads(body)
    if path.endswith("/latest"):
        assert doc["snapshot"]["id"] == expected["id"]
        assert doc["data"]["row_count"] == len(doc["data"]["data"]) == expected["rows"]
    else:
        assert doc["latest_snapshot"]["id"] == expected["id"]


def test_concurrent_reads_are_whole_and_identical_on_both_api_server_workers(
    published: Cluster,
) -> None:
    dep = published.dep
    [(example_id, _, example_rows, _)] = _published(dep, EXAMPLE_API)
    [(large_id, _, large_rows, _)] = _published(dep, LARGE_API)
    assert large_rows == FIRST_ROWS
    reads: list[tuple[str, str, dict[str, Any]]] = []
    for mount in MOUNTS:
        example = {"id": example_id, "rows": example_rows}
        large = {"id": large_id, "rows": large_rows}
        reads += [
            (f"{mount}/data-apis/{EXAMPLE_API}/latest", "example", example),
            (f"{mount}/data-apis/{LARGE_API}", "large", large),
            (f"{mount}/data-apis/{LARGE_API}/latest?format=csv", "large", large),
        ]
    clients = _clients(published)
    bodies: dict[str, set[bytes]] = {path: set() for path, _, _ in reads}
    by_worker: dict[int, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(clients))

    def read(client: Client) -> None:
        try:
            start.wait()
            for _ in range(ROUNDS):
                for path, key, expected in reads:
                    status, _, body = client.get(path, published.keys[key])
                    assert status == 200, (path, status, body[:300])
                    _check_whole(path, body, expected)
                    with lock:
                        bodies[path].add(body)
                        by_worker[client.pid] = by_worker.get(client.pid, 0) + 1
        except BaseException as exc:  # reported by the main thread
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=read, args=(c,)) for c in clients]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
    finally:
        for c in clients:
            c.close()
    assert not errors, errors[:3]
    assert all(not t.is_alive() for t in threads)
    # Every response to one URL is the same bytes, whichever worker process answered.
    assert {path: len(b) for path, b in bodies.items()} == {path: 1 for path in bodies}
    assert set(by_worker) == set(published.api_pids)
    assert sum(by_worker.values()) == CLIENTS * ROUNDS * len(reads)


def test_a_revoked_key_is_refused_at_once_by_both_api_server_workers(published: Cluster) -> None:
    dep = published.dep
    key = published.keys["revoke"]
    path = f"{MOUNTS[0]}/data-apis/{EXAMPLE_API}/latest?limit=1"
    clients = _clients(published)
    try:
        for client in clients:
            assert client.get(path, key)[0] == 200
        listed = json.loads(dep.run("nx1-connect", "keys", "list", "--json"))
        [key_id] = [k["key_id"] for k in listed if k["description"] == "revoke"]
        dep.run("nx1-connect", "keys", "revoke", key_id)
        # The very next request on every connection, whichever worker holds it, is refused.
        refused = {}
        for client in clients:
            for mount in MOUNTS:
                status, headers, _ = client.get(
                    f"{mount}/data-apis/{EXAMPLE_API}/latest?limit=1", key
                )
                assert status == 401
                assert headers["www-authenticate"] == 'Bearer error="invalid_token"'
                refused[client.pid] = refused.get(client.pid, 0) + 1
        assert set(refused) == set(published.api_pids)
        # The other key of that data API still works on both.
        for client in clients:
            assert client.get(path, published.keys["example"])[0] == 200
    finally:
        for client in clients:
            client.close()


def _copy_progress(dep: Deployment, table: str) -> int:
    """Rows a running COPY into `table` has sent so far (0 when none runs)."""
    rows = dep.meta(
        "SELECT p.tuples_processed FROM pg_stat_progress_copy p "
        "JOIN pg_stat_activity a ON a.pid = p.pid WHERE a.query LIKE %s",
        (f"%{table}%",),
    )
    return int(rows[0][0]) if rows else 0


def _served_latest(cluster: Cluster) -> dict[str, Any]:
    client = Client(cluster.dep.api_port, cluster.api_pids)
    try:
        status, _, body = client.get(
            f"{MOUNTS[0]}/data-apis/{LARGE_API}/latest?limit=1", cluster.keys["large"]
        )
    finally:
        client.close()
    assert status == 200, body
    return json.loads(body)


def test_worker_killed_mid_write_keeps_serving_and_the_retry_publishes(
    published: Cluster,
) -> None:
    dep, procs = published.dep, published.procs
    [(first_id, _, _, _)] = _published(dep, LARGE_API)
    run_id = "dist_large_killed"
    dep.run(*_trigger(dep, LARGE_DAG, run_id, {"rows": LARGE_ROWS}))

    # The worker is writing the new snapshot: its record says `writing`, COPY is under way.
    def writing() -> tuple[str, str] | None:
        procs.check_alive()
        rows = dep.store(
            "SELECT id, table_name FROM nx1_snapshots WHERE data_api = %s AND status = 'writing'",
            (LARGE_API,),
        )
        return rows[0] if rows else None

    doomed_id, doomed_table = wait_for("the large run to start writing", writing, 120, 0.1)
    assert _served_latest(published)["snapshot"]["id"] == first_id
    wait_for(
        f"{KILL_AFTER_ROWS} rows sent by COPY",
        lambda: _copy_progress(dep, doomed_table) >= KILL_AFTER_ROWS,
        60,
        0.05,
    )
    # SIGKILL the worker and every process under it (the task), as when its machine dies.
    worker_tree = descendants(procs.procs["worker-1"].popen.pid)
    procs.kill("worker-1", signal.SIGKILL)
    for pid in worker_tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    [(_, ti_state, try_number, ti_pid, _)] = _tis(dep, LARGE_DAG, run_id)
    assert (ti_state, try_number) == ("running", 1)
    assert ti_pid in worker_tree, "the task did not run under the Celery worker"
    wait_for("the killed task process to be gone", lambda: not Path(f"/proc/{ti_pid}").exists(), 10)
    # The write died half-way (its COPY ends with its connection); the previous snapshot
    # is still the one served.
    wait_for("the killed COPY to end", lambda: _copy_progress(dep, doomed_table) == 0, 30)
    assert dep.store("SELECT status FROM nx1_snapshots WHERE id = %s", (doomed_id,)) == [
        ("writing",)
    ]
    latest = _served_latest(published)
    assert latest["snapshot"]["id"] == first_id
    assert latest["snapshot"]["row_count"] == FIRST_ROWS

    # A new worker; the scheduler notices the dead task (no heartbeat) and retries it there.
    worker2 = procs.start(
        "worker-2",
        *CELERY_WORKER,
        "--celery-hostname",
        "worker-2@%h",
        env={"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())},
    )
    _wait_run(published, LARGE_DAG, run_id, timeout=240)
    [(_, ti_state, try_number, _, _)] = _tis(dep, LARGE_DAG, run_id)
    assert (ti_state, try_number) == ("success", 2)
    # Celery logs the task's end just after the task itself has reported success.
    wait_for(
        "the new worker to log the task's success",
        lambda: (
            "execute_workload" in (text := worker2.log.read_text(errors="replace"))
            and "succeeded" in text
        ),
        30,
    )

    # The retry published the whole snapshot; the killed one left nothing behind.
    published_now = _published(dep, LARGE_API)
    assert [p[0] for p in published_now][1:] == [first_id]
    new_id, new_run, new_rows, _ = published_now[0]
    assert (new_run, new_rows) == (run_id, LARGE_ROWS)
    assert (
        dep.store(
            "SELECT id, status FROM nx1_snapshots WHERE status <> 'published' OR id = %s",
            (doomed_id,),
        )
        == []
    )
    tables = {
        r[0]
        for r in dep.store(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename LIKE 'nx1\\_snap\\_%%'"
        )
    }
    catalogued = {r[0] for r in dep.store("SELECT table_name FROM nx1_snapshots")}
    assert tables == catalogued and doomed_table not in tables
    latest = _served_latest(published)
    assert latest["snapshot"]["id"] == new_id
    assert latest["snapshot"]["row_count"] == LARGE_ROWS
    client = Client(dep.api_port, published.api_pids)
    try:
        status, _, body = client.get(
            f"{MOUNTS[0]}/data-apis/{LARGE_API}/latest?start={LARGE_ROWS - 1}&limit=5",
            published.keys["large"],
        )
    finally:
        client.close()
    assert status == 200
    assert json.loads(body)["data"]["data"] == [[LARGE_ROWS, f"row {LARGE_ROWS}"]]


def test_the_production_page_is_this_deployment() -> None:
    """docs/production.md's deployment settings and commands are the ones this module uses."""
    text = (ROOT / "docs" / "production.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration", 1)[0]
    exported = set(re.findall(r"^export (AIRFLOW\w*)=", section, re.MULTILINE))
    assert len(exported) >= 10, exported
    used = set(settings(Path("/h"), Path("/d"), "db", 8080, {"AIRFLOW_CONN_RETAIL": "x"}))
    assert exported <= used, exported - used
    commands = [*MIGRATE, SCHEDULER, DAG_PROCESSOR, CELERY_WORKER]
    commands.append(("airflow", "api-server", "--workers", str(API_WORKERS)))
    for argv in commands:
        assert re.search(rf"^{re.escape(' '.join(argv))}\b", section, re.MULTILINE), argv
