"""Runs on demand, in process, on both adapters and both stores, with Airflow's real
metadata DB (the session's): every answer that needs no scheduler.

POST {base}/data-apis/{name}/runs: 401 without a key, 403 for another data API's key or a
key without the `run` scope, 400 for a bad `Prefer: wait`, 409 when the rule's DAG is not
in Airflow; 405 with the route's `Allow` for other methods. GET .../runs/{run_id}: a run
that published a snapshot (state and snapshot), 404 for an unknown one. The scheduler path
(trigger, wait, read, paused, concurrent requests) is in `test_runs_server.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.conftest import BASE, Adapter, ApiStore
from tests.web.helpers import assert_problem, both


@pytest.fixture
def run_key(api_store: ApiStore) -> Iterator[dict[str, str]]:
    """A key of `sales` with the run scope (deleted afterwards)."""
    from airflow_nx1_connect.core import keys

    created = keys.create_key(api_store.engine, data_api="sales", days=1, scopes=["run"])
    yield {"X-API-Key": created.secret}
    keys.delete_key(api_store.engine, created.key.id)


def read_key(api_store: ApiStore, role: str = "sales") -> dict[str, str]:
    return {"X-API-Key": api_store.keys[role]}


RUNS = f"{BASE}/data-apis/sales/runs"


def test_post_needs_a_key(adapters: list[Adapter], api_store: ApiStore, airflow_db: Path) -> None:
    answer = both(adapters, RUNS, method="POST")
    assert_problem(answer, 401)
    assert answer.headers["www-authenticate"] == "Bearer"


def test_post_with_a_read_only_key_is_403(
    adapters: list[Adapter], api_store: ApiStore, airflow_db: Path
) -> None:
    answer = both(adapters, RUNS, read_key(api_store), method="POST")
    body = assert_problem(answer, 403)
    assert body["type"].endswith("missing-scope")
    assert "--scope run" in body["detail"]


def test_post_with_another_data_apis_key_is_403(
    adapters: list[Adapter], api_store: ApiStore, run_key: dict[str, str], airflow_db: Path
) -> None:
    answer = both(adapters, f"{BASE}/data-apis/other/runs", run_key, method="POST")
    body = assert_problem(answer, 403)
    assert body["type"].endswith("forbidden")


@pytest.mark.parametrize("prefer", ["wait=0", "wait=61", "wait=abc", "wait=-1", "wait"])
def test_bad_prefer_wait_is_400(
    adapters: list[Adapter],
    api_store: ApiStore,
    run_key: dict[str, str],
    airflow_db: Path,
    prefer: str,
) -> None:
    answer = both(adapters, RUNS, {**run_key, "Prefer": prefer}, method="POST")
    body = assert_problem(answer, 400)
    assert "1 to 60" in body["detail"]


def test_dag_missing_in_airflow_is_409(
    adapters: list[Adapter], api_store: ApiStore, run_key: dict[str, str], airflow_db: Path
) -> None:
    # `sales` belongs to DAG "d", which Airflow's metadata DB does not have.
    answer = both(adapters, RUNS, {**run_key, "Prefer": "respond-async, wait=5"}, method="POST")
    body = assert_problem(answer, 409)
    assert "'d'" in body["detail"] and "not in Airflow" in body["detail"]
    assert answer.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "PATCH", "DELETE"])
def test_runs_takes_post_only(
    adapters: list[Adapter], api_store: ApiStore, run_key: dict[str, str], method: str
) -> None:
    answer = both(adapters, RUNS, run_key, method=method)
    assert answer.status == 405
    assert answer.headers["allow"] == "POST"
    if method != "HEAD":
        assert_problem(answer, 405)


@pytest.mark.parametrize(
    "path", ["data-apis/sales/runs/x", "data-apis/sales/latest", "data-apis/sales"]
)
def test_post_on_read_routes_is_405(
    adapters: list[Adapter], api_store: ApiStore, run_key: dict[str, str], path: str
) -> None:
    answer = both(adapters, f"{BASE}/{path}", run_key, method="POST")
    assert_problem(answer, 405)
    assert answer.headers["allow"] == "GET, HEAD"


def test_status_of_a_run_that_published(
    adapters: list[Adapter], api_store: ApiStore, airflow_db: Path
) -> None:
    # The latest snapshot was written by run "run_new" (Airflow no longer has that run).
    answer = both(adapters, f"{BASE}/data-apis/sales/runs/run_new", read_key(api_store))
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.json() == {
        "run_id": "run_new",
        "state": "success",
        "snapshot": api_store.latest.summary(),
    }
    waited = both(
        adapters,
        f"{BASE}/data-apis/sales/runs/run_new",
        {**read_key(api_store), "Prefer": "wait=3"},
    )
    assert waited.status == 200 and waited.headers["preference-applied"] == "wait=3"


@pytest.mark.parametrize("run_id", ["manual__2026-01-01T00:00:00+00:00", "nope", "run_old%2Fx"])
def test_unknown_run_is_404(
    adapters: list[Adapter], api_store: ApiStore, airflow_db: Path, run_id: str
) -> None:
    answer = both(adapters, f"{BASE}/data-apis/sales/runs/{run_id}", read_key(api_store))
    assert_problem(answer, 404)


def test_status_of_another_data_apis_run_is_403(
    adapters: list[Adapter], api_store: ApiStore, airflow_db: Path
) -> None:
    answer = both(adapters, f"{BASE}/data-apis/sales/runs/run_new", read_key(api_store, "other"))
    assert_problem(answer, 403)
