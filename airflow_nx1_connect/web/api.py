"""The data REST API as a FastAPI app (the plugin mounts it at `/nx1`).

A thin adapter over `core.serving`, like the Flask blueprint (`web.blueprint`): the same
requests get the same statuses, headers and bodies. Routes live under `/api/v1`, so
behind Airflow's api-server they answer at `/nx1/api/v1/...`, with the OpenAPI document
at `/nx1/api/v1/openapi.json` and interactive docs at `/nx1/api/v1/docs`.

Query parameters are read raw and validated by `core.serving` (not by FastAPI), so a bad
`start` is the same 400 problem+json on both adapters; they are described in the OpenAPI
document through `openapi_extra`. FastAPI's and Starlette's own errors (unknown path, wrong
method, validation) are turned into problem+json by the exception handlers below.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response as FastAPIResponse
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow_nx1_connect.core import serving
from airflow_nx1_connect.core.settings import get_settings
from airflow_nx1_connect.web import admin_api, links, models, webhooks_admin
from airflow_nx1_connect.web.runs import launcher

API_PREFIX = "/api/v1"
OPENAPI_URL = f"{API_PREFIX}/openapi.json"


def _request(request: Request) -> serving.Request:
    url = request.url
    return serving.Request(
        method=request.method,
        url_root=links.url_root(url.path),
        path=url.path,
        query=list(request.query_params.multi_items()),
        headers=dict(request.headers.items()),
    )


def _send(response: serving.Response) -> FastAPIResponse:
    headers = dict(response.headers)
    media_type = headers.pop("Content-Type", None)
    if response.streaming:
        assert not isinstance(response.body, bytes | bytearray)
        return StreamingResponse(
            response.body, status_code=response.status, headers=headers, media_type=media_type
        )
    assert isinstance(response.body, bytes | bytearray)
    return FastAPIResponse(
        bytes(response.body), status_code=response.status, headers=headers, media_type=media_type
    )


# ---------------------------------------------------------------------------------------
# OpenAPI description of what `core.serving` does
# ---------------------------------------------------------------------------------------


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    # The model's schema is put under application/problem+json by `openapi()` below.
    response: dict[str, Any] = {"description": description, "model": models.Problem}
    if headers:
        response["headers"] = headers
    return response


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _problem(
        "A key in the query string, two different keys, or a bad start, limit, columns, "
        "format, where.<column> filter or sort."
    ),
    401: _problem(
        "No key, or an unknown, malformed, expired or revoked key.",
        {
            "WWW-Authenticate": {
                "description": '`Bearer` (no key) or `Bearer error="invalid_token"`.',
                "schema": {"type": "string"},
            }
        },
    ),
    403: _problem("The key belongs to another data API (whether or not this name exists)."),
    404: _problem("No such data API route, no snapshot published yet, or unknown snapshot id."),
    405: _problem("Only GET and HEAD are allowed."),
    414: _problem("The query string is larger than 8 KiB."),
    429: _problem(
        "The key is over its rate limit (requests per minute; see [nx1_connect] "
        "default_rate_limit).",
        {
            "Retry-After": {
                "description": "Seconds until the key's one-minute window ends.",
                "schema": {"type": "string"},
            },
            "RateLimit-Policy": {
                "description": 'IETF draft field: `"per-key";q=<limit>;w=60`.',
                "schema": {"type": "string"},
            },
            "RateLimit": {
                "description": 'IETF draft field: `"per-key";r=0;t=<seconds>`.',
                "schema": {"type": "string"},
            },
        },
    ),
    431: _problem("The request headers are larger than 32 KiB."),
    503: _problem(
        "The snapshot store or the rate limit storage cannot be reached (answered within seconds).",
        {"Retry-After": {"schema": {"type": "string"}}},
    ),
}

_CACHE_HEADERS = {
    "ETag": {"description": "Validator for If-None-Match.", "schema": {"type": "string"}},
    "Last-Modified": {
        "description": "When the snapshot was published.",
        "schema": {"type": "string"},
    },
    "Cache-Control": {
        "description": "`private, max-age=31536000, immutable` on a snapshot's own URL; "
        "a short max-age elsewhere.",
        "schema": {"type": "string"},
    },
}

_NOT_MODIFIED = {
    "description": "The copy named in If-None-Match is current (empty body).",
    "headers": _CACHE_HEADERS,
}

_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "An ETag from an earlier answer: 304 with no body if it is still current.",
    "schema": {"type": "string"},
}


def _rows_parameters() -> list[dict[str, Any]]:
    # `limit`'s maximum and default come from the settings when the document is built.
    return [
        {
            "name": "start",
            "in": "query",
            "required": False,
            "description": "Row offset (0-based) of the first row returned.",
            "schema": {"type": "integer", "minimum": 0, "maximum": serving.MAX_START, "default": 0},
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": (
                "Rows in the page (default: `default_page_size`, for JSON). CSV and "
                "NDJSON without limit stream the whole snapshot from start."
            ),
            "schema": {"type": "integer", "minimum": 1},
        },
        {
            "name": "columns",
            "in": "query",
            "required": False,
            "description": "Comma-separated column names: the subset and order of columns.",
            "schema": {"type": "string"},
        },
        {
            "name": "format",
            "in": "query",
            "required": False,
            "description": (
                "json, csv, ndjson, arrow (Arrow IPC stream) or parquet. Without it, the "
                "Accept header chooses (text/csv, application/x-ndjson, "
                "application/vnd.apache.arrow.stream, application/vnd.apache.parquet); JSON "
                "otherwise. JSON, CSV and NDJSON are gzip-compressed for "
                "`Accept-Encoding: gzip`."
            ),
            "schema": {"type": "string", "enum": list(serving.FORMATS)},
        },
        {
            "name": "sort",
            "in": "query",
            "required": False,
            "description": (
                "Comma-separated columns to sort by, `-` first for descending, NULLs last, "
                "e.g. `-units,product`. Default: the snapshot's row order."
            ),
            "schema": {"type": "string"},
        },
        _IF_NONE_MATCH,
    ]


#: How the `where.<column>` filters work (OpenAPI has no parameter named by a pattern).
FILTERS_DESCRIPTION = (
    "Filters: `where.<column>=<op>.<value>`, repeatable, AND-ed. `<op>` is one of "
    + ", ".join(f"`{op}`" for op in serving.OPS)
    + ". `like` takes `*` as the wildcard (case-sensitive), `in` a list `in.(a,b,c)` (quote "
    'a value holding a comma: `in.("a,b",c)`), `is` takes `is.null` or `is.not_null`. The '
    "value is parsed as the column's type (numbers, `true`/`false`, dates `YYYY-MM-DD`, ISO "
    "8601 timestamps); an unknown column or op, or a value of the wrong type, is a 400. "
    "Example: `?where.units=gte.100&where.product=like.Esp*&sort=-units`. `start`, `limit`, "
    "`Link` and `data.next_url` page the filtered, sorted result; the next page of `latest` "
    "is on the snapshot's own URL, so a publish between pages never mixes snapshots."
)
_FRESHNESS_HEADERS = {
    "X-NX1-Snapshot-Id": {
        "description": "The id of the snapshot the rows come from.",
        "schema": {"type": "string"},
    },
    "X-NX1-Published-At": {
        "description": "When that snapshot was published (ISO 8601 UTC).",
        "schema": {"type": "string", "format": "date-time"},
    },
}


def _rows_responses() -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "A page of rows (JSON), or CSV / NDJSON / Arrow / Parquet (a "
            "page with limit, the whole snapshot from start without).",
            "headers": {
                **_CACHE_HEADERS,
                **_FRESHNESS_HEADERS,
                "Link": {
                    "description": 'The next page: `<url>; rel="next"` (not on the last page).',
                    "schema": {"type": "string"},
                },
            },
            "model": models.RowsPage,
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
                "application/vnd.apache.arrow.stream": {
                    "schema": {"type": "string", "format": "binary"}
                },
                "application/vnd.apache.parquet": {
                    "schema": {"type": "string", "format": "binary"}
                },
            },
        },
        304: {**_NOT_MODIFIED, "headers": {**_CACHE_HEADERS, **_FRESHNESS_HEADERS}},
        **_ERRORS,
    }


def _changes_parameters() -> list[dict[str, Any]]:
    since_to = [
        {
            "name": "since",
            "in": "query",
            "required": True,
            "description": "Id of the snapshot the app read last: changes after it.",
            "schema": {"type": "string"},
        },
        {
            "name": "to",
            "in": "query",
            "required": False,
            "description": "Id of the snapshot to go to (default: the latest).",
            "schema": {"type": "string"},
        },
    ]
    return since_to + _rows_parameters()


def _changes_responses() -> dict[int | str, dict[str, Any]]:
    responses = _rows_responses()
    responses[200] = {
        **responses[200],
        "description": "A page of changes (JSON), or CSV / NDJSON / Arrow with a leading `_op` "
        "column (a page with limit, the whole feed from start without).",
        "model": models.ChangesPage,
    }
    responses[400] = _problem(
        "since missing; a key in the query string; a bad start, limit, columns or format."
    )
    responses[410] = _problem(
        "since (or to) is no longer retained, or the columns changed between them: "
        "resync from /latest."
    )
    return responses


def _json_ok(model: type[Any], description: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"description": description, "headers": _CACHE_HEADERS, "model": model},
        304: _NOT_MODIFIED,
        **_ERRORS,
    }


_RUN_ROUTES: dict[str, tuple[str, str, str]] = {
    "runs": (
        "POST",
        "startRun",
        "Start a run of the rule now (a key with the run scope), or get the one in progress",
    ),
    "run": ("GET", "getRun", "A run's state and the snapshot it published"),
}

_PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "`wait=N` (1..60): answer when the run ends or after N seconds.",
    "schema": {"type": "string", "pattern": "wait=\\d+"},
}

_RUN_HEADERS = {
    "Preference-Applied": {
        "description": "`wait=N` when the request had `Prefer: wait=N`.",
        "schema": {"type": "string"},
    }
}


def _run_responses(endpoint: str) -> dict[int | str, dict[str, Any]]:
    errors = {**_ERRORS, 404: _problem("No such data API or run.")}
    errors[400] = _problem("A key in the query string, or a Prefer wait outside 1..60.")
    if endpoint == "run":
        return {
            200: {"description": "The run.", "headers": _RUN_HEADERS, "model": models.RunStatus},
            **errors,
        }
    location = {"Location": {"description": "The run's status_url.", "schema": {"type": "string"}}}
    return {
        200: {
            "description": "With Prefer: wait: the run ended within the wait (its snapshot "
            "on success).",
            "headers": {**_RUN_HEADERS, **location},
            "model": models.RunStarted,
        },
        202: {
            "description": "The run is queued or running (a new one, or the one an earlier "
            "request started).",
            "headers": {**_RUN_HEADERS, **location},
            "model": models.RunStarted,
        },
        **errors,
        403: _problem("The key belongs to another data API, or lacks the run scope."),
        405: _problem("Only POST is allowed."),
        409: _problem("The rule's DAG is paused, missing or has import errors."),
        503: _problem(
            "The snapshot store or Airflow's metadata database cannot be reached.",
            {"Retry-After": {"schema": {"type": "string"}}},
        ),
    }


def _add_run_route(app: FastAPI, endpoint: str, view: Any) -> None:
    method, operation_id, summary = _RUN_ROUTES[endpoint]
    path = API_PREFIX + serving.ROUTES[endpoint]
    app.add_api_route(
        path,
        view,
        methods=[method],
        operation_id=operation_id,
        summary=summary,
        response_class=FastAPIResponse,
        responses=_run_responses(endpoint),
        openapi_extra={"parameters": [_PREFER]},
    )
    # Every other method reaches core.serving too, which answers 405 (or a CORS preflight)
    # exactly as the Flask blueprint does, with this route's Allow.
    others = [
        m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS") if m != method
    ]
    if endpoint == "run":
        others.remove("HEAD")
        app.add_api_route(path, view, methods=["HEAD"], include_in_schema=False)
    app.add_api_route(path, view, methods=others, include_in_schema=False)


# ---------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------


def create_app() -> FastAPI:
    """A new FastAPI app serving the data REST API under /api/v1."""
    app = FastAPI(
        title="NX1 Connect data API",
        version="1",
        description=(
            "Read-only data APIs published by Airflow rules. Send the data API key in "
            "`Authorization: Bearer <key>` or `X-API-Key: <key>`, never in the URL. Errors "
            "are application/problem+json."
        ),
        openapi_url=OPENAPI_URL,
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        redirect_slashes=False,
    )

    def make_view(endpoint: str) -> Any:
        if "{snapshot_id}" in serving.ROUTES[endpoint]:

            def snapshot_view(request: Request, name: str, snapshot_id: str) -> FastAPIResponse:
                return _send(
                    serving.handle(endpoint, _request(request), name=name, snapshot_id=snapshot_id)
                )

            return snapshot_view
        if endpoint in _RUN_ROUTES:
            # Async: a `Prefer: wait` is awaited on the event loop (serving.complete_async),
            # never in a worker thread that Airflow's own routes need too.
            async def answer(request: Request, **params: Any) -> FastAPIResponse:
                response = await run_in_threadpool(
                    serving.handle, endpoint, _request(request), launcher=launcher, **params
                )
                return _send(await serving.complete_async(response))

            if "{run_id}" in serving.ROUTES[endpoint]:

                async def run_view(request: Request, name: str, run_id: str) -> FastAPIResponse:
                    return await answer(request, name=name, run_id=run_id)

                return run_view

            async def runs_view(request: Request, name: str) -> FastAPIResponse:
                return await answer(request, name=name)

            return runs_view

        def view(request: Request, name: str) -> FastAPIResponse:
            return _send(serving.handle(endpoint, _request(request), name=name, launcher=launcher))

        return view

    summaries = {
        "data_api": ("getDataApi", "The data API: kind, description, latest snapshot, columns"),
        "latest": ("getLatestRows", "Rows of the latest published snapshot"),
        "snapshots": ("listSnapshots", "Retained published snapshots, newest first"),
        "snapshot": ("getSnapshotRows", "Rows of one retained snapshot (never changes)"),
        "changes": ("getChanges", "Rows inserted, updated and deleted between two snapshots"),
    }
    for endpoint, path in serving.ROUTES.items():
        if endpoint in _RUN_ROUTES:
            _add_run_route(app, endpoint, make_view(endpoint))
            continue
        operation_id, summary = summaries[endpoint]
        rows = endpoint in ("latest", "snapshot")
        view = make_view(endpoint)
        app.add_api_route(
            API_PREFIX + path,
            view,
            methods=["GET"],
            operation_id=operation_id,
            summary=summary,
            description=FILTERS_DESCRIPTION if rows else None,
            response_class=FastAPIResponse,
            responses=_changes_responses()
            if endpoint == "changes"
            else _rows_responses()
            if rows
            else _json_ok(
                models.DataApi if endpoint == "data_api" else models.SnapshotList, summary
            ),
            openapi_extra={
                "parameters": _changes_parameters()
                if endpoint == "changes"
                else _rows_parameters()
                if rows
                else [_IF_NONE_MATCH]
            },
        )
        app.add_api_route(API_PREFIX + path, view, methods=["HEAD"], include_in_schema=False)
        # CORS preflights are answered (or refused) by core.serving, like on the blueprint.
        app.add_api_route(API_PREFIX + path, view, methods=["OPTIONS"], include_in_schema=False)

    # The control plane (admin REST API, Airflow token): /api/v1/admin/...
    admin_api.install(app, API_PREFIX)
    webhooks_admin.install(app, API_PREFIX)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> FastAPIResponse:
        detail = exc.detail if isinstance(exc.detail, str) else None
        return _send(serving.http_error(_request(request), exc.status_code, detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> FastAPIResponse:
        return _send(serving.bad_request("The request's parameters are not valid."))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> FastAPIResponse:
        return _send(serving.error_response(exc))

    built_for: list[Any] = [None]

    def openapi() -> dict[str, Any]:
        settings = get_settings()
        if app.openapi_schema is None or built_for[0] != settings:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                servers=app.servers or None,
            )
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {}).update(
                {
                    "bearer": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "The data API key.",
                    },
                    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                }
            )
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
            for path, operation in (
                (path, op) for path, item in schema["paths"].items() for op in item.values()
            ):
                # Parameters are validated by core.serving (400), never by FastAPI (422).
                operation.get("responses", {}).pop("422", None)
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if status[0] in "45" and "application/json" in content:
                        content[serving.PROBLEM_JSON] = content.pop("application/json")
                admin = path.startswith(API_PREFIX + admin_api.PREFIX)
                for parameter in operation.get("parameters", []):
                    if parameter["name"] == "limit" and not admin:
                        parameter["schema"]["maximum"] = settings.max_page_size
                        parameter["description"] = parameter["description"].replace(
                            "`default_page_size`", str(settings.default_page_size)
                        )
            for unused in ("HTTPValidationError", "ValidationError"):
                components["schemas"].pop(unused, None)
            app.openapi_schema = schema
            built_for[0] = settings
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


app = create_app()
