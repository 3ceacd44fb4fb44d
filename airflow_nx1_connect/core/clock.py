"""Time helpers: the one place that says what "now" is and how times are written."""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import sys


def utcnow() -> dt.datetime:
    """Now, as an aware UTC datetime."""
    return dt.datetime.now(dt.timezone.utc)


def as_utc(value: dt.datetime) -> dt.datetime:
    """An aware UTC datetime (naive values are taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 UTC text with a `Z`, or None."""
    if value is None:
        return None
    return as_utc(value).isoformat().replace("+00:00", "Z")


def http_date(value: dt.datetime) -> str:
    """An HTTP date (RFC 9110 IMF-fixdate), e.g. for `Last-Modified`."""
    return email.utils.format_datetime(as_utc(value), usegmt=True)


# `datetime.fromisoformat` reads more of ISO 8601 from Python 3.11 on: a `Z`, any number of
# fraction digits (a comma too), offsets `+HH` and `+HHMM`. On 3.10 the extended forms that
# 3.11 reads are rewritten to the one form 3.10 reads; anything else is left to raise as it does.
_EXTENDED_ISO = re.compile(
    r"(?P<head>[0-9]{4}-[0-9]{2}-[0-9]{2}.[0-9]{2}(?::[0-9]{2}(?::[0-9]{2})?)?)"
    r"(?:[.,](?P<fraction>[0-9]+))?"
    r"(?:(?P<utc>Z)|(?P<sign>[+-])(?P<hh>[0-9]{2})(?::?(?P<mm>[0-9]{2}))?)?"
)


def _fromisoformat_310(text: str) -> dt.datetime:
    match = _EXTENDED_ISO.fullmatch(text)
    if match is None:
        return dt.datetime.fromisoformat(text)
    head, fraction = match["head"], match["fraction"]
    if fraction is not None:
        head += "." + fraction[:6].ljust(6, "0")
    if match["utc"]:
        head += "+00:00"
    elif match["sign"]:
        head += f"{match['sign']}{match['hh']}:{match['mm'] or '00'}"
    return dt.datetime.fromisoformat(head)


def parse_datetime(text: str) -> dt.datetime:
    """ISO 8601 text as `datetime.fromisoformat` reads it on Python 3.11 and later (`Z` too),
    on every supported Python; ValueError when it is not such a time."""
    if sys.version_info >= (3, 11):
        return dt.datetime.fromisoformat(text)
    return _fromisoformat_310(text)
