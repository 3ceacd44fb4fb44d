"""The change feed `GET {base}/data-apis/{name}/changes`: both adapters, both stores.

Snapshots are written by the real write path; every expected feed is computed here in
Python from the rows written (a dict by key, or a Counter of whole rows), independently
of the SQL that serves it. Every request goes to both adapters, which must answer alike.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_nx1_connect.core import engines
from tests.conftest import drop_pg_schema, make_pg_schema
from tests.web.conftest import (
    BASE,
    COLUMNS,
    HOST,
    SPECIAL_ROWS,
    STORE_ENV,
    Adapter,
    Answer,
)

PROBLEM = "application/problem+json"
IMMUTABLE = "private, max-age=31536000, immutable"
NAMES = [n for n, _ in COLUMNS]
COMPARED = ("content-type", "etag", "last-modified", "cache-control", "vary", "link")


def _row(i: int, tag: str = "") -> tuple[Any, ...]:
    return (
        i,
        f"row {i}{tag}",
        None,
        i % 2 == 0,
        dt.date(2026, 1, 1) + dt.timedelta(days=i % 30),
        dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=i),
        {"i": i},
        i / 4,
    )


#: The keyed data API `orders`: three snapshots. v1 -> v2 deletes 10..14 and row 2 (all
#: NULLs but the key), updates 20..29 and row 1, inserts 1000..1049; v2 -> v3 changes nothing.
V1 = [*SPECIAL_ROWS, *(_row(i) for i in range(5, 300))]
V2 = [r for r in V1 if r[0] not in (2, 10, 11, 12, 13, 14)] + [_row(i) for i in range(1000, 1050)]
V2 = [(*r[:1], r[1] + " (new)", *r[2:]) if 20 <= r[0] < 30 else r for r in V2]
V2[0] = (*V2[0][:2], None, *V2[0][3:])  # row 1: only its NULL-able amount changes
#: The unkeyed data API `bag`: duplicates and NULLs; a row twice before and once after is
#: one delete, a NULL row added is one insert.
BAG_COLUMNS = [("a", "INTEGER"), ("b", "TEXT")]
BAG1 = [(1, "x"), (1, "x"), (2, None), (None, None), (3, "y")]
BAG2 = [(1, "x"), (2, None), (None, None), (None, None), (3, "y"), (4, "z")]


@dataclass
class FeedStore:
    """What `feed_store` made."""

    backend: str
    url: str
    engine: Any
    ids: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)


def _populate(url: str, backend: str) -> FeedStore:
    from airflow_nx1_connect.core import engines, keys, store, writer
    from airflow_nx1_connect.core import snapshots as snaps

    engine = engines.get_engine(url)
    store.migrate(engine)
    made = FeedStore(backend, url, engine)
    columns = [snaps.Column(n, t) for n, t in COLUMNS]
    snaps.register_data_api(engine, name="orders", kind="ask", dag_id="d", task_id="orders")
    for label, rows in (("v1", V1), ("v2", V2), ("v3", V2)):
        made.ids[label] = writer.write_snapshot(
            engine, data_api="orders", columns=columns, batches=[rows], key_columns=["id"]
        ).id
    snaps.register_data_api(engine, name="bag", kind="engineer", dag_id="d", task_id="bag")
    bag_columns = [snaps.Column(n, t) for n, t in BAG_COLUMNS]
    for label, rows in (("bag1", BAG1), ("bag2", BAG2)):
        made.ids[label] = writer.write_snapshot(
            engine, data_api="bag", columns=bag_columns, batches=[rows]
        ).id
    # `shape`: keep only 2 snapshots, and change the columns in the third.
    snaps.register_data_api(engine, name="shape", kind="ask", dag_id="d", task_id="shape")
    one = [snaps.Column("x", "INTEGER")]
    two = [snaps.Column("x", "INTEGER"), snaps.Column("y", "TEXT")]
    for label, cols, rows in (
        ("s1", one, [(1,)]),
        ("s2", one, [(2,)]),
        ("s3", two, [(3, "c")]),
        ("s4", two, [(4, "d")]),
    ):
        made.ids[label] = writer.write_snapshot(
            engine, data_api="shape", columns=cols, batches=[rows], retention=3
        ).id
    for name in ("orders", "bag", "shape"):
        made.keys[name] = keys.create_key(engine, data_api=name, days=3).secret
    return made


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def feed_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FeedStore]:
    """Data APIs `orders` (keyed), `bag` (whole rows) and `shape` (retention, new columns)."""

    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('feed') / 'store.db'}"
    else:
        schema, url = make_pg_schema()
    try:
        yield _populate(url, request.param)
    finally:
        engines.dispose_engines()
        if schema:
            drop_pg_schema(schema)


@pytest.fixture(autouse=True)
def _env(feed_store: FeedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORE_ENV, feed_store.url)


def both(adapters: list[Adapter], path: str, headers: dict[str, str] | None = None) -> Answer:
    """One GET to both adapters; same status, headers and body. Returns the answer."""
    first, second = (a.request("GET", path, headers) for a in adapters)
    assert first.status == second.status, (path, first.status, second.status, second.body)
    for name in COMPARED:
        assert first.headers.get(name) == second.headers.get(name), (path, name)
    assert first.body == second.body, path
    return first


def key(store: FeedStore, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {store.keys[name]}"}


def problem(answer: Answer, status: int) -> str:
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == PROBLEM
    body = answer.json()
    assert set(body) == {"type", "title", "status", "detail"} and body["status"] == status
    return str(body["detail"])


def as_json(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if value is not None and not isinstance(value, bool | int | float | str | dict | list):
        return str(value)  # Decimal
    return value


def expected_keyed(old: list[tuple[Any, ...]], new: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Deletes in old order, then inserts and updates in new order (key: column 0)."""
    before = {r[0]: r for r in old}
    after = {r[0]: r for r in new}
    out = [["delete", *r] for r in old if r[0] not in after]
    for r in new:
        if r[0] not in before:
            out.append(["insert", *r])
        elif before[r[0]] != r:
            out.append(["update", *r])
    return [[op, *(as_json(v) for v in rest)] for op, *rest in out]


def expected_bag(old: list[tuple[Any, ...]], new: list[tuple[Any, ...]]) -> Counter[Any]:
    gone, added = Counter(old) - Counter(new), Counter(new) - Counter(old)
    return Counter({("delete", *r): n for r, n in gone.items()}) + Counter(
        {("insert", *r): n for r, n in added.items()}
    )


def feed(store: FeedStore, since: str, to: str | None = None, extra: str = "") -> str:
    url = f"{BASE}/data-apis/{'bag' if since.startswith('bag') else 'orders'}/changes"
    url += f"?since={store.ids[since]}"
    if to:
        url += f"&to={store.ids[to]}"
    return url + extra


# ---------------------------------------------------------------------------------------


def test_keyed_feed_json_body(adapters: list[Adapter], feed_store: FeedStore) -> None:
    """insert / update / delete by key, from/to summaries, `_op` first, NULLs compared."""
    answer = both(adapters, feed(feed_store, "v1", "v2", "&limit=10000"), key(feed_store, "orders"))
    assert answer.status == 200 and answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert set(body) == {"data_api", "from", "to", "data"} and body["data_api"] == "orders"
    assert body["from"]["id"] == feed_store.ids["v1"] and body["to"]["id"] == feed_store.ids["v2"]
    assert set(body["from"]) == {"id", "run_id", "data_interval_end", "published_at", "row_count"}
    data = body["data"]
    assert set(data) == {"start", "row_count", "columns", "next_start", "next_url", "data"}
    assert data["columns"] == ["_op", *NAMES]
    assert data["start"] == 0 and data["next_start"] is None and data["next_url"] is None
    want = expected_keyed(V1, V2)
    assert data["data"] == want and data["row_count"] == len(want) == 6 + 11 + 50
    assert Counter(r[0] for r in want) == {"delete": 6, "update": 11, "insert": 50}
    # Stored values come back as the rows endpoint sends them (the special row 1 updated).
    assert ["update", *(as_json(v) for v in V2[0])] in data["data"]


def test_whole_row_feed_is_a_multiset_difference(
    adapters: list[Adapter], feed_store: FeedStore
) -> None:
    answer = both(adapters, feed(feed_store, "bag1", "bag2"), key(feed_store, "bag"))
    rows = answer.json()["data"]["data"]
    assert answer.json()["data"]["columns"] == ["_op", "a", "b"]
    assert Counter(tuple(r) for r in rows) == expected_bag(BAG1, BAG2)
    assert Counter(r[0] for r in rows) == {"delete": 1, "insert": 2}
    assert [r[0] for r in rows] == ["delete", "insert", "insert"]  # deletes come first
    # Backwards too: the reverse feed undoes it.
    back = both(adapters, feed(feed_store, "bag2", "bag1"), key(feed_store, "bag"))
    assert Counter(tuple(r) for r in back.json()["data"]["data"]) == expected_bag(BAG2, BAG1)


def test_default_to_is_latest_and_since_equal_to_is_empty(
    adapters: list[Adapter], feed_store: FeedStore
) -> None:
    headers = key(feed_store, "orders")
    latest = both(adapters, feed(feed_store, "v1", extra="&limit=10000"), headers)
    assert latest.json()["to"]["id"] == feed_store.ids["v3"]
    assert latest.json()["data"]["data"] == expected_keyed(V1, V2)
    assert latest.headers["cache-control"] == "private, max-age=30"
    for since, to in (("v3", None), ("v2", "v3"), ("v1", "v1")):
        answer = both(adapters, feed(feed_store, since, to), headers)
        data = answer.json()["data"]
        assert data["data"] == [] and data["row_count"] == 0 and data["next_start"] is None
    for fmt in ("csv", "ndjson"):
        answer = both(adapters, feed(feed_store, "v3", extra=f"&format={fmt}"), headers)
        assert answer.body == (
            b"_op," + ",".join(NAMES).encode() + b"\r\n" if fmt == "csv" else b""
        )


def _next(answer: Answer) -> str | None:
    link = answer.headers.get("link")
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    url = urlsplit(match.group(1))
    assert (url.scheme, url.netloc) == ("", "")  # path-absolute: never the request's Host
    return f"{url.path}?{url.query}"


def test_paging_by_next_start_and_link_pins_to(
    adapters: list[Adapter], feed_store: FeedStore
) -> None:
    headers = key(feed_store, "orders")
    want = expected_keyed(V1, V2)
    url: str | None = feed(feed_store, "v1", extra="&limit=10")
    got: list[list[Any]] = []
    pages = 0
    while url is not None:
        answer = both(adapters, url, headers)
        data = answer.json()["data"]
        assert data["row_count"] == len(data["data"]) <= 10
        got.extend(data["data"])
        url = _next(answer)
        if data["next_start"] is None:
            assert url is None and data["next_url"] is None
        else:
            assert data["next_url"] == url
            query = parse_qs(urlsplit(url).query)
            assert query["to"] == [feed_store.ids["v3"]]  # a later publish never shifts pages
            assert query["start"] == [str(data["next_start"])] and query["limit"] == ["10"]
        pages += 1
    assert got == want and pages == 7


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_csv_and_ndjson_stream_the_whole_feed(
    fmt: str, adapters: list[Adapter], feed_store: FeedStore
) -> None:
    want = expected_keyed(V1, V2)
    answer = both(
        adapters, feed(feed_store, "v1", "v2", f"&format={fmt}"), key(feed_store, "orders")
    )
    assert answer.status == 200
    if fmt == "csv":
        assert answer.headers["content-type"] == "text/csv; charset=utf-8"
        rows = list(csv.reader(io.StringIO(answer.body.decode(), newline="")))
        assert rows[0] == ["_op", *NAMES]
        assert [r[0] for r in rows[1:]] == [r[0] for r in want]
        assert [int(r[1]) for r in rows[1:]] == [r[1] for r in want]
    else:
        assert answer.headers["content-type"] == "application/x-ndjson"
        objects = [json.loads(line) for line in answer.body.splitlines()]
        assert [list(o) for o in objects[:1]] == [["_op", *NAMES]]
        assert [list(o.values()) for o in objects] == want
    # From start, and the whole stream is produced while it is sent (not built in memory).
    tail = both(
        adapters, feed(feed_store, "v1", "v2", f"&format={fmt}&start=60"), key(feed_store, "orders")
    )
    lines = tail.body.splitlines()
    assert len(lines) == len(want) - 60 + (fmt == "csv")


def test_stream_is_lazy(feed_store: FeedStore) -> None:
    from airflow_nx1_connect.core.serving import router

    request = router.Request(
        "GET",
        HOST,
        f"{BASE}/data-apis/orders/changes",
        [("since", feed_store.ids["v1"]), ("format", "csv")],
        key(feed_store, "orders"),
    )
    response = router.handle("changes", request, name="orders")
    assert response.status == 200 and response.streaming
    assert b"".join(response.body).count(b"\r\n") == 1 + len(expected_keyed(V1, V2))


def test_columns_subset(adapters: list[Adapter], feed_store: FeedStore) -> None:
    answer = both(
        adapters,
        feed(feed_store, "v1", "v2", "&columns=name,id&limit=3"),
        key(feed_store, "orders"),
    )
    data = answer.json()["data"]
    assert data["columns"] == ["_op", "name", "id"]
    assert data["data"] == [[r[0], r[2], r[1]] for r in expected_keyed(V1, V2)[:3]]
    problem(
        both(adapters, feed(feed_store, "v1", extra="&columns=nope"), key(feed_store, "orders")),
        400,
    )
    problem(
        both(adapters, feed(feed_store, "v1", extra="&columns=_op"), key(feed_store, "orders")), 400
    )


def test_conditional_requests(adapters: list[Adapter], feed_store: FeedStore) -> None:
    headers = key(feed_store, "orders")
    pinned = both(adapters, feed(feed_store, "v1", "v2"), headers)
    assert pinned.headers["cache-control"] == IMMUTABLE and pinned.headers["etag"]
    assert pinned.headers["last-modified"]
    again = both(
        adapters, feed(feed_store, "v1", "v2"), {**headers, "If-None-Match": pinned.headers["etag"]}
    )
    assert (
        again.status == 304
        and again.body == b""
        and again.headers["etag"] == pinned.headers["etag"]
    )
    other = both(adapters, feed(feed_store, "v1", "v2", "&limit=5"), headers)
    assert other.headers["etag"] != pinned.headers["etag"]


def test_errors(adapters: list[Adapter], feed_store: FeedStore) -> None:
    headers = key(feed_store, "orders")
    base = f"{BASE}/data-apis/orders/changes"
    detail = problem(both(adapters, base, headers), 400)
    assert "since" in detail
    assert problem(both(adapters, f"{base}?since=", headers), 400)
    problem(both(adapters, f"{base}?since={'0' * 32}", headers), 404)
    problem(both(adapters, f"{base}?since=not-an-id", headers), 404)
    problem(both(adapters, f"{base}?since={feed_store.ids['v1']}&to={'f' * 32}", headers), 404)
    # Another data API's snapshot is not one of this data API's.
    problem(both(adapters, f"{base}?since={feed_store.ids['bag1']}", headers), 404)
    problem(both(adapters, feed(feed_store, "v1", extra="&format=xml"), headers), 400)
    problem(both(adapters, feed(feed_store, "v1", extra="&limit=0"), headers), 400)
    problem(both(adapters, feed(feed_store, "v1")), 401)
    problem(both(adapters, feed(feed_store, "v1"), key(feed_store, "bag")), 403)
    problem(both(adapters, f"{base}?since={feed_store.ids['v1']}", {"X-API-Key": "nx1_bad"}), 401)


def test_since_no_longer_retained_is_410(adapters: list[Adapter], feed_store: FeedStore) -> None:
    headers = key(feed_store, "shape")
    base = f"{BASE}/data-apis/shape/changes"
    # s1 was dropped by retention (3 kept): 410 telling the app to resync from latest.
    detail = problem(both(adapters, f"{base}?since={feed_store.ids['s1']}", headers), 410)
    assert "/data-apis/shape/latest" in detail and "no longer retained" in detail
    problem(
        both(adapters, f"{base}?since={feed_store.ids['s3']}&to={feed_store.ids['s1']}", headers),
        410,
    )
    # s2 -> s4: the columns changed in between, so no feed spans them: resync as well.
    detail = problem(both(adapters, f"{base}?since={feed_store.ids['s2']}", headers), 410)
    assert "columns" in detail and "/data-apis/shape/latest" in detail
    answer = both(adapters, f"{base}?since={feed_store.ids['s3']}", headers)
    assert answer.json()["data"]["data"] == [["delete", 3, "c"], ["insert", 4, "d"]]


def test_retention_records_dropped_ids(feed_store: FeedStore) -> None:
    import sqlalchemy as sa

    from airflow_nx1_connect.core.store import retired_snapshots

    with feed_store.engine.connect() as conn:
        ids = (
            conn.execute(
                sa.select(retired_snapshots.c.id).where(retired_snapshots.c.data_api == "shape")
            )
            .scalars()
            .all()
        )
    assert ids == [feed_store.ids["s1"]]


def test_openapi_describes_changes(adapters: list[Adapter]) -> None:
    doc = adapters[1].get(f"{BASE}/openapi.json").json()
    op = doc["paths"]["/api/v1/data-apis/{name}/changes"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert params["since"]["required"] is True and {"to", "start", "limit", "format"} <= set(params)
    assert {"200", "304", "400", "401", "403", "404", "410"} <= set(op["responses"])
    page = doc["components"]["schemas"]["ChangesPage"]
    assert set(page["required"]) == {"data_api", "from", "to", "data"}
    assert set(page["properties"]) == {"data_api", "from", "to", "data"}
    assert op["responses"]["410"]["content"][PROBLEM]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }


@pytest.mark.parametrize("limit", ["", "&limit=7"])
def test_arrow_feed_has_a_leading_op_column(
    limit: str, adapters: list[Adapter], feed_store: FeedStore
) -> None:
    import pyarrow.ipc

    want = expected_keyed(V1, V2)
    answer = both(
        adapters, feed(feed_store, "v1", "v2", f"&format=arrow{limit}"), key(feed_store, "orders")
    )
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pyarrow.ipc.open_stream(answer.body).read_all()
    assert table.column_names == ["_op", *NAMES]
    got = [list(row.values()) for row in table.to_pylist()]
    assert [r[:2] for r in got] == [r[:2] for r in (want[:7] if limit else want)]
