"""Content negotiation: the items of an `Accept`-style header with their weights."""

from __future__ import annotations


def weighted(header: str) -> list[tuple[str, float]]:
    """(lower-cased item, q) for each item of `Accept` / `Accept-Encoding`, in order.

    A missing `q` is 1.0; an unreadable one is 0.0 (refused). Empty items are left out.
    """
    items = []
    for item in header.split(","):
        token, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for p in params:
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if token:
            items.append((token.lower(), q))
    return items
