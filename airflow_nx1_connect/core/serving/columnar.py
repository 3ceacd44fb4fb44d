"""Columnar bodies of the data API: Arrow IPC stream and Parquet, from stored values.

Each column's Arrow type comes from the one type table (`core.types`, its `arrow` and
`arrow_value` entries). Rows are read in keyset batches (`core.reads`) and each batch
becomes one Arrow record batch (in Parquet, one row group) that is written and sent
before the next batch is read, so a whole snapshot streams in constant server memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_nx1_connect.core import types
from airflow_nx1_connect.core.types import Column

ARROW_STREAM = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"

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
    if entry.arrow_value is not None:
        fn = entry.arrow_value
        values = [None if v is None else fn(v) for v in values]
    try:  # the stored values already are of the target type (ints, floats, text, ...)
        return pa.array(values, type=target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        pass
    try:  # stored as another type that Arrow casts (ISO text to date, 0/1 to bool, ...)
        return pa.array(values).cast(target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError):
        pass
    # Anything else (e.g. naive timestamps next to aware ones): decode each value.
    decode = entry.decode or (lambda v: v)
    return pa.array([None if v is None else decode(v) for v in values], type=target)


def record_batch(
    columns: Sequence[Column], schema: pa.Schema, rows: Sequence[Sequence[Any]]
) -> pa.RecordBatch:
    """Stored (undecoded) rows as one Arrow record batch of `schema`."""
    by_column = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    arrays = [
        _array(column, values, field.type)
        for column, values, field in zip(columns, by_column, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class _Chunks:
    """A write-only file that keeps what is written until `take` hands it on."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def columnar_stream(
    fmt: str, columns: Sequence[Column], batches: Iterable[Sequence[Sequence[Any]]]
) -> Iterator[bytes]:
    """`fmt` (`arrow` or `parquet`) bytes of these row batches, one batch at a time.

    Arrow: an IPC stream, one record batch per row batch. Parquet: a file, one row group
    per row batch (the footer comes last). An empty input is a valid empty stream / file.
    """
    schema = arrow_schema(columns)
    sink = _Chunks()
    writer: Any
    if fmt == "arrow":
        writer = pa.ipc.new_stream(sink, schema)
    else:
        writer = pq.ParquetWriter(sink, schema, compression="snappy")
    try:
        for rows in batches:
            if rows:
                writer.write_batch(record_batch(columns, schema, rows))
                yield sink.take()
    finally:
        writer.close()
    yield sink.take()
