"""Reads that meet trouble in the store (issue 22, defects 5 and 6), both adapters, both stores.

- A conditional request whose copy is current gets 304 without reading a row or running a
  change-feed query: shown by making the snapshot's table unreadable behind the
  catalogue's back, after the ETag was handed out.
- A read that fails in the store while the catalogue still lists the snapshot is a 503
  with `Retry-After` (retry later), never 404 "no longer retained"; 404 only when the
  snapshot is really gone.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
import sqlalchemy as sa

from airflow_nx1_connect.core.store import quote
from tests.conftest import pg_admin_url
from tests.web.conftest import BASE, Adapter, ApiStore
from tests.web.helpers import both, key_header

PROBLEM = "application/problem+json"


@contextmanager
def table_moved_away(api_store: ApiStore, table: str) -> Iterator[None]:
    """The snapshot's table renamed (so no read finds it) while the catalogue is unchanged."""
    engine = api_store.engine
    aside = table + "_aside"
    with engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {quote(conn, table)} RENAME TO {quote(conn, aside)}"))
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(
                sa.text(f"ALTER TABLE {quote(conn, aside)} RENAME TO {quote(conn, table)}")
            )


def _paths(api_store: ApiStore) -> list[str]:
    latest, old = api_store.latest.id, api_store.old.id
    return [
        "data-apis/sales/latest?limit=7",
        "data-apis/sales/latest?limit=7&format=csv",
        "data-apis/sales/latest?limit=5&sort=-id&where.id=gt.10",
        f"data-apis/sales/snapshots/{latest}?limit=3&start=4000",
        "data-apis/sales/latest?format=csv",
        "data-apis/sales/latest?format=arrow",
        f"data-apis/sales/changes?since={old}&to={latest}&limit=5",
        f"data-apis/sales/changes?since={old}&limit=5&format=ndjson",
    ]


@pytest.mark.parametrize("index", range(8))
def test_a_304_reads_no_rows(adapters: list[Adapter], api_store: ApiStore, index: int) -> None:
    path = _paths(api_store)[index]
    auth = key_header(api_store, "sales")
    first = both(adapters, f"{BASE}/{path}", auth)
    assert first.status == 200, first.body[:300]
    etag = first.headers["etag"]
    with table_moved_away(api_store, api_store.latest.table_name):
        again = both(adapters, f"{BASE}/{path}", {**auth, "If-None-Match": etag})
        assert again.status == 304, again.body[:300]
        assert again.body == b"" and again.headers["etag"] == etag
        assert again.headers["cache-control"].startswith("private, ")
        # Without the validator the read is attempted, and it fails (the store cannot
        # read a snapshot the catalogue lists): 503.
        failed = both(adapters, f"{BASE}/{path}", auth)
        assert failed.status == 503, failed.body[:300]


@pytest.mark.parametrize(
    "path",
    [
        "data-apis/sales/latest?limit=7",
        "data-apis/sales/latest?format=csv",
        "data-apis/sales/latest?format=arrow",
        "data-apis/sales/latest?limit=5&sort=-id&where.id=gt.10",
        "data-apis/sales/changes?since={old}&limit=5",
    ],
)
def test_a_store_failure_on_a_listed_snapshot_is_503(
    adapters: list[Adapter], api_store: ApiStore, path: str
) -> None:
    """The catalogue still lists the snapshot, the store cannot read it: 503, Retry-After,
    not 404 "no longer retained" (which would make an app drop its copy for nothing)."""
    url = f"{BASE}/{path.replace('{old}', api_store.old.id)}"
    with table_moved_away(api_store, api_store.latest.table_name):
        answer = both(adapters, url, key_header(api_store, "sales"))
    assert answer.status == 503, answer.body[:300]
    assert answer.headers["content-type"] == PROBLEM
    assert int(answer.headers["retry-after"]) > 0
    assert answer.json()["title"] == "Snapshot store unavailable"


def test_a_snapshot_really_gone_is_404(adapters: list[Adapter], api_store: ApiStore) -> None:
    """Not in the catalogue (never was, or retired): 404, on both adapters."""
    auth = key_header(api_store, "sales")
    answer = both(adapters, f"{BASE}/data-apis/sales/snapshots/{'0' * 32}?limit=2", auth)
    assert answer.status == 404 and answer.headers["content-type"] == PROBLEM


@contextmanager
def slow_table(api_store: ApiStore, table: str) -> Iterator[None]:
    """The snapshot's table replaced by a view that takes minutes to read (a counting
    recursion before the rows), behind the catalogue's back."""
    engine = api_store.engine
    aside = table + "_aside"
    with engine.begin() as conn:
        q = {"t": quote(conn, table), "a": quote(conn, aside)}
        conn.execute(sa.text(f"ALTER TABLE {q['t']} RENAME TO {q['a']}"))
        conn.execute(
            sa.text(
                f"CREATE VIEW {q['t']} AS SELECT * FROM {q['a']} WHERE (WITH RECURSIVE "
                "c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) "
                "SELECT COUNT(*) FROM c) > 0"
            )
        )
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP VIEW {q['t']}"))
            conn.execute(sa.text(f"ALTER TABLE {q['a']} RENAME TO {q['t']}"))


@pytest.mark.parametrize(
    "path", ["data-apis/sales/latest?limit=7", "data-apis/sales/latest?format=csv"]
)
def test_a_read_past_read_timeout_s_is_503(
    adapters: list[Adapter], api_store: ApiStore, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[nx1_connect] read_timeout_s` bounds every read (PostgreSQL statement_timeout,
    SQLite a progress deadline): a read that would take minutes answers 503 in about that
    time, and the next read is served as usual."""
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__READ_TIMEOUT_S", "1")
    auth = key_header(api_store, "sales")
    with slow_table(api_store, api_store.latest.table_name):
        for adapter in adapters:
            began = time.monotonic()
            answer = adapter.get(f"{BASE}/{path}", auth)
            took = time.monotonic() - began
            assert answer.status == 503, (adapter.name, answer.body[:300])
            assert int(answer.headers["retry-after"]) > 0
            assert took < 8, f"{adapter.name}: {took:.1f} s for a 1 s read bound"
    assert both(adapters, f"{BASE}/{path}", auth).status == 200


def test_a_read_that_meets_a_lock_is_503_not_a_hang(
    adapters: list[Adapter], api_store: ApiStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a snapshot table locked by another session (e.g. a DROP waiting in
    line) held a read until the lock went (over 20 s seen). Now lock_timeout bounds it.
    SQLite readers never wait for writers (WAL): served at once."""
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__READ_TIMEOUT_S", "1")
    auth = key_header(api_store, "sales")
    table = api_store.latest.table_name
    if api_store.backend == "sqlite":
        raw = sqlite3.connect(api_store.engine.url.database, isolation_level=None)
        raw.execute("BEGIN EXCLUSIVE")  # a writer holding the write lock
        raw.execute(f"DELETE FROM {quote(api_store.engine, table)} WHERE 0")
        try:
            assert both(adapters, f"{BASE}/data-apis/sales/latest?limit=3", auth).status == 200
        finally:
            raw.execute("ROLLBACK")
            raw.close()
        return
    schema = api_store.url.split("search_path%3D", 1)[1]
    with psycopg.connect(pg_admin_url(), options=f"-csearch_path={schema}") as locker:
        locker.execute(f"LOCK TABLE {quote(api_store.engine, table)} IN ACCESS EXCLUSIVE MODE")
        for adapter in adapters:
            began = time.monotonic()
            answer = adapter.get(f"{BASE}/data-apis/sales/latest?limit=3", auth)
            took = time.monotonic() - began
            assert answer.status == 503, (adapter.name, answer.body[:300])
            assert took < 8, f"{adapter.name}: {took:.1f} s behind a lock, 1 s bound"
        locker.rollback()
    assert both(adapters, f"{BASE}/data-apis/sales/latest?limit=3", auth).status == 200
