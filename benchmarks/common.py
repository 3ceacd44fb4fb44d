"""Helpers shared by the benchmarks: timing, a SQLite source table, PostgreSQL schemas, RSS."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

PG_URL = os.environ.get("NX1_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SOURCE_TABLE = "bench_rows"
FETCH = 10_000


def make_source(path: Path, rows: int) -> Path:
    """A SQLite file with `rows` rows x 4 columns (INTEGER, TEXT, REAL, INTEGER)."""
    path.unlink(missing_ok=True)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            f"CREATE TABLE {SOURCE_TABLE} "
            "(id INTEGER PRIMARY KEY, name TEXT, amount REAL, qty INTEGER)"
        )
        conn.executemany(
            f"INSERT INTO {SOURCE_TABLE} VALUES (?, ?, ?, ?)",
            ((i, f"item-{i % 9973}", i * 0.25, i % 97) for i in range(1, rows + 1)),
        )
    return path


def source_batches(path: Path, limit: int | None = None) -> Iterator[list[tuple[Any, ...]]]:
    """The source rows in `fetchmany` batches (what a rule operator reads)."""
    with closing(sqlite3.connect(path)) as conn:
        cur = conn.cursor()
        sql = f"SELECT id, name, amount, qty FROM {SOURCE_TABLE} ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        cur.execute(sql)
        while batch := cur.fetchmany(FETCH):
            yield batch


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


@contextmanager
def pg_schema() -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL schema: yields (schema, SQLAlchemy store URL); dropped after."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    base = PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    sep = "&" if "?" in base else "?"
    try:
        yield schema, f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def rss_kb(field: str = "VmRSS", pid: int | str = "self") -> int:
    """A process's (this one's by default) resident set size (VmRSS) or peak (VmHWM) in
    kB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def sayer(bench: str) -> Callable[[str], None]:
    """A benchmark's `say`: progress lines on stderr, tagged `[bench]` (stdout carries its
    rows)."""

    def say(message: str) -> None:
        print(f"[{bench}] {message}", file=sys.stderr, flush=True)

    return say


def cli(run: Callable[..., list[dict[str, Any]]], argv: list[str] | None = None) -> int:
    """A benchmark module's `main`: `run(quick=...)` (`--quick` in the arguments), its rows
    printed by `print_rows`."""
    args = sys.argv[1:] if argv is None else argv
    print_rows(run(quick="--quick" in args))
    return 0


def print_rows(rows: list[dict[str, Any]]) -> None:
    """Print a module's rows as lines (its `main` when run on its own)."""
    for r in rows:
        print(
            f"{r['id']}  {r['figure']}: ours {r['ours']}, peer/limit {r['peer']}, "
            f"ratio {r['ratio']} (target {r['target']}) "
            f"{ {True: 'OK', False: 'MISSED'}.get(r.get('met'), '') }"
        )
