"""The OpenAPI description of the data REST API's FastAPI app (`web.api`): parameters,
responses and headers of what `core.serving` answers, which FastAPI cannot see (parameters
are read raw and validated by `core.serving`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from airflow_nx1_connect.core.serving import router
from airflow_nx1_connect.core.serving.http import PROBLEM_JSON
from airflow_nx1_connect.core.settings import Settings
from airflow_nx1_connect.web import admin_api, models


def problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    # The model's schema is put under application/problem+json by `openapi()` below.
    response: dict[str, Any] = {"description": description, "model": models.Problem}
    if headers:
        response["headers"] = headers
    return response


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: problem(
        "A key in the query string, two different keys, or a bad start, limit, columns, "
        "format, where.<column> filter or sort."
    ),
    401: problem(
        "No key, or an unknown, malformed, expired or revoked key.",
        {
            "WWW-Authenticate": {
                "description": '`Bearer` (no key) or `Bearer error="invalid_token"`.',
                "schema": {"type": "string"},
            }
        },
    ),
    403: problem("The key belongs to another data API (whether or not this name exists)."),
    404: problem("No such data API route, no snapshot published yet, or unknown snapshot id."),
    405: problem("Only GET and HEAD are allowed."),
    414: problem("The query string is larger than 8 KiB."),
    429: problem(
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
    431: problem("The request headers are larger than 32 KiB."),
    503: problem(
        "The snapshot store or the rate limit storage cannot be reached (answered within seconds).",
        {"Retry-After": {"schema": {"type": "string"}}},
    ),
}

CACHE_HEADERS = {
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

NOT_MODIFIED = {
    "description": "The copy named in If-None-Match is current (empty body).",
    "headers": CACHE_HEADERS,
}

IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "An ETag from an earlier answer: 304 with no body if it is still current.",
    "schema": {"type": "string"},
}


def rows_parameters() -> list[dict[str, Any]]:
    # `limit`'s maximum and default come from the settings when the document is built.
    return [
        {
            "name": "start",
            "in": "query",
            "required": False,
            "description": "Row offset (0-based) of the first row returned.",
            "schema": {"type": "integer", "minimum": 0, "maximum": router.MAX_START, "default": 0},
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
            "schema": {"type": "string", "enum": list(router.FORMATS)},
        },
        {
            "name": "shape",
            "in": "query",
            "required": False,
            "description": (
                "How JSON writes each row in `data.data`: `arrays` (a list in the order of "
                '`data.columns`) or `objects` (`{"<column>": value}`, in column order). '
                "Other formats ignore it."
            ),
            "schema": {"type": "string", "enum": ["arrays", "objects"], "default": "arrays"},
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
        IF_NONE_MATCH,
    ]


#: How the `where.<column>` filters work (OpenAPI has no parameter named by a pattern).
FILTERS_DESCRIPTION = (
    "Filters: `where.<column>=<op>.<value>`, repeatable, AND-ed. `<op>` is one of "
    + ", ".join(f"`{op}`" for op in router.OPS)
    + ". `like` takes `*` as the wildcard (case-sensitive), `in` a list `in.(a,b,c)` (quote "
    'a value holding a comma: `in.("a,b",c)`), `is` takes `is.null` or `is.not_null`. The '
    "value is parsed as the column's type (numbers, `true`/`false`, dates `YYYY-MM-DD`, ISO "
    "8601 timestamps); an unknown column or op, or a value of the wrong type, is a 400. "
    "Example: `?where.units=gte.100&where.product=like.Esp*&sort=-units`. `start`, `limit`, "
    "`Link` and `data.next_url` page the filtered, sorted result; the next page of `latest` "
    "is on the snapshot's own URL, so a publish between pages never mixes snapshots."
)
FRESHNESS_HEADERS = {
    "X-NX1-Snapshot-Id": {
        "description": "The id of the snapshot the rows come from.",
        "schema": {"type": "string"},
    },
    "X-NX1-Published-At": {
        "description": "When that snapshot was published (ISO 8601 UTC).",
        "schema": {"type": "string", "format": "date-time"},
    },
}


def rows_responses() -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "A page of rows (JSON), or CSV / NDJSON / Arrow / Parquet (a "
            "page with limit, the whole snapshot from start without).",
            "headers": {
                **CACHE_HEADERS,
                **FRESHNESS_HEADERS,
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
        304: {**NOT_MODIFIED, "headers": {**CACHE_HEADERS, **FRESHNESS_HEADERS}},
        **_ERRORS,
    }


def changes_parameters() -> list[dict[str, Any]]:
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
    return since_to + rows_parameters()


def changes_responses() -> dict[int | str, dict[str, Any]]:
    responses = rows_responses()
    responses[200] = {
        **responses[200],
        "description": "A page of changes (JSON), or CSV / NDJSON / Arrow with a leading `_op` "
        "column (a page with limit, the whole feed from start without).",
        "model": models.ChangesPage,
    }
    responses[400] = problem(
        "since missing; a key in the query string; a bad start, limit, columns or format."
    )
    responses[410] = problem(
        "since (or to) is no longer retained, or the columns changed between them: "
        "resync from /latest."
    )
    return responses


#: The body models of the JSON routes other than rows, changes and runs.
JSON_MODELS: dict[str, type[Any]] = {
    "data_api": models.DataApi,
    "snapshots": models.SnapshotList,
    "openapi": dict[str, Any],
}


def json_ok(model: type[Any], description: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"description": description, "headers": CACHE_HEADERS, "model": model},
        304: NOT_MODIFIED,
        **_ERRORS,
    }


RUN_ROUTES: dict[str, tuple[str, str, str]] = {
    "runs": (
        "POST",
        "startRun",
        "Start a run of the rule now (a key with the run scope), or get the one in progress",
    ),
    "run": ("GET", "getRun", "A run's state and the snapshot it published"),
}

PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "`wait=N` (1..60): answer when the run ends or after N seconds.",
    "schema": {"type": "string", "pattern": "wait=\\d+"},
}

RUN_HEADERS = {
    "Preference-Applied": {
        "description": "`wait=N` when the request had `Prefer: wait=N`.",
        "schema": {"type": "string"},
    }
}


def run_responses(endpoint: str) -> dict[int | str, dict[str, Any]]:
    errors = {**_ERRORS, 404: problem("No such data API or run.")}
    errors[400] = problem("A key in the query string, or a Prefer wait outside 1..60.")
    if endpoint == "run":
        return {
            200: {"description": "The run.", "headers": RUN_HEADERS, "model": models.RunStatus},
            **errors,
        }
    location = {"Location": {"description": "The run's status_url.", "schema": {"type": "string"}}}
    return {
        200: {
            "description": "With Prefer: wait: the run ended within the wait (its snapshot "
            "on success).",
            "headers": {**RUN_HEADERS, **location},
            "model": models.RunStarted,
        },
        202: {
            "description": "The run is queued or running (a new one, or the one an earlier "
            "request started).",
            "headers": {**RUN_HEADERS, **location},
            "model": models.RunStarted,
        },
        **errors,
        403: problem("The key belongs to another data API, or lacks the run scope."),
        405: problem("Only POST is allowed."),
        409: problem("The rule's DAG is paused, missing or has import errors."),
        503: problem(
            "The snapshot store or Airflow's metadata database cannot be reached.",
            {"Retry-After": {"schema": {"type": "string"}}},
        ),
    }


def document(app: FastAPI, settings: Settings, api_prefix: str) -> dict[str, Any]:
    """The app's OpenAPI document: FastAPI's, with the key's security schemes, problem+json
    for 4xx/5xx, JSON first among a response's media types, no 422s (parameters are
    validated by `core.serving`), and the configured page sizes."""
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
                content[PROBLEM_JSON] = content.pop("application/json")
            elif "application/json" in content:
                # JSON first: it is the default answer, and generators (e.g.
                # openapi-python-client) type a response by its first media type
                # they know; with text/csv first, a rows page was typed as `str`.
                response["content"] = {
                    "application/json": content.pop("application/json"),
                    **content,
                }
        admin = path.startswith(api_prefix + admin_api.PREFIX)
        for parameter in operation.get("parameters", []):
            if parameter["name"] == "limit" and not admin:
                parameter["schema"]["maximum"] = settings.max_page_size
                parameter["description"] = parameter["description"].replace(
                    "`default_page_size`", str(settings.default_page_size)
                )
    for unused in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(unused, None)
    return schema
