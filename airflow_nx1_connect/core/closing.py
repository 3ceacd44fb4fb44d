"""Closing what a stream reads from, when the stream ends or its client goes away."""

from __future__ import annotations


def close(source: object) -> None:
    """Close `source` if it can be closed (a generator, whose `finally` then releases its
    query or file); anything else (a list, bytes) is left alone."""
    closer = getattr(source, "close", None)
    if closer is not None:
        closer()
