"""Typed clients (issue 24): `shape=objects`, the per-data-API OpenAPI document, and clients
that openapi-python-client generates from it and from the whole API's document.

`shape` and the per-data-API document are checked on both adapters in-process (same status,
headers and body). The generated clients run in their own Python process, as an app would,
against a real uvicorn server with both mounts (the FastAPI app under /nx1 and the Flask
blueprint under /pluginsv2), on SQLite and PostgreSQL; no HTTP is mocked.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.web.conftest import BASE, COLUMNS, Adapter, Answer, ApiStore, big_rows
from tests.web.mounts import Mounts, serve_both_mounts

NAMES = [n for n, _ in COLUMNS]
PROBLEM = "application/problem+json"
COMPARED = ("content-type", "etag", "last-modified", "cache-control", "vary", "link")
BIN = Path(sys.executable).parent
#: The contract's table: column family -> JSON Schema type and format of a row property.
CONTRACT_TYPES = {
    "INTEGER": ("integer", None),
    "REAL": ("number", None),
    "TEXT": ("string", None),
    "BOOLEAN": ("boolean", None),
    "DATE": ("string", "date"),
    "TIMESTAMP": ("string", "date-time"),
    "NUMERIC": ("string", "decimal"),
}


def both(adapters: list[Adapter], path: str, headers: dict[str, str] | None = None) -> Answer:
    """One GET to both adapters; same status, headers and body. Returns the answer."""
    first, second = (a.get(path, headers) for a in adapters)
    assert first.status == second.status, (path, first.status, second.status, second.body)
    for name in COMPARED:
        assert first.headers.get(name) == second.headers.get(name), (path, name)
    assert first.body == second.body, path
    return first


def key(api_store: ApiStore, role: str = "sales") -> dict[str, str]:
    return {"X-API-Key": api_store.keys[role]}


def problem(answer: Answer, status: int) -> str:
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == PROBLEM
    return str(answer.json()["detail"])


# ---------------------------------------------------------------------------------------
# shape=objects
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["latest", "old"])
def test_shape_objects_rows(which: str, adapters: list[Adapter], api_store: ApiStore) -> None:
    route = "latest" if which == "latest" else f"snapshots/{api_store.old.id}"
    path = f"{BASE}/data-apis/sales/{route}?limit=7&columns=score,id,meta,name"
    arrays = both(adapters, path, key(api_store))
    explicit = both(adapters, path + "&shape=arrays", key(api_store)).json()
    assert explicit["data"].pop("next_url").endswith("shape=arrays&start=7")
    assert explicit["data"] == {k: v for k, v in arrays.json()["data"].items() if k != "next_url"}
    objects = both(adapters, path + "&shape=objects", key(api_store))
    assert objects.status == arrays.status == 200
    a, o = arrays.json(), objects.json()
    columns = ["score", "id", "meta", "name"]
    assert a["data"]["columns"] == o["data"]["columns"] == columns
    assert len(o["data"]["data"]) == 7
    # Each row an object in column order (the body's own key order), values as in arrays.
    assert [list(row) for row in o["data"]["data"]] == [columns] * 7
    assert o["data"]["data"] == [dict(zip(columns, row, strict=True)) for row in a["data"]["data"]]
    # Everything else is the same; the next page keeps the shape.
    assert o["snapshot"] == a["snapshot"] and o["data_api"] == a["data_api"]
    for field in ("start", "row_count", "column_types", "next_start"):
        assert o["data"][field] == a["data"][field]
    assert "shape=objects" in o["data"]["next_url"]
    assert "shape=objects" in objects.headers["link"]
    # Two bodies, two ETags; each answers its own If-None-Match with a 304.
    assert objects.headers["etag"] != arrays.headers["etag"]
    again = both(
        adapters,
        path + "&shape=objects",
        {**key(api_store), "If-None-Match": objects.headers["etag"]},
    )
    assert again.status == 304
    stale = both(
        adapters,
        path + "&shape=objects",
        {**key(api_store), "If-None-Match": arrays.headers["etag"]},
    )
    assert stale.status == 200


def test_shape_objects_whole_page_matches_source_rows(
    adapters: list[Adapter], api_store: ApiStore
) -> None:
    """Every row of the latest snapshot as an object: NULLs, unicode, JSON, decimals."""
    body = both(
        adapters, f"{BASE}/data-apis/sales/latest?limit=6000&shape=objects", key(api_store)
    ).json()
    rows = body["data"]["data"]
    source = big_rows()
    assert len(rows) == len(source) and body["data"]["next_start"] is None
    assert rows[1] == dict.fromkeys(NAMES, None) | {"id": 2}
    for row, expected in zip(rows, source, strict=True):
        assert list(row) == NAMES
        assert typed(row, dict(COLUMNS)) == dict(zip(NAMES, expected, strict=True))


def test_shape_objects_changes(adapters: list[Adapter], api_store: ApiStore) -> None:
    path = f"{BASE}/data-apis/sales/changes?since={api_store.old.id}&limit=9"
    arrays = both(adapters, path, key(api_store)).json()
    objects = both(adapters, path + "&shape=objects", key(api_store)).json()
    columns = ["_op", *NAMES]
    assert arrays["data"]["columns"] == objects["data"]["columns"] == columns
    assert len(objects["data"]["data"]) == 9
    assert [list(row) for row in objects["data"]["data"]] == [columns] * 9  # `_op` first
    assert objects["data"]["data"] == [
        dict(zip(columns, row, strict=True)) for row in arrays["data"]["data"]
    ]
    assert {row["_op"] for row in objects["data"]["data"]} <= {"insert", "update", "delete"}
    assert objects["from"] == arrays["from"] and objects["to"] == arrays["to"]
    assert "shape=objects" in objects["data"]["next_url"]


@pytest.mark.parametrize("value", ["Objects", "", "object", "arrays,objects"])
@pytest.mark.parametrize("route", ["latest", "changes"])
def test_shape_other_values_are_400(
    value: str, route: str, adapters: list[Adapter], api_store: ApiStore
) -> None:
    path = f"{BASE}/data-apis/sales/{route}?shape={value}"
    if route == "changes":
        path += f"&since={api_store.old.id}"
    assert "shape" in problem(both(adapters, path, key(api_store)), 400)
    twice = f"{BASE}/data-apis/sales/latest?shape=objects&shape=objects"
    assert "shape" in problem(both(adapters, twice, key(api_store)), 400)


def test_shape_leaves_other_formats_alone(adapters: list[Adapter], api_store: ApiStore) -> None:
    path = f"{BASE}/data-apis/sales/latest?limit=5&format="
    for fmt in ("csv", "ndjson"):
        plain = both(adapters, path + fmt, key(api_store))
        shaped = both(adapters, path + fmt + "&shape=objects", key(api_store))
        assert plain.status == shaped.status == 200 and plain.body == shaped.body


# ---------------------------------------------------------------------------------------
# The per-data-API OpenAPI document
# ---------------------------------------------------------------------------------------


def openapi_path(name: str = "sales") -> str:
    return f"{BASE}/data-apis/{name}/openapi.json"


def test_per_data_api_openapi_document(adapters: list[Adapter], api_store: ApiStore) -> None:
    answer = both(adapters, openapi_path(), key(api_store))
    assert answer.status == 200 and answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"].startswith("private")
    doc = answer.json()
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] == "sales data API"
    assert "Weekly sales" in doc["info"]["description"]
    assert doc["servers"] == [{"url": BASE}]
    assert set(doc["paths"]) == {
        "/data-apis/sales/latest",
        "/data-apis/sales/snapshots",
        "/data-apis/sales/snapshots/{snapshot_id}",
        "/data-apis/sales/changes",
    }
    schemas = doc["components"]["schemas"]
    row = schemas["Row"]
    # One property per column, in column order, every one present and nullable.
    assert list(row["properties"]) == NAMES and row["required"] == NAMES
    for name, family in COLUMNS:
        prop = row["properties"][name]
        if family == "JSON":
            assert prop == {}, (name, prop)  # any value, null included
            continue
        kind, fmt = CONTRACT_TYPES[family]
        expected = {"type": [kind, "null"]} | ({"format": fmt} if fmt else {})
        assert prop == expected, (name, prop)
    assert list(schemas["Change"]["properties"]) == ["_op", *NAMES]
    for route in ("latest", "snapshots/{snapshot_id}"):
        op = doc["paths"][f"/data-apis/sales/{route}"]["get"]
        ok = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": "#/components/schemas/RowsPage"}
        shape = next(p for p in op["parameters"] if p["name"] == "shape")
        assert shape["required"] is True and shape["schema"]["const"] == "objects"
        params = {p["name"] for p in op["parameters"]}
        assert {f"where.{n}" for n in NAMES} | {"start", "limit", "sort"} <= params
    page = schemas["RowsData"]["properties"]["data"]
    assert page == {"type": "array", "items": {"$ref": "#/components/schemas/Row"}}
    assert doc["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"


def test_per_data_api_document_describes_real_answers(
    adapters: list[Adapter], api_store: ApiStore
) -> None:
    """The document's schemas (JSON Schema 2020-12) accept the real shape=objects bodies."""
    doc = both(adapters, openapi_path(), key(api_store)).json()

    def check(body: Any, schema: str) -> None:
        root = {**doc, "$ref": f"#/components/schemas/{schema}"}
        jsonschema.Draft202012Validator(
            root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        ).validate(body)

    latest = f"{BASE}/data-apis/sales/latest?shape=objects&limit=6000"
    check(both(adapters, latest, key(api_store)).json(), "RowsPage")
    old = f"{BASE}/data-apis/sales/snapshots/{api_store.old.id}?shape=objects"
    check(both(adapters, old, key(api_store)).json(), "RowsPage")
    changes = f"{BASE}/data-apis/sales/changes?since={api_store.old.id}&shape=objects&limit=50"
    check(both(adapters, changes, key(api_store)).json(), "ChangesPage")
    listed = both(adapters, f"{BASE}/data-apis/sales/snapshots", key(api_store)).json()
    check(listed, "SnapshotList")
    # And a wrong row is refused: the schemas do type the values.
    bad = both(adapters, latest, key(api_store)).json()
    bad["data"]["data"][0]["id"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        check(bad, "RowsPage")


def test_per_data_api_document_errors_and_caching(
    adapters: list[Adapter], api_store: ApiStore
) -> None:
    problem(both(adapters, openapi_path()), 401)
    problem(both(adapters, openapi_path(), key(api_store, "other")), 403)
    problem(both(adapters, openapi_path("nope"), key(api_store)), 403)
    problem(both(adapters, openapi_path(), key(api_store, "revoked")), 401)
    # No snapshot published yet: nothing to type the rows from.
    assert "snapshot" in problem(
        both(adapters, openapi_path("empty_api"), key(api_store, "empty")), 404
    )
    in_query = f"{openapi_path()}?key={api_store.keys['sales']}"
    problem(both(adapters, in_query), 400)
    first = both(adapters, openapi_path(), key(api_store))
    again = both(
        adapters, openapi_path(), {**key(api_store), "If-None-Match": first.headers["etag"]}
    )
    assert again.status == 304 and again.body == b""


# ---------------------------------------------------------------------------------------
# Generated clients, in their own process, against real servers of both mounts
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(api_store: ApiStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounts]:
    """One uvicorn process on the module's store, serving both mounts."""
    log_path = tmp_path_factory.mktemp("server") / "uvicorn.log"
    with serve_both_mounts(api_store.url, log_path) as mounts:
        yield mounts


#: Generated packages by document digest: each document is generated from once per session.
_GENERATED: dict[str, Path] = {}


def generate(document: bytes, package: str, tmp: Path) -> Path:
    """Run openapi-python-client on `document`; the folder to put on PYTHONPATH.

    The generator must accept the document without a single warning (`--fail-on-warning`).
    """
    digest = hashlib.sha256(document).hexdigest()[:16]
    if digest in _GENERATED:
        return _GENERATED[digest]
    work = tmp / f"gen-{digest}"
    work.mkdir()
    (work / "openapi.json").write_bytes(document)
    (work / "config.json").write_text(json.dumps({"package_name_override": package}))
    result = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(work / "openapi.json"),
            "--config",
            str(work / "config.json"),
            "--meta",
            "none",
            "--output-path",
            str(work / "out" / package),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Warning" not in output and "Error" not in output, output
    _GENERATED[digest] = work / "out"
    return work / "out"


def run_client(path: Path, script: str, *args: str) -> Any:
    """Run `script` (it pickles its result to stdout) with the generated package on its path."""
    env = {**os.environ, "PYTHONPATH": str(path)}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return pickle.loads(result.stdout)  # our own child process's output


def typed(row: dict[str, Any], families: dict[str, str]) -> dict[str, Any]:
    """A JSON row object with values as the source gave them (the test's own decoding)."""
    out = {}
    for name, value in row.items():
        family = families[name]
        if value is not None and family == "NUMERIC":
            value = decimal.Decimal(value)
        elif value is not None and family == "DATE":
            value = dt.date.fromisoformat(value)
        elif value is not None and family == "TIMESTAMP":
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        out[name] = value
    return out


#: Reads through the client generated from the per-data-API document; prints a pickle.
SALES_SCRIPT = """
    import pickle, sys
    from sales_client import AuthenticatedClient, Client
    from sales_client.api.default import get_changes, get_latest_rows, get_snapshot_rows
    from sales_client.models import Change, Row, RowsPage

    base, key, how, old_id = sys.argv[1:5]
    if how == "bearer":
        client = AuthenticatedClient(base_url=base, token=key)
    else:
        client = Client(base_url=base, headers={"X-API-Key": key})
    names = [a.name for a in Row.__attrs_attrs__ if a.name != "additional_properties"]
    with client:
        page = get_latest_rows.sync(client=client, limit=6000)
        assert isinstance(page, RowsPage), page
        assert all(isinstance(row, Row) for row in page.data.data)
        latest = [{n: getattr(row, n) for n in names} for row in page.data.data]
        some = get_snapshot_rows.sync(old_id, client=client, where_id="lt.4", sort="-id")
        assert isinstance(some, RowsPage), some
        old = [{n: getattr(row, n) for n in names} for row in some.data.data]
        feed = get_changes.sync(client=client, since=old_id, limit=3)
        changes = [(c.field_op.value, c.id) for c in feed.data.data if isinstance(c, Change)]
        missing = get_snapshot_rows.sync_detailed("nope", client=client).status_code
    sys.stdout.buffer.write(pickle.dumps((names, latest, old, changes, int(missing))))
"""


def test_generated_client_returns_typed_rows(
    api_store: ApiStore, server: Mounts, tmp_path_factory: pytest.TempPathFactory
) -> None:
    documents = {
        mount: httpx.get(f"{base}/data-apis/sales/openapi.json", headers=key(api_store))
        for mount, base in server.bases.items()
    }
    for mount, document in documents.items():
        assert document.status_code == 200, document.text
        # Each mount's document names its own base as the server.
        assert document.json()["servers"] == [
            {"url": server.bases[mount].removeprefix(server.root)}
        ]
    package = generate(
        documents["fastapi"].content, "sales_client", tmp_path_factory.mktemp("sales")
    )
    source = [dict(zip(NAMES, row, strict=True)) for row in big_rows()]
    for mount, base in server.bases.items():
        for how in ("bearer", "x-api-key"):
            names, latest, old, changes, missing = run_client(
                package, SALES_SCRIPT, base, api_store.keys["sales"], how, api_store.old.id
            )
            assert names == NAMES
            # Typed objects: int, str, bool, date, datetime, JSON values, float; NUMERIC as
            # its exact text (string/decimal).
            assert len(latest) == len(source)
            for got, original in zip(latest, source, strict=True):
                want = dict(original)
                amount = got.pop("amount")
                expected_amount = want.pop("amount")
                assert got == want, (mount, how)
                if expected_amount is None:
                    assert amount is None
                else:
                    assert isinstance(amount, str) and decimal.Decimal(amount) == expected_amount
            assert latest[0]["ts"] == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
            assert type(latest[0]["day"]) is dt.date and type(latest[0]["ok"]) is bool
            assert [r["id"] for r in old] == [3, 2, 1]
            assert len(changes) == 3 and {op for op, _ in changes} <= {"insert", "delete"}
            assert missing == 404


#: Reads through the client generated from the whole API's document; prints a pickle.
WHOLE_SCRIPT = """
    import pickle, sys
    from nx1_client import AuthenticatedClient, Client
    from nx1_client.api.default import get_data_api, get_latest_rows
    from nx1_client.models import DataApi, Problem, RowsPage

    base, key, how = sys.argv[1:4]
    if how == "bearer":
        client = AuthenticatedClient(base_url=base, token=key)
    else:
        client = Client(base_url=base, headers={"X-API-Key": key})
    with client:
        page = get_latest_rows.sync("sales", client=client, limit=4)
        assert isinstance(page, RowsPage), repr(page)[:300]
        api = get_data_api.sync("sales", client=client)
        assert isinstance(api, DataApi), repr(api)[:300]
        refused = get_latest_rows.sync("other", client=client)
        assert isinstance(refused, Problem), repr(refused)[:300]
    result = (page.data.columns, page.data.data, page.snapshot.id, refused.status)
    sys.stdout.buffer.write(pickle.dumps(result))
"""


def test_generated_client_of_whole_api_reads_rows(
    api_store: ApiStore, server: Mounts, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The whole API's /nx1/api/v1/openapi.json: a client whose rows calls give RowsPage.

    Before the fix the rows responses listed text/csv before application/json, and the
    generator types a response by its first known media type: the page came back as `str`.
    """
    document = httpx.get(f"{server.bases['fastapi']}/openapi.json")
    assert document.status_code == 200
    package = generate(document.content, "nx1_client", tmp_path_factory.mktemp("whole"))
    expected = both_json_rows(big_rows()[:4])
    for mount, base in server.bases.items():
        for how in ("bearer", "x-api-key"):
            # The document's paths start at /api/v1: the client's base is the mount.
            columns, rows, snapshot_id, refused = run_client(
                package,
                WHOLE_SCRIPT,
                base.removesuffix("/api/v1"),
                api_store.keys["sales"],
                how,
            )
            assert columns == NAMES and snapshot_id == api_store.latest.id
            assert rows == expected, (mount, how)
            assert refused == 403


def both_json_rows(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as the API's JSON writes them (arrays)."""
    out = []
    for row in rows:
        values = []
        for value in row:
            if isinstance(value, dt.datetime):
                value = value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
            elif isinstance(value, dt.date):
                value = value.isoformat()
            elif isinstance(value, decimal.Decimal):
                value = str(value)
            values.append(value)
        out.append(values)
    return out
