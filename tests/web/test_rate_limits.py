"""Per-key rate limits and usage counting, on both adapters and both stores.

Limits are counted in memory (`memory://`, this process) here; the Redis test runs two real
server processes sharing one limit through `rate_limit_storage = redis://...`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from airflow_nx1_connect.core import keys, ratelimit, store, usage
from tests.web.conftest import STORE_ENV, Adapter, Answer

LATEST = "data-apis/sales/latest?limit=1"
RATE_LIMIT_HEADER = re.compile(r'^"per-key";r=0;t=(\d+)$')
REDIS_URL = "redis://127.0.0.1:6379/11"


def _key(api_store, rate_limit: int | None) -> tuple[str, str]:
    created = keys.create_key(api_store.engine, data_api="sales", days=1, rate_limit=rate_limit)
    return created.key.id, created.secret


def _get(adapter: Adapter, secret: str, path: str = LATEST) -> Answer:
    return adapter.get(path, {"X-API-Key": secret})


def _assert_429(answer: Answer, limit: int) -> int:
    assert answer.status == 429, (answer.status, answer.body[:200])
    assert answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert set(body) == {"type", "title", "status", "detail"}
    assert body["status"] == 429 and body["type"].endswith(":rate-limited")
    assert f"{limit} requests per 60 seconds" in body["detail"]
    retry_after = int(answer.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert answer.headers["ratelimit-policy"] == f'"per-key";q={limit};w=60'
    match = RATE_LIMIT_HEADER.match(answer.headers["ratelimit"])
    assert match and int(match.group(1)) == retry_after
    return retry_after


@pytest.fixture(autouse=True)
def _fresh_limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Memory storage, no default limit, no background flush during a test."""
    monkeypatch.delenv("AIRFLOW__NX1_CONNECT__DEFAULT_RATE_LIMIT", raising=False)
    monkeypatch.delenv("AIRFLOW__NX1_CONNECT__RATE_LIMIT_STORAGE", raising=False)
    monkeypatch.setattr(usage, "FLUSH_EVERY_S", 3600.0)
    ratelimit.reset_limiters()
    yield
    usage.flush()
    ratelimit.reset_limiters()


def test_over_the_limit_is_429_with_retry_after_and_ratelimit_fields(api_store, adapters):
    answers = []
    for adapter in adapters:
        key_id, secret = _key(api_store, 3)
        for _ in range(3):
            assert _get(adapter, secret).status == 200
        refused = _get(adapter, secret)
        _assert_429(refused, 3)
        # Another key (no limit) is served while this one is refused.
        assert _get(adapter, api_store.keys["sales"]).status == 200
        assert _get(adapter, secret, "data-apis/sales").status == 429  # every route
        answers.append(refused)
        keys.delete_key(api_store.engine, key_id)
    flask, fastapi = answers
    assert flask.body == fastapi.body
    same = {"content-type", "cache-control", "ratelimit-policy"}
    assert {h: flask.headers[h] for h in same} == {h: fastapi.headers[h] for h in same}


def test_a_key_at_its_limit_does_not_slow_other_keys(api_store, adapters):
    """Threads hammer a refused key while another key's requests are all served."""
    for adapter in adapters:
        limited_id, limited = _key(api_store, 1)
        free_id, free = _key(api_store, 1_000)
        assert _get(adapter, limited).status == 200
        statuses: list[int] = []

        def hammer(secret: str = limited, adapter: Adapter = adapter) -> None:
            for _ in range(20):
                statuses.append(_get(adapter, secret).status)

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for thread in threads:
            thread.start()
        served = [_get(adapter, free).status for _ in range(20)]
        for thread in threads:
            thread.join()
        assert served == [200] * 20
        assert set(statuses) == {429}
        for key_id in (limited_id, free_id):
            keys.delete_key(api_store.engine, key_id)


def test_default_rate_limit_applies_to_keys_without_their_own(
    api_store, adapters, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__DEFAULT_RATE_LIMIT", "2")
    for adapter in adapters:
        default_id, default = _key(api_store, None)
        none_id, unlimited = _key(api_store, 0)
        own_id, own = _key(api_store, 4)
        assert [_get(adapter, default).status for _ in range(2)] == [200, 200]
        _assert_429(_get(adapter, default), 2)
        # 0 = no limit, whatever the default.
        assert [_get(adapter, unlimited).status for _ in range(6)] == [200] * 6
        # A key's own limit wins over the default.
        assert [_get(adapter, own).status for _ in range(4)] == [200] * 4
        _assert_429(_get(adapter, own), 4)
        for key_id in (default_id, none_id, own_id):
            keys.delete_key(api_store.engine, key_id)


def test_no_limit_by_default(api_store, adapters):
    for adapter in adapters:
        key_id, secret = _key(api_store, None)
        assert {_get(adapter, secret).status for _ in range(30)} == {200}
        assert "ratelimit" not in _get(adapter, secret).headers
        keys.delete_key(api_store.engine, key_id)


def test_unreachable_rate_limit_storage_is_503(api_store, adapters, monkeypatch):
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__RATE_LIMIT_STORAGE", "redis://127.0.0.1:1/0")
    key_id, secret = _key(api_store, 5)
    answers = [_get(adapter, secret) for adapter in adapters]
    for answer in answers:
        assert answer.status == 503, answer.body
        assert answer.json()["type"].endswith(":rate-limit-unavailable")
        assert answer.headers["retry-after"] == "5"
    assert answers[0].body == answers[1].body
    assert b"127.0.0.1:1" not in answers[0].body
    keys.delete_key(api_store.engine, key_id)


# ---------------------------------------------------------------------------------------
# Usage
# ---------------------------------------------------------------------------------------


def _stored_usage(engine: sa.Engine, key_id: str) -> list[tuple[dt.date, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(store.key_usage.c.day, store.key_usage.c.requests)
            .where(store.key_usage.c.key_id == key_id)
            .order_by(store.key_usage.c.day)
        ).all()
    return [(d if isinstance(d, dt.date) else dt.date.fromisoformat(d), n) for d, n in rows]


def test_usage_is_counted_in_memory_and_flushed(api_store, adapters):
    engine = api_store.engine
    key_id, secret = _key(api_store, None)
    other_id, other = _key(api_store, None)
    today = dt.datetime.now(dt.timezone.utc).date()
    usage.flush()
    with engine.begin() as conn:  # earlier days, as other processes flushed them
        conn.execute(
            store.key_usage.insert(),
            [
                {"key_id": key_id, "day": today - dt.timedelta(days=3), "requests": 10},
                {"key_id": key_id, "day": today - dt.timedelta(days=30), "requests": 100},
            ],
        )
    for adapter in adapters:
        for _ in range(3):
            assert _get(adapter, secret).status == 200
        assert _get(adapter, other, "data-apis/sales").status == 200
    # Never a write per request: nothing for today in the store until a flush.
    assert (today, 6) not in _stored_usage(engine, key_id)
    assert _stored_usage(engine, other_id) == []
    # ...but this process's pending counts are already reported.
    expected = {
        key_id: {"today": 6, "last_7_days": 16, "total": 116},
        other_id: {"today": 2, "last_7_days": 2, "total": 2},
    }
    assert usage.usage_for_keys(engine, [key_id, other_id]) == expected
    usage.flush()
    assert (today, 6) in _stored_usage(engine, key_id)
    assert _stored_usage(engine, other_id) == [(today, 2)]
    assert usage.usage_for_keys(engine, [key_id, other_id]) == expected
    # A second flush adds (upsert), it does not replace.
    assert _get(adapters[1], other, "data-apis/sales").status == 200
    usage.flush()
    assert _stored_usage(engine, other_id) == [(today, 3)]
    assert usage.usage_for_keys(engine, ["nope"]) == {
        "nope": {"today": 0, "last_7_days": 0, "total": 0}
    }
    for k in (key_id, other_id):
        keys.delete_key(api_store.engine, k)


def test_usage_flushes_in_the_background_after_the_interval(api_store, adapters, monkeypatch):
    key_id, secret = _key(api_store, None)
    usage.flush()
    monkeypatch.setattr(usage, "FLUSH_EVERY_S", 0.0)
    assert _get(adapters[0], secret).status == 200
    flusher = usage._flusher
    assert flusher is not None
    flusher.join(10)
    assert _stored_usage(api_store.engine, key_id) == [(dt.datetime.now(dt.timezone.utc).date(), 1)]
    keys.delete_key(api_store.engine, key_id)


def test_counts_of_a_deleted_key_are_dropped_at_flush(api_store, adapters):
    key_id, secret = _key(api_store, None)
    assert _get(adapters[1], secret).status == 200
    keys.delete_key(api_store.engine, key_id)
    usage.flush()  # no foreign key error, nothing kept for the next flush
    assert usage.pending(api_store.engine) == {}
    assert _stored_usage(api_store.engine, key_id) == []


def test_keys_list_shows_usage(api_store, adapters, monkeypatch):
    from tests.helpers import ok

    key_id, secret = _key(api_store, 7)
    for adapter in adapters:
        assert _get(adapter, secret).status == 200
    usage.flush()
    monkeypatch.setenv(STORE_ENV, api_store.url)
    listed = {k["key_id"]: k for k in json.loads(ok("keys", "list", "--json").stdout)}
    assert listed[key_id]["usage"] == {"today": 2, "last_7_days": 2, "total": 2}
    assert listed[key_id]["rate_limit"] == 7
    table = ok("keys", "list", "--data-api", "sales").stdout.splitlines()
    assert table[0].split()[-2:] == ["USAGE", "POLICY"]
    row = next(line for line in table if line.startswith(key_id))
    assert row.split()[-2:] == ["2/2/2", "-"]
    keys.delete_key(api_store.engine, key_id)


# ---------------------------------------------------------------------------------------
# Redis: two server processes share one limit
# ---------------------------------------------------------------------------------------


@pytest.fixture
def redis_db() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        yield REDIS_URL
    finally:
        client.flushdb()
        client.close()


@pytest.mark.slow  # spawns processes
def test_redis_storage_shares_one_limit_between_two_servers(
    api_store, redis_db, monkeypatch, tmp_path: Path
):
    from tests.reliability.servers import start_server

    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__RATE_LIMIT_STORAGE", redis_db)
    key_id, secret = _key(api_store, 4)
    other_id, other = _key(api_store, 4)
    servers = [start_server(kind, api_store.url, tmp_path) for kind in ("fastapi", "flask")]
    try:
        headers = {"X-API-Key": secret}
        statuses = [
            httpx.get(f"{servers[i % 2].base}/{LATEST}", headers=headers).status_code
            for i in range(4)
        ]
        assert statuses == [200] * 4  # two on each server
        for server in servers:  # both refuse now: the count is shared
            refused = httpx.get(f"{server.base}/{LATEST}", headers=headers)
            assert refused.status_code == 429, refused.text
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert refused.headers["ratelimit-policy"] == '"per-key";q=4;w=60'
        # The other key has its own count on both servers.
        for server in servers:
            r = httpx.get(f"{server.base}/{LATEST}", headers={"X-API-Key": other})
            assert r.status_code == 200
    finally:
        for server in servers:
            server.stop()
    for k in (key_id, other_id):
        keys.delete_key(api_store.engine, k)
