"""The data REST API, framework-neutral: one request in, one response out.

The Flask blueprint (`web.blueprint`) and the FastAPI app (`web.api`) only translate their
framework's request into a `Request`, call `handle` (or `route_not_found` /
`method_not_allowed`), and send back the `Response`: same statuses, headers and bodies.

Order of checks on every data API route (so an unauthenticated caller learns nothing):

1. a key in the query string (a key-like parameter name, or a value that looks like a
   key): 400, before anything else, without echoing or logging it;
2. authentication (`Authorization: Bearer` or `X-API-Key`): 401;
3. the key's data API against the name in the path: 403, whether or not the name exists;
4. the snapshot (none published yet, unknown or no longer retained id): 404;
5. the query parameters `start`, `limit`, `columns`, `format`: 400.

Query parameters this API does not know are ignored, as is usual for REST APIs; a known
one given twice is a 400. Exceptions map to statuses in `_problem_for` only.

Rows are read as stored (`snapshots.read_raw_rows` / `iter_raw_rows`) and encoded straight
to JSON, CSV or NDJSON text: NUMERIC as exact text, DATE/TIMESTAMP as ISO 8601 (aware
times in UTC with `Z`), BOOLEAN as true/false, JSON columns as JSON values, NULL as null
(an empty CSV field). CSV and NDJSON without `limit` stream the whole snapshot from
`start`, one 10,000-row keyset batch at a time. ETags hash the snapshot id with the
request's shape (route, start, limit, columns, format), so a 304 costs no row read; a
snapshot's own URL is `immutable`, `latest` and the catalogue routes live 30 seconds.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import email.utils
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlencode

import sqlalchemy as sa

from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.errors import (
    AuthError,
    ConfigError,
    Forbidden,
    NotFound,
    StoreUnavailable,
    ValidationError,
)
from airflow_nx1_connect.core.settings import Settings, current_settings
from airflow_nx1_connect.core.store import get_engine

log = logging.getLogger(__name__)

#: The routes every adapter serves, relative to `{base}`.
ROUTES: dict[str, str] = {
    "data_api": "/data-apis/{name}",
    "latest": "/data-apis/{name}/latest",
    "snapshots": "/data-apis/{name}/snapshots",
    "snapshot": "/data-apis/{name}/snapshots/{snapshot_id}",
}
ALLOWED_METHODS = ("GET", "HEAD")
FORMATS = ("json", "csv", "ndjson")
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
}
PROBLEM_JSON = "application/problem+json"
#: A snapshot's own URL never changes content.
IMMUTABLE = "public, max-age=31536000, immutable"
#: `latest`, the data API and its snapshot list change when a run publishes.
SHORT_LIVED = "public, max-age=30"
VARY = "Authorization, X-API-Key, Accept"
RETRY_AFTER_S = "5"
#: Largest `start` accepted (keeps the value inside a signed 64-bit integer).
MAX_START = 2**62
#: Query parameter names (lower case, without `-` and `_`) that mean "a key is here".
KEY_PARAM_NAMES = frozenset(
    {
        "key",
        "apikey",
        "xapikey",
        "token",
        "accesstoken",
        "apitoken",
        "authtoken",
        "bearer",
        "auth",
        "authorization",
        "secret",
        "apisecret",
        "password",
    }
)
KEY_PREFIX = "nx1_"
#: A whole key somewhere inside a parameter (e.g. after a comma in `columns`).
_EMBEDDED_KEY = re.compile(r"nx1_[A-Za-z0-9_-]{32,}")
_DIGITS = re.compile(r"^[0-9]+$")
_PROBLEM_BASE = "urn:nx1-connect:problem:"
_REASONS = {
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
#: Request size limits, enforced here because not every server in front enforces one
#: (uvicorn with httptools accepts a 10 MB header). Far above any real request.
MAX_QUERY_BYTES = 8 * 1024
MAX_HEADER_BYTES = 32 * 1024


# ---------------------------------------------------------------------------------------
# Request and response
# ---------------------------------------------------------------------------------------


@dataclass
class Request:
    """What the adapters pass in: framework-free and already decoded.

    `url_root` is `scheme://host[:port]`; `path` the full request path (with any mount
    prefix); `query` the decoded query parameters in order, repeats kept.
    """

    method: str
    url_root: str
    path: str
    query: Sequence[tuple[str, str]] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.method = self.method.upper()
        self.headers = {k.lower(): v for k, v in self.headers.items()}

    def header(self, name: str) -> str | None:
        """A request header (case-insensitive), or None."""
        return self.headers.get(name.lower())


@dataclass
class Response:
    """What the adapters send: a status, header pairs and a body (bytes or a byte iterator)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes | Iterator[bytes] = b""

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


class _Problem(Exception):
    """An HTTP problem raised inside this module (mapped by `_problem_for`)."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = list(headers)


def problem(
    status: int, slug: str, title: str, detail: str, headers: Sequence[tuple[str, str]] = ()
) -> Response:
    """An `application/problem+json` response {"type", "title", "status", "detail"}."""
    body = json.dumps(
        {"type": _PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail},
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
        "/data-apis/{name}/latest, /data-apis/{name}/snapshots and "
        "/data-apis/{name}/snapshots/{snapshot_id}.",
    )


def method_not_allowed(request: Request) -> Response:
    """The answer for a known path asked with a method other than GET or HEAD."""
    return problem(
        405,
        "method-not-allowed",
        "Method not allowed",
        f"{request.method} is not allowed here: this API is read-only; use GET.",
        [("Allow", ", ".join(ALLOWED_METHODS))],
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
        return problem(status, "client-error", _REASONS.get(status, "Client error"), detail or "")
    return error_response(RuntimeError(detail or f"HTTP {status}"))


def error_response(exc: BaseException) -> Response:
    """The problem+json response for an exception (the one mapping, see `_problem_for`)."""
    return _problem_for(exc)


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def handle(
    endpoint: str,
    request: Request,
    *,
    name: str,
    snapshot_id: str | None = None,
    engine: sa.Engine | None = None,
    settings: Settings | None = None,
) -> Response:
    """Serve one request to `endpoint` (a key of ROUTES). Never raises.

    `engine` and `settings` default to the configured store and `[nx1_connect]` options.
    """
    if endpoint not in ROUTES:
        return route_not_found(request)
    if request.method not in ALLOWED_METHODS:
        return method_not_allowed(request)
    try:
        _refuse_oversized(request)
        _refuse_key_in_query(request.query)
        settings = settings or current_settings()
        engine = engine or get_engine(settings.sql_alchemy_conn)
        _authenticate(engine, request, name)
        if endpoint == "data_api":
            response = _data_api_response(engine, request, name)
        elif endpoint == "snapshots":
            response = _snapshots_response(engine, request, name)
        else:
            response = _rows_response(engine, settings, request, endpoint, name, snapshot_id)
    except Exception as exc:  # the one place where exceptions become statuses
        return _problem_for(exc)
    if request.method == "HEAD":
        _close(response.body)
        response.body = b""
    return response


def _refuse_oversized(request: Request) -> None:
    """414 for a query string, 431 for headers, larger than any real request needs."""
    if sum(len(k) + len(v) + 2 for k, v in request.query) > MAX_QUERY_BYTES:
        raise _Problem(
            414,
            "uri-too-long",
            "URI too long",
            f"The query string is longer than {MAX_QUERY_BYTES} bytes; ask for fewer columns "
            "or page with start and limit.",
        )
    if sum(len(k) + len(v) + 4 for k, v in request.headers.items()) > MAX_HEADER_BYTES:
        raise _Problem(
            431,
            "headers-too-large",
            "Request header fields too large",
            f"The request headers are larger than {MAX_HEADER_BYTES} bytes; send only the "
            "Authorization or X-API-Key header and the usual ones.",
        )


def _close(body: bytes | Iterator[bytes]) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()


def _problem_for(exc: BaseException) -> Response:
    """The single mapping from exceptions to problem+json responses."""
    if isinstance(exc, _Problem):
        return problem(exc.status, exc.slug, exc.title, exc.detail, exc.headers)
    if isinstance(exc, AuthError):
        if exc.missing:
            return problem(
                401,
                "missing-key",
                "Data API key required",
                "Send the data API key in an 'Authorization: Bearer <key>' or "
                "'X-API-Key: <key>' header.",
                [("WWW-Authenticate", "Bearer")],
            )
        log.info("Data API key refused: %s", exc.reason)
        return problem(
            401,
            "invalid-key",
            "Invalid data API key",
            "The data API key is unknown, malformed, expired or revoked. Ask the data API's "
            "owner for a valid key.",
            [("WWW-Authenticate", 'Bearer error="invalid_token"')],
        )
    if isinstance(exc, Forbidden):
        return problem(
            403,
            "forbidden",
            "Key not valid for this data API",
            "This key belongs to another data API; each key reads exactly one data API.",
        )
    if isinstance(exc, ValidationError):
        return problem(400, "invalid-parameter", "Invalid request", str(exc))
    if isinstance(exc, NotFound):
        return problem(404, "not-found", "Not found", str(exc))
    if isinstance(exc, StoreUnavailable | ConfigError | sa.exc.SQLAlchemyError):
        log.warning("Snapshot store unavailable: %s", _one_line(exc))
        return problem(
            503,
            "store-unavailable",
            "Snapshot store unavailable",
            "The snapshot store cannot be reached right now; try again in a few seconds.",
            [("Retry-After", RETRY_AFTER_S)],
        )
    log.exception("Unexpected error while serving a data API request")
    return problem(
        500,
        "internal-error",
        "Internal error",
        "The server failed to answer this request; the error is in its log.",
    )


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# ---------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------


def _refuse_key_in_query(query: Sequence[tuple[str, str]]) -> None:
    for param, value in query:
        normalized = param.lower().replace("-", "").replace("_", "")
        if (
            normalized in KEY_PARAM_NAMES
            or param.startswith(KEY_PREFIX)
            or value.startswith(KEY_PREFIX)
            or _EMBEDDED_KEY.search(value)
            or _EMBEDDED_KEY.search(param)
        ):
            raise _Problem(
                400,
                "key-in-query",
                "Key in the query string",
                "Never put a data API key in the URL: send it in an "
                "'Authorization: Bearer <key>' or 'X-API-Key: <key>' header, and revoke a "
                "key that was put in a URL.",
            )


def extract_key(request: Request) -> str | None:
    """The key from `Authorization: Bearer` or `X-API-Key`, or None when neither is given."""
    bearer: str | None = None
    authorization = request.header("authorization")
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            bearer = token.strip() or None
    header_key = (request.header("x-api-key") or "").strip() or None
    if bearer and header_key and bearer != header_key:
        raise _Problem(
            400,
            "two-keys",
            "Two different keys",
            "Send one data API key, in either 'Authorization: Bearer' or 'X-API-Key'.",
        )
    return bearer or header_key


def _authenticate(engine: sa.Engine, request: Request, name: str) -> None:
    from airflow_nx1_connect.core.keys import verify_key

    verify_key(engine, extract_key(request), name)


# ---------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowsParams:
    """Validated rows parameters. `limit` None means "stream the whole snapshot"."""

    start: int
    limit: int | None
    columns: list[str] | None
    format: str


def _single(query: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in query if k == name]
    if len(values) > 1:
        raise ValidationError(f"Give {name} at most once.", field=name)
    return values[0] if values else None


def _negotiate(accept: str | None) -> str:
    """The format an `Accept` header asks for; JSON unless CSV or NDJSON is preferred."""
    if not accept:
        return "json"
    best, best_q = "json", -1.0
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for p in params:
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        media = media.lower()
        fmt = {
            "text/csv": "csv",
            "application/csv": "csv",
            "application/x-ndjson": "ndjson",
            "application/ndjson": "ndjson",
            "application/jsonl": "ndjson",
            "application/json": "json",
        }.get(media)
        if fmt is None or q <= 0:
            continue
        # Prefer the higher q; on a tie, the earlier item.
        if q > best_q:
            best, best_q = fmt, q
    return best


def _too_big(digits: str, maximum: int) -> bool:
    """True when a string of digits is a number above `maximum` (never parses huge ones)."""
    significant = digits.lstrip("0")
    return len(significant) > len(str(maximum)) or int(significant or "0") > maximum


def parse_rows_params(request: Request, settings: Settings) -> RowsParams:
    """Validate `start`, `limit`, `columns` and `format` (ValidationError on bad input)."""
    query = request.query
    start_text = _single(query, "start")
    start = 0
    if start_text is not None:
        if not _DIGITS.match(start_text) or _too_big(start_text, MAX_START):
            raise ValidationError(
                f"start must be a whole number of rows from 0 to {MAX_START}, e.g. start=0.",
                field="start",
            )
        start = int(start_text)
    limit_text = _single(query, "limit")
    limit: int | None = None
    if limit_text is not None:
        if (
            not _DIGITS.match(limit_text)
            or _too_big(limit_text, settings.max_page_size)
            or int(limit_text) < 1
        ):
            raise ValidationError(
                f"limit must be a whole number from 1 to {settings.max_page_size}, "
                f"e.g. limit={settings.default_page_size}.",
                field="limit",
            )
        limit = int(limit_text)
    columns_text = _single(query, "columns")
    columns: list[str] | None = None
    if columns_text is not None:
        columns = [c.strip() for c in columns_text.split(",")]
        if not all(columns):
            raise ValidationError(
                "columns must be a comma-separated list of column names, e.g. columns=a,b.",
                field="columns",
            )
        if len(set(columns)) != len(columns):
            raise ValidationError("A column is named twice in columns.", field="columns")
    format_text = _single(query, "format")
    if format_text is not None:
        fmt = format_text.strip().lower()
        if fmt not in FORMATS:
            raise ValidationError(
                f"format must be one of {', '.join(FORMATS)}, or leave it out and send an "
                "Accept header.",
                field="format",
            )
    else:
        fmt = _negotiate(request.header("accept"))
    if fmt == "json" and limit is None:
        limit = settings.default_page_size
    return RowsParams(start=start, limit=limit, columns=columns, format=fmt)


# ---------------------------------------------------------------------------------------
# Conditional requests
# ---------------------------------------------------------------------------------------


def _etag(*parts: Any) -> str:
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:32]
    return f'"{digest}"'


def _http_date(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return email.utils.format_datetime(value.astimezone(dt.UTC), usegmt=True)


def _not_modified(request: Request, etag: str, last_modified: dt.datetime | None) -> bool:
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
            parsed = parsed.replace(tzinfo=dt.UTC)
        return last_modified.replace(microsecond=0) <= parsed
    return False


def _finish(
    request: Request,
    *,
    etag: str,
    last_modified: dt.datetime | None,
    cache_control: str,
    media_type: str,
    body: Callable[[], bytes | Iterator[bytes]],
    extra: Sequence[tuple[str, str]] = (),
) -> Response:
    """A 200 with validators and caching headers, or a 304 when the client's copy is current."""
    headers = [("ETag", etag), ("Cache-Control", cache_control), ("Vary", VARY)]
    if _not_modified(request, etag, last_modified):
        # RFC 9110 15.4.5: the validators and caching headers a 200 would carry, no body.
        return Response(304, headers, b"")
    if last_modified is not None:
        headers.append(("Last-Modified", _http_date(last_modified)))
    return Response(200, [("Content-Type", media_type), *headers, *extra], body())


# ---------------------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    try:
        text = json.dumps(
            value, ensure_ascii=False, allow_nan=False, default=_json_default, separators=(",", ":")
        )
    except ValueError:  # NaN or infinity in a REAL column: JSON has no such numbers
        text = json.dumps(
            _finite(value), ensure_ascii=False, default=_json_default, separators=(",", ":")
        )
    return text.encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return snaps.iso(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def _data_api_response(engine: sa.Engine, request: Request, name: str) -> Response:
    api = snaps.get_data_api(engine, name)
    latest: snaps.Snapshot | None
    try:
        latest = snaps.latest_snapshot(engine, name)
    except NotFound:
        latest = None
    columns = snaps.resolve_columns(latest, None) if latest is not None else []
    document = {
        "name": api.name,
        "kind": api.kind,
        "description": api.description,
        "question": api.question,
        "created_at": snaps.iso(api.created_at),
        "latest_snapshot": latest.summary() if latest is not None else None,
        "columns": [{"name": c.name, "type": c.type} for c in columns],
    }
    body = _dumps(document)
    modified = max(
        [t for t in (api.updated_at, latest.published_at if latest else None) if t is not None]
    )
    return _finish(
        request,
        etag=_etag("data_api", body),
        last_modified=modified,
        cache_control=SHORT_LIVED,
        media_type=MEDIA_TYPES["json"],
        body=lambda: body,
    )


def _snapshots_response(engine: sa.Engine, request: Request, name: str) -> Response:
    api = snaps.get_data_api(engine, name)
    published = snaps.list_snapshots(engine, name)
    body = _dumps({"data_api": name, "snapshots": [s.summary() for s in published]})
    times = [s.published_at for s in published if s.published_at is not None]
    return _finish(
        request,
        etag=_etag("snapshots", body),
        last_modified=max(times) if times else api.created_at,
        cache_control=SHORT_LIVED,
        media_type=MEDIA_TYPES["json"],
        body=lambda: body,
    )


def _rows_response(
    engine: sa.Engine,
    settings: Settings,
    request: Request,
    endpoint: str,
    name: str,
    snapshot_id: str | None,
) -> Response:
    if endpoint == "latest":
        snapshot = snaps.latest_snapshot(engine, name)
        cache_control = SHORT_LIVED
    else:
        snapshot = snaps.get_snapshot(engine, name, snapshot_id or "")
        cache_control = IMMUTABLE
    params = parse_rows_params(request, settings)
    columns = snaps.resolve_columns(snapshot, params.columns)
    names = [c.name for c in columns]
    etag = _etag("rows", snapshot.id, endpoint, params.start, params.limit, names, params.format)
    extra: list[tuple[str, str]] = []
    # Rows are read as stored and encoded straight to text (no decoding to Python first).
    dialect = engine.dialect.name
    csv_rows = _csv_encoder(columns, dialect)
    json_values = _json_converter(columns, dialect)
    if params.limit is None:
        # Whole-snapshot CSV / NDJSON: read the first batch now, so a missing table is a
        # 404 (not a cut stream), then stream the rest batch by batch.
        def body() -> bytes | Iterator[bytes]:
            batches = snaps.iter_raw_rows(engine, snapshot, columns, start=params.start)
            first = next(batches, None)
            return _stream(params.format, names, first, batches, csv_rows, json_values)

    else:
        rows = snaps.read_raw_rows(
            engine, snapshot, columns, start=params.start, limit=params.limit
        )
        total = snapshot.row_count or 0
        next_start = params.start + len(rows) if params.start + len(rows) < total else None
        if rows and next_start is not None:
            extra.append(("Link", f'<{_next_url(request, next_start)}>; rel="next"'))

        def body() -> bytes | Iterator[bytes]:
            if params.format == "csv":
                return _csv_header(names) + csv_rows(rows)
            if params.format == "ndjson":
                return _ndjson_rows(names, json_values(rows))
            return _dumps(
                {
                    "data_api": name,
                    "snapshot": snapshot.summary(),
                    "data": {
                        "start": params.start,
                        "row_count": len(rows),
                        "columns": names,
                        "column_types": [c.type for c in columns],
                        "next_start": next_start if rows else None,
                        "data": json_values(rows),
                    },
                }
            )

    return _finish(
        request,
        etag=etag,
        last_modified=snapshot.published_at,
        cache_control=cache_control,
        media_type=MEDIA_TYPES[params.format],
        body=body,
        extra=extra,
    )


def _next_url(request: Request, next_start: int) -> str:
    pairs: list[tuple[str, str]] = []
    replaced = False
    for key, value in request.query:
        if key == "start":
            if not replaced:
                pairs.append(("start", str(next_start)))
                replaced = True
        else:
            pairs.append((key, value))
    if not replaced:
        pairs.append(("start", str(next_start)))
    path = quote(unquote(request.path), safe="/")
    return f"{request.url_root}{path}?{urlencode(pairs, quote_via=quote)}"


# ---------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    if isinstance(value, dt.datetime):
        return snaps.iso(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return value


def _csv_header(names: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(names)
    return buffer.getvalue().encode()


def _csv_timestamp(text: Any) -> Any:
    """A stored timestamp as the JSON body shows it: aware ones in UTC with a `Z`."""
    if not isinstance(text, str):
        return _csv_value(text)
    if text.endswith("+00:00"):
        return text[:-6] + "Z"
    if len(text) > 19 and text[-6] in "+-" and text[-3] == ":":
        try:
            return snaps.iso(dt.datetime.fromisoformat(text))
        except ValueError:
            return text
    return text


def _csv_raw_converter(family: str, dialect: str) -> Callable[[Any], Any] | None:
    """How a value as stored (see `snapshots._encoder`) is written to CSV; None: as it is."""
    if family == "BOOLEAN":
        return lambda v: "true" if v else "false"
    if family == "TIMESTAMP":
        return _csv_timestamp
    if family == "DATE" and dialect != "sqlite":
        return lambda v: v if isinstance(v, str) else v.isoformat()
    # INTEGER, REAL, TEXT; NUMERIC (text or Decimal); JSON (its stored JSON text);
    # DATE on SQLite (ISO text): the csv module writes them as they are.
    return None


def _csv_encoder(
    columns: Sequence[snaps.Column], dialect: str
) -> Callable[[Iterable[Sequence[Any]]], bytes]:
    """A CSV encoder of raw (undecoded) rows for these columns."""
    converters = [
        (i, c) for i, col in enumerate(columns) if (c := _csv_raw_converter(col.type, dialect))
    ]

    def encode(rows: Iterable[Sequence[Any]]) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        if not converters:
            writer.writerows(rows)
        else:
            for row in rows:
                values = list(row)
                for i, convert in converters:
                    if values[i] is not None:
                        values[i] = convert(values[i])
                writer.writerow(values)
        return buffer.getvalue().encode()

    return encode


def _json_text(value: Any) -> Any:
    """A JSON column's stored text as the value it holds (the text itself if not JSON)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _json_raw_converter(family: str, dialect: str) -> Callable[[Any], Any] | None:
    """How a value as stored becomes the JSON body's value; None: as it is."""
    if family == "BOOLEAN":
        return bool
    if family == "NUMERIC":  # Decimal (PostgreSQL) or its text (SQLite): text, exactly
        return lambda v: v if isinstance(v, str) else str(v)
    if family == "DATE" and dialect != "sqlite":
        return lambda v: v if isinstance(v, str) else v.isoformat()
    if family == "TIMESTAMP":
        return _csv_timestamp
    if family == "JSON":
        return _json_text
    return None


def _json_converter(
    columns: Sequence[snaps.Column], dialect: str
) -> Callable[[Iterable[Sequence[Any]]], list[list[Any]]]:
    """Raw (undecoded) rows -> lists of JSON-ready values for these columns."""
    converters = [
        (i, c) for i, col in enumerate(columns) if (c := _json_raw_converter(col.type, dialect))
    ]

    def convert(rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
        out = []
        for row in rows:
            values = list(row)
            for i, fn in converters:
                if values[i] is not None:
                    values[i] = fn(values[i])
            out.append(values)
        return out

    return convert


def _ndjson_rows(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    return b"".join(_dumps(dict(zip(names, row, strict=True))) + b"\n" for row in rows)


def _stream(
    fmt: str,
    names: Sequence[str],
    first: Sequence[Sequence[Any]] | None,
    batches: Iterator[Sequence[Sequence[Any]]],
    csv_rows: Callable[[Iterable[Sequence[Any]]], bytes],
    json_values: Callable[[Iterable[Sequence[Any]]], list[list[Any]]],
) -> Iterator[bytes]:
    """The whole snapshot as CSV or NDJSON, one encoded batch at a time."""
    if fmt == "csv":
        yield _csv_header(names)
    encode = csv_rows if fmt == "csv" else (lambda rows: _ndjson_rows(names, json_values(rows)))
    if first is None:
        return
    yield encode(first)
    for batch in batches:
        yield encode(batch)
