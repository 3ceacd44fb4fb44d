"""2. Readers during publish: every response shows one whole published snapshot, never a mix.

A writer publishes snapshot after snapshot of `beta` (run k has 300 + 7k rows, every row
labelled `run<k>-<i>`) while reader threads page `latest` and stream it as CSV through
both real server processes.
"""

from __future__ import annotations

import csv
import io
import random
import re
import threading

import httpx
import pytest

from airflow_nx1_connect.core import snapshots, writer

pytestmark = pytest.mark.slow  # two real server processes per store

#: Rows of run k are labelled `run<k>-<i>`; the fixture's first snapshot (run 0) `beta-<i>`.
LABEL = re.compile(r"^(?:run(\d+)|beta)-(\d+)$")


def _run_of(label: str) -> int:
    match = LABEL.match(label)
    assert match is not None, f"a row of no snapshot ever published: {label!r}"
    return int(match.group(1) or 0)


RUNS = 12


def _rows(k: int) -> list[tuple[int, str]]:
    return [(i, f"run{k}-{i}") for i in range(300 + 7 * k)]


def test_readers_see_one_whole_snapshot_per_request_while_runs_publish(served):
    errors: list[str] = []
    seen_runs: set[int] = set()
    stop = threading.Event()
    published: dict[str, int] = {}  # snapshot id -> run

    def publish_runs() -> None:
        try:
            for k in range(1, RUNS + 1):
                snap = writer.write_snapshot(
                    served.engine,
                    data_api="beta",
                    columns=[snapshots.Column("id", "INTEGER"), snapshots.Column("label", "TEXT")],
                    batches=[_rows(k)],
                    run_id=f"run{k}",
                    retention=3,
                )
                published[snap.id] = k
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(f"writer: {exc!r}")
        finally:
            stop.set()

    def check_page(body: dict) -> None:
        total = body["snapshot"]["row_count"]
        rows = body["data"]["data"]
        runs = {_run_of(label) for _, label in rows}
        if len(runs) > 1:
            errors.append(f"mixed runs in one page: {runs}")
            return
        if runs:
            k = runs.pop()
            seen_runs.add(k)
            if k and total != 300 + 7 * k:
                errors.append(f"run {k} page says row_count {total}")
            ids = [i for i, _ in rows]
            if ids != list(range(body["data"]["start"], body["data"]["start"] + len(rows))):
                errors.append("page rows out of order")
            if body["snapshot"]["run_id"] not in (f"run{k}", None) and k:
                errors.append(f"snapshot run_id {body['snapshot']['run_id']} vs rows of run {k}")

    def check_csv(text: str) -> None:
        rows = list(csv.reader(io.StringIO(text)))[1:]
        runs = {_run_of(label) for _, label in rows}
        if len(runs) != 1:
            errors.append(f"CSV stream mixes runs {runs}")
            return
        k = runs.pop()
        if k and len(rows) != 300 + 7 * k:
            errors.append(f"CSV of run {k} has {len(rows)} rows")

    def reader(server, seed: int) -> None:
        try:
            read(server, seed)
        except Exception as exc:  # a reader that dies must fail the test, not only warn
            errors.append(f"{server.kind} reader: {exc!r}")

    def read(server, seed: int) -> None:
        rnd = random.Random(seed)
        headers = {"X-API-Key": served.keys["beta"].secret}
        with httpx.Client(base_url=server.base, headers=headers, timeout=30) as client:
            while not stop.is_set():
                if rnd.random() < 0.3:
                    r = client.get("/data-apis/beta/latest", params={"format": "csv"})
                    if r.status_code != 200:
                        errors.append(f"{server.kind} csv {r.status_code} {r.text[:200]}")
                        continue
                    check_csv(r.text)
                else:
                    start = rnd.randrange(0, 300)
                    r = client.get("/data-apis/beta/latest", params={"start": start, "limit": 50})
                    if r.status_code != 200:
                        errors.append(f"{server.kind} page {r.status_code} {r.text[:200]}")
                        continue
                    check_page(r.json())

    threads = [
        threading.Thread(target=reader, args=(s, n)) for n, s in enumerate(served.servers * 2)
    ]
    for t in threads:
        t.start()
    publish_runs()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:10]
    assert len(published) == RUNS
    # The readers really did see snapshots change under them.
    assert len(seen_runs) >= 2, seen_runs
