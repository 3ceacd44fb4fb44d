"""Time helpers: the one place that says what "now" is and how times are written."""

from __future__ import annotations

import datetime as dt
import email.utils


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
