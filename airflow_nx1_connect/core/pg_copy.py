"""Bulk load into a PostgreSQL snapshot table with `COPY`, through public psycopg API only.

`copy_rows` sends row batches with `cursor.copy`, `Copy.set_types` and `Copy.write_row`
(called for a whole batch by C-level `map`s, no Python loop per row). A batch goes in
binary format (cheaper to build here and to parse in the server) when each of its columns
holds only the Python types `BINARY_SAFE` lists for its family (a C-level check per
column; exact types, so a bool is not an int). Binary dumpers take other values
differently from the server (the str 'f' would be true, True an int8 1), so a batch with
any such value goes in text format, where the server parses each value's text and accepts
or rejects it as it always did. Consecutive batches of one format share one `COPY`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import groupby
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from airflow_nx1_connect.core import types
from airflow_nx1_connect.core.types import Column

if TYPE_CHECKING:
    import psycopg

#: Per family, the Python types whose binary COPY form (psycopg's dumper for the store
#: type) is exactly what PostgreSQL makes of their text form; None is NULL in both. TEXT,
#: TIMESTAMP and JSON are absent: their values are all `str` once stored-form encoded,
#: which the `text` dumper takes as the server would. One difference: a signalling
#: `Decimal('sNaN')` is stored as NaN, where the server refuses its text.
BINARY_SAFE: dict[str, tuple[type, ...]] = {
    "INTEGER": (int,),
    "REAL": (float, int),
    "NUMERIC": (decimal.Decimal, int),
    "BOOLEAN": (bool,),
    "DATE": (dt.date,),
}

_concat: Callable[..., tuple[Any, ...]] = tuple.__add__


def copy_rows(
    cur: psycopg.Cursor[Any],
    copy_sql: str,
    columns: Sequence[Column],
    batches: Iterable[Sequence[Sequence[Any]]],
    first: int,
    on_batch: Callable[[int], None],
) -> int:
    """`COPY` stored-form row batches, each row numbered from `first`; returns the rows sent.

    `copy_sql` is `COPY table (row number, columns...) FROM STDIN`; `on_batch(n)` is called
    after each batch of n rows.
    """
    pg_types = ["bigint", *(types.sql_type(c.type, "postgresql") for c in columns)]
    checks = [
        (itemgetter(i), frozenset((type(None), *BINARY_SAFE[c.type])))
        for i, c in enumerate(columns)
        if c.type in BINARY_SAFE
    ]

    def binary(rows: Sequence[Sequence[Any]]) -> bool:
        return all(set(map(type, map(get, rows))) <= ok for get, ok in checks)

    number = first
    for is_binary, group in groupby(batches, key=binary):
        with cur.copy(copy_sql + (" (FORMAT BINARY)" if is_binary else "")) as copy:
            if is_binary:
                copy.set_types(pg_types)
            write_row = copy.write_row
            for rows in group:
                if not isinstance(rows[0], tuple):
                    rows = list(map(tuple, rows))
                # (number,) + row for each row, written at C level.
                numbered = map(_concat, zip(range(number, number + len(rows))), rows)
                try:
                    deque(map(write_row, numbered), maxlen=0)
                except (OverflowError, struct.error) as exc:  # (C, Python psycopg dumpers)
                    # An int beyond bigint or double precision.
                    raise OverflowError(_out_of_range(columns, rows, number, exc)) from exc
                number += len(rows)
                on_batch(len(rows))
    return number - first


def _out_of_range(
    columns: Sequence[Column], rows: Sequence[Sequence[Any]], first: int, exc: BaseException
) -> str:
    """Which value of a batch (rows numbered from `first`) its column's type cannot hold.

    Only on the error path: the binary dumper's own message names no column or value.
    """
    for number, row in enumerate(rows, start=first):
        for column, value in zip(columns, row, strict=False):
            if type(value) is not int or column.type not in ("INTEGER", "REAL"):
                continue
            try:
                if column.type == "INTEGER":
                    value.to_bytes(8, "big", signed=True)
                else:
                    float(value)
            except OverflowError:
                return (
                    f"Column {column.name!r}, row {number}: {value} is out of range for "
                    f"{types.sql_type(column.type, 'postgresql')} ({exc})"
                )
    return str(exc)
