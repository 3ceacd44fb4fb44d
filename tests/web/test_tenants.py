"""Tenant-scoped keys (issue 25): a key's row filter and column allowlist hold in every answer.

Both adapters (`both()`: same status, headers and body) on both stores (`api_store`), every
format, pages and streams, the change feed, the data API document, snapshot summaries, ETags,
fail-closed 403s, rotation / revocation / expiry, the CLI, and a Hypothesis property test
(random policies and request parameters against a Python model of the rows).
"""

from __future__ import annotations

import csv
import datetime as dt
import fnmatch
import io
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import hypothesis
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest
from hypothesis import strategies as st

from airflow_nx1_connect.cli_support import CELL_WIDTH
from airflow_nx1_connect.core import audit, control, keys, writer
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.errors import ValidationError
from tests.helpers import nx1, ok, user_error
from tests.web.conftest import BASE, STORE_ENV, Adapter, ApiStore
from tests.web.helpers import assert_problem, both
from tests.web.helpers import next_link as _next_link

COLUMNS = [("id", "INTEGER"), ("region", "TEXT"), ("units", "INTEGER"), ("secret", "TEXT"),
           ("note", "TEXT")]  # fmt: skip
NAMES = [n for n, _ in COLUMNS]
REGIONS = ["EU", "US", "APAC", "EU-West"]
N_ROWS = 300
FORMATS = ("json", "csv", "ndjson", "arrow", "parquet")


def base_rows() -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "region": REGIONS[i % 4],
            "units": None if i % 17 == 0 else (i * 7) % 100,
            "secret": f"SECRET-{i}-z",
            "note": None if i % 5 == 0 else f"note {i}",
        }
        for i in range(1, N_ROWS + 1)
    ]


def changed_rows() -> list[dict[str, Any]]:
    """The latest snapshot: 1 enters EU, 4 leaves it, 8 changes only `secret`, 12 `units`."""
    rows = base_rows()
    by_id = {r["id"]: r for r in rows}
    by_id[1]["region"] = "EU"
    by_id[4]["region"] = "US"
    by_id[8]["secret"] = "SECRET-8-changed"
    by_id[12]["units"] = 999
    return rows


POLICIES: dict[str, dict[str, Any]] = {
    # The filter's column is itself hidden.
    "eu": {"row_filter": ["region=eq.EU"], "columns": ["id", "units", "note"]},
    "eu_wide": {"row_filter": ["region=in.(EU,EU-West)", "units=gte.10"], "columns": None},
    "cols": {"row_filter": [], "columns": ["id", "region"]},
    "plain": {"row_filter": [], "columns": None},
}


@dataclass
class Tenants:
    store: ApiStore
    old: Any
    latest: Any
    secrets: dict[str, str]
    ids: dict[str, str]


def _tuples(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(r[n] for n in NAMES) for r in rows]


@pytest.fixture(scope="module")
def tenants(api_store: ApiStore) -> Tenants:
    engine = api_store.engine
    cols = [snaps.Column(n, t) for n, t in COLUMNS]
    snaps.register_data_api(engine, name="tenants", kind="ask", dag_id="d", task_id="tenants")
    common = {"data_api": "tenants", "columns": cols, "key_columns": ["id"],
              "index_columns": ["region"]}  # fmt: skip
    old = writer.write_snapshot(engine, batches=[_tuples(base_rows())], run_id="t1", **common)
    latest = writer.write_snapshot(engine, batches=[_tuples(changed_rows())], run_id="t2", **common)
    made = {
        role: keys.create_key(
            engine,
            data_api="tenants",
            days=30,
            row_filter=p["row_filter"],
            columns=p["columns"],
        )
        for role, p in POLICIES.items()
    }
    return Tenants(
        api_store,
        old,
        latest,
        {r: c.secret for r, c in made.items()},
        {r: c.key.id for r, c in made.items()},
    )


def hdr(t: Tenants, role: str) -> dict[str, str]:
    return {"X-API-Key": t.secrets[role]}


# ---------------------------------------------------------------------------------------
# A Python model of what a key may see
# ---------------------------------------------------------------------------------------


def matches(row: dict[str, Any], term: str) -> bool:
    """One `<column>=<op>.<value>` term on a model row, with SQL's NULL semantics."""
    column, _, condition = term.partition("=")
    op, _, text = condition.partition(".")
    value = row[column]
    if op == "is":
        return (value is None) == (text == "null")
    if value is None:
        return False
    if op == "like":
        escaped = "".join("[" + c + "]" if c in "?[" else c for c in text)
        return fnmatch.fnmatchcase(value, escaped)
    if op == "in":
        items = next(csv.reader([text[1:-1]]))
        return str(value) in items if isinstance(value, str) else value in {int(i) for i in items}
    other: Any = int(text) if isinstance(value, int) else text
    return {
        "eq": value == other,
        "ne": value != other,
        "gt": value > other,
        "gte": value >= other,
        "lt": value < other,
        "lte": value <= other,
    }[op]


def visible_names(role_policy: dict[str, Any]) -> list[str]:
    allowed = role_policy["columns"]
    return [n for n in NAMES if allowed is None or n in allowed]


def expected(
    rows: list[dict[str, Any]],
    terms: list[str],
    columns: list[str],
    sort: list[tuple[str, bool]] = (),  # type: ignore[assignment]
    start: int = 0,
    limit: int | None = None,
) -> list[list[Any]]:
    got = [r for r in rows if all(matches(r, t) for t in terms)]
    for column, descending in reversed(list(sort)):
        present = [r for r in got if r[column] is not None]
        nulls = [r for r in got if r[column] is None]
        present.sort(key=lambda r, c=column: r[c], reverse=descending)  # type: ignore[misc]
        got = present + nulls
    got = got[start : None if limit is None else start + limit]
    return [[r[c] for c in columns] for r in got]


def norm(value: Any) -> str | None:
    """A decoded value as comparable text (CSV has no types; NULL is empty there)."""
    if value is None or value == "":
        return None
    return str(value)


def decode(fmt: str, body: bytes) -> tuple[list[str], list[list[str | None]]]:
    """(column names, rows as text) of a rows body in any format."""
    if fmt == "json":
        data = json.loads(body)["data"]
        return data["columns"], [[norm(v) for v in r] for r in data["data"]]
    if fmt == "ndjson":
        lines = [json.loads(line) for line in body.decode().splitlines() if line]
        names = list(lines[0]) if lines else []
        return names, [[norm(v) for v in line.values()] for line in lines]
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
        return rows[0], [[norm(v) for v in r] for r in rows[1:]]
    if fmt == "arrow":
        table = pyarrow.ipc.open_stream(body).read_all()
    else:
        table = pq.read_table(io.BytesIO(body))
    return table.column_names, [[norm(v) for v in r.values()] for r in table.to_pylist()]


def as_text(rows: list[list[Any]]) -> list[list[str | None]]:
    return [[norm(v) for v in r] for r in rows]


def url(path: str, params: list[tuple[str, str]]) -> str:
    return f"{BASE}/data-apis/tenants/{path}" + (f"?{urlencode(params)}" if params else "")


# ---------------------------------------------------------------------------------------
# Rows, in every format
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("role", ["eu", "eu_wide", "cols"])
def test_every_format_page_and_stream_holds_only_the_policy(
    fmt: str, role: str, adapters: list[Adapter], tenants: Tenants
) -> None:
    """A page and the whole stream, of latest and of the snapshot's own URL: only rows that
    match the key's filter, only its columns, nothing else."""
    policy = POLICIES[role]
    names = visible_names(policy)
    rows = changed_rows()
    for path in ("latest", f"snapshots/{tenants.latest.id}"):
        for limit in (None, 25):
            params = [("format", fmt)] + ([("limit", str(limit))] if limit else [])
            answer = both(adapters, url(path, params), hdr(tenants, role))
            assert answer.status == 200, answer.body
            assert answer.headers["cache-control"].startswith("private")
            got_names, got = decode(fmt, answer.body)
            assert got_names == names
            want = expected(rows, policy["row_filter"], names, limit=limit)
            assert got == as_text(want), (path, limit)
            for hidden in set(NAMES) - set(names):
                assert hidden.encode() not in answer.body
            if "secret" not in names:
                assert b"SECRET-" not in answer.body


def test_json_summary_has_no_row_count_under_a_filter(
    adapters: list[Adapter], tenants: Tenants
) -> None:
    for role, counted in (("eu", False), ("eu_wide", False), ("cols", True), ("plain", True)):
        body = both(adapters, url("latest", []), hdr(tenants, role)).json()
        assert body["snapshot"]["row_count"] == (N_ROWS if counted else None), role
        listed = both(adapters, f"{BASE}/data-apis/tenants/snapshots", hdr(tenants, role)).json()
        assert [s["row_count"] for s in listed["snapshots"]] == [N_ROWS if counted else None] * 2


def test_paging_across_the_filter(adapters: list[Adapter], tenants: Tenants) -> None:
    """Small pages over a filtered key, by Link / next_url, then by start: every matching
    row once, in order; the links keep the request's own parameters, never the key's."""
    policy = POLICIES["eu_wide"]
    want = expected(changed_rows(), policy["row_filter"], NAMES)
    got: list[list[Any]] = []
    path: str | None = url("latest", [("limit", "7"), ("where.units", "lt.90")])
    pages = 0
    while path is not None:
        answer = both(adapters, path, hdr(tenants, "eu_wide"))
        assert answer.status == 200
        data = answer.json()["data"]
        got.extend(data["data"])
        assert "region" not in (data["next_url"] or "") or "where.region" not in data["next_url"]
        path = _next_link(answer)
        assert path == (data["next_url"] or None)
        pages += 1
    want = expected(changed_rows(), [*policy["row_filter"], "units=lt.90"], NAMES)
    assert got == want and pages == -(-len(want) // 7)
    # CSV pages by start.
    csv_rows: list[list[str | None]] = []
    start = 0
    while True:
        params = [("format", "csv"), ("limit", "11"), ("start", str(start))]
        _names, page = decode("csv", both(adapters, url("latest", params), hdr(tenants, "eu")).body)
        if not page:
            break
        csv_rows.extend(page)
        start += len(page)
    assert csv_rows == as_text(expected(changed_rows(), ["region=eq.EU"], ["id", "units", "note"]))


def test_sort_within_the_filter(adapters: list[Adapter], tenants: Tenants) -> None:
    """sort applies to the key's rows only; NULLs last; streamed and paged alike."""
    names = ["id", "units", "note"]
    want = expected(changed_rows(), ["region=eq.EU"], names, sort=[("units", True), ("id", False)])
    for fmt in ("json", "csv"):
        params = [("sort", "-units,id"), ("format", fmt)]
        answer = both(adapters, url("latest", params), hdr(tenants, "eu"))
        assert decode(fmt, answer.body) == (names, as_text(want))
    page = both(adapters, url("latest", [("sort", "-units,id"), ("limit", "5"), ("start", "3")]),
                hdr(tenants, "eu"))  # fmt: skip
    assert page.json()["data"]["data"] == want[3:8]


def test_request_terms_are_anded_with_the_keys(adapters: list[Adapter], tenants: Tenants) -> None:
    params = [("where.units", "gt.50"), ("where.note", "is.not_null")]
    answer = both(adapters, url("latest", params), hdr(tenants, "eu"))
    want = expected(changed_rows(), ["region=eq.EU", "units=gt.50", "note=is.not_null"],
                    ["id", "units", "note"])  # fmt: skip
    assert answer.json()["data"]["data"] == want and want
    # A request term that contradicts the key's filter widens nothing.
    answer = both(adapters, url("latest", [("where.id", "eq.2")]), hdr(tenants, "eu_wide"))
    assert answer.json()["data"]["data"] == []  # id 2 is APAC


@pytest.mark.parametrize(
    "template",
    ["columns=id,{c}", "where.{c}=eq.EU", "sort=-{c}", "where.{c}=is.null"],
)
def test_a_hidden_column_is_unknown_like_one_that_does_not_exist(
    template: str, adapters: list[Adapter], tenants: Tenants
) -> None:
    """`region` (the key's own filter column) and `secret` are hidden from `eu`: the answer
    is the 400 a column that does not exist gets, word for word."""
    for hidden in ("region", "secret"):
        query = template.format(c=hidden)
        refused = assert_problem(
            both(adapters, f"{BASE}/data-apis/tenants/latest?{query}", hdr(tenants, "eu")), 400
        )
        missing = assert_problem(
            both(
                adapters,
                f"{BASE}/data-apis/tenants/latest?{template.format(c='nosuch')}",
                hdr(tenants, "eu"),
            ),
            400,
        )
        assert refused["detail"].replace(hidden, "X") == missing["detail"].replace("nosuch", "X")
        for other in {"region", "secret"} - {hidden}:
            assert other not in refused["detail"]
    # The plain key may use them.
    assert (
        both(adapters, url("latest", [("columns", "id,secret")]), hdr(tenants, "plain")).status
        == 200
    )


def test_data_api_document_lists_only_the_allowed_columns(
    adapters: list[Adapter], tenants: Tenants
) -> None:
    doc = both(adapters, f"{BASE}/data-apis/tenants", hdr(tenants, "eu")).json()
    assert [c["name"] for c in doc["columns"]] == ["id", "units", "note"]
    assert doc["indexed_columns"] == ["id"] and doc["key_columns"] == ["id"]  # region is hidden
    assert doc["latest_snapshot"]["row_count"] is None
    assert "region" not in json.dumps(doc) and "secret" not in json.dumps(doc)
    plain = both(adapters, f"{BASE}/data-apis/tenants", hdr(tenants, "plain")).json()
    assert [c["name"] for c in plain["columns"]] == NAMES
    assert (
        set(plain["indexed_columns"]) == {"id", "region"}
        and plain["latest_snapshot"]["row_count"] == N_ROWS
    )
    cols = both(adapters, f"{BASE}/data-apis/tenants", hdr(tenants, "cols")).json()
    assert [c["name"] for c in cols["columns"]] == ["id", "region"]
    assert cols["latest_snapshot"]["row_count"] == N_ROWS


def test_policies_never_share_an_etag(adapters: list[Adapter], tenants: Tenants) -> None:
    """Same URL, four policies: four ETags (JSON, CSV, the document, the snapshot list,
    the feed), all `private`; one key's ETag gets no 304 for another policy."""
    paths = [
        url("latest", [("columns", "id")]),
        url("latest", [("columns", "id"), ("format", "csv")]),
        f"{BASE}/data-apis/tenants",
        f"{BASE}/data-apis/tenants/snapshots",
        url("changes", [("since", tenants.old.id), ("columns", "id")]),
    ]
    for path in paths:
        answers = {role: both(adapters, path, hdr(tenants, role)) for role in POLICIES}
        tags = {a.headers["etag"] for a in answers.values()}
        assert len(tags) == len(POLICIES), path
        for answer in answers.values():
            assert answer.headers["cache-control"].startswith("private")
            assert "X-API-Key" in answer.headers["vary"]
        other = both(adapters, path, {**hdr(tenants, "plain"),
                                      "If-None-Match": answers["eu"].headers["etag"]})  # fmt: skip
        assert other.status == 200
        same = both(adapters, path, {**hdr(tenants, "eu"),
                                     "If-None-Match": answers["eu"].headers["etag"]})  # fmt: skip
        assert same.status == 304


# ---------------------------------------------------------------------------------------
# The change feed: the difference of the key's two views
# ---------------------------------------------------------------------------------------


def test_change_feed_is_the_difference_of_the_keys_views(
    adapters: list[Adapter], tenants: Tenants
) -> None:
    since = tenants.old.id
    eu = both(adapters, url("changes", [("since", since)]), hdr(tenants, "eu")).json()
    assert eu["from"]["row_count"] is None and eu["to"]["row_count"] is None
    assert eu["data"]["columns"] == ["_op", "id", "units", "note"]
    # 4 leaves the filter (delete), 1 enters it (insert), 12 changes units (update);
    # 8 changed only `secret`, which this key cannot see: no change.
    assert eu["data"]["data"] == [
        ["delete", 4, 28, "note 4"],
        ["insert", 1, 7, "note 1"],
        ["update", 12, 999, "note 12"],
    ]
    plain = both(adapters, url("changes", [("since", since)]), hdr(tenants, "plain")).json()
    assert [(r[0], r[1]) for r in plain["data"]["data"]] == [
        ("update", 1),
        ("update", 4),
        ("update", 8),
        ("update", 12),
    ]
    cols = both(adapters, url("changes", [("since", since)]), hdr(tenants, "cols")).json()
    assert cols["data"]["data"] == [["update", 1, "EU"], ["update", 4, "US"]]
    # Every format of the feed, streamed and paged, carries the same rows for the key.
    for fmt in ("csv", "ndjson", "arrow"):
        for extra in ([], [("limit", "2")]):
            answer = both(
                adapters, url("changes", [("since", since), ("format", fmt), *extra]),
                hdr(tenants, "eu"),
            )  # fmt: skip
            names, rows = decode(fmt, answer.body)
            assert names == ["_op", "id", "units", "note"]
            assert rows == as_text(eu["data"]["data"])[: 2 if extra else None]
            assert b"SECRET" not in answer.body and b"region" not in answer.body
    # A hidden column is unknown in the feed's `columns` too.
    assert_problem(
        both(
            adapters, url("changes", [("since", since), ("columns", "secret")]), hdr(tenants, "eu")
        ),
        400,
    )


# ---------------------------------------------------------------------------------------
# Fail closed
# ---------------------------------------------------------------------------------------


def test_a_snapshot_without_a_policy_column_is_refused_for_that_key(
    adapters: list[Adapter], tenants: Tenants
) -> None:
    engine = tenants.store.engine
    snaps.register_data_api(engine, name="shrinks", kind="ask", dag_id="d", task_id="shrinks")
    first = writer.write_snapshot(
        engine,
        data_api="shrinks",
        columns=[snaps.Column("id", "INTEGER"), snaps.Column("region", "TEXT")],
        batches=[[(1, "EU"), (2, "US")]],
    )
    by_region = keys.create_key(engine, data_api="shrinks", days=3, row_filter=["region=eq.EU"])
    by_column = keys.create_key(engine, data_api="shrinks", days=3, columns=["region"])
    writer.write_snapshot(
        engine, data_api="shrinks", columns=[snaps.Column("id", "INTEGER")], batches=[[(1,), (3,)]]
    )
    base = f"{BASE}/data-apis/shrinks"
    for created in (by_region, by_column):
        h = {"X-API-Key": created.secret}
        for fmt in FORMATS:
            problem = assert_problem(both(adapters, f"{base}/latest?format={fmt}", h), 403)
            assert "does not have" in problem["detail"]
        assert_problem(both(adapters, base, h), 403)
        assert_problem(both(adapters, f"{base}/changes?since={first.id}", h), 403)
        old = both(adapters, f"{base}/snapshots/{first.id}", h)
        assert old.status == 200
    assert both(adapters, f"{base}/snapshots/{first.id}", {"X-API-Key": by_region.secret}).json()[
        "data"
    ]["data"] == [[1, "EU"]]
    # Creating such a key against the current columns is refused.
    with pytest.raises(ValidationError, match="Unknown column 'region'"):
        keys.create_key(engine, data_api="shrinks", days=3, row_filter=["region=eq.EU"])


# ---------------------------------------------------------------------------------------
# Creation, rotation, revocation, expiry, audit, CLI
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row_filter", "columns", "message"),
    [
        (["region"], None, "is not <column>=<op>.<value>"),
        (["region=equals.EU"], None, "<op> one of"),
        (["nosuch=eq.1"], None, "Unknown column 'nosuch'"),
        (["units=gt.many"], None, "is not a INTEGER value"),
        (["units=like.1*"], None, "works on text columns"),
        ([], ["id", "nosuch"], "Unknown column 'nosuch' in the column allowlist"),
        ([], [], "names one or more columns"),
        ([], ["id", "id"], "named twice"),
    ],
)
def test_creation_checks_the_policy(
    row_filter: list[str], columns: list[str] | None, message: str, tenants: Tenants
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        keys.create_key(
            tenants.store.engine, data_api="tenants", days=3, row_filter=row_filter, columns=columns
        )


def test_a_policy_needs_a_published_snapshot(tenants: Tenants) -> None:
    with pytest.raises(ValidationError, match="no published snapshot yet"):
        keys.create_key(tenants.store.engine, data_api="empty_api", days=3, columns=["x"])


def test_rotation_keeps_the_policy_and_revocation_and_expiry_refuse(
    adapters: list[Adapter], tenants: Tenants
) -> None:
    engine = tenants.store.engine
    created = keys.create_key(engine, data_api="tenants", days=3, **POLICIES["eu"])
    actor = control.Actor.operator("tester")
    new, _old = control.rotate_key(engine, created.key.id, overlap_hours=0, actor=actor)
    assert (new.key.row_filter, new.key.columns) == (("region=eq.EU",), ("id", "units", "note"))
    listed = control.key_dict(engine, new.key)
    assert listed["row_filter"] == ["region=eq.EU"] and listed["columns"] == ["id", "units", "note"]
    want = both(adapters, url("latest", []), hdr(tenants, "eu")).json()["data"]["data"]
    assert (
        both(adapters, url("latest", []), {"X-API-Key": new.secret}).json()["data"]["data"] == want
    )
    assert_problem(both(adapters, url("latest", []), {"X-API-Key": created.secret}), 401)
    control.revoke_key(engine, new.key.id, actor=actor)
    assert_problem(both(adapters, url("latest", []), {"X-API-Key": new.secret}), 401)
    expired = keys.create_key(
        engine,
        data_api="tenants",
        days=1,
        now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2),
        **POLICIES["eu"],
    )
    assert_problem(both(adapters, url("latest", []), {"X-API-Key": expired.secret}), 401)


def test_the_policy_is_part_of_the_key_created_event(tenants: Tenants) -> None:
    engine = tenants.store.engine
    created = control.create_key(
        engine,
        data_api="tenants",
        days=3,
        row_filter=["region=eq.EU", "units=gte.5"],
        columns=["id", "units"],
        actor=control.Actor.operator("auditor"),
    )
    (event,) = audit.list_events(engine, key_id=created.key.id)
    assert event.action == "create_key"
    assert event.detail["row_filter"] == ["region=eq.EU", "units=gte.5"]
    assert event.detail["columns"] == ["id", "units"]


def test_cli_creates_a_scoped_key_and_refuses_a_bad_policy(
    adapters: list[Adapter], tenants: Tenants
) -> None:
    env = {STORE_ENV: tenants.store.url}
    res = ok("keys", "create", "--data-api", "tenants", "--days", "3",
             "--where", "region=eq.EU", "--where", "units=lt.50", "--columns", "id,units",
             env=env)  # fmt: skip
    secret = res.stdout.strip()
    answer = both(adapters, url("latest", []), {"X-API-Key": secret})
    want = expected(changed_rows(), ["region=eq.EU", "units=lt.50"], ["id", "units"])
    assert answer.json()["data"]["data"] == want
    listed = json.loads(ok("keys", "list", "--data-api", "tenants", "--json", env=env).stdout)
    mine = [k for k in listed if k["row_filter"] == ["region=eq.EU", "units=lt.50"]]
    assert len(mine) == 1 and mine[0]["columns"] == ["id", "units"]
    assert all("row_filter" in k and "columns" in k for k in listed)
    table = ok("keys", "list", "--data-api", "tenants", env=env).stdout
    policy_text = "where region=eq.EU and units=lt.50; columns id,units"
    width = CELL_WIDTH
    shown = policy_text if len(policy_text) <= width else policy_text[: width - 3] + "..."
    assert shown in table
    base = ("keys", "create", "--data-api", "tenants", "--days", "3")
    user_error(*base, "--where", "region", expect="is not <column>=<op>.<value>", env=env)
    user_error(*base, "--where", "secretive=eq.1", expect="Unknown column 'secretive'", env=env)
    user_error(*base, "--columns", "id,nope", expect="Unknown column 'nope'", env=env)
    user_error(*base, "--where", "units=gt.x", expect="INTEGER", env=env)
    helped = nx1("keys", "create", "--help").stdout
    assert "--where TERM" in helped and "--columns A,B" in helped


# ---------------------------------------------------------------------------------------
# Property: no answer ever holds a row or column the key may not see
# ---------------------------------------------------------------------------------------

#: Examples per store (each example asks both adapters).
PROPERTY_EXAMPLES = 120

_TERMS = st.one_of(
    st.sampled_from(["eq", "ne"]).flatmap(
        lambda op: st.sampled_from([*REGIONS, "Mars"]).map(lambda v: f"region={op}.{v}")
    ),
    st.sampled_from(["EU*", "*S*", "A*", "*West"]).map(lambda p: f"region=like.{p}"),
    st.lists(st.sampled_from(REGIONS), min_size=1, max_size=3).map(
        lambda vs: f"region=in.({','.join(vs)})"
    ),
    st.tuples(st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]), st.integers(0, 100)).map(
        lambda t: f"units={t[0]}.{t[1]}"
    ),
    st.sampled_from(["units=is.null", "units=is.not_null", "note=is.null", "note=like.note 1*"]),
    st.integers(0, N_ROWS + 1).map(lambda i: f"id=lt.{i}"),
)


@st.composite
def policies_and_requests(draw: st.DrawFn) -> dict[str, Any]:
    row_filter = draw(st.lists(_TERMS, max_size=3))
    columns = draw(st.one_of(st.none(), st.lists(st.sampled_from(NAMES), min_size=1, unique=True)))
    if not row_filter and columns is None:
        columns = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    request_terms = draw(st.lists(_TERMS, max_size=2))
    wanted = draw(st.one_of(st.none(), st.lists(st.sampled_from(NAMES), min_size=1, unique=True)))
    sort = draw(
        st.lists(
            st.tuples(st.sampled_from(NAMES), st.booleans()), max_size=2, unique_by=lambda t: t[0]
        )
    )
    fmt = draw(st.sampled_from(FORMATS))
    start = draw(st.integers(0, N_ROWS))
    limit = draw(st.one_of(st.none(), st.integers(1, 200)))
    return {
        "row_filter": row_filter,
        "columns": columns,
        "terms": request_terms,
        "wanted": wanted,
        "sort": sort,
        "format": fmt,
        "start": start,
        "limit": limit,
        "endpoint": draw(st.sampled_from(["latest", "snapshot"])),
    }


@hypothesis.settings(
    max_examples=PROPERTY_EXAMPLES,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
    database=None,
)
@hypothesis.given(case=policies_and_requests())
def test_property_no_answer_leaks_a_row_or_a_column(
    case: dict[str, Any], adapters: list[Adapter], tenants: Tenants
) -> None:
    """For random policies and random rows requests, in every format: 400 exactly when the
    request names a column the key cannot see; otherwise the decoded body is exactly the
    model's rows (policy AND request terms, sorted, sliced, projected) and holds no hidden
    column's name or value; never a 5xx."""
    engine = tenants.store.engine
    created = keys.create_key(
        engine, data_api="tenants", days=1, row_filter=case["row_filter"], columns=case["columns"]
    )
    try:
        policy = {"row_filter": case["row_filter"], "columns": case["columns"]}
        names = visible_names(policy)
        params: list[tuple[str, str]] = [("format", case["format"]), ("start", str(case["start"]))]
        for term in case["terms"]:
            column, _, condition = term.partition("=")
            params.append((f"where.{column}", condition))
        if case["wanted"] is not None:
            params.append(("columns", ",".join(case["wanted"])))
        if case["sort"]:
            params.append(("sort", ",".join(("-" if d else "") + c for c, d in case["sort"])))
        if case["limit"] is not None:
            params.append(("limit", str(case["limit"])))
        path = "latest" if case["endpoint"] == "latest" else f"snapshots/{tenants.latest.id}"
        answer = both(adapters, url(path, params), {"X-API-Key": created.secret})
        assert answer.status < 500
        named = [t.partition("=")[0] for t in case["terms"]]
        named += list(case["wanted"] or []) + [c for c, _ in case["sort"]]
        hidden = set(NAMES) - set(names)
        if set(named) & hidden:
            assert_problem(answer, 400)
            return
        assert answer.status == 200, answer.body
        out = case["wanted"] or names
        limit = case["limit"] if case["limit"] is not None or case["format"] != "json" else 1000
        want = expected(
            changed_rows(),
            [*case["row_filter"], *case["terms"]],
            out,
            sort=case["sort"],
            start=case["start"],
            limit=limit,
        )
        got_names, got = decode(case["format"], answer.body)
        if case["format"] == "ndjson" and not got:
            got_names = out
        assert got_names == out
        assert got == as_text(want)
        body = answer.body
        if case["format"] in ("json", "csv", "ndjson"):
            # Names that appear nowhere else in a body ("id" and "note" do: the snapshot's
            # summary, the values of `note`); the decoded names were compared above.
            for column in hidden & {"region", "units", "secret"}:
                assert column.encode() not in body
            if "region" in hidden:
                assert b"APAC" not in body and b"EU-West" not in body
        if "secret" in hidden:
            assert b"SECRET-" not in body
        if "note" in hidden:
            assert b"note " not in body
    finally:
        keys.delete_key(engine, created.key.id)
