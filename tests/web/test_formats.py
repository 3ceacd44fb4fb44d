"""Data API v2 transfer: Arrow / Parquet, gzip and CORS, on both adapters and both stores.

Arrow and Parquet bodies are read back with the libraries apps use (pyarrow, pandas,
polars) and compared with the rows the source gave the writer (`big_rows`).
"""

from __future__ import annotations

import csv
import decimal
import gzip
import io
import json
from typing import Any

import pandas as pd
import polars as pl
import polars.testing
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

from airflow_nx1_connect.core import keys, writer
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.serving.columnar import rows_stream
from airflow_nx1_connect.core.types import Column
from tests.web.conftest import BIG_ROWS, COLUMNS, Adapter, Answer, ApiStore, big_rows

#: The Arrow type of each family, as the contract lists them (NUMERIC: exact text).
ARROW = {
    "INTEGER": pa.int64(),
    "TEXT": pa.utf8(),
    "NUMERIC": pa.utf8(),
    "BOOLEAN": pa.bool_(),
    "DATE": pa.date32(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "JSON": pa.utf8(),
    "REAL": pa.float64(),
}
SCHEMA = pa.schema([pa.field(n, ARROW[t]) for n, t in COLUMNS])
ORIGIN = "https://dash.example.com"


def expected_table(rows: list[tuple[Any, ...]]) -> pa.Table:
    """The source rows as the Arrow table the API must send."""
    out = []
    for r in rows:
        values = list(r)
        values[2] = None if r[2] is None else str(r[2])
        values[6] = None if r[6] is None else json.dumps(r[6], ensure_ascii=False)
        out.append(dict(zip(SCHEMA.names, values, strict=True)))
    return pa.Table.from_pylist(out, schema=SCHEMA)


def same(adapters: list[Adapter], path: str, headers: dict[str, str]) -> list[Answer]:
    """Both adapters' answers (bodies gzip-decoded), checked to be alike."""
    answers = [a.get(path, headers) for a in adapters]
    for answer in answers:
        if answer.headers.get("content-encoding") == "gzip" and answer.body[:2] == b"\x1f\x8b":
            answer.body = gzip.decompress(answer.body)
    flask, fastapi = answers
    assert flask.status == fastapi.status, (path, flask.status, fastapi.body[:300])
    for name in ("content-type", "etag", "vary", "link", "content-encoding", "cache-control"):
        assert flask.headers.get(name) == fastapi.headers.get(name), (path, name)
    assert flask.body == fastapi.body, path
    return answers


def key(api_store: ApiStore) -> dict[str, str]:
    return {"X-API-Key": api_store.keys["sales"]}


def normalised(table: pa.Table) -> pa.Table:
    """The table with its metadata dropped (compared on types and values)."""
    return table.replace_schema_metadata(None).cast(SCHEMA)


# ---------------------------------------------------------------------------------------
# Arrow and Parquet
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "&limit=7&start=1", "&start=4990"])
def test_arrow_stream_gives_back_the_source_rows(
    query: str, adapters: list[Adapter], api_store: ApiStore
) -> None:
    answer, _ = same(adapters, f"data-apis/sales/latest?format=arrow{query}", key(api_store))
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/vnd.apache.arrow.stream"
    rows = big_rows()
    start = 1 if "start=1" in query else 4990 if "4990" in query else 0
    stop = start + 7 if "limit=7" in query else BIG_ROWS
    expected = expected_table(rows[start:stop])

    table = pyarrow.ipc.open_stream(answer.body).read_all()
    assert [f.type for f in table.schema] == [ARROW[t] for _, t in COLUMNS]
    assert [f.name for f in table.schema] == [n for n, _ in COLUMNS]
    assert table.schema.field("amount").metadata[b"nx1.type"] == b"NUMERIC"
    assert b"precision" in table.schema.field("amount").metadata[b"nx1.note"]
    assert normalised(table).equals(expected)
    assert table.to_pylist()[:1] == expected.to_pylist()[:1]

    polars.testing.assert_frame_equal(
        pl.read_ipc_stream(answer.body), pl.from_arrow(expected), check_dtypes=True
    )
    if "limit" in query:
        assert 'rel="next"' in answer.headers["link"]


@pytest.mark.parametrize("query", ["", "&limit=3", "&columns=ts,id,ok"])
def test_parquet_gives_back_the_source_rows(
    query: str, adapters: list[Adapter], api_store: ApiStore
) -> None:
    answer, _ = same(adapters, f"data-apis/sales/latest?format=parquet{query}", key(api_store))
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/vnd.apache.parquet"
    expected = expected_table(big_rows()[:3] if "limit" in query else big_rows())
    if "columns" in query:
        expected = expected.select(["ts", "id", "ok"])
    got = pd.read_parquet(io.BytesIO(answer.body))
    pd.testing.assert_frame_equal(got, expected.to_pandas())
    assert (
        pq.read_table(io.BytesIO(answer.body))
        .replace_schema_metadata(None)
        .cast(expected.schema)
        .equals(expected)
    )


def test_arrow_from_accept_header_and_old_snapshot(
    adapters: list[Adapter], api_store: ApiStore
) -> None:
    path = f"data-apis/sales/snapshots/{api_store.old.id}"
    headers = {**key(api_store), "Accept": "application/vnd.apache.arrow.stream"}
    answer, _ = same(adapters, path, headers)
    assert answer.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pyarrow.ipc.open_stream(answer.body).read_all()
    assert normalised(table).equals(expected_table(big_rows()[:10]))
    headers = {**key(api_store), "Accept": "application/vnd.apache.parquet"}
    answer, _ = same(adapters, path, headers)
    assert pq.read_table(io.BytesIO(answer.body)).num_rows == 10
    # The format is part of the ETag: an Arrow validator does not match Parquet.
    answer, _ = same(adapters, f"{path}?format=arrow", key(api_store))
    etag = answer.headers["etag"]
    assert (
        same(adapters, f"{path}?format=arrow", {**key(api_store), "If-None-Match": etag})[0].status
        == 304
    )
    assert (
        same(adapters, f"{path}?format=parquet", {**key(api_store), "If-None-Match": etag})[
            0
        ].status
        == 200
    )


def test_columnar_streams_one_batch_at_a_time() -> None:
    """Each row batch is sent before the next is read: a record batch / a row group each."""
    columns = [Column("id", "INTEGER"), Column("day", "DATE"), Column("flag", "BOOLEAN")]
    read: list[int] = []

    def batches() -> Any:
        for b in range(5):
            read.append(b)
            yield [(b * 3 + i, f"2026-01-0{i + 1}", i % 2) for i in range(3)]

    for fmt in ("arrow", "parquet"):
        read.clear()
        chunks = []
        stream = rows_stream(fmt, columns, batches())
        for chunk in stream:
            chunks.append(chunk)
            # never more than one batch read ahead of what was sent
            assert len(read) <= len([c for c in chunks if c]) + 1
        body = b"".join(chunks)
        if fmt == "arrow":
            reader = pyarrow.ipc.open_stream(body)
            assert sum(1 for _ in reader) == 5
        else:
            assert pq.ParquetFile(io.BytesIO(body)).metadata.num_row_groups == 5
        table = (
            pyarrow.ipc.open_stream(body).read_all()
            if fmt == "arrow"
            else pq.read_table(io.BytesIO(body))
        )
        assert table.column("id").to_pylist() == list(range(15))
        assert table.column("flag").to_pylist() == [False, True, False] * 5


#: NUMERIC values whose `str()` has an exponent, and what every format must send for them:
#: exact text in plain notation, the way PostgreSQL writes numeric.
EXACT = [
    (decimal.Decimal("1E-7"), "0.0000001"),
    (decimal.Decimal("-1.2300E-7"), "-0.00000012300"),
    (decimal.Decimal("1E+3"), "1000"),
    (decimal.Decimal("0E-7"), "0.0000000"),
    (decimal.Decimal("1.50"), "1.50"),
    (None, None),
    (
        decimal.Decimal("123456789012345678901234567890.000000000001"),
        "123456789012345678901234567890.000000000001",
    ),
]


def test_numeric_is_the_same_plain_text_in_every_format(
    adapters: list[Adapter], api_store: ApiStore
) -> None:
    """JSON, CSV, NDJSON, an Arrow page and the whole Arrow / Parquet stream (which the
    store's driver reads as the store's own text) give one text per NUMERIC value."""
    name = "exact_numbers"
    snaps.register_data_api(api_store.engine, name=name, kind="ask", dag_id="d", task_id=name)
    writer.write_snapshot(
        api_store.engine,
        data_api=name,
        columns=[Column("id", "INTEGER"), Column("n", "NUMERIC")],
        batches=[[(i, value) for i, (value, _) in enumerate(EXACT)]],
    )
    headers = {"X-API-Key": keys.create_key(api_store.engine, data_api=name, days=1).secret}
    want = [text for _, text in EXACT]
    path = f"data-apis/{name}/latest"

    page = same(adapters, f"{path}?limit=100", headers)[0].json()
    assert [row[1] for row in page["data"]["data"]] == want
    lines = same(adapters, f"{path}?format=ndjson", headers)[0].body.splitlines()
    assert [json.loads(line)["n"] for line in lines] == want
    table = list(
        csv.reader(io.StringIO(same(adapters, f"{path}?format=csv", headers)[0].body.decode()))
    )
    assert [row[1] for row in table[1:]] == [text or "" for text in want]
    for query in ("format=arrow&limit=100", "format=arrow"):
        body = same(adapters, f"{path}?{query}", headers)[0].body
        assert pyarrow.ipc.open_stream(body).read_all().column("n").to_pylist() == want, query
    body = same(adapters, f"{path}?format=parquet", headers)[0].body
    assert pq.read_table(io.BytesIO(body)).column("n").to_pylist() == want


def test_empty_result_is_a_valid_empty_stream() -> None:
    columns = [Column("id", "INTEGER"), Column("n", "NUMERIC")]
    for fmt in ("arrow", "parquet"):
        body = b"".join(rows_stream(fmt, columns, [[]]))
        table = (
            pyarrow.ipc.open_stream(body).read_all()
            if fmt == "arrow"
            else pq.read_table(io.BytesIO(body))
        )
        assert table.num_rows == 0
        assert table.schema.field("n").type == pa.utf8()


# ---------------------------------------------------------------------------------------
# gzip
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query", ["", "?format=csv", "?format=ndjson", "?format=csv&limit=10", "?format=ndjson&limit=3"]
)
def test_gzip_for_json_csv_ndjson_with_its_own_etag(
    query: str, adapters: list[Adapter], api_store: ApiStore
) -> None:
    path = f"data-apis/sales/latest{query}"
    plain, _ = same(adapters, path, key(api_store))
    zipped_flask, zipped_fastapi = same(
        adapters, path, {**key(api_store), "Accept-Encoding": "gzip"}
    )
    for answer in (plain, zipped_flask):
        assert "Accept-Encoding" in answer.headers["vary"]
    assert "content-encoding" not in plain.headers
    assert zipped_flask.headers["content-encoding"] == "gzip"
    assert zipped_flask.body == plain.body  # decoded: the same representation
    assert zipped_fastapi.body == plain.body
    etag = plain.headers["etag"]
    assert zipped_flask.headers["etag"] == etag[:-1] + '-gzip"'

    # Each representation's validator gets a 304 only for that representation.
    gz = {**key(api_store), "Accept-Encoding": "gzip, deflate"}
    assert (
        same(adapters, path, {**gz, "If-None-Match": zipped_flask.headers["etag"]})[0].status == 304
    )
    assert same(adapters, path, {**gz, "If-None-Match": etag})[0].status == 200
    assert same(adapters, path, {**key(api_store), "If-None-Match": etag})[0].status == 304
    # gzip;q=0 refuses it
    refused, _ = same(adapters, path, {**key(api_store), "Accept-Encoding": "gzip;q=0, br"})
    assert "content-encoding" not in refused.headers


def test_gzip_body_is_really_compressed(adapters: list[Adapter], api_store: ApiStore) -> None:
    flask = adapters[0]
    plain = flask.get("data-apis/sales/latest?format=csv", key(api_store))
    zipped = flask.get(
        "data-apis/sales/latest?format=csv", {**key(api_store), "Accept-Encoding": "gzip"}
    )
    assert zipped.body[:2] == b"\x1f\x8b"
    assert len(zipped.body) < len(plain.body) / 3
    assert gzip.decompress(zipped.body) == plain.body


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_no_gzip_for_arrow_and_parquet(
    fmt: str, adapters: list[Adapter], api_store: ApiStore
) -> None:
    answer, _ = same(
        adapters,
        f"data-apis/sales/latest?format={fmt}",
        {**key(api_store), "Accept-Encoding": "gzip"},
    )
    assert "content-encoding" not in answer.headers
    assert "Accept-Encoding" not in answer.headers["vary"]


# ---------------------------------------------------------------------------------------
# CORS
# ---------------------------------------------------------------------------------------

PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "x-api-key",
}


def cors(adapters: list[Adapter], path: str, headers: dict[str, str], method: str) -> Answer:
    flask, fastapi = (a.request(method, path, headers) for a in adapters)
    assert flask.status == fastapi.status
    for name in (
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-expose-headers",
        "access-control-max-age",
        "vary",
        "allow",
    ):
        assert flask.headers.get(name) == fastapi.headers.get(name), name
    assert flask.body == fastapi.body
    return flask


@pytest.mark.parametrize("setting", [ORIGIN, f"https://other.example.com, {ORIGIN}", "*"])
def test_cors_allowed_origin(
    setting: str, adapters: list[Adapter], api_store: ApiStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__CORS_ALLOWED_ORIGINS", setting)
    allow = "*" if setting == "*" else ORIGIN
    for path in (
        "data-apis/sales/latest",
        "data-apis/sales",
        "data-apis/sales/snapshots",
        f"data-apis/sales/snapshots/{api_store.old.id}",
    ):
        pre = cors(adapters, path, PREFLIGHT, "OPTIONS")
        assert pre.status == 204
        for answer in (a.request("OPTIONS", path, PREFLIGHT) for a in adapters):
            assert "," not in answer.headers["access-control-allow-origin"]  # one value
        assert pre.headers["access-control-allow-origin"] == allow
        assert {"Authorization", "X-API-Key"} <= {
            h.strip() for h in pre.headers["access-control-allow-headers"].split(",")
        }
        assert "GET" in pre.headers["access-control-allow-methods"]

        got = cors(adapters, path, {**key(api_store), "Origin": ORIGIN}, "GET")
        assert got.status == 200
        assert got.headers["access-control-allow-origin"] == allow
        exposed = {h.strip() for h in got.headers["access-control-expose-headers"].split(",")}
        assert {"ETag", "Link", "Retry-After", "X-NX1-Snapshot-Id", "X-NX1-Published-At"} <= exposed
    # Errors are readable by the page too.
    refused = cors(adapters, "data-apis/sales/latest", {"Origin": ORIGIN}, "GET")
    assert refused.status == 401
    assert refused.headers["access-control-allow-origin"] == allow


@pytest.mark.parametrize("setting", ["", "https://other.example.com"])
def test_cors_refused_origin(
    setting: str, adapters: list[Adapter], api_store: ApiStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__CORS_ALLOWED_ORIGINS", setting)
    pre = cors(adapters, "data-apis/sales/latest", PREFLIGHT, "OPTIONS")
    assert pre.status == 405
    assert "access-control-allow-origin" not in pre.headers
    got = cors(adapters, "data-apis/sales/latest", {**key(api_store), "Origin": ORIGIN}, "GET")
    assert got.status == 200
    assert not any(h.startswith("access-control-") for h in got.headers)
    # A plain OPTIONS (no preflight) is still the read-only API's 405.
    assert cors(adapters, "data-apis/sales/latest", key(api_store), "OPTIONS").status == 405
