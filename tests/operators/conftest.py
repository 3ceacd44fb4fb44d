"""Fixtures for the rule operator tests: DAG files run with `dag.test()`, real sources.

DAGs are written as files into the session dags folder (dag.test() serializes DAGs from
their bundle), imported, run in-process against the session's Airflow metadata DB, and
removed afterwards. Connections come from AIRFLOW_CONN_* environment variables.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import textwrap
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from airflow_nx1_connect.core import reads
from tests.conftest import PG_URL, drop_pg_schema, make_pg_schema

SQLITE_CONN = "nx1_src_sqlite"
PG_CONN = "nx1_src_pg"


@pytest.fixture
def make_dag(airflow_db: Path) -> Iterator[Callable[..., Any]]:
    """Write a DAG file (`DAG_ID` in the text is replaced by a unique id); return the DAG."""
    from airflow.configuration import conf

    folder = Path(conf.get("core", "dags_folder")) / "nx1_operator_tests"
    folder.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []

    def make(source: str, dag_id: str | None = None) -> Any:
        dag_id = dag_id or f"nx1_t_{uuid.uuid4().hex[:10]}"
        path = folder / f"{dag_id}.py"
        path.write_text(textwrap.dedent(source).replace("DAG_ID", dag_id))
        made.append(path)
        spec = importlib.util.spec_from_file_location(f"nx1_test_dag_{dag_id}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.dag

    yield make
    for path in made:
        path.unlink(missing_ok=True)


def ti_states(dag_run: Any) -> dict[str, str]:
    """task_id -> state of a finished dag.test() run."""
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def xcom_value(dag_run: Any, task_id: str) -> Any:
    """The task's return_value XCom in the metadata DB."""
    import sqlalchemy as sa
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            sa.select(XComModel).where(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
            )
        ).one()
        value = row.value
    return json.loads(value) if isinstance(value, str) else value


def latest_rows(engine: Any, name: str) -> list[tuple[Any, ...]]:
    """Every row of the data API's latest published snapshot, as served."""
    from airflow_nx1_connect.core import snapshots as snaps

    snap = snaps.latest_snapshot(engine, name)
    cols = snaps.resolve_columns(snap, None)
    return [r for batch in reads.iter_rows(engine, snap, cols) for r in batch]


SALES = [
    (1, "Espresso", 120, 2.4, "2026-01-02", None),
    (2, "Bagel", 98, 2.1, "2026-01-02", 'it\'s "fresh"'),
    (3, "Crème brûlée", 7, 4.5, "2026-01-03", "日本; DROP TABLE sales; --"),
    (4, "Croissant", 98, None, None, ""),
]


@pytest.fixture
def sqlite_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SQLite source (`sales`, `balances`) behind Connection `nx1_src_sqlite`."""
    path = tmp_path / "source.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE sales (id INTEGER PRIMARY KEY, product TEXT, units INTEGER, "
            "price REAL, sold_on TEXT, note TEXT)"
        )
        conn.executemany("INSERT INTO sales VALUES (?, ?, ?, ?, ?, ?)", SALES)
        conn.execute("CREATE TABLE balances (account_id TEXT PRIMARY KEY, amount REAL, note TEXT)")
        conn.executemany(
            "INSERT INTO balances VALUES (?, ?, ?)",
            [("A", 10.5, "a"), ("B", 20.0, "b"), ("C", 30.25, None)],
        )
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{SQLITE_CONN.upper()}", "sqlite://" + quote(str(path), safe="")
    )
    return path


def query_sqlite(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run a query on a SQLite file directly."""
    with closing(sqlite3.connect(path)) as conn, conn:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]


@pytest.fixture
def pg_source(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh PostgreSQL schema behind Connection `nx1_src_pg`; yields the schema name."""
    schema, _url = make_pg_schema()
    host_part = PG_URL.split("://", 1)[1]
    user_host, dbname = host_part.split("/", 1)
    user, hostport = user_host.split("@", 1)
    host, _, port = hostport.partition(":")
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{PG_CONN.upper()}",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": host,
                "port": int(port or 5432),
                "login": user,
                "schema": dbname.split("?")[0],
                "extra": {"options": f"-csearch_path={schema}"},
            }
        ),
    )
    try:
        yield schema
    finally:
        drop_pg_schema(schema)


def pg_exec(schema: str, sql: str) -> list[tuple[Any, ...]]:
    """Run SQL in the source schema directly (autocommit); rows if it returns any."""
    import psycopg

    with psycopg.connect(PG_URL, options=f"-csearch_path={schema}", autocommit=True) as conn:
        cur = conn.execute(sql)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []


#: The MariaDB / MySQL source of the MySQL tests (NX1_TEST_MYSQL_* override it).
MYSQL_CONN = "nx1_src_mysql"
MYSQL = {
    "host": os.environ.get("NX1_TEST_MYSQL_HOST", "127.0.0.1"),
    "port": int(os.environ.get("NX1_TEST_MYSQL_PORT", "3306")),
    "user": os.environ.get("NX1_TEST_MYSQL_USER", "root"),
    "password": os.environ.get("NX1_TEST_MYSQL_PASSWORD", ""),
    "database": os.environ.get("NX1_TEST_MYSQL_DB", "test"),
}


def my_connect(**kwargs: Any) -> Any:
    """A mysql-connector-python connection to the test MariaDB (MYSQL)."""
    import mysql.connector

    return mysql.connector.connect(**MYSQL, **kwargs)


def my_exec(*statements: str) -> list[tuple[Any, ...]]:
    """Run statements on the source directly (autocommit); the last one's rows, if any."""
    conn = my_connect(autocommit=True)
    try:
        cur = conn.cursor()
        rows: list[tuple[Any, ...]] = []
        for sql in statements:
            cur.execute(sql)
            rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
        return rows
    finally:
        conn.close()


@pytest.fixture
def mysql_source(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Connection `nx1_src_mysql` to MariaDB's `test` database; yields a unique name prefix.

    Every table, view, function and sequence whose name starts with the prefix is dropped
    afterwards.
    """
    prefix = f"nx1_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{MYSQL_CONN.upper()}",
        json.dumps(
            {
                "conn_type": "mysql",
                "host": MYSQL["host"],
                "port": MYSQL["port"],
                "login": MYSQL["user"],
                "password": MYSQL["password"],
                "schema": MYSQL["database"],
                "extra": {"client": "mysql-connector-python"},
            }
        ),
    )
    try:
        yield prefix
    finally:
        like = f"'{prefix}%'"
        db = MYSQL["database"]
        tables = my_exec(
            "SELECT table_name, table_type FROM information_schema.tables "
            f"WHERE table_schema = '{db}' AND table_name LIKE {like}"
        )
        routines = my_exec(
            "SELECT routine_name FROM information_schema.routines "
            f"WHERE routine_schema = '{db}' AND routine_name LIKE {like}"
        )
        drops = [f"DROP FUNCTION IF EXISTS `{name}`" for (name,) in routines]
        for name, kind in tables:
            what = {"SEQUENCE": "SEQUENCE", "VIEW": "VIEW"}.get(str(kind), "TABLE")
            drops.append(f"DROP {what} IF EXISTS `{name}`")
        if drops:
            my_exec(*drops)
