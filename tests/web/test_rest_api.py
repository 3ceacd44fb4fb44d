"""The data REST API, both adapters (Flask blueprint, FastAPI app), both stores.

Every request is sent to both adapters in-process; `both()` checks that they answer with
the same status, headers and body, then the test checks that answer against the contract.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest

from tests.api_server import free_port
from tests.web.conftest import (
    BASE,
    BIG_ROWS,
    COLUMNS,
    SPECIAL_ROWS,
    STORE_ENV,
    Adapter,
    Answer,
    ApiStore,
    big_rows,
    fastapi_adapter,
    flask_adapter,
)
from tests.web.helpers import (
    IMMUTABLE,
    PROBLEM,
    assert_problem,
    both,
    key_header,
    next_link,
)

NAMES = [n for n, _ in COLUMNS]
TYPES = [t for _, t in COLUMNS]


# ---------------------------------------------------------------------------------------
# Expected values
# ---------------------------------------------------------------------------------------


def as_json(value: Any) -> Any:
    """How the contract renders a value in JSON (Decimal as text, times ISO, UTC `Z`)."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def as_csv(value: Any) -> str:
    """How a value reads back from CSV (NULL is the empty field)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(as_json(value))


def json_rows(rows: list[tuple[Any, ...]], idx: list[int] | None = None) -> list[list[Any]]:
    idx = idx if idx is not None else list(range(len(NAMES)))
    return [[as_json(r[i]) for i in idx] for r in rows]


def parse_csv(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))


def csv_cells_equal(got: list[str], expected: tuple[Any, ...], names: list[str]) -> None:
    for name, cell, value in zip(names, got, expected, strict=True):
        if isinstance(value, dict | list):
            assert json.loads(cell) == value, name
        elif isinstance(value, float):
            assert float(cell) == value, name
        else:
            assert cell == as_csv(value), (name, cell, value)


# ---------------------------------------------------------------------------------------
# The table: every row of the contract's error table, and the success paths
# ---------------------------------------------------------------------------------------

ZERO_ID = "0" * 32


@dataclass
class Case:
    id: str
    path: str
    key: str | None = "sales"  # a role of ApiStore.keys, or None
    status: int = 200
    how: str = "x-api-key"
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "GET"
    check: Callable[[Answer, ApiStore], None] | None = None


def _www(value: str) -> Callable[[Answer, ApiStore], None]:
    def check(answer: Answer, _: ApiStore) -> None:
        assert answer.headers["www-authenticate"] == value

    return check


def _empty_page(answer: Answer, _: ApiStore) -> None:
    data = answer.json()["data"]
    assert (data["row_count"], data["data"], data["next_start"]) == (0, [], None)
    assert "link" not in answer.headers


def _cache(value: str) -> Callable[[Answer, ApiStore], None]:
    def check(answer: Answer, _: ApiStore) -> None:
        assert answer.headers["cache-control"] == value

    return check


def _allow(answer: Answer, _: ApiStore) -> None:
    assert answer.headers["allow"] == "GET, HEAD"


LONG_KEY_LIKE = "nx1_" + "A" * 50

CASES = [
    # 401: no key (and nothing else is looked at before authentication)
    Case("no key", "data-apis/sales/latest", None, 401, check=_www("Bearer")),
    Case("no key, unknown api", "data-apis/nope/latest", None, 401, check=_www("Bearer")),
    Case("no key, bad start", "data-apis/sales/latest?start=-1", None, 401),
    Case("no key, unknown route-like snapshot", f"data-apis/x/snapshots/{ZERO_ID}", None, 401),
    Case(
        "basic auth is no key",
        "data-apis/sales",
        None,
        401,
        headers={"Authorization": "Basic dXNlcjpwYXNz"},
        check=_www("Bearer"),
    ),
    Case(
        "empty bearer",
        "data-apis/sales",
        None,
        401,
        headers={"Authorization": "Bearer "},
        check=_www("Bearer"),
    ),
    Case("empty x-api-key", "data-apis/sales", None, 401, headers={"X-API-Key": ""}),
    # 401: bad keys
    *[
        Case(
            f"{role} key",
            "data-apis/sales/latest",
            role,
            401,
            check=_www('Bearer error="invalid_token"'),
        )
        for role in ("malformed", "unknown", "expired", "revoked")
    ],
    Case(
        "revoked key as bearer",
        "data-apis/sales",
        "revoked",
        401,
        how="bearer",
        check=_www('Bearer error="invalid_token"'),
    ),
    Case(
        "unknown key, unknown api",
        "data-apis/nope",
        "unknown",
        401,
        check=_www('Bearer error="invalid_token"'),
    ),
    Case(
        "two different keys",
        "data-apis/sales",
        "sales",
        400,
        headers={"Authorization": "Bearer nx1_other"},
    ),
    # 403: a valid key of another data API, whether or not the name exists
    Case("other api's key", "data-apis/sales/latest", "other", 403),
    Case("key on a name that does not exist", "data-apis/nope/latest", "sales", 403),
    Case("key on an invalid name", "data-apis/NOT%20A%20NAME", "sales", 403),
    Case("NUL in the name", "data-apis/sa%00les/latest", "sales", 403),
    Case("NUL in columns", "data-apis/sales/latest?columns=id%00", "sales", 400),
    Case("key on another existing api", "data-apis/other/latest", "sales", 403),
    Case("403 on the data api", "data-apis/other", "sales", 403),
    Case("403 on snapshots", "data-apis/other/snapshots", "sales", 403),
    Case("403 on an unknown snapshot", f"data-apis/other/snapshots/{ZERO_ID}", "sales", 403),
    Case("403 before 400", "data-apis/other/latest?start=x", "sales", 403),
    Case("403 via bearer", "data-apis/other/latest", "sales", 403, how="bearer"),
    # 400: a key in the query string comes before everything
    *[
        Case(f"key in query: {p}", f"data-apis/sales/latest?{p}=abc", "sales", 400)
        for p in (
            "key",
            "api_key",
            "apikey",
            "api-key",
            "token",
            "access_token",
            "X-API-Key",
            "Authorization",
        )
    ],
    Case("key value in any param", f"data-apis/sales/latest?q={LONG_KEY_LIKE}", "sales", 400),
    Case("short nx1_ value", "data-apis/sales/latest?q=nx1_x", "sales", 400),
    Case("key inside columns", f"data-apis/sales/latest?columns=id,{LONG_KEY_LIKE}", "sales", 400),
    Case("key in query without header", "data-apis/sales/latest?api_key=x", None, 400),
    Case("key in query on unknown api", "data-apis/nope?token=x", None, 400),
    # 400: bad parameters
    *[
        Case(f"bad {q}", f"data-apis/sales/latest?{q}", "sales", 400)
        for q in (
            "start=-1",
            "start=abc",
            "start=1.5",
            "start=",
            "start=%201",
            "start=1&start=2",
            "start=99999999999999999999999",
            "start=" + "9" * 5000,
            "limit=" + "1" * 5000,
            "limit=00000000000000000000010001",
            "limit=0",
            "limit=10001",
            "limit=abc",
            "limit=-5",
            "limit=",
            "limit=1e3",
            "columns=id,nope",
            "columns=id,id",
            "columns=",
            "columns=id,",
            "columns=,",
            "format=xml",
            "format=",
            "format=json&format=csv",
        )
    ],
    Case("bad start on a snapshot url", "data-apis/sales/snapshots/{old}?start=x", "sales", 400),
    # 404
    Case("unknown snapshot id", f"data-apis/sales/snapshots/{ZERO_ID}", "sales", 404),
    Case("malformed snapshot id", "data-apis/sales/snapshots/zzz", "sales", 404),
    Case("404 before 400", f"data-apis/sales/snapshots/{ZERO_ID}?start=x", "sales", 404),
    Case("no snapshot published yet", "data-apis/empty_api/latest", "empty", 404),
    Case("unknown route", "nothing", "sales", 404),
    Case("unknown route, no key", "nothing/at/all", None, 404),
    Case("prefix itself", "", "sales", 404),
    Case("below latest", "data-apis/sales/latest/x", "sales", 404),
    Case("trailing slash", "data-apis/sales/", "sales", 404),
    # 405: read-only
    *[
        Case(f"{m} is not allowed", "data-apis/sales/latest", "sales", 405, method=m, check=_allow)
        for m in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    ],
    # 200
    Case("data api", "data-apis/sales", check=_cache("private, max-age=30")),
    Case("data api without snapshot", "data-apis/empty_api", "empty"),
    Case("snapshots", "data-apis/sales/snapshots"),
    Case("no snapshots yet", "data-apis/empty_api/snapshots", "empty"),
    Case("latest", "data-apis/sales/latest", check=_cache("private, max-age=30")),
    Case("latest by bearer", "data-apis/sales/latest?limit=5", how="bearer"),
    Case(
        "bearer scheme in lower case",
        "data-apis/sales",
        None,
        200,
        headers={"Authorization": "bearer {sales}"},
    ),
    Case(
        "same key in both headers",
        "data-apis/sales",
        None,
        200,
        headers={"Authorization": "Bearer {sales}", "X-API-Key": "{sales}"},
    ),
    Case("snapshot url", "data-apis/sales/snapshots/{old}", check=_cache(IMMUTABLE)),
    Case(
        "latest snapshot by id",
        "data-apis/sales/snapshots/{latest}?limit=3",
        check=_cache(IMMUTABLE),
    ),
    Case("unknown params are ignored", "data-apis/sales/latest?limit=2&foo=bar"),
    Case("leading zeros", "data-apis/sales/latest?limit=0000000000000000002&start=007"),
    Case("start past the end", "data-apis/sales/latest?start=999999", check=_empty_page),
    Case("format in upper case", "data-apis/sales/latest?format=CSV&limit=2"),
    Case("head", "data-apis/sales/latest?limit=2", method="HEAD"),
]


def _fill(text: str, api_store: ApiStore) -> str:
    return (
        text.replace("{old}", api_store.old.id)
        .replace("{latest}", api_store.latest.id)
        .replace("{sales}", api_store.keys["sales"])
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_contract_table(case: Case, adapters: list[Adapter], api_store: ApiStore) -> None:
    """One table of cases, each sent to both adapters: same answer, the contract's status."""
    headers = {k: _fill(v, api_store) for k, v in case.headers.items()}
    if case.key is not None:
        headers.update(key_header(api_store, case.key, case.how))
    answer = both(adapters, f"{BASE}/{_fill(case.path, api_store)}", headers, case.method)
    if case.status >= 400:
        body = assert_problem(answer, case.status)
        assert answer.headers["cache-control"] == "no-store"
        for secret in api_store.keys.values():  # no key is ever echoed
            assert secret not in answer.body.decode()
        assert LONG_KEY_LIKE not in body["detail"]
    else:
        assert answer.status == case.status
        if case.method == "HEAD":
            assert answer.body == b""
        else:
            assert answer.headers["content-type"] != PROBLEM
        assert answer.headers["etag"] and answer.headers["last-modified"]
        # Key-protected data: shared caches (many ignore Vary: Authorization) never store it.
        assert answer.headers["cache-control"].startswith("private, "), answer.headers
    if case.status == 401:
        assert "www-authenticate" in answer.headers
    if case.check is not None:
        case.check(answer, api_store)


# ---------------------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------------------


def test_data_api_body(adapters: list[Adapter], api_store: ApiStore) -> None:
    body = both(adapters, f"{BASE}/data-apis/sales", key_header(api_store, "sales")).json()
    latest = api_store.latest
    assert body == {
        "name": "sales",
        "kind": "ask",
        "description": "Weekly sales",
        "question": "What sold?",
        "created_at": body["created_at"],
        "latest_snapshot": {
            "id": latest.id,
            "run_id": "run_new",
            "data_interval_end": "2026-01-05T00:00:00Z",
            "published_at": as_json(latest.published_at),
            "row_count": BIG_ROWS,
        },
        "columns": [{"name": n, "type": t} for n, t in COLUMNS],
        "indexed_columns": [],
        "key_columns": [],
    }
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", body["created_at"])
    empty = both(adapters, f"{BASE}/data-apis/empty_api", key_header(api_store, "empty")).json()
    assert (empty["kind"], empty["latest_snapshot"], empty["columns"]) == ("ask", None, [])


def test_snapshots_newest_first(adapters: list[Adapter], api_store: ApiStore) -> None:
    body = both(adapters, f"{BASE}/data-apis/sales/snapshots", key_header(api_store, "sales"))
    listed = body.json()
    assert listed["data_api"] == "sales"
    assert [s["id"] for s in listed["snapshots"]] == [api_store.latest.id, api_store.old.id]
    assert listed["snapshots"][1] == {
        "id": api_store.old.id,
        "run_id": "run_old",
        "data_interval_end": None,
        "published_at": as_json(api_store.old.published_at),
        "row_count": 10,
    }
    empty = both(adapters, f"{BASE}/data-apis/empty_api/snapshots", key_header(api_store, "empty"))
    assert empty.json() == {"data_api": "empty_api", "snapshots": []}


def test_rows_body_and_round_trip(adapters: list[Adapter], api_store: ApiStore) -> None:
    """The contract's JSON body; unicode, quotes, NULLs, decimals, JSON, times round-trip."""
    answer = both(
        adapters, f"{BASE}/data-apis/sales/latest?limit=4", key_header(api_store, "sales")
    )
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    own = f"{BASE}/data-apis/sales/snapshots/{api_store.latest.id}"
    assert body == {
        "data_api": "sales",
        "snapshot": {
            "id": api_store.latest.id,
            "run_id": "run_new",
            "data_interval_end": "2026-01-05T00:00:00Z",
            "published_at": as_json(api_store.latest.published_at),
            "row_count": BIG_ROWS,
        },
        "data": {
            "start": 0,
            "row_count": 4,
            "columns": NAMES,
            "column_types": TYPES,
            "next_start": 4,
            "next_url": f"{own}?limit=4&start=4",
            "data": json_rows(SPECIAL_ROWS),
        },
    }
    assert body["data"]["data"][0][2] == "12.3400"  # decimals keep their digits, as text
    assert body["data"]["data"][1] == [2, None, None, None, None, None, None, None]
    # The old snapshot by its own URL: its 10 rows, one page.
    old = both(
        adapters,
        f"{BASE}/data-apis/sales/snapshots/{api_store.old.id}",
        key_header(api_store, "sales"),
    ).json()
    assert old["data"]["data"] == json_rows(big_rows()[:10])
    assert old["data"]["next_start"] is None and old["snapshot"]["run_id"] == "run_old"


def test_paging_json_by_next_start_and_link(adapters: list[Adapter], api_store: ApiStore) -> None:
    """5,003 rows in default pages by next_start, and again by following Link headers."""
    headers = key_header(api_store, "sales")
    expected = json_rows(big_rows())
    got: list[list[Any]] = []
    start: int | None = 0
    pages = 0
    while start is not None:
        answer = both(adapters, f"{BASE}/data-apis/sales/latest?start={start}", headers)
        data = answer.json()["data"]
        assert data["start"] == start and data["row_count"] == len(data["data"]) <= 1000
        got.extend(data["data"])
        link = next_link(answer)
        if data["next_start"] is None:
            assert link is None
        else:
            # Pinned: the next page is on the snapshot's own URL, and in the body too.
            own = f"{BASE}/data-apis/sales/snapshots/{api_store.latest.id}"
            assert link == f"{own}?start={data['next_start']}"
            assert data["next_url"] == link
        start = data["next_start"]
        pages += 1
    assert pages == 6 and got == expected
    # Following Link keeps the other parameters (columns, limit) and replaces start.
    url: str | None = f"{BASE}/data-apis/sales/latest?columns=score,id&limit=777&start=100"
    ids: list[int] = []
    while url is not None:
        answer = both(adapters, url, headers)
        page = answer.json()["data"]
        assert page["columns"] == ["score", "id"] and page["column_types"] == ["REAL", "INTEGER"]
        ids.extend(row[1] for row in page["data"])
        url = next_link(answer)
        if url:
            assert "columns=score%2Cid" in url and "limit=777" in url
    assert ids == list(range(101, BIG_ROWS + 1))


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_paging_csv_ndjson_by_link(fmt: str, adapters: list[Adapter], api_store: ApiStore) -> None:
    headers = key_header(api_store, "sales")
    url: str | None = f"{BASE}/data-apis/sales/latest?format={fmt}&limit=2000&columns=id"
    ids: list[int] = []
    while url is not None:
        answer = both(adapters, url, headers)
        if fmt == "csv":
            rows = parse_csv(answer.body)
            assert rows[0] == ["id"]
            ids.extend(int(r[0]) for r in rows[1:])
        else:
            ids.extend(json.loads(line)["id"] for line in answer.body.splitlines())
        url = next_link(answer)
    assert ids == list(range(1, BIG_ROWS + 1))


def test_columns_subset_and_order(adapters: list[Adapter], api_store: ApiStore) -> None:
    headers = key_header(api_store, "sales")
    answer = both(adapters, f"{BASE}/data-apis/sales/latest?columns=meta,id,name&limit=3", headers)
    data = answer.json()["data"]
    assert data["columns"] == ["meta", "id", "name"]
    assert data["column_types"] == ["JSON", "INTEGER", "TEXT"]
    assert data["data"] == [[r[6], r[0], r[1]] for r in SPECIAL_ROWS[:3]]
    # Spaces around names are allowed.
    spaced = both(adapters, f"{BASE}/data-apis/sales/latest?columns=meta,%20id&limit=3", headers)
    assert spaced.json()["data"]["columns"] == ["meta", "id"]
    csv_rows = parse_csv(
        both(
            adapters, f"{BASE}/data-apis/sales/latest?columns=ok,day&format=csv&limit=2", headers
        ).body
    )
    assert csv_rows == [["ok", "day"], ["true", "2026-01-02"], ["", ""]]


@pytest.mark.parametrize(
    ("query", "accept", "fmt"),
    [
        ("format=csv", None, "csv"),
        ("format=ndjson", None, "ndjson"),
        ("format=json", "text/csv", "json"),
        ("", "text/csv", "csv"),
        ("", "application/x-ndjson", "ndjson"),
        ("", "application/json;q=0.5, text/csv;q=0.9", "csv"),
        ("", "text/html, */*;q=0.8", "json"),
        ("", None, "json"),
    ],
)
def test_formats_stream_whole_snapshot(
    query: str, accept: str | None, fmt: str, adapters: list[Adapter], api_store: ApiStore
) -> None:
    """format= or Accept chooses; CSV / NDJSON without limit stream every row from start."""
    headers = key_header(api_store, "sales")
    if accept:
        headers["Accept"] = accept
    answer = both(adapters, f"{BASE}/data-apis/sales/latest?{query}", headers)
    media = {
        "json": "application/json",
        "csv": "text/csv; charset=utf-8",
        "ndjson": "application/x-ndjson",
    }[fmt]
    assert answer.headers["content-type"] == media
    rows = big_rows()
    if fmt == "json":
        assert answer.json()["data"]["row_count"] == 1000  # default_page_size
        return
    assert "link" not in answer.headers
    if fmt == "csv":
        parsed = parse_csv(answer.body)
        assert parsed[0] == NAMES and len(parsed) == BIG_ROWS + 1
        for got, expected in zip(parsed[1:], rows, strict=True):
            csv_cells_equal(got, expected, NAMES)
    else:
        lines = answer.body.decode().splitlines()
        assert len(lines) == BIG_ROWS
        for line, expected in zip(lines, rows, strict=True):
            assert json.loads(line) == dict(zip(NAMES, [as_json(v) for v in expected], strict=True))


def test_stream_from_start(adapters: list[Adapter], api_store: ApiStore) -> None:
    headers = key_header(api_store, "sales")
    answer = both(
        adapters, f"{BASE}/data-apis/sales/latest?format=csv&start=5000&columns=id", headers
    )
    assert parse_csv(answer.body) == [["id"], ["5001"], ["5002"], ["5003"]]
    past = both(adapters, f"{BASE}/data-apis/sales/latest?format=ndjson&start=6000", headers)
    assert past.status == 200 and past.body == b""


def test_conditional_requests(adapters: list[Adapter], api_store: ApiStore) -> None:
    """ETag / If-None-Match -> 304 with no body; ETag depends on the request's shape."""
    headers = key_header(api_store, "sales")
    path = f"{BASE}/data-apis/sales/snapshots/{api_store.old.id}?limit=5"
    first = both(adapters, path, headers)
    etag = first.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    published = api_store.old.published_at
    assert first.headers["last-modified"] == published.strftime("%a, %d %b %Y %H:%M:%S GMT")
    for value in (etag, f'"x", {etag}', f"W/{etag}", "*"):
        answer = both(adapters, path, {**headers, "If-None-Match": value})
        assert answer.status == 304 and answer.body == b""
        assert answer.headers["etag"] == etag
        assert answer.headers["cache-control"] == IMMUTABLE
    assert both(adapters, path, {**headers, "If-None-Match": '"other"'}).status == 200
    since = both(adapters, path, {**headers, "If-Modified-Since": first.headers["last-modified"]})
    assert since.status == 304
    # 304 never skips authentication.
    assert both(adapters, path, {"If-None-Match": etag}).status == 401
    others = {
        both(adapters, f"{path}&format=csv", headers).headers["etag"],
        both(adapters, f"{path}&columns=id", headers).headers["etag"],
        both(adapters, f"{path}&start=1", headers).headers["etag"],
        both(adapters, f"{BASE}/data-apis/sales/latest?limit=5", headers).headers["etag"],
        etag,
    }
    assert len(others) == 5
    for route in ("data-apis/sales", "data-apis/sales/snapshots", "data-apis/sales/latest"):
        tag = both(adapters, f"{BASE}/{route}", headers).headers["etag"]
        again = both(adapters, f"{BASE}/{route}", {**headers, "If-None-Match": tag})
        assert again.status == 304 and again.body == b""


# ---------------------------------------------------------------------------------------
# Store unreachable: 503 quickly
# ---------------------------------------------------------------------------------------


@pytest.fixture
def blackhole_port() -> Any:
    """A loopback TCP port that accepts connections and never answers."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_store_unreachable_is_503_quickly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, blackhole_port: int
) -> None:
    from airflow_nx1_connect.core import engines

    adapters = [flask_adapter(), fastapi_adapter()]
    (tmp_path / "a_directory.db").mkdir()
    urls = {
        "sqlite file that cannot be opened": f"sqlite:///{tmp_path / 'a_directory.db'}",
        "postgresql refusing connections": (
            f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
        ),
        "postgresql never answering": f"postgresql+psycopg://postgres@127.0.0.1:{blackhole_port}/test",
    }
    key = {"X-API-Key": "nx1_" + "a" * 54}
    try:
        for what, url in urls.items():
            monkeypatch.setenv(STORE_ENV, url)
            answers = []
            for adapter in adapters:
                began = time.monotonic()
                answer = adapter.get(f"{BASE}/data-apis/sales/latest", key)
                took = time.monotonic() - began
                assert took < 5, (what, adapter.name, took)
                body = assert_problem(answer, 503)
                assert answer.headers["retry-after"] == "5"
                # The detail names no host, port or file.
                assert "127.0.0.1" not in body["detail"] and "a_directory" not in body["detail"]
                answers.append(answer)
            assert answers[0].body == answers[1].body
    finally:
        engines.dispose_engines()


# ---------------------------------------------------------------------------------------
# OpenAPI and schemathesis
# ---------------------------------------------------------------------------------------


def test_openapi_document(adapters: list[Adapter]) -> None:
    fastapi = adapters[1]
    answer = fastapi.get(f"{BASE}/openapi.json")
    assert answer.status == 200
    doc = answer.json()
    paths = {p.removeprefix("/api/v1") for p in doc["paths"]}
    admin = {p for p in paths if p.startswith("/admin/")}  # the control plane, own tests
    assert "/admin/keys/{key_id}/rotate" in admin
    assert paths - admin == {
        "/data-apis/{name}",
        "/data-apis/{name}/latest",
        "/data-apis/{name}/snapshots",
        "/data-apis/{name}/snapshots/{snapshot_id}",
        "/data-apis/{name}/changes",
        "/data-apis/{name}/runs",
        "/data-apis/{name}/runs/{run_id}",
        "/data-apis/{name}/openapi.json",
    }
    assert doc["servers"] == [{"url": "/nx1"}]
    latest = doc["paths"]["/api/v1/data-apis/{name}/latest"]["get"]
    params = {p["name"]: p for p in latest["parameters"]}
    assert {"name", "start", "limit", "columns", "format", "shape", "If-None-Match"} <= set(params)
    assert params["shape"]["schema"]["enum"] == ["arrays", "objects"]
    assert params["limit"]["schema"]["maximum"] == 10000
    assert set(latest["responses"]) == {
        "200",
        "304",
        "400",
        "401",
        "403",
        "404",
        "405",
        "414",
        "429",
        "431",
        "503",
    }
    assert set(latest["responses"]["429"]["headers"]) == {
        "Retry-After",
        "RateLimit-Policy",
        "RateLimit",
    }
    # JSON first: generators type a response by its first known media type (test_clients).
    assert next(iter(latest["responses"]["200"]["content"])) == "application/json"
    assert set(latest["responses"]["200"]["content"]) == {
        "application/json",
        "text/csv",
        "application/x-ndjson",
        "application/vnd.apache.arrow.stream",
        "application/vnd.apache.parquet",
    }
    assert latest["responses"]["401"]["content"][PROBLEM]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert doc["components"]["schemas"]["Problem"]["required"] == [
        "type",
        "title",
        "status",
        "detail",
    ]
    assert fastapi.get(f"{BASE}/docs").status == 200


def _schema() -> Any:
    import schemathesis
    from fastapi import FastAPI

    from airflow_nx1_connect.web.api import create_app
    from airflow_nx1_connect.web.misses import MountMisses

    # As Airflow's api-server: the app mounted at /nx1, the plugin's root middleware for the
    # paths that mount cannot match (a newline in a path parameter).
    parent = FastAPI()
    parent.mount("/nx1", create_app())
    parent.add_middleware(MountMisses)
    return schemathesis.openapi.from_asgi(f"{BASE}/openapi.json", parent)


SCHEMA = _schema()
_CALLS: list[int] = []


@SCHEMA.parametrize()
@hypothesis.settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_schemathesis(case: Any, api_store: ApiStore) -> None:
    """Generated requests with a valid key: no 5xx, answers conform to the OpenAPI document.

    Two cases in three target the key's own data API and a retained snapshot, so that
    200s, 304s and 400s are exercised, not only 403s.
    """
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    _CALLS.append(1)
    if len(_CALLS) % 3 != 0:
        case.path_parameters["name"] = "sales"
        if "snapshot_id" in case.path_parameters:
            case.path_parameters["snapshot_id"] = api_store.old.id
    response = case.call(headers=key_header(api_store, "sales"))
    assert response.status_code < 500, response.text
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )
