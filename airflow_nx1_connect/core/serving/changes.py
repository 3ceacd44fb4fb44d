"""`GET {base}/data-apis/{name}/changes?since=<id>[&to=<id>]`: the change feed, served.

The feed itself is computed by `core.changes`; this module reads the parameters, pages
and encodes. JSON pages carry `from`, `to` and `data` (`columns` led by `_op`); CSV,
NDJSON and Arrow have a leading `_op` column and, without `limit`, stream the whole feed from one
query in constant memory. `next_url` and `Link` name the resolved `to` snapshot, so a
publish between pages never shifts them. With both ids given the answer never changes
(`immutable`); with `to` left to mean the latest it lives 30 seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain

import sqlalchemy as sa

from airflow_nx1_connect.core import changes
from airflow_nx1_connect.core.closing import close
from airflow_nx1_connect.core.errors import ValidationError
from airflow_nx1_connect.core.policy import NO_POLICY, KeyPolicy
from airflow_nx1_connect.core.policy import summary as policy_summary
from airflow_nx1_connect.core.serving.columnar import rows_stream
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
    IMMUTABLE,
    SHORT_LIVED,
    Payload,
    Request,
    Response,
    etag_for,
    finish,
)
from airflow_nx1_connect.core.serving.params import MEDIA_TYPES, parse_rows_params, single_param
from airflow_nx1_connect.core.settings import Settings

#: The formats a change feed is served in.
CHANGE_FORMATS = ("json", "csv", "ndjson", "arrow")


def changes_response(
    engine: sa.Engine,
    settings: Settings,
    request: Request,
    name: str,
    policy: KeyPolicy = NO_POLICY,
) -> Response:
    """The change feed of data API `name` between `since` and `to` (default: the latest),
    as a key with `policy` sees it: the difference of its views of the two snapshots."""
    since = single_param(request.query, "since")
    to = single_param(request.query, "to")
    if since is None or not since.strip():
        raise ValidationError(
            "since is required: the id of the snapshot your app read last (the `snapshot.id` "
            f"of a rows answer), e.g. /data-apis/{name}/changes?since=<snapshot id>.",
            field="since",
        )
    span = changes.resolve(engine, name, since.strip(), to.strip() if to else None, policy)
    params = parse_rows_params(request, settings)
    if params.format not in CHANGE_FORMATS:
        raise ValidationError(
            f"A change feed is served as {', '.join(CHANGE_FORMATS)}; ask for one of those.",
            field="format",
        )
    columns = changes.feed_columns(span, params.columns)
    names = [c.name for c in columns]
    etag = etag_for(
        "changes",
        span.since.id,
        span.to.id,
        params.start,
        params.limit,
        names,
        params.format,
        params.shape,
        policy.fingerprint(),
    )
    csv_rows = csv_encoder(columns)
    json_values = json_converter(columns)
    if params.limit is None:

        def body() -> bytes | Iterator[bytes] | Payload:
            # The query runs now, so an error is a problem answer, not a cut stream.
            batches = changes.iter_changes(engine, span, columns, start=params.start)
            first = next(batches, None)
            if params.format == "arrow":
                rest = [first] if first is not None else []
                return _closing(rows_stream("arrow", columns, chain(rest, batches)), batches)
            return _closing(
                stream(params.format, names, first, batches, csv_rows, json_values), batches
            )

    else:
        limit = params.limit

        def body() -> bytes | Iterator[bytes] | Payload:
            # The feed's query runs only now: a 304 (decided first, by `finish`) runs none.
            rows = changes.read_changes(engine, span, columns, start=params.start, limit=limit + 1)
            next_start = params.start + limit if len(rows) > limit else None
            rows = rows[:limit]
            url = page_url(request, next_start, span.to.id) if next_start is not None else None
            headers = [("Link", f'<{url}>; rel="next"')] if url is not None else []
            if params.format == "arrow":
                return Payload(b"".join(rows_stream("arrow", columns, [rows])), headers)
            if params.format == "csv":
                return Payload(csv_header(names) + csv_rows(rows), headers)
            if params.format == "ndjson":
                return Payload(ndjson_rows(names, json_values(rows)), headers)
            document = dumps(
                {
                    "data_api": name,
                    "from": policy_summary(policy, span.since),
                    "to": policy_summary(policy, span.to),
                    "data": {
                        "start": params.start,
                        "row_count": len(rows),
                        "columns": names,
                        "next_start": next_start,
                        "next_url": url,
                        "data": shaped(names, json_values(rows), params.shape),
                    },
                }
            )
            return Payload(document, headers)

    return finish(
        request,
        etag=etag,
        last_modified=span.to.published_at,
        cache_control=IMMUTABLE if to else SHORT_LIVED,
        media_type=MEDIA_TYPES[params.format],
        body=body,
    )


def _closing(chunks: Iterator[bytes], source: Iterator[object]) -> Iterator[bytes]:
    """`chunks`, closing `source` (the feed's open query) when they end or are closed."""
    try:
        yield from chunks
    finally:
        close(source)


def page_url(request: Request, start: int, to_id: str) -> str:
    """This request's URL with `start` set and `to` pinned to the resolved snapshot id (from
    `[api] base_url` when set, path-absolute otherwise: `Request.url_root`)."""
    return request.link(replace=[("to", to_id), ("start", str(start))])
