"""The audit trail: every admin action, who did it, when and from where. Never a secret.

`record` writes one event into `nx1_audit`; `list_events` reads them back, newest first.
Each event carries the data API's name and its identity (`nx1_data_apis.api_id`, new for every
data API ever made): a user who may see one kind sees the events of the data APIs of that kind
that exist now, never those of a deleted data API whose name was taken again. Actors are the
Airflow user's name (admin REST API, admin view) or `cli:<os user>` (the command line, see
`cli_actor`). `detail` holds small facts about the action (days, the new
key's id, ...); any text shaped like a data API key is dropped from it before it is stored.
"""

from __future__ import annotations

import datetime as dt
import getpass
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_nx1_connect.core.clock import iso, utcnow
from airflow_nx1_connect.core.errors import ValidationError
from airflow_nx1_connect.core.inputs import whole_number
from airflow_nx1_connect.core.keys import KEY_CHARS, KEY_PREFIX
from airflow_nx1_connect.core.store import audit, data_apis

#: The actions recorded (the `action` field of an event).
ACTIONS = (
    "create_data_api",
    "delete_data_api",
    "create_key",
    "extend_key",
    "revoke_key",
    "rotate_key",
    "delete_key",
    "create_webhook",
    "delete_webhook",
    "test_webhook",
)
#: Events returned by `list_events` unless a limit is given, and the most it returns.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Anything that looks like a data API key (or a bare hash) never enters the trail.
_SECRET_RE = re.compile(rf"{KEY_PREFIX}{KEY_CHARS}{{20,}}|\b[0-9a-f]{{64}}\b")
_ACTOR_LENGTH = 250
_ADDR_LENGTH = 64


@dataclass(frozen=True)
class AuditEvent:
    """One recorded admin action."""

    id: int
    at: dt.datetime
    actor: str
    action: str
    data_api: str | None
    key_id: str | None
    remote_addr: str | None
    detail: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """The public view (JSON-ready, ISO 8601 UTC time)."""
        return {
            "at": iso(self.at),
            "actor": self.actor,
            "action": self.action,
            "data_api": self.data_api,
            "key_id": self.key_id,
            "remote_addr": self.remote_addr,
            "detail": self.detail,
        }


def cli_actor() -> str:
    """`cli:<os user>`: the actor of commands run with `nx1-connect`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER
        user = "unknown"
    return f"cli:{user}"


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_RE.sub("[redacted]", value)
    if isinstance(value, dict):
        return {str(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, dt.datetime):
        return iso(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return _scrub(str(value))


def record(
    bind: Engine | Connection,
    *,
    actor: str,
    action: str,
    data_api: str | None = None,
    data_api_id: str | None = None,
    key_id: str | None = None,
    remote_addr: str | None = None,
    detail: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Record one admin action. `detail` is scrubbed of anything shaped like a key.

    `data_api_id` (the data API's `api_id`) defaults to that of the data API called
    `data_api` now; pass it for a data API that is already deleted.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    identity: Any = data_api_id
    if identity is None and data_api is not None:
        identity = (
            sa.select(data_apis.c.api_id).where(data_apis.c.name == data_api).scalar_subquery()
        )
    values = {
        "at": now or utcnow(),
        "actor": _scrub(actor or "unknown")[:_ACTOR_LENGTH],
        "action": action,
        "data_api": data_api,
        "data_api_id": identity,
        "key_id": key_id,
        "remote_addr": (remote_addr or None) and remote_addr[:_ADDR_LENGTH],
        "detail": _scrub(detail) if detail else None,
    }
    if isinstance(bind, Connection):
        bind.execute(audit.insert().values(**values))
    else:
        with bind.begin() as conn:
            conn.execute(audit.insert().values(**values))


def validate_limit(limit: object) -> int:
    """The number of events to return: a whole number from 1 to MAX_LIMIT (text accepted)."""
    if limit is None or limit == "":
        return DEFAULT_LIMIT
    value = whole_number(limit)
    if value is None or not 1 <= value <= MAX_LIMIT:
        raise ValidationError(
            f"limit must be a whole number from 1 to {MAX_LIMIT}; got {str(limit)[:40]!r}.",
            field="limit",
        )
    return value


def data_api_id(bind: Engine | Connection, name: str) -> str | None:
    """The identity (`api_id`) of the data API called `name` now, or None."""
    query = sa.select(data_apis.c.api_id).where(data_apis.c.name == name)
    if isinstance(bind, Connection):
        return bind.execute(query).scalar()
    with bind.connect() as conn:
        return conn.execute(query).scalar()


def list_events(
    engine: Engine,
    *,
    data_api: str | None = None,
    key_id: str | None = None,
    kinds: Iterable[str] | None = None,
    limit: int | str | None = None,
) -> list[AuditEvent]:
    """Events, newest first; only those of `data_api` and/or `key_id` when given.

    `kinds` (when given: a caller who may see only some kinds) keeps the events recorded for
    data APIs of those kinds that exist now, by identity: not those of a deleted data API,
    even when another one has its name now. Without `kinds` (Admin, the command line) every
    event is returned, and `data_api` matches every data API that had that name.
    """
    count = validate_limit(limit)
    query = sa.select(audit).order_by(audit.c.at.desc(), audit.c.id.desc())
    if kinds is not None:
        live = sa.select(data_apis.c.api_id).where(data_apis.c.kind.in_(sorted(set(kinds))))
        if data_api is not None:
            live = live.where(data_apis.c.name == data_api)
        query = query.where(audit.c.data_api_id.in_(live))
    elif data_api is not None:
        query = query.where(audit.c.data_api == data_api)
    if key_id is not None:
        query = query.where(audit.c.key_id == key_id)
    with engine.connect() as conn:
        rows = conn.execute(query.limit(count)).all()
    return [
        AuditEvent(
            id=r.id,
            at=r.at,
            actor=r.actor,
            action=r.action,
            data_api=r.data_api,
            key_id=r.key_id,
            remote_addr=r.remote_addr,
            detail=r.detail,
        )
        for r in rows
    ]
