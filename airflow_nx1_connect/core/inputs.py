"""Reading whole numbers given by users: an int, or its text from a form, a query string or
a command line."""

from __future__ import annotations

import re

_UNSIGNED = re.compile(r"\s*\d{1,9}\s*")
_SIGNED = re.compile(r"\s*[+-]?\d{1,9}\s*")


def whole_number(value: object, *, signed: bool = False) -> int | None:
    """`value` as an int when it is one (not a bool) or the text of one (at most 9 digits,
    spaces around allowed; a sign only when `signed`); None otherwise. Range checks and
    messages belong to the caller."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (_SIGNED if signed else _UNSIGNED).fullmatch(value):
        return int(value)
    return None
