"""The attacker's list (issue 27): what an nx1 login, a data API key or a crafted request tries,
against a real `airflow api-server` with the FAB auth manager.

One Airflow for the module: a fresh AIRFLOW_HOME and metadata DB, a DAGs folder with rule DAGs
(serialized with `airflow dags reserialize`) and a DAG that is no rule (`payroll_export`), and
one more rule DAG file written afterwards, so that Airflow has not serialized it yet. Real FAB
users: `boss` (Admin), `asker` (nx1_ask), `engineer` (nx1_engineer), `watcher` (Viewer) and
`runner` (nx1_ask, plus Airflow's right to trigger `retail_rules` only). Tokens come from the
server's own `POST /auth/token`, view logins from its own login form. The snapshot store is a
SQLite file. No scheduler runs: a triggered run stays queued, which is all a check of who may
trigger needs.

Each finding of issue 27 is one test (`test_finding_N_...`); the checks that already held are
the `test_held_...` tests, kept so that they stay held. Two findings are also shown in process,
where a setting must change between requests: `[api] base_url` (finding 5) and
`[nx1_connect] csv_escape_formulas` (finding 8).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis

from airflow_nx1_connect.core import engines
from tests.api_server import free_port, running_api_server

pytestmark = pytest.mark.slow

FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
PASSWORD = "s3cret-pass"
ADMIN = "/nx1/api/v1/admin"
MOUNTS = ("/nx1/api/v1", "/pluginsv2/nx1/api/v1")
VIEW = "/pluginsv2/nx1connect"
PROBLEM = "application/problem+json"
EVIL = "evil.example.com"
#: username -> FAB roles. `runner` may trigger DAG `retail_rules` (and no other DAG).
USERS: dict[str, tuple[str, ...]] = {
    "boss": ("Admin",),
    "asker": ("nx1_ask",),
    "engineer": ("nx1_engineer",),
    "watcher": ("Viewer",),
    "runner": ("nx1_ask", "retail_runner"),
}

DAGS = textwrap.dedent(
    """
    import pendulum
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    from airflow_nx1_connect.operators import AskRuleOperator, EngineerRuleOperator

    START = pendulum.datetime(2026, 1, 1, tz="UTC")
    SQL = "SELECT 1 AS n"

    with DAG(dag_id="retail_rules", schedule=None, start_date=START):
        AskRuleOperator(task_id="top_product", data_api="weekly_top_product", conn_id="src",
                        sql=SQL)
        AskRuleOperator(task_id="daily_sales", data_api="daily_sales", conn_id="src", sql=SQL)
        AskRuleOperator(task_id="store_visits", data_api="store_visits", conn_id="src", sql=SQL)
    with DAG(dag_id="bank_rules", schedule=None, start_date=START):
        EngineerRuleOperator(task_id="metrics", data_api="compliance_metrics", conn_id="src",
                             sql=SQL)
        EngineerRuleOperator(task_id="ledger", data_api="ledger_totals", conn_id="src", sql=SQL)
        EngineerRuleOperator(task_id="old_fraud", data_api="fraud_alerts", conn_id="src",
                             sql=SQL)
    with DAG(dag_id="fraud_insights", schedule=None, start_date=START):
        AskRuleOperator(task_id="alerts", data_api="fraud_alerts", conn_id="src", sql=SQL)
    with DAG(dag_id="payroll_export", schedule=None, start_date=START):
        EmptyOperator(task_id="export")
    """
)
#: Written after `airflow dags reserialize`: a rule DAG Airflow has not serialized yet.
LATE_DAGS = textwrap.dedent(
    """
    import pendulum
    from airflow.sdk import DAG

    from airflow_nx1_connect.operators import AskRuleOperator

    with DAG(dag_id="late_rules", schedule=None,
             start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
        AskRuleOperator(task_id="new_rule", data_api="late_api", conn_id="src",
                        sql="SELECT 1 AS n")
    """
)
#: Users, the `retail_runner` role, and the DAGs that must not be paused (run in Airflow).
SETUP = textwrap.dedent(
    """
    import json, sys
    import sqlalchemy as sa
    from airflow.models.dag import DagModel
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder
    from airflow.utils.session import create_session

    users, password = json.loads(sys.argv[1]), sys.argv[2]
    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        role = sm.find_role("retail_runner") or sm.add_role("retail_runner")
        for action, resource in (("can_read", "DAG:retail_rules"),
                                 ("can_edit", "DAG:retail_rules"),
                                 ("can_create", "DAG Runs")):
            perm = sm.get_permission(action, resource) or sm.create_permission(action, resource)
            sm.add_permission_to_role(role, perm)
        for name, roles in users.items():
            sm.add_user(name, name, "Test", f"{name}@example.com",
                        [sm.find_role(r) for r in roles], password)
    with create_session() as session:
        session.execute(sa.update(DagModel)
                        .where(DagModel.dag_id.in_(["retail_rules", "payroll_export"]))
                        .values(is_paused=False))
    """
)

#: Rows of the two snapshots of `weekly_top_product` (no key columns: the change feed has
#: a delete and an insert per changed row).
OLD_ROWS = [(1, "Espresso", 120), (2, "Bagel", 98), (3, "Scone", 40)]
NEW_ROWS = [(1, "Espresso", 130), (2, "Bagel", 98), (4, "Muffin", 12), (5, "Tea", 7)]


@dataclass
class Airflow:
    url: str
    store_url: str
    env: dict[str, str]
    tokens: dict[str, str]
    keys: dict[str, Any]
    snapshots: dict[str, str]
    logs: list[Path] = field(default_factory=list)
    views: dict[str, httpx.Client] = field(default_factory=dict)

    def admin(self, user: str) -> httpx.Client:
        """A client of the admin API with `user`'s Airflow token."""
        return httpx.Client(
            base_url=self.url + ADMIN,
            headers={"Authorization": f"Bearer {self.tokens[user]}"},
            timeout=120,
        )

    def engine(self) -> Any:
        from airflow_nx1_connect.core import engines

        return engines.get_engine(self.store_url)


def _run(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-3000:])


def _populate(store_url: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Data APIs registered as their rules' first runs do, their snapshots and keys."""
    from airflow_nx1_connect.core import keys, store, writer
    from airflow_nx1_connect.core import snapshots as snaps

    engine = engines.create_store_engine(store_url)
    try:
        store.migrate(engine)
        snaps.register_data_api(
            engine, name="weekly_top_product", kind="ask", dag_id="retail_rules",
            task_id="top_product",
        )  # fmt: skip
        snaps.register_data_api(
            engine, name="compliance_metrics", kind="engineer", dag_id="bank_rules",
            task_id="metrics",
        )  # fmt: skip
        cols = [snaps.Column("id", "INTEGER"), snaps.Column("product", "TEXT")]
        cols.append(snaps.Column("units", "INTEGER"))
        old = writer.write_snapshot(
            engine, data_api="weekly_top_product", columns=cols, batches=[OLD_ROWS]
        )
        new = writer.write_snapshot(
            engine, data_api="weekly_top_product", columns=cols, batches=[NEW_ROWS]
        )
        eng = writer.write_snapshot(
            engine,
            data_api="compliance_metrics",
            columns=[snaps.Column("account", "TEXT"), snaps.Column("flags", "INTEGER")],
            batches=[[("A-1", 0), ("A-2", 3)]],
        )
        made = {
            "ask": keys.create_key(engine, data_api="weekly_top_product", days=5),
            "engineer": keys.create_key(engine, data_api="compliance_metrics", days=5),
        }
    finally:
        engine.dispose()
    return made, {"old": old.id, "new": new.id, "engineer": eng.id}


def _token(url: str, user: str) -> str:
    r = httpx.post(f"{url}/auth/token", json={"username": user, "password": PASSWORD}, timeout=60)
    assert r.status_code == 201, r.text
    return str(r.json()["access_token"])


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    """The module's Airflow (see the module docstring), stopped afterwards."""
    home = tmp_path_factory.mktemp("airflow-security")
    dags = home / "dags"
    dags.mkdir()
    (dags / "nx1_security_rules.py").write_text(DAGS)
    store_url = f"sqlite:///{home / 'nx1_store.db'}"
    port = free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": FAB,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": store_url,
    }
    env.pop("AIRFLOW__API__BASE_URL", None)
    airflow_cmd = (sys.executable, "-m", "airflow")
    _run(env, *airflow_cmd, "db", "migrate")
    _run(env, sys.executable, "-m", "airflow_nx1_connect.cli", "db", "migrate")  # + nx1 roles
    _run(env, *airflow_cmd, "dags", "reserialize")
    users = {name: list(roles) for name, roles in USERS.items()}
    _run(env, sys.executable, "-c", SETUP, json.dumps(users), PASSWORD)
    (dags / "nx1_security_late.py").write_text(LATE_DAGS)  # not serialized: no dag-processor
    made, snapshot_ids = _populate(store_url)
    with running_api_server(env, home, port=port) as (url, log):
        tokens = {user: _token(url, user) for user in USERS}
        yield Airflow(url, store_url, env, tokens, made, snapshot_ids, [log])

    engines.dispose_engines()


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    """Assert a problem+json answer with `status`; return its body."""
    assert r.status_code == status, (r.request.method, str(r.request.url), r.text[:800])
    assert r.headers["content-type"] == PROBLEM, (str(r.request.url), r.headers, r.text[:300])
    body = r.json()
    assert set(body) == {"type", "title", "status", "detail"} and body["status"] == status
    return body


def _csrf(html: str) -> str:
    match = (
        re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
        or re.search(r'value="([^"]+)"[^>]*name="csrf_token"', html)
        or re.search(r'name="csrf-token" content="([^"]+)"', html)
    )
    assert match, "no csrf_token in the page"
    return match.group(1)


def login(airflow: Airflow, user: str) -> httpx.Client:
    """A browser-like client logged in through Airflow's own login form (once per user in
    the module: Airflow limits logins to 5 per 40 seconds)."""
    if user in airflow.views:
        return airflow.views[user]
    client = httpx.Client(base_url=airflow.url, timeout=120, follow_redirects=False)
    page = client.get("/auth/login/")
    assert page.status_code == 200, page.text[:300]
    r = client.post(
        "/auth/login/",
        data={"username": user, "password": PASSWORD, "csrf_token": _csrf(page.text)},
    )
    assert r.status_code in (302, 303), r.text[:500]
    assert client.cookies.get("_token")
    airflow.views[user] = client
    return client


def form_post(client: httpx.Client, path: str, data: dict[str, str], page: str) -> httpx.Response:
    """POST a view form with the CSRF token of `page`, as the browser sends it."""
    token = _csrf(client.get(page).text)
    return client.post(path, data={"csrf_token": token, **data})


def created_secret(html: str) -> str:
    match = re.search(r'id="nx1-key" value="(nx1_[A-Za-z0-9_-]+)"', html)
    assert match, html[-1500:]
    return match.group(1)


def data_api_names(airflow: Airflow) -> set[str]:
    from airflow_nx1_connect.core import snapshots as snaps

    return {a.name for a in snaps.list_data_apis(airflow.engine())}


# ---------------------------------------------------------------------------------------
# Finding 1 (high): an nx1_ask user could make Airflow run any DAG
# ---------------------------------------------------------------------------------------


def test_finding_1_a_data_api_binds_only_to_a_real_rule_task(airflow: Airflow) -> None:
    """The attack: bind a data API to a DAG Airflow will not let me trigger, make a run key,
    POST .../runs. Binding to anything but a rule task of the data API's kind that publishes
    to that name is now refused (400) on the admin API, the CLI and the view."""
    asker = airflow.admin("asker")
    # Airflow itself refuses to let nx1_ask trigger payroll_export.
    own = httpx.post(
        f"{airflow.url}/api/v2/dags/payroll_export/dagRuns",
        json={"logical_date": None},
        headers={"Authorization": f"Bearer {airflow.tokens['asker']}"},
    )
    assert own.status_code == 403, own.text
    before = data_api_names(airflow)
    for body, says in (
        # No rule at all: the payroll DAG's only task.
        ({"name": "payroll_feed", "dag_id": "payroll_export", "task_id": "export"}, "not a rule"),
        # An engineer rule's task, as an ask data API.
        (
            {"name": "ledger_totals", "dag_id": "bank_rules", "task_id": "ledger"},
            "EngineerRuleOperator",
        ),
        # An ask rule that publishes to another name.
        ({"name": "my_feed", "dag_id": "retail_rules", "task_id": "top_product"}, "publishes"),
        ({"name": "my_feed", "dag_id": "no_such_dag", "task_id": "t"}, "no_such_dag"),
        ({"name": "my_feed", "dag_id": "retail_rules", "task_id": "no_such_task"}, "no_such_task"),
    ):
        detail = problem(asker.post("/data-apis", json={"kind": "ask", **body}), 400)["detail"]
        assert says in detail, detail
    assert data_api_names(airflow) == before
    # Nothing reached Airflow: payroll_export has no run.
    runs = httpx.get(
        f"{airflow.url}/api/v2/dags/payroll_export/dagRuns",
        headers={"Authorization": f"Bearer {airflow.tokens['boss']}"},
    )
    assert runs.status_code == 200 and runs.json()["total_entries"] == 0

    # The view's "Create data API" form: the same refusal, next to the task field.
    view = login(airflow, "asker")
    page = f"{VIEW}/data-apis/new"
    fields = {"name": "payroll_feed", "kind": "ask", "dag_id": "payroll_export"}
    refused = form_post(view, page, {**fields, "task_id": "export", "key_days": "3"}, page)
    assert refused.status_code == 400
    assert re.search(r'id="task_id-error">[^<]*not a rule', refused.text), refused.text[-2000:]
    # The CLI: exit 1, one line, nothing created.
    cli = subprocess.run(
        [sys.executable, "-m", "airflow_nx1_connect.cli", "apis", "create", "payroll_feed",
         "--kind", "ask", "--dag", "payroll_export", "--task", "export"],
        env=airflow.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 1 and cli.stdout == "", cli
    assert len(cli.stderr.splitlines()) == 1 and "not a rule" in cli.stderr, cli.stderr
    assert data_api_names(airflow) == before

    # A real rule task of the right kind that publishes to that name is accepted.
    r = asker.post(
        "/data-apis",
        json={"name": "daily_sales", "kind": "ask", "dag_id": "retail_rules",
              "task_id": "daily_sales"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["key"]["scopes"] == ["read"]


def test_finding_1_a_rule_dag_not_serialized_yet_is_read_from_the_dags_folder(
    airflow: Airflow,
) -> None:
    """Before Airflow serializes a new rule DAG, binding reads it from the DAG folder."""
    boss = airflow.admin("boss")
    wrong = {"name": "late_other", "kind": "ask", "dag_id": "late_rules", "task_id": "new_rule"}
    assert "late_api" in problem(boss.post("/data-apis", json=wrong), 400)["detail"]
    r = boss.post("/data-apis", json={**wrong, "name": "late_api"})
    assert r.status_code == 201, r.text
    assert (r.json()["dag_id"], r.json()["task_id"]) == ("late_rules", "new_rule")


def test_finding_1_a_run_key_needs_the_right_to_trigger_the_rules_dag(airflow: Airflow) -> None:
    """A key with the run scope is made or rotated only by a user whom Airflow lets trigger
    the rule's DAG: on the admin API and in the view; read keys are unaffected."""
    asker, runner, boss = airflow.admin("asker"), airflow.admin("runner"), airflow.admin("boss")
    api = "weekly_top_product"  # a rule task of DAG retail_rules
    refused = problem(
        asker.post("/keys", json={"data_api": api, "days": 1, "scopes": ["run"]}), 403
    )
    assert "retail_rules" in refused["detail"]
    assert asker.post("/keys", json={"data_api": api, "days": 1}).status_code == 201
    # Airflow lets `runner` trigger retail_rules: the run key is made, rotated, and runs.
    made = runner.post("/keys", json={"data_api": api, "days": 1, "scopes": ["run"]})
    assert made.status_code == 201, made.text
    by_admin = boss.post("/keys", json={"data_api": api, "days": 1, "scopes": ["run"]}).json()
    problem(asker.post(f"/keys/{by_admin['key_id']}/rotate"), 403)
    rotated = runner.post(f"/keys/{made.json()['key_id']}/rotate", json={"overlap_hours": 0})
    assert rotated.status_code == 201, rotated.text
    run = httpx.post(
        f"{airflow.url}/nx1/api/v1/data-apis/{api}/runs",
        headers={"X-API-Key": rotated.json()["key"]},
        timeout=60,
    )
    assert run.status_code == 202, run.text
    # The same in the view: the box "may start runs" is refused to asker, not to runner.
    fields = {"data_api": api, "days": "1", "may_run": "run"}
    page = f"{VIEW}/keys/new"
    view = login(airflow, "asker")
    before = {k["key_id"] for k in boss.get("/keys", params={"data_api": api}).json()}
    no = form_post(view, page, fields, page)
    assert no.status_code == 403 and "retail_rules" in no.text, no.text[-1500:]
    rotate = form_post(view, f"{VIEW}/keys/{by_admin['key_id']}/rotate", {}, f"{VIEW}/keys")
    assert rotate.status_code == 403
    assert {k["key_id"] for k in boss.get("/keys", params={"data_api": api}).json()} == before
    yes = form_post(login(airflow, "runner"), page, fields, page)
    assert yes.status_code == 201, yes.text[-1500:]
    assert re.search(r'id="nx1-created-scopes">read, run<', yes.text)


# ---------------------------------------------------------------------------------------
# Finding 2: squatting the name an engineer rule will publish to
# ---------------------------------------------------------------------------------------


def test_finding_2_no_squatting_on_another_rules_name(airflow: Airflow) -> None:
    """nx1_ask cannot take the name an engineer rule publishes to before its first run, so
    that rule's run is never refused; nx1_engineer binds it to the rule."""
    asker = airflow.admin("asker")
    for task in ({"dag_id": "bank_rules", "task_id": "ledger"},
                 {"dag_id": "retail_rules", "task_id": "store_visits"}):  # fmt: skip
        body = {"name": "ledger_totals", "kind": "ask", **task}
        problem(asker.post("/data-apis", json=body), 400)
    assert "ledger_totals" not in data_api_names(airflow)
    eng = {"name": "ledger_totals", "kind": "engineer", "dag_id": "bank_rules", "task_id": "ledger"}
    assert airflow.admin("engineer").post("/data-apis", json=eng).status_code == 201
    # The engineer rule's own run publishes into it (its first run registers it as before).
    from airflow_nx1_connect.core import snapshots as snaps

    api = snaps.register_data_api(
        airflow.engine(), name="ledger_totals", kind="engineer", dag_id="bank_rules",
        task_id="ledger",
    )  # fmt: skip
    assert api.kind == "engineer"


# ---------------------------------------------------------------------------------------
# Finding 3: the audit of a deleted data API leaked to the next holder of its name
# ---------------------------------------------------------------------------------------


def test_finding_3_audit_events_stay_with_the_data_api_they_were_recorded_for(
    airflow: Airflow,
) -> None:
    """An engineer data API is deleted and an ask rule's data API takes its name: nx1_ask
    sees only the new one's events (admin API and view); Admin sees both."""
    engineer, asker, boss = airflow.admin("engineer"), airflow.admin("asker"), airflow.admin("boss")
    old = {"name": "fraud_alerts", "kind": "engineer", "dag_id": "bank_rules",
           "task_id": "old_fraud"}  # fmt: skip
    made = engineer.post("/data-apis", json=old)
    assert made.status_code == 201, made.text
    old_key = made.json()["key"]["key_id"]
    assert engineer.post(f"/keys/{old_key}/revoke").status_code == 200
    assert engineer.delete("/data-apis/fraud_alerts").status_code == 204
    new = {"name": "fraud_alerts", "kind": "ask", "dag_id": "fraud_insights", "task_id": "alerts"}
    made = asker.post("/data-apis", json=new)
    assert made.status_code == 201, made.text
    new_key = made.json()["key"]["key_id"]

    for params in ({}, {"data_api": "fraud_alerts"}, {"key_id": old_key}):
        seen = asker.get("/audit", params=params)
        assert seen.status_code == 200, seen.text
        assert old_key not in seen.text and "bank_rules" not in seen.text, (params, seen.text)
    mine = asker.get("/audit", params={"data_api": "fraud_alerts"}).json()
    assert [(e["action"], e["key_id"]) for e in mine] == [("create_data_api", new_key)]
    page = login(airflow, "asker").get(f"{VIEW}/audit", params={"data_api": "fraud_alerts"})
    assert page.status_code == 200 and new_key in page.text
    assert old_key not in page.text and "bank_rules" not in page.text
    assert old_key not in login(airflow, "asker").get(f"{VIEW}/audit").text
    # Admin sees both data APIs that held the name.
    every = boss.get("/audit", params={"data_api": "fraud_alerts"}).json()
    assert [e["action"] for e in every] == [
        "create_data_api",
        "delete_data_api",
        "revoke_key",
        "create_data_api",
    ]
    assert old_key in login(airflow, "boss").get(f"{VIEW}/audit").text


# ---------------------------------------------------------------------------------------
# Finding 4: a CSRF failure in the view was a 500
# ---------------------------------------------------------------------------------------


def test_finding_4_a_csrf_failure_in_the_view_is_400(airflow: Airflow) -> None:
    """Only an X-CSRFToken header (Flask-WTF's global check takes it, the view's form check
    does not): 400 with the view's error page, and nothing changes."""
    view = login(airflow, "asker")
    key_id = airflow.keys["ask"].key.id
    token = _csrf(view.get(f"{VIEW}/keys").text)
    for path in (f"{VIEW}/keys/{key_id}/revoke", f"{VIEW}/keys/{key_id}/extend"):
        r = view.post(path, data={"days": "3"}, headers={"X-CSRFToken": token})
        assert r.status_code == 400, (path, r.status_code, r.text[-800:])
        assert 'id="nx1-error"' in r.text and "CSRF" in r.text
    key = airflow.admin("boss").get(f"/keys/{key_id}").json()
    assert key["status"] == "active" and key["expires"] == _iso(airflow.keys["ask"].key.expires_at)


def _iso(value: Any) -> str:
    from airflow_nx1_connect.core.clock import iso

    return str(iso(value))


# ---------------------------------------------------------------------------------------
# Finding 5: the Host header flowed into Link, next_url and status_url
# ---------------------------------------------------------------------------------------


def _check_link(r: httpx.Response, mount: str, body_url: str | None) -> str:
    link = r.headers["link"]
    assert EVIL not in link and EVIL not in r.text
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    assert match.group(1).startswith(mount + "/data-apis/"), link  # path-absolute
    assert body_url == match.group(1)
    return match.group(1)


def test_finding_5_the_host_header_never_reaches_links(airflow: Airflow) -> None:
    """`Host: evil.example.com` (and X-Forwarded-Host): Link, next_url and a run's
    status_url / Location are path-absolute under the request's mount."""
    evil = {"Host": EVIL, "X-Forwarded-Host": EVIL}
    ask = {"X-API-Key": airflow.keys["ask"].secret, **evil}
    since = airflow.snapshots["old"]
    for mount in MOUNTS:
        page = httpx.get(
            f"{airflow.url}{mount}/data-apis/weekly_top_product/latest?limit=2", headers=ask
        )
        assert page.status_code == 200, page.text
        link = _check_link(page, mount, page.json()["data"]["next_url"])
        assert link.endswith(f"/snapshots/{airflow.snapshots['new']}?limit=2&start=2")
        nxt = httpx.get(airflow.url + link, headers=ask)
        assert nxt.status_code == 200 and nxt.json()["data"]["start"] == 2
        feed = httpx.get(
            f"{airflow.url}{mount}/data-apis/weekly_top_product/changes",
            params={"since": since, "limit": 1},
            headers=ask,
        )
        assert feed.status_code == 200, feed.text
        _check_link(feed, mount, feed.json()["data"]["next_url"])
    # A run key (made by Admin, who may trigger retail_rules): status_url and Location.
    run_key = airflow.admin("boss").post(
        "/keys", json={"data_api": "weekly_top_product", "days": 1, "scopes": ["run"]}
    )
    assert run_key.status_code == 201, run_key.text
    for mount in MOUNTS:
        r = httpx.post(
            f"{airflow.url}{mount}/data-apis/weekly_top_product/runs",
            headers={"X-API-Key": run_key.json()["key"], **evil},
            timeout=60,
        )
        assert r.status_code == 202, r.text
        url = r.json()["status_url"]
        assert url == r.headers["location"] and EVIL not in url
        assert url.startswith(f"{mount}/data-apis/weekly_top_product/runs/"), url


# ---------------------------------------------------------------------------------------
# Finding 6: route misses under /nx1 were not problem+json
# ---------------------------------------------------------------------------------------


def test_finding_6_every_error_under_nx1_is_problem_json(airflow: Airflow) -> None:
    """Names holding a newline, unknown paths, wrong methods, on both mounts and the admin API."""
    key = {"X-API-Key": airflow.keys["ask"].secret}
    token = {"Authorization": f"Bearer {airflow.tokens['boss']}"}
    for method, path, headers, status in (
        ("GET", "/nx1", {}, 404),
        ("GET", "/nx1/", {}, 404),
        ("GET", "/nx1/nope", {}, 404),
        ("GET", "/nx1/api/v1/nope", key, 404),
        ("GET", "/nx1/api/v1/data-apis/a%0Ab/latest", {}, 401),
        ("GET", "/nx1/api/v1/data-apis/a%0Ab/latest", key, 403),
        ("HEAD", "/nx1/api/v1/data-apis/a%0Ab", key, 403),
        ("GET", "/nx1/api/v1/data-apis/weekly%0A_top_product/snapshots", key, 403),
        ("GET", "/nx1/api/v1/admin/data-apis/a%0Ab", token, 404),
        ("DELETE", "/nx1/api/v1/admin/keys/a%0Ab", token, 404),
        ("GET", "/nx1/api/v1/admin/nope%0A", token, 404),
        ("PUT", "/nx1/api/v1/data-apis/weekly_top_product", key, 405),
        ("POST", "/nx1/api/v1/openapi.json", {}, 405),
        ("GET", "/pluginsv2/nx1/api/v1/data-apis/a%0Ab/latest", key, 403),
        ("GET", "/pluginsv2/nx1/api/v1/nope%0A", key, 404),
    ):
        r = httpx.request(method, airflow.url + path, headers=headers, timeout=60)
        assert r.status_code == status, (method, path, r.status_code, r.text[:300])
        assert r.headers["content-type"] == PROBLEM, (method, path, r.headers, r.text[:300])
        if method != "HEAD":
            assert r.json()["status"] == status


@pytest.fixture(scope="module")
def served_schema(airflow: Airflow) -> Any:
    """The OpenAPI document the real server serves at /nx1/api/v1/openapi.json."""
    return schemathesis.openapi.from_url(f"{airflow.url}/nx1/api/v1/openapi.json")


def test_finding_6_schemathesis_finds_no_undocumented_content_type(
    airflow: Airflow, served_schema: Any
) -> None:
    """Generated requests (names with control characters included) to every operation of
    the served document, with a data API key and an Admin token: every answer's Content-Type
    is one the document gives for its status, and nothing is a 5xx."""
    import hypothesis
    from schemathesis.checks import content_type_conformance, not_a_server_error

    headers = {
        "X-API-Key": airflow.keys["ask"].secret,
        "Authorization": f"Bearer {airflow.tokens['boss']}",
    }
    for operation in served_schema.get_all_operations():
        op = operation.ok()
        if op.method.upper() == "DELETE":
            continue  # no deleting the module's data APIs and keys at random

        @hypothesis.settings(
            max_examples=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=op.as_strategy())
        def check(case: Any) -> None:
            response = case.call(base_url=airflow.url + "/nx1", headers=headers, timeout=60)
            case.validate_response(response, checks=[not_a_server_error, content_type_conformance])

        check()


# ---------------------------------------------------------------------------------------
# Finding 7: whole change-feed streams under /pluginsv2 went through the WSGI buffer
# ---------------------------------------------------------------------------------------


def test_finding_7_whole_change_feeds_under_pluginsv2_take_the_streaming_adapter(
    airflow: Airflow,
) -> None:
    """`.../changes?format=csv` without limit under /pluginsv2 is answered by the plugin's
    FastAPI adapter (one batch at a time), not by Flask behind Starlette's unbounded WSGI
    buffer; a page of changes still goes to Flask. The bytes match /nx1's."""
    from airflow_nx1_connect.web.streams import WholeSnapshotStreams
    from tests.web.helpers import AsgiBehind, call_asgi

    changes = "/pluginsv2/nx1/api/v1/data-apis/weekly_top_product/changes"
    behind = AsgiBehind()
    app = WholeSnapshotStreams(behind)
    for query in ("since=x&format=csv", "since=x&format=ndjson", "since=x&format=arrow"):
        status, headers, _body = call_asgi(app, "GET", changes, query)
        assert (status, headers["content-type"]) == (401, PROBLEM), query  # the adapter's
    assert behind.paths == []
    assert call_asgi(app, "GET", changes, "since=x&format=csv&limit=5")[0] == 299
    assert call_asgi(app, "GET", changes, "since=x")[0] == 299  # JSON: always a page
    assert behind.paths == [changes, changes]
    # Through the real server, both mounts stream the same feed.
    ask = {"X-API-Key": airflow.keys["ask"].secret}
    params = {"since": airflow.snapshots["old"], "format": "csv"}
    bodies = []
    for mount in MOUNTS:
        r = httpx.get(f"{airflow.url}{mount}/data-apis/weekly_top_product/changes",
                      params=params, headers=ask)  # fmt: skip
        assert r.status_code == 200, r.text
        bodies.append(r.content)
    assert bodies[0] == bodies[1] and bodies[0].startswith(b"_op,id,product,units\r\n")


# ---------------------------------------------------------------------------------------
# Checks that held: keep them held
# ---------------------------------------------------------------------------------------


def test_held_each_role_is_refused_on_the_other_kind(airflow: Airflow) -> None:
    """Every admin-API action of nx1_ask on the engineer's data API and keys, and the other
    way round, is 403; a Viewer is refused everywhere; the view refuses the other kind too."""
    ask_key, eng_key = airflow.keys["ask"].key.id, airflow.keys["engineer"].key.id
    for user, name, key_id in (
        ("asker", "compliance_metrics", eng_key),
        ("engineer", "weekly_top_product", ask_key),
        ("watcher", "weekly_top_product", ask_key),
    ):
        client = airflow.admin(user)
        for method, path, body in (
            ("GET", f"/data-apis/{name}", None),
            ("DELETE", f"/data-apis/{name}", None),
            ("POST", "/keys", {"data_api": name, "days": 1}),
            ("GET", f"/keys?data_api={name}", None),
            ("GET", f"/keys/{key_id}", None),
            ("POST", f"/keys/{key_id}/extend", {"days": 2}),
            ("POST", f"/keys/{key_id}/revoke", None),
            ("POST", f"/keys/{key_id}/rotate", None),
            ("DELETE", f"/keys/{key_id}", None),
            ("GET", f"/audit?data_api={name}", None),
        ):
            problem(client.request(method, path, json=body), 403)
    problem(airflow.admin("watcher").get("/data-apis"), 403)
    boss = airflow.admin("boss")
    for key_id in (ask_key, eng_key):
        assert boss.get(f"/keys/{key_id}").json()["status"] == "active"
    assert {"weekly_top_product", "compliance_metrics"} <= data_api_names(airflow)
    view = login(airflow, "asker")
    assert view.get(f"{VIEW}/data-apis/compliance_metrics/").status_code == 403
    assert login(airflow, "watcher").get(f"{VIEW}/").status_code == 403


def test_held_a_key_reads_only_its_own_data_api(airflow: Airflow) -> None:
    """A key of one data API on every data-plane path of another (or of a name that does
    not exist), on both mounts: 403."""
    snapshot = airflow.snapshots["engineer"]
    for secret, name in (
        (airflow.keys["ask"].secret, "compliance_metrics"),
        (airflow.keys["engineer"].secret, "weekly_top_product"),
        (airflow.keys["ask"].secret, "no_such_api"),
    ):
        for mount in MOUNTS:
            base = f"{airflow.url}{mount}/data-apis/{name}"
            for method, path in (
                ("GET", ""),
                ("GET", "/latest"),
                ("GET", "/latest?format=csv"),
                ("GET", "/snapshots"),
                ("GET", f"/snapshots/{snapshot}"),
                ("GET", f"/changes?since={snapshot}"),
                ("POST", "/runs"),
                ("GET", "/runs/manual__1"),
            ):
                r = httpx.request(
                    method, base + path, headers={"Authorization": f"Bearer {secret}"}
                )
                problem(r, 403)


def test_held_view_form_tampering_is_refused(airflow: Airflow) -> None:
    """nx1_ask edits the view's forms to act on the engineer's data API and key: refused,
    nothing changes."""
    view = login(airflow, "asker")
    eng_key = airflow.keys["engineer"].key.id
    keys_page = f"{VIEW}/keys"
    for path, data, status in (
        (f"{VIEW}/keys/new", {"data_api": "compliance_metrics", "days": "3"}, 403),
        (f"{VIEW}/keys/{eng_key}/revoke", {}, 403),
        (f"{VIEW}/keys/{eng_key}/delete", {}, 403),
        (f"{VIEW}/keys/{eng_key}/extend", {"days": "9"}, 403),
        (f"{VIEW}/keys/{eng_key}/rotate", {}, 403),
        (f"{VIEW}/data-apis/compliance_metrics/delete", {"confirm": "compliance_metrics"}, 403),
    ):
        r = form_post(view, path, data, keys_page)
        assert r.status_code == status, (path, r.status_code, r.text[-800:])
    tampered = {"name": "ledger_copy", "kind": "engineer", "dag_id": "bank_rules",
                "task_id": "ledger", "key_days": "3"}  # fmt: skip
    r = form_post(view, f"{VIEW}/data-apis/new", tampered, f"{VIEW}/data-apis/new")
    assert r.status_code == 400 and re.search(r'id="kind-error"', r.text)
    key = airflow.admin("boss").get(f"/keys/{eng_key}").json()
    assert key["status"] == "active"
    assert key["expires"] == _iso(airflow.keys["engineer"].key.expires_at)
    assert "ledger_copy" not in data_api_names(airflow)
    assert "compliance_metrics" in data_api_names(airflow)


# ---------------------------------------------------------------------------------------
# In process: findings 5 and 8 with a setting changed between requests (both adapters,
# both stores)
# ---------------------------------------------------------------------------------------


def _in_process_api(engine: Any, name: str, rows: list[tuple[Any, ...]]) -> tuple[str, list[str]]:
    """A data API with two snapshots (the first holds only the first row); (key, ids)."""
    from airflow_nx1_connect.core import keys, writer
    from airflow_nx1_connect.core import snapshots as snaps

    snaps.register_data_api(engine, name=name, kind="ask", dag_id="d", task_id=name)
    columns = [
        snaps.Column("id", "INTEGER"),
        snaps.Column("label", "TEXT"),
        snaps.Column("amount", "NUMERIC"),
    ]
    ids = [
        writer.write_snapshot(engine, data_api=name, columns=columns, batches=[batch]).id
        for batch in (rows[:1], rows)
    ]
    return keys.create_key(engine, data_api=name, days=1).secret, ids


@pytest.mark.parametrize(
    ("base_url", "root"),
    [
        (None, ""),
        ("https://airflow.example.com", "https://airflow.example.com"),
        ("https://example.com/airflow/", "https://example.com/airflow"),
    ],
)
def test_finding_5_links_use_airflows_base_url_when_set(
    engine: Any,
    adapters: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    base_url: str | None,
    root: str,
) -> None:
    """`[api] base_url` (read when a link is built) is the links' root; without it they are
    path-absolute. The request's Host never shows."""
    from tests.web.helpers import both

    if base_url is None:
        monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", base_url)
    key, ids = _in_process_api(engine, "paged", [(i, f"row {i}", i) for i in range(1, 4)])
    headers = {"X-API-Key": key, "Host": EVIL, "X-Forwarded-Host": EVIL}
    base = "/nx1/api/v1/data-apis/paged"
    page = both(adapters, f"{base}/latest?limit=1", headers)
    expected = f"{root}{base}/snapshots/{ids[1]}?limit=1&start=1"
    assert page.headers["link"] == f'<{expected}>; rel="next"'
    assert page.json()["data"]["next_url"] == expected
    feed = both(adapters, f"{base}/changes?since={ids[0]}&limit=1", headers)
    expected = f"{root}{base}/changes?since={ids[0]}&limit=1&to={ids[1]}&start=1"
    assert feed.json()["data"]["next_url"] == expected
    assert feed.headers["link"] == f'<{expected}>; rel="next"'


FORMULAS = ['=HYPERLINK("http://x.test","y")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]


@pytest.mark.parametrize("escape", [None, "False", "True"])
def test_finding_8_csv_formula_cells_are_escaped_only_when_asked(
    engine: Any, adapters: list[Any], monkeypatch: pytest.MonkeyPatch, escape: str | None
) -> None:
    """`[nx1_connect] csv_escape_formulas` (default False): when True, TEXT cells starting
    with = + - @ tab or CR get a leading ' in CSV (pages, streams, the change feed); numbers
    and the other formats never change."""
    import decimal

    import pyarrow as pa

    from tests.web.helpers import both

    if escape is None:
        monkeypatch.delenv("AIRFLOW__NX1_CONNECT__CSV_ESCAPE_FORMULAS", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW__NX1_CONNECT__CSV_ESCAPE_FORMULAS", escape)
    texts = ["plain", *FORMULAS, "a=b", None]
    rows = [(i, text, decimal.Decimal(-i)) for i, text in enumerate(texts, start=1)]
    key, ids = _in_process_api(engine, "exports", rows)
    headers = {"X-API-Key": key}
    on = escape == "True"
    want = [t if t is None or not on or t[:1] not in "=+-@\t\r" else "'" + t for t in texts]
    want_csv = [["id", "label", "amount"]] + [
        [str(i), "" if t is None else t, str(-i)] for i, t in enumerate(want, start=1)
    ]
    base = "/nx1/api/v1/data-apis/exports"
    for query in ("format=csv", "format=csv&limit=100"):
        got = both(adapters, f"{base}/latest?{query}", headers).body.decode()
        assert list(csv.reader(io.StringIO(got, newline=""))) == want_csv, query
    for query in ("format=csv", "format=csv&limit=100"):
        got = both(adapters, f"{base}/changes?since={ids[0]}&{query}", headers).body.decode()
        assert list(csv.reader(io.StringIO(got, newline="")))[1:] == [
            ["insert", *row] for row in want_csv[2:]
        ]
    # Other formats carry the data as it is.
    page = both(adapters, f"{base}/latest", headers).json()
    assert [r[1] for r in page["data"]["data"]] == texts
    lines = both(adapters, f"{base}/latest?format=ndjson", headers).body.splitlines()
    assert [json.loads(line)["label"] for line in lines] == texts
    table = pa.ipc.open_stream(both(adapters, f"{base}/latest?format=arrow", headers).body)
    assert table.read_all().column("label").to_pylist() == texts
