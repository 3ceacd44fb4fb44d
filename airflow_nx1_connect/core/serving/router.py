"""The data REST API's router: one `Request` in, one `Response` out (see the package).

The Flask blueprint (`web.blueprint`) and the FastAPI app (`web.api`) only translate their
framework's request into a `Request`, call `handle` (or `route_not_found` /
`method_not_allowed`), and send back the `Response`: same statuses, headers and bodies.

Order of checks on every data API route (so an unauthenticated caller learns nothing):

1. an oversized request: 414 / 431;
2. a key in the query string: 400, before anything else, without echoing or logging it;
3. authentication (`Authorization: Bearer` or `X-API-Key`): 401;
4. the key's data API against the name in the path: 403, whether or not the name exists;
4b. the key's rate limit (`core.ratelimit`): 429 with `Retry-After`, `RateLimit-Policy` and
    `RateLimit`; an admitted request is counted for the key's usage (`core.usage`);
5. the snapshot (none published yet, unknown or no longer retained id): 404;
6. the query parameters `start`, `limit`, `columns`, `format`, `where.<column>`, `sort`: 400.

Every route answers GET and HEAD except `runs`, which answers POST only (ROUTE_METHODS);
another method gets 405 with the route's `Allow`.

ETags hash the snapshot id with the request's shape (route, start, limit, columns,
format, filters, sort), known before any row is read: the conditional check comes first
and a 304 reads no rows (`http.finish` runs the body only for a 200); a gzip body has its
own ETag. A
snapshot's own URL is `immutable`, `latest` and the catalogue routes live 30 seconds. CSV,
NDJSON, Arrow and Parquet without `limit` stream the whole snapshot from `start`, one
10,000-row keyset batch at a time (an Arrow record batch / a Parquet row group each). Rows
responses carry `X-NX1-Snapshot-Id` and `X-NX1-Published-At`; the `Link` and
`data.next_url` of a `latest` page name the snapshot's own URL, so paging never mixes two
snapshots.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import sqlalchemy as sa

from airflow_nx1_connect.core import arrow, openapi, ratelimit, reads, usage
from airflow_nx1_connect.core import policy as policies
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.clock import iso
from airflow_nx1_connect.core.closing import close
from airflow_nx1_connect.core.engines import get_engine
from airflow_nx1_connect.core.errors import NotFound
from airflow_nx1_connect.core.policy import KeyPolicy
from airflow_nx1_connect.core.reads import OPS
from airflow_nx1_connect.core.runs import RunLauncher
from airflow_nx1_connect.core.serving.auth import authenticate, extract_key, refuse_key_in_query
from airflow_nx1_connect.core.serving.changes import changes_response
from airflow_nx1_connect.core.serving.columnar import columnar_stream, rows_stream, started
from airflow_nx1_connect.core.serving.cors import add_cors_headers, is_preflight, preflight
from airflow_nx1_connect.core.serving.encoders import (
    csv_encoder,
    csv_header,
    dumps,
    json_converter,
    ndjson_rows,
    shaped,
    stream,
)
from airflow_nx1_connect.core.serving.http import (
    ALLOWED_METHODS,
    IMMUTABLE,
    PROBLEM_JSON,
    SHORT_LIVED,
    Payload,
    Request,
    Response,
    bad_request,
    complete,
    complete_async,
    error_response,
    etag_for,
    finish,
    http_error,
    method_not_allowed,
    problem_for,
    refuse_oversized,
    route_not_found,
)
from airflow_nx1_connect.core.serving.params import (
    FORMATS,
    MAX_START,
    MEDIA_TYPES,
    TEXT_FORMATS,
    parse_rows_params,
)
from airflow_nx1_connect.core.serving.runs import run_status_response, start_run_response
from airflow_nx1_connect.core.settings import Settings, get_settings
from airflow_nx1_connect.core.types import Column

__all__ = [
    "ALLOWED_METHODS",
    "FORMATS",
    "MAX_START",
    "OPS",
    "PROBLEM_JSON",
    "ROUTES",
    "ROUTE_METHODS",
    "Request",
    "Response",
    "bad_request",
    "complete",
    "complete_async",
    "error_response",
    "extract_key",
    "handle",
    "http_error",
    "method_not_allowed",
    "route_not_found",
]

#: The routes every adapter serves, relative to `{base}`.
ROUTES: dict[str, str] = {
    "data_api": "/data-apis/{name}",
    "latest": "/data-apis/{name}/latest",
    "snapshots": "/data-apis/{name}/snapshots",
    "snapshot": "/data-apis/{name}/snapshots/{snapshot_id}",
    "changes": "/data-apis/{name}/changes",
    "runs": "/data-apis/{name}/runs",
    "run": "/data-apis/{name}/runs/{run_id}",
    "openapi": "/data-apis/{name}/openapi.json",
}

#: The methods of each route that does not take ALLOWED_METHODS (GET, HEAD).
ROUTE_METHODS: dict[str, tuple[str, ...]] = {"runs": ("POST",)}


def methods_for(endpoint: str) -> tuple[str, ...]:
    """The methods route `endpoint` answers (405 with this `Allow` for the others)."""
    return ROUTE_METHODS.get(endpoint, ALLOWED_METHODS)


def handle(
    endpoint: str,
    request: Request,
    *,
    name: str,
    snapshot_id: str | None = None,
    run_id: str | None = None,
    engine: sa.Engine | None = None,
    settings: Settings | None = None,
    launcher: RunLauncher | None = None,
) -> Response:
    """Serve one request to `endpoint` (a key of ROUTES). Never raises.

    `engine` and `settings` default to the configured store and `[nx1_connect]` options;
    `launcher` starts and follows DAG runs (the adapters pass Airflow's, `web.runs`).
    CORS (`cors`): a preflight is answered here; every answer gets the CORS headers.
    """
    try:
        settings = settings or get_settings()
    except Exception:  # reported by _handle below, as every request would be
        origins: tuple[str, ...] = ()
    else:
        origins = settings.cors_allowed_origins
    if endpoint in ROUTES and is_preflight(request):
        answer = preflight(request, origins, methods_for(endpoint))
        if answer is not None:
            return answer
        response = method_not_allowed(request, methods_for(endpoint))
    else:
        response = _handle(
            endpoint,
            request,
            name=name,
            snapshot_id=snapshot_id,
            run_id=run_id,
            engine=engine,
            settings=settings,
            launcher=launcher,
        )
    add_cors_headers(request, response, origins)
    return response


def _handle(
    endpoint: str,
    request: Request,
    *,
    name: str,
    snapshot_id: str | None,
    run_id: str | None,
    engine: sa.Engine | None,
    settings: Settings | None,
    launcher: RunLauncher | None,
) -> Response:
    if endpoint not in ROUTES:
        return route_not_found(request)
    if request.method not in methods_for(endpoint):
        return method_not_allowed(request, methods_for(endpoint))
    try:
        refuse_oversized(request)
        refuse_key_in_query(request.query)
        settings = settings or get_settings()
        engine = engine or get_engine(
            settings.sql_alchemy_conn, read_timeout_s=settings.read_timeout_s
        )
        key = authenticate(engine, request, name)
        limit = ratelimit.effective_limit(key.rate_limit, settings.default_rate_limit)
        ratelimit.check(key.id, limit, settings.rate_limit_storage)
        usage.record(engine, key.id)
        if endpoint == "runs":
            response = start_run_response(engine, request, name, key, launcher)
        elif endpoint == "run":
            response = run_status_response(
                engine, request, name, run_id or "", launcher, key.policy
            )
        elif endpoint == "data_api":
            response = _data_api_response(engine, request, name, key.policy)
        elif endpoint == "snapshots":
            response = _snapshots_response(engine, request, name, key.policy)
        elif endpoint == "changes":
            response = changes_response(engine, settings, request, name, key.policy)
        elif endpoint == "openapi":
            response = _openapi_response(engine, settings, request, name, key.policy)
        else:
            response = _rows_response(
                engine, settings, request, endpoint, name, snapshot_id, key.policy
            )
    except Exception as exc:  # the one place where exceptions become statuses
        return problem_for(exc)
    if request.method == "HEAD":
        close(response.body)
        response.body = b""
    return response


def _data_api_response(
    engine: sa.Engine, request: Request, name: str, policy: KeyPolicy
) -> Response:
    api = snaps.get_data_api(engine, name)
    latest: snaps.Snapshot | None
    try:
        latest = snaps.latest_snapshot(engine, name)
    except NotFound:
        latest = None
    summary = policies.summary(policy, latest) if latest is not None else None
    if latest is not None:
        # The latest snapshot as the key sees it: its allowed columns only (403 when the
        # snapshot lacks one the key's policy names).
        latest = policies.view(policy, latest, engine.dialect.name).visible
    columns = snaps.resolve_columns(latest, None) if latest is not None else []
    document = {
        "name": api.name,
        "kind": api.kind,
        "description": api.description,
        "question": api.question,
        "created_at": iso(api.created_at),
        "latest_snapshot": summary,
        "columns": [{"name": c.name, "type": c.type} for c in columns],
        # From the latest snapshot's record: what a filter can look up by index.
        "indexed_columns": list(latest.indexed_columns) if latest is not None else [],
        "key_columns": list(latest.key_columns) if latest is not None else [],
    }
    body = dumps(document)
    modified = max(
        [t for t in (api.updated_at, latest.published_at if latest else None) if t is not None]
    )
    return finish(
        request,
        etag=etag_for("data_api", body, policy.fingerprint()),
        last_modified=modified,
        cache_control=SHORT_LIVED,
        media_type=MEDIA_TYPES["json"],
        body=lambda: body,
        compressible=True,
    )


def _openapi_response(
    engine: sa.Engine, settings: Settings, request: Request, name: str, policy: KeyPolicy
) -> Response:
    """The OpenAPI document of data API `name` alone, rows typed from its latest snapshot's
    columns as the key sees them (`core.openapi`, `core.policy`); 404 until a snapshot is
    published, 403 when the snapshot lacks a column the key's policy names."""
    api = snaps.get_data_api(engine, name)
    latest = snaps.latest_snapshot(engine, name)
    columns = policies.view(policy, latest, engine.dialect.name).columns(None)
    base = unquote(request.path).rsplit("/data-apis/", 1)[0]
    document = openapi.data_api_document(
        name=api.name,
        description=api.description,
        question=api.question,
        columns=columns,
        server_url=request.link_root() + base,
        max_page_size=settings.max_page_size,
        default_page_size=settings.default_page_size,
    )
    body = dumps(document)
    return finish(
        request,
        etag=etag_for("openapi", body, policy.fingerprint()),
        last_modified=max(t for t in (api.updated_at, latest.published_at) if t is not None),
        cache_control=SHORT_LIVED,
        media_type=MEDIA_TYPES["json"],
        body=lambda: body,
        compressible=True,
    )


def _snapshots_response(
    engine: sa.Engine, request: Request, name: str, policy: KeyPolicy
) -> Response:
    api = snaps.get_data_api(engine, name)
    published = snaps.list_snapshots(engine, name)
    summaries = [policies.summary(policy, s) for s in published]
    body = dumps({"data_api": name, "snapshots": summaries})
    times = [s.published_at for s in published if s.published_at is not None]
    return finish(
        request,
        etag=etag_for("snapshots", body, policy.fingerprint()),
        last_modified=max(times) if times else api.created_at,
        cache_control=SHORT_LIVED,
        media_type=MEDIA_TYPES["json"],
        body=lambda: body,
        compressible=True,
    )


def _rows_response(
    engine: sa.Engine,
    settings: Settings,
    request: Request,
    endpoint: str,
    name: str,
    snapshot_id: str | None,
    policy: KeyPolicy,
) -> Response:
    if endpoint == "latest":
        snapshot = snaps.latest_snapshot(engine, name)
        cache_control = SHORT_LIVED
    else:
        snapshot = snaps.get_snapshot(engine, name, snapshot_id or "")
        cache_control = IMMUTABLE
    # The key's policy, before anything else is read or any format chosen (core.policy):
    # the request's columns, where. and sort see only the allowed columns, and the key's
    # row filter is AND-ed into the query (403 when the snapshot does not fit the policy).
    view = policies.view(policy, snapshot, engine.dialect.name)
    params = parse_rows_params(request, settings)
    columns = view.columns(params.columns)
    names = [c.name for c in columns]
    query = view.query(params.query, engine.dialect.name)
    etag = etag_for(
        "rows",
        snapshot.id,
        endpoint,
        params.start,
        params.limit,
        names,
        params.format,
        query,
        params.shape,
        view.fingerprint,
    )
    # Rows are read as stored and encoded straight to text (no decoding to Python first).
    csv_rows = csv_encoder(columns)
    json_values = json_converter(columns)
    if params.limit is None:
        # Whole-snapshot CSV / NDJSON: read the first batch now, so a missing table is a
        # 404 (not a cut stream), then stream the rest batch by batch.
        def body() -> bytes | Iterator[bytes] | Payload:
            start = params.start
            if params.format in ("arrow", "parquet"):
                if query:
                    rows = reads.iter_query_rows(engine, snapshot, columns, query, start=start)
                    return started(rows_stream(params.format, columns, rows))
                # Unfiltered: read straight into Arrow by the store's driver (fast path).
                record_batches = arrow.iter_record_batches(engine, snapshot, columns, start=start)
                schema = arrow.arrow_schema(columns)
                return started(columnar_stream(params.format, schema, record_batches))
            if query:
                batches = reads.iter_query_rows(engine, snapshot, columns, query, start=start)
            else:
                batches = reads.iter_raw_rows(engine, snapshot, columns, start=start)
            first = next(batches, None)
            return stream(params.format, names, first, batches, csv_rows, json_values)

    else:
        limit = params.limit

        def body() -> bytes | Iterator[bytes] | Payload:
            # Read only now: a 304 (decided by `finish` before this runs) reads no rows.
            rows, next_start = _page(engine, snapshot, columns, query, params.start, limit)
            link = next_url(request, next_start, pinned_path(request, endpoint, snapshot))
            headers = [("Link", f'<{link}>; rel="next"')] if link is not None else []
            if params.format == "csv":
                return Payload(csv_header(names) + csv_rows(rows), headers)
            if params.format == "ndjson":
                return Payload(ndjson_rows(names, json_values(rows)), headers)
            if params.format in ("arrow", "parquet"):
                return Payload(b"".join(rows_stream(params.format, columns, [rows])), headers)
            document = dumps(
                {
                    "data_api": name,
                    "snapshot": view.summary(),
                    "data": {
                        "start": params.start,
                        "row_count": len(rows),
                        "columns": names,
                        "column_types": [c.type for c in columns],
                        "next_start": next_start,
                        "next_url": link,
                        "data": shaped(names, json_values(rows), params.shape),
                    },
                }
            )
            return Payload(document, headers)

    return finish(
        request,
        etag=etag,
        last_modified=snapshot.published_at,
        cache_control=cache_control,
        media_type=MEDIA_TYPES[params.format],
        body=body,
        compressible=params.format in TEXT_FORMATS,
        always=freshness_headers(snapshot),
    )


def freshness_headers(snapshot: snaps.Snapshot) -> list[tuple[str, str]]:
    """`X-NX1-Snapshot-Id` and `X-NX1-Published-At` (ISO 8601 UTC) of a rows response."""
    return [
        ("X-NX1-Snapshot-Id", snapshot.id),
        ("X-NX1-Published-At", iso(snapshot.published_at) or ""),
    ]


def _page(
    engine: sa.Engine,
    snapshot: snaps.Snapshot,
    columns: list[Column],
    query: reads.RowsQuery,
    start: int,
    limit: int,
) -> tuple[list[tuple[Any, ...]], int | None]:
    """One page of stored rows and the next page's `start` (None on the last page)."""
    if query:
        # One row more than asked tells whether a next page exists.
        rows = reads.read_query_rows(engine, snapshot, columns, query, start=start, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
    else:
        rows = reads.read_raw_rows(engine, snapshot, columns, start=start, limit=limit)
        more = start + len(rows) < (snapshot.row_count or 0)
    return rows, start + len(rows) if rows and more else None


def pinned_path(request: Request, endpoint: str, snapshot: snaps.Snapshot) -> str:
    """The request's path, with `/latest` replaced by the snapshot's own `/snapshots/{id}`.

    Paging links name the snapshot a page came from, so a publish between pages never
    mixes two snapshots' rows.
    """
    path = unquote(request.path)
    if endpoint == "latest":
        path = path.rsplit("/", 1)[0] + "/snapshots/" + snapshot.id
    return path


def next_url(request: Request, next_start: int | None, path: str | None = None) -> str | None:
    """The URL of the page at `next_start` (None if None): `path` (default: the request's)
    with the request's other query parameters, in order, then `start` last
    (`.../snapshots/{id}?...&start=N`, as the contract writes it), from Airflow's
    `[api] base_url` when set, path-absolute otherwise (`Request.url_root`)."""
    if next_start is None:
        return None
    return request.link(path, replace=[("start", str(next_start))])
