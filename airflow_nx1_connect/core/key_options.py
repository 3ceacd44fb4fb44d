"""What a data API key may be made with, checked: its validity in days (at most
`[nx1_connect] max_key_days`), scopes, rate limit, description, and a rotation's overlap.
Form fields, CLI options and JSON bodies all pass through these checks."""

from __future__ import annotations

from collections.abc import Iterable

from airflow_nx1_connect.core.errors import ValidationError
from airflow_nx1_connect.core.inputs import whole_number

#: What a key may do: `read` (every key) and `run` (trigger the rule's runs).
SCOPES = ("read", "run")
#: The longest description kept with a key.
MAX_DESCRIPTION_LENGTH = 500


def validate_scopes(scopes: Iterable[str] | None) -> tuple[str, ...]:
    """The scopes as stored: `read` always, then the others given, in SCOPES order."""
    wanted = set(scopes or ())
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise ValidationError(
            f"Unknown scope {unknown[0]!r}; a key's scopes are {', '.join(SCOPES)}.",
            field="scopes",
        )
    return tuple(s for s in SCOPES if s == "read" or s in wanted)


def validate_rate_limit(rate_limit: object) -> int | None:
    """None (use `default_rate_limit`), or requests per minute from 0 (no limit) up."""
    if rate_limit is None or rate_limit == "":
        return None
    value = whole_number(rate_limit)
    if value is None or value < 0:
        raise ValidationError(
            f"The rate limit must be a whole number of requests per minute (0 = no limit); "
            f"got {rate_limit!r}.",
            field="rate_limit",
        )
    return value


def max_key_days() -> int:
    """The configured `[nx1_connect] max_key_days`, read now."""
    from airflow_nx1_connect.core.settings import get_settings

    return get_settings().max_key_days


def validate_days(days: object, *, limit: int | None = None) -> int:
    """Return `days` as an int if it is a whole number from 1 to `max_key_days`.

    Accepts an int or the text of one (form fields); else ValidationError(field="days").
    """
    limit = max_key_days() if limit is None else limit
    value = whole_number(days, signed=True)
    if value is None or not 1 <= value <= limit:
        shown = (
            days.strip()
            if isinstance(days, str) and days.strip().lstrip("+-").isdigit()
            else repr(days)
        )
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise ValidationError(
            f"Validity must be a whole number of days from 1 to {limit} "
            f"([nx1_connect] max_key_days); got {shown}.",
            field="days",
        )
    return value


def clean_description(description: object) -> str | None:
    if description is None:
        return None
    if not isinstance(description, str):
        raise ValidationError("The description must be text.", field="description")
    text = description.strip()
    if len(text) > MAX_DESCRIPTION_LENGTH:
        raise ValidationError(
            f"The description is {len(text)} characters long; keep it to at most "
            f"{MAX_DESCRIPTION_LENGTH}.",
            field="description",
        )
    return text or None


#: Hours a rotated key stays valid next to its successor, unless told otherwise.
DEFAULT_OVERLAP_HOURS = 24


def validate_overlap_hours(hours: object) -> int:
    """Whole hours from 0 up to max_key_days * 24 (an int or its text); None: the default."""
    if hours is None or hours == "":
        return DEFAULT_OVERLAP_HOURS
    limit = max_key_days() * 24
    value = whole_number(hours)
    if value is None or not 0 <= value <= limit:
        raise ValidationError(
            f"The overlap must be a whole number of hours from 0 to {limit}; "
            f"got {str(hours)[:40]!r}.",
            field="overlap_hours",
        )
    return value
