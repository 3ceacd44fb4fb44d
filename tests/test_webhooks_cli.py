"""`nx1-connect webhooks ...` through the installed console script, on both stores."""

from __future__ import annotations

import json
from typing import Any

import pytest
from standardwebhooks import Webhook as Verifier

from airflow_nx1_connect.core import audit, webhooks, writer
from airflow_nx1_connect.core import snapshots as snaps
from tests.test_cli import nx1, ok, user_error
from tests.webhook_receiver import Receiver


@pytest.fixture
def api(engine: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__WEBHOOK_ALLOW_PRIVATE_HOSTS", "True")
    snaps.register_data_api(engine, name="sales", kind="ask", dag_id="d", task_id="t")
    return engine


def test_create_list_test_deliver_deliveries_delete(api: Any) -> None:
    with Receiver() as receiver:
        res = ok("webhooks", "create", "--data-api", "sales", "--url", receiver.url,
                 "--description", "board")  # fmt: skip
        secret = res.stdout.strip()
        assert res.stdout == secret + "\n" and secret.startswith("whsec_")
        assert "not shown again" in res.stderr
        [listed] = json.loads(ok("webhooks", "list", "--json").stdout)
        assert set(listed) == {"webhook_id", "data_api", "url", "description", "created_at"}
        assert (listed["data_api"], listed["url"], listed["description"]) == (
            "sales",
            receiver.url,
            "board",
        )
        hook_id = listed["webhook_id"]
        assert hook_id in res.stderr
        table = ok("webhooks", "list", "--data-api", "sales").stdout
        assert hook_id in table and secret not in table
        ok("webhooks", "test", hook_id)
        writer.write_snapshot(
            api, data_api="sales", columns=[snaps.Column("id", "INTEGER")], batches=[[(1,)]]
        )
        [pending, _ping] = json.loads(ok("webhooks", "deliveries", hook_id, "--json").stdout)
        assert pending["status"] == "pending" and pending["type"] == "snapshot.published"
        done = ok("webhooks", "deliver", "--once")
        assert done.stdout == "" and "2 attempt(s)" in done.stderr
        posts = receiver.wait_for(2)
    assert {Verifier(secret).verify(p["body"], p["headers"])["type"] for p in posts} == {
        "ping",
        "snapshot.published",
    }
    rows = json.loads(ok("webhooks", "deliveries", hook_id, "--json").stdout)
    assert [(r["status"], r["attempts"], r["response_status"]) for r in rows] == [
        ("delivered", 1, 204),
        ("delivered", 1, 204),
    ]
    assert "delivered" in ok("webhooks", "deliveries", hook_id).stdout
    ok("webhooks", "delete", hook_id)
    assert json.loads(ok("webhooks", "list", "--json").stdout) == []
    actions = [e.action for e in audit.list_events(api, data_api="sales")][:3]
    assert actions == ["delete_webhook", "test_webhook", "create_webhook"]
    for res in (done,):
        assert secret not in res.stderr


def test_user_errors_exit_1_with_one_line(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    user_error("webhooks", "create", "--data-api", "nope", "--url", "https://x.example/",
               expect="nope")  # fmt: skip
    user_error("webhooks", "create", "--data-api", "sales", "--url", "ftp://x.example/",
               expect="http")  # fmt: skip
    user_error("webhooks", "delete", "0123", expect="0123")
    user_error("webhooks", "test", "0123", expect="0123")
    user_error("webhooks", "deliveries", "0123", expect="0123")
    user_error("webhooks", "list", "--data-api", "nope", expect="nope")
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__WEBHOOK_ALLOW_PRIVATE_HOSTS", "False")
    user_error("webhooks", "create", "--data-api", "sales", "--url", "http://127.0.0.1:1/",
               expect="webhook_allow_private_hosts")  # fmt: skip
    assert webhooks.list_webhooks(api) == []
    assert "deliver" in nx1("webhooks", "--help").stdout
