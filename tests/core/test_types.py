"""The one table of column types: stored forms, read back, and JSON / CSV text."""

from __future__ import annotations

import datetime as dt
import decimal

import pytest

from airflow_nx1_connect.core import types

VALUES = {
    "TEXT": 'Crème "brûlée"; it\'s',
    "INTEGER": 2**62,
    "REAL": 2.5,
    "NUMERIC": decimal.Decimal("12345678901234567890.000000001"),
    "BOOLEAN": True,
    "DATE": dt.date(2026, 1, 2),
    "TIMESTAMP": dt.datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=dt.timezone.utc),
    "JSON": {"a": [1, "ü", None]},
}
#: What the data API sends for each value in JSON, and as CSV text.
SENT = {
    "TEXT": (VALUES["TEXT"], VALUES["TEXT"]),
    "INTEGER": (2**62, str(2**62)),
    "REAL": (2.5, "2.5"),
    "NUMERIC": ("12345678901234567890.000000001", "12345678901234567890.000000001"),
    "BOOLEAN": (True, "true"),
    "DATE": ("2026-01-02", "2026-01-02"),
    "TIMESTAMP": ("2026-01-02T03:04:05.500000Z", "2026-01-02T03:04:05.500000Z"),
    "JSON": ({"a": [1, "ü", None]}, '{"a": [1, "ü", null]}'),
}


def test_every_family_has_one_row_in_the_table():
    assert tuple(types.TYPES) == types.FAMILIES
    for entry in types.TYPES.values():
        assert set(entry.sql) == set(entry.store) == set(types.DIALECTS)


@pytest.mark.parametrize("dialect", types.DIALECTS)
@pytest.mark.parametrize("family", types.FAMILIES)
def test_stored_form_reads_back_and_encodes_as_the_api_sends_it(family, dialect):
    entry = types.TYPES[family]
    value = VALUES[family]
    stored = entry.store[dialect](value) if entry.store[dialect] else value
    if dialect == "postgresql" and family == "BOOLEAN":
        assert stored is True
    decoded = entry.decode(stored) if entry.decode else stored
    assert decoded == value
    as_json = entry.json(stored) if entry.json else stored
    as_csv = entry.csv(stored) if entry.csv else stored
    assert (as_json, str(as_csv)) == SENT[family]  # the csv module writes str() of a value


def test_timestamps_are_sent_in_utc_with_z_and_naive_ones_stay_naive():
    convert = types.TYPES["TIMESTAMP"].json
    assert convert("2026-01-02T03:04:05+00:00") == "2026-01-02T03:04:05Z"
    assert convert("2026-01-02T03:04:05.5+02:00") == "2026-01-02T01:04:05.500000Z"
    assert convert("2026-01-02T03:04:05") == "2026-01-02T03:04:05"
    assert types.TYPES["TIMESTAMP"].csv is convert


def test_json_text_that_is_not_json_is_sent_as_text():
    load = types.TYPES["JSON"].json
    assert load('{"a": [1, "ü"]}') == {"a": [1, "ü"]}
    assert load("not json") == "not json"


def test_one_json_default_for_stored_json_and_bodies():
    aware = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert types.json_default(aware) == "2026-01-02T01:04:05Z"
    assert types.json_default(dt.datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05"
    assert types.json_default(decimal.Decimal("1.10")) == "1.10"
    assert types.json_default(b"\x01\xff") == "01ff"
    stored = types.TYPES["JSON"].store["sqlite"]({"t": aware, "n": decimal.Decimal("1.10")})
    assert stored == '{"t": "2026-01-02T01:04:05Z", "n": "1.10"}'


def test_admin_preview_shows_values_as_the_api_sends_them():
    from airflow_nx1_connect.web.admin import cell

    cols = [types.Column(f, f) for f in types.FAMILIES]
    stored = [
        types.TYPES[f].store["sqlite"](VALUES[f]) if types.TYPES[f].store["sqlite"] else VALUES[f]
        for f in types.FAMILIES
    ]
    stored[types.FAMILIES.index("BOOLEAN")] = 1  # SQLite keeps booleans as 0/1
    (row,) = types.convert_rows([stored], types.converters(cols, "json"))
    shown = dict(zip(types.FAMILIES, map(cell, row), strict=True))
    assert shown["BOOLEAN"] == "true"
    assert shown["NUMERIC"] == "12345678901234567890.000000001"
    assert shown["TIMESTAMP"] == "2026-01-02T03:04:05.500000Z"
    assert shown["JSON"] == '{"a": [1, "ü", null]}'
    assert shown["TEXT"] == VALUES["TEXT"]
    assert shown["DATE"] == "2026-01-02"
