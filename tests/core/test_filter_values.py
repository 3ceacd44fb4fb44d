"""core.types.filter_value: URL text -> the value a stored column is compared with."""

from __future__ import annotations

import datetime as dt
import decimal

import pytest

from airflow_nx1_connect.core import types


@pytest.mark.parametrize(
    ("family", "text", "dialect", "expected"),
    [
        ("INTEGER", "-42", "sqlite", -42),
        ("INTEGER", "+7", "postgresql", 7),
        ("REAL", "1e3", "sqlite", 1000.0),
        ("REAL", ".5", "postgresql", 0.5),
        ("NUMERIC", "12.50", "postgresql", decimal.Decimal("12.50")),
        ("NUMERIC", "12.50", "sqlite", 12.5),  # compared with CAST(col AS REAL) there
        ("BOOLEAN", "TRUE", "sqlite", True),
        ("DATE", "2026-01-31", "postgresql", dt.date(2026, 1, 31)),
        ("DATE", "2026-01-31", "sqlite", "2026-01-31"),
        ("TIMESTAMP", "2026-01-31T13:00:00+01:00", "sqlite", "2026-01-31T12:00:00+00:00"),
        ("TIMESTAMP", "2026-01-31T12:00:00Z", "postgresql", "2026-01-31T12:00:00+00:00"),
        ("TIMESTAMP", "2026-01-31 12:00", "sqlite", "2026-01-31T12:00:00"),
        ("JSON", '{"a":1}', "sqlite", '{"a": 1}'),
        ("TEXT", "x,y", "postgresql", "x,y"),
    ],
)
def test_parsed_as_stored(family: str, text: str, dialect: str, expected: object) -> None:
    value = types.filter_value(family, text, dialect)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("family", "text"),
    [
        ("INTEGER", "1.0"),
        ("INTEGER", "9223372036854775808"),
        ("INTEGER", "1_000"),
        ("REAL", "nan"),
        ("REAL", "inf"),
        ("REAL", "1e400"),
        ("REAL", "1_0"),
        ("NUMERIC", "1e1000"),
        ("NUMERIC", "abc"),
        ("BOOLEAN", "1"),
        ("DATE", "2026-02-30"),
        ("DATE", "20260101"),
        ("TIMESTAMP", "yesterday"),
        ("TIMESTAMP", "0001-01-01T00:00+01:00"),
        ("JSON", "{"),
    ],
)
def test_wrong_type_says_what_to_send(family: str, text: str) -> None:
    with pytest.raises(ValueError, match=r"\w+ ") as info:
        types.filter_value(family, text, "sqlite")
    assert (
        "e.g." in str(info.value)
        or "true or false" in str(info.value)
        or "64 bits" in str(info.value)
    )


def test_every_family_has_a_filter_entry() -> None:
    assert tuple(types.FILTERS) == types.FAMILIES
    assert types.compare_cast("NUMERIC", "sqlite") == "REAL"
    assert types.compare_cast("NUMERIC", "postgresql") is None
    assert types.order_collation("TEXT", "postgresql") == "C"
