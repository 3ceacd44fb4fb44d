"""The NX1 Connect admin view on the real api-server app, in process, with real logins.

The app is Airflow's own FastAPI api-server app (`create_app(apps="core")`), which mounts the
FAB provider's `/pluginsv2` Flask app (where the view lives) and the FAB auth manager's
`/auth` app (the login form). Users of each role log in through that form, exactly as in a
browser; the default `[fab] session_backend` (database) is used, so these tests also show
that the view sees a user logged in the normal way. The store is real (SQLite and PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_nx1_connect.core import audit, checks, writer
from airflow_nx1_connect.core import keys as core_keys
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.errors import ChecksFailed, DataApiNotFound, KeyNotFound
from airflow_nx1_connect.core.store import api_keys, key_usage

FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
PASSWORD = "s3cret-pass"
#: username -> FAB role ("nobody" has no role at all).
USERS = {
    "admin": "Admin",
    "asker": "nx1_ask",
    "engineer": "nx1_engineer",
    "viewer": "Viewer",
}
BASE = "/pluginsv2/nx1connect"


# ---------------------------------------------------------------------------------------
# The api-server app, users, logins
# ---------------------------------------------------------------------------------------


def _flask_app(app: Any) -> Any:
    from starlette.routing import Mount

    for route in app.routes:
        if isinstance(route, Mount) and route.path == "/pluginsv2":
            return route.app.app
    raise AssertionError("the api-server app has no /pluginsv2 mount")


@pytest.fixture(scope="module")
def api_app(rule_dags: Any) -> Iterator[Any]:
    """Airflow's api-server app with the FAB auth manager, its DB migrated, users created,
    the rule DAGs of `tests.rule_dags` serialized."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__CORE__AUTH_MANAGER", FAB_AUTH_MANAGER)
        mp.delenv("AIRFLOW__FAB__SESSION_BACKEND", raising=False)
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            check=True,
            capture_output=True,
            env=dict(os.environ),
        )
        from airflow.api_fastapi.app import create_app, purge_cached_app

        purge_cached_app()
        app = create_app(apps="core")
        flask_app = _flask_app(app)
        with flask_app.app_context():
            sm = flask_app.appbuilder.sm
            for name, role in USERS.items():
                if sm.find_user(username=name) is None:
                    sm.add_user(
                        name, name, "Test", f"{name}@example.com", sm.find_role(role), PASSWORD
                    )
        try:
            yield app
        finally:
            purge_cached_app()


def _client(app: Any) -> Any:
    from starlette.testclient import TestClient

    return TestClient(app, base_url="http://testserver", follow_redirects=False)


def _csrf(html: str) -> str:
    match = (
        re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
        or re.search(r'value="([^"]+)"[^>]*name="csrf_token"', html)
        or re.search(r'name="csrf-token" content="([^"]+)"', html)
    )
    assert match, "no csrf_token in the page"
    return match.group(1)


def login(app: Any, username: str) -> Any:
    """A client logged in through Airflow's real login form (/auth/login/)."""
    client = _client(app)
    page = client.get("/auth/login/")
    assert page.status_code == 200
    response = client.post(
        "/auth/login/",
        data={"username": username, "password": PASSWORD, "csrf_token": _csrf(page.text)},
    )
    assert response.status_code in (302, 303), response.text[:500]
    assert client.cookies.get("_token"), "the login did not set Airflow's _token cookie"
    return client


@pytest.fixture(scope="module")
def clients(api_app: Any) -> dict[str, Any]:
    """One logged-in client per user (logins are shared by the module's tests)."""
    out = {name: login(api_app, name) for name in USERS}
    out["anonymous"] = _client(api_app)
    return out


# ---------------------------------------------------------------------------------------
# Store content
# ---------------------------------------------------------------------------------------


@pytest.fixture
def store(engine: Any) -> dict[str, Any]:
    """An ask and an engineer data API (the ask one with a snapshot) and a key for each."""
    snaps.register_data_api(
        engine,
        name="weekly_top_product",
        kind="ask",
        description="Top product",
        question="Which product sold most this week?",
        dag_id="retail_rules",
        task_id="top_product",
    )
    snaps.register_data_api(
        engine, name="compliance_metrics", kind="engineer", dag_id="bank", task_id="metrics"
    )
    writer.write_snapshot(
        engine,
        data_api="weekly_top_product",
        columns=[snaps.Column("product", "TEXT"), snaps.Column("units", "INTEGER")],
        batches=[[("Espresso", 120), ("Bagel", 98), ("Croissant", None)]],
        run_id="scheduled__1",
    )
    ask_key = core_keys.create_key(engine, data_api="weekly_top_product", days=7)
    eng_key = core_keys.create_key(engine, data_api="compliance_metrics", days=7)
    return {"engine": engine, "ask_key": ask_key, "eng_key": eng_key}


def _post(client: Any, path: str, data: dict[str, str] | None = None, *, page: str | None = None):
    """POST a form with the CSRF token taken from `page` (default: the data APIs page)."""
    html = client.get(page or f"{BASE}/").text
    return client.post(path, data={"csrf_token": _csrf(html), **(data or {})})


# ---------------------------------------------------------------------------------------
# Who sees what
# ---------------------------------------------------------------------------------------


def test_roles_exist_with_their_permissions(api_app: Any) -> None:
    flask_app = _flask_app(api_app)
    with flask_app.app_context():
        sm = flask_app.appbuilder.sm
        perms = {
            role: {(p.action.name, p.resource.name) for p in sm.find_role(role).permissions}
            for role in ("nx1_ask", "nx1_engineer", "Admin")
        }
    assert ("can_edit", "NX1 Connect: ask data APIs") in perms["nx1_ask"]
    assert not any("engineer" in r for _, r in perms["nx1_ask"])
    assert ("can_edit", "NX1 Connect: engineer data APIs") in perms["nx1_engineer"]
    assert not any("ask data" in r for _, r in perms["nx1_engineer"])
    assert {
        ("can_edit", "NX1 Connect: ask data APIs"),
        ("can_edit", "NX1 Connect: engineer data APIs"),
    } <= perms["Admin"]


def test_anonymous_is_sent_to_login(clients: dict[str, Any], store: dict[str, Any]) -> None:
    anonymous = clients["anonymous"]
    for path in (
        f"{BASE}/",
        f"{BASE}/keys",
        f"{BASE}/keys/new",
        f"{BASE}/data-apis/weekly_top_product/",
    ):
        response = anonymous.get(path)
        assert response.status_code == 302
        assert response.headers["location"].startswith("/auth/login/?next=")
        assert "nx1connect" in response.headers["location"]
    key_id = store["ask_key"].key.id
    assert anonymous.post(f"{BASE}/keys/{key_id}/revoke").status_code in (400, 401)
    assert core_keys.get_key(store["engine"], key_id).revoked_at is None


def test_viewer_gets_403(clients: dict[str, Any], store: dict[str, Any]) -> None:
    viewer = clients["viewer"]
    for path in (f"{BASE}/", f"{BASE}/keys", f"{BASE}/keys/new"):
        response = viewer.get(path)
        assert response.status_code == 403, path
        assert "nx1_ask or nx1_engineer" in response.text
    assert "weekly_top_product" not in viewer.get(f"{BASE}/").text
    assert viewer.get(f"{BASE}/data-apis/weekly_top_product/").status_code == 403


def test_admin_sees_both_kinds(clients: dict[str, Any], store: dict[str, Any]) -> None:
    page = clients["admin"].get(f"{BASE}/")
    assert page.status_code == 200
    # The default [fab] session_backend: the login session is read from Airflow's database.
    interface = type(_flask_app(clients["admin"].app).session_interface).__name__
    assert interface == "AirflowDatabaseSessionInterface"
    html = page.text
    assert "weekly_top_product" in html and "compliance_metrics" in html
    row = re.search(r'<tr data-name="weekly_top_product">(.*?)</tr>', html, re.S).group(1)
    assert "retail_rules" in row and "top_product" in row  # rule DAG / task
    assert re.search(r'class="nx1-rows">3<', row)  # row count
    assert ">live<" in row
    assert re.search(r'class="nx1-active-keys"><a[^>]*>1<', row)
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", row)  # latest snapshot, UTC ISO
    assert "just now" in row or "ago" in row  # relative hint
    other = re.search(r'<tr data-name="compliance_metrics">(.*?)</tr>', html, re.S).group(1)
    assert "no snapshot yet" in other
    # Airflow's FAB styles, but not FAB's navigation bar (Airflow 3's sidebar is the
    # navigation); opened on its own, a one-line header links back to the Airflow UI.
    assert "airflowDefaultTheme" in html
    assert 'class="navbar' not in html and "navbar-collapse" not in html
    assert 'id="nx1-standalone"' in html and 'id="nx1-airflow-home"' in html


def test_each_role_sees_only_its_kind(clients: dict[str, Any], store: dict[str, Any]) -> None:
    asker, engineer = clients["asker"], clients["engineer"]
    ask_page = asker.get(f"{BASE}/").text
    assert "weekly_top_product" in ask_page and "compliance_metrics" not in ask_page
    eng_page = engineer.get(f"{BASE}/").text
    assert "compliance_metrics" in eng_page and "weekly_top_product" not in eng_page
    ask_keys = asker.get(f"{BASE}/keys").text
    assert store["ask_key"].key.prefix in ask_keys and store["eng_key"].key.prefix not in ask_keys
    eng_keys = engineer.get(f"{BASE}/keys").text
    assert store["eng_key"].key.prefix in eng_keys and store["ask_key"].key.prefix not in eng_keys
    assert asker.get(f"{BASE}/data-apis/compliance_metrics/").status_code == 403
    assert engineer.get(f"{BASE}/data-apis/weekly_top_product/").status_code == 403
    assert asker.get(f"{BASE}/keys?data_api=compliance_metrics").status_code == 403
    form = asker.get(f"{BASE}/keys/new").text
    assert 'value="weekly_top_product"' in form and 'value="compliance_metrics"' not in form


def test_preview_shows_latest_rows(clients: dict[str, Any], store: dict[str, Any]) -> None:
    page = clients["asker"].get(f"{BASE}/data-apis/weekly_top_product/")
    assert page.status_code == 200
    preview = re.search(r'<table[^>]*id="nx1-preview".*?</table>', page.text, re.S).group(0)
    assert [h for h in re.findall(r"<th>(\w+)<", preview)] == ["product", "units"]
    assert "Espresso" in preview and "120" in preview and "Bagel" in preview
    assert "null" in preview  # the Croissant's missing units
    assert "Which product sold most this week?" in page.text
    assert clients["admin"].get(f"{BASE}/data-apis/no_such_api/").status_code == 404


def test_data_api_page_shows_the_last_failed_run(
    clients: dict[str, Any], store: dict[str, Any]
) -> None:
    """Failed publish checks: the page says the last run failed, which run, and why; the
    latest snapshot is still previewed. The next publish clears it."""
    engine = store["engine"]
    columns = [snaps.Column("product", "TEXT"), snaps.Column("units", "INTEGER")]
    with pytest.raises(ChecksFailed):
        writer.write_snapshot(
            engine,
            data_api="weekly_top_product",
            columns=columns,
            batches=[],
            run_id="scheduled__2",
            checks=checks.parse({"min_rows": 1}),
        )
    page = clients["asker"].get(f"{BASE}/data-apis/weekly_top_product/")
    assert page.status_code == 200
    failure = re.search(r'<div[^>]*id="nx1-last-failure".*?</div>', page.text, re.S).group(0)
    assert "scheduled__2" in failure and "min_rows: 0 rows, at least 1 required" in failure
    assert "last run failed" in page.text
    assert "Espresso" in page.text  # the latest snapshot is still served and previewed
    writer.write_snapshot(
        engine, data_api="weekly_top_product", columns=columns, batches=[[("Tea", 1)]]
    )
    page = clients["asker"].get(f"{BASE}/data-apis/weekly_top_product/")
    assert 'id="nx1-last-failure"' not in page.text and "last run failed" not in page.text


# ---------------------------------------------------------------------------------------
# Keys: create, validate, extend, revoke, delete
# ---------------------------------------------------------------------------------------


def test_create_key_shows_it_once(clients: dict[str, Any], store: dict[str, Any]) -> None:
    asker = clients["asker"]
    response = _post(
        asker,
        f"{BASE}/keys/new",
        {"data_api": "weekly_top_product", "description": "BI dashboard", "days": "6"},
        page=f"{BASE}/keys/new",
    )
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"
    assert "location" not in response.headers
    secret = re.search(r'id="nx1-key" value="(nx1_[A-Za-z0-9_-]+)"', response.text).group(1)
    assert "you will not see it again" in response.text
    assert 'id="nx1-copy"' in response.text
    assert "execCommand('copy')" in response.text  # the copy button's script
    assert "expires in 6 days" in response.text or "expires in 5 days" in response.text
    key = core_keys.verify_key(store["engine"], secret, "weekly_top_product")
    assert key.description == "BI dashboard"
    assert key.expires_at - key.created_at == dt.timedelta(days=6)
    # Never again: not in the keys list, not in the flashed messages of the next page.
    listing = asker.get(f"{BASE}/keys").text
    assert secret not in listing and key.prefix in listing and "BI dashboard" in listing
    assert "expires in" in listing
    [event] = audit.list_events(store["engine"], key_id=key.id)
    assert (event.action, event.actor, event.data_api) == ("create_key", "asker", key.data_api)
    assert secret not in str(event.to_dict())


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"data_api": "weekly_top_product", "days": "0"}, "days", "from 1 to 365"),
        ({"data_api": "weekly_top_product", "days": "366"}, "days", "from 1 to 365"),
        ({"data_api": "weekly_top_product", "days": "soon"}, "days", "whole number"),
        ({"data_api": "no_such_api", "days": "5"}, "data_api", "No data API is called"),
        ({"data_api": "", "days": "5"}, "data_api", "Choose the data API"),
    ],
)
def test_create_key_validation(
    clients: dict[str, Any], store: dict[str, Any], form: dict[str, str], field: str, message: str
) -> None:
    before = len(core_keys.list_keys(store["engine"]))
    response = _post(clients["admin"], f"{BASE}/keys/new", form, page=f"{BASE}/keys/new")
    assert response.status_code == 400
    error = re.search(rf'<span class="help-block" id="{field}-error">([^<]*)<', response.text)
    assert error and message in error.group(1)
    # The message is next to its field: inside the same form-group.
    group = re.search(r'<div class="form-group has-error">(.*?)</div>', response.text, re.S).group(
        1
    )
    assert f'id="{field}"' in group
    assert 'id="nx1-key"' not in response.text
    assert len(core_keys.list_keys(store["engine"])) == before


def test_max_key_days_setting_is_used(
    clients: dict[str, Any], store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__MAX_KEY_DAYS", "10")
    form = clients["admin"].get(f"{BASE}/keys/new").text
    assert 'max="10"' in form
    response = _post(
        clients["admin"], f"{BASE}/keys/new", {"data_api": "compliance_metrics", "days": "11"}
    )
    assert response.status_code == 400 and "from 1 to 10" in response.text
    ok = _post(
        clients["admin"], f"{BASE}/keys/new", {"data_api": "compliance_metrics", "days": "10"}
    )
    assert ok.status_code == 201


def test_wrong_kind_is_refused_on_every_action(
    clients: dict[str, Any], store: dict[str, Any]
) -> None:
    asker, engineer = clients["asker"], clients["engineer"]
    engine = store["engine"]
    eng_id, ask_id = store["eng_key"].key.id, store["ask_key"].key.id
    # nx1_ask may not touch an engineer data API's keys, nor the data API itself.
    response = _post(asker, f"{BASE}/keys/new", {"data_api": "compliance_metrics", "days": "5"})
    assert response.status_code == 403
    assert _post(asker, f"{BASE}/keys/{eng_id}/revoke").status_code == 403
    assert _post(asker, f"{BASE}/keys/{eng_id}/delete").status_code == 403
    assert _post(asker, f"{BASE}/keys/{eng_id}/extend", {"days": "3"}).status_code == 403
    assert asker.get(f"{BASE}/keys/{eng_id}/extend").status_code == 403
    response = _post(
        asker, f"{BASE}/data-apis/compliance_metrics/delete", {"confirm": "compliance_metrics"}
    )
    assert response.status_code == 403
    # ... and the other way round.
    assert _post(engineer, f"{BASE}/keys/{ask_id}/revoke").status_code == 403
    response = _post(
        engineer, f"{BASE}/data-apis/weekly_top_product/delete", {"confirm": "weekly_top_product"}
    )
    assert response.status_code == 403
    # A Viewer may do nothing.
    assert _post(
        clients["viewer"], f"{BASE}/keys/{ask_id}/revoke", page=f"{BASE}/keys"
    ).status_code in (
        400,
        403,
    )
    # Nothing changed.
    assert len(core_keys.list_keys(engine)) == 2
    assert all(k.revoked_at is None for k in core_keys.list_keys(engine))
    assert len(snaps.list_data_apis(engine)) == 2


def test_csrf_token_is_required(clients: dict[str, Any], store: dict[str, Any]) -> None:
    admin, engine = clients["admin"], store["engine"]
    key_id = store["ask_key"].key.id
    admin.get(f"{BASE}/keys")  # a session with a CSRF secret exists
    for path, data in (
        (f"{BASE}/keys/{key_id}/revoke", {}),
        (f"{BASE}/keys/{key_id}/delete", {}),
        (f"{BASE}/keys/{key_id}/extend", {"days": "5"}),
        (f"{BASE}/keys/new", {"data_api": "weekly_top_product", "days": "5"}),
        (f"{BASE}/data-apis/weekly_top_product/delete", {"confirm": "weekly_top_product"}),
    ):
        assert admin.post(path, data=data).status_code == 400, path
        bad = admin.post(path, data={**data, "csrf_token": "forged"})
        assert bad.status_code == 400, path
        assert "CSRF" in bad.text
    assert len(core_keys.list_keys(engine)) == 2
    assert core_keys.get_key(engine, key_id).revoked_at is None
    assert len(snaps.list_data_apis(engine)) == 2
    # State changes are POST only.
    assert admin.get(f"{BASE}/keys/{key_id}/revoke").status_code == 405
    assert admin.get(f"{BASE}/keys/{key_id}/delete").status_code == 405


def test_extend_revoke_delete(clients: dict[str, Any], store: dict[str, Any]) -> None:
    engineer, engine = clients["engineer"], store["engine"]
    key = store["eng_key"].key
    page = f"{BASE}/keys/{key.id}/extend"
    bad = _post(engineer, page, {"days": "0"}, page=page)
    assert bad.status_code == 400 and 'id="days-error"' in bad.text
    extended = _post(engineer, page, {"days": "3"}, page=page)
    assert extended.status_code == 302 and extended.headers["location"].endswith("/nx1connect/keys")
    assert core_keys.get_key(engine, key.id).expires_at == key.expires_at + dt.timedelta(days=3)
    assert "now expires" in engineer.get(f"{BASE}/keys").text  # the flashed message

    revoked = _post(engineer, f"{BASE}/keys/{key.id}/revoke", page=f"{BASE}/keys")
    assert revoked.status_code == 302
    assert core_keys.get_key(engine, key.id).status() == "revoked"
    listing = engineer.get(f"{BASE}/keys").text
    row = re.search(rf'<tr data-key-id="{key.id}">(.*?)</tr>', listing, re.S).group(1)
    assert ">revoked<" in row and "Extend" not in row

    deleted = _post(engineer, f"{BASE}/keys/{key.id}/delete", page=f"{BASE}/keys")
    assert deleted.status_code == 302
    with pytest.raises(KeyNotFound):
        core_keys.get_key(engine, key.id)
    missing = _post(engineer, f"{BASE}/keys/{key.id}/delete", page=f"{BASE}/keys")
    assert missing.status_code == 404
    # Every action is in the audit trail, with the logged-in user as its actor.
    events = audit.list_events(engine, key_id=key.id)
    assert [(e.action, e.actor) for e in events] == [
        ("delete_key", "engineer"),
        ("revoke_key", "engineer"),
        ("extend_key", "engineer"),
    ]
    assert events[0].data_api == key.data_api and events[0].remote_addr


def test_delete_data_api_needs_confirmation(clients: dict[str, Any], store: dict[str, Any]) -> None:
    asker, engine = clients["asker"], store["engine"]
    path = f"{BASE}/data-apis/weekly_top_product/delete"
    confirm = asker.get(path)
    assert confirm.status_code == 200
    assert "1</strong> key(s)" in confirm.text and "1</strong> snapshot(s)" in confirm.text
    wrong = _post(asker, path, {"confirm": "weekly"}, page=path)
    assert wrong.status_code == 400 and 'id="confirm-error"' in wrong.text
    assert snaps.get_data_api(engine, "weekly_top_product")
    done = _post(asker, path, {"confirm": "weekly_top_product"}, page=path)
    assert done.status_code == 302
    with pytest.raises(DataApiNotFound):
        snaps.get_data_api(engine, "weekly_top_product")
    with engine.connect() as conn:
        left = conn.execute(
            sa.select(sa.func.count()).where(api_keys.c.data_api == "weekly_top_product")
        ).scalar_one()
    assert left == 0
    assert snaps.list_snapshots(engine, "weekly_top_product") == []
    assert "Deleted data API weekly_top_product" in asker.get(f"{BASE}/").text
    [event] = audit.list_events(engine, data_api="weekly_top_product")
    assert (event.action, event.actor) == ("delete_data_api", "asker")
    assert event.detail == {"keys": 1, "snapshots": 1}


def test_ensure_roles_restores_missing_permissions(api_app: Any) -> None:
    """`roles.ensure_roles()` (for `nx1-connect db migrate`) adds back what is missing."""
    from airflow_nx1_connect.web import roles

    flask_app = _flask_app(api_app)
    resource = roles.RESOURCES["engineer"]
    with flask_app.app_context():
        sm = flask_app.appbuilder.sm
        role = sm.find_role("nx1_engineer")
        sm.remove_permission_from_role(role, sm.get_permission("can_edit", resource))
        assert ("can_edit", resource) not in {
            (p.action.name, p.resource.name) for p in sm.find_role("nx1_engineer").permissions
        }
    roles.ensure_roles()
    with flask_app.app_context():
        sm = flask_app.appbuilder.sm
        sm.session.expire_all()
        perms = {(p.action.name, p.resource.name) for p in sm.find_role("nx1_engineer").permissions}
    assert ("can_edit", resource) in perms


def test_securecookie_session_backend_works_too(
    api_app: Any, store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `[fab] session_backend = securecookie` a normal login reaches the view as well."""
    from airflow.api_fastapi.app import _AuthManagerState, create_app, purge_cached_app

    monkeypatch.setenv("AIRFLOW__FAB__SESSION_BACKEND", "securecookie")
    module_auth_manager = _AuthManagerState.instance
    purge_cached_app()
    try:
        app = create_app(apps="core")
        asker = login(app, "asker")
        page = asker.get(f"{BASE}/")
        assert page.status_code == 200 and "weekly_top_product" in page.text
        interface = type(_flask_app(app).session_interface).__name__
        assert interface == "AirflowSecureCookieSessionInterface"
        key_id = store["ask_key"].key.id
        assert _post(asker, f"{BASE}/keys/{key_id}/revoke", page=f"{BASE}/keys").status_code == 302
        assert core_keys.get_key(store["engine"], key_id).status() == "revoked"
        assert _client(app).get(f"{BASE}/").status_code == 302
    finally:
        # Give the module's app its auth manager back for the tests that follow.
        purge_cached_app()
        _AuthManagerState.instance = module_auth_manager


def test_unreachable_store_gives_503(
    clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_nx1_connect.core import engines as core_engines

    url = "postgresql+psycopg://postgres:hidden-pw@127.0.0.1:1/nowhere"
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN", url)
    try:
        for path in (f"{BASE}/", f"{BASE}/keys"):
            response = clients["admin"].get(path)
            assert response.status_code == 503
            assert "cannot be reached" in response.text and "hidden-pw" not in response.text
    finally:
        core_engines.dispose_engines()


# ---------------------------------------------------------------------------------------
# Version 2: scopes, rate limits, usage, rotate, create data API, audit
# ---------------------------------------------------------------------------------------


def _row(html: str, key_id: str) -> str:
    return re.search(rf'<tr data-key-id="{key_id}">(.*?)</tr>', html, re.S).group(1)


def test_create_key_with_run_scope_and_rate_limit(
    clients: dict[str, Any], store: dict[str, Any]
) -> None:
    # Admin: a key with the run scope needs Airflow's right to trigger the rule's DAG.
    asker, admin, engine = clients["asker"], clients["admin"], store["engine"]
    form = asker.get(f"{BASE}/keys/new").text
    assert 'id="may_run"' in form and 'id="rate_limit"' in form
    response = _post(
        admin,
        f"{BASE}/keys/new",
        {
            "data_api": "weekly_top_product",
            "days": "5",
            "description": "refresher",
            "may_run": "run",
            "rate_limit": "120",
        },
        page=f"{BASE}/keys/new",
    )
    assert response.status_code == 201
    secret = re.search(r'id="nx1-key" value="(nx1_[A-Za-z0-9_-]+)"', response.text).group(1)
    assert re.search(r'id="nx1-created-scopes">read, run<', response.text)
    key = core_keys.verify_key(engine, secret, "weekly_top_product")
    assert key.scopes == ("read", "run") and key.rate_limit == 120
    # Without the box: read only, the default rate limit.
    plain = _post(
        asker,
        f"{BASE}/keys/new",
        {"data_api": "weekly_top_product", "days": "5", "description": "reader"},
        page=f"{BASE}/keys/new",
    )
    assert plain.status_code == 201
    other = next(k for k in core_keys.list_keys(engine) if k.description == "reader")
    assert other.scopes == ("read",) and other.rate_limit is None
    # nx1_ask alone may not trigger the rule's DAG: no run key (403, the form says why).
    refused = _post(
        asker,
        f"{BASE}/keys/new",
        {"data_api": "weekly_top_product", "days": "5", "description": "runs", "may_run": "run"},
        page=f"{BASE}/keys/new",
    )
    assert refused.status_code == 403
    assert re.search(r'id="scopes-error">[^<]*retail_rules', refused.text), refused.text[-1500:]
    assert not any(k.description == "runs" for k in core_keys.list_keys(engine))
    listing = asker.get(f"{BASE}/keys").text
    row = _row(listing, key.id)
    assert re.search(r'class="nx1-scopes">.*>read<.*>run<', row, re.S)
    assert re.search(r'class="nx1-rate-limit">120/min<', row)
    row = _row(listing, other.id)
    assert ">run<" not in row and "default" in row
    [event] = audit.list_events(engine, key_id=key.id)
    assert event.detail["scopes"] == ["read", "run"] and event.detail["rate_limit"] == 120


@pytest.mark.parametrize("value", ["-1", "fast", "1.5"])
def test_create_key_rate_limit_validation(
    clients: dict[str, Any], store: dict[str, Any], value: str
) -> None:
    before = len(core_keys.list_keys(store["engine"]))
    response = _post(
        clients["admin"],
        f"{BASE}/keys/new",
        {"data_api": "weekly_top_product", "days": "5", "rate_limit": value},
        page=f"{BASE}/keys/new",
    )
    assert response.status_code == 400
    assert re.search(r'id="rate_limit-error">[^<]*per minute', response.text)
    assert len(core_keys.list_keys(store["engine"])) == before


def test_keys_list_shows_usage(clients: dict[str, Any], store: dict[str, Any]) -> None:
    engine = store["engine"]
    key_id = store["ask_key"].key.id
    today = dt.datetime.now(dt.timezone.utc).date()
    with engine.begin() as conn:
        conn.execute(
            key_usage.insert(),
            [
                {"key_id": key_id, "day": today, "requests": 7},
                {"key_id": key_id, "day": today - dt.timedelta(days=3), "requests": 5},
                {"key_id": key_id, "day": today - dt.timedelta(days=30), "requests": 100},
            ],
        )
    row = _row(clients["admin"].get(f"{BASE}/keys").text, key_id)
    assert re.search(r'class="nx1-usage-today">7<', row)
    assert re.search(r'class="nx1-usage-week">12<', row)
    unused = _row(clients["admin"].get(f"{BASE}/keys").text, store["eng_key"].key.id)
    assert re.search(r'class="nx1-usage-today">0<', unused)


def test_rotate_key(clients: dict[str, Any], store: dict[str, Any]) -> None:
    engineer, engine = clients["engineer"], store["engine"]
    old = store["eng_key"]
    listing = engineer.get(f"{BASE}/keys").text
    assert "Confirm rotate" in _row(listing, old.key.id)
    response = _post(
        engineer, f"{BASE}/keys/{old.key.id}/rotate", {"overlap_hours": "2"}, page=f"{BASE}/keys"
    )
    assert response.status_code == 201, response.text[-2000:]
    assert response.headers["cache-control"] == "no-store"
    assert 'id="nx1-rotated"' in response.text and "you will not see it again" in response.text
    secret = re.search(r'id="nx1-key" value="(nx1_[A-Za-z0-9_-]+)"', response.text).group(1)
    new = core_keys.verify_key(engine, secret, "compliance_metrics")
    assert new.rotated_from == old.key.id
    # The old key still works, for the overlap only.
    still = core_keys.verify_key(engine, old.secret, "compliance_metrics")
    left = still.expires_at - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(hours=1, minutes=58) < left <= dt.timedelta(hours=2)
    [event] = [e for e in audit.list_events(engine, key_id=old.key.id) if e.action == "rotate_key"]
    assert event.actor == "engineer" and event.detail["new_key_id"] == new.id
    assert secret not in str(event.to_dict())
    # Bad overlap, wrong kind, no CSRF token: refused, nothing rotated.
    bad = _post(
        engineer, f"{BASE}/keys/{new.id}/rotate", {"overlap_hours": "soon"}, page=f"{BASE}/keys"
    )
    assert bad.status_code == 400 and "overlap" in bad.text
    assert _post(clients["asker"], f"{BASE}/keys/{new.id}/rotate").status_code == 403
    assert engineer.post(f"{BASE}/keys/{new.id}/rotate", data={}).status_code == 400
    assert engineer.get(f"{BASE}/keys/{new.id}/rotate").status_code == 405
    assert len(core_keys.list_keys(engine, data_api="compliance_metrics")) == 2


def test_create_data_api_ahead_of_first_run(clients: dict[str, Any], store: dict[str, Any]) -> None:
    asker, engine = clients["asker"], store["engine"]
    form = asker.get(f"{BASE}/data-apis/new")
    assert form.status_code == 200
    # nx1_ask may create ask data APIs only.
    assert 'value="ask"' in form.text and 'value="engineer"' not in form.text
    fields = {
        "name": "daily_sales",
        "kind": "ask",
        "dag_id": "retail_daily",
        "task_id": "sales",
        "description": "Sales per day",
        "key_days": "9",
    }
    response = _post(asker, f"{BASE}/data-apis/new", fields, page=f"{BASE}/data-apis/new")
    assert response.status_code == 201, response.text[-2000:]
    assert 'id="nx1-api-created"' in response.text and "you will not see it again" in response.text
    secret = re.search(r'id="nx1-key" value="(nx1_[A-Za-z0-9_-]+)"', response.text).group(1)
    api = snaps.get_data_api(engine, "daily_sales")
    assert (api.kind, api.dag_id, api.task_id, api.description) == (
        "ask",
        "retail_daily",
        "sales",
        "Sales per day",
    )
    key = core_keys.verify_key(engine, secret, "daily_sales")
    assert key.expires_at - key.created_at == dt.timedelta(days=9)
    row = re.search(r'<tr data-name="daily_sales">(.*?)</tr>', asker.get(f"{BASE}/").text, re.S)
    assert row and "no snapshot yet" in row.group(1)
    [event] = audit.list_events(engine, data_api="daily_sales")
    assert (event.action, event.actor, event.key_id) == ("create_data_api", "asker", key.id)
    # The same name again, a bad name, bad days, the other kind: errors next to the field.
    for bad, field in (
        ({**fields}, "name"),
        ({**fields, "name": "Bad-Name"}, "name"),
        ({**fields, "name": "other_api", "key_days": "0"}, "key_days"),
        ({**fields, "name": "other_api", "dag_id": "bad dag"}, "dag_id"),
        ({**fields, "name": "other_api", "kind": "engineer"}, "kind"),
    ):
        refused = _post(asker, f"{BASE}/data-apis/new", bad, page=f"{BASE}/data-apis/new")
        assert refused.status_code == 400, bad
        assert re.search(rf'id="{field}-error">[^<]+<', refused.text), (bad, refused.text[-1500:])
    assert (
        "already exists"
        in _post(asker, f"{BASE}/data-apis/new", fields, page=f"{BASE}/data-apis/new").text
    )
    assert len(snaps.list_data_apis(engine)) == 3
    # A Viewer may not; no CSRF token: refused.
    assert clients["viewer"].get(f"{BASE}/data-apis/new").status_code == 403
    no_csrf = asker.post(f"{BASE}/data-apis/new", data={**fields, "name": "third_api"})
    assert no_csrf.status_code == 400
    assert len(snaps.list_data_apis(engine)) == 3


def test_audit_page(clients: dict[str, Any], store: dict[str, Any]) -> None:
    admin, engine = clients["admin"], store["engine"]
    ask_id, eng_id = store["ask_key"].key.id, store["eng_key"].key.id
    assert _post(clients["asker"], f"{BASE}/keys/{ask_id}/revoke").status_code == 302
    assert _post(clients["engineer"], f"{BASE}/keys/{eng_id}/revoke").status_code == 302
    page = admin.get(f"{BASE}/audit")
    assert page.status_code == 200
    table = re.search(r'<table[^>]*id="nx1-audit".*?</table>', page.text, re.S).group(0)
    rows = re.findall(r'<tr data-action="(\w+)">.*?class="nx1-actor">([^<]*)<', table, re.S)
    assert rows == [("revoke_key", "engineer"), ("revoke_key", "asker")]  # newest first
    assert ask_id in table and eng_id in table
    # Each role sees the events of its kind only.
    asker_page = clients["asker"].get(f"{BASE}/audit").text
    assert ask_id in asker_page and eng_id not in asker_page
    filtered = admin.get(f"{BASE}/audit?data_api=compliance_metrics").text
    assert eng_id in filtered and ask_id not in filtered
    assert clients["asker"].get(f"{BASE}/audit?data_api=compliance_metrics").status_code == 403
    assert clients["viewer"].get(f"{BASE}/audit").status_code == 403
    assert clients["anonymous"].get(f"{BASE}/audit").status_code == 302
    assert store["ask_key"].secret not in page.text
    assert len(audit.list_events(engine)) == 2
