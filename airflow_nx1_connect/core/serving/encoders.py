"""Encoders of the data API's bodies: JSON, CSV and NDJSON, from stored values.

Rows are read as stored (`reads.read_raw_rows`) and turned into text by the converters of
the one type table (`core.types`), so every format, and the admin view's preview, shows a
value the same way. Whole-snapshot CSV and NDJSON are generators of encoded batches. CSV
alone may escape formula cells for spreadsheets (`[nx1_connect] csv_escape_formulas`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any

import msgspec

from airflow_nx1_connect.core import types
from airflow_nx1_connect.core.settings import get_settings
from airflow_nx1_connect.core.types import Column

#: msgspec's JSON encoder (several times faster than the json module on page bodies): compact
#: UTF-8, NaN and infinity as null, Decimal as text; anything else through `json_default`.
_ENCODER = msgspec.json.Encoder(enc_hook=types.json_default)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; NaN and infinity (which JSON lacks) become null."""
    return _ENCODER.encode(value)


def csv_header(names: Sequence[str]) -> bytes:
    """The CSV header line."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(names)
    return buffer.getvalue().encode()


#: First characters that make a spreadsheet read a cell as a formula (`csv_escape_formulas`).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def escape_formula(value: Any) -> Any:
    """A text that a spreadsheet would run as a formula, with a leading `'` (shown as text)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_encoder(
    columns: Sequence[Column], escape_formulas: bool | None = None
) -> Callable[[Iterable[Sequence[Any]]], bytes]:
    """A CSV encoder of stored (undecoded) rows of these columns (see `core.types`).

    With `escape_formulas` (default: `[nx1_connect] csv_escape_formulas`, False), TEXT cells
    that begin with =, +, -, @, a tab or a carriage return get a leading `'`.
    """
    if escape_formulas is None:
        escape_formulas = get_settings().csv_escape_formulas
    converters = types.converters(columns, "csv")
    if escape_formulas:
        converters += [(i, escape_formula) for i, c in enumerate(columns) if c.type == "TEXT"]

    def encode(rows: Iterable[Sequence[Any]]) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        if not isinstance(rows, Sequence):
            rows = list(rows)
        # `decimal_text` changes only values whose str() (what the csv module writes) has
        # an exponent; None is "None", no capital E either.
        todo = [
            (i, convert)
            for i, convert in converters
            if convert is not types.decimal_text
            or "E" in "".join(map(str, map(itemgetter(i), rows)))
        ]
        writer.writerows(types.convert_columns(rows, todo))
        return buffer.getvalue().encode()

    return encode


def json_converter(
    columns: Sequence[Column],
) -> Callable[[Sequence[Sequence[Any]]], list[list[Any]]]:
    """Stored (undecoded) rows -> lists of the JSON values the API sends (see `core.types`)."""
    converters = types.converters(columns, "json")

    def convert(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
        return types.convert_rows(rows, converters)

    return convert


def shaped(names: Sequence[str], rows: list[list[Any]], shape: str) -> list[Any]:
    """JSON rows as sent in `data.data`: lists (`shape=arrays`) or, for `shape=objects`,
    objects `{"<column>": value}` with their keys in column order."""
    if shape != "objects":
        return rows
    return [dict(zip(names, row, strict=True)) for row in rows]


def ndjson_rows(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """Rows as NDJSON lines, one JSON object per row."""
    return b"".join(dumps(dict(zip(names, row, strict=True))) + b"\n" for row in rows)


def stream(
    fmt: str,
    names: Sequence[str],
    first: Sequence[Sequence[Any]] | None,
    batches: Iterator[Sequence[Sequence[Any]]],
    csv_rows: Callable[[Iterable[Sequence[Any]]], bytes],
    json_values: Callable[[Sequence[Sequence[Any]]], list[list[Any]]],
) -> Iterator[bytes]:
    """The whole snapshot as CSV or NDJSON, one encoded batch at a time."""
    if fmt == "csv":
        yield csv_header(names)
    encode = csv_rows if fmt == "csv" else (lambda rows: ndjson_rows(names, json_values(rows)))
    if first is None:
        return
    yield encode(first)
    for batch in batches:
        yield encode(batch)
