"""ISO 8601 times read the same on every supported Python (3.10 reads fewer forms natively)."""

from __future__ import annotations

import datetime as dt
import sys

import pytest

from airflow_nx1_connect.core import clock

UTC = dt.timezone.utc
READ = [
    ("2026-01-31T12:00:00Z", dt.datetime(2026, 1, 31, 12, tzinfo=UTC)),
    ("2026-01-31T12:00Z", dt.datetime(2026, 1, 31, 12, tzinfo=UTC)),
    ("2026-01-31T12Z", dt.datetime(2026, 1, 31, 12, tzinfo=UTC)),
    ("2026-01-31 12:00:00.5", dt.datetime(2026, 1, 31, 12, 0, 0, 500000)),
    ("2026-01-31T12:00:00,25", dt.datetime(2026, 1, 31, 12, 0, 0, 250000)),
    (
        "2026-01-31T12:00:00.1234567+01:00",
        dt.datetime(2026, 1, 31, 12, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1))),
    ),
    (
        "2026-01-31T12:00+0130",
        dt.datetime(2026, 1, 31, 12, tzinfo=dt.timezone(dt.timedelta(hours=1, minutes=30))),
    ),
    (
        "2026-01-31T12:00-05",
        dt.datetime(2026, 1, 31, 12, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    ),
    ("2026-01-31T12", dt.datetime(2026, 1, 31, 12)),
    ("2026-01-31", dt.datetime(2026, 1, 31)),
    ("2026-01-31T12:00:00.123456+00:00", dt.datetime(2026, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)),
]
NOT_READ = ["2026-01-31Z", "2026-01-31T12:00:00z", "2026-13-01T00:00Z", "2026-01-31T25:00Z", "soon"]


@pytest.mark.parametrize(("text", "expected"), READ)
def test_parse_datetime_reads_what_python_311_reads(text, expected):
    assert clock.parse_datetime(text) == expected
    assert clock.parse_datetime(text).utcoffset() == expected.utcoffset()
    # The Python 3.10 path gives the same value on whatever Python runs this.
    assert clock._fromisoformat_310(text) == expected
    if sys.version_info >= (3, 11):
        assert dt.datetime.fromisoformat(text) == expected


@pytest.mark.parametrize("text", NOT_READ)
def test_parse_datetime_refuses_what_python_311_refuses(text):
    with pytest.raises(ValueError):
        clock.parse_datetime(text)
    with pytest.raises(ValueError):
        clock._fromisoformat_310(text)
