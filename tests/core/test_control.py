"""The control plane's core (core.control, core.audit, key rotation, usage reads) on real
SQLite and PostgreSQL stores, and the CLI commands built on it (apis create, keys rotate,
audit list) through the installed console script.

Core asks Airflow through two ports: which task a rule task is (`RuleFinder`) and whether
an actor may trigger a DAG (`Actor.may_trigger`). Here a finder over the rules of
`tests.rule_dags` stands for Airflow; the CLI test asks the session's real Airflow (its
serialized DAGs), and the web tests ask it through the real api-server."""

from __future__ import annotations

import datetime as dt
import getpass
import json
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_nx1_connect.core import audit, control, engines, keys, usage, writer
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.errors import (
    AdminForbidden,
    Conflict,
    RuleError,
    SnapshotNotFound,
    ValidationError,
)
from airflow_nx1_connect.core.store import key_usage as key_usage_table
from tests.helpers import KEY_LINE, ok, user_error
from tests.rule_dags import RULES

#: An Airflow user allowed to trigger every DAG (as Admin is).
ACTOR = control.Actor("alice", "10.0.0.7", lambda dag_id: True)


def rules(dag_id: str, task_id: str) -> control.RuleTask | None:
    """The rule tasks of `tests.rule_dags.RULES`, and one task that is no rule."""
    if (dag_id, task_id) == ("payroll", "export"):
        return control.RuleTask("BashOperator")
    found = RULES.get((dag_id, task_id))
    if found is None:
        return None
    kind, data_api = found
    return control.RuleTask(control.RULE_OPERATORS[kind], kind, data_api)


def test_create_data_api_ahead_of_first_run(engine: Any) -> None:
    api, created = control.create_data_api(
        engine,
        name="weekly",
        kind="ask",
        dag_id="retail",
        task_id="weekly",
        description="  Weekly top  ",
        rules=rules,
        actor=ACTOR,
    )
    assert (api.name, api.kind, api.dag_id, api.task_id) == ("weekly", "ask", "retail", "weekly")
    assert api.description == "Weekly top" and api.latest_snapshot_id is None
    key = keys.verify_key(engine, created.secret, "weekly")
    assert key.expires_at - key.created_at == dt.timedelta(days=control.DEFAULT_FIRST_KEY_DAYS)
    with pytest.raises(SnapshotNotFound, match="no published snapshot yet"):
        snaps.latest_snapshot(engine, "weekly")
    with pytest.raises(Conflict, match="already exists"):
        control.create_data_api(
            engine, name="weekly", kind="ask", dag_id="x", task_id="y", rules=rules, actor=ACTOR
        )
    # Another task, or the other kind, cannot claim it; the rule's own first run publishes.
    with pytest.raises(RuleError, match="belongs to task"):
        snaps.register_data_api(engine, name="weekly", kind="ask", dag_id="retail", task_id="z")
    with pytest.raises(RuleError):
        snaps.register_data_api(
            engine, name="weekly", kind="engineer", dag_id="retail", task_id="weekly"
        )
    snaps.register_data_api(engine, name="weekly", kind="ask", dag_id="retail", task_id="weekly")
    snap = writer.write_snapshot(
        engine, data_api="weekly", columns=[snaps.Column("n", "INTEGER")], batches=[[(1,)]]
    )
    assert snaps.latest_snapshot(engine, "weekly").id == snap.id

    [event] = audit.list_events(engine, data_api="weekly")
    assert (event.actor, event.action, event.remote_addr) == (
        "alice",
        "create_data_api",
        "10.0.0.7",
    )
    assert event.key_id == created.key.id
    assert event.detail == {"kind": "ask", "dag_id": "retail", "task_id": "weekly", "key_days": 30}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "Bad"}, "data_api"),
        ({"kind": "other"}, "kind"),
        ({"dag_id": ""}, "dag_id"),
        ({"task_id": "a b"}, "task_id"),
        ({"key_days": 0}, "days"),
        ({"key_days": "400"}, "days"),
        ({"description": "x" * 501}, "description"),
    ],
)
def test_create_data_api_validation(engine: Any, kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"name": "ok", "kind": "ask", "dag_id": "d", "task_id": "t", **kwargs}
    with pytest.raises(ValidationError) as info:
        control.create_data_api(engine, rules=rules, actor=ACTOR, **args)
    assert info.value.field == field
    assert snaps.list_data_apis(engine) == [] and audit.list_events(engine) == []


@pytest.mark.parametrize(
    ("kind", "name", "dag_id", "task_id", "says"),
    [
        ("ask", "weekly", "retail", "nope", "is not in Airflow"),
        ("ask", "weekly", "nope", "weekly", "is not in Airflow"),
        ("ask", "payroll", "payroll", "export", "is a BashOperator, not a rule"),
        ("ask", "weekly", "bank", "metrics", "(an engineer rule); an ask data API"),
        ("engineer", "weekly", "retail", "weekly", "(an ask rule); an engineer data API"),
        ("ask", "other", "retail", "weekly", "publishes to data API 'weekly', not 'other'"),
    ],
)
def test_a_data_api_binds_only_to_a_rule_task_of_its_kind_and_name(
    engine: Any, kind: str, name: str, dag_id: str, task_id: str, says: str
) -> None:
    with pytest.raises(ValidationError) as info:
        control.create_data_api(
            engine, name=name, kind=kind, dag_id=dag_id, task_id=task_id, rules=rules, actor=ACTOR
        )
    assert says in str(info.value) and info.value.field == "task_id"
    assert snaps.list_data_apis(engine) == [] and audit.list_events(engine) == []
    assert keys.list_keys(engine) == []


def test_a_run_key_needs_an_actor_who_may_trigger_the_rules_dag(engine: Any) -> None:
    """Made or rotated only by an actor whom Airflow lets trigger the DAG (AdminForbidden);
    read keys, and the machine's operator (the CLI), are not limited."""
    snaps.register_data_api(engine, name="sales", kind="ask", dag_id="shop", task_id="top")
    asked: list[str | None] = []

    def only_other_dags(dag_id: str | None) -> bool:
        asked.append(dag_id)
        return dag_id != "shop"

    bob = control.Actor("bob", None, only_other_dags)
    with pytest.raises(AdminForbidden, match="trigger DAG 'shop'"):
        control.create_key(engine, data_api="sales", days=1, scopes=["run"], actor=bob)
    with pytest.raises(AdminForbidden):
        control.create_key(
            engine, data_api="sales", days=1, scopes=["run"], actor=control.Actor("x")
        )
    assert asked == ["shop"] and keys.list_keys(engine) == []
    read = control.create_key(engine, data_api="sales", days=1, actor=bob)
    run = control.create_key(
        engine, data_api="sales", days=1, scopes=["run"], actor=control.Actor.operator("cli:ops")
    )
    with pytest.raises(AdminForbidden):
        control.rotate_key(engine, run.key.id, actor=bob)
    control.rotate_key(engine, read.key.id, actor=bob)  # a read key: no trigger needed
    assert control.rotate_key(engine, run.key.id, actor=ACTOR)[0].key.scopes == ("read", "run")
    assert [e.action for e in audit.list_events(engine)].count("create_key") == 2


def test_audit_events_stay_with_the_data_api_they_were_recorded_for(engine: Any) -> None:
    """A deleted data API's events are not those of the next data API with its name: a
    caller limited to kinds sees only existing data APIs' events; Admin sees all."""
    _old, first = control.create_data_api(
        engine, name="weekly", kind="engineer", dag_id="bank", task_id="metrics", rules=rules,
        actor=ACTOR,
    )  # fmt: skip
    control.revoke_key(engine, first.key.id, actor=ACTOR)
    control.delete_data_api(engine, "weekly", actor=ACTOR)
    _new, second = control.create_data_api(
        engine, name="weekly", kind="ask", dag_id="retail", task_id="weekly", rules=rules,
        actor=ACTOR,
    )  # fmt: skip
    every = audit.list_events(engine, data_api="weekly")
    assert [e.action for e in every] == [
        "create_data_api",
        "delete_data_api",
        "revoke_key",
        "create_data_api",
    ]
    for kinds in ({"ask"}, {"ask", "engineer"}):
        for filters in ({}, {"data_api": "weekly"}):
            seen = audit.list_events(engine, kinds=kinds, **filters)
            assert [(e.action, e.key_id) for e in seen] == [("create_data_api", second.key.id)]
    assert audit.list_events(engine, kinds={"engineer"}) == []
    assert audit.list_events(engine, kinds={"ask"}, key_id=first.key.id) == []
    assert len(audit.list_events(engine, key_id=first.key.id)) == 2
    with engine.connect() as conn:
        query = sa.text("SELECT action, data_api_id FROM nx1_audit ORDER BY id")
        ids = dict(conn.execute(query).all())  # the newest event of each action
        current = conn.execute(sa.text("SELECT api_id FROM nx1_data_apis")).scalar()
    assert ids["delete_data_api"] == ids["revoke_key"] != current
    assert ids["create_data_api"] == current  # the newest of the two creations


def test_migration_gives_old_events_the_identity_of_the_data_api_of_their_time(
    store_url: str,
) -> None:
    """Revision 0005 on a store with events: each gets the id of the data API of its name
    that existed when it was recorded; events of a deleted earlier one get none."""
    from airflow_nx1_connect.core import store

    engine = engines.create_store_engine(store_url)
    try:
        store.migrate(engine, "0003_changes")
        at = dt.datetime(2026, 1, 10, tzinfo=dt.timezone.utc)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO nx1_data_apis (name, kind, created_at, updated_at) "
                    "VALUES ('weekly', 'ask', :t, :t), ('daily', 'ask', :t, :t)"
                ),
                {"t": at.replace(tzinfo=None) if engine.dialect.name == "sqlite" else at},
            )
            for days, name in ((-3, "weekly"), (-1, "weekly"), (0, "weekly"), (2, "daily")):
                when = at + dt.timedelta(days=days)
                conn.execute(
                    sa.text(
                        "INSERT INTO nx1_audit (at, actor, action, data_api) "
                        "VALUES (:at, 'x', 'create_key', :name)"
                    ),
                    {
                        "at": when.replace(tzinfo=None)
                        if engine.dialect.name == "sqlite"
                        else when,
                        "name": name,
                    },
                )
        store.migrate(engine)
        with engine.connect() as conn:
            apis = dict(conn.execute(sa.text("SELECT name, api_id FROM nx1_data_apis")).all())
            events = conn.execute(
                sa.text("SELECT data_api, data_api_id FROM nx1_audit ORDER BY at")
            ).all()
        assert len({*apis.values()}) == 2 and all(len(i) == 32 for i in apis.values())
        assert [tuple(e) for e in events] == [
            ("weekly", None),
            ("weekly", None),
            ("weekly", apis["weekly"]),
            ("daily", apis["daily"]),
        ]
    finally:
        engine.dispose()


def test_rotate_key(engine: Any) -> None:
    snaps.register_data_api(engine, name="sales", kind="ask", dag_id="d", task_id="t")
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    old = control.create_key(
        engine,
        data_api="sales",
        days=10,
        description="app",
        scopes=["run"],
        rate_limit=5,
        actor=ACTOR,
    )
    created, updated = control.rotate_key(engine, old.key.id, overlap_hours=3, actor=ACTOR)
    new = created.key
    assert (new.data_api, new.description, new.scopes, new.rate_limit, new.rotated_from) == (
        "sales",
        "app",
        ("read", "run"),
        5,
        old.key.id,
    )
    assert new.expires_at - new.created_at == dt.timedelta(days=10)
    assert (
        now + dt.timedelta(hours=3) <= updated.expires_at <= now + dt.timedelta(hours=3, seconds=5)
    )
    # Both work during the overlap; the old one is refused after it.
    keys.verify_key(engine, created.secret, "sales")
    keys.verify_key(engine, old.secret, "sales")
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=3, seconds=10)
    with pytest.raises(Exception, match="valid data API key"):
        keys.verify_key(engine, old.secret, "sales", now=later)
    keys.verify_key(engine, created.secret, "sales", now=later)

    # An overlap longer than the key's own life never extends it.
    short = control.create_key(engine, data_api="sales", days=1, actor=ACTOR)
    _new, kept = control.rotate_key(engine, short.key.id, overlap_hours=48, actor=ACTOR)
    assert kept.expires_at == short.key.expires_at
    # Default overlap 24 hours; a revoked key cannot be rotated; bad overlaps are refused.
    _n, day = control.rotate_key(engine, new.id, actor=ACTOR)
    assert (
        dt.timedelta(hours=23, minutes=59)
        < day.expires_at - now
        <= dt.timedelta(hours=24, seconds=5)
    )
    control.revoke_key(engine, old.key.id, actor=ACTOR)
    with pytest.raises(ValidationError, match="revoked"):
        control.rotate_key(engine, old.key.id, actor=ACTOR)
    for bad in (-1, "x", "1.5", 365 * 24 + 1):
        with pytest.raises(ValidationError, match="overlap"):
            control.rotate_key(engine, new.id, overlap_hours=bad, actor=ACTOR)

    events = audit.list_events(engine, key_id=old.key.id)
    assert [e.action for e in events] == ["revoke_key", "rotate_key", "create_key"]
    assert events[1].detail["new_key_id"] == new.id


def test_audit_never_keeps_a_secret_and_filters(engine: Any) -> None:
    snaps.register_data_api(engine, name="a", kind="ask", dag_id="d", task_id="t")
    created = control.create_key(engine, data_api="a", days=2, actor=ACTOR)
    audit.record(
        engine,
        actor=f"bob {created.secret}",
        action="extend_key",
        data_api="a",
        key_id=created.key.id,
        detail={"note": f"leaked {created.secret}", "list": [created.secret]},
    )
    with engine.connect() as conn:
        dump = str(conn.execute(sa.text("SELECT * FROM nx1_audit")).all())
    assert created.secret not in dump and "[redacted]" in dump
    assert len(audit.list_events(engine, limit=1)) == 1
    assert [e.action for e in audit.list_events(engine)] == ["extend_key", "create_key"]
    assert audit.list_events(engine, data_api="zzz") == []
    assert len(audit.list_events(engine, kinds=set())) == 0
    assert len(audit.list_events(engine, kinds={"engineer"})) == 0
    assert len(audit.list_events(engine, kinds={"ask"})) == 2
    with pytest.raises(ValidationError):
        audit.list_events(engine, limit=0)
    with pytest.raises(ValueError):
        audit.record(engine, actor="x", action="drop_everything")


def test_usage_is_read_per_key_and_day(engine: Any) -> None:
    snaps.register_data_api(engine, name="a", kind="ask", dag_id="d", task_id="t")
    one = keys.create_key(engine, data_api="a", days=30).key
    two = keys.create_key(engine, data_api="a", days=30).key
    today = dt.datetime.now(dt.timezone.utc).date()
    with engine.begin() as conn:
        conn.execute(
            key_usage_table.insert(),
            [
                {"key_id": one.id, "day": today, "requests": 5},
                {"key_id": one.id, "day": today - dt.timedelta(days=6), "requests": 7},
                {"key_id": one.id, "day": today - dt.timedelta(days=7), "requests": 100},
            ],
        )
    counts = usage.usage_for_keys(engine, [one.id, two.id])
    assert counts[one.id] == {"today": 5, "last_7_days": 12, "total": 112}
    assert counts[two.id] == {"today": 0, "last_7_days": 0, "total": 0}
    [item] = [k for k in control.key_dicts(engine, [one, two]) if k["key_id"] == one.id]
    assert item["usage"]["total"] == 112 and item["rotated_from"] is None


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------


@pytest.mark.slow  # runs the console script many times
def test_cli_apis_create_rotate_and_audit(store_env: str, engine: Any, rule_dags: Any) -> None:
    res = ok(
        "apis", "create", "weekly", "--kind", "engineer", "--dag", "bank", "--task", "metrics",
        "--description", "Metrics", "--key-days", "9",
    )  # fmt: skip
    assert KEY_LINE.match(res.stdout), res.stdout
    first = res.stdout.strip()
    key = keys.verify_key(engine, first, "weekly")
    assert key.expires_at - key.created_at == dt.timedelta(days=9)
    api = snaps.get_data_api(engine, "weekly")
    assert (api.kind, api.dag_id, api.task_id, api.description) == (
        "engineer",
        "bank",
        "metrics",
        "Metrics",
    )
    user_error(
        "apis", "create", "weekly", "--kind", "ask", "--dag", "x", "--task", "y",
        expect="already exists",
    )  # fmt: skip
    user_error(
        "apis", "create", "other", "--kind", "ask", "--dag", "x", "--task", "y",
        "--key-days", "0", expect="from 1 to",
    )  # fmt: skip
    # Only a real rule task of that kind publishing to that name (Airflow's serialized DAGs).
    user_error(
        "apis", "create", "other", "--kind", "ask", "--dag", "retail", "--task", "weekly",
        expect="publishes to data API 'weekly', not 'other'",
    )  # fmt: skip
    assert [a.name for a in snaps.list_data_apis(engine)] == ["weekly"]

    rotated = ok("keys", "rotate", key.id, "--overlap-hours", "1")
    assert KEY_LINE.match(rotated.stdout) and rotated.stdout.strip() != first
    new = keys.verify_key(engine, rotated.stdout.strip(), "weekly")
    assert new.rotated_from == key.id
    left = keys.get_key(engine, key.id).expires_at - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(minutes=58) < left <= dt.timedelta(hours=1)
    user_error("keys", "rotate", key.id, "--overlap-hours", "-3", expect="overlap")
    user_error("keys", "rotate", "0000000000000000", expect="No data API key")

    listed = json.loads(ok("keys", "list", "--json").stdout)
    assert {k["key_id"] for k in listed} == {key.id, new.id}
    assert all(set(k["usage"]) == {"today", "last_7_days", "total"} for k in listed)
    assert "USAGE" in ok("keys", "list").stdout

    ok("keys", "revoke", new.id)
    ok("apis", "delete", "weekly")
    events = json.loads(ok("audit", "list", "--json").stdout)
    assert [e["action"] for e in events] == [
        "delete_data_api",
        "revoke_key",
        "rotate_key",
        "create_data_api",
    ]
    assert {e["actor"] for e in events} == {f"cli:{getpass.getuser()}"}
    assert all(e["remote_addr"] is None for e in events)
    only = json.loads(ok("audit", "list", "--data-api", "weekly", "--json", "--limit", "1").stdout)
    assert [e["action"] for e in only] == ["delete_data_api"]
    table = ok("audit", "list").stdout
    assert table.splitlines()[0].split()[:3] == ["AT", "ACTOR", "ACTION"]
    user_error("audit", "list", "--limit", "0", expect="limit")
    everything = json.dumps(events) + table
    assert first not in everything and rotated.stdout.strip() not in everything
