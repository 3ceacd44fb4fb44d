"""Data API keys: create (shown once), verify, list, extend, revoke, delete.

A key is `nx1_` followed by URL-safe random text from `secrets` (320 bits). The store
keeps only a short display prefix and the SHA-256 hex digest of the whole key, behind a
unique index, so verification is one indexed lookup.

A fast hash is the right choice here: the key is a high-entropy random token, so an
attacker holding the hash cannot guess the key faster than by brute-forcing 2^320
possibilities, whatever the hash speed. Slow password hashes (bcrypt, scrypt, Argon2)
exist to protect low-entropy, human-chosen secrets, and would only make every request
slower.

Verification compares digests, never secrets: the store finds the row whose hash equals
the SHA-256 of the presented key through the unique index. An attacker cannot choose the
bytes of a digest, so timing differences in that comparison reveal nothing about any
stored key, and no constant-time compare is needed. The lookup is one plain SQL query on
the driver's cursor (`_lookup`): it runs on every request, so it builds no SQLAlchemy
statement, and only the record columns come back (never the hash).

There is deliberately no in-process cache: every `verify_key` reads the key's row, so a
revocation or expiry is seen at once by every process sharing the store.

Nothing here logs or returns the secret or its hash (except `CreatedKey.secret`, once).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from airflow_nx1_connect.core import key_options
from airflow_nx1_connect.core import policy as policies
from airflow_nx1_connect.core.clock import as_utc, utcnow
from airflow_nx1_connect.core.engines import (
    SQLITE_BUSY_TIMEOUT_MS,
    describe_store_error,
    driver_rows,
)
from airflow_nx1_connect.core.errors import (
    AuthError,
    DataApiNotFound,
    Forbidden,
    KeyNotFound,
    StoreUnavailable,
    ValidationError,
)
from airflow_nx1_connect.core.policy import KeyPolicy
from airflow_nx1_connect.core.store import api_keys, data_apis, placeholder

log = logging.getLogger(__name__)

#: Every key starts with this.
KEY_PREFIX = "nx1_"
#: Random bytes per key (320 bits); the display prefix reveals 48 of them, 272 stay secret.
KEY_RANDOM_BYTES = 40
#: Length of the URL-safe text after `nx1_` (base64 of KEY_RANDOM_BYTES, unpadded).
KEY_BODY_LENGTH = 54
KEY_LENGTH = len(KEY_PREFIX) + KEY_BODY_LENGTH
#: The characters after the prefix (URL-safe base64).
KEY_CHARS = "[A-Za-z0-9_-]"
KEY_RE = re.compile(rf"^{KEY_PREFIX}{KEY_CHARS}{{{KEY_BODY_LENGTH}}}$")
#: Characters of the key kept for display (`nx1_` + 8), enough to tell keys apart.
DISPLAY_PREFIX_LENGTH = 12
#: Key ids: 16 random hex characters, unrelated to the secret.
KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
#: `last_used_at` is written at most this often per key.
LAST_USED_EVERY = dt.timedelta(seconds=60)
#: How long a `last_used_at` write may wait on a lock before it is skipped.
_LAST_USED_LOCK_WAIT_MS = 250

STATUSES = ("active", "expired", "revoked")


@dataclass(frozen=True)
class ApiKey:
    """A data API key's record. Never holds the secret or its hash."""

    id: str
    prefix: str
    data_api: str
    description: str | None
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    scopes: tuple[str, ...] = ("read",)
    #: Requests per minute; None: `[nx1_connect] default_rate_limit`; 0: no limit.
    rate_limit: int | None = None
    #: The key this one replaced, when it was made by a rotation.
    rotated_from: str | None = None
    #: Row filter terms (`<column>=<op>.<value>`, AND-ed; empty: every row), see `core.policy`.
    row_filter: tuple[str, ...] = ()
    #: Column allowlist (None: every column), see `core.policy`.
    columns: tuple[str, ...] | None = None

    @property
    def policy(self) -> KeyPolicy:
        """The key's row filter and column allowlist (`core.policy` enforces them)."""
        return KeyPolicy(self.row_filter, self.columns)

    def status(self, now: dt.datetime | None = None) -> str:
        """`revoked`, `expired` (at or after `expires_at`) or `active`."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= _now(now):
            return "expired"
        return "active"


@dataclass(frozen=True)
class CreatedKey:
    """A newly created key: its record, and the secret, which is shown this once."""

    key: ApiKey
    secret: str

    def __repr__(self) -> str:  # keep the secret out of logs, tracebacks and reprs
        return f"CreatedKey(key={self.key!r}, secret='{self.key.prefix}...')"


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

_RECORD_COLUMNS = (
    api_keys.c.id,
    api_keys.c.prefix,
    api_keys.c.data_api,
    api_keys.c.description,
    api_keys.c.created_at,
    api_keys.c.expires_at,
    api_keys.c.revoked_at,
    api_keys.c.last_used_at,
    api_keys.c.scopes,
    api_keys.c.rate_limit,
    api_keys.c.rotated_from,
    api_keys.c.row_filter,
    api_keys.c.allowed_columns,
)


def _record(row: Any) -> ApiKey:
    m = row._mapping
    return ApiKey(
        id=m["id"],
        prefix=m["prefix"],
        data_api=m["data_api"],
        description=m["description"],
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        revoked_at=m["revoked_at"],
        last_used_at=m["last_used_at"],
        scopes=_scopes_from_text(m["scopes"]),
        rate_limit=m["rate_limit"],
        rotated_from=m["rotated_from"],
        **_policy_fields(m["row_filter"], m["allowed_columns"]),
    )


def _policy_fields(row_filter: str | None, columns: str | None) -> dict[str, Any]:
    loaded = policies.load(row_filter, columns)
    return {"row_filter": loaded.row_filter, "columns": loaded.columns}


def _scopes_from_text(text: str | None) -> tuple[str, ...]:
    return tuple(s for s in (text or "read").split(",") if s)


def _now(now: dt.datetime | None) -> dt.datetime:
    return utcnow() if now is None else as_utc(now)


def _hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("ascii")).hexdigest()


def looks_like_key(raw_key: object) -> bool:
    """True when `raw_key` has the exact shape of a key (says nothing about validity)."""
    return (
        isinstance(raw_key, str)
        and len(raw_key) == KEY_LENGTH
        and KEY_RE.match(raw_key) is not None
    )


def _not_found(key_id: object) -> KeyNotFound:
    shown = repr(key_id) if len(repr(key_id)) <= 40 else repr(key_id)[:37] + "..."
    return KeyNotFound(f"No data API key has id {shown}. List them with: nx1-connect keys list")


def _store_error(engine: Engine, exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(describe_store_error(engine, exc))


# ---------------------------------------------------------------------------------------
# Create and verify
# ---------------------------------------------------------------------------------------


def create_key(
    engine: Engine,
    *,
    data_api: str,
    days: int,
    description: str | None = None,
    scopes: Iterable[str] | None = None,
    rate_limit: int | None = None,
    rotated_from: str | None = None,
    row_filter: Iterable[str] | str | None = None,
    columns: Iterable[str] | str | None = None,
    policy: KeyPolicy | None = None,
    now: dt.datetime | None = None,
) -> CreatedKey:
    """Create a key for `data_api`, valid `days` days from now; the secret is returned once.

    `row_filter` and `columns` make a tenant-scoped key (`core.policy.validate_policy`:
    checked against the data API's latest snapshot); `policy` is an existing key's, kept
    as it is (a rotation). ValidationError for days outside 1..max_key_days, a too long
    description, an unknown scope, a negative rate limit or a policy that does not fit the
    data API; DataApiNotFound when the data API does not exist.
    """
    days = key_options.validate_days(days)
    text = key_options.clean_description(description)
    key_scopes = key_options.validate_scopes(scopes)
    limit = key_options.validate_rate_limit(rate_limit)
    if policy is None:
        if row_filter or columns is not None:
            _check_data_api_name(data_api)
            policy = policies.validate_policy(engine, data_api, row_filter, columns)
        else:
            policy = policies.NO_POLICY
    created = _now(now).replace(microsecond=0)
    secret = KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)
    assert looks_like_key(secret)
    record = ApiKey(
        id=secrets.token_hex(8),
        prefix=secret[:DISPLAY_PREFIX_LENGTH],
        data_api=data_api,
        description=text,
        created_at=created,
        expires_at=created + dt.timedelta(days=days),
        revoked_at=None,
        last_used_at=None,
        scopes=key_scopes,
        rate_limit=limit,
        rotated_from=rotated_from,
        row_filter=policy.row_filter,
        columns=policy.columns,
    )
    missing = DataApiNotFound(
        f"No data API is called {data_api!r}. List them with: nx1-connect apis list"
    )
    if not isinstance(data_api, str) or len(data_api) > 63:
        raise missing
    try:
        with engine.begin() as conn:
            exists = conn.execute(
                sa.select(data_apis.c.name).where(data_apis.c.name == data_api)
            ).first()
            if exists is None:
                raise missing
            conn.execute(
                api_keys.insert().values(
                    id=record.id,
                    prefix=record.prefix,
                    key_hash=_hash(secret),
                    data_api=record.data_api,
                    description=record.description,
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                    revoked_at=None,
                    last_used_at=None,
                    scopes=",".join(key_scopes),
                    rate_limit=limit,
                    rotated_from=rotated_from,
                    row_filter=policies.dump_terms(policy),
                    allowed_columns=policies.dump_columns(policy),
                )
            )
    except sa.exc.IntegrityError:
        # The data API was deleted between the check and the insert.
        raise missing from None
    log.info(
        "Created data API key %s for data API %s, expiring %s",
        record.id,
        data_api,
        record.expires_at.isoformat(),
    )
    return CreatedKey(key=record, secret=secret)


def _check_data_api_name(data_api: object) -> None:
    if not isinstance(data_api, str) or len(data_api) > 63:
        raise DataApiNotFound(
            f"No data API is called {data_api!r:.70}. List them with: nx1-connect apis list"
        )
    from airflow_nx1_connect.core.snapshots import NAME_RE

    if not NAME_RE.match(data_api):
        raise DataApiNotFound(
            f"No data API is called {data_api!r}. List them with: nx1-connect apis list"
        )


def verify_key(
    engine: Engine, raw_key: str | None, data_api: str, *, now: dt.datetime | None = None
) -> ApiKey:
    """The key's record if `raw_key` is a valid key of `data_api`; else raise.

    AuthError(reason) with reason `missing` (None or empty; `missing=True`), `malformed`
    (not the shape of a key; the store is not touched), `unknown`, `revoked` or `expired`
    (at or after `expires_at`); Forbidden when the key is valid but belongs to another data
    API, whether or not `data_api` exists; StoreUnavailable when the store cannot be read.
    Every call reads the store: nothing is cached, so revocation takes effect at once.
    """
    if raw_key is None or raw_key == "":
        raise AuthError("missing", missing=True)
    if not looks_like_key(raw_key):
        raise AuthError("malformed")
    assert isinstance(raw_key, str)
    digest = _hash(raw_key)
    current = _now(now)
    key = _lookup(engine, digest)
    if key is None:
        raise AuthError("unknown")
    status = key.status(current)
    if status != "active":
        raise AuthError(status)
    if key.data_api != data_api:
        raise Forbidden("This key does not give access to this data API.")
    if key.last_used_at is None or key.last_used_at < current - LAST_USED_EVERY:
        if _touch(engine, key.id, current):
            key = ApiKey(**{**key.__dict__, "last_used_at": current})
    return key


#: The key lookup of every request, as plain SQL on the driver's cursor: one indexed read,
#: without building, compiling or processing a SQLAlchemy statement per request. Only the
#: record columns come back; the hash is a bound parameter (never in a log).
_LOOKUP_SQL = (
    "SELECT id, prefix, data_api, description, created_at, expires_at, revoked_at, "
    "last_used_at, scopes, rate_limit, rotated_from, row_filter, allowed_columns "
    "FROM nx1_api_keys WHERE key_hash = {}"
)


def _utc(value: Any) -> dt.datetime | None:
    """A stored time as the driver returns it (SQLite: text) as an aware UTC datetime."""
    if value is None:
        return None
    return as_utc(dt.datetime.fromisoformat(value) if isinstance(value, str) else value)


def _lookup(engine: Engine, digest: str) -> ApiKey | None:
    """The record of the key whose hash is `digest`, or None; StoreUnavailable on failure."""
    sql = _LOOKUP_SQL.format(placeholder(engine.dialect))
    try:
        raw = engine.raw_connection()
        try:
            found = driver_rows(raw, sql, (digest,))
        finally:
            raw.close()
    except (sa.exc.DBAPIError, engine.dialect.loaded_dbapi.Error) as exc:
        raise _store_error(engine, exc) from None
    if not found:
        return None
    row = found[0]
    key_id, prefix, data_api, description, created, expires, revoked, used = row[:8]
    return ApiKey(
        id=key_id,
        prefix=prefix,
        data_api=data_api,
        description=description,
        created_at=_utc(created),  # type: ignore[arg-type]
        expires_at=_utc(expires),  # type: ignore[arg-type]
        revoked_at=_utc(revoked),
        last_used_at=_utc(used),
        scopes=_scopes_from_text(row[8]),
        rate_limit=row[9],
        rotated_from=row[10],
        **_policy_fields(row[11], row[12]),
    )


def _touch(engine: Engine, key_id: str, now: dt.datetime) -> bool:
    """Record a use of the key, at most once per LAST_USED_EVERY; best effort.

    Only called when the row read says the value is stale; the conditional UPDATE keeps
    concurrent requests from writing more than once. A lock held by another writer makes
    it give up after a short wait instead of failing or slowing the request.
    """
    stale = sa.or_(
        api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at < now - LAST_USED_EVERY
    )
    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.connect() as conn:
            if sqlite:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={_LAST_USED_LOCK_WAIT_MS}")
                conn.commit()
            try:
                if engine.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {_LAST_USED_LOCK_WAIT_MS}")
                result = conn.execute(
                    api_keys.update().where(api_keys.c.id == key_id, stale).values(last_used_at=now)
                )
                conn.commit()
                return bool(result.rowcount)
            except BaseException:
                conn.rollback()
                raise
            finally:
                if sqlite:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                    conn.commit()
    except sa.exc.DBAPIError as exc:
        cause = type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__
        log.debug("Skipped recording the last use of data API key %s (%s)", key_id, cause)
        return False


# ---------------------------------------------------------------------------------------
# Manage
# ---------------------------------------------------------------------------------------


def list_keys(
    engine: Engine, *, data_api: str | None = None, kinds: Iterable[str] | None = None
) -> list[ApiKey]:
    """Keys, newest first; only those of `data_api` and/or of data APIs of `kinds`.

    DataApiNotFound when `data_api` is given and does not exist.
    """
    query = sa.select(*_RECORD_COLUMNS).order_by(api_keys.c.created_at.desc(), api_keys.c.id)
    with engine.connect() as conn:
        if data_api is not None:
            exists = conn.execute(
                sa.select(data_apis.c.name).where(data_apis.c.name == data_api)
            ).first()
            if exists is None:
                raise DataApiNotFound(
                    f"No data API is called {data_api!r}. List them with: nx1-connect apis list"
                )
            query = query.where(api_keys.c.data_api == data_api)
        if kinds is not None:
            query = query.select_from(
                api_keys.join(data_apis, data_apis.c.name == api_keys.c.data_api)
            ).where(data_apis.c.kind.in_(list(kinds)))
        return [_record(r) for r in conn.execute(query)]


def get_key(engine: Engine, key_id: str) -> ApiKey:
    """The key with id `key_id`, or KeyNotFound."""
    if not isinstance(key_id, str) or not KEY_ID_RE.match(key_id):
        raise _not_found(key_id)
    with engine.connect() as conn:
        row = conn.execute(sa.select(*_RECORD_COLUMNS).where(api_keys.c.id == key_id)).first()
    if row is None:
        raise _not_found(key_id)
    return _record(row)


def extend_key(engine: Engine, key_id: str, *, days: int, now: dt.datetime | None = None) -> ApiKey:
    """Move the key's expiry `days` days later (counted from now if it already expired).

    ValidationError when `days` is outside 1..max_key_days, when the key is revoked, or
    when the key would then be valid for more than key_options.max_key_days from now.
    """
    limit = key_options.max_key_days()
    days = key_options.validate_days(days, limit=limit)
    current = _now(now)
    key = get_key(engine, key_id)
    if key.revoked_at is not None:
        raise ValidationError(
            f"Key {key_id} is revoked and cannot be extended; create a new key instead.",
            field="days",
        )
    base = max(key.expires_at, current.replace(microsecond=0))
    expires = base + dt.timedelta(days=days)
    if expires - current > dt.timedelta(days=limit):
        room = (current + dt.timedelta(days=limit) - base).days
        hint = (
            f"extend it by at most {room} days now"
            if room >= 1
            else "it cannot be extended further yet"
        )
        raise ValidationError(
            f"Key {key_id} would then be valid for more than {limit} days "
            f"([nx1_connect] key_options.max_key_days); {hint}.",
            field="days",
        )
    with engine.begin() as conn:
        result = conn.execute(
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(expires_at=expires)
        )
    if not result.rowcount:
        raise _not_found(key_id)
    log.info("Extended data API key %s to %s", key_id, expires.isoformat())
    return get_key(engine, key_id)


def revoke_key(engine: Engine, key_id: str, *, now: dt.datetime | None = None) -> ApiKey:
    """Revoke the key now; refused at once everywhere. Revoking it again changes nothing."""
    get_key(engine, key_id)
    current = _now(now).replace(microsecond=0)
    with engine.begin() as conn:
        conn.execute(
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=current)
        )
    log.info("Revoked data API key %s", key_id)
    return get_key(engine, key_id)


def delete_key(engine: Engine, key_id: str) -> None:
    """Delete the key's record (it stops working at once), or KeyNotFound."""
    if not isinstance(key_id, str) or not KEY_ID_RE.match(key_id):
        raise _not_found(key_id)
    with engine.begin() as conn:
        result = conn.execute(api_keys.delete().where(api_keys.c.id == key_id))
    if not result.rowcount:
        raise _not_found(key_id)
    log.info("Deleted data API key %s", key_id)


def rotate_key(
    engine: Engine,
    key_id: str,
    *,
    overlap_hours: int | None = None,
    now: dt.datetime | None = None,
) -> tuple[CreatedKey, ApiKey]:
    """Replace a key: (the new key, secret shown once; the old key's updated record).

    The new key reads the same data API with the same description, scopes, rate limit, row
    filter and column allowlist (kept as they are, even if the columns changed since),
    for as many days as the old one was issued for (1..max_key_days), and records
    `rotated_from`. The old key stays valid for `overlap_hours` (default 24) and is then
    refused: its expiry becomes the earlier of its own and now + overlap. A revoked key
    cannot be rotated (ValidationError). The new key is created first, so a failure in
    between leaves both keys valid rather than none.
    """
    overlap = key_options.validate_overlap_hours(overlap_hours)
    current = _now(now)
    old = get_key(engine, key_id)
    if old.revoked_at is not None:
        raise ValidationError(
            f"Key {key_id} is revoked and cannot be rotated; create a new key instead.",
            field="key_id",
        )
    issued_days = (old.expires_at - old.created_at).days
    days = min(max(issued_days, 1), key_options.max_key_days())
    created = create_key(
        engine,
        data_api=old.data_api,
        days=days,
        description=old.description,
        scopes=old.scopes,
        rate_limit=old.rate_limit,
        rotated_from=old.id,
        policy=old.policy,
        now=current,
    )
    ends = current.replace(microsecond=0) + dt.timedelta(hours=overlap)
    with engine.begin() as conn:
        conn.execute(
            api_keys.update()
            .where(api_keys.c.id == old.id, api_keys.c.expires_at > ends)
            .values(expires_at=ends)
        )
    log.info("Rotated data API key %s into %s; the old one ends %s", old.id, created.key.id, ends)
    return created, get_key(engine, old.id)
