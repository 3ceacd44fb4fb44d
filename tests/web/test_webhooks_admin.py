"""Webhooks on the control plane (`/nx1/api/v1/admin/webhooks`), on Airflow's real api-server
app in process (real tokens, real users of each role), both stores; and the delivery loop that
the plugin's FastAPI app starts with its lifespan."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from standardwebhooks import Webhook as Verifier

from airflow_nx1_connect.core import webhooks
from airflow_nx1_connect.core.settings import get_settings
from airflow_nx1_connect.core.webhooks import delivery
from tests.web import test_admin_api as _admin
from tests.webhook_receiver import Receiver

# The admin API tests' app, users, tokens and store (fixtures, shared by name).
api_app, tokens, client, store = _admin.api_app, _admin.tokens, _admin.client, _admin.store
ADMIN, _client, _problem, auth = _admin.ADMIN, _admin._client, _admin._problem, _admin.auth
HOOKS = f"{ADMIN}/webhooks"


@pytest.fixture
def private_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__WEBHOOK_ALLOW_PRIVATE_HOSTS", "True")
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__WEBHOOK_RETRY_DELAYS", "1")


def _drain(engine: Any) -> None:
    asyncio.run(delivery.Deliverer(lambda: engine, get_settings).run(once=True))


def test_create_list_test_deliveries_delete(
    client: Any, store: dict[str, Any], tokens: dict[str, str], private_ok: None
) -> None:
    asker = auth(tokens["asker"])
    with Receiver() as receiver:
        r = client.post(
            HOOKS,
            json={"data_api": "sales", "url": receiver.url, "description": "dashboard"},
            headers=asker,
        )
        assert r.status_code == 201, r.text
        created = r.json()
        assert set(created) == {
            "webhook_id",
            "data_api",
            "url",
            "description",
            "created_at",
            "secret",
        }
        secret = created["secret"]
        assert secret.startswith("whsec_") and len(webhooks.secret_bytes(secret)) >= 24
        assert (created["data_api"], created["url"], created["description"]) == (
            "sales",
            receiver.url,
            "dashboard",
        )
        hook_id = created["webhook_id"]
        public = {k: v for k, v in created.items() if k != "secret"}
        assert client.get(HOOKS, headers=asker).json() == [public]
        assert client.get(HOOKS, params={"data_api": "sales"}, headers=asker).json() == [public]
        assert client.get(f"{HOOKS}/{hook_id}", headers=asker).json() == public
        assert client.get(f"{HOOKS}/{hook_id}/deliveries", headers=asker).json() == []

        r = client.post(f"{HOOKS}/{hook_id}/test", headers=asker)
        assert r.status_code == 202, r.text
        event_id = r.json()["event_id"]
        [pending] = client.get(f"{HOOKS}/{hook_id}/deliveries", headers=asker).json()
        assert pending["status"] == "pending" and pending["type"] == "ping"
        assert pending["event_id"] == event_id and pending["attempts"] == 0
        _drain(store["engine"])
        [post] = receiver.wait_for(1)
    body = Verifier(secret).verify(post["body"], post["headers"])
    assert body["type"] == "ping" and body["data"] == {"webhook_id": hook_id}
    [done] = client.get(f"{HOOKS}/{hook_id}/deliveries", headers=asker).json()
    assert set(done) >= {
        "delivery_id",
        "event_id",
        "type",
        "at",
        "attempts",
        "status",
        "response_status",
        "error",
        "next_attempt_at",
    }
    assert (done["status"], done["attempts"], done["response_status"]) == ("delivered", 1, 204)
    assert done["error"] is None and done["next_attempt_at"] is None

    assert client.delete(f"{HOOKS}/{hook_id}", headers=asker).status_code == 204
    _problem(client.get(f"{HOOKS}/{hook_id}", headers=asker), 404)
    _problem(client.delete(f"{HOOKS}/{hook_id}", headers=asker), 404)

    events = client.get(f"{ADMIN}/audit", params={"data_api": "sales"}, headers=asker).json()
    actions = [(e["action"], e["actor"]) for e in events if "webhook" in e["action"]]
    assert actions == [
        ("delete_webhook", "asker"),
        ("test_webhook", "asker"),
        ("create_webhook", "asker"),
    ]
    assert all(e["detail"]["webhook_id"] == hook_id for e in events if "webhook" in e["action"])
    # The secret is never shown again: not in lists, deliveries or the audit trail.
    everything = client.get(f"{ADMIN}/audit", headers=auth(tokens["admin"])).text
    assert secret not in everything and secret[6:] not in everything


def test_permissions_follow_the_data_api_kind(
    client: Any, store: dict[str, Any], tokens: dict[str, str], private_ok: None
) -> None:
    body = {"data_api": "sales", "url": "http://127.0.0.1:9/x"}
    _problem(client.post(HOOKS, json=body), 401)
    _problem(client.post(HOOKS, json=body, headers=auth(store["key"])), 401)
    for user in ("viewer", "engineer"):
        _problem(client.post(HOOKS, json=body, headers=auth(tokens[user])), 403)
    hook_id = client.post(HOOKS, json=body, headers=auth(tokens["admin"])).json()["webhook_id"]
    engineer = auth(tokens["engineer"])
    assert client.get(HOOKS, headers=engineer).json() == []
    _problem(client.get(HOOKS, params={"data_api": "sales"}, headers=engineer), 403)
    for method, path in (
        ("GET", ""),
        ("DELETE", ""),
        ("GET", "/deliveries"),
        ("POST", "/test"),
    ):
        _problem(client.request(method, f"{HOOKS}/{hook_id}{path}", headers=engineer), 403)
        _problem(
            client.request(method, f"{HOOKS}/{hook_id}{path}", headers=auth(tokens["viewer"])), 403
        )
        _problem(client.request(method, f"{HOOKS}/{hook_id}{path}"), 401)
    # An engineer manages the webhooks of engineer data APIs.
    r = client.post(HOOKS, json={**body, "data_api": "metrics"}, headers=engineer)
    assert r.status_code == 201, r.text
    assert [w["data_api"] for w in client.get(HOOKS, headers=engineer).json()] == ["metrics"]
    assert len(client.get(HOOKS, headers=auth(tokens["admin"])).json()) == 2


def test_bad_requests_are_4xx_problems(
    client: Any, store: dict[str, Any], tokens: dict[str, str]
) -> None:
    admin = auth(tokens["admin"])
    # Private hosts are refused unless webhook_allow_private_hosts.
    for url in ("http://127.0.0.1:8080/x", "http://localhost/x", "http://169.254.169.254/"):
        detail = _problem(
            client.post(HOOKS, json={"data_api": "sales", "url": url}, headers=admin), 400
        )["detail"]
        assert "webhook_allow_private_hosts" in detail
    for body in (
        {"data_api": "sales", "url": "ftp://example.com/x"},
        {"data_api": "sales", "url": "not a url"},
        {"data_api": "sales"},
        {"data_api": "sales", "url": "https://example.com/x", "secret": "whsec_AAAA"},
        {"data_api": "Bad Name", "url": "https://example.com/x"},
    ):
        _problem(client.post(HOOKS, json=body, headers=admin), 400)
    _problem(
        client.post(
            HOOKS, json={"data_api": "nope", "url": "https://example.com/x"}, headers=admin
        ),
        404,
    )
    _problem(client.get(f"{HOOKS}/0123", headers=admin), 404)
    _problem(client.get(f"{HOOKS}/0123/deliveries", headers=admin), 404)
    _problem(client.post(f"{HOOKS}/0123/test", headers=admin), 404)
    r = client.put(HOOKS, headers=admin)
    assert _problem(r, 405) and set(r.headers["allow"].split(", ")) == {"GET", "POST"}
    assert webhooks.list_webhooks(store["engine"]) == []


def test_the_plugin_app_delivers_while_it_is_served(
    store: dict[str, Any], tokens: dict[str, str], private_ok: None, api_app: Any
) -> None:
    """The api-server enters the plugin app's lifespan: a deliverer runs beside it; a publish is
    pushed within seconds, and it stops with the app."""
    from airflow_nx1_connect.core import snapshots as snaps
    from airflow_nx1_connect.core import writer

    engine = store["engine"]
    with Receiver() as receiver:
        created = webhooks.create_webhook(
            engine, data_api="sales", url=receiver.url, allow_private=True
        )
        with _client(api_app) as served:  # runs the lifespans, as the api-server does
            assert served.get("/api/v2/monitor/health").status_code == 200
            # The api-server's delivery process is up once it has delivered a ping.
            webhooks.send_test(engine, created.webhook.id)
            receiver.wait_for(1, timeout=90)
            started = time.monotonic()
            snap = writer.write_snapshot(
                engine, data_api="sales", columns=[snaps.Column("id", "INTEGER")], batches=[[(5,)]]
            )
            [_ping, post] = receiver.wait_for(2, timeout=10)
            latency = time.monotonic() - started
        # The app has shut down, and its delivery process with it: nothing is pushed now.
        writer.write_snapshot(
            engine, data_api="sales", columns=[snaps.Column("id", "INTEGER")], batches=[[(6,)]]
        )
        time.sleep(3)
        assert len(receiver.posts) == 2
        body = Verifier(created.secret).verify(post["body"], post["headers"])
    assert body["data"]["snapshot"]["id"] == snap.id and latency < 10
