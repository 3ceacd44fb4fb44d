"""Data API v2 for consumers: filters, sort, paging over them, pinned paging, freshness.

Both adapters (`both()`: same status, headers and body) on both stores (`api_store`).
Expected rows are computed in Python from the rows the snapshot was written with.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import hypothesis
import pytest
import sqlalchemy as sa
from hypothesis import strategies as st

from airflow_nx1_connect.core import keys, reads, types, writer
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.clock import iso
from tests.web.conftest import BASE, BIG_ROWS, COLUMNS, Adapter, ApiStore, big_rows
from tests.web.helpers import assert_problem, both, key_header, next_link

NAMES = [n for n, _ in COLUMNS]
ROWS = big_rows()
ID, NAME, AMOUNT, OK, DAY, TS, META, SCORE = range(8)


def rows_url(params: list[tuple[str, str]], path: str = "data-apis/sales/latest") -> str:
    return f"{BASE}/{path}?{urlencode(params)}"


def fetch_ids(adapters: list[Adapter], api_store: ApiStore, params: list[tuple[str, str]]) -> Any:
    answer = both(
        adapters,
        rows_url([*params, ("columns", "id"), ("limit", "10000")]),
        key_header(api_store, "sales"),
    )
    assert answer.status == 200, answer.body
    return [r[0] for r in answer.json()["data"]["data"]]


def where(pred: Callable[[tuple[Any, ...]], bool]) -> list[int]:
    return [r[ID] for r in ROWS if pred(r)]


UTC = dt.timezone.utc
FILTER_CASES: list[tuple[list[tuple[str, str]], Callable[[tuple[Any, ...]], bool]]] = [
    ([("where.id", "eq.7")], lambda r: r[ID] == 7),
    ([("where.id", "ne.7")], lambda r: r[ID] != 7),
    ([("where.id", "gt.5000")], lambda r: r[ID] > 5000),
    ([("where.id", "gte.5000"), ("where.id", "lt.5002")], lambda r: 5000 <= r[ID] < 5002),
    ([("where.id", "lte.3")], lambda r: r[ID] <= 3),
    ([("where.id", "in.(1,3,5)")], lambda r: r[ID] in (1, 3, 5)),
    (
        [("where.amount", "gt.49.99")],
        lambda r: r[AMOUNT] is not None and r[AMOUNT] > decimal.Decimal("49.99"),
    ),
    ([("where.amount", "lte.0")], lambda r: r[AMOUNT] is not None and r[AMOUNT] <= 0),
    ([("where.amount", "eq.12.34")], lambda r: r[AMOUNT] == decimal.Decimal("12.34")),
    ([("where.score", "lt.0")], lambda r: r[SCORE] is not None and r[SCORE] < 0),
    ([("where.score", "gte.1e3")], lambda r: r[SCORE] is not None and r[SCORE] >= 1000),
    ([("where.ok", "eq.true"), ("where.id", "lt.20")], lambda r: r[OK] is True and r[ID] < 20),
    ([("where.ok", "eq.FALSE")], lambda r: r[OK] is False),
    ([("where.day", "eq.2026-01-02")], lambda r: r[DAY] == dt.date(2026, 1, 2)),
    (
        [("where.day", "lt.2026-01-05")],
        lambda r: r[DAY] is not None and r[DAY] < dt.date(2026, 1, 5),
    ),
    (
        [("where.ts", "gte.2026-01-04T00:00:00Z")],
        lambda r: r[TS] is not None and r[TS] >= dt.datetime(2026, 1, 4, tzinfo=UTC),
    ),
    (
        [("where.ts", "eq.2026-01-02T04:04:05+01:00")],
        lambda r: r[TS] == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    ),
    ([("where.name", "like.row 1*")], lambda r: (r[NAME] or "").startswith("row 1")),
    ([("where.name", "like.*99")], lambda r: (r[NAME] or "").endswith("99")),
    ([("where.name", "like.ROW*")], lambda r: False),  # case-sensitive on both stores
    ([("where.name", "like.row_1")], lambda r: False),  # _ and % are not wildcards
    ([("where.name", "like.row %")], lambda r: False),
    ([("where.name", "like.日本*")], lambda r: (r[NAME] or "").startswith("日本")),
    (
        [("where.name", 'in.(row 10,row 20,"x,y")')],
        lambda r: r[NAME] in ("row 10", "row 20"),
    ),
    ([("where.name", "eq.")], lambda r: r[NAME] == ""),
    ([("where.name", "is.null")], lambda r: r[NAME] is None),
    ([("where.day", "is.null")], lambda r: r[DAY] is None),
    (
        [("where.day", "is.not_null"), ("where.id", "lt.6")],
        lambda r: r[DAY] is not None and r[ID] < 6,
    ),
    ([("where.meta", 'eq.{"i":7}')], lambda r: r[META] == {"i": 7}),
    ([("where.meta", "like.*ü*")], lambda r: "ü" in json.dumps(r[META], ensure_ascii=False)),
]


@pytest.mark.parametrize(
    ("params", "pred"), FILTER_CASES, ids=lambda v: None if callable(v) else str(v)[:60]
)
def test_filters(
    params: list[tuple[str, str]],
    pred: Callable[[tuple[Any, ...]], bool],
    adapters: list[Adapter],
    api_store: ApiStore,
) -> None:
    """Each operator on each type gives exactly the rows Python selects, in row order."""
    assert fetch_ids(adapters, api_store, params) == where(pred)


def sorted_ids(*keys: tuple[int, bool]) -> list[int]:
    """Python's order: stable sorts from the last key to the first; NULLs last.

    (`reverse=True` keeps ties in their order, as the API's row-number tiebreak does.)
    """
    rows = list(ROWS)
    for index, descending in reversed(keys):
        nulls = [r for r in rows if r[index] is None]
        values = [r for r in rows if r[index] is not None]
        values.sort(key=lambda r, i=index: r[i], reverse=descending)  # type: ignore[misc]
        rows = values + nulls
    return [r[ID] for r in rows]


@pytest.mark.parametrize(
    ("sort", "keys"),
    [
        ("-id", [(ID, True)]),
        ("score", [(SCORE, False)]),
        ("-score", [(SCORE, True)]),
        ("amount", [(AMOUNT, False)]),
        ("-amount,id", [(AMOUNT, True), (ID, False)]),
        ("ok,-id", [(OK, False), (ID, True)]),
        ("-day", [(DAY, True)]),
        ("ts", [(TS, False)]),
        ("name", [(NAME, False)]),
        ("-name", [(NAME, True)]),
    ],
)
def test_sort(
    sort: str, keys: list[tuple[int, bool]], adapters: list[Adapter], api_store: ApiStore
) -> None:
    """sort=col,-col2: descending with -, NULLs last, ties in the snapshot's row order."""
    assert fetch_ids(adapters, api_store, [("sort", sort)]) == sorted_ids(*keys)


def test_paging_over_filtered_sorted_result(adapters: list[Adapter], api_store: ApiStore) -> None:
    """start, limit, next_start, Link and next_url page the filtered, sorted result."""
    headers = key_header(api_store, "sales")
    for params, expected in [
        ([("where.id", "gt.100"), ("sort", "-id")], list(range(BIG_ROWS, 100, -1))),
        ([("where.ok", "eq.true")], where(lambda r: r[OK] is True)),
        ([("where.name", "like.row 2*"), ("sort", "-score")], None),
    ]:
        if expected is None:
            expected = [
                i
                for i in sorted_ids((SCORE, True))
                if (ROWS[i - 1][NAME] or "").startswith("row 2")
            ]
        url: str | None = rows_url([*params, ("limit", "333"), ("columns", "id")])
        got: list[int] = []
        starts = []
        while url is not None:
            answer = both(adapters, url, headers)
            data = answer.json()["data"]
            starts.append(data["start"])
            got.extend(r[0] for r in data["data"])
            url = next_link(answer)
            assert url == data["next_url"]
            assert (data["next_start"] is None) == (url is None)
        assert got == expected
        assert starts == list(range(0, len(expected), 333)) or starts == [0]
        # The whole filtered result as CSV and NDJSON streams (no limit).
        csv_answer = both(
            adapters, rows_url([*params, ("columns", "id"), ("format", "csv")]), headers
        )
        assert [int(x) for x in csv_answer.body.decode().split()[1:]] == expected
        nd = both(adapters, rows_url([*params, ("start", "7"), ("format", "ndjson")]), headers)
        assert [json.loads(line)["id"] for line in nd.body.splitlines()] == expected[7:]


@pytest.mark.parametrize(
    "sort",
    [
        "name",
        "-name,id",
        "-ok,day",
        "amount",
        "-amount",
        "-ts,-name",
        "meta,-score",
        "day,ok,-name",
    ],
)
def test_sorted_streams_continue_by_keyset_exactly(sort: str, api_store: ApiStore) -> None:
    """A sorted stream continues each batch after the last row read (its sort values, NULLs
    last, ties broken by row number): its batches, small and many, give exactly the rows
    one ORDER BY query gives, over every type, NULLs and ties included."""
    keys = tuple(reads.SortKey(k.lstrip("-"), k.startswith("-")) for k in sort.split(","))
    query = reads.RowsQuery(filters=(reads.Filter("id", "gt", ("3",)),), sort=keys)
    columns = snaps.resolve_columns(api_store.latest, None)
    engine = api_store.engine
    whole = reads.read_query_rows(engine, api_store.latest, columns, query, start=2, limit=10**6)
    assert len(whole) == BIG_ROWS - 3 - 2
    batches = list(
        reads.iter_query_rows(engine, api_store.latest, columns, query, start=2, batch_size=113)
    )
    assert all(len(b) == 113 for b in batches[:-1])
    # A sorted stream reads PostgreSQL NUMERIC as its exact text (cheap to spool): the same
    # value as the Decimal of a page, written alike by every encoder.
    numeric = [i for i, c in enumerate(columns) if c.type == "NUMERIC"]

    def same_form(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            types.decimal_text(v) if i in numeric and v is not None else v
            for i, v in enumerate(row)
        )

    assert [same_form(r) for b in batches for r in b] == [same_form(r) for r in whole]


@pytest.mark.parametrize("sort", [(), (reads.SortKey("score", True),)])
def test_streamed_batches_continue_exactly(sort: Any, api_store: ApiStore) -> None:
    """Batches of a filtered stream (keyset, with or without sort) neither skip nor repeat."""
    query = reads.RowsQuery(filters=(reads.Filter("id", "gt", ("10",)),), sort=sort)
    columns = snaps.resolve_columns(api_store.latest, ["id"])
    batches = list(
        reads.iter_query_rows(
            api_store.engine, api_store.latest, columns, query, start=5, batch_size=97
        )
    )
    assert all(len(b) == 97 for b in batches[:-1])
    expected = [i for i in sorted_ids(*[(SCORE, True)] if sort else []) if i > 10][5:]
    assert [r[0] for b in batches for r in b] == expected


BAD = [
    ("where.nope", "eq.1", "Unknown column 'nope'"),
    ("where.id", "foo.1", "<op> one of eq, ne, gt, gte, lt, lte, like, in, is"),
    ("where.id", "7", "<op> one of"),
    ("where.", "eq.1", "Name a column"),
    ("where.id", "eq.abc", "not a INTEGER value; send a whole number"),
    ("where.id", "eq.99999999999999999999", "not a INTEGER value"),
    ("where.id", "in.(1,x)", "'x' is not a INTEGER value"),
    ("where.amount", "gt.1x", "not a NUMERIC value"),
    ("where.amount", "gt.1e99999", "not a NUMERIC value"),
    ("where.score", "eq.nan", "not a REAL value"),
    ("where.score", "eq.1e999", "not a REAL value"),
    ("where.ok", "eq.yes", "true or false"),
    ("where.day", "eq.2026-13-01", "not a DATE value"),
    ("where.day", "eq.tomorrow", "not a DATE value"),
    ("where.ts", "gt.noon", "not a TIMESTAMP value"),
    ("where.ts", "gt.0001-01-01T00:00+01:00", "not a TIMESTAMP value"),
    ("where.ts", "lt.2026-01-02T25:00:00Z", "not a TIMESTAMP value"),
    ("where.meta", "eq.{bad", "not a JSON value"),
    ("where.meta", "gt.1", "needs an ordered column"),
    ("where.id", "like.1*", "works on text columns"),
    ("where.name", "is.maybe", "is.null or is.not_null"),
    ("where.name", "eq.a\x00b", "NUL character"),
    ("where.name", "in.()", "takes 1 to"),
    ("where.name", "in.a,b", "in parentheses"),
    ("where.name", 'in.("a)', "could not be read"),
    ("sort", "nope", "Unknown column 'nope' in sort"),
    ("sort", "id,-id", "named twice in sort"),
    ("sort", "id,,name", "comma-separated"),
    ("sort", "-", "comma-separated"),
]


@pytest.mark.parametrize(("key", "value", "reason"), BAD)
def test_bad_filters_and_sort_are_400_with_reason(
    key: str, value: str, reason: str, adapters: list[Adapter], api_store: ApiStore
) -> None:
    for path in ("data-apis/sales/latest", f"data-apis/sales/snapshots/{api_store.old.id}"):
        answer = both(adapters, rows_url([(key, value)], path), key_header(api_store, "sales"))
        assert reason in assert_problem(answer, 400)["detail"]


def test_freshness_headers_on_every_rows_response(
    adapters: list[Adapter], api_store: ApiStore
) -> None:
    headers = key_header(api_store, "sales")
    latest = api_store.latest
    for path, snap in [
        ("data-apis/sales/latest?limit=2", latest),
        ("data-apis/sales/latest?format=csv", latest),
        ("data-apis/sales/latest?format=ndjson&where.id=lt.3", latest),
        (f"data-apis/sales/snapshots/{api_store.old.id}?sort=-id", api_store.old),
    ]:
        answer = both(adapters, f"{BASE}/{path}", headers)
        assert answer.status == 200
        assert answer.headers["x-nx1-snapshot-id"] == snap.id
        assert answer.headers["x-nx1-published-at"] == iso(snap.published_at)
        assert answer.headers["x-nx1-published-at"].endswith("Z")
        again = both(
            adapters, f"{BASE}/{path}", {**headers, "If-None-Match": answer.headers["etag"]}
        )
        assert again.status == 304 and again.headers["x-nx1-snapshot-id"] == snap.id
    # Filters and sort are part of the ETag.
    etags = {
        both(adapters, f"{BASE}/data-apis/sales/latest?{q}", headers).headers["etag"]
        for q in ("limit=5", "limit=5&where.id=gt.1", "limit=5&sort=id", "limit=5&sort=-id")
    }
    assert len(etags) == 4


# ---------------------------------------------------------------------------------------
# A data API of this module's own: pinned paging across a publish, indexes
# ---------------------------------------------------------------------------------------

PIN_COLUMNS = [snaps.Column("id", "INTEGER"), snaps.Column("name", "TEXT")]


def _pinned_api(api_store: ApiStore, name: str) -> str:
    snaps.register_data_api(api_store.engine, name=name, kind="engineer", dag_id="d", task_id=name)
    return keys.create_key(api_store.engine, data_api=name, days=1).secret


def test_paging_latest_is_pinned_across_a_publish(
    adapters: list[Adapter], api_store: ApiStore
) -> None:
    """Page /latest, publish a new snapshot between pages: exactly the first snapshot's rows."""
    name = f"pinned_{adapters[0].name}"
    headers = {"X-API-Key": _pinned_api(api_store, name)}
    first = writer.write_snapshot(
        api_store.engine,
        data_api=name,
        columns=PIN_COLUMNS,
        batches=[[(i, f"a{i}") for i in range(1, 26)]],
    )
    ids: list[int] = []
    url: str | None = f"{BASE}/data-apis/{name}/latest?limit=10&where.id=ne.3"
    pages = 0
    while url is not None:
        answer = both(adapters, url, headers)
        body = answer.json()
        assert body["snapshot"]["id"] == first.id
        assert answer.headers["x-nx1-snapshot-id"] == first.id
        ids.extend(r[0] for r in body["data"]["data"])
        url = next_link(answer)
        if url is not None:
            assert url.startswith(f"{BASE}/data-apis/{name}/snapshots/{first.id}?")
            assert body["data"]["next_url"] == url
        if pages == 0:
            # A run publishes between the first and the second page.
            writer.write_snapshot(
                api_store.engine,
                data_api=name,
                columns=PIN_COLUMNS,
                batches=[[(i, f"b{i}") for i in range(100, 90, -1)]],
            )
        pages += 1
    assert ids == [i for i in range(1, 26) if i != 3] and pages == 3
    latest = both(adapters, f"{BASE}/data-apis/{name}/latest", headers).json()
    assert latest["data"]["data"][0] == [100, "b100"]


def test_indexed_and_key_columns_listed_and_used(
    adapters: list[Adapter], api_store: ApiStore
) -> None:
    """GET /data-apis/{name} lists the latest snapshot's indexed and key columns; a filter on
    an indexed column is a plain WHERE the store answers from the index."""
    name = "indexed_api"
    secret = _pinned_api(api_store, name)
    snapshot = writer.write_snapshot(
        api_store.engine,
        data_api=name,
        columns=PIN_COLUMNS,
        batches=[[(i, f"n{i % 50}") for i in range(1, 2001)]],
        key_columns=["id"],
        index_columns=["name"],
    )
    body = both(adapters, f"{BASE}/data-apis/{name}", {"X-API-Key": secret}).json()
    assert body["key_columns"] == ["id"]
    assert set(body["indexed_columns"]) == {"name", "id"}
    assert body["indexed_columns"] == snapshot.indexed_columns
    rows = both(
        adapters,
        f"{BASE}/data-apis/{name}/latest?where.name=eq.n7&limit=100",
        {"X-API-Key": secret},
    )
    assert [r[0] for r in rows.json()["data"]["data"]] == list(range(7, 2001, 50))
    # The query the API runs for that filter uses the index.
    query = reads.RowsQuery(filters=(reads.Filter("name", "eq", ("n7",)),))
    with api_store.engine.connect() as conn:
        sql, names, positional = reads._plan(conn, snapshot, PIN_COLUMNS, query, None)
        values = reads._filter_values(snapshot, query, conn.dialect.name)
        values.update(p_limit=100, p_offset=0, p_after=None)
        params = tuple(values[n] for n in names) if positional else {n: values[n] for n in names}
        cursor = conn.connection.dbapi_connection.cursor()
        if conn.dialect.name == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        else:
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("EXPLAIN " + sql, params)
        plan = " ".join(str(r) for r in cursor.fetchall())
        cursor.close()
    assert "INDEX" in plan.upper() and f"{snapshot.table_name}_i0" in plan, plan


# ---------------------------------------------------------------------------------------
# Fuzz: no 5xx, both adapters alike, no table changed
# ---------------------------------------------------------------------------------------


#: The one table a read writes on purpose: per-key request counts (flushed by core.usage).
_USAGE_TABLE = "nx1_key_usage"


def _store_state(engine: Any) -> dict[str, Any]:
    inspector = sa.inspect(engine)
    state: dict[str, Any] = {}
    with engine.connect() as conn:
        for table in sorted(inspector.get_table_names()):
            if table.startswith("nx1_") and table != _USAGE_TABLE:
                count = conn.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar()
                state[table] = count
    return state


OP = st.sampled_from([*reads.OPS, "EQ", "", "gt ", "in", "is"])
VALUE = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "1",
            "-1",
            "1.5",
            "null",
            "not_null",
            "true",
            "(1,2)",
            '("a,b",c)',
            "2026-01-02",
            "2026-01-02T00:00:00Z",
            "0001-01-01T00:00+01:00",
            "9999-12-31",
            "' OR 1=1 --",
            '"; DROP TABLE nx1_data_apis; --',
            "%",
            "*",
            "\\",
            "1e308",
        ]
    ),
)
COLUMN = st.one_of(st.sampled_from([*NAMES, "__nx1_row__", "", "ID"]), st.text(max_size=12))
SORT = st.lists(
    st.tuples(st.booleans(), st.one_of(st.sampled_from(NAMES), st.text(max_size=8))), max_size=3
).map(lambda items: ",".join(("-" if d else "") + c for d, c in items))


@hypothesis.settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)
@hypothesis.given(
    filters=st.lists(st.tuples(COLUMN, OP, VALUE), max_size=3),
    sort=st.one_of(st.none(), SORT),
    limit=st.sampled_from(["3", "10000", None]),
    fmt=st.sampled_from(["json", "csv", "ndjson"]),
)
def test_fuzz_filters_and_sort(
    filters: list[tuple[str, str, str]],
    sort: str | None,
    limit: str | None,
    fmt: str,
    adapters: list[Adapter],
    api_store: ApiStore,
) -> None:
    """Generated where/sort parameters: 200 or 400 (never 5xx), both adapters alike."""
    params = [(f"where.{c}", f"{op}.{v}") for c, op, v in filters]
    if sort is not None:
        params.append(("sort", sort))
    if limit is not None:
        params.append(("limit", limit))
    params.append(("format", fmt))
    answer = both(adapters, rows_url(params), key_header(api_store, "sales"))
    assert answer.status in (200, 400, 414), answer.body


def test_fuzz_changed_no_table(adapters: list[Adapter], api_store: ApiStore) -> None:
    """The fuzz above, re-run here between two looks at every table: nothing changed."""
    before = _store_state(api_store.engine)
    test_fuzz_filters_and_sort(adapters=adapters, api_store=api_store)
    assert _store_state(api_store.engine) == before


def test_openapi_documents_v2_parameters(adapters: list[Adapter]) -> None:
    doc = adapters[1].get(f"{BASE}/openapi.json").json()
    for path in ("/data-apis/{name}/latest", "/data-apis/{name}/snapshots/{snapshot_id}"):
        operation = doc["paths"][f"/api/v1{path}"]["get"]
        assert "sort" in [p["name"] for p in operation["parameters"]]
        assert "where.<column>=<op>.<value>" in operation["description"]
        headers = operation["responses"]["200"]["headers"]
        assert {"X-NX1-Snapshot-Id", "X-NX1-Published-At", "Link"} <= set(headers)
    schemas = doc["components"]["schemas"]
    assert "next_url" in schemas["RowsData"]["properties"]
    assert {"indexed_columns", "key_columns"} <= set(schemas["DataApi"]["required"])


def test_next_url_names_the_snapshot_with_start_last(
    adapters: list[Adapter], api_store: ApiStore
) -> None:
    """`{base}/data-apis/{name}/snapshots/{id}?...start=N`: other parameters kept in order."""
    answer = both(
        adapters,
        f"{BASE}/data-apis/sales/latest?start=0&limit=5&columns=id&sort=-id",
        key_header(api_store, "sales"),
    )
    own = f"{BASE}/data-apis/sales/snapshots/{api_store.latest.id}"
    expected = f"{own}?limit=5&columns=id&sort=-id&start=5"
    assert answer.json()["data"]["next_url"] == expected
    assert answer.headers["link"] == f'<{expected}>; rel="next"'
