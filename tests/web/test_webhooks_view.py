"""The admin view's Webhooks pages (`/pluginsv2/nx1connect/webhooks/`) on the real api-server
app in process, with users logged in through Airflow's login form; both stores."""

from __future__ import annotations

import asyncio
import html
from typing import Any

import pytest
from standardwebhooks import Webhook as Verifier

from airflow_nx1_connect.core import audit, webhooks
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.settings import get_settings
from airflow_nx1_connect.core.webhooks import delivery
from tests.web import test_admin_view as _view
from tests.webhook_receiver import Receiver

# The admin view tests' app and logged-in clients (fixtures, shared by name).
api_app, clients = _view.api_app, _view.clients
_csrf = _view._csrf
PAGES = f"{_view.BASE}/webhooks"


@pytest.fixture
def apis(engine: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__WEBHOOK_ALLOW_PRIVATE_HOSTS", "True")
    snaps.register_data_api(engine, name="sales", kind="ask", dag_id="d", task_id="s")
    snaps.register_data_api(engine, name="metrics", kind="engineer", dag_id="d", task_id="m")
    return engine


def _create(client: Any, data_api: str, url: str) -> Any:
    form = client.get(f"{PAGES}/new")
    assert form.status_code == 200, form.text[:300]
    return client.post(
        f"{PAGES}/new",
        data={
            "data_api": data_api,
            "url": url,
            "description": "board",
            "csrf_token": _csrf(form.text),
        },
    )


def test_create_test_see_deliveries_delete(apis: Any, clients: dict[str, Any]) -> None:
    asker = clients["asker"]
    with Receiver() as receiver:
        created = _create(asker, "sales", receiver.url)
        assert created.status_code == 201, created.text[:500]
        assert created.headers["cache-control"] == "no-store"
        secret = html.unescape(
            created.text.split('id="nx1-webhook-secret" value="', 1)[1].split('"', 1)[0]
        )
        assert secret.startswith("whsec_")
        [hook] = webhooks.list_webhooks(apis)
        listing = asker.get(f"{PAGES}/")
        assert listing.status_code == 200 and hook.url in listing.text
        assert secret not in listing.text
        page = asker.get(f"{PAGES}/{hook.id}/")
        assert page.status_code == 200 and "No delivery yet" in page.text
        sent = asker.post(f"{PAGES}/{hook.id}/test", data={"csrf_token": _csrf(page.text)})
        assert sent.status_code in (302, 303)
        assert 'nx1-delivery-status">pending' in asker.get(f"{PAGES}/{hook.id}/").text
        asyncio.run(delivery.Deliverer(lambda: apis, get_settings).run(once=True))
        [post] = receiver.wait_for(1)
    assert Verifier(secret).verify(post["body"], post["headers"])["type"] == "ping"
    page = asker.get(f"{PAGES}/{hook.id}/")
    assert 'nx1-delivery-status">delivered' in page.text
    assert '<td class="nx1-response">204</td>' in page.text
    assert '<td class="nx1-attempts">1</td>' in page.text
    assert secret not in page.text
    gone = asker.post(f"{PAGES}/{hook.id}/delete", data={"csrf_token": _csrf(page.text)})
    assert gone.status_code in (302, 303)
    assert webhooks.list_webhooks(apis) == []
    actions = [e.action for e in audit.list_events(apis, data_api="sales")]
    assert actions[:3] == ["delete_webhook", "test_webhook", "create_webhook"]
    assert {e.actor for e in audit.list_events(apis, data_api="sales")} == {"asker"}


def test_permissions_and_bad_input(apis: Any, clients: dict[str, Any]) -> None:
    hook = webhooks.create_webhook(
        apis, data_api="sales", url="http://127.0.0.1:9/x", allow_private=True
    ).webhook
    engineer, viewer = clients["engineer"], clients["viewer"]
    assert hook.url not in engineer.get(f"{PAGES}/").text
    assert engineer.get(f"{PAGES}/{hook.id}/").status_code == 403
    page = engineer.get(f"{PAGES}/")
    token = _csrf(page.text)
    assert engineer.post(f"{PAGES}/{hook.id}/test", data={"csrf_token": token}).status_code == 403
    assert engineer.post(f"{PAGES}/{hook.id}/delete", data={"csrf_token": token}).status_code == 403
    assert _create(engineer, "sales", "http://127.0.0.1:9/y").status_code == 403
    assert viewer.get(f"{PAGES}/").status_code == 403
    assert clients["anonymous"].get(f"{PAGES}/").status_code in (302, 303)
    # CSRF: a POST without the token is refused with 400.
    assert clients["admin"].post(f"{PAGES}/{hook.id}/delete").status_code == 400
    assert clients["admin"].get(f"{PAGES}/0123/").status_code == 404
    # A private host when they are not allowed; a URL that is not http(s).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__NX1_CONNECT__WEBHOOK_ALLOW_PRIVATE_HOSTS", "False")
        refused = _create(clients["admin"], "metrics", "http://10.0.0.8/hook")
        assert refused.status_code == 400 and "webhook_allow_private_hosts" in refused.text
    assert _create(clients["admin"], "metrics", "ftp://example.com/").status_code == 400
    assert [w.id for w in webhooks.list_webhooks(apis)] == [hook.id]
