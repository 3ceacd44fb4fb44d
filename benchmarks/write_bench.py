"""Snapshot write benchmark: W1 (SQLite store), W2 (PostgreSQL store), W3/W3m (operator memory).

    uv run python -m benchmarks.write_bench [--quick]

Every write reads the same SQLite source table (N rows x 4 columns: INTEGER, TEXT,
REAL, INTEGER) with a `fetchmany(10000)` cursor, so each side pays the same read cost:

- W1: `core.snapshots.write_snapshot` into a SQLite store vs a bare `sqlite3`
  `executemany` of the same batches into one plain table in one transaction (target
  >= 0.8x), and vs common.sql `SqliteHook.insert_rows` with its defaults (target >= 3x;
  measured on fewer rows, its rate extrapolated).
- W2: the same into a PostgreSQL store vs a bare psycopg `COPY ... FROM STDIN` with
  `write_row` (target >= 0.7x), and vs `PostgresHook.insert_rows` (target >= 5x; fewer
  rows, rate extrapolated). The peer is the plain text-format loop; our write sends a
  binary `COPY` (plus the row number and the primary key a snapshot table needs).
- W3: peak RSS growth of a process running `AskRuleOperator.execute` (source read,
  snapshot write, publish) at a small and a large row count (target < 100 MB each).
  Measured in a fresh subprocess from /proc (VmHWM after resetting it, minus VmRSS).
- W3m: the same at the large row count with a MariaDB source (a table filled from the
  Sequence engine, Connection `{"client": "mysql-connector-python"}`, read with its
  unbuffered cursor) into a SQLite store; the run's time is reported too.

Ours and the peer are each run `repeats` times; the best time of each is compared.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow_nx1_connect.core import engines, writer
from benchmarks.common import (
    PG_URL,
    SOURCE_TABLE,
    make_source,
    pg_schema,
    print_rows,
    rss_kb,
    source_batches,
    timed,
)

COLUMNS = ("id", "name", "amount", "qty")
SIZES = {
    # quick: the spec's sizes (fixed per-run costs would skew smaller ones), one try each
    True: {"rows": 1_000_000, "hook_rows": 20_000, "rss": (100_000, 1_000_000), "repeats": 1},
    False: {"rows": 1_000_000, "hook_rows": 100_000, "rss": (100_000, 1_000_000), "repeats": 3},
}


# ---------------------------------------------------------------------------------------
# Our write path
# ---------------------------------------------------------------------------------------


def prepare_store(store_url: str, name: str = "bench") -> Any:
    """Migrate a store and register the data API (not timed: once per data API)."""
    from airflow_nx1_connect.core import snapshots as snaps
    from airflow_nx1_connect.core import store

    engine = engines.get_engine(store_url)
    store.migrate(engine)
    snaps.register_data_api(engine, name=name, kind="engineer", dag_id="bench", task_id="w")
    return engine


def ours(engine: Any, source: Path, name: str = "bench") -> int:
    """Write and publish one snapshot of the whole source (read with fetchmany, like the
    operator) through core.snapshots.write_snapshot; returns its row count."""

    batches = source_batches(source)
    first = next(batches)
    with closing(sqlite3.connect(source)) as conn:
        description = conn.execute(
            f"SELECT id, name, amount, qty FROM {SOURCE_TABLE} LIMIT 0"
        ).description
    columns = writer.infer_columns(description, first, "sqlite")
    snapshot = writer.write_snapshot(
        engine,
        data_api=name,
        columns=columns,
        batches=itertools.chain([first], batches),
        retention=1,
    )
    return int(snapshot.row_count or 0)


# ---------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------


def bare_sqlite(target: Path, source: Path) -> int:
    """Bare sqlite3: one table, one transaction, `executemany` per source batch."""
    target.unlink(missing_ok=True)
    n = 0
    with closing(sqlite3.connect(target)) as conn:
        conn.execute("CREATE TABLE t (id INTEGER, name TEXT, amount REAL, qty INTEGER)")
        for batch in source_batches(source):
            conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", batch)
            n += len(batch)
        conn.commit()
    return n


def bare_copy(store_url: str, source: Path) -> int:
    """Bare psycopg: one table, `COPY FROM STDIN` with `write_row`, one commit."""
    import psycopg

    schema = store_url.rsplit("search_path%3D", 1)[1]
    n = 0
    with psycopg.connect(PG_URL, options=f"-csearch_path={schema}") as conn:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS t")
            cur.execute(
                "CREATE TABLE t (id bigint, name text, amount double precision, qty bigint)"
            )
            with cur.copy("COPY t (id, name, amount, qty) FROM STDIN") as copy:
                for batch in source_batches(source):
                    for row in batch:
                        copy.write_row(row)
                    n += len(batch)
        conn.commit()
    return n


def _hook_rows(source: Path, limit: int) -> Any:
    return itertools.chain.from_iterable(source_batches(source, limit))


def sqlite_insert_rows(target: Path, source: Path, limit: int) -> int:
    """common.sql `insert_rows` (defaults) through a SqliteHook."""
    from airflow.providers.sqlite.hooks.sqlite import SqliteHook

    target.unlink(missing_ok=True)
    with closing(sqlite3.connect(target)) as conn:
        conn.execute("CREATE TABLE t (id INTEGER, name TEXT, amount REAL, qty INTEGER)")
    os.environ["AIRFLOW_CONN_NX1_BENCH_SQLITE"] = "sqlite://" + quote(str(target), safe="")
    hook = SqliteHook(sqlite_conn_id="nx1_bench_sqlite")
    hook.insert_rows("t", _hook_rows(source, limit), target_fields=list(COLUMNS))
    return limit


def pg_insert_rows(store_url: str, source: Path, limit: int) -> int:
    """common.sql `insert_rows` (defaults) through a PostgresHook."""
    import psycopg
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    schema = store_url.rsplit("search_path%3D", 1)[1]
    with psycopg.connect(PG_URL, options=f"-csearch_path={schema}", autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS t")
        conn.execute("CREATE TABLE t (id bigint, name text, amount double precision, qty bigint)")
    os.environ["AIRFLOW_CONN_NX1_BENCH_PG"] = json.dumps(
        {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": 5432,
            "login": "postgres",
            "schema": PG_URL.rsplit("/", 1)[1].split("?")[0],
            "extra": {"options": f"-csearch_path={schema}"},
        }
    )
    hook = PostgresHook(postgres_conn_id="nx1_bench_pg")
    hook.insert_rows("t", _hook_rows(source, limit), target_fields=list(COLUMNS))
    return limit


# ---------------------------------------------------------------------------------------
# W3: operator memory, in a subprocess
# ---------------------------------------------------------------------------------------


def _rss_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process body: run AskRuleOperator.execute on `spec["sql"]` (`spec["rows"]`
    rows) from the Connection `spec["conn"]` into the store `spec["store"]`; report RSS in
    kB and the run's seconds."""
    import time
    from types import SimpleNamespace

    from airflow_nx1_connect.core import store
    from airflow_nx1_connect.operators import AskRuleOperator

    os.environ["AIRFLOW_CONN_NX1_BENCH_SRC"] = spec["conn"]
    os.environ["AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN"] = spec["store"]
    store.migrate(engines.get_engine(spec["store"]))

    def run(limit: int) -> dict[str, Any]:
        op = AskRuleOperator(
            task_id="rss",
            data_api=spec.get("data_api", "rss_bench"),
            conn_id="nx1_bench_src",
            sql=spec["sql"].format(limit=limit),
        )
        ti = SimpleNamespace(dag_id="bench", task_id="rss", run_id=f"r{limit}")
        return op.execute({"ti": ti, "run_id": f"r{limit}", "data_interval_end": None})

    run(1000)  # warm up: every lazy import and connection made once
    baseline = rss_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    t0 = time.perf_counter()
    result = run(spec["rows"])
    seconds = time.perf_counter() - t0
    assert result["row_count"] == spec["rows"], result
    return {
        "baseline_kb": baseline,
        "peak_kb": rss_kb("VmHWM"),
        "hwm_reset": int(reset),
        "seconds": seconds,
    }


def sqlite_conn(source: Path) -> str:
    """An Airflow Connection URI of a SQLite file."""
    return "sqlite://" + quote(str(source), safe="")


def rss_run(
    conn: str, sql: str, store_url: str, rows: int, data_api: str = "rss_bench"
) -> tuple[float, float]:
    """(peak RSS growth in MB, seconds) of a fresh process running AskRuleOperator on
    `rows` rows of `sql` (its `{limit}` is the row count) from Connection `conn`,
    publishing to `data_api` (task `rss` of DAG `bench`)."""
    home = tempfile.mkdtemp(prefix="nx1-bench-home-")
    env = dict(os.environ, AIRFLOW_HOME=home, AIRFLOW__CORE__LOAD_EXAMPLES="False")
    spec = {"conn": conn, "sql": sql, "store": store_url, "rows": rows, "data_api": data_api}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.write_bench", "--rss-child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if out.returncode != 0:
        raise RuntimeError(f"RSS child failed: {out.stderr.strip()[-2000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return (data["peak_kb"] - data["baseline_kb"]) / 1024, float(data["seconds"])


SOURCE_SQL = f"SELECT id, name, amount, qty FROM {SOURCE_TABLE} ORDER BY id LIMIT {{limit}}"


def rss_growth_mb(source: Path, store_url: str, rows: int) -> float:
    """Peak RSS growth (MB) of a fresh process running the operator on `rows` rows."""
    return rss_run(sqlite_conn(source), SOURCE_SQL, store_url, rows)[0]


# ---------------------------------------------------------------------------------------
# W3m: the same with a MariaDB (MySQL) source
# ---------------------------------------------------------------------------------------

MYSQL = {
    "host": os.environ.get("NX1_TEST_MYSQL_HOST", "127.0.0.1"),
    "port": int(os.environ.get("NX1_TEST_MYSQL_PORT", "3306")),
    "user": os.environ.get("NX1_TEST_MYSQL_USER", "root"),
    "password": os.environ.get("NX1_TEST_MYSQL_PASSWORD", ""),
    "database": os.environ.get("NX1_TEST_MYSQL_DB", "test"),
}


def _mysql_exec(*statements: str) -> None:
    import mysql.connector

    conn = mysql.connector.connect(**MYSQL, autocommit=True)
    try:
        cur = conn.cursor()
        for sql in statements:
            cur.execute(sql)
    finally:
        conn.close()


def mysql_w3(tmp: Path, rows: int) -> tuple[float, float]:
    """(peak RSS growth MB, seconds) of AskRuleOperator reading `rows` rows x 4 from a
    MariaDB table (made with the Sequence engine, dropped after) into a SQLite store."""
    import uuid

    table = f"nx1_bench_{uuid.uuid4().hex[:10]}"
    _mysql_exec(
        f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, name VARCHAR(40), amount DOUBLE, "
        "qty INT) ENGINE=InnoDB",
        f"INSERT INTO {table} SELECT seq, CONCAT('item-', seq % 9973), seq * 0.25, seq % 97 "
        f"FROM seq_1_to_{rows}",
    )
    conn = json.dumps(
        {
            "conn_type": "mysql",
            "host": MYSQL["host"],
            "port": MYSQL["port"],
            "login": MYSQL["user"],
            "password": MYSQL["password"],
            "schema": MYSQL["database"],
            "extra": {"client": "mysql-connector-python"},
        }
    )
    sql = f"SELECT id, name, amount, qty FROM {table} ORDER BY id LIMIT {{limit}}"
    try:
        return rss_run(conn, sql, f"sqlite:///{tmp / 'rss_mysql.db'}", rows)
    finally:
        _mysql_exec(f"DROP TABLE IF EXISTS {table}")


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def _best(repeats: int, fn: Any) -> tuple[float, int]:
    best: tuple[float, int] | None = None
    for _ in range(repeats):
        seconds, n = timed(fn)
        if best is None or seconds < best[0]:
            best = (seconds, n)
    assert best is not None
    return best


def _row(fid: str, figure: str, ours_rate: float, peer_rate: float, target: float) -> dict:
    ratio = ours_rate / peer_rate
    return {
        "id": fid,
        "figure": figure,
        "ours": round(ours_rate),
        "peer": round(peer_rate),
        "ratio": round(ratio, 2),
        "target": f">= {target}x",
        "met": ratio >= target,
    }


def run(quick: bool = False, log: Any = None) -> list[dict[str, Any]]:
    """Run W1, W2, W3; returns rows with id, figure, ours, peer, ratio, target (and met)."""

    say = log or (lambda msg: print(f"[write_bench] {msg}", file=sys.stderr, flush=True))
    size = SIZES[bool(quick)]
    n, hook_n, repeats = size["rows"], size["hook_rows"], size["repeats"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nx1-write-bench-") as tmp_name:
        tmp = Path(tmp_name)
        say(f"building a {n:,}-row SQLite source")
        source = make_source(tmp / "source.db", n)

        # W1: SQLite store (retention 1: each run drops the previous snapshot's table)
        engine = prepare_store(f"sqlite:///{tmp / 'store.db'}")
        t_ours, c = _best(repeats, lambda: ours(engine, source))
        engines.dispose_engines()
        assert c == n
        t_bare, c = _best(repeats, lambda: bare_sqlite(tmp / "bare.db", source))
        assert c == n
        t_hook, c = _best(1, lambda: sqlite_insert_rows(tmp / "hook.db", source, hook_n))
        say(f"W1 sqlite: ours {t_ours:.2f}s, executemany {t_bare:.2f}s, insert_rows {t_hook:.2f}s")
        rows.append(
            _row(
                "W1",
                f"SQLite store write, {n:,} rows x 4 (rows/s) vs bare executemany",
                n / t_ours,
                n / t_bare,
                0.8,
            )
        )
        rows.append(
            _row(
                "W1",
                f"SQLite store write vs SqliteHook.insert_rows (rate on {hook_n:,} rows)",
                n / t_ours,
                hook_n / t_hook,
                3.0,
            )
        )

        # W2: PostgreSQL store
        with pg_schema() as (_schema, url):
            engine = prepare_store(url)
            t_ours, c = _best(repeats, lambda: ours(engine, source))
            engines.dispose_engines()
            assert c == n
            t_copy, c = _best(repeats, lambda: bare_copy(url, source))
            assert c == n
            t_hook, c = _best(1, lambda: pg_insert_rows(url, source, hook_n))
        say(f"W2 postgres: ours {t_ours:.2f}s, COPY {t_copy:.2f}s, insert_rows {t_hook:.2f}s")
        rows.append(
            _row(
                "W2",
                f"PostgreSQL store write, {n:,} rows x 4 (rows/s) vs bare COPY",
                n / t_ours,
                n / t_copy,
                0.7,
            )
        )
        rows.append(
            _row(
                "W2",
                f"PostgreSQL store write vs PostgresHook.insert_rows (rate on {hook_n:,} rows)",
                n / t_ours,
                hook_n / t_hook,
                5.0,
            )
        )

        # W3: operator memory
        small, large = size["rss"]
        growth = {}
        for count in (small, large):
            url = f"sqlite:///{tmp / f'rss{count}.db'}"
            growth[count] = rss_growth_mb(source, url, count)
            say(f"W3 operator peak RSS growth at {count:,} rows: {growth[count]:.1f} MB")
        for count in (small, large):
            rows.append(
                {
                    "id": "W3",
                    "figure": f"AskRuleOperator peak RSS growth, {count:,} rows (MB)",
                    "ours": round(growth[count], 1),
                    "peer": 100,
                    "ratio": round(growth[count] / 100, 2),
                    "target": "< 100 MB",
                    "met": growth[count] < 100,
                }
            )

        # W3m: a MariaDB source, read with the driver's streaming cursor
        m_rows = size["rss"][1]
        try:
            m_growth, m_seconds = mysql_w3(tmp, m_rows)
        except Exception as exc:  # MariaDB missing: this row says so, the others stand
            say(f"W3m failed: {type(exc).__name__}: {exc}")
            rows.append(
                {
                    "id": "W3m",
                    "figure": "not measured",
                    "ours": f"ERROR: {type(exc).__name__}: {exc}",
                    "peer": "",
                    "ratio": "",
                    "target": "< 100 MB",
                    "met": False,
                }
            )
        else:
            say(
                f"W3m MariaDB source, {m_rows:,} rows: peak RSS growth {m_growth:.1f} MB, "
                f"{m_seconds:.1f} s"
            )
            rows.append(
                {
                    "id": "W3m",
                    "figure": (
                        f"AskRuleOperator peak RSS growth, MariaDB source "
                        f"(mysql-connector-python, streaming cursor), {m_rows:,} rows (MB); "
                        f"run took {m_seconds:.0f} s"
                    ),
                    "ours": round(m_growth, 1),
                    "peer": 100,
                    "ratio": round(m_growth / 100, 2),
                    "target": "< 100 MB",
                    "met": m_growth < 100,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """CLI: print the rows as a small table."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--rss-child":
        print(json.dumps(_rss_child(json.loads(args[1]))))
        return 0
    print_rows(run(quick="--quick" in args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
