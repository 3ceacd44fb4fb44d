"""End to end in headless Chromium: log in to a real api-server, make a key, use it, rotate and
revoke it, create a data API, read the audit trail; the view shows no second navbar.

One `airflow api-server` per module (fresh AIRFLOW_HOME, `airflow db migrate`, FAB auth
manager with its default database session backend, an Admin made with `airflow users
create`). Debian's chromium is driven by Playwright (never `playwright install`). The
screenshots of docs/admin.md are refreshed with `NX1_UPDATE_SCREENSHOTS=1 make test`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from airflow_nx1_connect.core import engines, writer
from tests.api_server import running_api_server
from tests.rule_dags import serialize, write_rule_dags
from tests.web.helpers import CHROMIUM, CHROMIUM_ARGS, open_nx1

pytestmark = pytest.mark.slow

#: Screenshots go to docs/img/ (docs/admin.md's) only when NX1_UPDATE_SCREENSHOTS=1, so a
#: normal test run leaves the tracked images alone; otherwise to a temporary folder.
IMG = (
    Path(__file__).resolve().parents[2] / "docs" / "img"
    if os.environ.get("NX1_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.mkdtemp(prefix="nx1-screens-"))
)
ADMIN, PASSWORD = "admin", "admin-pass-1"
USER_NAMES = ("-f", "Ada", "-l", "Admin", "-e", "admin@example.com")
API = "weekly_top_product"


@dataclass
class Server:
    url: str
    log: Path
    store_url: str


def _record_usage(store_url: str, key_id: str | None, *, counts: dict[int, int]) -> None:
    """Usage rows as the serving path flushes them (requests per key and UTC day).

    `counts`: days ago -> requests; past days only, so rows the server itself flushes for
    today (where request counting is on) never clash with these.
    """
    import datetime as dt

    from airflow_nx1_connect.core import store

    assert key_id
    engine = engines.create_store_engine(store_url)
    day = dt.datetime.now(dt.timezone.utc).date()
    try:
        with engine.begin() as conn:
            conn.execute(
                store.key_usage.insert(),
                [
                    {"key_id": key_id, "day": day - dt.timedelta(days=ago), "requests": n}
                    for ago, n in counts.items()
                ],
            )
    finally:
        engine.dispose()


def _populate(store_url: str) -> None:
    from airflow_nx1_connect.core import snapshots as snaps
    from airflow_nx1_connect.core import store

    engine = engines.create_store_engine(store_url)
    try:
        store.migrate(engine)
        snaps.register_data_api(
            engine,
            name=API,
            kind="ask",
            description="Best-selling product of the week",
            question="Which product sold most this week?",
            dag_id="retail_insights",
            task_id="top_product",
        )
        snaps.register_data_api(
            engine,
            name="compliance_metrics",
            kind="engineer",
            description="Daily compliance metrics per account",
            dag_id="bank_compliance",
            task_id="metrics",
        )
        cols = [snaps.Column("product", "TEXT"), snaps.Column("units", "INTEGER")]
        rows = [("Espresso", 120), ("Bagel", 98), ("Croissant", 75), ("Flat white", 64)]
        writer.write_snapshot(
            engine, data_api=API, columns=cols, batches=[rows], run_id="scheduled__2026-11-16"
        )
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A running `airflow api-server` with the plugin and an Admin user."""
    home = tmp_path_factory.mktemp("airflow-home-browser")
    # The rule task the test binds a data API to (serialized below).
    write_rule_dags(home / "dags", {("retail_daily", "daily_sales"): ("ask", "daily_sales")})
    store_url = f"sqlite:///{home / 'nx1_store.db'}"
    _populate(store_url)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
        ),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": store_url,
        # test_webhooks_browser's receivers listen on loopback; a failed push is retried
        # after 2 s once, then after 10 minutes.
        "AIRFLOW__NX1_CONNECT__WEBHOOK_ALLOW_PRIVATE_HOSTS": "True",
        "AIRFLOW__NX1_CONNECT__WEBHOOK_RETRY_DELAYS": "2,600",
    }
    env.pop("AIRFLOW__FAB__SESSION_BACKEND", None)  # the default: database
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run(
        [*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300
    )
    serialize(env)
    subprocess.run(
        [*airflow, "users", "create", "-u", ADMIN, "-p", PASSWORD, "-r", "Admin", *USER_NAMES],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    with running_api_server(env, home) as (url, log):
        yield Server(url, log, store_url)


def test_admin_creates_uses_and_revokes_a_key(server: Server) -> None:
    from playwright.sync_api import expect, sync_playwright

    IMG.mkdir(parents=True, exist_ok=True)
    latest = f"{server.url}/nx1/api/v1/data-apis/{API}/latest"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
            context.set_default_timeout(30_000)
            page = context.new_page()

            # Log in through Airflow's own login form; NX1 Connect opens inside the UI.
            frame = open_nx1(page, server.url, ADMIN, PASSWORD)
            expect(frame.locator("#nx1-data-apis")).to_be_visible()
            # Inside the Airflow UI: Airflow's sidebar and our page, no second (FAB) navbar.
            assert frame.locator(".navbar").count() == 0
            expect(frame.locator("#nx1-standalone")).to_be_hidden()
            expect(page.get_by_text("NX1 Connect", exact=True).first).to_be_visible()  # sidebar
            frame_box = page.locator("iframe").first.bounding_box()
            tabs_box = frame.locator(".nx1 .nav-tabs").bounding_box()
            assert frame_box is not None and tabs_box is not None
            assert tabs_box["y"] - frame_box["y"] < 40, (frame_box, tabs_box)  # tabs on top
            row = frame.locator(f'tr[data-name="{API}"]')
            expect(row.locator(".nx1-status")).to_have_text("live")
            expect(row.locator(".nx1-rows")).to_have_text("4")
            page.screenshot(path=str(IMG / "nx1-data-apis.png"))

            # Create a key: pick the data API, describe it, 30 days.
            row.get_by_role("link", name="Create key").click()
            expect(frame.locator("#nx1-create-key")).to_be_visible()
            expect(frame.locator("#data_api")).to_have_value(API)
            frame.locator("#description").fill("Retail dashboard")
            frame.locator("#days").fill("30")
            frame.locator("#may_run").check()
            frame.locator("#rate_limit").fill("600")
            frame.locator("#nx1-create").click()
            expect(frame.get_by_text("you will not see it again")).to_be_visible()
            shown = frame.locator("#nx1-key").input_value()
            assert shown.startswith("nx1_")
            frame.locator("#nx1-copy").click()
            expect(frame.locator("#nx1-copied")).to_be_visible()
            copied = page.evaluate("navigator.clipboard.readText()")
            assert copied == shown
            page.screenshot(path=str(IMG / "nx1-key-created.png"))

            # The copied key reads the data API.
            ok = httpx.get(latest, headers={"Authorization": f"Bearer {copied}"}, timeout=30)
            assert ok.status_code == 200, ok.text
            assert ok.json()["data"]["data"][0] == ["Espresso", 120]

            # The keys list shows it (prefix only); revoke it there.
            frame.locator("#nx1-done").click()
            key_row = frame.locator("#nx1-keys tbody tr").filter(has_text="Retail dashboard")
            expect(key_row.locator(".nx1-status")).to_contain_text("active")
            expect(key_row.locator(".nx1-scopes")).to_contain_text("run")
            expect(key_row.locator(".nx1-rate-limit")).to_have_text("600/min")
            key_id = key_row.get_attribute("data-key-id")
            _record_usage(server.store_url, key_id, counts={1: 3, 2: 9, 20: 50})
            frame.locator(".nav-tabs a", has_text="API keys").click()
            key_row = frame.locator(f'tr[data-key-id="{key_id}"]')
            # Wait for the reloaded page: the old one's row shows only today's requests.
            expect(key_row.locator(".nx1-usage-week")).to_have_text(re.compile(r"^[1-9][0-9]+$"))
            # The last 7 days: the 12 requests recorded (the one of 20 days ago is older),
            # plus today's, where the server counts them.
            today = int(key_row.locator(".nx1-usage-today").inner_text())
            assert int(key_row.locator(".nx1-usage-week").inner_text()) == 12 + today
            assert copied not in frame.locator("body").inner_text()
            page.screenshot(path=str(IMG / "nx1-keys.png"))

            # Rotate it: a new key (shown once); the old one works for the overlap.
            key_row.locator("summary", has_text="Rotate").click()
            key_row.locator("input[name=overlap_hours]").fill("1")
            key_row.get_by_role("button", name="Confirm rotate").click()
            expect(frame.locator("#nx1-rotated")).to_be_visible()
            rotated = frame.locator("#nx1-key").input_value()
            assert rotated.startswith("nx1_") and rotated != copied
            page.screenshot(path=str(IMG / "nx1-key-rotated.png"))
            for secret in (rotated, copied):
                both = httpx.get(latest, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
                assert both.status_code == 200, both.text
            frame.locator("#nx1-done").click()
            key_row = frame.locator(f'tr[data-key-id="{key_id}"]')
            expect(key_row.locator(".nx1-expires")).to_contain_text(
                re.compile(r"expires in (1 hour|60 minutes|59 minutes)")
            )
            key_row.locator("summary", has_text="Revoke").click()
            key_row.get_by_role("button", name="Confirm revoke").click()
            expect(key_row.locator(".nx1-status")).to_contain_text("revoked")

            refused = httpx.get(latest, headers={"Authorization": f"Bearer {copied}"}, timeout=30)
            assert refused.status_code == 401

            # Create a data API ahead of its rule's first run; its first key is shown once.
            frame.locator(".nav-tabs a", has_text="Create data API").click()
            expect(frame.locator("#nx1-create-api")).to_be_visible()
            frame.locator("#name").fill("daily_sales")
            frame.locator("#kind").select_option("ask")
            frame.locator("#dag_id").fill("retail_daily")
            frame.locator("#task_id").fill("daily_sales")
            frame.locator("#description").fill("Sales per store and day")
            frame.locator("#key_days").fill("90")
            page.screenshot(path=str(IMG / "nx1-create-data-api.png"))
            frame.locator("#nx1-create-api-submit").click()
            # The server asks Airflow whether the task is that rule (the first time: seconds).
            expect(frame.locator("#nx1-api-created")).to_be_visible(timeout=120_000)
            first = frame.locator("#nx1-key").input_value()
            empty = httpx.get(
                f"{server.url}/nx1/api/v1/data-apis/daily_sales/latest",
                headers={"Authorization": f"Bearer {first}"},
                timeout=30,
            )
            assert empty.status_code == 404 and "no published snapshot" in empty.json()["detail"]

            # The Audit page shows every action, by the logged-in user, never a secret.
            frame.locator(".nav-tabs a", has_text="Audit").click()
            audit = frame.locator("#nx1-audit")
            expect(audit).to_be_visible()
            actions = audit.locator("tbody .nx1-action").all_inner_texts()
            assert actions == ["create_data_api", "revoke_key", "rotate_key", "create_key"]
            assert set(audit.locator("tbody .nx1-actor").all_inner_texts()) == {ADMIN}
            text = frame.locator("body").inner_text()
            assert all(secret not in text for secret in (first, rotated, copied))
            page.screenshot(path=str(IMG / "nx1-audit.png"))

            # Opened directly (not in the Airflow UI's frame), a header links back to Airflow.
            page.goto(f"{server.url}/pluginsv2/nx1connect/")
            expect(page.locator("#nx1-standalone")).to_be_visible()
            expect(page.locator("#nx1-data-apis")).to_be_visible()
            assert page.locator(".navbar").count() == 0
            for name in (
                "nx1-data-apis.png",
                "nx1-key-created.png",
                "nx1-keys.png",
                "nx1-key-rotated.png",
                "nx1-create-data-api.png",
                "nx1-audit.png",
            ):
                assert (IMG / name).stat().st_size > 10_000, name
        finally:
            browser.close()
