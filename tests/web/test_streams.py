"""The root middleware that answers whole-snapshot streams under /pluginsv2 (`web.streams`).

Which requests it takes (rows routes and the change feed without `limit`, in a streamed
format) and that it hands them to the plugin's FastAPI app, while every other request
reaches the app behind it (Airflow's WSGI mount of Flask). The bytes on a real api-server
are compared in `test_transfer_server`; the memory it saves is benchmark M1
(`benchmarks/mount_bench.py`).
"""

from __future__ import annotations

import pytest

from airflow_nx1_connect.web.streams import WholeSnapshotStreams, streams_whole_snapshot
from tests.web.helpers import AsgiBehind, call_asgi

BASE = "/pluginsv2/nx1/api/v1/data-apis/sales"


@pytest.mark.parametrize(
    ("path", "query", "headers", "taken"),
    [
        (f"{BASE}/latest", "format=csv", {}, True),
        (f"{BASE}/latest/", "format=ndjson", {}, True),
        (f"{BASE}/latest", "format=arrow&start=10", {}, True),
        (f"{BASE}/snapshots/abc", "format=parquet", {}, True),
        (f"{BASE}/latest", "", {"accept": "text/csv"}, True),
        (f"{BASE}/latest", "format=csv&limit=10", {}, False),  # a page: bounded
        (f"{BASE}/latest", "limit=", {"accept": "text/csv"}, False),
        (f"{BASE}/latest", "", {}, False),  # JSON: always a page
        (f"{BASE}/latest", "format=json", {}, False),
        (f"{BASE}", "format=csv", {}, False),
        (f"{BASE}/changes", "since=a&format=csv", {}, True),  # the whole change feed
        (f"{BASE}/changes", "since=a&format=arrow", {}, True),
        (f"{BASE}/changes", "since=a&format=csv&limit=10", {}, False),
        (f"{BASE}/changes", "since=a", {}, False),  # JSON: a page
        ("/pluginsv2/nx1connect/keys", "format=csv", {}, False),
        ("/nx1/api/v1/data-apis/sales/latest", "format=csv", {}, False),
    ],
)
def test_which_requests_are_taken(
    path: str, query: str, headers: dict[str, str], taken: bool
) -> None:
    assert streams_whole_snapshot(path, query.encode(), headers) is taken


def test_streams_go_to_the_fastapi_adapter_and_the_rest_behind(store_env: str) -> None:
    behind = AsgiBehind()
    app = WholeSnapshotStreams(behind)

    # A whole-snapshot stream: answered by the plugin's FastAPI app (here: no key, so its
    # problem answer), never by the app behind.
    status, headers, body = call_asgi(app, "GET", f"{BASE}/latest", "format=csv")
    assert (status, headers["content-type"]) == (401, "application/problem+json")
    assert b"X-API-Key" in body
    assert behind.paths == []

    # Pages, JSON, other routes and other methods reach the app behind unchanged.
    for method, path, query in [
        ("GET", f"{BASE}/latest", "format=csv&limit=5"),
        ("GET", f"{BASE}/latest", ""),
        ("GET", "/pluginsv2/nx1connect/keys", ""),
        ("POST", f"{BASE}/latest", "format=csv"),
    ]:
        assert call_asgi(app, method, path, query)[0] == 299
    assert behind.paths == [
        f"{BASE}/latest",
        f"{BASE}/latest",
        "/pluginsv2/nx1connect/keys",
        f"{BASE}/latest",
    ]
