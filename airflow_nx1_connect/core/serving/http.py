"""HTTP plumbing of the data API, framework-free: request, response, problems, caching.

`problem_for` is the one mapping from exceptions to statuses; every error is
`application/problem+json` `{"type", "title", "status", "detail"}`. `finish` adds the
validators and caching headers and answers 304 when the client's copy is current.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlencode

import sqlalchemy as sa

from airflow_nx1_connect.core.clock import http_date
from airflow_nx1_connect.core.errors import Nx1Error, Problem, StoreUnavailable, one_line
from airflow_nx1_connect.core.serving import compression

log = logging.getLogger(__name__)

#: The methods every data API route answers (it is read-only).
ALLOWED_METHODS = ("GET", "HEAD")
PROBLEM_JSON = "application/problem+json"
#: A snapshot's own URL never changes content. `private` on everything a key reads: many
#: shared caches and CDNs ignore `Vary: Authorization`, and a copy there would reach
#: clients without a key (RFC 9111 5.2.2.7); the app's own cache still keeps it.
IMMUTABLE = "private, max-age=31536000, immutable"
#: `latest`, the data API and its snapshot list change when a run publishes.
SHORT_LIVED = "private, max-age=30"
VARY = "Authorization, X-API-Key, Accept"
PROBLEM_BASE = "urn:nx1-connect:problem:"
#: Request size limits, enforced here because not every server in front enforces one
#: (uvicorn with httptools accepts a 10 MB header). Far above any real request.
MAX_QUERY_BYTES = 8 * 1024
MAX_HEADER_BYTES = 32 * 1024


@dataclass
class Request:
    """What the adapters pass in: framework-free and already decoded.

    `url_root` is what the links of an answer (`Link`, `next_url`, `status_url`) start with:
    Airflow's `[api] base_url` (`scheme://host[:port][/path]`) or "" (path-absolute links),
    never the request's `Host`; the adapters pass a function, called once when a link is
    first built (see `web.links`). `path` is the full request path (with any mount prefix);
    `query` the decoded query parameters in order, repeats kept.
    """

    method: str
    url_root: str | Callable[[], str]
    path: str
    query: Sequence[tuple[str, str]] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.method = self.method.upper()
        self.headers = {k.lower(): v for k, v in self.headers.items()}

    def header(self, name: str) -> str | None:
        """A request header (case-insensitive), or None."""
        return self.headers.get(name.lower())

    def link_root(self) -> str:
        """`url_root` as text (a function given as `url_root` is called once, here)."""
        if callable(self.url_root):
            self.url_root = self.url_root()
        return self.url_root

    def link(
        self, path: str | None = None, replace: Sequence[tuple[str, str]] | None = None
    ) -> str:
        """A URL for an answer's links, from `link_root` (Airflow's `[api] base_url` when set,
        path-absolute otherwise): `path` (not yet quoted; default: the request's own) and,
        with `replace`, the request's query without those parameters, then them, in order."""
        target = quote(path if path is not None else unquote(self.path), safe="/")
        if replace is None:
            return f"{self.link_root()}{target}"
        names = {name for name, _ in replace}
        pairs = [(k, v) for k, v in self.query if k not in names] + list(replace)
        return f"{self.link_root()}{target}?{urlencode(pairs, quote_via=quote)}"


class Pending(Protocol):
    """An answer that is only known after a wait (`Prefer: wait` on a run): adapters on an
    event loop await `answer_async` (no thread held while waiting); others call `answer`."""

    def answer(self) -> Response:
        """Wait (blocking this thread) and return the final response."""
        ...

    async def answer_async(self) -> Response:
        """Wait without holding a thread and return the final response."""
        ...


@dataclass
class Response:
    """What the adapters send: a status, header pairs and a body (bytes or a byte iterator).

    With `pending`, the answer is not ready yet: complete it with `complete` (or
    `complete_async` on an event loop) before sending.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes | Iterator[bytes] = b""
    pending: Pending | None = None

    @property
    def streaming(self) -> bool:
        """True when the body is produced while it is sent (whole-snapshot CSV / NDJSON)."""
        return not isinstance(self.body, bytes | bytearray)

    def header(self, name: str) -> str | None:
        """The first header called `name` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def problem(
    status: int, slug: str, title: str, detail: str, headers: Sequence[tuple[str, str]] = ()
) -> Response:
    """An `application/problem+json` response {"type", "title", "status", "detail"}."""
    body = json.dumps(
        {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail},
        ensure_ascii=False,
    ).encode()
    return Response(
        status,
        [("Content-Type", PROBLEM_JSON), ("Cache-Control", "no-store"), *headers],
        body,
    )


def route_not_found(request: Request) -> Response:
    """The answer for a path under `{base}` that is no route of this API."""
    return problem(
        404,
        "not-found",
        "Not found",
        "No such endpoint. The data API serves GET /data-apis/{name}, "
        "/data-apis/{name}/latest, /data-apis/{name}/snapshots, "
        "/data-apis/{name}/snapshots/{snapshot_id}, /data-apis/{name}/changes, "
        "/data-apis/{name}/openapi.json and /data-apis/{name}/runs/{run_id}, and POST "
        "/data-apis/{name}/runs.",
    )


def method_not_allowed(request: Request, allowed: Sequence[str] = ALLOWED_METHODS) -> Response:
    """The answer for a known path asked with a method it does not take (`allowed`)."""
    if tuple(allowed) == ALLOWED_METHODS:
        detail = f"{request.method} is not allowed here: this API is read-only; use GET."
    else:
        detail = f"{request.method} is not allowed here; use {' or '.join(allowed)}."
    return problem(
        405,
        "method-not-allowed",
        "Method not allowed",
        detail,
        [("Allow", ", ".join(allowed))],
    )


def bad_request(detail: str) -> Response:
    """A 400 problem (adapters use it for their framework's own validation errors)."""
    return problem(400, "invalid-parameter", "Invalid request", detail)


def http_error(request: Request, status: int, detail: str | None = None) -> Response:
    """A framework's own HTTP error (routing, parsing) as the same problem+json."""
    if status == 404:
        return route_not_found(request)
    if status == 405:
        return method_not_allowed(request)
    if status == 400:
        return bad_request(detail or "The request could not be read.")
    if 400 <= status < 500:
        return problem(status, "client-error", HTTPStatus(status).phrase, detail or "")
    return error_response(RuntimeError(detail or f"HTTP {status}"))


def error_response(exc: BaseException) -> Response:
    """The problem+json response for an exception (the one mapping, see `problem_for`)."""
    return problem_for(exc)


def refuse_oversized(request: Request) -> None:
    """414 for a query string, 431 for headers, larger than any real request needs."""
    if sum(len(k) + len(v) + 2 for k, v in request.query) > MAX_QUERY_BYTES:
        raise Problem(
            414,
            "uri-too-long",
            "URI too long",
            f"The query string is longer than {MAX_QUERY_BYTES} bytes; ask for fewer columns "
            "or page with start and limit.",
        )
    if sum(len(k) + len(v) + 4 for k, v in request.headers.items()) > MAX_HEADER_BYTES:
        raise Problem(
            431,
            "headers-too-large",
            "Request header fields too large",
            f"The request headers are larger than {MAX_HEADER_BYTES} bytes; send only the "
            "Authorization or X-API-Key header and the usual ones.",
        )


def complete(response: Response) -> Response:
    """The final response: `response` itself, or its pending answer after a blocking wait."""
    return response.pending.answer() if response.pending is not None else response


async def complete_async(response: Response) -> Response:
    """The final response, waiting (if pending) without holding a thread."""
    if response.pending is None:
        return response
    return await response.pending.answer_async()


def problem_for(exc: BaseException) -> Response:
    """The single mapping from exceptions to problem+json responses: each `Nx1Error` says its
    own status, type, title, detail and headers (`core.errors`); a database error is the
    store being unavailable; anything else is a 500 whose traceback goes to the log."""
    if isinstance(exc, sa.exc.SQLAlchemyError):
        exc = StoreUnavailable(one_line(exc))
    if isinstance(exc, Nx1Error) and exc.status != 500:
        if exc.log_level is not None:
            log.log(exc.log_level, "%s", exc.log_text())
        return problem(exc.status, exc.slug, exc.title, exc.detail(), exc.headers())
    log.exception("Unexpected error while serving a data API request")
    return problem(
        500,
        "internal-error",
        "Internal error",
        "The server failed to answer this request; the error is in its log.",
    )


def etag_for(*parts: Any) -> str:
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:32]
    return f'"{digest}"'


def not_modified(request: Request, etag: str, last_modified: dt.datetime | None) -> bool:
    if_none_match = request.header("if-none-match")
    if if_none_match is not None:
        tags = [t.strip() for t in if_none_match.split(",")]
        return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)
    since = request.header("if-modified-since")
    if since and last_modified is not None:
        try:
            parsed = email.utils.parsedate_to_datetime(since)
        except (TypeError, ValueError, IndexError):
            return False
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        return last_modified.replace(microsecond=0) <= parsed
    return False


@dataclass
class Payload:
    """A body with headers that only exist once it is made (a page's `Link`)."""

    content: bytes | Iterator[bytes]
    headers: list[tuple[str, str]] = field(default_factory=list)


def finish(
    request: Request,
    *,
    etag: str,
    last_modified: dt.datetime | None,
    cache_control: str,
    media_type: str,
    body: Callable[[], bytes | Iterator[bytes] | Payload],
    extra: Sequence[tuple[str, str]] = (),
    compressible: bool = False,
    always: Sequence[tuple[str, str]] = (),
) -> Response:
    """A 200 with validators and caching headers, or a 304 when the client's copy is current.

    The validators come first, from what the caller knows without reading rows (the
    snapshot's id and the request's shape): `body` runs only for a 200, so a 304 reads
    nothing. `extra` headers, and those of a `Payload` body, go on a 200 only; `always` ones
    on the 304 too. `compressible` bodies (JSON, CSV, NDJSON) are gzip-compressed when the
    client accepts it, with their own ETag (see `compression`).
    """
    gzip = compressible and compression.accepts_gzip(request.header("accept-encoding"))
    if gzip:
        etag = compression.gzip_etag(etag)
    vary = f"{VARY}, Accept-Encoding" if compressible else VARY
    headers = [("ETag", etag), ("Cache-Control", cache_control), ("Vary", vary), *always]
    if not_modified(request, etag, last_modified):
        # RFC 9110 15.4.5: the validators and caching headers a 200 would carry, no body.
        return Response(304, headers, b"")
    if last_modified is not None:
        headers.append(("Last-Modified", http_date(last_modified)))
    content = body()
    if isinstance(content, Payload):
        extra = [*extra, *content.headers]
        content = content.content
    if gzip:
        headers.append(("Content-Encoding", compression.GZIP))
        if isinstance(content, bytes | bytearray):
            content = compression.gzip_bytes(bytes(content))
        else:
            content = compression.gzip_stream(content)
    return Response(200, [("Content-Type", media_type), *headers, *extra], content)
