"""The snapshot store: migrations on both backends, engine settings."""

from __future__ import annotations

import sqlalchemy as sa

from airflow_nx1_connect.core import engines, store


def test_migrate_creates_only_nx1_tables_and_is_idempotent(engine):
    store.migrate(engine)  # second run
    tables = set(sa.inspect(engine).get_table_names())
    assert tables == {
        "nx1_alembic_version",
        "nx1_data_apis",
        "nx1_snapshots",
        "nx1_api_keys",
        "nx1_key_usage",
        "nx1_audit",
        "nx1_run_requests",
        "nx1_retired_snapshots",
        "nx1_webhooks",
        "nx1_webhook_events",
        "nx1_webhook_deliveries",
    }
    assert store.current_revision(engine) == store.head_revision()


def test_key_hash_is_unique_indexed(engine):
    indexes = {ix["name"]: ix for ix in sa.inspect(engine).get_indexes("nx1_api_keys")}
    assert indexes["ix_nx1_api_keys_key_hash"]["unique"]


def test_sqlite_uses_wal_and_busy_timeout(tmp_path):
    eng = engines.create_store_engine(f"sqlite:///{tmp_path / 'x' / 's.db'}")
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert (
            conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == engines.SQLITE_BUSY_TIMEOUT_MS
        )
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    eng.dispose()


def test_postgres_url_uses_psycopg3_with_connect_timeout():
    eng = engines.create_store_engine("postgresql://u@127.0.0.1:1/x")
    assert eng.url.drivername == "postgresql+psycopg"
    assert eng.dialect.driver == "psycopg"
    eng.dispose()


def test_unreachable_store_fails_fast_with_a_clear_message():
    import time

    import pytest

    from airflow_nx1_connect.core.errors import StoreUnavailable

    # 127.0.0.1:1 refuses at once; a blackholed address is covered by the connect timeout.
    eng = engines.create_store_engine("postgresql://postgres@127.0.0.1:1/test")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        engines.check_reachable(eng)
    assert time.monotonic() - started < engines.CONNECT_TIMEOUT_S + 2
    eng.dispose()


def test_concurrent_migrations_of_a_fresh_store_both_succeed(store_url):
    """Two deployers running `db migrate` at once: one migrates, the other waits (no error)."""
    from concurrent.futures import ThreadPoolExecutor

    pair = [engines.create_store_engine(store_url) for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(store.migrate, pair))
        assert store.current_revision(pair[0]) == store.head_revision()
    finally:
        for eng in pair:
            eng.dispose()


def test_check_migrated_names_the_command_until_the_store_is_migrated(store_url):
    import pytest

    from airflow_nx1_connect.core.errors import StoreNotMigrated

    eng = engines.create_store_engine(store_url)
    try:
        with pytest.raises(StoreNotMigrated, match=r"never migrated.*Run: nx1-connect db migrate"):
            store.check_migrated(eng)
        store.migrate(eng)
        store.check_migrated(eng)
    finally:
        eng.dispose()


def test_upgrading_a_version_2_store_keeps_its_data(store_url):
    """A store at the v2 head (0003) with a data API, a key and a published snapshot: `db
    migrate` to this version keeps all of them (no table of the catalogue is rebuilt, so
    nothing cascades) and the snapshot is still served as latest."""
    import datetime as dt

    import sqlalchemy as sa

    from airflow_nx1_connect.core import keys, reads
    from airflow_nx1_connect.core import snapshots as snaps

    eng = engines.create_store_engine(store_url)
    try:
        store.migrate(eng, "0003_changes")
        now = dt.datetime(2026, 11, 1)
        snap_id = "0" * 31 + "1"
        with eng.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO nx1_data_apis (name, kind, created_at, updated_at, "
                    "latest_snapshot_id, dag_id, task_id) VALUES ('old', 'ask', :t, :t, :s, "
                    "'d', 't')"
                ),
                {"t": now, "s": snap_id},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO nx1_snapshots (id, data_api, status, row_count, columns, "
                    "column_types, created_at, published_at, table_name) VALUES (:s, 'old', "
                    "'published', 1, '[\"x\"]', '[\"INTEGER\"]', :t, :t, :tbl)"
                ),
                {"s": snap_id, "t": now, "tbl": f"nx1_snap_{snap_id}"},
            )
            conn.execute(
                sa.text(
                    f'CREATE TABLE "nx1_snap_{snap_id}" ("__nx1_row__" INTEGER PRIMARY KEY, '
                    '"x" INTEGER)'
                )
            )
            conn.execute(sa.text(f'INSERT INTO "nx1_snap_{snap_id}" VALUES (1, 42)'))
            conn.execute(
                sa.text(
                    "INSERT INTO nx1_api_keys (id, prefix, key_hash, data_api, created_at, "
                    "expires_at, scopes) VALUES ('k1', 'nx1_abc', 'h', 'old', :t, :e, 'read')"
                ),
                {"t": now, "e": now + dt.timedelta(days=400)},
            )
        store.migrate(eng)
        store.check_migrated(eng)
        latest = snaps.latest_snapshot(eng, "old")
        assert latest.id == snap_id
        assert reads.read_raw_rows(
            eng, latest, [snaps.Column("x", "INTEGER")], start=0, limit=5
        ) == [(42,)]
        assert [k.id for k in keys.list_keys(eng, data_api="old")] == ["k1"]
        assert snaps.get_data_api(eng, "old").last_failure() is None
    finally:
        eng.dispose()
