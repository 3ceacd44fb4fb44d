"""The OpenAPI 3.1 document of one data API, with typed row objects.

`GET {base}/data-apis/{name}/openapi.json` serves `data_api_document`: the data API's own
read operations (its name fixed in every path), whose JSON bodies are described in
`shape=objects` form, one property per column, typed from the column's family by the one
type table (`core.types.JSON_SCHEMAS`), every column nullable. A generator such as
openapi-python-client makes a client from it whose rows are typed objects.

The document is built from the columns handed in, never read here: the caller passes the
latest snapshot's columns, or only those a key may see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_nx1_connect.core.reads import OPS
from airflow_nx1_connect.core.types import FAMILIES, JSON_SCHEMAS, Column

OPENAPI_VERSION = "3.1.0"
#: Change-feed operations, the `_op` of each change row.
CHANGE_OPS = ("insert", "update", "delete")
_REF = "#/components/schemas/"
_PROBLEM_JSON = "application/problem+json"


def nullable_json_schema(family: str) -> dict[str, Any]:
    """The JSON Schema of a `family` column's values, NULL (JSON null) included."""
    schema: dict[str, Any] = dict(JSON_SCHEMAS[family])
    if "type" in schema:  # JSON columns already take any value, null too
        schema["type"] = [schema["type"], "null"]
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _query(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
        **extra,
    }


def _shape_parameter() -> dict[str, Any]:
    # Required, one value (`const`) and that value as `default`: a generated client sends
    # shape=objects without being told (openapi-python-client makes it a default argument),
    # which is the body this document describes (without it the server sends arrays).
    return {
        "name": "shape",
        "in": "query",
        "required": True,
        "description": "Always `objects`: each row is an object with one property per column.",
        "schema": {"type": "string", "const": "objects", "default": "objects"},
    }


def _page_parameters(max_page_size: int, default_page_size: int) -> list[dict[str, Any]]:
    return [
        _shape_parameter(),
        _query(
            "start",
            {"type": "integer", "minimum": 0, "default": 0},
            "Row offset (0-based) of the first row returned.",
        ),
        _query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": max_page_size},
            f"Rows in the page (default {default_page_size}); follow `data.next_url` for the "
            "next page.",
        ),
    ]


def _rows_parameters(
    columns: Sequence[Column], max_page_size: int, default_page_size: int
) -> list[dict[str, Any]]:
    names = [c.name for c in columns]
    where = [
        _query(
            f"where.{c.name}",
            {"type": "string"},
            f"Filter on `{c.name}` ({c.type}): `<op>.<value>` with `<op>` one of "
            f"{', '.join(OPS)}, e.g. `eq.<value>`, `in.(a,b)`, `is.null`.",
        )
        for c in columns
    ]
    example = f"-{names[0]}" if names else "-column"
    sort = _query(
        "sort",
        {"type": "string"},
        f"Comma-separated columns to sort by, `-` first for descending, NULLs last, e.g. "
        f"`{example}`. Columns: {', '.join(names)}.",
    )
    return [*_page_parameters(max_page_size, default_page_size), sort, *where]


def _error_responses(statuses: Sequence[int]) -> dict[str, Any]:
    texts = {
        400: "A bad parameter (start, limit, sort, shape, a where. filter, since).",
        401: "No key, or an unknown, malformed, expired or revoked key.",
        403: "The key may not read this data API (or a column its policy names is missing).",
        404: "No snapshot published yet, or no such snapshot id.",
        410: "since is no longer retained: resync from latest.",
        429: "The key is over its rate limit (see Retry-After).",
        503: "The snapshot store is unavailable or slow: try again after Retry-After.",
    }
    return {
        str(status): {
            "description": texts[status],
            "content": {_PROBLEM_JSON: {"schema": _ref("Problem")}},
        }
        for status in statuses
    }


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            "ETag": {"schema": {"type": "string"}},
            "Link": {
                "description": 'The next page: `<url>; rel="next"`.',
                "schema": {"type": "string"},
            },
        },
        "content": {"application/json": {"schema": _ref(schema)}},
    }


def _not_modified() -> dict[str, Any]:
    return {"description": "The copy named in If-None-Match is current (no body)."}


_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "An ETag from an earlier answer: 304 without a body while it is current.",
    "schema": {"type": "string"},
}


def _schemas(columns: Sequence[Column]) -> dict[str, Any]:
    names = [c.name for c in columns]
    properties = {c.name: nullable_json_schema(c.type) for c in columns}
    summary = {
        "type": "object",
        "description": "A published snapshot, without its rows.",
        "properties": {
            "id": {"type": "string"},
            "run_id": {"type": ["string", "null"]},
            "data_interval_end": {"type": ["string", "null"], "format": "date-time"},
            "published_at": {"type": ["string", "null"], "format": "date-time"},
            "row_count": {"type": ["integer", "null"]},
        },
        "required": ["id", "run_id", "data_interval_end", "published_at", "row_count"],
    }

    def page(data: str, row_count: str) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "start": {"type": "integer", "minimum": 0},
                "row_count": {"type": "integer", "minimum": 0, "description": row_count},
                "columns": {"type": "array", "items": {"type": "string"}},
                "next_start": {
                    "type": ["integer", "null"],
                    "description": "start of the next page; null on the last.",
                },
                "next_url": {
                    "type": ["string", "null"],
                    "description": "The next page's URL (pinned to its snapshot); null on "
                    "the last.",
                },
                "data": {"type": "array", "items": _ref(data)},
            },
            "required": ["start", "row_count", "columns", "next_start", "next_url", "data"],
        }

    rows_data = page("Row", "Rows in this page.")
    rows_data["properties"]["column_types"] = {
        "type": "array",
        "items": {"type": "string", "enum": list(FAMILIES)},
    }
    rows_data["required"].append("column_types")
    return {
        "Row": {
            "type": "object",
            "description": "One row: a property per column"
            + (f" ({', '.join(names)})" if names else "")
            + ", in column order; null is SQL NULL.",
            "properties": properties,
            "required": names,
        },
        "Change": {
            "type": "object",
            "description": "One change: `_op`, then the row's values (the new ones for "
            "insert and update, the old ones for delete).",
            "properties": {
                "_op": {"type": "string", "enum": list(CHANGE_OPS)},
                **properties,
            },
            "required": ["_op", *names],
        },
        "SnapshotSummary": summary,
        "RowsData": rows_data,
        "RowsPage": {
            "type": "object",
            "properties": {
                "data_api": {"type": "string"},
                "snapshot": _ref("SnapshotSummary"),
                "data": _ref("RowsData"),
            },
            "required": ["data_api", "snapshot", "data"],
        },
        "ChangesData": page("Change", "Changes in this page."),
        "ChangesPage": {
            "type": "object",
            "properties": {
                "data_api": {"type": "string"},
                "from": _ref("SnapshotSummary"),
                "to": _ref("SnapshotSummary"),
                "data": _ref("ChangesData"),
            },
            "required": ["data_api", "from", "to", "data"],
        },
        "SnapshotList": {
            "type": "object",
            "properties": {
                "data_api": {"type": "string"},
                "snapshots": {"type": "array", "items": _ref("SnapshotSummary")},
            },
            "required": ["data_api", "snapshots"],
        },
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details.",
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
            },
            "required": ["type", "title", "status", "detail"],
        },
    }


def data_api_document(
    *,
    name: str,
    description: str | None,
    question: str | None,
    columns: Sequence[Column],
    server_url: str,
    max_page_size: int,
    default_page_size: int,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of data API `name` whose rows have `columns`.

    `columns` are the ones a reader may see (the latest snapshot's, or a key's allowed
    subset); `server_url` is the API's base (`.../nx1/api/v1`), the `servers` entry.
    """
    rows_parameters = _rows_parameters(columns, max_page_size, default_page_size)
    errors = (400, 401, 403, 404, 429, 503)
    rows_responses = {
        "200": _ok("RowsPage", "A page of rows, each an object with a property per column."),
        "304": _not_modified(),
        **_error_responses(errors),
    }
    base = f"/data-apis/{name}"
    intro = description or f"The data API {name}."
    if question:
        intro += f" Question: {question}"
    snapshot_id = {
        "name": "snapshot_id",
        "in": "path",
        "required": True,
        "description": "A snapshot's id (`snapshot.id` of a rows answer, or listSnapshots).",
        "schema": {"type": "string"},
    }
    since_to = [
        {
            "name": "since",
            "in": "query",
            "required": True,
            "description": "Id of the snapshot the app read last: the changes after it.",
            "schema": {"type": "string"},
        },
        _query("to", {"type": "string"}, "Id of the snapshot to go to (default: the latest)."),
    ]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": f"{name} data API",
            "version": "1",
            "description": (
                f"{intro}\n\nRows are typed from the columns of the latest snapshot that this "
                "key may read. Send the data API key in `Authorization: Bearer <key>` or "
                "`X-API-Key: <key>`, never in the URL. Errors are application/problem+json."
            ),
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": {
            f"{base}/latest": {
                "get": {
                    "operationId": "getLatestRows",
                    "summary": "Rows of the latest published snapshot",
                    "parameters": [*rows_parameters, _IF_NONE_MATCH],
                    "responses": rows_responses,
                }
            },
            f"{base}/snapshots": {
                "get": {
                    "operationId": "listSnapshots",
                    "summary": "Retained published snapshots, newest first",
                    "parameters": [_IF_NONE_MATCH],
                    "responses": {
                        "200": _ok("SnapshotList", "The retained snapshots."),
                        "304": _not_modified(),
                        **_error_responses((401, 403, 404, 429, 503)),
                    },
                }
            },
            f"{base}/snapshots/{{snapshot_id}}": {
                "get": {
                    "operationId": "getSnapshotRows",
                    "summary": "Rows of one retained snapshot (never changes)",
                    "parameters": [snapshot_id, *rows_parameters, _IF_NONE_MATCH],
                    "responses": rows_responses,
                }
            },
            f"{base}/changes": {
                "get": {
                    "operationId": "getChanges",
                    "summary": "Rows inserted, updated and deleted between two snapshots",
                    "parameters": [
                        *since_to,
                        *_page_parameters(max_page_size, default_page_size),
                        _IF_NONE_MATCH,
                    ],
                    "responses": {
                        "200": _ok("ChangesPage", "A page of changes, `_op` first in each."),
                        "304": _not_modified(),
                        **_error_responses((*errors, 410)),
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(columns),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "The data API key."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
