"""Runs on demand over HTTP: `POST {base}/data-apis/{name}/runs` and `GET .../runs/{run_id}`.

The POST needs a key with the `run` scope (403 without); it answers 202
`{"run_id", "state", "status_url", "snapshot"}` with `Location: <status_url>`, the same run
while an earlier API-requested one is still queued or running (see `core.runs`). With
`Prefer: wait=N` (1..60) it answers when the run ends (200, with the snapshot the run
published on success) or after N seconds (202), with `Preference-Applied: wait=N`; the
GET honours the same preference. The wait is a `Response.pending` (`RunWait`) that the
adapters complete on their event loop (`http.complete_async`): a waiting request holds no
thread of the api-server. Run answers are never cached.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote

from sqlalchemy.engine import Engine

from airflow_nx1_connect.core import runs
from airflow_nx1_connect.core.errors import MissingScope, RunsUnavailable, ValidationError
from airflow_nx1_connect.core.keys import ApiKey
from airflow_nx1_connect.core.policy import NO_POLICY, KeyPolicy
from airflow_nx1_connect.core.policy import summary as policy_summary
from airflow_nx1_connect.core.serving.encoders import dumps
from airflow_nx1_connect.core.serving.http import Request, Response
from airflow_nx1_connect.core.serving.params import MEDIA_TYPES

NO_STORE = "no-store"
#: One preference of a `Prefer` header (RFC 7240): `token[=value]`, value maybe quoted.
_PREFERENCE = re.compile(r'^\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)\s*(?:=\s*("[^"]*"|[^;,\s]*))?')


def prefer_wait(request: Request) -> int | None:
    """N of `Prefer: wait=N`, or None without one; 400 unless N is 1..MAX_WAIT_S."""
    header = request.header("prefer")
    if not header:
        return None
    for part in header.split(","):
        match = _PREFERENCE.match(part)
        if match is None or match.group(1).lower() != "wait":
            continue
        value = (match.group(2) or "").strip('"')
        if not value.isdigit() or not 1 <= int(value) <= runs.MAX_WAIT_S:
            raise ValidationError(
                f"Prefer: wait=N takes a whole number of seconds from 1 to {runs.MAX_WAIT_S}; "
                "leave the header out to get an answer at once."
            )
        return int(value)
    return None


def require_run_scope(key: ApiKey, name: str) -> None:
    """403 unless the key may trigger runs."""
    if "run" not in key.scopes:
        raise MissingScope(
            f"This key may read data API {name!r} but not start its runs: ask the data API's "
            f"owner for a key with the run scope (nx1-connect keys create --data-api {name} "
            "--days N --scope run)."
        )


def _launcher(launcher: runs.RunLauncher | None) -> runs.RunLauncher:
    if launcher is None:
        raise RunsUnavailable("No Airflow run launcher is configured in this process.")
    return launcher


def _body(
    status: runs.RunStatus, status_url: str | None = None, policy: KeyPolicy = NO_POLICY
) -> bytes:
    document: dict[str, object] = {"run_id": status.run_id, "state": status.state}
    if status_url is not None:
        document["status_url"] = status_url
    # A key's policy: `row_count` null under a row filter (core.policy).
    document["snapshot"] = (
        policy_summary(policy, status.snapshot) if status.snapshot is not None else None
    )
    return dumps(document)


def _headers(wait: int | None) -> list[tuple[str, str]]:
    headers = [("Content-Type", MEDIA_TYPES["json"]), ("Cache-Control", NO_STORE)]
    if wait is not None:
        headers.append(("Preference-Applied", f"wait={wait}"))
    return headers


def status_url(request: Request, run_id: str) -> str:
    """The URL of a run's status, under the mount the request came through: from Airflow's
    `[api] base_url` when set, path-absolute otherwise (`Request.url_root`)."""
    return f"{request.link(unquote(request.path).rstrip('/'))}/{quote(run_id, safe='')}"


@dataclass
class RunWait:
    """`Prefer: wait=N` on a run: the answer once the run ends or N seconds pass."""

    engine: Engine
    launcher: runs.RunLauncher
    name: str
    run: runs.RunStatus
    seconds: int
    make: Callable[[runs.RunStatus], Response]
    head: bool = False

    def _final(self, run: runs.RunStatus) -> Response:
        response = self.make(run)
        if self.head:
            response.body = b""
        return response

    def answer(self) -> Response:
        """Wait in this thread (a WSGI server without the plugin's middleware)."""
        return self._final(
            runs.wait_for_run(self.engine, self.launcher, self.name, self.run, self.seconds)
        )

    async def answer_async(self) -> Response:
        """Wait on the event loop, sharing one poll per run among every waiting request."""
        run = await runs.wait_for_run_async(
            self.engine, self.launcher, self.name, self.run, self.seconds
        )
        return self._final(run)


def _answer(
    engine: Engine,
    request: Request,
    name: str,
    run: runs.RunStatus,
    launcher: runs.RunLauncher,
    make: Callable[[runs.RunStatus], Response],
) -> Response:
    """The answer now, or (with `Prefer: wait`) a pending one: adapters complete it, on
    their event loop where they have one, so a waiting request never holds a thread."""
    wait = prefer_wait(request)
    if wait is None:
        return make(run)
    pending = RunWait(engine, launcher, name, run, wait, make, head=request.method == "HEAD")
    return Response(202, _headers(wait), b"", pending=pending)


def start_run_response(
    engine: Engine,
    request: Request,
    name: str,
    key: ApiKey,
    launcher: runs.RunLauncher | None,
) -> Response:
    """POST /data-apis/{name}/runs: 202 (or 200 once ended, with `Prefer: wait`)."""
    require_run_scope(key, name)
    wait = prefer_wait(request)
    launcher = _launcher(launcher)
    run, _created = runs.request_run(engine, launcher, name, key_id=key.id)

    def make(run: runs.RunStatus) -> Response:
        url = status_url(request, run.run_id)
        headers = [*_headers(wait), ("Location", url)]
        return Response(200 if run.ended else 202, headers, _body(run, url, key.policy))

    return _answer(engine, request, name, run, launcher, make)


def run_status_response(
    engine: Engine,
    request: Request,
    name: str,
    run_id: str,
    launcher: runs.RunLauncher | None,
    policy: KeyPolicy = NO_POLICY,
) -> Response:
    """GET /data-apis/{name}/runs/{run_id}: the run's state and published snapshot (its
    summary as the key's `policy` allows)."""
    wait = prefer_wait(request)
    launcher = _launcher(launcher)
    run = runs.run_status(engine, launcher, name, run_id)

    def make(run: runs.RunStatus) -> Response:
        return Response(200, _headers(wait), _body(run, policy=policy))

    return _answer(engine, request, name, run, launcher, make)
