"""core.keys: creation, verification (expiry boundary, revocation, wrong data API, malformed
input), last_used throttling, management, and that no secret or hash ever leaks."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import threading

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from airflow_nx1_connect.core import control, engines, keys, store
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.errors import (
    AuthError,
    DataApiNotFound,
    Forbidden,
    KeyNotFound,
    StoreUnavailable,
    ValidationError,
)

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
KEY_SHAPE = re.compile(r"^nx1_[A-Za-z0-9_-]{54}$")


@pytest.fixture
def apis(engine):
    """Two data APIs: `sales` (ask) and `ops` (engineer)."""
    snaps.register_data_api(engine, name="sales", kind="ask", dag_id="d", task_id="a")
    snaps.register_data_api(engine, name="ops", kind="engineer", dag_id="d", task_id="e")
    return engine


def _reason(engine, raw, data_api="sales", now=None) -> str:
    with pytest.raises(AuthError) as info:
        keys.verify_key(engine, raw, data_api, now=now)
    return info.value.reason


def _stored_row(engine, key_id):
    with engine.connect() as conn:
        return conn.execute(sa.select(store.api_keys).where(store.api_keys.c.id == key_id)).one()


# ---------------------------------------------------------------------------------------
# Create
# ---------------------------------------------------------------------------------------


def test_create_returns_secret_once_and_stores_only_prefix_and_sha256(apis):
    created = keys.create_key(apis, data_api="sales", days=30, description="  BI dashboard  ")
    secret, key = created.secret, created.key
    assert KEY_SHAPE.match(secret)
    assert key.prefix == secret[:12] and key.prefix.startswith("nx1_")
    assert re.fullmatch(r"[0-9a-f]{16}", key.id) and key.id not in secret
    assert key.description == "BI dashboard"
    assert key.expires_at - key.created_at == dt.timedelta(days=30)
    assert key.status() == "active" and key.revoked_at is None and key.last_used_at is None
    row = _stored_row(apis, key.id)._mapping
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    for name, value in row.items():
        if name != "key_hash":
            assert secret[12:] not in str(value), name
    assert secret not in repr(created) and secret[12:] not in repr(created)
    assert keys.get_key(apis, key.id) == key


def test_keys_are_random_and_ids_unrelated(apis):
    made = [keys.create_key(apis, data_api="sales", days=1) for _ in range(5)]
    assert len({m.secret for m in made}) == 5
    assert len({m.key.id for m in made}) == 5
    assert len({m.key.prefix for m in made}) == 5


@pytest.mark.parametrize("days", [0, -1, 366, 10**12, 1.5, "abc", "", None, True, [3]])
def test_create_refuses_days_out_of_range(apis, days):
    with pytest.raises(ValidationError) as info:
        keys.create_key(apis, data_api="sales", days=days)
    assert info.value.field == "days"
    assert "from 1 to 365" in str(info.value)
    assert keys.list_keys(apis) == []


def test_create_accepts_bounds_and_reads_max_key_days_when_called(apis, monkeypatch):
    assert keys.create_key(apis, data_api="sales", days=1).key.status() == "active"
    long = keys.create_key(apis, data_api="sales", days=365, now=T0).key
    assert long.expires_at == T0 + dt.timedelta(days=365)
    assert keys.create_key(apis, data_api="sales", days="7").key  # a form field's text
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__MAX_KEY_DAYS", "10")
    keys.create_key(apis, data_api="sales", days=10)
    with pytest.raises(ValidationError, match="from 1 to 10"):
        keys.create_key(apis, data_api="sales", days=11)


def test_create_for_unknown_data_api(apis):
    for name in ["nope", "", "x" * 10_000, "Sales"]:
        with pytest.raises(DataApiNotFound):
            keys.create_key(apis, data_api=name, days=1)
    assert keys.list_keys(apis) == []


def test_create_description_rules(apis):
    assert (
        keys.create_key(apis, data_api="sales", days=1, description="   ").key.description is None
    )
    ok = "é" * 500
    assert keys.create_key(apis, data_api="sales", days=1, description=ok).key.description == ok
    with pytest.raises(ValidationError) as info:
        keys.create_key(apis, data_api="sales", days=1, description="x" * 501)
    assert info.value.field == "description"


# ---------------------------------------------------------------------------------------
# Verify
# ---------------------------------------------------------------------------------------


def test_verify_accepts_a_valid_key(apis):
    created = keys.create_key(apis, data_api="sales", days=1)
    key = keys.verify_key(apis, created.secret, "sales")
    assert key.id == created.key.id and key.last_used_at is not None


def test_expiry_at_the_boundary_second(apis):
    created = keys.create_key(apis, data_api="sales", days=2, now=T0)
    end = T0 + dt.timedelta(days=2)
    assert keys.verify_key(apis, created.secret, "sales", now=end - dt.timedelta(seconds=1))
    assert keys.verify_key(apis, created.secret, "sales", now=end - dt.timedelta(microseconds=1))
    assert _reason(apis, created.secret, now=end) == "expired"
    assert _reason(apis, created.secret, now=end + dt.timedelta(seconds=1)) == "expired"
    key = keys.get_key(apis, created.key.id)
    assert key.status(end - dt.timedelta(seconds=1)) == "active"
    assert key.status(end) == "expired"


def test_revoked_key_is_refused_at_once_by_another_engine(apis, store_env):
    created = keys.create_key(apis, data_api="sales", days=5)
    other = engines.create_store_engine(store_env)  # another process's pool, already warm
    try:
        assert keys.verify_key(other, created.secret, "sales").id == created.key.id
        revoked = keys.revoke_key(apis, created.key.id)
        assert revoked.status() == "revoked" and revoked.revoked_at is not None
        assert _reason(other, created.secret) == "revoked"
        assert _reason(apis, created.secret) == "revoked"
        # Revoked beats the other-data-API check: still 401, not 403.
        assert _reason(other, created.secret, data_api="ops") == "revoked"
        # Revoking again changes nothing.
        assert keys.revoke_key(apis, created.key.id).revoked_at == revoked.revoked_at
    finally:
        other.dispose()


def test_key_of_another_data_api_is_forbidden(apis):
    created = keys.create_key(apis, data_api="sales", days=1)
    for name in ["ops", "does_not_exist", "", "x" * 10_000]:
        with pytest.raises(Forbidden):
            keys.verify_key(apis, created.secret, name)
    # Expired beats forbidden.
    later = T0 + dt.timedelta(days=400)
    assert _reason(apis, created.secret, data_api="ops", now=later) == "expired"


def test_missing_and_malformed_keys(apis):
    created = keys.create_key(apis, data_api="sales", days=1)
    secret = created.secret
    for raw in [None, ""]:
        with pytest.raises(AuthError) as info:
            keys.verify_key(apis, raw, "sales")
        assert info.value.reason == "missing" and info.value.missing
    malformed = [
        " ",
        "   ",
        f" {secret}",
        f"{secret} ",
        f"{secret}\n",
        f"Bearer {secret}",
        secret[:12],  # the display prefix alone
        secret[:-1],
        secret + "A",
        "nx1_" + "é" * 54,
        "nx1_" + "🔑" * 54,
        "nx2_" + secret[4:],
        "NX1_" + secret[4:],
        "nx1_" + "+" * 54,
        "nx1_" + "A" * 53 + "=",
        "x" * 10_000,
        "nx1_" + "A" * 10_000,
        "\x00" * 58,
        secret.encode(),
        12345,
    ]
    for raw in malformed:
        with pytest.raises(AuthError) as info:
            keys.verify_key(apis, raw, "sales")  # type: ignore[arg-type]
        assert info.value.reason == "malformed", repr(raw)[:40]
        assert not info.value.missing
        assert str(info.value) == "A valid data API key is required."


def test_malformed_input_never_touches_the_store():
    dead = engines.create_store_engine("postgresql://postgres@127.0.0.1:9/none")
    try:
        for raw in ["", " ", "x" * 10_000, "nx1_short"]:
            with pytest.raises(AuthError):
                keys.verify_key(dead, raw, "sales")
        with pytest.raises(StoreUnavailable):
            keys.verify_key(dead, "nx1_" + "A" * 54, "sales")
    finally:
        dead.dispose()


def test_unknown_and_deleted_keys(apis):
    created = keys.create_key(apis, data_api="sales", days=1)
    s = created.secret
    flipped = s[:-2] + ("A" if s[-2] != "A" else "B") + s[-1]
    assert _reason(apis, flipped) == "unknown"
    assert _reason(apis, "nx1_" + "A" * 54) == "unknown"
    keys.delete_key(apis, created.key.id)
    assert _reason(apis, s) == "unknown"
    with pytest.raises(KeyNotFound):
        keys.get_key(apis, created.key.id)


def test_deleting_the_data_api_deletes_its_keys(apis):
    sales = keys.create_key(apis, data_api="sales", days=1)
    ops = keys.create_key(apis, data_api="ops", days=1)
    snaps.delete_data_api(apis, "sales")
    assert _reason(apis, sales.secret) == "unknown"
    assert [k.id for k in keys.list_keys(apis)] == [ops.key.id]


# ---------------------------------------------------------------------------------------
# last_used
# ---------------------------------------------------------------------------------------


def _count_key_updates(engine):
    seen: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE NX1_API_KEYS"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    return seen, lambda: event.remove(engine, "before_cursor_execute", before)


def test_last_used_is_written_at_most_once_a_minute(apis):
    created = keys.create_key(apis, data_api="sales", days=1, now=T0)
    updates, stop = _count_key_updates(apis)
    try:
        for second in range(0, 60, 5):  # 12 requests within the first minute
            keys.verify_key(apis, created.secret, "sales", now=T0 + dt.timedelta(seconds=second))
        assert len(updates) == 1
        assert keys.get_key(apis, created.key.id).last_used_at == T0
        keys.verify_key(apis, created.secret, "sales", now=T0 + dt.timedelta(seconds=60))
        assert len(updates) == 1  # exactly 60 s later is not yet stale
        t2 = T0 + dt.timedelta(seconds=61)
        assert keys.verify_key(apis, created.secret, "sales", now=t2).last_used_at == t2
        assert len(updates) == 2
        assert keys.get_key(apis, created.key.id).last_used_at == t2
    finally:
        stop()


def test_last_used_is_best_effort_when_the_row_is_locked(apis, store_env):
    created = keys.create_key(apis, data_api="sales", days=1)
    blocker = engines.create_store_engine(store_env)
    try:
        with blocker.connect() as conn:
            if apis.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # hold SQLite's write lock
            else:
                conn.execute(
                    sa.select(store.api_keys.c.id)
                    .where(store.api_keys.c.id == created.key.id)
                    .with_for_update()
                )
            key = keys.verify_key(apis, created.secret, "sales")
            assert key.id == created.key.id and key.last_used_at is None
            conn.rollback()
        assert keys.get_key(apis, created.key.id).last_used_at is None
        # The lock is gone: the next request records the use, and the busy timeout is back.
        assert keys.verify_key(apis, created.secret, "sales").last_used_at is not None
        if apis.dialect.name == "sqlite":
            with apis.connect() as conn:
                timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
            assert timeout == engines.SQLITE_BUSY_TIMEOUT_MS
    finally:
        blocker.dispose()


def test_concurrent_verifies_all_succeed(apis):
    created = keys.create_key(apis, data_api="sales", days=1)
    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(10):
                keys.verify_key(apis, created.secret, "sales")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------------------------------
# Manage
# ---------------------------------------------------------------------------------------


def test_list_keys_filters(apis):
    a = keys.create_key(apis, data_api="sales", days=1, now=T0).key
    b = keys.create_key(apis, data_api="ops", days=1, now=T0 + dt.timedelta(seconds=1)).key
    assert [k.id for k in keys.list_keys(apis)] == [b.id, a.id]  # newest first
    assert [k.id for k in keys.list_keys(apis, data_api="sales")] == [a.id]
    assert [k.id for k in keys.list_keys(apis, kinds=["engineer"])] == [b.id]
    assert [k.id for k in keys.list_keys(apis, kinds=["ask"], data_api="sales")] == [a.id]
    assert keys.list_keys(apis, kinds=["ask"], data_api="ops") == []
    assert keys.list_keys(apis, kinds=[]) == []
    with pytest.raises(DataApiNotFound):
        keys.list_keys(apis, data_api="nope")


@pytest.mark.parametrize("key_id", ["0123456789abcdef", "", "x" * 10_000, "' OR 1=1 --", None])
def test_unknown_key_ids(apis, key_id):
    keys.create_key(apis, data_api="sales", days=1)
    for call in (
        lambda: keys.get_key(apis, key_id),
        lambda: keys.revoke_key(apis, key_id),
        lambda: keys.delete_key(apis, key_id),
        lambda: keys.extend_key(apis, key_id, days=1),
    ):
        with pytest.raises(KeyNotFound) as info:
            call()
        assert len(str(info.value)) < 200
    assert len(keys.list_keys(apis)) == 1


def test_extend_moves_expiry_later(apis):
    created = keys.create_key(apis, data_api="sales", days=10, now=T0)
    key = keys.extend_key(apis, created.key.id, days=5, now=T0 + dt.timedelta(days=1))
    assert key.expires_at == T0 + dt.timedelta(days=15)
    # Already expired: counted from now.
    later = T0 + dt.timedelta(days=20, hours=3)
    assert keys.get_key(apis, created.key.id).status(later) == "expired"
    key = keys.extend_key(apis, created.key.id, days=2, now=later)
    assert key.expires_at == later + dt.timedelta(days=2)
    assert keys.verify_key(apis, created.secret, "sales", now=later).id == key.id


def test_extend_refusals(apis):
    created = keys.create_key(apis, data_api="sales", days=300, now=T0)
    for days in (0, -3, 366, "x"):
        with pytest.raises(ValidationError) as info:
            keys.extend_key(apis, created.key.id, days=days, now=T0)
        assert info.value.field == "days"
    # Never valid for more than max_key_days from now.
    with pytest.raises(ValidationError, match="at most 65 days"):
        keys.extend_key(apis, created.key.id, days=66, now=T0)
    assert keys.extend_key(apis, created.key.id, days=65, now=T0).expires_at == T0 + dt.timedelta(
        days=365
    )
    with pytest.raises(ValidationError, match="cannot be extended further"):
        keys.extend_key(apis, created.key.id, days=1, now=T0)
    keys.revoke_key(apis, created.key.id)
    with pytest.raises(ValidationError, match="revoked"):
        keys.extend_key(apis, created.key.id, days=1)


def test_key_to_dict(apis):
    created = keys.create_key(apis, data_api="sales", days=3, description="d", now=T0)
    data = control.key_to_dict(created.key, now=T0)
    assert data == {
        "key_id": created.key.id,
        "prefix": created.secret[:12],
        "data_api": "sales",
        "description": "d",
        "created": "2026-03-01T12:00:00Z",
        "expires": "2026-03-04T12:00:00Z",
        "last_used": None,
        "revoked": None,
        "status": "active",
        "scopes": ["read"],
        "rate_limit": None,
        "row_filter": [],
        "columns": None,
    }
    assert control.key_to_dict(created.key, now=T0 + dt.timedelta(days=3))["status"] == "expired"


# ---------------------------------------------------------------------------------------
# No leaks
# ---------------------------------------------------------------------------------------


def _leaks(text: str, secret: str) -> list[str]:
    """Every way `text` reveals `secret` beyond its display prefix."""
    digest = hashlib.sha256(secret.encode()).hexdigest()
    found = []
    if digest in text or digest.upper() in text:
        found.append("hash")
    body = secret[12:]
    for i in range(0, len(body) - 8 + 1):
        if body[i : i + 8] in text:
            found.append(f"secret[{12 + i}:{20 + i}]")
            break
    for i in range(0, len(digest) - 12 + 1):
        if digest[i : i + 12] in text:
            found.append(f"hash[{i}:{i + 12}]")
            break
    return found


def test_no_secret_or_hash_in_logs_or_output(apis, caplog, capfd):
    loggers = [logging.getLogger()] + [
        logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
    ]
    loggers += [logging.getLogger(n) for n in ("sqlalchemy.engine", "sqlalchemy.pool", "psycopg")]
    before = {lg.name: lg.level for lg in loggers}
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    try:
        created = keys.create_key(apis, data_api="sales", days=1, description="leak test")
        secret = created.secret
        keys.verify_key(apis, secret, "sales", now=T0 + dt.timedelta(hours=1))
        for name in ("ops", "nope"):
            try:
                keys.verify_key(apis, secret, name)
            except Forbidden as exc:
                errors.append(repr(exc) + str(exc))
        keys.list_keys(apis)
        keys.extend_key(apis, created.key.id, days=2)
        keys.revoke_key(apis, created.key.id)
        try:
            keys.verify_key(apis, secret, "sales")
        except AuthError as exc:
            errors.append(repr(exc) + str(exc) + exc.reason)
        errors.append(repr(created) + repr(created.key) + str(control.key_to_dict(created.key)))
        keys.delete_key(apis, created.key.id)
    finally:
        for lg in loggers:
            lg.setLevel(before[lg.name])
    out, err = capfd.readouterr()
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "sqlalchemy.engine" in logged  # SQL logging really was on
    assert "Created data API key" in logged
    haystack = "\n".join([logged, caplog.text, out, err, *errors])
    assert _leaks(haystack, secret) == []
