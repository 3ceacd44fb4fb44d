"""The admin REST API through a real `airflow api-server`, under the FAB auth manager and
under Airflow's Simple auth manager: tokens from the server's own `POST /auth/token`.

One api-server per auth manager (fresh AIRFLOW_HOME, `airflow db migrate`), the snapshot
store a SQLite file (both stores are covered in process by test_admin_api.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_server import running_api_server
from tests.rule_dags import serialize, write_rule_dags

pytestmark = pytest.mark.slow

FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
SIMPLE = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
ADMIN = "/nx1/api/v1/admin"
PASSWORD = "s3cret-pass"


def _env(home: Path, auth_manager: str) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": auth_manager,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": "a-test-secret-long-enough-for-hmac-sha512-" * 2,
        "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'nx1_store.db'}",
    }


def _run(env: dict[str, str], *args: str) -> None:
    subprocess.run(args, env=env, check=True, capture_output=True, timeout=300)


def _token(url: str, user: str, password: str) -> str:
    r = httpx.post(f"{url}/auth/token", json={"username": user, "password": password}, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["access_token"]


@pytest.fixture(scope="module")
def fab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A real api-server with the FAB auth manager; tokens of an Admin, nx1_ask and Viewer."""
    home = tmp_path_factory.mktemp("fab-home")
    write_rule_dags(home / "dags")
    env = _env(home, FAB)
    airflow = [sys.executable, "-m", "airflow"]
    _run(env, *airflow, "db", "migrate")
    serialize(env)  # data APIs are bound only to rule tasks Airflow can load
    _run(env, sys.executable, "-m", "airflow_nx1_connect.cli", "db", "migrate")
    for user, role in (("boss", "Admin"), ("asker", "nx1_ask"), ("watcher", "Viewer")):
        _run(
            env, *airflow, "users", "create", "-u", user, "-p", PASSWORD, "-r", role,
            "-f", "F", "-l", "L", "-e", f"{user}@example.com",
        )  # fmt: skip
    with running_api_server(env, home) as (url, _log):
        tokens = {u: _token(url, u, PASSWORD) for u in ("boss", "asker", "watcher")}
        yield url, tokens


@pytest.fixture(scope="module")
def simple_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, str]]]:
    """A real api-server with the Simple auth manager and an admin user."""
    home = tmp_path_factory.mktemp("simple-home")
    write_rule_dags(home / "dags")
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"boss": PASSWORD}))
    env = {
        **_env(home, SIMPLE),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "boss:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }
    _run(env, sys.executable, "-m", "airflow", "db", "migrate")
    serialize(env)
    _run(env, sys.executable, "-m", "airflow_nx1_connect.cli", "db", "migrate")
    with running_api_server(env, home) as (url, _log):
        yield url, {"boss": _token(url, "boss", PASSWORD)}


def _flow(url: str, token: str, name: str) -> dict[str, Any]:
    """Create a data API with its first key, read (404 until the first run), rotate, audit."""
    h = {"Authorization": f"Bearer {token}"}
    body = {"name": name, "kind": "ask", "dag_id": "retail", "task_id": name, "key_days": 7}
    # The first binding in a server imports what reads Airflow's serialized DAGs: seconds.
    r = httpx.post(f"{url}{ADMIN}/data-apis", json=body, headers=h, timeout=120)
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    for base in ("/nx1/api/v1", "/pluginsv2/nx1/api/v1"):
        read = httpx.get(f"{url}{base}/data-apis/{name}/latest", headers={"X-API-Key": key["key"]})
        assert read.status_code == 404 and "no published snapshot yet" in read.json()["detail"]
    rot = httpx.post(f"{url}{ADMIN}/keys/{key['key_id']}/rotate", headers=h)
    assert rot.status_code == 201 and rot.json()["rotated_from"] == key["key_id"]
    # A data API key, or no token, is not an admin credential.
    for headers in ({"Authorization": f"Bearer {key['key']}"}, {}):
        refused = httpx.get(f"{url}{ADMIN}/keys", headers=headers)
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
    events = httpx.get(f"{url}{ADMIN}/audit", params={"data_api": name}, headers=h).json()
    assert [e["action"] for e in events] == ["rotate_key", "create_data_api"]
    assert events[0]["remote_addr"] == "127.0.0.1"
    return events[0]


def test_fab_admin_and_roles_through_a_real_server(
    fab_server: tuple[str, dict[str, str]],
) -> None:
    url, tokens = fab_server
    assert _flow(url, tokens["boss"], "weekly")["actor"] == "boss"
    asker = {"Authorization": f"Bearer {tokens['asker']}"}
    eng = {"name": "metrics", "kind": "engineer", "dag_id": "bank", "task_id": "m"}
    assert httpx.post(f"{url}{ADMIN}/data-apis", json=eng, headers=asker).status_code == 403
    listed = httpx.get(f"{url}{ADMIN}/data-apis", headers=asker)
    assert [a["name"] for a in listed.json()] == ["weekly"]
    viewer = {"Authorization": f"Bearer {tokens['watcher']}"}
    for method, path in (("GET", "/data-apis"), ("GET", "/keys"), ("GET", "/audit")):
        assert httpx.request(method, f"{url}{ADMIN}{path}", headers=viewer).status_code == 403
    doc = httpx.get(f"{url}/nx1/api/v1/openapi.json").json()
    assert "airflowToken" in doc["components"]["securitySchemes"]


def test_simple_auth_manager_through_a_real_server(
    simple_server: tuple[str, dict[str, str]],
) -> None:
    url, tokens = simple_server
    assert _flow(url, tokens["boss"], "daily")["actor"] == "boss"
