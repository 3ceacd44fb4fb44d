"""A real `airflow api-server` keeps the default SQLite store whole and current (issue 22, 1).

The exact sequence that lost data: a SQLite store, a publish from another process, a read
of `latest` in the api-server, one whole-snapshot Arrow (and Parquet) download, another
publish from another process, `latest` again. With a second SQLite library in the server
(ADBC's), the download's closed connection dropped the pool's POSIX locks, that library
deleted the WAL under them, and from then on the server served the old snapshot, answered
503 "malformed", and the file failed `PRAGMA integrity_check`. Run on both mounts, then
the file is checked, and no process of the server maps a second SQLite library.
"""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow.ipc
import pyarrow.parquet
import pytest

from tests.api_server import api_server_env, migrate_airflow, running_api_server
from tests.web.helpers import MOUNTS

pytestmark = pytest.mark.slow

#: The first bytes of every SQLite database file; a library that can open one holds them.
SQLITE_MAGIC = b"SQLite format 3\x00"

_PUBLISH = """
import sys
from airflow_nx1_connect.core import engines
from airflow_nx1_connect.core import store, writer
from airflow_nx1_connect.core.types import Column
engine = engines.create_store_engine(sys.argv[1])
rows = [(i, f"row {i}") for i in range(int(sys.argv[2]))]
snapshot = writer.write_snapshot(
    engine, data_api="sales", columns=[Column("id", "INTEGER"), Column("name", "TEXT")],
    batches=[rows[i : i + 5000] for i in range(0, len(rows), 5000)],
)
print(snapshot.id)
"""

_SETUP = """
import sys
from airflow_nx1_connect.core import engines, keys, store
from airflow_nx1_connect.core import snapshots as snaps
engine = engines.create_store_engine(sys.argv[1])
store.migrate(engine)
snaps.register_data_api(engine, name="sales", kind="ask", dag_id="d", task_id="t")
print(keys.create_key(engine, data_api="sales", days=7).secret)
"""


@dataclass
class Server:
    url: str
    home: Path
    store: Path
    key: str


def _python(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def publish(server: Server, rows: int = 12_000) -> str:
    """Publish a snapshot of `sales` from a process of its own; its id."""
    return _python(_PUBLISH, f"sqlite:///{server.store}", str(rows))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("airflow-home-integrity")
    store = home / "nx1_store.db"
    key = _python(_SETUP, f"sqlite:///{store}")
    env = api_server_env(home, f"sqlite:///{store}")
    migrate_airflow(env)
    with running_api_server(env, home) as (url, _log):
        yield Server(url, home, store, key)


def _latest_id(server: Server, mount: str) -> str:
    r = httpx.get(
        f"{server.url}{mount}/data-apis/sales/latest?limit=1",
        headers={"X-API-Key": server.key},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.headers["x-nx1-snapshot-id"]


@pytest.mark.parametrize("mount", MOUNTS)
def test_publishes_stay_visible_after_whole_arrow_and_parquet_reads(
    server: Server, mount: str
) -> None:
    first = publish(server)
    assert _latest_id(server, mount) == first
    for fmt in ("arrow", "parquet"):
        r = httpx.get(
            f"{server.url}{mount}/data-apis/sales/latest?format={fmt}",
            headers={"X-API-Key": server.key},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        if fmt == "arrow":
            table = pyarrow.ipc.open_stream(r.content).read_all()
        else:
            table = pyarrow.parquet.read_table(io.BytesIO(r.content))
        assert table.num_rows == 12_000
        assert table.column("id").to_pylist()[:3] == [0, 1, 2]
    second = publish(server)
    assert _latest_id(server, mount) == second, "a publish from another process is served"
    # Every later request still answers, from the new snapshot.
    for _ in range(3):
        assert _latest_id(server, mount) == second


def test_the_store_file_is_whole_and_the_servers_own_writes_land(server: Server) -> None:
    """The api-server's own writes (the usage counts it flushes every few seconds) reach
    the store file that other processes read, and the file passes integrity_check."""
    deadline = time.monotonic() + 30
    counted = 0
    while time.monotonic() < deadline:
        # Requests on both mounts; a request made FLUSH_EVERY_S after the last flush starts
        # the next one, so keep asking until this process's counts are in the file.
        for mount in MOUNTS:
            _latest_id(server, mount)
        with closing(sqlite3.connect(server.store, timeout=10)) as conn:
            counted = conn.execute(
                "SELECT COALESCE(SUM(requests), 0) FROM nx1_key_usage"
            ).fetchone()[0]
        if counted >= 2:
            break
        time.sleep(1)
    assert counted >= 2, "the server's usage flush never reached the store file"
    with closing(sqlite3.connect(server.store, timeout=10)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    latest = publish(server, rows=10)
    for mount in MOUNTS:
        assert _latest_id(server, mount) == latest


def _session(pid: int) -> int:
    """The session id of process `pid` (field 6 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[3])


def _server_pids(url: str) -> list[int]:
    """The api-server's processes: its session (it runs in a new one, see
    tests.api_server), found from the process whose title names its port."""
    port = url.rsplit(":", 1)[1]
    sessions = set()
    procs = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            procs.append((int(entry.name), _session(int(entry.name))))
        except (OSError, ValueError, IndexError):
            continue
        if b"api_server" in title and f"port:{port}".encode() in title:
            sessions.add(procs[-1][1])
    return [pid for pid, sid in procs if sid in sessions]


def sqlite_libraries(pid: int) -> set[str]:
    """The files mapped into process `pid` that carry a SQLite library (its magic bytes)."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        path = parts[5] if len(parts) == 6 else ""
        if not path.startswith("/") or ".so" not in path:
            continue
        try:
            if SQLITE_MAGIC in Path(path).read_bytes():
                found.add(os.path.realpath(path))
        except OSError:
            continue
    return found


def test_no_server_process_maps_a_second_sqlite_library(server: Server) -> None:
    """After the downloads above: each process of the api-server maps at most one SQLite."""
    httpx.get(
        f"{server.url}{MOUNTS[1]}/data-apis/sales/latest?format=arrow",
        headers={"X-API-Key": server.key},
        timeout=60,
    )
    pids = _server_pids(server.url)
    assert pids, "the api-server's processes were not found"
    seen = {pid: sqlite_libraries(pid) for pid in pids}
    # Python's own SQLite is seen (so the check works), and never a second one.
    assert any(len(libraries) == 1 for libraries in seen.values()), seen
    for pid, libraries in seen.items():
        assert len(libraries) <= 1, f"process {pid} maps several SQLite copies: {libraries}"
