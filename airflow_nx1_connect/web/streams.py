"""Whole-snapshot streams and run waits under `/pluginsv2/nx1/api/v1`, answered on the
event loop.

Airflow mounts the `/pluginsv2` Flask app through Starlette's `WSGIMiddleware`, which
queues the body a WSGI app yields in an unbounded memory stream: a slow client of a
whole-snapshot stream makes the server hold the whole snapshot in memory. This ASGI
middleware, registered by the plugin as a FastAPI root middleware, answers exactly those
requests (GET/HEAD of a rows route or of the change feed without `limit`, in a streamed
format) with the plugin's FastAPI adapter, which sends one batch at a time with
backpressure. Both adapters
call the same `core.serving.router.handle`, so the answer (status, headers, body) is the one the
blueprint would give; every other request under `/pluginsv2` goes to Flask as before.

Run requests with `Prefer: wait` go the same way: the FastAPI adapter awaits the run on
the event loop, where through WSGI each would hold one of the threads that Airflow's own
routes run on (100 waiters starved `/api/v2/monitor/health`).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from airflow_nx1_connect.core.serving.params import negotiate

MOUNT = "/pluginsv2/nx1"
#: The routes that stream without `limit`: rows (`latest`, `snapshots/{id}`) and the change feed.
_ROWS = re.compile(r"^/pluginsv2/nx1/api/v1/data-apis/[^/]+/(latest|snapshots/[^/]+|changes)/?$")


_RUNS = re.compile(r"^/pluginsv2/nx1/api/v1/data-apis/[^/]+/runs(/[^/]+)?/?$")


def waits_for_a_run(path: str, headers: dict[str, str]) -> bool:
    """True for a run request with `Prefer: wait`: it waits on the event loop there."""
    return bool(_RUNS.match(path)) and "wait" in headers.get("prefer", "").lower()


def streams_whole_snapshot(path: str, query_string: bytes, headers: dict[str, str]) -> bool:
    """True for a request that streams a whole snapshot or change feed (no `limit`, not
    JSON)."""
    if not _ROWS.match(path):
        return False
    query = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    if any(k == "limit" for k, _ in query):
        return False
    formats = [v.strip().lower() for k, v in query if k == "format"]
    fmt = formats[0] if formats else negotiate(headers.get("accept"))
    return fmt != "json"


class WholeSnapshotStreams:
    """ASGI middleware: whole-snapshot streams under /pluginsv2/nx1 go to the ASGI adapter."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Divert whole-snapshot streams under /pluginsv2/nx1; pass anything else on."""
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD", "POST"):
            root = scope.get("root_path", "")
            path = scope["path"]
            relative = path[len(root) :] if root and path.startswith(root) else path
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            streamed = scope["method"] != "POST" and streams_whole_snapshot(
                relative, scope.get("query_string", b""), headers
            )
            if streamed or waits_for_a_run(relative, headers):
                from airflow_nx1_connect.web.api import app

                await app({**scope, "root_path": root + MOUNT}, receive, send)
                return
        await self.app(scope, receive, send)
