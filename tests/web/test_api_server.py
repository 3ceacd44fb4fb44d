"""A real `airflow api-server` serves the data REST API at both mounts.

One api-server per module (a fresh AIRFLOW_HOME, `airflow db migrate`, the FAB auth
manager, one worker), the snapshot store a SQLite file written by the real write path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.api_server import running_api_server
from tests.web.helpers import MOUNTS, SALES_ROWS, populate_sales_store

pytestmark = pytest.mark.slow


@dataclass
class Server:
    url: str
    key: str
    snapshot_id: str
    log: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A running `airflow api-server` with the plugin, stopped after the module."""
    home = tmp_path_factory.mktemp("airflow-home")
    store_url = f"sqlite:///{home / 'nx1_store.db'}"
    secret, snapshot_id = populate_sales_store(store_url)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
        ),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": store_url,
    }
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run(
        [*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300
    )
    with running_api_server(env, home) as (url, log):
        yield Server(url, secret, snapshot_id, log)


def test_both_mounts_answer_alike(server: Server) -> None:
    headers = {"Authorization": f"Bearer {server.key}"}
    answers = []
    for mount in MOUNTS:
        r = httpx.get(f"{server.url}{mount}/data-apis/sales/latest?limit=3", headers=headers)
        assert r.status_code == 200, (mount, r.text)
        assert r.headers["content-type"] == "application/json"
        # Paging is pinned to the snapshot's own URL (on the mount that was called), a
        # path-absolute URL (no [api] base_url is set).
        next_url = f"{mount}/data-apis/sales/snapshots/{server.snapshot_id}?limit=3&start=3"
        assert r.headers["link"] == f'<{next_url}>; rel="next"'
        assert r.json()["data"]["next_url"] == next_url
        assert r.headers["x-nx1-snapshot-id"] == server.snapshot_id
        assert r.headers["x-nx1-published-at"].endswith("Z")
        answers.append(r)
    # The same body but for the mount in next_url (as in the Link header).
    assert answers[0].content.replace(MOUNTS[0].encode(), MOUNTS[1].encode()) == answers[1].content
    assert answers[0].headers["etag"] == answers[1].headers["etag"]
    body = answers[0].json()
    assert body["snapshot"]["id"] == server.snapshot_id
    assert body["data"]["data"][0] == [1, 'Crème 1, "q"', "0.125", "2026-01-01"]
    assert body["data"]["next_start"] == 3


def test_both_mounts_stream_csv_and_meta(server: Server) -> None:
    headers = {"X-API-Key": server.key}
    bodies = []
    for mount in MOUNTS:
        r = httpx.get(f"{server.url}{mount}/data-apis/sales/latest?format=csv", headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "text/csv; charset=utf-8"
        lines = r.content.decode().splitlines()
        assert lines[0] == "id,name,amount,day" and len(lines) == SALES_ROWS + 1
        bodies.append(r.content)
        meta = httpx.get(f"{server.url}{mount}/data-apis/sales", headers=headers)
        assert meta.status_code == 200 and meta.json()["latest_snapshot"]["row_count"] == SALES_ROWS
        own = httpx.get(
            f"{server.url}{mount}/data-apis/sales/snapshots/{server.snapshot_id}?limit=1",
            headers={**headers, "If-None-Match": r.headers["etag"]},
        )
        assert own.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert bodies[0] == bodies[1]


def test_both_mounts_refuse_without_key(server: Server) -> None:
    for mount in MOUNTS:
        r = httpx.get(f"{server.url}{mount}/data-apis/sales/latest")
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"] == "Bearer"
        assert set(r.json()) == {"type", "title", "status", "detail"}
        wrong = httpx.get(f"{server.url}{mount}/data-apis/sales", headers={"X-API-Key": "nx1_x"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        query = httpx.get(f"{server.url}{mount}/data-apis/sales?api_key={server.key}")
        assert query.status_code == 400
        missing = httpx.get(f"{server.url}{mount}/no/such/route", headers={"X-API-Key": "k"})
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
    # The key sent in a query string above is not in the server's log.
    assert server.key not in server.log.read_text(errors="replace")


def test_openapi_is_served_at_the_prefixed_path(server: Server) -> None:
    r = httpx.get(f"{server.url}/nx1/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["servers"] == [{"url": "/nx1"}]
    assert "/api/v1/data-apis/{name}/latest" in doc["paths"]
    docs = httpx.get(f"{server.url}/nx1/api/v1/docs")
    assert docs.status_code == 200 and "/nx1/api/v1/openapi.json" in docs.text


def test_data_api_sets_no_cookie_after_the_admin_view_has_run(server: Server) -> None:
    """The admin view shares the login session with /pluginsv2 once it has served a page;
    the data API's cacheable answers must still carry no Set-Cookie on either mount."""
    admin = httpx.get(f"{server.url}/pluginsv2/nx1connect/", follow_redirects=False)
    assert admin.status_code in (302, 303), admin.status_code  # anonymous: sent to log in
    headers = {"Authorization": f"Bearer {server.key}"}
    for mount in MOUNTS:
        for path in ("/data-apis/sales/latest?limit=2", "/data-apis/sales"):
            r = httpx.get(f"{server.url}{mount}{path}", headers=headers)
            assert r.status_code == 200, (mount, path, r.text)
            assert "set-cookie" not in r.headers, (mount, path, r.headers.get("set-cookie"))
