"""Engines of the snapshot store: one cached engine per URL (and read timeout), with the
SQLite connection settings (WAL, busy timeout, foreign keys), the SQLite write lock taken
before a write instead of a failing upgrade, and bounded reads for the data API (PostgreSQL
statement and lock timeouts, a SQLite progress deadline).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from airflow_nx1_connect.core.errors import StoreUnavailable

#: Seconds a connection attempt to the store may take before the store counts as unreachable.
CONNECT_TIMEOUT_S = 3
#: Milliseconds SQLite waits on a locked database before giving up.
SQLITE_BUSY_TIMEOUT_MS = 10_000

_engines: dict[tuple[str, float | None], Engine] = {}
_engines_lock = threading.Lock()


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    import sqlite3

    cur = dbapi_conn.cursor()
    try:
        # Turning a new database to WAL needs it alone for a moment; SQLite answers "locked"
        # at once (no busy handler: it could deadlock) when two processes open a new store
        # together, e.g. two `db migrate`s: try again until the busy timeout.
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                cur.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


#: The statements before which the sqlite3 module starts a transaction (and DDL).
_SQLITE_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")
#: How often a SQLite write waiting for the write lock tries again.
SQLITE_LOCK_POLL_S = 0.001
#: SQLite's WAL size (pages) that makes a committing connection checkpoint (its default).
SQLITE_AUTOCHECKPOINT = 1000


def _on_sqlite_execute(conn: sa.Connection, cursor: Any, statement: str, *_args: Any) -> None:
    """Take SQLite's write lock before the first write of a transaction, polling often.

    SQLite's own busy handler sleeps up to 100 ms between tries, so a short write (an
    admin action) waiting behind a long run's batch inserts only gets in when a try
    happens to fall between two batches: seconds, at times. Here the write transaction
    starts with BEGIN IMMEDIATE, tried every millisecond until the busy timeout, so it
    gets in at the first gap between batches (see `core.writer`).
    """
    raw = conn.connection.driver_connection
    if raw is None or raw.in_transaction:
        return
    if not statement.lstrip()[:7].upper().startswith(_SQLITE_WRITES):
        return
    take_sqlite_write_lock(raw)


def take_sqlite_write_lock(
    raw: Any, timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, *, busy_timeout_off: bool = False
) -> None:
    """BEGIN IMMEDIATE on a sqlite3 connection, tried every SQLITE_LOCK_POLL_S until
    `timeout_ms`; raises sqlite3's "database is locked" after that. `busy_timeout_off`:
    the connection's busy timeout is 0 already (a bulk writer sets it once)."""
    import sqlite3

    deadline = time.monotonic() + timeout_ms / 1000
    if not busy_timeout_off:
        raw.execute("PRAGMA busy_timeout = 0")
    try:
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(SQLITE_LOCK_POLL_S)
    finally:
        if not busy_timeout_off:
            raw.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")


#: Execution option of a read engine (`get_engine(..., read_timeout_s=...)`): its bound.
READ_TIMEOUT_OPTION = "nx1_read_timeout_s"
#: Key of a SQLite read connection's deadline holder in its pool record's `info`.
READ_DEADLINE = "nx1_read_deadline"
#: SQLite virtual machine steps between two checks of a read's deadline.
_PROGRESS_STEPS = 1000


def _on_read_connect(timeout_s: float) -> Any:
    """A `connect` listener that bounds the reads of a read engine's connections."""
    ms = int(timeout_s * 1000)

    def on_connect(dbapi_conn: Any, record: Any) -> None:
        if _is_sqlite3(dbapi_conn):
            # Reads set holder[0] to their deadline (`read_deadline`); past it, SQLite
            # interrupts the statement ("interrupted").
            holder = record.info[READ_DEADLINE] = [0.0]

            def past_deadline() -> int:
                return 1 if holder[0] and time.monotonic() > holder[0] else 0

            dbapi_conn.set_progress_handler(past_deadline, _PROGRESS_STEPS)
            dbapi_conn.execute(f"PRAGMA busy_timeout = {ms}")
            return
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"SET statement_timeout = {ms}")
            cur.execute(f"SET lock_timeout = {ms}")
        finally:
            cur.close()
        dbapi_conn.commit()  # session settings outlive the pool's rollbacks once committed

    return on_connect


def _is_sqlite3(dbapi_conn: Any) -> bool:
    import sqlite3

    return isinstance(dbapi_conn, sqlite3.Connection)


@contextmanager
def read_deadline(conn: sa.Connection) -> Iterator[None]:
    """While inside, a SQLite read on `conn` (of a read engine) stops at its deadline.

    PostgreSQL read engines bound every statement on their own (`statement_timeout`);
    engines without a read timeout bound nothing.
    """
    holder = conn.connection.info.get(READ_DEADLINE)
    timeout = conn.get_execution_options().get(READ_TIMEOUT_OPTION)
    if holder is None or not timeout:
        yield
        return
    holder[0] = time.monotonic() + timeout
    try:
        yield
    finally:
        holder[0] = 0.0


def read_timeout(bind: Engine | sa.Connection) -> float | None:
    """The read bound of a read engine (or its connection), None for other engines."""
    return bind.get_execution_options().get(READ_TIMEOUT_OPTION)


def create_store_engine(url: str, *, read_timeout_s: float | None = None) -> Engine:
    """A new engine for a store URL, with a bounded connect timeout.

    SQLite: WAL mode, a busy timeout and foreign keys on every connection (its folder is
    created if missing). PostgreSQL (`postgresql://` means psycopg 3): `connect_timeout`
    and pre-ping, so a dead server is seen in seconds, not minutes. `hide_parameters`
    keeps bound values out of SQL logs and exception texts.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    elif backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        kwargs["pool_pre_ping"] = True
        kwargs["pool_timeout"] = CONNECT_TIMEOUT_S
    if read_timeout_s:
        kwargs["execution_options"] = {READ_TIMEOUT_OPTION: read_timeout_s}
    # Bound values (key hashes, snapshot rows) never appear in SQL logs or error messages.
    engine = sa.create_engine(parsed, hide_parameters=True, **kwargs)
    if backend == "sqlite":
        event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(engine, "before_cursor_execute", _on_sqlite_execute)
    if read_timeout_s:
        event.listen(engine, "connect", _on_read_connect(read_timeout_s))
    return engine


def get_engine(url: str | None = None, *, read_timeout_s: float | None = None) -> Engine:
    """The shared engine for `url` (default: the configured store), created on first use.

    With `read_timeout_s`, the data API's read engine: a pool of its own whose statements
    are bounded (PostgreSQL `statement_timeout` and `lock_timeout`; SQLite a progress
    deadline while `read_deadline` is entered). Writers use the plain engine: a rule's bulk
    load must never be cut short.
    """
    if url is None:
        from airflow_nx1_connect.core.settings import get_settings

        url = get_settings().sql_alchemy_conn
    key = (url, read_timeout_s or None)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = create_store_engine(url, read_timeout_s=read_timeout_s)
        return engine


def dispose_engines() -> None:
    """Close every cached engine (tests, and processes after fork)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def check_reachable(engine: Engine) -> None:
    """Raise `StoreUnavailable` unless a connection to the store can be opened now."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        raise StoreUnavailable(describe_store_error(engine, exc)) from None


def describe_store_error(engine: Engine, exc: BaseException) -> str:
    """One line about an unreachable store, naming it without its password."""
    where = engine.url.render_as_string(hide_password=True)
    first = str(getattr(exc, "orig", exc)).strip().splitlines()[0:1]
    return (
        f"The snapshot store {where} cannot be reached ({first[0] if first else 'no detail'}). "
        "Check that it is running and that [nx1_connect] sql_alchemy_conn is right."
    )


def driver_rows(dbapi_connection: Any, sql: str, params: Any) -> list[Any]:
    """Every row of `sql` (bound values in the driver's paramstyle: `store.placeholder`), read
    on the driver's own cursor: the hot paths (a key lookup, a page) skip SQLAlchemy's
    per-row objects, several times faster. The caller owns the connection and its errors."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    finally:
        cursor.close()
