"""Tenant-scoped keys: a key's row filter and column allowlist, checked and enforced here.

A key may carry a *row filter* (terms `<column>=<op>.<value>`, the grammar of the data API's
`where.` parameters, AND-ed) and a *column allowlist*. Both are fixed when the key is made
(`validate_policy`, against the data API's latest snapshot) and kept by a rotation.

Every read a key makes goes through `view` (rows of `latest` and `snapshots/{id}` in every
format, the change feed, `GET /data-apis/{name}`, snapshot summaries), before any format is
chosen:

- `KeyView.visible` is the snapshot as the key may see it: only the allowed columns. The
  request's `columns`, `where.` and `sort` are checked against it, so a hidden column is
  unknown with exactly the message a column that does not exist gets (no existence leak);
- `KeyView.query` AND-s the key's terms before the request's own into one `RowsQuery`:
  one WHERE with quoted identifiers and bound values (`core.reads`), read from the real
  snapshot (a filter may name a column the key cannot see);
- fail closed: a snapshot that lacks a column the policy names, or whose column type no
  longer takes a term's value, is refused for that key (`PolicyNotApplicable`, a 403);
  a policy is never skipped;
- `KeyView.fingerprint` goes into every ETag, so answers for different policies never
  share one; `KeyView.summary` has `row_count` null when the key has a row filter (the
  snapshot's count would tell how many rows the key cannot see).

`allowed_columns` gives the columns a key may see, for any other endpoint that describes a
snapshot (e.g. a per-data-API OpenAPI document).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_nx1_connect.core.errors import Forbidden, SnapshotNotFound, ValidationError
from airflow_nx1_connect.core.filters import parse_filter
from airflow_nx1_connect.core.reads import Filter, RowsQuery, check_query
from airflow_nx1_connect.core.types import Column

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from airflow_nx1_connect.core.snapshots import Snapshot

#: Most terms a key's row filter may hold, and most columns its allowlist may name.
MAX_TERMS = 20
MAX_COLUMNS = 1000
TERM_EXAMPLE = "e.g. region=eq.EU, units=gte.100, country=in.(FR,DE)"


class PolicyNotApplicable(Forbidden):
    """A snapshot lacks a column the key's policy names, or no longer takes one of its
    terms (public: 403 for that key on that snapshot)."""

    slug = "policy-not-applicable"
    title = "Key's policy does not fit this snapshot"
    public = None


@dataclass(frozen=True)
class KeyPolicy:
    """A key's row filter (terms as text, AND-ed) and column allowlist (None: all)."""

    row_filter: tuple[str, ...] = ()
    columns: tuple[str, ...] | None = None

    @property
    def empty(self) -> bool:
        """True when the key sees every row and every column."""
        return not self.row_filter and self.columns is None

    @functools.cached_property
    def filters(self) -> tuple[Filter, ...]:
        """The row filter's terms, parsed once (they were checked when the key was made)."""
        return tuple(parse_term(t) for t in self.row_filter)

    def named_columns(self) -> list[str]:
        """Every column the policy names (filter terms first), each once."""
        named = [f.column for f in self.filters] + list(self.columns or ())
        return list(dict.fromkeys(named))

    def fingerprint(self) -> str:
        """A short digest of the policy ("" when empty), part of every ETag of the key."""
        if self.empty:
            return ""
        text = json.dumps([list(self.row_filter), self.columns], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """`{"row_filter": [...], "columns": [...] | None}` as key objects carry it."""
        return {
            "row_filter": list(self.row_filter),
            "columns": list(self.columns) if self.columns is not None else None,
        }


NO_POLICY = KeyPolicy()


# ---------------------------------------------------------------------------------------
# Parsing and storing
# ---------------------------------------------------------------------------------------


def parse_term(term: str) -> Filter:
    """One term `<column>=<op>.<value>` (an optional leading `where.` is accepted)."""
    if not isinstance(term, str):
        raise ValidationError(
            f"A row filter term is text like {TERM_EXAMPLE}; got {term!r:.40}.",
            field="row_filter",
        )
    text = term.strip().removeprefix("where.")
    column, eq, condition = text.partition("=")
    column = column.strip()
    if not eq or not column:
        raise ValidationError(
            f"Row filter term {term!r:.80} is not <column>=<op>.<value>; {TERM_EXAMPLE}.",
            field="row_filter",
        )
    try:
        return parse_filter(column, condition)
    except ValidationError as exc:
        raise ValidationError(
            f"Row filter term {term!r:.80}: {exc}".replace("where.", "", 1), field="row_filter"
        ) from None


def _normalize(
    row_filter: Iterable[str] | str | None, columns: Iterable[str] | str | None
) -> KeyPolicy:
    """Check the shape of a policy (terms parse; columns are names, each once)."""
    if isinstance(row_filter, str):
        row_filter = [row_filter]
    terms: list[str] = []
    for term in row_filter or ():
        parse_term(term)
        text = term.strip().removeprefix("where.")
        column, _, condition = text.partition("=")
        terms.append(f"{column.strip()}={condition}")
    if len(terms) > MAX_TERMS:
        raise ValidationError(
            f"A row filter takes at most {MAX_TERMS} terms; got {len(terms)}.", field="row_filter"
        )
    allowed: tuple[str, ...] | None = None
    if columns is not None:
        if isinstance(columns, str):
            columns = columns.split(",")
        names = [c.strip() if isinstance(c, str) else c for c in columns]
        if not names or not all(isinstance(c, str) and c for c in names):
            raise ValidationError(
                "The column allowlist names one or more columns, e.g. columns=region,units; "
                "leave it out to allow every column.",
                field="columns",
            )
        if len(set(names)) != len(names):
            raise ValidationError(
                "A column is named twice in the column allowlist.", field="columns"
            )
        if len(names) > MAX_COLUMNS:
            raise ValidationError(
                f"The column allowlist names at most {MAX_COLUMNS} columns.", field="columns"
            )
        allowed = tuple(names)
    return KeyPolicy(tuple(terms), allowed)


def validate_policy(
    engine: Engine,
    data_api: str,
    row_filter: Iterable[str] | str | None,
    columns: Iterable[str] | str | None,
) -> KeyPolicy:
    """The policy of a new key, checked against `data_api`'s latest snapshot.

    ValidationError (400; CLI exit 1) for a term that does not parse, a column the latest
    snapshot lacks, an op its type does not take or a value of the wrong type, and for a
    policy on a data API that has published nothing yet (nothing to check it against).
    """
    from airflow_nx1_connect.core import snapshots as snaps

    policy = _normalize(row_filter, columns)
    if policy.empty:
        return policy
    snaps.get_data_api(engine, data_api)  # DataApiNotFound first
    try:
        latest = snaps.latest_snapshot(engine, data_api)
    except SnapshotNotFound:
        raise ValidationError(
            f"Data API {data_api!r} has no published snapshot yet, so a row filter or column "
            "allowlist cannot be checked against its columns; let its rule run once first.",
            field="row_filter" if policy.row_filter else "columns",
        ) from None
    known = ", ".join(latest.columns)
    for name in policy.columns or ():
        if name not in latest.columns:
            raise ValidationError(
                f"Unknown column {name!r} in the column allowlist; {data_api!r} has: {known}.",
                field="columns",
            )
    for term, f in zip(policy.row_filter, policy.filters, strict=True):
        try:
            check_query(latest, RowsQuery(filters=(f,)), engine.dialect.name)
        except ValidationError as exc:
            detail = str(exc).replace("where.", "").replace("this snapshot", repr(data_api))
            raise ValidationError(
                f"Row filter term {term!r}: {detail}", field="row_filter"
            ) from None
    return policy


def dump_terms(policy: KeyPolicy) -> str | None:
    """The row filter as stored (a JSON array), or None when it has no terms."""
    return json.dumps(list(policy.row_filter)) if policy.row_filter else None


def dump_columns(policy: KeyPolicy) -> str | None:
    """The column allowlist as stored (a JSON array), or None for every column."""
    return json.dumps(list(policy.columns)) if policy.columns is not None else None


def load(row_filter: str | None, columns: str | None) -> KeyPolicy:
    """A policy from its stored form (see `dump_terms`, `dump_columns`)."""
    return KeyPolicy(
        tuple(json.loads(row_filter)) if row_filter else (),
        tuple(json.loads(columns)) if columns is not None else None,
    )


# ---------------------------------------------------------------------------------------
# Enforcement
# ---------------------------------------------------------------------------------------


def _not_applicable(snapshot: Snapshot) -> PolicyNotApplicable:
    return PolicyNotApplicable(
        f"This key's row filter or column allowlist names a column that snapshot {snapshot.id} "
        "does not have (or no longer takes its value), so this key may not read it. Ask the "
        "data API's owner for a key made for the current columns."
    )


@dataclass(frozen=True)
class KeyView:
    """One snapshot as one key may read it (see the module's docstring)."""

    policy: KeyPolicy
    snapshot: Snapshot
    visible: Snapshot

    @property
    def fingerprint(self) -> str:
        """The policy's digest, for ETags ("" for a key without a policy)."""
        return self.policy.fingerprint()

    @property
    def key_filters(self) -> tuple[Filter, ...]:
        return self.policy.filters

    def columns(self, wanted: Sequence[str] | None) -> list[Column]:
        """The request's `columns` (default: every visible one), hidden ones unknown."""
        from airflow_nx1_connect.core.snapshots import resolve_columns

        return resolve_columns(self.visible, wanted)

    def query(self, request: RowsQuery, dialect: str) -> RowsQuery:
        """The key's terms AND-ed before the request's: the request's terms and sort are
        checked against the visible columns (ValidationError, 400)."""
        if request:
            check_query(self.visible, request, dialect)
        return RowsQuery(filters=(*self.key_filters, *request.filters), sort=request.sort)

    def summary(self) -> dict[str, Any]:
        """The snapshot's summary; `row_count` null when the key has a row filter."""
        return summary(self.policy, self.snapshot)


def view(policy: KeyPolicy, snapshot: Snapshot, dialect: str) -> KeyView:
    """`snapshot` as a key with `policy` may read it; PolicyNotApplicable (403) when the
    snapshot lacks a column the policy names or no longer takes one of its terms."""
    if policy.empty:
        return KeyView(policy, snapshot, snapshot)
    if any(c not in snapshot.columns for c in policy.named_columns()):
        raise _not_applicable(snapshot)
    if policy.row_filter:
        try:
            check_query(snapshot, RowsQuery(filters=policy.filters), dialect)
        except ValidationError:
            raise _not_applicable(snapshot) from None
    return KeyView(policy, snapshot, restrict(policy, snapshot))


def restrict(policy: KeyPolicy, snapshot: Snapshot) -> Snapshot:
    """`snapshot` with only the columns `policy` allows (in the snapshot's order); its
    key and indexed columns only when visible; `row_count` None under a row filter."""
    if policy.empty:
        return snapshot
    allowed = set(policy.columns) if policy.columns is not None else set(snapshot.columns)
    pairs = [
        (n, t) for n, t in zip(snapshot.columns, snapshot.column_types, strict=True) if n in allowed
    ]
    return dataclasses.replace(
        snapshot,
        columns=[n for n, _ in pairs],
        column_types=[t for _, t in pairs],
        key_columns=[c for c in snapshot.key_columns if c in allowed],
        indexed_columns=[c for c in snapshot.indexed_columns if c in allowed],
        row_count=None if policy.row_filter else snapshot.row_count,
    )


def allowed_columns(policy: KeyPolicy, snapshot: Snapshot) -> list[Column]:
    """The columns a key with `policy` may see in `snapshot` (names and types, in order);
    PolicyNotApplicable (403) when the snapshot lacks a column the policy names."""
    if any(c not in snapshot.columns for c in policy.named_columns()):
        raise _not_applicable(snapshot)
    visible = restrict(policy, snapshot)
    return [Column(n, t) for n, t in zip(visible.columns, visible.column_types, strict=True)]


def summary(policy: KeyPolicy, snapshot: Snapshot) -> dict[str, Any]:
    """A snapshot summary as a key with `policy` gets it (`row_count` null under a filter)."""
    document = snapshot.summary()
    if policy.row_filter:
        document["row_count"] = None
    return document
