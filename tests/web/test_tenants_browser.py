"""End to end in headless Chromium: an admin makes a tenant-scoped key in the Airflow UI (the
create-key form's filter builder and column checkboxes), the app reads only its rows and
columns, and the keys list shows the policy. Uses `test_admin_browser`'s api-server.

`NX1_UPDATE_SCREENSHOTS=1` refreshes docs/img/nx1-key-policy.png (docs/tenants.md's).
"""

from __future__ import annotations

import httpx
import pytest

from tests.web import test_admin_browser as browser_env
from tests.web.helpers import open_nx1
from tests.web.test_admin_browser import API, CHROMIUM, CHROMIUM_ARGS, IMG, PASSWORD, Server

pytestmark = pytest.mark.slow

server = browser_env.server  # the module's running api-server (fixture)


def test_admin_makes_a_scoped_key_in_the_ui(server: Server) -> None:
    from playwright.sync_api import expect, sync_playwright

    IMG.mkdir(parents=True, exist_ok=True)
    latest = f"{server.url}/nx1/api/v1/data-apis/{API}/latest"
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = chromium.new_context(viewport={"width": 1440, "height": 1000})
            context.set_default_timeout(30_000)
            page = context.new_page()
            frame = open_nx1(page, server.url, browser_env.ADMIN, PASSWORD)
            frame.locator(f'tr[data-name="{API}"]').get_by_role("link", name="Create key").click()
            expect(frame.locator("#nx1-policy")).to_be_visible()

            # Switching the data API and back rebuilds the builder from its columns.
            frame.locator("#data_api").select_option("compliance_metrics")
            expect(frame.locator("#nx1-columns input")).to_have_count(0)
            frame.locator("#data_api").select_option(API)
            expect(frame.locator("#nx1-columns input")).to_have_count(2)

            frame.locator("#description").fill("Partner: big sellers, products only")
            frame.locator("#days").fill("30")
            terms = frame.locator(".nx1-term")
            terms.nth(0).locator(".nx1-term-column").select_option("units")
            terms.nth(0).locator(".nx1-term-op").select_option("gte")
            terms.nth(0).locator(".nx1-term-value").fill("70")
            terms.nth(1).locator(".nx1-term-column").select_option("product")
            terms.nth(1).locator(".nx1-term-op").select_option("ne")
            terms.nth(1).locator(".nx1-term-value").fill("Bagel")
            frame.locator('#nx1-columns input[value="product"]').check()
            expect(frame.locator("#limit_columns")).to_be_checked()
            frame.locator("#nx1-policy").scroll_into_view_if_needed()
            page.screenshot(path=str(IMG / "nx1-key-policy.png"))

            frame.locator("#nx1-create").click()
            expect(frame.get_by_text("you will not see it again")).to_be_visible()
            secret = frame.locator("#nx1-key").input_value()
            answer = httpx.get(latest, headers={"X-API-Key": secret}, timeout=30)
            assert answer.status_code == 200, answer.text
            data = answer.json()["data"]
            assert data["columns"] == ["product"]
            assert data["data"] == [["Espresso"], ["Croissant"]]  # units >= 70, not Bagel
            assert answer.json()["snapshot"]["row_count"] is None
            hidden = httpx.get(f"{latest}?sort=-units", headers={"X-API-Key": secret}, timeout=30)
            assert hidden.status_code == 400

            frame.locator("#nx1-done").click()
            row = frame.locator("#nx1-keys tbody tr").filter(has_text="Partner: big sellers")
            expect(row.locator(".nx1-policy")).to_contain_text("units=gte.70")
            expect(row.locator(".nx1-policy")).to_contain_text("product=ne.Bagel")
            expect(row.locator(".nx1-policy")).to_contain_text("columns product")
        finally:
            chromium.close()
