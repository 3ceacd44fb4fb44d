"""Large-snapshot benchmark (`--full` only): W4 (10M-row operator run), W5 (retention p99).

    uv run python -m benchmarks.large_bench            # full
    uv run python -m benchmarks.run --full --only large_bench

Both run on a **PostgreSQL store** (a fresh schema) with a PostgreSQL source that costs
nothing to build: `generate_series` (10M rows x 4 columns: bigint, text, double, int),
read by the operator with its server-side cursor. A `--quick` run skips them (minutes on a
small machine) and says so in its rows.

- W4: `AskRuleOperator.execute` on 10,000,000 rows in a fresh process (source read,
  `COPY` into the store, publish): peak RSS growth (VmHWM after resetting it, minus
  VmRSS; target < 100 MB, as W3) and the run's time (reported, with rows/s).
- W5: retention deleting old 10M-row snapshots while apps read `latest`. The data API
  holds two older 10M-row snapshots (written by `write_snapshot`) and the W4 one as
  latest. Our FastAPI app serves it under uvicorn (one process, as in R1); 4 keep-alive
  clients request `latest?limit=100&start=<random>` for a fixed time, once without and
  once with `apply_retention(keep=1)` run by another process in the middle (dropping
  the two old tables and their catalogue rows). Figures: p99 of the requests that
  overlapped the delete vs p99 of the run without it (target: at most 2x, i.e. readers
  are not blocked; a blocked reader would wait for the whole delete), and the p99 of the
  whole run with the delete. The same is then measured on the embedded **SQLite store**
  (three 10M-row snapshots written by `write_snapshot`; WAL mode).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow_nx1_connect.core import engines
from benchmarks.common import PG_URL, pg_schema, print_rows, sayer

NAME = "large_bench"
ROWS = 10_000_000
CLIENTS = 4
PAGE = 100
LOAD_SECONDS = 12.0
DELETE_AFTER = 4.0
GEN_SQL = (
    "SELECT g AS id, 'item-' || (g % 9973) AS name, g * 0.25::float8 AS amount, "
    "(g % 97)::int AS qty FROM generate_series(1::bigint, {limit}::bigint) AS g"
)


say = sayer("large_bench")


def _pg_conn() -> str:
    """The source as an Airflow Connection (JSON) to the benchmark PostgreSQL server."""
    from urllib.parse import urlparse

    u = urlparse(PG_URL)
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": u.hostname or "127.0.0.1",
            "port": u.port or 5432,
            "login": u.username or "postgres",
            "password": u.password or "",
            "schema": (u.path or "/test").lstrip("/") or "test",
        }
    )


# ---------------------------------------------------------------------------------------
# Old snapshots: written in-process from the same generate_series source
# ---------------------------------------------------------------------------------------


def write_generated(engine: Any, rows: int) -> str:
    """Write and publish one `rows`-row snapshot of data API NAME (retention off)."""
    import psycopg

    from airflow_nx1_connect.core import store, writer

    with psycopg.connect(PG_URL) as conn, conn.cursor(name="nx1_large_bench") as cur:
        cur.itersize = store.BATCH_SIZE
        cur.execute(GEN_SQL.format(limit=rows))
        first = cur.fetchmany(store.BATCH_SIZE)
        columns = writer.infer_columns(cur.description, first, "postgresql")

        def batches() -> Iterator[list[Any]]:
            yield first
            while batch := cur.fetchmany(store.BATCH_SIZE):
                yield batch

        snap = writer.write_snapshot(
            engine, data_api=NAME, columns=columns, batches=batches(), retention=100
        )
    return snap.id


# ---------------------------------------------------------------------------------------
# W5: readers with timestamps, and the delete in another process
# ---------------------------------------------------------------------------------------


async def _reader(
    port: int, path: str, key: str, rows: int, until: list[float], out: list[tuple[float, float]]
) -> None:
    from benchmarks.serve_bench import _read_response

    rng = random.Random()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.time() < until[0]:
            start = rng.randrange(0, max(rows - PAGE, 1))
            request = (
                f"GET {path}?limit={PAGE}&start={start} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nX-API-Key: {key}\r\n\r\n"
            ).encode()
            sent = time.time()
            t0 = time.perf_counter()
            writer.write(request)
            status, _ = await _read_response(reader)
            out.append((sent, time.perf_counter() - t0))
            if status != 200:
                raise RuntimeError(f"HTTP {status} for {path}")
    finally:
        writer.close()


def load(
    port: int, path: str, key: str, rows: int, seconds: float, until: list[float] | None = None
) -> list[tuple[float, float]]:
    """(send time, latency s) of every request CLIENTS clients made in `seconds` (or until
    the time in `until[0]`, which another thread may move)."""
    out: list[tuple[float, float]] = []
    if until is None:
        until = [time.time() + seconds]

    async def main() -> None:
        await asyncio.gather(*(_reader(port, path, key, rows, until, out) for _ in range(CLIENTS)))

    asyncio.run(main())
    return out


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _retention_child(url: str, keep: int) -> dict[str, Any]:
    """Child process body: apply retention to data API NAME; wall times of the call."""
    from airflow_nx1_connect.core import writer

    engine = engines.get_engine(url)
    with engine.connect() as conn:  # connect before timing
        conn.exec_driver_sql("SELECT 1")
    start = time.time()
    dropped = writer.apply_retention(engine, NAME, keep)
    end = time.time()
    return {"start": start, "end": end, "dropped": dropped}


def retention_during_load(
    url: str, port: int, path: str, key: str, rows: int
) -> tuple[list[tuple[float, float]], dict[str, Any]]:
    """Readers for LOAD_SECONDS, or until 2 s after the delete ends if that is later;
    retention (keep=1) in another process after DELETE_AFTER."""
    result: dict[str, Any] = {}
    planned = time.time() + LOAD_SECONDS
    until = [float("inf")]  # the readers go on until the delete is over

    def delete() -> None:
        time.sleep(DELETE_AFTER)
        try:
            run_child()
        finally:
            until[0] = max(planned, time.time() + 2.0)

    def run_child() -> None:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.large_bench", "--retention-child", url, "1"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if out.returncode != 0:
            result["error"] = out.stderr.strip()[-2000:]
        else:
            result.update(json.loads(out.stdout.strip().splitlines()[-1]))

    deleter = threading.Thread(target=delete)
    deleter.start()
    samples = load(port, path, key, rows, LOAD_SECONDS, until)
    deleter.join()
    if "error" in result:
        raise RuntimeError(f"retention child failed: {result['error']}")
    return samples, result


# ---------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------


def _skipped(quick: bool) -> list[dict[str, Any]]:
    note = "not run by --quick (10M rows take minutes): `make bench` runs it"
    return [
        {"id": fid, "figure": f"{what}: {note}", "ours": "", "peer": "", "ratio": "", "target": t}
        for fid, what, t in (
            ("W4", "AskRuleOperator, 10,000,000 rows, PostgreSQL store", "< 100 MB"),
            ("W5", "latest-page p99 during retention of 10M-row snapshots, both stores", "<= 2x"),
        )
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """W4 and W5 (full runs only); rows with id, figure, ours, peer, ratio, target, met."""
    if quick:
        return _skipped(quick)
    from airflow_nx1_connect.core import snapshots as snaps
    from airflow_nx1_connect.core import store
    from benchmarks.write_bench import rss_run

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nx1-large-bench-") as tmp, pg_schema() as (_s, url):
        # PostgreSQL store: two old snapshots, then W4's operator run publishes the latest.
        engine = engines.get_engine(url)
        store.migrate(engine)
        # Registered as W4's operator registers it (an Ask rule, task `rss` of DAG `bench`).
        snaps.register_data_api(engine, name=NAME, kind="ask", dag_id="bench", task_id="rss")
        for i in (1, 2):
            t0 = time.perf_counter()
            write_generated(engine, ROWS)
            say(f"old snapshot {i}: {ROWS:,} rows written in {time.perf_counter() - t0:.0f} s")
        engines.dispose_engines()

        # W4: the operator in a fresh process publishes the latest 10M-row snapshot.
        os.environ["AIRFLOW__NX1_CONNECT__SNAPSHOT_RETENTION"] = "100"
        try:
            growth, seconds = rss_run(_pg_conn(), GEN_SQL, url, ROWS, data_api=NAME)
        finally:
            del os.environ["AIRFLOW__NX1_CONNECT__SNAPSHOT_RETENTION"]
        say(f"W4 {ROWS:,} rows: peak RSS growth {growth:.1f} MB, {seconds:.1f} s")
        rows.append(
            {
                "id": "W4",
                "figure": (
                    f"AskRuleOperator peak RSS growth, {ROWS:,} rows x 4 from a PostgreSQL "
                    "source into a PostgreSQL store (MB)"
                ),
                "ours": round(growth, 1),
                "peer": 100,
                "ratio": round(growth / 100, 2),
                "target": "< 100 MB",
                "met": growth < 100,
            }
        )
        rows.append(
            {
                "id": "W4",
                "figure": (
                    f"same run's time (s): read, COPY and publish of {ROWS:,} rows, "
                    f"{ROWS / seconds:,.0f} rows/s"
                ),
                "ours": round(seconds, 1),
                "peer": "",
                "ratio": "",
                "target": "report",
                "met": True,
            }
        )

        # W5: readers of latest while retention drops the two old 10M-row snapshots.
        rows += retention_rows("PostgreSQL", *measure_retention(url, tmp))

        # W5 on the embedded SQLite store: three snapshots written by write_snapshot.
        sqlite_url = f"sqlite:///{Path(tmp) / 'store.db'}"
        engine = engines.get_engine(sqlite_url)
        store.migrate(engine)
        snaps.register_data_api(engine, name=NAME, kind="ask", dag_id="bench", task_id="rss")
        for i in (1, 2, 3):
            t0 = time.perf_counter()
            write_generated(engine, ROWS)
            say(f"SQLite store snapshot {i}: {ROWS:,} rows in {time.perf_counter() - t0:.0f} s")
        engines.dispose_engines()
        rows += retention_rows("SQLite", *measure_retention(sqlite_url, tmp))
    return rows


def measure_retention(
    url: str, tmp: str
) -> tuple[list[float], list[tuple[float, float]], dict[str, Any]]:
    """Serve the store; (baseline latencies, (send, latency) with the delete, its window).

    Data API NAME must have three or more snapshots, the newest three of ROWS rows.
    """
    from airflow_nx1_connect.core import keys
    from airflow_nx1_connect.core import snapshots as snaps
    from benchmarks.serve_bench import _free_port, serve

    engine = engines.get_engine(url)
    published = snaps.list_snapshots(engine, NAME)
    big = [s for s in published if s.row_count == ROWS]
    assert len(big) == 3 and published[0].id == big[0].id, published
    key = keys.create_key(engine, data_api=NAME, days=1).secret
    engines.dispose_engines()
    port = _free_port()
    env = {**os.environ, "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": url, "AIRFLOW_HOME": tmp}
    argv = [
        sys.executable, "-m", "uvicorn", "airflow_nx1_connect.web.api:app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    path = f"/api/v1/data-apis/{NAME}/latest"
    with serve(argv, port, path, env):
        load(port, path, key, ROWS, 2.0)  # warm up (and the key's first last_used write)
        baseline = [lat for _, lat in load(port, path, key, ROWS, LOAD_SECONDS)]
        samples, window = retention_during_load(url, port, path, key, ROWS)
    engine = engines.get_engine(url)
    left = snaps.list_snapshots(engine, NAME)
    engines.dispose_engines()
    assert [s.id for s in left] == [big[0].id], left
    return baseline, samples, window


def retention_rows(
    label: str, baseline: list[float], samples: list[tuple[float, float]], window: dict[str, Any]
) -> list[dict[str, Any]]:
    """The W5 rows of one store."""
    start, end = window["start"], window["end"]
    during = [lat for sent, lat in samples if sent <= end and sent + lat >= start]
    whole = [lat for _, lat in samples]
    seconds = max(s + lat for s, lat in samples) - min(s for s, _ in samples)
    base_p99, during_p99 = p99(baseline) * 1000, p99(during) * 1000 if during else 0.0
    delete_ms = (end - start) * 1000
    say(
        f"W5 {label}: retention dropped {window['dropped']} snapshot(s) in {delete_ms:.0f} ms; "
        f"p99 {during_p99:.1f} ms over {len(during)} requests during it (max "
        f"{max(during, default=0) * 1000:.1f} ms), {base_p99:.1f} ms without it "
        f"({len(baseline)} requests); whole run with it {p99(whole) * 1000:.1f} ms"
    )
    ratio = during_p99 / base_p99 if base_p99 else float("inf")
    return [
        {
            "id": "W5",
            "figure": (
                f"{label} store: latest page ({PAGE} rows, random start, {CLIENTS} clients) "
                f"p99 (ms) during retention dropping {window['dropped']} old snapshots (2 of "
                f"{ROWS:,} rows; {delete_ms:.0f} ms, {len(during)} requests overlapped it, "
                f"max {max(during, default=0) * 1000:.0f} ms) vs p99 without a delete "
                f"({len(baseline)} requests)"
            ),
            "ours": round(during_p99, 1),
            "peer": round(base_p99, 1),
            "ratio": round(ratio, 2),
            "target": "<= 2x (readers not blocked)",
            "met": bool(during) and ratio <= 2.0,
        },
        {
            "id": "W5",
            "figure": (
                f"{label} store: p99 (ms) of the whole run with the delete "
                f"({len(whole)} requests in {seconds:.0f} s) vs without"
            ),
            "ours": round(p99(whole) * 1000, 1),
            "peer": round(base_p99, 1),
            "ratio": round(p99(whole) * 1000 / base_p99, 2) if base_p99 else "",
            "target": "report",
            "met": True,
        },
    ]


def main(argv: list[str] | None = None) -> int:
    """CLI: print the rows (or run a child's part)."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--retention-child":
        print(json.dumps(_retention_child(args[1], int(args[2]))))
        return 0
    print_rows(run(quick="--quick" in args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
