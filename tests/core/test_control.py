"""The control plane's core (core.control, core.audit, key rotation, usage reads) on real
SQLite and PostgreSQL stores, and the CLI commands built on it (apis create, keys rotate,
audit list) through the installed console script."""

from __future__ import annotations

import datetime as dt
import getpass
import json
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_nx1_connect.core import audit, control, keys, usage, writer
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.errors import (
    Conflict,
    RuleError,
    SnapshotNotFound,
    ValidationError,
)
from airflow_nx1_connect.core.store import key_usage as key_usage_table
from tests.test_cli import KEY_LINE, ok, user_error

ACTOR = control.Actor("alice", "10.0.0.7")


def test_create_data_api_ahead_of_first_run(engine: Any) -> None:
    api, created = control.create_data_api(
        engine,
        name="weekly",
        kind="ask",
        dag_id="retail",
        task_id="weekly",
        description="  Weekly top  ",
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
            engine, name="weekly", kind="ask", dag_id="x", task_id="y", actor=ACTOR
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
        control.create_data_api(engine, actor=ACTOR, **args)
    assert info.value.field == field
    assert snaps.list_data_apis(engine) == [] and audit.list_events(engine) == []


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
    assert len(audit.list_events(engine, only_data_apis=set())) == 0
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


def test_cli_apis_create_rotate_and_audit(store_env: str, engine: Any) -> None:
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
