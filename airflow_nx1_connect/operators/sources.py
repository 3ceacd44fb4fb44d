"""The source side of a rule run: DB-API cursors on the Connection's database, and which
source errors are about the rule's SQL (fail at once) rather than the server (retry).

Streaming everywhere: a server-side cursor on PostgreSQL, an unbuffered one on MySQL and
MariaDB, `fetchmany` batches of FETCH_SIZE elsewhere; Ask sessions are made read-only by
the source itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Protocol

from airflow_nx1_connect.core import store

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

#: Rows fetched from the source per `fetchmany` call (and written per store batch).
FETCH_SIZE = store.BATCH_SIZE


class DbApiCursor(Protocol):
    """The parts of a DB-API 2.0 cursor a rule run uses."""

    description: Sequence[Sequence[Any]] | None

    def execute(self, operation: str) -> Any: ...
    def fetchmany(self, size: int) -> Sequence[Any]: ...
    def close(self) -> None: ...


class DbApiConnection(Protocol):
    """The parts of a DB-API 2.0 connection a rule run uses."""

    def cursor(self, *args: Any, **kwargs: Any) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


# SQLSTATE classes (first two characters) of errors in the SQL itself, not in the server.
_RULE_SQLSTATE_CLASSES = frozenset(
    {"0A", "21", "22", "23", "25", "26", "28", "2B", "2F", "34", "38", "39", "3F", "42", "44", "P0"}
)
_RULE_SQLITE_ERRORS = frozenset(
    {"SQLITE_ERROR", "SQLITE_CONSTRAINT", "SQLITE_MISMATCH", "SQLITE_RANGE", "SQLITE_READONLY"}
)
# Python 3.10's sqlite3 exceptions carry no sqlite_errorname (3.11+): its OperationalError
# is about the SQL (no such table, syntax error) unless its message is one of these.
_SQLITE_SERVER_MESSAGES = (
    "database is locked",
    "database table is locked",
    "unable to open database file",
    "disk i/o error",
    "database or disk is full",
    "database disk image is malformed",
    "interrupted",
    "out of memory",
    "locking protocol",
)
_RULE_ERROR_CLASSES = frozenset({"ProgrammingError", "DataError", "IntegrityError"})
# MySQL/MariaDB server error numbers about the SQL itself, for drivers whose exceptions
# carry no SQLSTATE (mysqlclient, PyMySQL): they raise e.g. an unknown column (1054) or a
# write refused in a READ ONLY transaction (1792) as OperationalError.
_RULE_MYSQL_ERRNOS = frozenset(
    {
        1044,  # access denied to a database
        1052,  # ambiguous column
        1054,  # unknown column
        1064,  # syntax error
        1142,  # command denied on a table
        1143,  # command denied on a column
        1146,  # unknown table
        1305,  # unknown function or procedure
        1792,  # write in a READ ONLY transaction
        4091,  # unknown sequence (MariaDB)
    }
)
_MYSQL_DRIVER_MODULES = frozenset({"MySQLdb", "pymysql", "mysql"})


class SourceError(Exception):
    """An error raised by the source database while running or reading the rule's SQL."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def is_rule_error(exc: BaseException) -> bool:
    """True when a source database error is about the SQL (retrying will not help)."""
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if isinstance(code, str) and len(code) >= 2:
        return code[:2].upper() in _RULE_SQLSTATE_CLASSES
    sqlite_name = getattr(exc, "sqlite_errorname", None)
    if isinstance(sqlite_name, str):
        return sqlite_name in _RULE_SQLITE_ERRORS
    if type(exc).__module__ == "sqlite3" and type(exc).__name__ == "OperationalError":
        text = str(exc).lower()
        return not any(text.startswith(m) for m in _SQLITE_SERVER_MESSAGES)
    if mysql_errno(exc) in _RULE_MYSQL_ERRNOS:
        return True
    return any(c.__name__ in _RULE_ERROR_CLASSES | {"NotSupportedError"} for c in type(exc).__mro__)


def mysql_errno(exc: BaseException) -> int | None:
    """The MySQL server error number of a MySQL driver's exception, else None."""
    if type(exc).__module__.split(".", 1)[0] not in _MYSQL_DRIVER_MODULES:
        return None
    errno = getattr(exc, "errno", None)
    if errno is None and exc.args:
        errno = exc.args[0]
    return errno if isinstance(errno, int) and not isinstance(errno, bool) else None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def dialect_of(hook: DbApiHook) -> str:
    try:
        name = str(hook.dialect_name)
    except Exception:
        name = ""
    if not name or name == "default":
        name = str(getattr(hook, "conn_type", "") or "")
    return {"postgres": "postgresql", "sqlite3": "sqlite"}.get(name, name)


def make_read_only(conn: DbApiConnection, dialect: str) -> None:
    """Defence in depth for Ask rules: the source session itself refuses writes."""
    cur = conn.cursor()
    try:
        if dialect == "sqlite":
            cur.execute("PRAGMA query_only = ON")
        elif dialect == "postgresql" and not getattr(conn, "autocommit", False):
            cur.execute("SET TRANSACTION READ ONLY")
        elif dialect in _MYSQL_DIALECTS:
            # Every later transaction of this session, autocommit or not: a write (even one
            # hidden in a stored function or a sequence's NEXTVAL) fails with error 1792.
            cur.execute("SET SESSION TRANSACTION READ ONLY")
    finally:
        cur.close()


def run_statement(conn: Any, statement: str) -> None:
    """Run one statement whose rows (if any) are not published; drain them in batches.

    A streaming MySQL cursor must be read to the end before the connection runs anything
    else ("Unread result found"); draining keeps memory flat on every driver.
    """
    cur = conn.cursor()
    try:
        cur.execute(statement)
        if cur.description is not None:
            while cur.fetchmany(FETCH_SIZE):
                pass
    finally:
        cur.close()


def open_cursor(conn: DbApiConnection, server_side: bool) -> DbApiCursor:
    """A cursor for the published result; streaming where the driver can stream."""
    streaming = mysql_streaming_cursor(conn)
    if streaming is not None:
        return streaming
    if server_side:
        name = f"nx1_{uuid.uuid4().hex}"
        try:
            from psycopg.rows import tuple_row

            return conn.cursor(name=name, row_factory=tuple_row)
        except (ImportError, TypeError):
            return conn.cursor(name=name)
    cursor = conn.cursor()
    with suppress(Exception):
        cursor.arraysize = FETCH_SIZE
    return cursor


def mysql_streaming_cursor(conn: Any) -> Any:
    """An unbuffered cursor of a MySQL driver's connection (rows come off the socket as
    `fetchmany` asks for them, so memory stays flat), or None for other connections.

    The MySQL drivers buffer the whole result by default: mysqlclient and PyMySQL need
    their `SSCursor` class, mysql-connector-python `buffered=False`.
    """
    package = type(conn).__module__.split(".", 1)[0]
    if package == "MySQLdb":
        import MySQLdb.cursors

        cursor = conn.cursor(MySQLdb.cursors.SSCursor)
    elif package == "pymysql":
        import pymysql.cursors

        cursor = conn.cursor(pymysql.cursors.SSCursor)
    elif package == "mysql":
        cursor = conn.cursor(buffered=False, dictionary=False)
    else:
        return None
    with suppress(Exception):
        cursor.arraysize = FETCH_SIZE
    return cursor


_MYSQL_DIALECTS = frozenset({"mysql", "mariadb"})


def as_tuples(rows: Sequence[Any]) -> Sequence[Any]:
    if rows and isinstance(rows[0], Mapping):
        return [tuple(r.values()) for r in rows]
    return rows


def fetch_first(cursor: DbApiCursor) -> Sequence[Any]:
    if cursor.description is None and not getattr(cursor, "name", None):
        return []
    return as_tuples(cursor.fetchmany(FETCH_SIZE))


def batches(cursor: DbApiCursor, first: Sequence[Any]) -> Iterator[Sequence[Any]]:
    """The result in batches: the first (already fetched), then `fetchmany` until done."""
    if not first:
        return
    yield first
    if len(first) < FETCH_SIZE and not getattr(cursor, "name", None):
        return
    while True:
        try:
            batch = as_tuples(cursor.fetchmany(FETCH_SIZE))
        except Exception as exc:
            raise SourceError(exc) from exc
        if not batch:
            return
        yield batch


def rollback(conn: DbApiConnection) -> None:
    if getattr(conn, "unread_result", False) is True:
        # mysql-connector-python would read every remaining row of a half-read streaming
        # result into memory first; closing the connection rolls back on the server.
        with suppress(Exception):
            conn.close()
        return
    with suppress(Exception):
        conn.rollback()
