"""Tenant-scoped keys benchmark: R8, a key with a row filter against an unfiltered key.

On the 1M-row snapshot of `serve_bench` (same rows), whose filter column `category` is in
`index_columns`, one FastAPI server (uvicorn, one worker), side by side in one run:

- R8 page: `GET .../latest?limit=100` with the filtered key (`category=eq.tea`, 1 row in 5)
  and with an unfiltered key, CLIENTS concurrent keep-alive clients: req/s (best of the
  repeats). Target: filtered >= 0.8x unfiltered.
- R8 stream: the whole `.../latest?format=csv` with each key (best of two downloads): rows/s
  delivered (the filtered key gets 200,000 rows, the unfiltered one 1,000,000). Target:
  filtered >= 0.5x unfiltered.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from airflow_nx1_connect.core import engines, store, writer
from benchmarks.common import cli, sayer
from benchmarks.serve_bench import CLIENTS, PAGE, _batches, _free_port, load, serve, stream

NAME = "bench"
SIZES = {
    True: {"rows": 1_000_000, "requests": 300, "repeats": 2},
    False: {"rows": 1_000_000, "requests": 1_500, "repeats": 3},
}
#: The filtered key's row filter: 1 row in 5 (`category` cycles through 5 values).
ROW_FILTER = ["category=eq.tea"]

say = sayer("tenants_bench")


def build(url: str, rows: int) -> tuple[str, str, int]:
    """(unfiltered key, filtered key, rows the filtered key sees) on a `rows`-row snapshot
    of data API `bench` whose `category` column is indexed."""
    from airflow_nx1_connect.core import keys
    from airflow_nx1_connect.core import snapshots as snaps

    engine = engines.get_engine(url)
    store.migrate(engine)
    snaps.register_data_api(engine, name=NAME, kind="ask", dag_id="bench", task_id="bench")
    columns = [
        snaps.Column("id", "INTEGER"),
        snaps.Column("name", "TEXT"),
        snaps.Column("category", "TEXT"),
        snaps.Column("amount", "NUMERIC"),
        snaps.Column("score", "REAL"),
    ]
    writer.write_snapshot(
        engine, data_api=NAME, columns=columns, batches=_batches(rows), index_columns=["category"]
    )
    plain = keys.create_key(engine, data_api=NAME, days=1).secret
    filtered = keys.create_key(engine, data_api=NAME, days=1, row_filter=ROW_FILTER).secret
    seen = sum(1 for i in range(1, rows + 1) if i % 5 == 1)  # categories[i % 5] == "tea"
    engines.dispose_engines()
    return plain, filtered, seen


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Run R8; rows with id, figure, ours, peer, ratio, target, met."""
    size = SIZES[bool(quick)]
    n = size["rows"]
    with tempfile.TemporaryDirectory(prefix="nx1-tenants-bench-") as tmp_name:
        tmp = Path(tmp_name)
        url = f"sqlite:///{tmp / 'store.db'}"
        say(f"writing a {n:,}-row snapshot (category indexed) and two keys")
        plain, filtered, seen = build(url, n)
        env = {
            **os.environ,
            "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": url,
            "AIRFLOW_HOME": tmp_name,
        }
        port = _free_port()
        argv = [
            sys.executable, "-m", "uvicorn", "airflow_nx1_connect.web.api:app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
        base = f"/api/v1/data-apis/{NAME}"
        page, csv_path = f"{base}/latest?limit={PAGE}", f"{base}/latest?format=csv"
        keys = {"plain": plain, "filtered": filtered}
        pages: dict[str, tuple[float, float]] = {}
        streams: dict[str, tuple[float, int, dict]] = {}
        with serve(argv, port, base, env) as pid:
            for _ in range(size["repeats"]):  # interleaved, so drift hits both alike
                for role, key in keys.items():
                    auth = {"X-API-Key": key, "Accept-Encoding": "identity"}
                    got = load(port, page, auth, size["requests"])
                    if role not in pages or got[0] > pages[role][0]:
                        pages[role] = got
            for _ in range(2):
                for role, key in keys.items():
                    auth = {"X-API-Key": key, "Accept-Encoding": "identity"}
                    got_stream = stream(port, csv_path, auth, pid)
                    if role not in streams or got_stream[0] < streams[role][0]:
                        streams[role] = got_stream
    f_rps, p_rps = pages["filtered"][0], pages["plain"][0]
    f_rows_s = seen / streams["filtered"][0]
    p_rows_s = n / streams["plain"][0]
    say(
        f"R8 latest page: filtered {f_rps:.0f} req/s (p99 {pages['filtered'][1]:.1f} ms), "
        f"unfiltered {p_rps:.0f} req/s (p99 {pages['plain'][1]:.1f} ms); whole CSV: filtered "
        f"{seen:,} rows in {streams['filtered'][0]:.2f}s ({f_rows_s:,.0f} rows/s), unfiltered "
        f"{n:,} rows in {streams['plain'][0]:.2f}s ({p_rows_s:,.0f} rows/s)"
    )
    return [
        {
            "id": "R8",
            "figure": f"latest page of {PAGE} rows, {CLIENTS} clients (req/s): key with a row "
            "filter on an indexed column vs an unfiltered key",
            "ours": round(f_rps),
            "peer": round(p_rps),
            "ratio": round(f_rps / p_rps, 2),
            "target": ">= 0.8x",
            "met": f_rps >= 0.8 * p_rps,
        },
        {
            "id": "R8",
            "figure": f"whole CSV stream (rows/s): filtered key ({seen:,} rows) vs unfiltered "
            f"key ({n:,} rows)",
            "ours": round(f_rows_s),
            "peer": round(p_rows_s),
            "ratio": round(f_rows_s / p_rows_s, 2),
            "target": ">= 0.5x",
            "met": f_rows_s >= 0.5 * p_rows_s,
        },
    ]


def main(argv: list[str] | None = None) -> int:
    """CLI: print the rows as a small table."""
    return cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
