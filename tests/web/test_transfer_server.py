"""Arrow, gzip and CORS through a real `airflow api-server`, at both mounts.

CORS is checked from a real browser: headless Chromium (Debian's, driven by Playwright)
opens a page served from another origin and `fetch()`es the data API with the key header;
it succeeds from the allowed origin and is blocked from any other. Whole-snapshot streams
under `/pluginsv2` are answered by the plugin's root middleware (`web.streams`) and must
be byte-identical to the `/nx1` ones.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pyarrow.ipc
import pytest

from tests.api_server import free_port, running_api_server
from tests.web.helpers import CHROMIUM, CHROMIUM_ARGS, MOUNTS, SALES_ROWS, populate_sales_store

pytestmark = pytest.mark.slow

PAGE = b"<!doctype html><html><body><h1>dashboard</h1></body></html>"


@dataclass
class Setup:
    url: str
    key: str
    allowed: str
    refused: str


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: object) -> None:
        pass


def _page_server() -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("airflow-home-transfer")
    store_url = f"sqlite:///{home / 'nx1_store.db'}"
    secret, _ = populate_sales_store(store_url)
    allowed_server, allowed = _page_server()
    refused_server, refused = _page_server()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
        ),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": store_url,
        "AIRFLOW__NX1_CONNECT__CORS_ALLOWED_ORIGINS": allowed,
    }
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run(
        [*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300
    )
    try:
        with running_api_server(env, home) as (url, _log):
            yield Setup(url, secret, allowed, refused)
    finally:
        allowed_server.shutdown()
        refused_server.shutdown()


FETCH = """async ([url, key]) => {
  try {
    const r = await fetch(url, {headers: {"X-API-Key": key}});
    const body = await r.json();
    return {ok: true, status: r.status, etag: r.headers.get("ETag"),
            first: body.data.data[0][0]};
  } catch (e) {
    return {ok: false, error: String(e)};
  }
}"""


def test_browser_fetch_from_another_origin(setup: Setup) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            for mount in MOUNTS:
                url = f"{setup.url}{mount}/data-apis/sales/latest?limit=2"
                page.goto(setup.allowed)
                got = page.evaluate(FETCH, [url, setup.key])
                assert got["ok"], (mount, got)
                assert got["status"] == 200
                assert got["first"] == 1
                assert got["etag"], "ETag is exposed to the page"

                page.goto(setup.refused)
                blocked = page.evaluate(FETCH, [url, setup.key])
                assert not blocked["ok"], (mount, blocked)
                assert "Failed to fetch" in blocked["error"]
        finally:
            browser.close()


def test_preflight_alike_on_both_mounts(setup: Setup) -> None:
    headers = {
        "Origin": setup.allowed,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-api-key",
    }
    answers = [
        httpx.options(f"{setup.url}{m}/data-apis/sales/latest", headers=headers) for m in MOUNTS
    ]
    for r in answers:
        assert r.status_code == 204, r.text
        assert r.headers["access-control-allow-origin"] == setup.allowed
        assert "X-API-Key" in r.headers["access-control-allow-headers"]
    # (Vary differs: Airflow's FAB Flask app adds Cookie to every /pluginsv2 answer.)
    names = ("access-control-allow-origin", "access-control-allow-methods")
    assert [answers[0].headers.get(n) for n in names] == [answers[1].headers.get(n) for n in names]


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_gzip_streams_on_both_mounts(fmt: str, setup: Setup) -> None:
    answers = []
    for mount in MOUNTS:
        r = httpx.get(
            f"{setup.url}{mount}/data-apis/sales/latest?format={fmt}",
            headers={"X-API-Key": setup.key, "Accept-Encoding": "gzip"},
            timeout=60,
        )
        assert r.status_code == 200
        assert r.headers["content-encoding"] == "gzip"
        assert r.headers["etag"].endswith('-gzip"')
        assert "Accept-Encoding" in r.headers["vary"]
        answers.append(r)
    assert answers[0].content == answers[1].content
    assert answers[0].headers["etag"] == answers[1].headers["etag"]
    lines = answers[0].content.decode().splitlines()
    assert len(lines) == SALES_ROWS + (1 if fmt == "csv" else 0)


def test_arrow_whole_snapshot_on_both_mounts(setup: Setup) -> None:
    bodies = []
    for mount in MOUNTS:
        r = httpx.get(
            f"{setup.url}{mount}/data-apis/sales/latest?format=arrow",
            headers={"X-API-Key": setup.key, "Accept-Encoding": "identity"},
            timeout=60,
        )
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
        bodies.append(r.content)
    assert bodies[0] == bodies[1]
    table = pyarrow.ipc.open_stream(bodies[0]).read_all()
    assert table.num_rows == SALES_ROWS
    assert table.column("id").to_pylist() == list(range(1, SALES_ROWS + 1))
