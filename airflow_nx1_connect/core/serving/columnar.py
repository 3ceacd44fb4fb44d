"""Columnar bodies of the data API: Arrow IPC stream and Parquet, from record batches.

The batches come from `core.arrow` (a whole snapshot read straight into Arrow, or rows
converted). Each record batch (in Parquet, one row group) is written and sent before the
next is read, so a whole snapshot streams in constant server memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_nx1_connect.core import arrow
from airflow_nx1_connect.core.closing import close
from airflow_nx1_connect.core.types import Column

ARROW_STREAM = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"


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
    fmt: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]
) -> Iterator[bytes]:
    """`fmt` (`arrow` or `parquet`) bytes of these record batches, one batch at a time.

    Arrow: an IPC stream, one record batch per batch. Parquet: a file, one row group per
    batch (the footer comes last). An empty input is a valid empty stream / file. The
    batches' iterator is closed when the stream ends or is closed (its query with it).
    """
    sink = _Chunks()
    writer: Any
    if fmt == "arrow":
        writer = pa.ipc.new_stream(sink, schema)
    else:
        writer = pq.ParquetWriter(sink, schema, compression="snappy")
    try:
        for batch in batches:
            if batch.num_rows:
                writer.write_batch(batch)
                yield sink.take()
    finally:
        writer.close()
        close(batches)
    yield sink.take()


def rows_stream(
    fmt: str, columns: Sequence[Column], row_batches: Iterable[Sequence[Sequence[Any]]]
) -> Iterator[bytes]:
    """`columnar_stream` of batches of stored rows (made record batches by `core.arrow`)."""
    return columnar_stream(fmt, arrow.arrow_schema(columns), arrow.from_rows(columns, row_batches))


def started(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks` with its first chunk made now, so that an error in reading the first batch
    (e.g. a snapshot no longer retained) is raised here, before any byte is sent."""
    first = next(chunks, None)
    return _resumed(first, chunks)


def _resumed(first: bytes | None, chunks: Iterator[bytes]) -> Iterator[bytes]:
    try:
        if first is not None:
            yield first
        yield from chunks
    finally:
        close(chunks)
