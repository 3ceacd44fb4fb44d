"""The admin REST API (`/nx1/api/v1/admin`) on Airflow's real api-server app, in process.

The app is Airflow's own FastAPI app (`create_app(apps="core")`) with the FAB auth manager:
it mounts the plugin's FastAPI app at `/nx1` and the auth manager's `/auth` app, so tokens
come from the real `POST /auth/token` for real users of each role, and are checked by the
api-server's own code. The snapshot store is real (SQLite and PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis

from airflow_nx1_connect.core import checks, writer
from airflow_nx1_connect.core import keys as core_keys
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.errors import ChecksFailed, RuleError

FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
PASSWORD = "s3cret-pass"
USERS = {"admin": "Admin", "asker": "nx1_ask", "engineer": "nx1_engineer", "viewer": "Viewer"}
ADMIN = "/nx1/api/v1/admin"
DATA = "/nx1/api/v1"
PROBLEM = "application/problem+json"
#: Every admin operation (method, path) with a body that would be valid.
OPERATIONS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/data-apis", None),
    ("GET", "/data-apis/sales", None),
    (
        "POST",
        "/data-apis",
        {"name": "new_api", "kind": "ask", "dag_id": "nx1t_misc", "task_id": "t"},
    ),
    ("DELETE", "/data-apis/sales", None),
    ("GET", "/keys", None),
    ("GET", "/keys/0123456789abcdef", None),
    ("POST", "/keys", {"data_api": "sales", "days": 3}),
    ("POST", "/keys/0123456789abcdef/extend", {"days": 3}),
    ("POST", "/keys/0123456789abcdef/revoke", None),
    ("POST", "/keys/0123456789abcdef/rotate", {"overlap_hours": 1}),
    ("DELETE", "/keys/0123456789abcdef", None),
    ("GET", "/audit", None),
]


@pytest.fixture(scope="module")
def api_app(rule_dags: Any) -> Iterator[Any]:
    """Airflow's api-server app with the FAB auth manager and one user per role; the rule
    DAGs of `tests.rule_dags` serialized (data APIs are bound only to real rule tasks)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__CORE__AUTH_MANAGER", FAB_AUTH_MANAGER)
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            check=True,
            capture_output=True,
            env=dict(os.environ),
        )
        from airflow.api_fastapi.app import create_app, purge_cached_app
        from starlette.routing import Mount

        purge_cached_app()
        app = create_app(apps="core")
        flask_app = next(
            r.app.app for r in app.routes if isinstance(r, Mount) and r.path == "/pluginsv2"
        )
        with flask_app.app_context():
            sm = flask_app.appbuilder.sm
            from airflow_nx1_connect.web.roles import sync_roles

            sync_roles(sm)
            for name, role in USERS.items():
                if sm.find_user(username=name) is None:
                    sm.add_user(
                        name, name, "Test", f"{name}@example.com", sm.find_role(role), PASSWORD
                    )
        # Read the DAG folder once now, as a running server has by the time it is fuzzed: the
        # first unknown `dag_id` costs a child parse (Airflow's import, seconds under load),
        # which would otherwise land on one generated request and its 10 s read timeout.
        from airflow_nx1_connect.rule_tasks import find_rule_task

        assert find_rule_task("nx1t-no-such-dag", "t") is None
        try:
            yield app
        finally:
            purge_cached_app()


def _client(app: Any) -> Any:
    from starlette.testclient import TestClient

    return TestClient(app, base_url="http://testserver", follow_redirects=False)


@pytest.fixture(scope="module")
def tokens(api_app: Any) -> dict[str, str]:
    """An Airflow API token per user, from the real `POST /auth/token`."""
    client = _client(api_app)
    out = {}
    for name in USERS:
        r = client.post("/auth/token", json={"username": name, "password": PASSWORD})
        assert r.status_code == 201, r.text
        out[name] = r.json()["access_token"]
    return out


@pytest.fixture
def client(api_app: Any) -> Any:
    return _client(api_app)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _populate(engine: Any) -> dict[str, Any]:
    """An ask data API `sales` with a snapshot and a key, an engineer one `metrics`."""
    snaps.register_data_api(engine, name="sales", kind="ask", dag_id="d", task_id="sales")
    snaps.register_data_api(engine, name="metrics", kind="engineer", dag_id="d", task_id="m")
    writer.write_snapshot(
        engine, data_api="sales", columns=[snaps.Column("id", "INTEGER")], batches=[[(1,), (2,)]]
    )
    created = core_keys.create_key(engine, data_api="sales", days=7, description="app")
    return {"engine": engine, "key": created.secret, "key_id": created.key.id}


@pytest.fixture
def store(engine: Any) -> dict[str, Any]:
    """`_populate` on the test's store (SQLite and PostgreSQL)."""
    return _populate(engine)


def _problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert set(body) == {"type", "title", "status", "detail"} and body["status"] == status
    return body


# ---------------------------------------------------------------------------------------
# Authentication: Airflow's token, from the header only
# ---------------------------------------------------------------------------------------


def test_every_path_needs_an_airflow_token(
    client: Any, store: dict[str, Any], tokens: dict[str, str]
) -> None:
    """No token, a data API key (either header), a bad token: 401; the cookie is ignored."""
    for method, path, body in OPERATIONS:
        url = ADMIN + path
        r = client.request(method, url, json=body)
        assert _problem(r, 401)["title"] == "Airflow API token required"
        assert r.headers["www-authenticate"] == "Bearer"
        for headers in (
            auth(store["key"]),
            {"X-API-Key": store["key"]},
            auth("not-a-jwt"),
            auth(tokens["admin"][:-4] + "AAAA"),
        ):
            _problem(client.request(method, url, json=body, headers=headers), 401)
        # Airflow's login cookie (what a browser holds) is never enough: header only.
        client.cookies.set("_token", tokens["admin"])
        try:
            _problem(client.request(method, url, json=body), 401)
        finally:
            client.cookies.clear()
    assert core_keys.list_keys(store["engine"], data_api="sales")[0].status() == "active"
    assert [a.name for a in snaps.list_data_apis(store["engine"])] == ["metrics", "sales"]


def test_a_viewer_is_refused_on_every_path(
    client: Any, store: dict[str, Any], tokens: dict[str, str]
) -> None:
    for method, path, body in OPERATIONS:
        body_ = _problem(
            client.request(method, ADMIN + path, json=body, headers=auth(tokens["viewer"])), 403
        )
        assert "nx1_ask" in body_["detail"]


# ---------------------------------------------------------------------------------------
# Data APIs
# ---------------------------------------------------------------------------------------


def test_a_data_api_shows_its_last_failed_run(
    client: Any, store: dict[str, Any], tokens: dict[str, str]
) -> None:
    """`last_failure` is null while the last run published; after failed publish checks it
    is {"run_id", "at", "detail"} (and latest is unchanged); the next publish clears it."""
    admin = auth(tokens["admin"])
    one = client.get(f"{ADMIN}/data-apis/sales", headers=admin).json()
    assert one["last_failure"] is None
    latest = one["latest_snapshot"]["id"]
    with pytest.raises(ChecksFailed):
        writer.write_snapshot(
            store["engine"],
            data_api="sales",
            columns=[snaps.Column("id", "INTEGER")],
            batches=[[(1,), (1,)]],
            run_id="manual__1",
            checks=checks.parse({"unique": ["id"], "max_rows": 1}),
        )
    one = client.get(f"{ADMIN}/data-apis/sales", headers=admin).json()
    failure = one["last_failure"]
    assert set(failure) == {"run_id", "at", "detail"} and failure["run_id"] == "manual__1"
    assert "max_rows: 2 rows, at most 1 allowed" in failure["detail"]
    assert "unique: 1 duplicate rows" in failure["detail"]
    assert dt.datetime.fromisoformat(failure["at"]) <= dt.datetime.now(dt.timezone.utc)
    assert one["latest_snapshot"]["id"] == latest
    listed = client.get(f"{ADMIN}/data-apis", headers=admin).json()
    assert [a["last_failure"] for a in listed if a["name"] == "sales"] == [failure]
    writer.write_snapshot(
        store["engine"], data_api="sales", columns=[snaps.Column("id", "INTEGER")], batches=[[(3,)]]
    )
    assert client.get(f"{ADMIN}/data-apis/sales", headers=admin).json()["last_failure"] is None


def test_create_a_data_api_ahead_of_its_first_run(
    client: Any, store: dict[str, Any], tokens: dict[str, str]
) -> None:
    engine = store["engine"]
    body = {
        "name": "weekly",
        "kind": "ask",
        "dag_id": "retail",
        "task_id": "weekly",
        "description": "Weekly top",
        "key_days": 10,
    }
    r = client.post(f"{ADMIN}/data-apis", json=body, headers=auth(tokens["admin"]))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["name"] == "weekly" and created["kind"] == "ask"
    assert (created["dag_id"], created["task_id"]) == ("retail", "weekly")
    assert created["latest_snapshot"] is None
    key = created["key"]
    assert core_keys.looks_like_key(key["key"]) and key["data_api"] == "weekly"
    assert key["status"] == "active" and key["usage"] == {"today": 0, "last_7_days": 0, "total": 0}
    expires = dt.datetime.fromisoformat(key["expires"])
    assert (
        dt.timedelta(days=9, hours=23)
        < expires - dt.datetime.now(dt.timezone.utc)
        <= dt.timedelta(10)
    )

    # Until the first run: 404 "no snapshot published yet" with the new key.
    read = client.get(f"{DATA}/data-apis/weekly/latest", headers=auth(key["key"]))
    assert "no published snapshot yet" in _problem(read, 404)["detail"]
    # Same name again: 409; the rule's own task publishes into it, another task is refused.
    _problem(client.post(f"{ADMIN}/data-apis", json=body, headers=auth(tokens["admin"])), 409)
    with pytest.raises(RuleError):
        snaps.register_data_api(engine, name="weekly", kind="ask", dag_id="retail", task_id="x")
    snaps.register_data_api(engine, name="weekly", kind="ask", dag_id="retail", task_id="weekly")
    writer.write_snapshot(
        engine, data_api="weekly", columns=[snaps.Column("n", "INTEGER")], batches=[[(7,)]]
    )
    read = client.get(f"{DATA}/data-apis/weekly/latest", headers=auth(key["key"]))
    assert read.status_code == 200 and read.json()["data"]["data"] == [[7]]

    one = client.get(f"{ADMIN}/data-apis/weekly", headers=auth(tokens["admin"])).json()
    assert one["latest_snapshot"]["row_count"] == 1
    names = [
        a["name"] for a in client.get(f"{ADMIN}/data-apis", headers=auth(tokens["admin"])).json()
    ]
    assert names == ["metrics", "sales", "weekly"]

    r = client.delete(f"{ADMIN}/data-apis/weekly", headers=auth(tokens["admin"]))
    assert r.status_code == 204 and r.content == b""
    _problem(client.get(f"{DATA}/data-apis/weekly/latest", headers=auth(key["key"])), 401)
    _problem(client.get(f"{ADMIN}/data-apis/weekly", headers=auth(tokens["admin"])), 404)

    events = client.get(
        f"{ADMIN}/audit", params={"data_api": "weekly"}, headers=auth(tokens["admin"])
    ).json()
    assert [e["action"] for e in events] == ["delete_data_api", "create_data_api"]
    assert {e["actor"] for e in events} == {"admin"}
    assert events[1]["key_id"] == key["key_id"] and events[0]["remote_addr"] == "testclient"
    assert key["key"] not in r.text + str(events)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Bad Name", "kind": "ask", "dag_id": "d", "task_id": "t"},
        {"name": "ok", "kind": "other", "dag_id": "d", "task_id": "t"},
        {"name": "ok", "kind": "ask", "dag_id": "", "task_id": "t"},
        {"name": "ok", "kind": "ask", "dag_id": "d", "task_id": "t", "key_days": 0},
        {"name": "ok", "kind": "ask", "dag_id": "d", "task_id": "t", "key_days": 100000},
        {"name": "ok", "kind": "ask", "dag_id": "d", "task_id": "t", "extra": 1},
        {"name": "ok", "kind": "ask"},
    ],
)
def test_bad_data_api_bodies_are_400(
    client: Any, store: dict[str, Any], tokens: dict[str, str], body: dict[str, Any]
) -> None:
    _problem(client.post(f"{ADMIN}/data-apis", json=body, headers=auth(tokens["admin"])), 400)
    assert [a.name for a in snaps.list_data_apis(store["engine"])] == ["metrics", "sales"]


def test_roles_manage_their_own_kind(
    client: Any, store: dict[str, Any], tokens: dict[str, str]
) -> None:
    asker, engineer = auth(tokens["asker"]), auth(tokens["engineer"])
    assert [a["name"] for a in client.get(f"{ADMIN}/data-apis", headers=asker).json()] == ["sales"]
    assert [a["name"] for a in client.get(f"{ADMIN}/data-apis", headers=engineer).json()] == [
        "metrics"
    ]
    _problem(client.get(f"{ADMIN}/data-apis/metrics", headers=asker), 403)
    _problem(client.delete(f"{ADMIN}/data-apis/sales", headers=engineer), 403)
    _problem(
        client.post(f"{ADMIN}/keys", json={"data_api": "metrics", "days": 1}, headers=asker), 403
    )
    _problem(client.post(f"{ADMIN}/keys/{store['key_id']}/revoke", headers=engineer), 403)
    _problem(client.get(f"{ADMIN}/keys/{store['key_id']}", headers=engineer), 403)
    assert client.get(f"{ADMIN}/keys", headers=engineer).json() == []
    new = {"name": "eng_new", "kind": "engineer", "dag_id": "nx1t_misc", "task_id": "e"}
    _problem(client.post(f"{ADMIN}/data-apis", json=new, headers=asker), 403)
    assert client.post(f"{ADMIN}/data-apis", json=new, headers=engineer).status_code == 201
    r = client.post(f"{ADMIN}/keys", json={"data_api": "sales", "days": 2}, headers=asker)
    assert r.status_code == 201
    # Each sees only the audit events of their kind's data APIs.
    assert {e["data_api"] for e in client.get(f"{ADMIN}/audit", headers=asker).json()} == {"sales"}
    assert {e["data_api"] for e in client.get(f"{ADMIN}/audit", headers=engineer).json()} == {
        "eng_new"
    }
    assert len(client.get(f"{ADMIN}/audit", headers=auth(tokens["admin"])).json()) == 2


# ---------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------


def test_key_lifecycle(client: Any, store: dict[str, Any], tokens: dict[str, str]) -> None:
    # Admin: a key with the run scope needs Airflow's right to trigger the rule's DAG.
    admin = auth(tokens["admin"])
    r = client.post(
        f"{ADMIN}/keys",
        json={
            "data_api": "sales",
            "days": 5,
            "description": "dashboard",
            "scopes": ["run"],
            "rate_limit": 60,
        },
        headers=admin,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    secret, key_id = created.pop("key"), created["key_id"]
    assert created["scopes"] == ["read", "run"] and created["rate_limit"] == 60
    assert created["description"] == "dashboard" and created["rotated_from"] is None
    rows = client.get(f"{DATA}/data-apis/sales/latest", headers=auth(secret))
    assert rows.status_code == 200

    listed = client.get(f"{ADMIN}/keys", params={"data_api": "sales"}, headers=admin).json()
    # Newest first; keys made in the same second are ordered by id.
    assert {k["key_id"] for k in listed} == {key_id, store["key_id"]}
    assert all("key" not in k for k in listed)
    one = client.get(f"{ADMIN}/keys/{key_id}", headers=admin).json()
    assert one["usage"] == {"today": 1, "last_7_days": 1, "total": 1}  # the read above
    assert one["last_used"] is not None

    ext = client.post(f"{ADMIN}/keys/{key_id}/extend", json={"days": 3}, headers=admin)
    assert ext.status_code == 200
    assert dt.datetime.fromisoformat(ext.json()["expires"]) > dt.datetime.fromisoformat(
        created["expires"]
    )
    _problem(client.post(f"{ADMIN}/keys/{key_id}/extend", json={"days": 0}, headers=admin), 400)
    _problem(client.post(f"{ADMIN}/keys/{key_id}/extend", json={}, headers=admin), 400)

    rot = client.post(f"{ADMIN}/keys/{key_id}/rotate", json={"overlap_hours": 2}, headers=admin)
    assert rot.status_code == 201, rot.text
    new = rot.json()
    assert new["rotated_from"] == key_id and new["key_id"] != key_id
    assert (new["description"], new["scopes"], new["rate_limit"]) == (
        "dashboard",
        ["read", "run"],
        60,
    )
    old = client.get(f"{ADMIN}/keys/{key_id}", headers=admin).json()
    left = dt.datetime.fromisoformat(old["expires"]) - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(hours=1, minutes=58) < left <= dt.timedelta(hours=2)
    # Both work during the overlap.
    for k in (secret, new["key"]):
        assert client.get(f"{DATA}/data-apis/sales", headers=auth(k)).status_code == 200
    # Rotation without a body: default overlap of 24 hours.
    rot2 = client.post(f"{ADMIN}/keys/{new['key_id']}/rotate", headers=admin)
    assert rot2.status_code == 201
    newer = client.get(f"{ADMIN}/keys/{new['key_id']}", headers=admin).json()
    left = dt.datetime.fromisoformat(newer["expires"]) - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(hours=23, minutes=58) < left <= dt.timedelta(hours=24)

    rev = client.post(f"{ADMIN}/keys/{key_id}/revoke", headers=admin)
    assert rev.status_code == 200 and rev.json()["status"] == "revoked"
    _problem(client.get(f"{DATA}/data-apis/sales", headers=auth(secret)), 401)
    _problem(client.post(f"{ADMIN}/keys/{key_id}/rotate", headers=admin), 400)

    assert client.delete(f"{ADMIN}/keys/{key_id}", headers=admin).status_code == 204
    _problem(client.get(f"{ADMIN}/keys/{key_id}", headers=admin), 404)
    _problem(client.delete(f"{ADMIN}/keys/{key_id}", headers=admin), 404)
    _problem(client.post(f"{ADMIN}/keys", json={"data_api": "nope", "days": 1}, headers=admin), 404)

    events = client.get(f"{ADMIN}/audit", params={"key_id": key_id}, headers=admin).json()
    assert [e["action"] for e in events] == [
        "delete_key",
        "revoke_key",
        "rotate_key",
        "extend_key",
        "create_key",
    ]
    assert {e["actor"] for e in events} == {"admin"}
    assert set(events[0]) >= {"at", "actor", "action", "data_api", "key_id", "remote_addr"}
    limited = client.get(f"{ADMIN}/audit", params={"limit": 2}, headers=admin).json()
    assert len(limited) == 2
    _problem(client.get(f"{ADMIN}/audit", params={"limit": 0}, headers=admin), 400)
    everything = client.get(f"{ADMIN}/audit", headers=admin).text
    for k in (secret, new["key"], rot2.json()["key"]):
        assert k not in everything


def test_other_methods_get_405_with_the_paths_allow(client: Any) -> None:
    for method, path, allow in (
        ("PUT", "/keys", "GET, POST"),
        ("PATCH", "/keys/0123456789abcdef", "DELETE, GET"),
        ("GET", "/keys/0123456789abcdef/rotate", "POST"),
        ("POST", "/audit", "GET"),
    ):
        r = client.request(method, ADMIN + path)
        assert "use " in _problem(r, 405)["detail"]
        assert r.headers["allow"] == allow


def test_openapi_documents_the_admin_api(client: Any) -> None:
    doc = client.get("/nx1/api/v1/openapi.json").json()
    assert doc["components"]["securitySchemes"]["airflowToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Airflow's API token (a JWT from Airflow's POST /auth/token); "
        "not a data API key.",
    }
    for method, path, _body in OPERATIONS:
        template = path.replace("/0123456789abcdef", "/{key_id}").replace("/sales", "/{name}")
        operation = doc["paths"][f"/api/v1/admin{template}"][method.lower()]
        assert operation["security"] == [{"airflowToken": []}]
        assert operation["responses"]["401"]["content"][PROBLEM]
        assert operation["responses"]["403"]["content"][PROBLEM]


# ---------------------------------------------------------------------------------------
# Fuzz with a real admin token
# ---------------------------------------------------------------------------------------


def _admin_schema() -> Any:
    """The admin operations of the plugin app's OpenAPI document (calls go to `api_app`)."""
    from fastapi import FastAPI

    from airflow_nx1_connect.web.api import create_app

    parent = FastAPI()
    parent.mount("/nx1", create_app())
    return schemathesis.openapi.from_asgi("/nx1/api/v1/openapi.json", parent).include(
        path_regex="^/api/v1/admin"
    )


SCHEMA = _admin_schema()
_CALLS: list[int] = []


@SCHEMA.parametrize()
@hypothesis.settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_fuzz_admin_api(
    case: Any, api_app: Any, store: dict[str, Any], tokens: dict[str, str]
) -> None:
    """Generated requests with a real Admin token, sent to Airflow's app: no 5xx, answers
    conform to the document. Every other case aims at existing objects (2xx exercised)."""
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    _CALLS.append(1)
    if len(_CALLS) % 2 == 0:
        if "name" in case.path_parameters:
            case.path_parameters["name"] = "sales"
        if "key_id" in case.path_parameters:
            case.path_parameters["key_id"] = store["key_id"]
    response = case.call(app=api_app, headers=auth(tokens["admin"]))
    assert response.status_code < 500, response.text
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
