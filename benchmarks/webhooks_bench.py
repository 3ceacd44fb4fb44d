"""Webhook delivery benchmarks: H1 (draining 1,000 deliveries) and H2 (publish to first POST).

    uv run python -m benchmarks.webhooks_bench [--quick]

A real `airflow api-server --workers 1` with the plugin, in a fresh AIRFLOW_HOME, its snapshot
store a SQLite file holding the data API `bench_hooks` (a 10,000-row snapshot, a key) and one
webhook to a receiver on loopback: `python -m tests.webhook_receiver`, a process of its own
(a threaded `http.server` answering 204), which prints the arrival time of every POST. The
api-server's delivery process (started with the plugin's FastAPI app) does all the delivering.

- H1: 1,000 `ping` deliveries are made pending in one transaction; the figure is their number
  divided by the time from that commit to the receiver's last arrival (deliveries/s). Meanwhile
  one keep-alive client reads `latest?limit=100` back to back; the p99 of those requests is
  compared with the p99 of the same requests against the same server while nothing is pending
  (measured just before). Target: at most 1.5x.
- H2: 20 publishes (`write_snapshot` of 10 rows from this process, a random 0.2-1.2 s apart);
  for each, the receiver's arrival time of its `snapshot.published` POST minus the snapshot's
  `published_at`. Median and p99 over the 20. Target: median under 2 s.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import cli, sayer

say = sayer("webhooks_bench")
NAME = "bench_hooks"
PENDING = 1000
PUBLISHES = 20


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class _Arrivals:
    """The receiver process's output: webhook-id -> (arrival time, snapshot id)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: dict[str, tuple[float, str | None]] = {}
        self.lock = threading.Lock()
        self.port = json.loads(proc.stdout.readline())["port"]  # type: ignore[union-attr]
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            item = json.loads(line)
            with self.lock:
                self.seen.setdefault(item["id"], (item["at"], item.get("snapshot")))

    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    def snapshot_arrival(self, snapshot_id: str) -> float | None:
        with self.lock:
            for at, snap in self.seen.values():
                if snap == snapshot_id:
                    return at
        return None

    def last(self) -> float:
        with self.lock:
            return max(at for at, _ in self.seen.values())


def run(quick: bool = False) -> list[dict[str, Any]]:
    from airflow_nx1_connect.core import engines, keys, store, webhooks, writer
    from airflow_nx1_connect.core import snapshots as snaps
    from airflow_nx1_connect.core.clock import utcnow
    from tests.api_server import api_server_env, migrate_airflow, running_api_server

    home = Path(tempfile.mkdtemp(prefix="nx1-bench-hooks-"))
    url = f"sqlite:///{home / 'nx1_store.db'}"
    env = api_server_env(
        home,
        url,
        AIRFLOW__NX1_CONNECT__WEBHOOK_ALLOW_PRIVATE_HOSTS="True",
    )
    os.environ["AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN"] = url
    os.environ["AIRFLOW__NX1_CONNECT__WEBHOOK_ALLOW_PRIVATE_HOSTS"] = "True"
    say("migrating Airflow's database ...")
    migrate_airflow(env)
    engine = engines.get_engine(url)
    store.migrate(engine)
    snaps.register_data_api(engine, name=NAME, kind="ask", dag_id="d", task_id="t")
    cols = [snaps.Column("id", "INTEGER"), snaps.Column("name", "TEXT")]
    writer.write_snapshot(
        engine, data_api=NAME, columns=cols, batches=[[(i, f"row {i}") for i in range(10_000)]]
    )
    key = keys.create_key(engine, data_api=NAME, days=1).secret
    receiver = subprocess.Popen(
        [sys.executable, "-m", "tests.webhook_receiver", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    rows: list[dict[str, Any]] = []
    try:
        arrivals = _Arrivals(receiver)
        hook = webhooks.create_webhook(
            engine,
            data_api=NAME,
            url=f"http://127.0.0.1:{arrivals.port}/hook",
            allow_private=True,
        )
        say("starting the api-server ...")
        with running_api_server(env, home, workers=1) as (base, _log):
            latest = f"{base}/nx1/api/v1/data-apis/{NAME}/latest?limit=100"
            with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:

                def get() -> float:
                    t0 = time.perf_counter()
                    r = client.get(latest)
                    assert r.status_code == 200, r.text
                    return time.perf_counter() - t0

                for _ in range(100):
                    get()
                quiet = [get() for _ in range(300 if quick else 1000)]
                say(f"quiet p99 {_p99(quiet) * 1000:.2f} ms; making {PENDING} pending ...")
                with engine.begin() as conn:
                    for _ in range(PENDING):
                        webhooks._insert_event(
                            conn,
                            event_id=webhooks.new_event_id(),
                            data_api=NAME,
                            event_type="ping",
                            snapshot_id=None,
                            payload=json.dumps({"type": "ping", "data": {}}),
                            webhook_ids=[hook.webhook.id],
                            now=utcnow(),
                        )
                committed = time.time()
                busy: list[float] = []
                deadline = time.monotonic() + 300
                while arrivals.count() < PENDING and time.monotonic() < deadline:
                    busy.append(get())
                drained = arrivals.last() - committed
                say(f"{arrivals.count()} delivered in {drained:.2f} s ({len(busy)} reads)")

            rate = PENDING / drained
            ratio = _p99(busy) / _p99(quiet)
            rows.append(
                {
                    "id": "H1",
                    "figure": f"{PENDING} pending deliveries drained by one api-server, "
                    "deliveries/s",
                    "ours": f"{rate:.0f}/s ({drained:.2f} s)",
                    "peer": "-",
                    "ratio": "-",
                    "target": "reported",
                }
            )
            rows.append(
                {
                    "id": "H1",
                    "figure": f"p99 of latest?limit=100 during the drain ({len(busy)} requests) "
                    f"vs a quiet server ({len(quiet)})",
                    "ours": f"{_p99(busy) * 1000:.2f} ms",
                    "peer": f"{_p99(quiet) * 1000:.2f} ms",
                    "ratio": f"{ratio:.2f}x",
                    "target": "<= 1.5x",
                    "met": ratio <= 1.5,
                }
            )

            latencies = []
            for i in range(PUBLISHES):
                time.sleep(random.uniform(0.2, 1.2))
                snap = writer.write_snapshot(
                    engine, data_api=NAME, columns=cols, batches=[[(i, "x")] * 10]
                )
                assert snap.published_at is not None
                end = time.monotonic() + 30
                while (at := arrivals.snapshot_arrival(snap.id)) is None:
                    if time.monotonic() > end:
                        raise RuntimeError(f"publish {snap.id} not delivered in 30 s")
                    time.sleep(0.01)
                latencies.append(at - snap.published_at.timestamp())
            median = statistics.median(latencies)
            rows.append(
                {
                    "id": "H2",
                    "figure": f"publish to first delivery over {PUBLISHES} publishes: median "
                    "(p99 in the peer cell)",
                    "ours": f"{median:.2f} s",
                    "peer": f"p99 {_p99(latencies):.2f} s",
                    "ratio": "-",
                    "target": "median < 2 s",
                    "met": median < 2.0,
                }
            )
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
        engines.dispose_engines()
    return rows


def main() -> int:
    return cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
