"""Mount memory benchmark: M1, a slow reader of a whole 1M-row CSV through each mount.

    uv run python -m benchmarks.mount_bench [--quick]

The 1M-row snapshot of `serve_bench` (SQLite store), and a second 1M-row snapshot of the
same data API that shares half its rows with the first, are served by a real
`airflow api-server --workers 1` with the plugin installed, in a fresh AIRFLOW_HOME.
One client downloads a whole CSV while reading no faster than RATE bytes/s (so the server
must hold back or buffer what the client has not taken), and the server's RSS (every process
of the api-server's session, summed) is sampled every second. The figure is the growth: the
highest sample during the download minus the sample just before it (after one warm-up
request on the same mount). Two downloads per mount:

- `.../latest?format=csv`: the latest snapshot whole (about 48 MB);
- `.../changes?since=<first>&format=csv`: the whole change feed between the two snapshots,
  1,000,000 rows (500,000 deletes, then 500,000 inserts; about 50 MB).

- M1 `/nx1/api/v1/...`: the plugin's FastAPI app (sent batch by batch, with backpressure).
- M1 `/pluginsv2/nx1/api/v1/...`: the blueprint's mount, as shipped: the plugin's root
  middleware (`web.streams`) answers whole-snapshot streams there with the FastAPI adapter.
- M1 `/pluginsv2` without that middleware (the "before"): a second api-server in which a
  `sitecustomize` of this benchmark turns the middleware's test off, so the blueprint
  answers through Airflow's mount of Flask (Starlette's `WSGIMiddleware`, which queues a
  WSGI body without bound). Reported beside the target, not held to it.

Target: growth < 50 MB on both shipped mounts, for both downloads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import cli, rss_kb, sayer
from benchmarks.serve_bench import NAME, _batches, build

LIMIT_MB = 50
#: Client read rate in bytes/s (quick, full).
RATE = {True: 2_000_000, False: 1_000_000}
_NO_DIVERT = (
    "import airflow_nx1_connect.web.streams as streams\n"
    "streams.streams_whole_snapshot = lambda *args, **kwargs: False\n"
)


say = sayer("mount_bench")


def _stat(pid: str) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (field 3 first)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def server_session(port: int) -> int:
    """The session id of the process listening on 127.0.0.1:`port` (the api-server runs in
    a session of its own: every process of it shares that id)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(_stat(proc.name)[3])
        except OSError:
            continue
    raise RuntimeError(f"no process listens on port {port}")


def tree_rss_kb(session: int) -> int:
    """Summed VmRSS (kB) of every process of a session (the api-server's processes; their
    environment and command line are no help: the server rewrites its process title)."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if int(_stat(proc.name)[3]) == session:
                total += rss_kb(pid=proc.name)
        except (OSError, ValueError, IndexError, RuntimeError):  # gone meanwhile
            continue
    return total


def slow_read(url: str, key: str, rate: int, session: int) -> dict[str, Any]:
    """Download `url` whole at no more than `rate` bytes/s; RSS sampled every second."""
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(tree_rss_kb(session))
            done.wait(1.0)

    before = tree_rss_kb(session)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    size = 0
    t0 = time.perf_counter()
    try:
        headers = {"X-API-Key": key, "Accept-Encoding": "identity"}
        with httpx.stream("GET", url, headers=headers, timeout=600) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code} for {url}")
            for chunk in response.iter_raw(64 * 1024):
                size += len(chunk)
                ahead = size / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        done.set()
        sampler.join()
    elapsed = time.perf_counter() - t0
    peak = max([before, *samples])
    return {
        "bytes": size,
        "seconds": elapsed,
        "before_kb": before,
        "peak_kb": peak,
        "growth_mb": (peak - before) / 1024,
        "samples": len(samples),
    }


@contextmanager
def api_server(home: Path, store_url: str, divert: bool) -> Iterator[tuple[str, int]]:
    """A real api-server on the store; yields (its URL, the session id of its processes)."""
    from tests.api_server import running_api_server

    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": store_url,
    }
    if not divert:
        site = home / "no-divert"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_NO_DIVERT)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    with running_api_server(env, home, workers=1) as (url, _log):
        yield url, server_session(int(url.rsplit(":", 1)[1]))


def second_snapshot(store_url: str, rows: int) -> str:
    """Publish a second `rows`-row snapshot of the data API whose rows are those of the first
    from the middle on, then as many new ones; returns the first snapshot's id (the feed's
    `since`: `rows` changes, half deletes, half inserts)."""
    from airflow_nx1_connect.core import engines, writer
    from airflow_nx1_connect.core import snapshots as snaps

    engine = engines.get_engine(store_url)
    first = snaps.latest_snapshot(engine, NAME)
    half = rows // 2

    def shifted() -> Iterator[list[tuple[Any, ...]]]:
        for batch in _batches(rows + half):
            kept = [row for row in batch if row[0] > half]
            if kept:
                yield kept

    columns = snaps.resolve_columns(first, None)
    writer.write_snapshot(engine, data_api=NAME, columns=columns, batches=shifted())
    engines.dispose_engines()
    return first.id


ROUTES = {"latest": "latest", "changes": "change feed"}


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Run M1 on both mounts, and on /pluginsv2 without the plugin's stream middleware."""
    rate = RATE[bool(quick)]
    with tempfile.TemporaryDirectory(prefix="nx1-mount-bench-") as tmp_name:
        tmp = Path(tmp_name)
        say("writing the 1,000,000-row snapshots")
        store_url, key, _ = build(tmp, 1_000_000)
        since = second_snapshot(store_url, 1_000_000)
        home = tmp / "airflow"
        home.mkdir()
        say("airflow db migrate")
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env={**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"},
            check=True,
            capture_output=True,
            timeout=300,
        )
        results: dict[tuple[str, str], dict[str, Any]] = {}
        for divert in (True, False):
            say(f"api-server ({'as shipped' if divert else 'without the stream middleware'})")
            with api_server(home, store_url, divert) as (url, session):
                mounts = ("/nx1", "/pluginsv2/nx1") if divert else ("/pluginsv2/nx1",)
                for mount, route in ((m, r) for m in mounts for r in ROUTES):
                    path = f"{url}{mount}/api/v1/data-apis/{NAME}/{route}"
                    query = f"since={since}&format=csv" if route == "changes" else "format=csv"
                    warm = httpx.get(
                        f"{path}?{query}&limit=10", headers={"X-API-Key": key}, timeout=120
                    )
                    warm.raise_for_status()
                    label = mount if divert else f"{mount} (no middleware)"
                    say(f"slow reader of the {ROUTES[route]} on {label} at {rate / 1e6:.0f} MB/s")
                    results[route, label] = r = slow_read(f"{path}?{query}", key, rate, session)
                    say(
                        f"{label} {route}: {r['bytes'] / 1e6:.1f} MB in {r['seconds']:.1f} s, "
                        f"RSS {r['before_kb'] / 1024:.0f} -> peak {r['peak_kb'] / 1024:.0f} MB "
                        f"(+{r['growth_mb']:.1f} MB, {r['samples']} samples)"
                    )
    rows = []
    for (route, label), r in results.items():
        before = results[route, "/pluginsv2/nx1 (no middleware)"]["growth_mb"]
        shipped = "no middleware" not in label
        mount = label.removesuffix(" (no middleware)")
        if not shipped:
            note = "; stream middleware off: the 'before', Starlette's WSGI mount of Flask"
        elif mount.startswith("/pluginsv2"):
            note = f"; with the stream middleware off: +{before:.0f} MB"
        else:
            note = ""
        what = (
            "the whole 1M-row CSV"
            if route == "latest"
            else "the whole 1M-row change feed as CSV (since the first snapshot)"
        )
        rows.append(
            {
                "id": "M1",
                "figure": (
                    f"api-server RSS growth (MB) while one client reads {what} "
                    f"({r['bytes'] / 1e6:.0f} MB) of `{mount}/api/v1/.../{route}` at "
                    f"{rate / 1e6:.0f} MB/s ({r['seconds']:.0f} s, RSS sampled every second)" + note
                ),
                "ours": round(r["growth_mb"], 1),
                "peer": LIMIT_MB if shipped else "reported",
                "ratio": round(r["growth_mb"] / LIMIT_MB, 2),
                "target": f"< {LIMIT_MB} MB" if shipped else "reported",
                "met": r["growth_mb"] < LIMIT_MB if shipped else None,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """CLI: print the rows."""
    return cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
