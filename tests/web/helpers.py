"""Helpers shared by the web test modules (in-process adapters and real api-servers)."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import re
from typing import Any
from urllib.parse import urlsplit

from airflow_nx1_connect.core import engines, writer
from tests.web.conftest import Adapter, Answer, ApiStore

#: The two mounts of the data REST API on a real api-server (Flask blueprint, FastAPI app).
MOUNTS = ("/pluginsv2/nx1/api/v1", "/nx1/api/v1")
#: Rows of data API `sales` that `populate_sales_store` publishes.
SALES_ROWS = 2_500
#: Debian's chromium (driven by Playwright) and its headless arguments.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def open_nx1(page: Any, url: str, user: str, password: str) -> Any:
    """Log in to the Airflow UI at `url` through its own login form, open NX1 Connect from its
    navigation (the view opens in the UI's iframe) and return that iframe's locator."""
    page.goto(f"{url}/auth/login/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.locator("input[type=submit], button[type=submit]").first.click()
    page.wait_for_url(lambda u: "/auth/login" not in u)
    page.get_by_text("NX1 Connect", exact=True).first.click()
    page.wait_for_url("**/plugin/nx1-connect")
    return page.frame_locator("iframe").first


#: Headers that must be identical between the adapters.
COMPARED = (
    "content-type",
    "etag",
    "last-modified",
    "cache-control",
    "vary",
    "link",
    "www-authenticate",
    "allow",
    "retry-after",
)
IMMUTABLE = "private, max-age=31536000, immutable"
PROBLEM = "application/problem+json"


def both(
    adapters: list[Adapter],
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> Answer:
    """Send one request to both adapters; they must answer alike. Returns the answer."""
    answers = [a.request(method, path, headers) for a in adapters]
    first, second = answers
    assert first.status == second.status, (path, first.status, second.status, second.body)
    for name in COMPARED:
        assert first.headers.get(name) == second.headers.get(name), (path, name)
    assert first.body == second.body, path
    return first


def key_header(api_store: ApiStore, role: str, how: str = "x-api-key") -> dict[str, str]:
    secret = api_store.keys[role]
    if how == "bearer":
        return {"Authorization": f"Bearer {secret}"}
    return {"X-API-Key": secret}


def assert_problem(answer: Answer, status: int) -> dict[str, Any]:
    assert answer.status == status
    assert answer.headers["content-type"] == PROBLEM
    body = answer.json()
    assert set(body) == {"type", "title", "status", "detail"}
    assert body["status"] == status
    assert all(isinstance(body[k], str) and body[k] for k in ("type", "title", "detail"))
    return body


def next_link(answer: Answer) -> str | None:
    link = answer.headers.get("link")
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    url = urlsplit(match.group(1))
    assert (url.scheme, url.netloc) == ("", "")  # path-absolute: never the request's Host
    return f"{url.path}?{url.query}"


def populate_sales_store(store_url: str) -> tuple[str, str]:
    """Migrate the store at `store_url`, publish data API `sales` (SALES_ROWS rows), make a key.

    Returns (the key, the snapshot id).
    """
    from airflow_nx1_connect.core import keys, store
    from airflow_nx1_connect.core import snapshots as snaps

    engine = engines.create_store_engine(store_url)
    try:
        store.migrate(engine)
        snaps.register_data_api(
            engine, name="sales", kind="ask", description="Sales", dag_id="d", task_id="t"
        )
        snap = writer.write_snapshot(
            engine,
            data_api="sales",
            columns=[
                snaps.Column("id", "INTEGER"),
                snaps.Column("name", "TEXT"),
                snaps.Column("amount", "NUMERIC"),
                snaps.Column("day", "DATE"),
            ],
            batches=[
                [
                    (i, f'Crème {i}, "q"', decimal.Decimal(i) / 8, dt.date(2026, 1, 1))
                    for i in range(1, SALES_ROWS + 1)
                ]
            ],
        )
        secret = keys.create_key(engine, data_api="sales", days=7).secret
    finally:
        engine.dispose()
    return secret, snap.id


class AsgiBehind:
    """The app behind the middleware: answers 299 and records what it got."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"behind"})


def call_asgi(app: Any, method: str, path: str, query: str) -> tuple[int, dict[str, str], bytes]:
    """One request to an ASGI app, run to its end: (status, headers, body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers, body
