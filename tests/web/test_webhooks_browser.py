"""End to end in headless Chromium: an admin subscribes a real loopback receiver to a data API
in the Airflow UI (the secret shown once), sends a test ping that the receiver first refuses,
publishes twice, and reads the deliveries page: every push verified with `standardwebhooks`
against the secret the page showed, the refused ping retried with the same `webhook-id`.
A second webhook to a dead receiver shows as retrying in the webhooks list. Uses
`test_admin_browser`'s api-server (private hosts allowed, retries after 2 s then 10 min).

`NX1_UPDATE_SCREENSHOTS=1` refreshes docs/img/nx1-webhook-deliveries.png (docs/webhooks.md's).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import pytest
from standardwebhooks import Webhook as Verifier

from airflow_nx1_connect.core import engines, webhooks, writer
from airflow_nx1_connect.core import snapshots as snaps
from tests.api_server import free_port
from tests.web import test_admin_browser as browser_env
from tests.web.helpers import open_nx1
from tests.web.test_admin_browser import API, CHROMIUM, CHROMIUM_ARGS, IMG, PASSWORD, Server
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

server = browser_env.server  # the module's running api-server (fixture)
DELIVERIES_PAGE = re.compile(r"/nx1connect/webhooks/[0-9a-f]{32}/$")


def _publish(store_url: str, rows: list[tuple[str, int]]) -> str:
    engine = engines.create_store_engine(store_url)
    try:
        cols = [snaps.Column("product", "TEXT"), snaps.Column("units", "INTEGER")]
        return writer.write_snapshot(engine, data_api=API, columns=cols, batches=[rows]).id
    finally:
        engine.dispose()


def test_admin_subscribes_a_receiver_and_reads_its_deliveries(server: Server) -> None:
    from playwright.sync_api import expect, sync_playwright

    IMG.mkdir(parents=True, exist_ok=True)
    engine = engines.create_store_engine(server.store_url)
    dead_url = f"http://127.0.0.1:{free_port()}/partner"  # nothing listens there
    dead = webhooks.create_webhook(
        engine, data_api=API, url=dead_url, description="Partner feed", allow_private=True
    )
    # The first POST it gets (the ping) answers 503; every later one 204.
    with Receiver(statuses=[503, 204]) as receiver, sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = chromium.new_context(viewport={"width": 1440, "height": 760})
            context.set_default_timeout(30_000)
            page = context.new_page()
            frame = open_nx1(page, server.url, browser_env.ADMIN, PASSWORD)
            frame.get_by_role("link", name="Webhooks", exact=True).click()
            expect(frame.locator("#nx1-webhooks")).to_be_visible()

            # Create: the secret is shown once, on the page after the form.
            frame.locator("#nx1-new-webhook").click()
            frame.locator("#data_api").select_option(API)
            frame.locator("#url").fill(receiver.url)
            frame.locator("#description").fill("Dashboard cache")
            frame.locator("#nx1-create").click()
            expect(frame.get_by_text("you will not see it again")).to_be_visible()
            secret = frame.locator("#nx1-webhook-secret").input_value()
            assert secret.startswith("whsec_")
            frame.locator("#nx1-done").click()
            expect(frame.get_by_text("No delivery yet")).to_be_visible()

            # Send test: the receiver refuses the ping once; it comes again 2 s later.
            frame.locator("#nx1-send-test").click()
            expect(frame.locator("#nx1-deliveries tbody tr")).to_have_count(1)
            receiver.wait_for(1, timeout=60)
            published = [
                _publish(server.store_url, [("Espresso", 131), ("Bagel", 102)]),
                _publish(server.store_url, [("Espresso", 140), ("Croissant", 97)]),
            ]
            posts = receiver.wait_for(4, timeout=60)  # ping twice, two publishes

            # Reload the deliveries page (inside the UI's iframe) until all three are delivered.
            inner = next(f for f in page.frames if DELIVERIES_PAGE.search(f.url))
            deliveries_url = inner.url
            deadline = time.monotonic() + 60
            while True:
                inner.goto(deliveries_url)
                statuses = frame.locator("#nx1-deliveries .nx1-delivery-status")
                expect(statuses).to_have_count(3)
                if statuses.all_inner_texts() == ["delivered"] * 3:
                    break
                assert time.monotonic() < deadline, statuses.all_inner_texts()
                time.sleep(0.5)
            rows = frame.locator("#nx1-deliveries tbody tr")
            ping = rows.filter(has_text="ping")
            expect(ping.locator(".nx1-attempts")).to_have_text("2")
            expect(ping.locator(".nx1-response")).to_have_text("204")
            expect(rows.filter(has_text="snapshot.published")).to_have_count(2)
            page.screenshot(path=str(IMG / "nx1-webhook-deliveries.png"))

            # The list: the receiver's last delivery delivered, the dead one's retrying.
            frame.get_by_role("link", name="All webhooks").click()
            listed = frame.locator("#nx1-webhooks tbody tr")
            expect(listed.filter(has_text="Dashboard cache").locator(".nx1-last")).to_contain_text(
                "delivered"
            )
            expect(listed.filter(has_text="Partner feed").locator(".nx1-last")).to_contain_text(
                "retrying"
            )
        finally:
            chromium.close()

    # Every push verifies with the secret the page showed; the refused ping was sent again
    # with the same webhook-id; each publish was pushed once, with its snapshot.
    verifier = Verifier(secret)
    events = [verifier.verify(p["body"], p["headers"]) for p in posts]
    assert events[0]["type"] == "ping"
    ids = Counter(p["headers"]["webhook-id"] for p in posts)
    assert sorted(ids.values()) == [1, 1, 2] and ids[posts[0]["headers"]["webhook-id"]] == 2, ids
    pushed = [e["data"]["snapshot"]["id"] for e in events if e["type"] == "snapshot.published"]
    assert sorted(pushed) == sorted(published)
    [last] = [e for e in events if e["data"].get("snapshot", {}).get("id") == published[1]]
    assert last["data"]["previous_snapshot_id"] == published[0]
    assert json.loads(posts[-1]["body"])  # the raw body is the signed JSON
    dead_rows = webhooks.list_deliveries(engine, dead.webhook.id)
    assert {row["status"] for row in dead_rows} == {"retrying"}
    assert all(row["response_status"] is None and row["error"] for row in dead_rows)
    engine.dispose()
