"""Paths under `/nx1` that Airflow's mounts cannot match, answered by the plugin's FastAPI app.

Airflow mounts the plugin's FastAPI app at `/nx1` and the Flask app at `/pluginsv2` with
Starlette's `Mount`, whose pattern (`^/nx1/(?P<path>.*)$`) does not match a path holding a
newline (`%0A`, as in a data API name): such a request, and `/nx1` itself, fell through to
Airflow's own answers (`{"detail": "Not Found"}` as `application/json`, or the UI's page).
This ASGI middleware, registered by the plugin as a FastAPI root middleware, hands exactly
those requests to the plugin's FastAPI app, under the mount they were sent to, so they get
the data API's answers: problem+json for every error (the same answer the Flask blueprint
gives under `/pluginsv2/nx1`, since both adapters call `core.serving`). Every other request
passes on untouched.
"""

from __future__ import annotations

from typing import Any

#: The mounts whose paths this middleware may take (longest first).
MOUNTS = ("/pluginsv2/nx1", "/nx1")


def unmatched_mount(path: str) -> str | None:
    """The mount of a path under it that Airflow's `Mount` cannot match, else None."""
    if path == "/nx1":
        return "/nx1"
    if "\n" not in path:
        return None
    for mount in MOUNTS:
        if path.startswith(mount + "/"):
            return mount
    return None


class MountMisses:
    """ASGI middleware: `/nx1` and paths with a newline under the mounts go to the plugin app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Answer an unmatched path under /nx1 with the plugin's app; pass anything else on."""
        if scope["type"] == "http":
            root = scope.get("root_path", "")
            path = scope["path"]
            relative = path[len(root) :] if root and path.startswith(root) else path
            mount = unmatched_mount(relative)
            if mount is not None:
                from airflow_nx1_connect.web.api import app

                await app({**scope, "root_path": root + mount}, receive, send)
                return
        await self.app(scope, receive, send)
