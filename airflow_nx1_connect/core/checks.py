"""Publish checks: conditions a rule's staged snapshot must meet before it is published.

`checks={"min_rows": 1, "not_null": ["account_id"], ...}` on a rule operator. `parse`
validates the value when the DAG is parsed (a bad key or type fails there); `check_columns`
checks the named columns against the run's result; `run` measures each check in the
store, in SQL, on the staged snapshot table (never in Python memory), and returns the
failures, each naming its measured value. A failing check fails the run: nothing is
published and the staged table is dropped (see `core.writer`).

- `min_rows` / `max_rows` (integers): bounds on the snapshot's row count;
- `not_null` (columns): no NULL in any of them;
- `unique` (columns): no two rows with the same values in them together (NULLs compare
  equal, as in GROUP BY: two rows with a NULL key are a duplicate);
- `max_row_change` (a fraction): |rows - previous rows| / previous rows at most this,
  where previous is the snapshot this one follows (the latest); skipped while there is
  none or it is empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_nx1_connect.core.errors import RuleError, ValidationError
from airflow_nx1_connect.core.store import quote

KEYS = ("min_rows", "max_rows", "not_null", "unique", "max_row_change")


@dataclass(frozen=True)
class Checks:
    """A rule's publish checks (see the module docstring); None / empty: not checked."""

    min_rows: int | None = None
    max_rows: int | None = None
    not_null: tuple[str, ...] = ()
    unique: tuple[str, ...] = ()
    max_row_change: float | None = None

    def columns(self) -> list[str]:
        """Every column the checks name, once each."""
        return list(dict.fromkeys([*self.not_null, *self.unique]))

    def as_dict(self) -> dict[str, Any]:
        """The checks as given (keys that are set only)."""
        out: dict[str, Any] = {}
        for key in KEYS:
            value = getattr(self, key)
            if value not in (None, ()):
                out[key] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class Failure:
    """One failed check: its name and what was measured."""

    check: str
    measured: str

    def __str__(self) -> str:
        return f"{self.check}: {self.measured}"


def parse(value: Mapping[str, Any] | None) -> Checks | None:
    """Checks from an operator's `checks=` value; ValidationError saying what is wrong."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValidationError(
            f"checks must be a dict such as {{'min_rows': 1, 'not_null': ['id']}}, not "
            f"{type(value).__name__}.",
            field="checks",
        )
    unknown = [k for k in value if k not in KEYS]
    if unknown:
        raise ValidationError(
            f"Unknown check {unknown[0]!r}; the checks are {', '.join(KEYS)}.", field="checks"
        )
    min_rows = _count(value, "min_rows")
    max_rows = _count(value, "max_rows")
    if min_rows is not None and max_rows is not None and min_rows > max_rows:
        raise ValidationError(
            f"checks: min_rows ({min_rows}) is above max_rows ({max_rows}).", field="checks"
        )
    change = value.get("max_row_change")
    if change is not None:
        if isinstance(change, bool) or not isinstance(change, int | float) or change < 0:
            raise ValidationError(
                "checks: max_row_change is a fraction of the previous row count, a number of "
                f"0 or more (0.5 allows +/- 50%), not {change!r}.",
                field="checks",
            )
        change = float(change)
    return Checks(
        min_rows=min_rows,
        max_rows=max_rows,
        not_null=_columns(value, "not_null"),
        unique=_columns(value, "unique"),
        max_row_change=change,
    )


def _count(value: Mapping[str, Any], key: str) -> int | None:
    got = value.get(key)
    if got is None:
        return None
    if isinstance(got, bool) or not isinstance(got, int) or got < 0:
        raise ValidationError(
            f"checks: {key} is a whole number of rows, 0 or more, not {got!r}.", field="checks"
        )
    return got


def _columns(value: Mapping[str, Any], key: str) -> tuple[str, ...]:
    got = value.get(key)
    if got is None:
        return ()
    names = [got] if isinstance(got, str) else got
    if (
        not isinstance(names, Sequence)
        or not names
        or not all(isinstance(n, str) and n.strip() for n in names)
    ):
        raise ValidationError(
            f"checks: {key} is a list of result column names, e.g. ['account_id'], not {got!r}.",
            field="checks",
        )
    if len(set(names)) != len(names):
        raise ValidationError(f"checks: {key} names a column twice.", field="checks")
    return tuple(names)


def check_columns(checks: Checks, names: Sequence[str]) -> None:
    """RuleError unless every column the checks name is a column of the result."""
    missing = [c for c in checks.columns() if c not in names]
    if missing:
        raise RuleError(
            f"checks name {', '.join(repr(c) for c in missing)}, which the result does not "
            f"have; the result has {', '.join(names)}. Fix the checks or the SQL."
        )


def run(
    conn: Connection,
    table: str,
    checks: Checks,
    *,
    row_count: int,
    previous_row_count: int | None,
) -> list[Failure]:
    """Measure every check on the staged snapshot `table`; the failed ones, in KEYS order."""
    failures: list[Failure] = []
    if checks.min_rows is not None and row_count < checks.min_rows:
        failures.append(
            Failure("min_rows", f"{row_count} rows, at least {checks.min_rows} required")
        )
    if checks.max_rows is not None and row_count > checks.max_rows:
        failures.append(Failure("max_rows", f"{row_count} rows, at most {checks.max_rows} allowed"))
    if checks.not_null:
        sums = ", ".join(
            f"COALESCE(SUM(CASE WHEN {quote(conn, c)} IS NULL THEN 1 ELSE 0 END), 0)"
            for c in checks.not_null
        )
        nulls = conn.execute(sa.text(f"SELECT {sums} FROM {quote(conn, table)}")).one()
        found = [f"{n} in {c}" for c, n in zip(checks.not_null, nulls, strict=True) if n]
        if found:
            failures.append(Failure("not_null", f"NULL values: {', '.join(found)}"))
    if checks.unique:
        cols = ", ".join(quote(conn, c) for c in checks.unique)
        extra = conn.execute(
            sa.text(
                f"SELECT COALESCE(SUM(n - 1), 0), COUNT(*) FROM (SELECT COUNT(*) AS n FROM "
                f"{quote(conn, table)} GROUP BY {cols} HAVING COUNT(*) > 1) AS d"
            )
        ).one()
        if extra[0]:
            failures.append(
                Failure(
                    "unique",
                    f"{extra[0]} duplicate rows ({extra[1]} values of "
                    f"{', '.join(checks.unique)} appear more than once)",
                )
            )
    if checks.max_row_change is not None and previous_row_count:
        change = abs(row_count - previous_row_count) / previous_row_count
        if change > checks.max_row_change:
            failures.append(
                Failure(
                    "max_row_change",
                    f"{change:.4g} ({previous_row_count} rows before, {row_count} now; at "
                    f"most {checks.max_row_change:g} allowed)",
                )
            )
    return failures
