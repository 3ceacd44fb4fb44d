"""Change feed benchmark: C1 (whole feed streamed vs one snapshot streamed as CSV, server RSS).

    uv run python -m benchmarks.changes_bench [--quick]

Per store (SQLite, then PostgreSQL), data API `feed` (key column `id`) gets two 1M-row
snapshots (the columns of `serve_bench`) written by `core.writer.write_snapshot`; the
second differs from the first in 1% of rows: 0.5% updated (`name` changed), 0.25%
deleted, 0.25% inserted. Our FastAPI app runs under uvicorn as one process, as in
`serve_bench`. Timed, in the same run on the same server:

- ours: `GET .../changes?since=<first>&to=<second>&format=csv`, the whole feed (20,000
  changes) streamed; the diff is computed by the store over both 1M-row tables;
- the limit's base: `GET .../snapshots/<second>?format=csv`, one whole snapshot streamed.

Seconds to download each, best of 1 (`--quick`) or 3 tries; ratio = feed / snapshot. Target:
<= 2.0x. The server's RSS is sampled from /proc before, at peak and after two feed streams
in a row; flat means the feed is not held in memory (target: < 50 MB growth).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from airflow_nx1_connect.core import engines, store, writer
from benchmarks.common import cli, pg_schema, sayer
from benchmarks.serve_bench import _batches, _free_port, serve, stream

NAME = "feed"
ROWS = 1_000_000


say = sayer("changes_bench")


def _changed(rows: int) -> Iterator[list[tuple[Any, ...]]]:
    """The second snapshot: 1% of the first's rows changed (updates, deletes, inserts)."""
    extra = rows // 400
    for batch in _batches(rows):
        out = []
        for row in batch:
            i = row[0]
            if i % 400 == 0:
                continue  # 0.25% deleted
            if i % 200 == 0 or i % 400 == 100:
                row = (i, row[1] + " (changed)", *row[2:])  # 0.5% updated
            out.append(row)
        yield out
    yield [(rows + j, f"new {j}", "new", None, 0.0) for j in range(1, extra + 1)]


def build(url: str, rows: int) -> tuple[str, str, str]:
    """(key, first snapshot id, second snapshot id) of data API `feed` in store `url`."""
    from airflow_nx1_connect.core import keys
    from airflow_nx1_connect.core import snapshots as snaps

    engine = engines.get_engine(url)
    store.migrate(engine)
    snaps.register_data_api(
        engine, name=NAME, kind="engineer", dag_id="bench", task_id="feed", key_columns=["id"]
    )
    columns = [
        snaps.Column("id", "INTEGER"),
        snaps.Column("name", "TEXT"),
        snaps.Column("category", "TEXT"),
        snaps.Column("amount", "NUMERIC"),
        snaps.Column("score", "REAL"),
    ]
    ids = [
        writer.write_snapshot(
            engine, data_api=NAME, columns=columns, batches=batches, key_columns=["id"]
        ).id
        for batches in (_batches(rows), _changed(rows))
    ]
    key = keys.create_key(engine, data_api=NAME, days=1).secret
    engines.dispose_engines()
    return key, ids[0], ids[1]


def measure(backend: str, tmp: Path, rows: int, repeats: int) -> list[dict[str, Any]]:
    """The C1 rows of one store."""
    place: AbstractContextManager[Any] = (
        pg_schema() if backend == "postgresql" else nullcontext(None)
    )
    with place as schema:
        url = schema[1] if schema else f"sqlite:///{tmp / 'store.db'}"
        say(f"{backend}: writing two {rows:,}-row snapshots (1% apart)")
        key, first, second = build(url, rows)
        env = {
            **os.environ,
            "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": url,
            "AIRFLOW_HOME": str(tmp),
        }
        port = _free_port()
        argv = [
            sys.executable, "-m", "uvicorn", "airflow_nx1_connect.web.api:app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
        base = f"/api/v1/data-apis/{NAME}"
        auth = {"X-API-Key": key}
        feed_url = f"{base}/changes?since={first}&to={second}&format=csv"
        snap_url = f"{base}/snapshots/{second}?format=csv"
        with serve(argv, port, base, env) as pid:
            snaps = [stream(port, snap_url, auth, pid) for _ in range(repeats)]
            feeds = [stream(port, feed_url, auth, pid) for _ in range(max(repeats, 2))]
    feed_s, feed_bytes, _ = min(feeds, key=lambda r: r[0])
    snap_s, snap_bytes, _ = min(snaps, key=lambda r: r[0])
    first_rss, second_rss = feeds[0][2], feeds[1][2]
    growth = (max(first_rss["peak"], second_rss["peak"]) - first_rss["before"]) / 1024
    say(
        f"{backend}: feed {feed_bytes / 1e6:.2f} MB in {feed_s:.2f}s; snapshot "
        f"{snap_bytes / 1e6:.1f} MB in {snap_s:.2f}s; RSS {first_rss} {second_rss}"
    )
    ratio = feed_s / snap_s
    return [
        {
            "id": "C1",
            "figure": (
                f"{backend} store: whole change feed between two {rows:,}-row snapshots 1% "
                f"apart, streamed as CSV (s) vs one snapshot streamed as CSV (best of {repeats})"
            ),
            "ours": round(feed_s, 2),
            "peer": round(snap_s, 2),
            "ratio": round(ratio, 2),
            "target": "<= 2.0x",
            "met": ratio <= 2.0,
        },
        {
            "id": "C1",
            "figure": (
                f"{backend} store: our server RSS over two feed streams: "
                f"{first_rss['before'] / 1024:.0f} MB before, {first_rss['peak'] / 1024:.0f} "
                f"peak, {second_rss['after'] / 1024:.0f} after (MB growth)"
            ),
            "ours": round(growth, 1),
            "peer": "",
            "ratio": "",
            "target": "flat (< 50 MB)",
            "met": growth < 50,
        },
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Run C1 on both stores; rows with id, figure, ours, peer, ratio, target (and met)."""
    repeats = 1 if quick else 3
    rows: list[dict[str, Any]] = []
    for backend in ("sqlite", "postgresql"):
        with tempfile.TemporaryDirectory(prefix="nx1-changes-bench-") as tmp:
            rows += measure(backend, Path(tmp), ROWS, repeats)
    return rows


def main(argv: list[str] | None = None) -> int:
    """CLI: print the rows as a small table."""
    return cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
