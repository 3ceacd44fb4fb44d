"""Scaling of the production deployment: reads with api-server workers, writes with writers.

    uv run python -m benchmarks.cluster_bench [--quick]

Not part of `make bench` (it migrates a fresh Airflow metadata database and starts the
api-server twice, about two minutes). Needs what `tests/distributed` needs: PostgreSQL at
NX1_TEST_PG and Redis at NX1_TEST_REDIS (the deployment is built by the same helper, with
the settings of docs/production.md: PostgreSQL metadata database and snapshot store).

- C1: a real `airflow api-server --workers 1` and one with `--workers 2` (both running,
  measured in alternate rounds, best round of each), serving the latest page of
  100 rows (`/nx1/api/v1/data-apis/bench/latest?limit=100`, FastAPI mount) of a 100,000-row
  snapshot in the PostgreSQL store, to 8 concurrent keep-alive clients (a minimal asyncio
  HTTP/1.1 client, in this process). req/s and p99 latency. With 2 workers the 8
  connections are spread 4 + 4 over the worker processes (seen through /proc), as a load
  balancer would; the kernel alone may hand them out unevenly.
- C2: snapshot writes into the same PostgreSQL store (`core.snapshots.write_snapshot`, COPY)
  of N rows x 4 columns generated in the writer: 1 writer process, then 2 writer processes at
  once (two data APIs, as two Celery workers running two rules). Rows/s summed over writers.

The load generator, the servers and PostgreSQL share this machine's cores: the ratios say
how far one more process helps here, not on a machine with more cores than processes.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from airflow_nx1_connect.core import engines
from benchmarks.common import sayer
from benchmarks.serve_bench import _read_response

NAME = "bench"
PAGE = 100
CLIENTS = 8
SIZES = {
    True: {"rows": 100_000, "requests": 150, "write_rows": 500_000, "repeats": 2},
    False: {"rows": 100_000, "requests": 600, "write_rows": 1_000_000, "repeats": 3},
}

say = sayer("cluster_bench")


def _rows(n: int, offset: int = 0) -> Any:
    batch: list[tuple[Any, ...]] = []
    for i in range(offset + 1, offset + n + 1):
        batch.append((i, f"item {i % 9973}", i * 0.25, i % 97))
        if len(batch) == 10_000:
            yield batch
            batch = []
    if batch:
        yield batch


def _columns() -> list[Any]:
    from airflow_nx1_connect.core import snapshots as snaps

    return [
        snaps.Column("id", "INTEGER"),
        snaps.Column("name", "TEXT"),
        snaps.Column("amount", "REAL"),
        snaps.Column("qty", "INTEGER"),
    ]


def _populate(store_url: str, rows: int) -> str:
    """One `rows`-row snapshot of data API `bench`; returns a key for it."""
    from airflow_nx1_connect.core import keys
    from airflow_nx1_connect.core import snapshots as snaps

    engine = engines.create_store_engine(store_url)
    try:
        snaps.register_data_api(engine, name=NAME, kind="ask", dag_id="bench", task_id="bench")
        snaps.write_snapshot(engine, data_api=NAME, columns=_columns(), batches=_rows(rows))
        return keys.create_key(engine, data_api=NAME, days=1).secret
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------
# C1: reads
# ---------------------------------------------------------------------------------------


async def _open_balanced(port: int, workers: list[int]) -> list[Any]:
    """CLIENTS connections, as evenly spread over the worker processes as possible."""
    from tests.distributed.cluster import serving_pid

    per_worker = CLIENTS // len(workers)
    held: Counter[int] = Counter()
    conns = []
    for _ in range(400):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client_port = writer.get_extra_info("sockname")[1]
        pid = None
        for _ in range(100):
            pid = serving_pid(port, client_port, workers)
            if pid is not None:
                break
            await asyncio.sleep(0.02)
        if pid is not None and held[pid] < per_worker:
            held[pid] += 1
            conns.append((reader, writer))
            if len(conns) == CLIENTS:
                return conns
        else:
            writer.close()
    raise RuntimeError(f"could not spread {CLIENTS} connections over {workers}: {held}")


async def _load(port: int, workers: list[int], request: bytes, count: int) -> tuple[float, float]:
    conns = await _open_balanced(port, workers)
    latencies: list[float] = []

    async def client(reader: Any, writer: Any, n: int, record: bool) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            writer.write(request)
            status, _ = await _read_response(reader)
            if record:
                latencies.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")

    try:
        await asyncio.gather(*(client(r, w, max(count // 10, 10), False) for r, w in conns))
        t0 = time.perf_counter()
        await asyncio.gather(*(client(r, w, count, True) for r, w in conns))
        elapsed = time.perf_counter() - t0
    finally:
        for _, w in conns:
            w.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / elapsed, p99 * 1000


def reads(dep: Any, key: str, count: int, repeats: int) -> dict[int, tuple[float, float]]:
    """{workers: (req/s, p99 ms)} of the page through `airflow api-server --workers 1` and
    `--workers 2`, both running at once; rounds alternate between them (best of `repeats`),
    so a change in the machine's other load hits both alike."""
    from contextlib import ExitStack

    from tests.api_server import free_port, running_api_server
    from tests.distributed.cluster import api_worker_pids, wait_for

    best: dict[int, tuple[float, float]] = {}
    with ExitStack() as stack:
        servers = {}
        for workers in (1, 2):
            home = dep.home / f"api-server-{workers}"
            home.mkdir()
            port = free_port()
            stack.enter_context(running_api_server(dep.env, home, workers=workers, port=port))
            servers[workers] = (
                port,
                wait_for(
                    f"{workers} api-server worker process(es)",
                    lambda port=port, n=workers: (
                        p if len(p := api_worker_pids(port)) == n else None
                    ),
                    60,
                ),
            )
        for _ in range(repeats):
            for workers, (port, pids) in servers.items():
                path = f"/nx1/api/v1/data-apis/{NAME}/latest?limit={PAGE}"
                request = (
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Authorization: Bearer {key}\r\n\r\n"
                ).encode()
                result = asyncio.run(_load(port, pids, request, count))
                say(f"  --workers {workers}: {result[0]:.0f} req/s, p99 {result[1]:.1f} ms")
                if workers not in best or result[0] > best[workers][0]:
                    best[workers] = result
    return best


# ---------------------------------------------------------------------------------------
# C2: writes
# ---------------------------------------------------------------------------------------


def _writer(store_url: str, name: str, rows: int, start: Any, ready: Any, out: Any) -> None:
    from airflow_nx1_connect.core import snapshots as snaps

    engine = engines.create_store_engine(store_url)
    snaps.register_data_api(engine, name=name, kind="engineer", dag_id="bench", task_id=name)
    ready.put(name)
    start.wait()
    t0 = time.perf_counter()
    snaps.write_snapshot(engine, data_api=name, columns=_columns(), batches=_rows(rows))
    out.put(time.perf_counter() - t0)
    engine.dispose()


def writes(store_url: str, writers: int, rows: int) -> float:
    """Rows/s summed over `writers` processes writing `rows` rows each at once."""
    ctx = multiprocessing.get_context("spawn")
    start, ready, out = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(store_url, f"w{writers}_{i}", rows, start, ready, out))
        for i in range(writers)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # every writer has imported and registered its data API
        ready.get(timeout=120)
    t0 = time.perf_counter()
    start.set()
    seconds = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(timeout=60)
    say(f"{writers} writer(s): {rows:,} rows each in {[round(s, 2) for s in seconds]} s")
    return writers * rows / max(wall, max(seconds))


# ---------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------


def run(quick: bool = False) -> list[dict[str, Any]]:
    from tests.distributed.cluster import deployment

    size = SIZES[bool(quick)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nx1-cluster-bench-") as tmp_name:
        say("a fresh deployment: airflow db migrate, nx1-connect db migrate")
        with deployment(Path(tmp_name), {}) as dep:
            say(f"writing a {size['rows']:,}-row snapshot")
            key = _populate(dep.store_url, size["rows"])
            say(f"airflow api-server --workers 1 and --workers 2, {CLIENTS} clients each")
            read = reads(dep, key, size["requests"], size["repeats"])
            write = {n: writes(dep.store_url, n, size["write_rows"]) for n in (1, 2)}
    (r1, p1), (r2, p2) = read[1], read[2]
    rows += [
        {
            "id": "C1",
            "figure": f"latest page of {PAGE} rows, {CLIENTS} clients: req/s, "
            "api-server --workers 2 vs --workers 1",
            "ours": round(r2),
            "peer": round(r1),
            "ratio": round(r2 / r1, 2),
            "target": "report",
            "met": True,
        },
        {
            "id": "C1",
            "figure": "same, p99 latency (ms), 2 workers vs 1 (ratio: 1 worker / 2 workers)",
            "ours": round(p2, 1),
            "peer": round(p1, 1),
            "ratio": round(p1 / p2, 2),
            "target": "report",
            "met": True,
        },
        {
            "id": "C2",
            "figure": f"snapshot writes into the PostgreSQL store, {size['write_rows']:,} rows "
            "x 4 columns each: rows/s of 2 writers at once vs 1",
            "ours": round(write[2]),
            "peer": round(write[1]),
            "ratio": round(write[2] / write[1], 2),
            "target": "report",
            "met": True,
        },
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import render

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and rows")
    args = parser.parse_args(argv)
    before = os.getloadavg()[0]
    rows = run(args.quick)
    print(render(rows))
    print(
        f"\n{os.cpu_count()} CPUs; load average {before:.1f} before the run, "
        f"{os.getloadavg()[0]:.1f} after (other processes share the cores)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
