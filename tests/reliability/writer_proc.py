"""A rule-run writer in its own process, for fault tests: writes N rows into a data API.

Usage: python -m tests.reliability.writer_proc STORE_URL DATA_API ROWS SLEEP_EVERY [TAG [PROGRESS]]
Rows are (i, f"{tag}-{i}"). With SLEEP_EVERY > 0 it pauses 50 ms after each batch of that
many rows, so a test can kill it while the snapshot is `writing`. With PROGRESS (a file
path) it writes there, after each batch the writer has taken into its table, the number of
rows written so far, so a test can wait for that instead of sleeping.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from airflow_nx1_connect.core import engines, snapshots, writer


def batches(rows: int, every: int, tag: str, progress: Path | None = None):
    batch = []
    for i in range(rows):
        batch.append((i, f"{tag}-{i}"))
        if len(batch) >= (every or 10_000):
            yield batch  # resumed once the writer has written this batch
            batch = []
            if progress is not None:
                progress.write_text(str(i + 1))
            if every:
                time.sleep(0.05)
    if batch:
        yield batch


def main() -> None:
    url, name, rows, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    tag = sys.argv[5] if len(sys.argv) > 5 else "w"
    progress = Path(sys.argv[6]) if len(sys.argv) > 6 else None
    engine = engines.get_engine(url)
    snap = writer.write_snapshot(
        engine,
        data_api=name,
        columns=[snapshots.Column("i", "INTEGER"), snapshots.Column("tag", "TEXT")],
        batches=batches(rows, every, tag, progress),
        run_id=tag,
        retention=3,
    )
    print(snap.id, flush=True)


if __name__ == "__main__":
    main()
