"""A populated store per backend, served by two real server processes (FastAPI and Flask)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

from airflow_nx1_connect.core import engines, keys, snapshots, store, writer
from tests.conftest import PG_URL, drop_pg_schema, make_pg_schema
from tests.reliability.servers import Server, start_server
from tests.reliability.tcp_proxy import TcpProxy

COLUMNS = [snapshots.Column("id", "INTEGER"), snapshots.Column("label", "TEXT")]


@dataclass
class Served:
    """A store with data APIs `alpha` (ask) and `beta` (engineer), keys, and two servers."""

    url: str
    engine: object
    servers: list[Server]
    keys: dict[str, keys.CreatedKey]
    snapshot_ids: dict[str, str]
    log_dir: Path
    secrets_seen: list[str] = field(default_factory=list)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    log_dir = Path(tempfile.mkdtemp(prefix="nx1-rel-"))
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{log_dir / 'store.db'}"
    else:
        schema, url = make_pg_schema()
    old = os.environ.get("AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN")
    os.environ["AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN"] = url
    engine = engines.get_engine(url)
    servers: list[Server] = []
    try:
        store.migrate(engine)
        ids = {}
        for name, kind in (("alpha", "ask"), ("beta", "engineer")):
            snapshots.register_data_api(engine, name=name, kind=kind, dag_id="d", task_id=name)
            snap = writer.write_snapshot(
                engine,
                data_api=name,
                columns=COLUMNS,
                batches=[[(i, f"{name}-{i}") for i in range(250)]],
            )
            ids[name] = snap.id
        made = {name: keys.create_key(engine, data_api=name, days=7) for name in ("alpha", "beta")}
        servers = [start_server(kind, url, log_dir) for kind in ("fastapi", "flask")]
        yield Served(url, engine, servers, made, ids, log_dir, [k.secret for k in made.values()])
    finally:
        for server in servers:
            server.stop()
        if old is None:
            os.environ.pop("AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN", None)
        else:
            os.environ["AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN"] = old
        engines.dispose_engines()
        if schema:
            drop_pg_schema(schema)


@pytest.fixture
def proxied_store():
    """A migrated PostgreSQL store reached through a TcpProxy: (engine, proxy)."""
    schema, url = make_pg_schema()
    target = urlparse(PG_URL)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    proxy.start()
    proxied = url.replace(f"{target.hostname}:{target.port or 5432}", f"127.0.0.1:{proxy.port}")
    engine = engines.create_store_engine(proxied)
    try:
        store.migrate(engine)
        snapshots.register_data_api(engine, name="alerts", kind="engineer", dag_id="d", task_id="t")
        writer.write_snapshot(
            engine,
            data_api="alerts",
            columns=[snapshots.Column("n", "INTEGER")],
            batches=[[(1,), (2,)]],
        )
        yield engine, proxy
    finally:
        proxy.stop()
        engine.dispose()
        drop_pg_schema(schema)
