"""Reading a snapshot's rows: keyset pages and constant-memory batches.

Every plain read is a keyset query on the hidden row number (`store.ROW_COLUMN`), so a page
at row 900,000 costs what a page at row 0 does, and a streamed read holds no transaction open
between batches. A `RowsQuery` (filters and sort from the URL) adds plain WHERE clauses with
bound values and quoted identifiers (so the planner uses the snapshot's indexes) and, with a
sort, ORDER BY the sort columns (NULLs last) then the row number; `start` then counts rows
of the filtered, sorted result. `read_raw_rows` returns values as the store keeps them (for
encoders that write them straight to text, see `core.types`); `read_rows` decodes them.
"""

from __future__ import annotations

import functools
import logging
import pickle
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_nx1_connect.core import types
from airflow_nx1_connect.core.engines import driver_rows, read_deadline
from airflow_nx1_connect.core.errors import SnapshotNotFound, StoreUnavailable, ValidationError
from airflow_nx1_connect.core.snapshots import Snapshot, use_bind
from airflow_nx1_connect.core.store import BATCH_SIZE, ROW_COLUMN, placeholder, quote, snapshots
from airflow_nx1_connect.core.types import Column

log = logging.getLogger(__name__)

#: Filter operators of `where.<column>=<op>.<value>`.
OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "like", "in", "is")
_COMPARE = {
    "eq": "__eq__",
    "ne": "__ne__",
    "gt": "__gt__",
    "gte": "__ge__",
    "lt": "__lt__",
    "lte": "__le__",
}


@dataclass(frozen=True)
class Filter:
    """`where.<column>=<op>.<value>`: values as URL text (`in`: several, `is`: null|not_null)."""

    column: str
    op: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class SortKey:
    """One `sort` column; NULLs always last."""

    column: str
    descending: bool = False


@dataclass(frozen=True)
class RowsQuery:
    """Filters (AND-ed) and sort of a rows read; empty: every row, in the snapshot's order."""

    filters: tuple[Filter, ...] = ()
    sort: tuple[SortKey, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.filters or self.sort)


def _snapshot_table(snapshot: Snapshot) -> Any:
    return sa.table(
        snapshot.table_name, *(sa.column(c) for c in snapshot.columns), sa.column(ROW_COLUMN)
    )


def _operand(table: Any, family: str, column: str, dialect: str, ordered: bool) -> Any:
    """The column as compared: cast where the store keeps another type (see `core.types`);
    for ordering, in the code-point collation (equality keeps the column's own, so its
    index serves it)."""
    expr = table.c[column]
    if types.compare_cast(family, dialect) == "REAL":
        expr = sa.cast(expr, sa.Float)
    collation = types.order_collation(family, dialect) if ordered else None
    return expr.collate(collation) if collation else expr


def _family(snapshot: Snapshot, column: str, what: str) -> str:
    families = dict(zip(snapshot.columns, snapshot.column_types, strict=True))
    if column not in families:
        raise ValidationError(
            f"Unknown column {column!r} in {what}; this snapshot has: "
            f"{', '.join(snapshot.columns)}.",
            field=what,
        )
    return families[column]


def _glob_pattern(text: str) -> str:
    # SQLite GLOB (case-sensitive, like PostgreSQL's LIKE): only `*` stays a wildcard.
    return "".join({"?": "[?]", "[": "[[]"}.get(ch, ch) for ch in text)


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


_ORDERED_OPS = ("gt", "gte", "lt", "lte")


def _filter_values(snapshot: Snapshot, query: RowsQuery, dialect: str) -> dict[str, Any]:
    """Check a query against the snapshot and return its bound values by name.

    ValidationError (400) for an unknown column, an op the column's type does not take, or
    a value that does not parse as that type. Names: `w<filter>_<value>`.
    """
    values: dict[str, Any] = {}
    for i, f in enumerate(query.filters):
        family = _family(snapshot, f.column, f"where.{f.column}")
        entry = types.FILTERS[family]
        if f.op == "is":
            continue
        if f.op == "like":
            if not entry.textual:
                raise ValidationError(
                    f"where.{f.column}=like... works on text columns; {f.column} is {family}: "
                    "use eq, ne, gt, gte, lt, lte, in or is.",
                    field=f"where.{f.column}",
                )
            text = f.values[0]
            values[f"w{i}_0"] = _glob_pattern(text) if dialect == "sqlite" else _like_pattern(text)
            continue
        if f.op in _ORDERED_OPS and not entry.ordered:
            raise ValidationError(
                f"where.{f.column}={f.op}... needs an ordered column; {f.column} is {family}: "
                "use eq, ne, in, like or is.",
                field=f"where.{f.column}",
            )
        for j, text in enumerate(f.values):
            try:
                values[f"w{i}_{j}"] = types.filter_value(family, text, dialect)
            except ValueError as exc:
                raise ValidationError(
                    f"where.{f.column}: {text!r} is not a {family} value; send {exc}.",
                    field=f"where.{f.column}",
                ) from None
    for key in query.sort:
        _family(snapshot, key.column, "sort")
    return values


def _condition(table: Any, snapshot: Snapshot, f: Filter, i: int, dialect: str) -> Any:
    """The WHERE clause of filter number `i` (already checked), values as named binds."""
    family = _family(snapshot, f.column, f"where.{f.column}")
    column = table.c[f.column]
    if f.op == "is":
        return column.is_(None) if f.values[0] == "null" else column.is_not(None)
    if f.op == "like":
        pattern: Any = sa.bindparam(f"w{i}_0")
        if dialect == "sqlite":
            return column.op("GLOB")(pattern)
        return column.like(pattern, escape="\\")
    operand = _operand(table, family, f.column, dialect, f.op in _ORDERED_OPS)
    binds: list[Any] = [sa.bindparam(f"w{i}_{j}") for j in range(len(f.values))]
    if f.op == "in":
        return operand.in_(binds)
    return getattr(operand, _COMPARE[f.op])(binds[0])


def _query_select(
    snapshot: Snapshot, cols: Sequence[Column], query: RowsQuery, dialect: str
) -> tuple[sa.Select[Any], Any, list[tuple[SortKey, Any]]]:
    """SELECT cols, the row number, the sort operands WHERE filters ORDER BY sort, row
    number; also the table and the sort keys with their operands."""
    table = _snapshot_table(snapshot)
    operands = [
        (key, _operand(table, _family(snapshot, key.column, "sort"), key.column, dialect, True))
        for key in query.sort
    ]
    select = sa.select(
        *(table.c[c.name] for c in cols), table.c[ROW_COLUMN], *(expr for _, expr in operands)
    )
    for i, f in enumerate(query.filters):
        select = select.where(_condition(table, snapshot, f, i, dialect))
    order = [(expr.desc() if key.descending else expr.asc()).nulls_last() for key, expr in operands]
    return select.order_by(*order, table.c[ROW_COLUMN]), table, operands


def _after(table: Any, operands: Sequence[tuple[SortKey, Any]], nulls: Sequence[bool]) -> Any:
    """Rows that come after a given row in the order (sort keys, NULLs last, then the row
    number): the keyset continuation of a sorted read. Binds `k<i>` (that row's sort
    values that are not NULL) and `p_after` (its row number)."""
    terms, equal = [], []
    for i, ((key, expr), is_null) in enumerate(zip(operands, nulls, strict=True)):
        if is_null:  # nothing sorts after NULL but other NULLs (equal), then by row number
            equal.append(expr.is_(None))
            continue
        value: Any = sa.bindparam(f"k{i}")
        later = expr < value if key.descending else expr > value
        terms.append(sa.and_(*equal, sa.or_(later, expr.is_(None))))
        equal.append(expr == value)
    terms.append(sa.and_(*equal, table.c[ROW_COLUMN] > sa.bindparam("p_after")))
    return sa.or_(*terms)


def filter_clause(
    dialect: sa.Dialect, snapshot: Snapshot, filters: Sequence[Filter]
) -> tuple[str, dict[str, Any]]:
    """The AND of `filters` on `snapshot`'s table as SQL text with `:w<i>_<j>` named binds
    (for a `sa.text` statement), and their values; identifiers quoted, values bound.
    ValidationError as `check_query`. ("1 = 1", {}) without filters."""
    if not filters:
        return "1 = 1", {}
    query = RowsQuery(filters=tuple(filters))
    values = _filter_values(snapshot, query, dialect.name)
    table = _snapshot_table(snapshot)
    clause = sa.and_(
        *(_condition(table, snapshot, f, i, dialect.name) for i, f in enumerate(filters))
    )
    named = type(dialect)(paramstyle="named")  # type: ignore[call-arg]
    return str(clause.compile(dialect=named)), values


def check_query(snapshot: Snapshot, query: RowsQuery, dialect: str) -> None:
    """Raise ValidationError (a 400) for an unknown column, op or a value of the wrong type."""
    _filter_values(snapshot, query, dialect)


def read_query_rows(
    bind: Engine | Connection,
    snapshot: Snapshot,
    columns: Sequence[Column],
    query: RowsQuery,
    *,
    start: int,
    limit: int,
) -> list[tuple[Any, ...]]:
    """Rows `start`..`start+limit-1` of the filtered, sorted result, values as stored."""
    width = len(columns)
    return [r[:width] for r in _read_query(bind, snapshot, columns, query, start, limit, None)]


#: Compiled query text by shape (dialect, table, columns, filters' columns/ops/value counts,
#: sort, keyset continuation and which of its sort values are NULL): the SQL of a shape is
#: built and compiled once; values are bound per call.
_PLANS: dict[tuple[Any, ...], tuple[str, tuple[str, ...], bool]] = {}
_MAX_PLANS = 1024
#: Where a keyset read continues: the last row's number and its sort values.
After = tuple[int, tuple[Any, ...]]


def _plan(
    conn: Connection,
    snapshot: Snapshot,
    columns: Sequence[Column],
    query: RowsQuery,
    nulls: tuple[bool, ...] | None,
) -> tuple[str, tuple[str, ...], bool]:
    """(SQL in the driver's paramstyle, its bind names (in order), positional or not).

    `nulls`: None for a read from an offset; else a keyset continuation, with which of the
    last row's sort values are NULL (each pattern is a plan of its own).
    """
    dialect = conn.dialect
    shape = (
        dialect.name,
        snapshot.table_name,
        tuple(snapshot.columns),
        tuple(snapshot.column_types),
        tuple(c.name for c in columns),
        tuple(
            (f.column, f.op, len(f.values), f.values if f.op == "is" else ()) for f in query.filters
        ),
        query.sort,
        nulls,
    )
    plan = _PLANS.get(shape)
    if plan is None:
        select, table, operands = _query_select(snapshot, columns, query, dialect.name)
        if nulls is not None:
            select = select.where(_after(table, operands, nulls))
        # Always an OFFSET bind (0 without one): SQLite renders one with every LIMIT.
        select = select.limit(sa.bindparam("p_limit")).offset(sa.bindparam("p_offset"))
        compiled = select.compile(dialect=dialect)
        if compiled.positional:
            plan = (compiled.string, tuple(compiled.positiontup or ()), True)
        else:
            plan = (compiled.string, tuple(compiled.binds), False)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[shape] = plan
    return plan


def _read_query(
    bind: Engine | Connection,
    snapshot: Snapshot,
    columns: Sequence[Column],
    query: RowsQuery,
    offset: int,
    limit: int,
    after: After | None,
) -> list[tuple[Any, ...]]:
    """Rows with their row number and sort operands after the columns; `after` continues
    a keyset read after that row (then `offset` is 0)."""
    with use_bind(bind) as conn:
        values = _filter_values(snapshot, query, conn.dialect.name)
        nulls = None
        if after is not None:
            nulls = tuple(v is None for v in after[1])
            values.update((f"k{i}", v) for i, v in enumerate(after[1]) if v is not None)
        sql, names, positional = _plan(conn, snapshot, columns, query, nulls)
        values.update(p_limit=limit, p_offset=offset, p_after=after[0] if after else None)
        params: Any = (
            tuple(values[n] for n in names) if positional else {n: values[n] for n in names}
        )
        return _fetch_all(conn, snapshot, sql, params)


def iter_query_rows(
    engine: Engine,
    snapshot: Snapshot,
    columns: Sequence[Column],
    query: RowsQuery,
    *,
    start: int = 0,
    batch_size: int = BATCH_SIZE,
) -> Iterator[list[tuple[Any, ...]]]:
    """The filtered, sorted result from `start` in batches of stored values, constant memory
    (a sorted stream gives PostgreSQL NUMERIC as its exact text, the form SQLite stores; every
    encoder writes the two alike).

    Without a sort, the first batch starts at offset `start` and each later one continues
    by keyset after the last row number read. With a sort, the result is read once: one
    sorted query runs at the store's speed and its batches are spooled to a temporary file
    (unlinked at once, gone when the stream ends), then sent from there. A slow client
    holds no query or transaction open, and no batch sorts or skips the rows before it
    again (a keyset or OFFSET per batch re-reads and re-sorts what is left: quadratic
    without an index that gives the order).
    """
    if query.sort:
        yield from _sorted_batches(engine, snapshot, columns, query, start, batch_size)
        return
    width = len(columns)
    offset, after = start, None
    while True:
        batch = _read_query(engine, snapshot, columns, query, offset, batch_size, after)
        if not batch:
            return
        yield [r[:width] for r in batch]
        if len(batch) < batch_size:
            return
        last = batch[-1]
        offset, after = 0, (last[width], tuple(last[width + 1 :]))


def _sorted_batches(
    engine: Engine,
    snapshot: Snapshot,
    columns: Sequence[Column],
    query: RowsQuery,
    start: int,
    batch_size: int,
) -> Iterator[list[tuple[Any, ...]]]:
    """`iter_query_rows` with a sort: the sorted result spooled once, then sent from it."""
    with tempfile.TemporaryFile(prefix="nx1-sorted-") as spool:
        _spool_sorted(engine, snapshot, columns, query, start, batch_size, spool)
        spool.seek(0)
        while True:
            try:
                batch = pickle.load(spool)  # noqa: S301 - this process's own unlinked file
            except EOFError:
                return
            yield batch


def _spool_sorted(
    engine: Engine,
    snapshot: Snapshot,
    columns: Sequence[Column],
    query: RowsQuery,
    start: int,
    batch_size: int,
    spool: Any,
) -> None:
    """Run the filtered, sorted read once, from `start`, at the store's speed, writing its
    batches (values as stored, but PostgreSQL NUMERIC as its exact text) to `spool`: a
    server-side cursor on PostgreSQL, so no more than one batch is ever in memory; the
    transaction ends with the query."""
    width = len(columns)
    with engine.connect() as conn:
        values = _filter_values(snapshot, query, conn.dialect.name)
        sql, names, positional = _plan(conn, snapshot, columns, query, None)
        values.update(p_limit=-1 if conn.dialect.name == "sqlite" else None, p_offset=start)
        params: Any = (
            tuple(values[n] for n in names) if positional else {n: values[n] for n in names}
        )
        raw = conn.connection.dbapi_connection
        assert raw is not None
        try:
            if conn.dialect.name == "sqlite":
                cursor = raw.cursor()
            else:
                cursor = raw.cursor(name=f"nx1_sorted_{uuid.uuid4().hex}")
                # NUMERIC as PostgreSQL's exact text (the form SQLite stores, which every
                # encoder takes): a Decimal costs ~2 us a value to pickle and unpickle.
                from psycopg.types.string import TextLoader

                cursor.adapters.register_loader("numeric", TextLoader)
            try:
                with read_deadline(conn):
                    cursor.execute(sql, params)
                while True:
                    with read_deadline(conn):
                        rows = cursor.fetchmany(batch_size)
                    if not rows:
                        break
                    pickle.dump([r[:width] for r in rows], spool, pickle.HIGHEST_PROTOCOL)
            finally:
                cursor.close()
        except conn.dialect.dbapi.Error as exc:  # type: ignore[union-attr]
            raise read_failed(conn, snapshot, exc) from exc
        raw.rollback()


def read_rows(
    bind: Engine | Connection,
    snapshot: Snapshot,
    columns: Sequence[Column],
    *,
    start: int,
    limit: int,
) -> list[tuple[Any, ...]]:
    """Rows `start`..`start+limit-1` (0-based) of a snapshot, values decoded to Python types.

    A keyset read on the hidden row number: as fast at row 900,000 as at row 0.
    """
    rows = read_raw_rows(bind, snapshot, columns, start=start, limit=limit)
    decoders = types.converters(columns, "decode")
    if not decoders:
        return rows
    return [tuple(r) for r in types.convert_rows(rows, decoders)]


def iter_rows(
    engine: Engine,
    snapshot: Snapshot,
    columns: Sequence[Column],
    *,
    start: int = 0,
    batch_size: int = BATCH_SIZE,
) -> Iterator[list[tuple[Any, ...]]]:
    """Yield the snapshot's rows from `start` in decoded batches, in constant memory.

    Each batch is its own short keyset query, so a slow client holds no transaction open.
    """
    return _batches(read_rows, engine, snapshot, columns, start, batch_size)


def _batches(
    read: Callable[..., list[tuple[Any, ...]]],
    engine: Engine,
    snapshot: Snapshot,
    columns: Sequence[Column],
    start: int,
    batch_size: int,
) -> Iterator[list[tuple[Any, ...]]]:
    """Batches from `read` (read_rows or read_raw_rows), one short keyset query each."""
    position = start
    stop = snapshot.row_count
    while stop is None or position < stop:
        batch = read(engine, snapshot, columns, start=position, limit=batch_size)
        if not batch:
            return
        yield batch
        position += len(batch)


def read_raw_rows(
    bind: Engine | Connection,
    snapshot: Snapshot,
    columns: Sequence[Column],
    *,
    start: int,
    limit: int,
) -> list[tuple[Any, ...]]:
    """Like `read_rows`, but values as the store's driver returns them, not decoded.

    For encoders that turn stored values into text directly (the API's CSV), which is
    much faster than decoding to Python types first. Stored forms: see `core.types`.
    """
    with use_bind(bind) as conn:
        sql = keyset_sql(conn.dialect, snapshot.table_name, tuple(c.name for c in columns))
        return _fetch_all(conn, snapshot, sql, (start, limit))


@functools.lru_cache(maxsize=512)
def keyset_sql_text(placeholders: tuple[str, str], table: str, names: tuple[str, ...]) -> str:
    """`SELECT names FROM table WHERE row > ? ORDER BY row LIMIT ?` with identifiers quoted
    (`store.quote`) and `placeholders` (after, limit) as the driver writes bound values
    (`?`, `%s`, `$1`...)."""
    row = quote(None, ROW_COLUMN)
    select = ", ".join(quote(None, n) for n in names)
    sql = (
        f"SELECT {select} FROM {quote(None, table)} "
        f"WHERE {row} > {{after}} ORDER BY {row} LIMIT {{limit}}"
    )
    if "%s" in placeholders:  # format paramstyle: a % in a quoted identifier must be doubled
        sql = sql.replace("%", "%%")
    return sql.replace("{after}", placeholders[0]).replace("{limit}", placeholders[1])


def keyset_sql(
    dialect: sa.Dialect,
    table: str,
    names: tuple[str, ...],
    placeholders: tuple[str, str] | None = None,
) -> str:
    """The keyset read of `table` (see `keyset_sql_text`); `placeholders` default to the
    dialect's driver's own paramstyle."""
    if placeholders is None:
        mark = placeholder(dialect)
        placeholders = (mark, mark)
    return keyset_sql_text(placeholders, table, names)


def iter_raw_rows(
    engine: Engine,
    snapshot: Snapshot,
    columns: Sequence[Column],
    *,
    start: int = 0,
    batch_size: int = BATCH_SIZE,
) -> Iterator[list[tuple[Any, ...]]]:
    """Like `iter_rows` (batched keyset reads, constant memory), values not decoded."""
    return _batches(read_raw_rows, engine, snapshot, columns, start, batch_size)


def _fetch_all(conn: Connection, snapshot: Snapshot, sql: str, params: Any) -> list[Any]:
    """Run a read of `snapshot` on the driver's own cursor (`engines.driver_rows`: the hot
    path of every page), within the read engine's bound; a failure is `read_failed`'s
    answer."""
    try:
        with read_deadline(conn):
            return driver_rows(conn.connection.dbapi_connection, sql, params)
    except conn.dialect.dbapi.Error as exc:  # type: ignore[union-attr]
        raise read_failed(conn, snapshot, exc) from exc


def read_failed(conn: Connection, snapshot: Snapshot, exc: BaseException) -> Exception:
    """What a failed read of `snapshot` means: SnapshotNotFound (404) only when the
    catalogue no longer lists it (retention dropped it meanwhile); otherwise the store
    failed (a timeout, a lock, an outage): StoreUnavailable (503, retry later)."""
    detail = " ".join(str(getattr(exc, "orig", exc)).split())[:200] or type(exc).__name__
    try:
        # The read ran on the driver's own cursor, which SQLAlchemy does not track: roll
        # back on the driver connection (PostgreSQL refuses anything else after an error).
        conn.rollback()
        conn.connection.dbapi_connection.rollback()  # type: ignore[union-attr]
        listed = (
            conn.execute(
                sa.select(snapshots.c.id).where(
                    snapshots.c.id == snapshot.id,
                    snapshots.c.data_api == snapshot.data_api,
                    snapshots.c.status == "published",
                )
            ).first()
            is not None
        )
    except Exception:  # the store itself is what fails
        listed = True
    if not listed:
        return SnapshotNotFound(
            f"Snapshot {snapshot.id} of {snapshot.data_api!r} is no longer retained; "
            "ask for latest again."
        )
    log.warning("Reading snapshot %s of %r failed: %s", snapshot.id, snapshot.data_api, detail)
    return StoreUnavailable(
        f"Reading snapshot {snapshot.id} of {snapshot.data_api!r} failed in the snapshot "
        f"store ({detail}); try again in a few seconds."
    )
