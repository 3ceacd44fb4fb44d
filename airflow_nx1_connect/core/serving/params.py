"""The rows endpoints' query parameters, validated (ValidationError -> 400).

Query parameters this API does not know are ignored, as is usual for REST APIs; a known
one given twice is a 400.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from airflow_nx1_connect.core.errors import ValidationError
from airflow_nx1_connect.core.filters import parse_filter
from airflow_nx1_connect.core.reads import RowsQuery, SortKey
from airflow_nx1_connect.core.serving.http import Request
from airflow_nx1_connect.core.serving.negotiation import weighted
from airflow_nx1_connect.core.settings import Settings

FORMATS = ("json", "csv", "ndjson", "arrow", "parquet")
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}
#: `shape` of JSON rows: `arrays` (the default, a list per row) or `objects` ({column: value}).
SHAPES = ("arrays", "objects")
#: Formats whose bodies are text, gzip-compressed when the client accepts it.
TEXT_FORMATS = ("json", "csv", "ndjson")
#: Largest `start` accepted (keeps the value inside a signed 64-bit integer).
MAX_START = 2**62
DIGITS = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class RowsParams:
    """Validated rows parameters. `limit` None means "stream the whole snapshot"."""

    start: int
    limit: int | None
    columns: list[str] | None
    format: str
    query: RowsQuery = field(default_factory=RowsQuery)
    shape: str = "arrays"


def single_param(query: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in query if k == name]
    if len(values) > 1:
        raise ValidationError(f"Give {name} at most once.", field=name)
    return values[0] if values else None


def negotiate(accept: str | None) -> str:
    """The format an `Accept` header asks for; JSON unless another format is preferred."""
    if not accept:
        return "json"
    best, best_q = "json", -1.0
    for media, q in weighted(accept):
        fmt = {
            "text/csv": "csv",
            "application/csv": "csv",
            "application/x-ndjson": "ndjson",
            "application/ndjson": "ndjson",
            "application/jsonl": "ndjson",
            "application/json": "json",
            "application/vnd.apache.arrow.stream": "arrow",
            "application/vnd.apache.parquet": "parquet",
        }.get(media)
        if fmt is None or q <= 0:
            continue
        # Prefer the higher q; on a tie, the earlier item.
        if q > best_q:
            best, best_q = fmt, q
    return best


def too_big(digits: str, maximum: int) -> bool:
    """True when a string of digits is a number above `maximum` (never parses huge ones)."""
    significant = digits.lstrip("0")
    return len(significant) > len(str(maximum)) or int(significant or "0") > maximum


def parse_rows_params(request: Request, settings: Settings) -> RowsParams:
    """Validate `start`, `limit`, `columns`, `format` and `shape` (ValidationError on bad
    input)."""
    query = request.query
    start_text = single_param(query, "start")
    start = 0
    if start_text is not None:
        if not DIGITS.match(start_text) or too_big(start_text, MAX_START):
            raise ValidationError(
                f"start must be a whole number of rows from 0 to {MAX_START}, e.g. start=0.",
                field="start",
            )
        start = int(start_text)
    limit_text = single_param(query, "limit")
    limit: int | None = None
    if limit_text is not None:
        if (
            not DIGITS.match(limit_text)
            or too_big(limit_text, settings.max_page_size)
            or int(limit_text) < 1
        ):
            raise ValidationError(
                f"limit must be a whole number from 1 to {settings.max_page_size}, "
                f"e.g. limit={settings.default_page_size}.",
                field="limit",
            )
        limit = int(limit_text)
    columns_text = single_param(query, "columns")
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
    format_text = single_param(query, "format")
    if format_text is not None:
        fmt = format_text.strip().lower()
        if fmt not in FORMATS:
            raise ValidationError(
                f"format must be one of {', '.join(FORMATS)}, or leave it out and send an "
                "Accept header.",
                field="format",
            )
    else:
        fmt = negotiate(request.header("accept"))
    if fmt == "json" and limit is None:
        limit = settings.default_page_size
    return RowsParams(
        start=start,
        limit=limit,
        columns=columns,
        format=fmt,
        query=parse_rows_query(query),
        shape=parse_shape(query),
    )


def parse_shape(query: Sequence[tuple[str, str]]) -> str:
    """`shape=arrays` (default) or `shape=objects`: how JSON bodies write each row."""
    shape = single_param(query, "shape")
    if shape is None:
        return "arrays"
    if shape not in SHAPES:
        raise ValidationError(
            "shape must be arrays (each row a list, in the order of data.columns) or objects "
            '(each row {"<column>": value}), e.g. shape=objects.',
            field="shape",
        )
    return shape


WHERE_PREFIX = "where."


def parse_rows_query(query: Sequence[tuple[str, str]]) -> RowsQuery:
    """`where.<column>=<op>.<value>` filters (repeatable, AND-ed) and `sort=col,-col2`.

    Only the syntax is checked here; columns and values are checked against the snapshot's
    columns and types by `core.reads` (both raise ValidationError, a 400).
    """
    filters = tuple(
        parse_filter(key[len(WHERE_PREFIX) :], value)
        for key, value in query
        if key.startswith(WHERE_PREFIX)
    )
    sort_text = single_param(query, "sort")
    sort: tuple[SortKey, ...] = ()
    if sort_text is not None:
        items = [s.strip() for s in sort_text.split(",")]
        if not all(items) or not all(i.lstrip("-") for i in items):
            raise ValidationError(
                "sort must be a comma-separated list of column names, each with a leading - "
                "for descending order, e.g. sort=-units,product.",
                field="sort",
            )
        sort = tuple(SortKey(i.removeprefix("-"), i.startswith("-")) for i in items)
        if len({k.column for k in sort}) != len(sort):
            raise ValidationError("A column is named twice in sort.", field="sort")
    return RowsQuery(filters=filters, sort=sort)
