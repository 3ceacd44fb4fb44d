"""A snapshot's rows as Arrow record batches: the schema, and reads straight into Arrow.

Each column's Arrow type comes from the one type table (`core.types`, its `arrow` and
`arrow_value` entries). A whole snapshot is read in keyset batches (as `core.reads` does:
one short query per batch, no transaction held between them, constant memory).

- PostgreSQL: by `adbc-driver-postgresql`, which returns each batch as Arrow columns
  without a Python object per value (its libpq is linked in statically and exports
  nothing, so it shares no state with psycopg's). Each batch is then brought to the
  schema's types column by column (an Arrow cast, e.g. text to timestamp).
- SQLite: through Python's own `sqlite3`, the connection pool every other read uses, and
  each column of a batch is built once (`record_batch`: one Arrow array per column, cast
  by Arrow; no Python loop per value where the stored values already fit). Never a second
  SQLite library: one that bundles its own SQLite shares the process's POSIX file locks
  without knowing it, and closing its connection dropped the pool's locks (its copy then
  checkpointed and deleted the WAL under them, and the store was corrupted).

Where the PostgreSQL driver cannot be used (a store it cannot open) or cannot read a
batch, that batch is read as rows and converted, with the same result.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any

import pyarrow as pa
from sqlalchemy.engine import Engine

from airflow_nx1_connect.core import reads, types
from airflow_nx1_connect.core.engines import CONNECT_TIMEOUT_S, read_timeout
from airflow_nx1_connect.core.snapshots import Snapshot
from airflow_nx1_connect.core.store import BATCH_SIZE
from airflow_nx1_connect.core.types import Column

log = logging.getLogger(__name__)

_ARROW: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "utf8": pa.utf8(),
    "bool": pa.bool_(),
    "date32": pa.date32(),
    "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
}
#: What a NUMERIC field's metadata says about its text values.
NUMERIC_NOTE = "exact decimal as text: the snapshot store keeps no precision for NUMERIC"
#: Bound-value markers of the ADBC drivers' SQL (after, limit).
_PLACEHOLDERS = ("$1", "$2")
#: The `application_name` of the Arrow reader's PostgreSQL sessions (unless the URL sets one).
APPLICATION_NAME = "nx1-connect-arrow"
_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


def arrow_schema(columns: Sequence[Column]) -> pa.Schema:
    """The Arrow schema of these columns; each field's metadata names its type family."""
    fields = []
    for column in columns:
        metadata = {"nx1.type": column.type}
        if column.type == "NUMERIC":
            metadata["nx1.note"] = NUMERIC_NOTE
        fields.append(
            pa.field(column.name, _ARROW[types.TYPES[column.type].arrow], metadata=metadata)
        )
    numeric = [c.name for c in columns if c.type == "NUMERIC"]
    return pa.schema(
        fields, metadata={"nx1.numeric_as_string": ",".join(numeric)} if numeric else None
    )


def _array(column: Column, values: Sequence[Any], target: pa.DataType) -> pa.Array:
    entry = types.TYPES[column.type]
    if entry.arrow_value is not None and not types.keeps_text_of(entry.arrow_value, values):
        fn = entry.arrow_value
        values = [None if v is None else fn(v) for v in values]
    try:  # the stored values already are of the target type (ints, floats, text, ...)
        return pa.array(values, type=target)
    except (*_CAST_ERRORS, TypeError, ValueError):
        pass
    try:  # stored as another type that Arrow casts (ISO text to date, 0/1 to bool, ...)
        return pa.array(values).cast(target)
    except (*_CAST_ERRORS, TypeError):
        pass
    # Anything else (e.g. naive timestamps next to aware ones): decode each value.
    decode = entry.decode or (lambda v: v)
    return pa.array([None if v is None else decode(v) for v in values], type=target)


def record_batch(
    columns: Sequence[Column], schema: pa.Schema, rows: Sequence[Sequence[Any]]
) -> pa.RecordBatch:
    """Stored (undecoded) rows as one Arrow record batch of `schema`.

    Each column's values are taken out of the rows once, at C level (`itemgetter`), and
    made one Arrow array (transposing with `zip(*rows)` costs several times more).
    """
    arrays = [
        _array(column, list(map(itemgetter(i), rows)), field.type)
        for i, (column, field) in enumerate(zip(columns, schema, strict=True))
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def from_rows(
    columns: Sequence[Column], batches: Iterable[Sequence[Sequence[Any]]]
) -> Iterator[pa.RecordBatch]:
    """Batches of stored rows as record batches of `arrow_schema(columns)`, one by one."""
    schema = arrow_schema(columns)
    for rows in batches:
        yield record_batch(columns, schema, rows)


def conform(columns: Sequence[Column], schema: pa.Schema, table: pa.Table) -> pa.RecordBatch:
    """A table of stored values as the driver typed them, as one record batch of `schema`.

    A column already of its field's type is kept; others are cast by Arrow, and a column
    Arrow cannot cast is converted value by value as `record_batch` does.
    """
    arrays = []
    for column, chunked, field in zip(columns, table.columns, schema, strict=True):
        array = chunked.combine_chunks()
        if isinstance(array, pa.ExtensionArray):  # e.g. PostgreSQL NUMERIC: opaque text
            array = array.storage
        if array.type != field.type:
            try:
                array = array.cast(field.type)
            except _CAST_ERRORS:
                array = _array(column, array.to_pylist(), field.type)
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def iter_record_batches(
    engine: Engine,
    snapshot: Snapshot,
    columns: Sequence[Column],
    *,
    start: int = 0,
    batch_size: int = BATCH_SIZE,
) -> Iterator[pa.RecordBatch]:
    """The snapshot's rows from `start` as record batches of `arrow_schema(columns)`.

    One keyset query per batch (constant memory, no transaction held between batches),
    read by the PostgreSQL store's ADBC driver where it can be, else as rows through the
    store's own connection pool (always on SQLite); the driver's connection is closed
    when the iterator ends or is closed. A snapshot whose table is gone raises
    `SnapshotNotFound` (from the first batch on).
    """
    schema = arrow_schema(columns)
    names = tuple(c.name for c in columns)
    sql = reads.keyset_sql(engine.dialect, snapshot.table_name, names, _PLACEHOLDERS)
    reader = _DriverReader.open(engine)
    try:
        position, stop = start, snapshot.row_count
        while stop is None or position < stop:
            table = reader.fetch(sql, position, batch_size) if reader is not None else None
            if table is not None:
                if table.num_rows == 0:
                    return
                batch = conform(columns, schema, table)
            else:
                rows = reads.read_raw_rows(
                    engine, snapshot, columns, start=position, limit=batch_size
                )
                if not rows:
                    return
                batch = record_batch(columns, schema, rows)
            yield batch
            position += batch.num_rows
    finally:
        if reader is not None:
            reader.close()


class _DriverReader:
    """One autocommit ADBC connection to the store (its low-level API: no DB-API layer,
    which would import pandas), reading keyset batches as Arrow tables."""

    def __init__(self, database: Any) -> None:
        import adbc_driver_manager as adbc

        self._adbc = adbc
        self._database = database
        self._connection = adbc.AdbcConnection(database)  # ADBC connections autocommit

    @classmethod
    def open(cls, engine: Engine) -> _DriverReader | None:
        """A reader of this store, or None where the driver cannot be used."""
        url = engine.url
        backend = url.get_backend_name()
        try:
            # SQLite: never (see the module docstring); rows through `sqlite3` instead.
            if backend == "postgresql":
                import adbc_driver_postgresql

                defaults = {
                    "connect_timeout": str(CONNECT_TIMEOUT_S),
                    "application_name": APPLICATION_NAME,
                }
                url = url.update_query_dict(
                    {k: v for k, v in defaults.items() if k not in url.query}
                )
                uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
                reader = cls(adbc_driver_postgresql.connect(uri))
                timeout = read_timeout(engine)
                if timeout:  # the read engine's bound, as on its own connections
                    try:
                        for setting in ("statement_timeout", "lock_timeout"):
                            reader._execute(f"SET {setting} = {int(timeout * 1000)}")
                    except Exception:
                        reader.close()
                        raise
                return reader
        except Exception as exc:  # any failure: the row path serves the batches
            log.warning(
                "Arrow reads of the snapshot store go through rows (slower): its ADBC "
                "driver could not connect (%s).",
                type(exc).__name__,
            )
        return None

    def _execute(self, sql: str) -> None:
        statement = self._adbc.AdbcStatement(self._connection)
        try:
            statement.set_sql_query(sql)
            statement.execute_update()
        finally:
            statement.close()

    def fetch(self, sql: str, after: int, limit: int) -> pa.Table | None:
        """One keyset batch as the driver types it; None if the driver cannot read it."""
        statement = self._adbc.AdbcStatement(self._connection)
        try:
            statement.set_sql_query(sql)
            params = pa.RecordBatch.from_arrays([_int64(after), _int64(limit)], schema=_PARAMS)
            schema_capsule, array_capsule = params.__arrow_c_array__()
            statement.bind(array_capsule, schema_capsule)
            stream, _ = statement.execute_query()
            return pa.RecordBatchReader.from_stream(stream).read_all()
        except self._adbc.Error as exc:
            # A table that is gone, or a value the driver cannot type: the row path reads
            # it (or says so).
            log.debug("Arrow read of a batch fell back to rows: %s", exc)
            return None
        finally:
            statement.close()

    def close(self) -> None:
        """Close the connection and its database handle."""
        try:
            self._connection.close()
        finally:
            self._database.close()


_PARAMS = pa.schema([("after", pa.int64()), ("limit", pa.int64())])


def _int64(value: int) -> pa.Array:
    """A one-value int64 array, built from its bytes: `pa.array` on a Python list would
    import pandas (seconds, once per process) to check what the list is."""
    return pa.Array.from_buffers(pa.int64(), 1, [None, pa.py_buffer(struct.pack("=q", value))])
