"""7. Store outage: the PostgreSQL store cut off or blackholed is reported fast and recovered from.

The store is reached through a loopback proxy that the test cuts (connection refused) or
turns into a blackhole (accepts, never answers); the real server is never stopped.
"""

from __future__ import annotations

import time
from urllib.parse import urlparse

import pytest

from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core import store
from airflow_nx1_connect.core.errors import StoreUnavailable
from tests.conftest import PG_URL, drop_pg_schema, make_pg_schema
from tests.reliability.tcp_proxy import TcpProxy


@pytest.fixture
def proxied_store():
    """A migrated PostgreSQL store reached through a TcpProxy: (engine, proxy)."""
    schema, url = make_pg_schema()
    target = urlparse(PG_URL)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    proxy.start()
    proxied = url.replace(f"{target.hostname}:{target.port or 5432}", f"127.0.0.1:{proxy.port}")
    engine = store.create_store_engine(proxied)
    try:
        store.migrate(engine)
        snaps.register_data_api(engine, name="alerts", kind="engineer", dag_id="d", task_id="t")
        snaps.write_snapshot(
            engine,
            data_api="alerts",
            columns=[snaps.Column("n", "INTEGER")],
            batches=[[(1,), (2,)]],
        )
        yield engine, proxy
    finally:
        proxy.stop()
        engine.dispose()
        drop_pg_schema(schema)


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_outage_is_reported_within_five_seconds_and_recovers(proxied_store, mode):
    engine, proxy = proxied_store
    assert snaps.latest_snapshot(engine, "alerts").row_count == 2
    if mode == "refuse":
        proxy.stop()
    else:
        proxy.start("blackhole")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.check_reachable(engine)
    assert time.monotonic() - started < 5

    proxy.start("forward")
    # Same engine, no restart: the pool's pre-ping drops dead connections.
    assert snaps.latest_snapshot(engine, "alerts").row_count == 2
