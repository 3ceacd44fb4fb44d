"""Column types: the one table that says how each type is stored, read back and sent.

A snapshot column has one of eight type *families* (`FAMILIES`). For each, `TYPES` holds:

- `sql`: the column's SQL type in each store dialect (`sqlite`, `postgresql`);
- `store`: how a Python value from a source cursor is turned into what is stored, per
  dialect (None: the driver takes the value as it is);
- `decode`: how a stored value is read back as the Python value it was (None: as is);
- `json`: how a stored value becomes the JSON value the data API sends (None: as is);
- `csv`: how a stored value becomes CSV text (None: the csv module writes it as is);
- `arrow`: the Arrow type of the column in `format=arrow` / `format=parquet` (see
  `ARROW_TYPES`), and `arrow_value`: how a stored value is turned into a value of that type
  before an Arrow array is built (None: stored values are cast by Arrow, column-wise).

Stored forms: SQLite keeps NUMERIC, DATE, TIMESTAMP and JSON as text and BOOLEAN as 0/1;
PostgreSQL keeps NUMERIC as `numeric`, DATE as `date`, BOOLEAN as `boolean`, TIMESTAMP and
JSON as text (so a timestamp keeps the offset the source gave it). The `json` and `csv`
converters accept a stored value of either dialect, so readers never branch on the store.

Every converter is only called for non-NULL values; NULL is JSON null and an empty CSV
field. NUMERIC is exact text in plain notation in JSON (a JSON number would lose digits;
`decimal_text`: `0.0000001`, as PostgreSQL writes it, in every format), BOOLEAN is
true/false in both, DATE/TIMESTAMP are ISO 8601 (aware times in UTC with `Z`). REAL NaN
and infinity have no JSON number: they are null in JSON and `nan`/`inf` in CSV.

In Arrow and Parquet, NUMERIC is exact decimal text (utf8): the store keeps no precision
for it, so no decimal128 type fits every value; the field's metadata says so. JSON is its
text (utf8); TIMESTAMP is timestamp[us, UTC], naive source times read as UTC.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from airflow_nx1_connect.core.clock import iso, parse_datetime

Convert = Callable[[Any], Any]

#: The Arrow types the table names (built by `core.arrow`).
ARROW_TYPES = ("int64", "float64", "utf8", "bool", "date32", "timestamp[us, UTC]")

FAMILIES = ("TEXT", "INTEGER", "REAL", "NUMERIC", "BOOLEAN", "DATE", "TIMESTAMP", "JSON")
DIALECTS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Column:
    """A snapshot column: its name and type family (one of FAMILIES)."""

    name: str
    type: str


@dataclass(frozen=True)
class ColumnType:
    """How one type family is stored, read back, and written as JSON and CSV."""

    family: str
    sql: Mapping[str, str]
    store: Mapping[str, Convert | None]
    decode: Convert | None
    json: Convert | None
    csv: Convert | None
    arrow: str = "utf8"
    arrow_value: Convert | None = None


# ---------------------------------------------------------------------------------------
# Converters
# ---------------------------------------------------------------------------------------


def decimal_text(value: Any) -> str:
    """A NUMERIC value as exact text in plain notation (`0.0000001`, not `1E-7`).

    PostgreSQL writes numeric this way, so its own text (which the Arrow reader gets) and a
    Decimal read by psycopg give the same characters; other values as their text.
    """
    if isinstance(value, str):
        return value
    text = str(value)
    if "E" in text and isinstance(value, decimal.Decimal):  # str() uses an exponent
        return format(value, "f")
    return text


def json_default(value: Any) -> Any:
    """`json.dumps` `default=` for every value that JSON has no type for."""
    if isinstance(value, decimal.Decimal):
        return decimal_text(value)
    if isinstance(value, dt.datetime):
        return iso(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _iso_text(value: Any) -> str:
    """A date, time or datetime as ISO text (anything else as its text)."""
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return value if isinstance(value, str) else str(value)


def _timestamp_text(value: Any) -> Any:
    """A stored timestamp as sent: aware ones in UTC with a `Z`, naive ones as stored."""
    if not isinstance(value, str):
        return json_default(value)
    if value.endswith("+00:00"):
        return value[:-6] + "Z"
    if len(value) > 19 and value[-6] in "+-" and value[-3] == ":":
        try:
            return iso(parse_datetime(value))
        except ValueError:
            return value
    return value


def _json_dump(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=json_default)


def _json_load(value: Any) -> Any:
    """A JSON column's stored text as the value it holds (the text itself if not JSON)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _decimal(value: Any) -> decimal.Decimal:
    return value if isinstance(value, decimal.Decimal) else decimal.Decimal(str(value))


def _date(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)


def _datetime(value: Any) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else parse_datetime(value)


def _bool_text(value: Any) -> str:
    return "true" if value else "false"


def _both(convert: Convert | None) -> dict[str, Convert | None]:
    return dict.fromkeys(DIALECTS, convert)


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------

TYPES: dict[str, ColumnType] = {
    t.family: t
    for t in (
        ColumnType(
            "TEXT",
            {"sqlite": "TEXT", "postgresql": "text"},
            _both(_text),
            None,
            None,
            None,
            "utf8",
        ),
        ColumnType(
            "INTEGER",
            {"sqlite": "INTEGER", "postgresql": "bigint"},
            _both(None),
            None,
            None,
            None,
            "int64",
        ),
        ColumnType(
            "REAL",
            {"sqlite": "REAL", "postgresql": "double precision"},
            _both(None),
            None,
            None,
            None,
            "float64",
        ),
        ColumnType(
            "NUMERIC",
            {"sqlite": "TEXT", "postgresql": "numeric"},
            {"sqlite": decimal_text, "postgresql": None},
            _decimal,
            decimal_text,
            decimal_text,
            "utf8",
            decimal_text,
        ),
        ColumnType(
            "BOOLEAN",
            {"sqlite": "INTEGER", "postgresql": "boolean"},
            _both(None),
            bool,
            bool,
            _bool_text,
            "bool",
        ),
        ColumnType(
            "DATE",
            {"sqlite": "TEXT", "postgresql": "date"},
            {"sqlite": _iso_text, "postgresql": None},
            _date,
            _iso_text,
            _iso_text,
            "date32",
        ),
        ColumnType(
            "TIMESTAMP",
            {"sqlite": "TEXT", "postgresql": "text"},
            _both(_iso_text),
            _datetime,
            _timestamp_text,
            _timestamp_text,
            "timestamp[us, UTC]",
        ),
        ColumnType(
            "JSON",
            {"sqlite": "TEXT", "postgresql": "text"},
            _both(_json_dump),
            _json_load,
            _json_load,
            None,
            "utf8",
            _json_dump,
        ),
    )
}
assert tuple(TYPES) == FAMILIES
#: Converters that return text as it is: a column of text and NULLs needs none of them.
_KEEPS_TEXT = frozenset({_text, decimal_text, _iso_text, _json_dump})
_TEXT_OR_NULL = frozenset({str, type(None)})
# `convert_columns` skips text-only columns for every `store` converter (SQLite's text).
assert all(fn in _KEEPS_TEXT for t in TYPES.values() for fn in t.store.values() if fn)
assert all(t.arrow in ARROW_TYPES for t in TYPES.values())

#: The JSON Schema (OpenAPI 3.1) of each family's JSON values, as `json` above sends them:
#: NUMERIC is exact text (`decimal`), DATE and TIMESTAMP ISO 8601 text, JSON any value. The
#: per-data-API OpenAPI document (`core.openapi`) types row objects with it, every column
#: nullable (`core.openapi.nullable_json_schema`).
JSON_SCHEMAS: dict[str, dict[str, str]] = {
    "TEXT": {"type": "string"},
    "INTEGER": {"type": "integer"},
    "REAL": {"type": "number"},
    "NUMERIC": {"type": "string", "format": "decimal"},
    "BOOLEAN": {"type": "boolean"},
    "DATE": {"type": "string", "format": "date"},
    "TIMESTAMP": {"type": "string", "format": "date-time"},
    "JSON": {},
}
assert tuple(JSON_SCHEMAS) == FAMILIES


def keeps_text_of(fn: Convert, values: Iterable[Any]) -> bool:
    """True when converter `fn` would return `values` unchanged: it leaves text as it is
    and they are all text or NULL (checked at C level, no Python loop per value)."""
    return fn in _KEEPS_TEXT and set(map(type, values)) <= _TEXT_OR_NULL


def sql_type(family: str, dialect: str) -> str:
    """The SQL type of a column of `family` in a store of `dialect`."""
    return TYPES[family].sql[dialect]


def converters(
    columns: Sequence[Column], what: str, dialect: str | None = None
) -> list[tuple[int, Convert]]:
    """(position, converter) for the columns whose `what` converter is not None.

    `what` is `store` (needs `dialect`), `decode`, `json`, `csv` or `arrow_value`.
    """
    out = []
    for i, column in enumerate(columns):
        entry = TYPES[column.type]
        fn = entry.store[dialect or ""] if what == "store" else getattr(entry, what)
        if fn is not None:
            out.append((i, fn))
    return out


def convert_columns(
    rows: Sequence[Sequence[Any]], todo: Sequence[tuple[int, Convert]]
) -> Sequence[Sequence[Any]]:
    """Rows with `todo`'s converters applied to non-NULL values, a column at a time;
    `rows` itself when no column needs it.

    A converter that leaves text as it is (every `store` converter, `decimal_text`,
    `_iso_text`) is skipped for a column holding only text and NULLs, as SQLite stores
    NUMERIC and DATE. The check runs at C level (`map`), so a batch that needs nothing
    costs no Python loop per row.
    """
    if not todo or not rows:
        return rows
    needed = [(i, fn) for i, fn in todo if not keeps_text_of(fn, map(itemgetter(i), rows))]
    if not needed:
        return rows
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True))
    for i, fn in needed:
        columns[i] = [None if v is None else fn(v) for v in columns[i]]
    return list(zip(*columns, strict=True))


def convert_rows(
    rows: Sequence[Sequence[Any]], todo: Sequence[tuple[int, Convert]]
) -> list[list[Any]]:
    """Rows as lists, with `todo`'s converters applied to non-NULL values."""
    out = []
    for row in rows:
        values = list(row)
        for i, fn in todo:
            if values[i] is not None:
                values[i] = fn(values[i])
        out.append(values)
    return out


# ---------------------------------------------------------------------------------------
# Telling a column's family from a source
# ---------------------------------------------------------------------------------------

# PostgreSQL type OIDs (psycopg2 and psycopg give these as type_code).
_PG_OIDS = {
    16: "BOOLEAN",
    20: "INTEGER",
    21: "INTEGER",
    23: "INTEGER",
    26: "INTEGER",
    700: "REAL",
    701: "REAL",
    1700: "NUMERIC",
    1082: "DATE",
    1114: "TIMESTAMP",
    1184: "TIMESTAMP",
    114: "JSON",
    3802: "JSON",
    25: "TEXT",
    1043: "TEXT",
    1042: "TEXT",
    19: "TEXT",
    2950: "TEXT",
}
# MySQL / MariaDB protocol column type codes (the same in every MySQL driver's
# `description`); only used for columns that are NULL all through the first batch.
_MYSQL_CODES = {
    0: "NUMERIC",  # DECIMAL
    246: "NUMERIC",  # NEWDECIMAL
    1: "INTEGER",  # TINY (TINYINT(1) too: drivers give ints, so INTEGER)
    2: "INTEGER",
    3: "INTEGER",
    9: "INTEGER",
    8: "INTEGER",
    13: "INTEGER",  # YEAR
    4: "REAL",
    5: "REAL",
    7: "TIMESTAMP",
    12: "TIMESTAMP",  # DATETIME
    10: "DATE",
    14: "DATE",
    245: "JSON",
}
_MYSQL_DIALECTS = frozenset({"mysql", "mariadb"})
_NAME_FAMILIES = [
    ("bool", "BOOLEAN"),
    ("bigint", "INTEGER"),
    ("smallint", "INTEGER"),
    ("tinyint", "INTEGER"),
    ("int", "INTEGER"),
    ("double", "REAL"),
    ("float", "REAL"),
    ("real", "REAL"),
    ("decimal", "NUMERIC"),
    ("numeric", "NUMERIC"),
    ("timestamp", "TIMESTAMP"),
    ("datetime", "TIMESTAMP"),
    ("date", "DATE"),
    ("json", "JSON"),
]


def family_from_type_code(type_code: Any, dialect: str | None = None) -> str | None:
    """A type family from a DB-API `cursor.description` type code, when it can be told."""
    if type_code is None:
        return None
    if isinstance(type_code, int) and not isinstance(type_code, bool):
        if dialect in ("postgres", "postgresql"):
            return _PG_OIDS.get(type_code)
        if dialect in _MYSQL_DIALECTS:
            return _MYSQL_CODES.get(type_code)
        return None
    name = str(getattr(type_code, "name", type_code)).lower()
    for needle, family in _NAME_FAMILIES:
        if needle in name:
            return family
    if any(s in name for s in ("char", "text", "string", "uuid")):
        return "TEXT"
    return None


def family_of_value(value: Any) -> str | None:
    """The type family of one Python value (None for None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "INTEGER"
    if isinstance(value, float):
        return "REAL"
    if isinstance(value, decimal.Decimal):
        return "NUMERIC"
    if isinstance(value, dt.datetime):
        return "TIMESTAMP"
    if isinstance(value, dt.date):
        return "DATE"
    if isinstance(value, dict | list):
        return "JSON"
    return "TEXT"


def widen(a: str | None, b: str | None) -> str | None:
    """The family that holds values of both `a` and `b` (None: no value seen yet)."""
    if a is None or a == b:
        return b
    if b is None:
        return a
    if {a, b} == {"INTEGER", "REAL"}:
        return "REAL"
    if {a, b} <= {"INTEGER", "NUMERIC"}:
        return "NUMERIC"
    return "TEXT"


# ---------------------------------------------------------------------------------------
# Filter values: text from a URL -> the value a stored column is compared with
# ---------------------------------------------------------------------------------------

_INTEGER_RE = re.compile(r"^[+-]?[0-9]{1,19}$")
# Decimal notation with an optional exponent of at most 3 digits (keeps values inside what
# PostgreSQL's numeric and double precision hold, so a filter never overflows the store).
_NUMBER_RE = re.compile(
    r"^[+-]?([0-9]{1,100}(\.[0-9]{0,100})?|\.[0-9]{1,100})([eE][+-]?[0-9]{1,3})?$"
)
_DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_TIMESTAMP_RE = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?$"
)


def _parse_integer(text: str) -> int:
    if not _INTEGER_RE.match(text):
        raise ValueError("a whole number, e.g. 42")
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError("a whole number that fits in 64 bits")
    return value


def _parse_real(text: str) -> float:
    value = float(text) if _NUMBER_RE.match(text) else math.nan
    if not math.isfinite(value):
        raise ValueError("a finite number, e.g. 2.5 or 1e3")
    return value


def _parse_numeric(text: str) -> decimal.Decimal:
    if not _NUMBER_RE.match(text):
        raise ValueError("a decimal number, e.g. 12.50")
    return decimal.Decimal(text)


def _parse_boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise ValueError("true or false")
    return lowered == "true"


def _parse_date(text: str) -> dt.date:
    try:
        if _DATE_RE.match(text):
            return dt.date.fromisoformat(text)
    except ValueError:
        pass
    raise ValueError("a date YYYY-MM-DD, e.g. 2026-01-31")


def _parse_timestamp(text: str) -> dt.datetime:
    try:
        value = parse_datetime(text) if _TIMESTAMP_RE.match(text) else None
        # Stored as ISO text; aware values are compared in UTC (see FilterType).
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
    except (ValueError, OverflowError):  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
        value = None
    if value is None:
        raise ValueError("an ISO 8601 timestamp, e.g. 2026-01-31T12:00:00Z")
    return value


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError('a JSON value, e.g. {"a": 1} or "text"') from None


@dataclass(frozen=True)
class FilterType:
    """How a type family is filtered and sorted.

    `parse`: URL text -> Python value (ValueError saying what was expected); the value is
    then bound as the store keeps it (`store` of TYPES), except where `cast` names a SQL
    type that the stored column is cast to for comparing and sorting (SQLite keeps NUMERIC
    as text, so it is compared as a number there, without an index); `bind` then turns the
    value into what is compared with the cast column. `ordered`: gt/gte/lt/lte allowed.
    `textual`: `like` allowed (stored as text on every store). `collate`: the collation of
    ordered comparisons and sorts per dialect, so text orders by code point on every store.
    """

    parse: Convert
    cast: Mapping[str, str | None]
    bind: Mapping[str, Convert | None]
    ordered: bool
    textual: bool
    collate: Mapping[str, str] = field(default_factory=dict)


FILTERS: dict[str, FilterType] = {
    "TEXT": FilterType(str, {}, {}, True, True, {"postgresql": "C"}),
    "INTEGER": FilterType(_parse_integer, {}, {}, True, False),
    "REAL": FilterType(_parse_real, {}, {}, True, False),
    "NUMERIC": FilterType(_parse_numeric, {"sqlite": "REAL"}, {"sqlite": float}, True, False),
    "BOOLEAN": FilterType(_parse_boolean, {}, {}, True, False),
    "DATE": FilterType(_parse_date, {}, {}, True, False),
    # Timestamps are stored as ISO text: values with the same offset (UTC, or none) order
    # correctly as text, which is how sources give them in practice.
    "TIMESTAMP": FilterType(_parse_timestamp, {}, {}, True, False, {"postgresql": "C"}),
    "JSON": FilterType(_parse_json, {}, {}, False, True, {"postgresql": "C"}),
}
assert tuple(FILTERS) == FAMILIES


def filter_value(family: str, text: str, dialect: str) -> Any:
    """The value a filter's URL text is compared with in a `family` column of `dialect`.

    Raises ValueError with what was expected when `text` is not a value of that type.
    """
    entry = FILTERS[family]
    value = entry.parse(text)
    if entry.cast.get(dialect):
        convert = entry.bind.get(dialect)
    else:
        convert = TYPES[family].store.get(dialect)
    return convert(value) if convert is not None else value


def compare_cast(family: str, dialect: str) -> str | None:
    """The SQL type a stored `family` column is cast to for comparing and sorting, if any."""
    return FILTERS[family].cast.get(dialect)


def order_collation(family: str, dialect: str) -> str | None:
    """The collation of ordered comparisons and sorts of a `family` column, if any."""
    return FILTERS[family].collate.get(dialect)
