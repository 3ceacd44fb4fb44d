"""Fixtures for the data REST API: a populated store (SQLite and PostgreSQL) and both adapters.

`api_store` is module-scoped: the snapshots are written once per store by the real write
path (`core.snapshots.write_snapshot`, what the operators call) and the keys by
`core.keys.create_key`; every test of a module then reads them through both adapters.
"""

from __future__ import annotations

import datetime as dt
import decimal
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_nx1_connect.core import engines, writer
from tests.conftest import drop_pg_schema, make_pg_schema

STORE_ENV = "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN"
BASE = "/nx1/api/v1"
HOST = "http://testserver"
#: Rows of the big snapshot: more than five default pages.
BIG_ROWS = 5_003
COLUMNS = [
    ("id", "INTEGER"),
    ("name", "TEXT"),
    ("amount", "NUMERIC"),
    ("ok", "BOOLEAN"),
    ("day", "DATE"),
    ("ts", "TIMESTAMP"),
    ("meta", "JSON"),
    ("score", "REAL"),
]
#: The first rows: unicode, quotes, commas, newlines, NULLs, decimals, JSON.
SPECIAL_ROWS: list[tuple[Any, ...]] = [
    (
        1,
        'Crème "brûlée", l\'été\nnew line',
        decimal.Decimal("12.3400"),
        True,
        dt.date(2026, 1, 2),
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        {"tags": ["a", "ü"], "n": 1},
        1.5,
    ),
    (2, None, None, None, None, None, None, None),
    (
        3,
        "日本語 🚀",
        decimal.Decimal("-0.000001"),
        False,
        dt.date(1999, 12, 31),
        dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc),
        [1, "x", None],
        -2.25,
    ),
    (4, "", decimal.Decimal("123456789012345678.99"), True, None, None, {}, 0.0),
]


def big_rows() -> list[tuple[Any, ...]]:
    """The rows of the latest `sales` snapshot, in order."""
    rows = list(SPECIAL_ROWS)
    for i in range(len(rows) + 1, BIG_ROWS + 1):
        rows.append(
            (
                i,
                f"row {i}",
                decimal.Decimal(i) / 100,
                i % 2 == 0,
                dt.date(2026, 1, 1) + dt.timedelta(days=i % 365),
                dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=i),
                {"i": i},
                i / 4,
            )
        )
    return rows


@dataclass
class ApiStore:
    """What `api_store` made: the store URL, its engine, snapshots and keys (by role)."""

    backend: str
    url: str
    engine: Any
    latest: Any
    old: Any
    other: Any
    keys: dict[str, str] = field(default_factory=dict)


def _populate(url: str, backend: str) -> ApiStore:
    from airflow_nx1_connect.core import keys, store
    from airflow_nx1_connect.core import snapshots as snaps

    engine = engines.get_engine(url)
    store.migrate(engine)
    columns = [snaps.Column(n, t) for n, t in COLUMNS]
    snaps.register_data_api(
        engine,
        name="sales",
        kind="ask",
        description="Weekly sales",
        question="What sold?",
        dag_id="d",
        task_id="sales",
    )
    rows = big_rows()
    old = writer.write_snapshot(
        engine, data_api="sales", columns=columns, batches=[rows[:10]], run_id="run_old"
    )
    latest = writer.write_snapshot(
        engine,
        data_api="sales",
        columns=columns,
        batches=[rows[i : i + 1000] for i in range(0, len(rows), 1000)],
        run_id="run_new",
        data_interval_end=dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc),
    )
    snaps.register_data_api(engine, name="other", kind="engineer", dag_id="d", task_id="other")
    other = writer.write_snapshot(
        engine,
        data_api="other",
        columns=[snaps.Column("x", "INTEGER")],
        batches=[[(1,), (2,)]],
    )
    snaps.register_data_api(engine, name="empty_api", kind="ask", dag_id="d", task_id="empty")
    made = {
        "sales": keys.create_key(engine, data_api="sales", days=30).secret,
        "other": keys.create_key(engine, data_api="other", days=30).secret,
        "empty": keys.create_key(engine, data_api="empty_api", days=30).secret,
        "expired": keys.create_key(
            engine,
            data_api="sales",
            days=1,
            now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3),
        ).secret,
    }
    revoked = keys.create_key(engine, data_api="sales", days=30)
    keys.revoke_key(engine, revoked.key.id)
    made["revoked"] = revoked.secret
    made["malformed"] = "nx1_short"
    made["unknown"] = "nx1_" + secrets.token_urlsafe(40)
    return ApiStore(backend, url, engine, latest, old, other, made)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiStore]:
    """A store with data APIs `sales` (2 snapshots, 5,003 rows), `other`, `empty_api`."""

    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'store.db'}"
    else:
        schema, url = make_pg_schema()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(STORE_ENV, url)
        try:
            yield _populate(url, request.param)
        finally:
            engines.dispose_engines()
            if schema:
                drop_pg_schema(schema)


@pytest.fixture(autouse=True)
def _store_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep `[nx1_connect] sql_alchemy_conn` on the module's store in every test using it."""
    if "api_store" in request.fixturenames:
        monkeypatch.setenv(STORE_ENV, request.getfixturevalue("api_store").url)


@dataclass
class Answer:
    """One HTTP answer, the same shape for both adapters."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class Adapter:
    """An in-process client of one adapter, mounted at /nx1/api/v1 like in Airflow."""

    def __init__(self, name: str, client: Any) -> None:
        self.name = name
        self.client = client

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
        url = path if path.startswith("/") else f"{BASE}/{path}"
        if self.name == "flask":
            r = self.client.open(url, method=method, headers=headers or {}, base_url=HOST)
            body = r.get_data()
            hdrs = {k.lower(): v for k, v in r.headers.items()}
            r.close()
            return Answer(r.status_code, hdrs, body)
        r = self.client.request(method, url, headers=headers or {})
        return Answer(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return self.request("GET", path, headers)


def flask_adapter() -> Adapter:
    """The Flask blueprint on a bare Flask app (Airflow's /pluginsv2 app adds only the mount)."""
    from flask import Flask

    from airflow_nx1_connect.web.blueprint import bp

    app = Flask("nx1_test")
    app.register_blueprint(bp)
    return Adapter("flask", app.test_client())


def fastapi_adapter() -> Adapter:
    """The FastAPI app mounted at /nx1 in a parent app, as Airflow's api-server does."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from airflow_nx1_connect.web.api import create_app

    parent = FastAPI()
    parent.mount("/nx1", create_app())
    client = TestClient(parent, base_url=HOST, raise_server_exceptions=False)
    # httpx asks for gzip by default; the Flask test client asks for nothing: send the same.
    del client.headers["accept-encoding"]
    return Adapter("fastapi", client)


@pytest.fixture(scope="session")
def adapters() -> list[Adapter]:
    """Both adapters: [flask, fastapi]."""
    return [flask_adapter(), fastapi_adapter()]
