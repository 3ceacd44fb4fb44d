"""Shared fixtures: a fresh snapshot store per test on real SQLite and real PostgreSQL.

PostgreSQL is the server at NX1_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test);
each test gets its own schema, dropped afterwards. `make test` makes sure it is running;
the PostgreSQL cases are never skipped.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_nx1_connect.core import engines

PG_URL = os.environ.get("NX1_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

# Airflow reads its home at import: give the whole session a private one before any import.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="nx1-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_SESSION_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
for _key in list(os.environ):
    if _key.startswith("AIRFLOW__NX1_CONNECT__"):
        del os.environ[_key]


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings are resolved once per process; tests change the environment on purpose, so
    each test starts unresolved and every `monkeypatch.setenv`/`delenv` forgets them again."""
    from airflow_nx1_connect.core.settings import reset_settings

    def forgetting(original):  # type: ignore[no-untyped-def]
        def changed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            original(self, *args, **kwargs)
            reset_settings()

        return changed

    reset_settings()
    for name in ("setenv", "delenv"):
        monkeypatch.setattr(pytest.MonkeyPatch, name, forgetting(getattr(pytest.MonkeyPatch, name)))
    yield
    reset_settings()


def pg_admin_url() -> str:
    """The PostgreSQL server's URL for psycopg (schema management)."""
    return PG_URL


def make_pg_schema() -> tuple[str, str]:
    """Create a fresh schema; return (its name, a store URL whose search_path is it)."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    base = PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    sep = "&" if "?" in base else "?"
    return schema, f"{base}{sep}options=-csearch_path%3D{schema}"


def drop_pg_schema(schema: str) -> None:
    """Drop a schema made by make_pg_schema, with everything in it."""
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty, unmigrated store: a SQLite file, or a fresh PostgreSQL schema."""
    from airflow_nx1_connect.core import engines

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        engines.dispose_engines()
        return
    schema, url = make_pg_schema()
    try:
        yield url
    finally:
        engines.dispose_engines()
        drop_pg_schema(schema)


@pytest.fixture
def store_env(store_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Point `[nx1_connect] sql_alchemy_conn` (environment) at the test's store."""
    monkeypatch.setenv("AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN", store_url)
    return store_url


@pytest.fixture
def engine(store_env: str):
    """A migrated store engine (SQLite and PostgreSQL)."""
    from airflow_nx1_connect.core import store

    eng = engines.get_engine(store_env)
    store.migrate(eng)
    return eng


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The session AIRFLOW_HOME with a migrated Airflow metadata DB (SQLite); returns the home.

    Runs `airflow db migrate` once per session (about 8 s). Needed by `dag.test()`.
    """
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=dict(os.environ, AIRFLOW_HOME=str(_SESSION_HOME)),
        check=True,
        capture_output=True,
        timeout=240,
    )
    return _SESSION_HOME


@pytest.fixture(scope="session")
def rule_dags(airflow_db: Path) -> Path:
    """The session's DAG folder (`$AIRFLOW_HOME/dags`) with the rule DAGs of
    `tests.rule_dags.RULES`, serialized by Airflow; returns the folder."""
    from tests.rule_dags import serialize, write_rule_dags

    folder = airflow_db / "dags"
    write_rule_dags(folder)
    serialize({"AIRFLOW_HOME": str(airflow_db)})
    return folder
