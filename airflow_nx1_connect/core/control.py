"""The control plane: every admin action on data APIs and keys, each one audited.

The command line, the admin view and the admin REST API call these, never `core.keys` /
`core.snapshots` directly for a change, so every change lands in the audit trail
(`core.audit`) with its actor (`cli:<os user>` or the Airflow user) and remote address.
Also the public dicts of a data API (`apis list --json`) and a key with its usage.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from airflow_nx1_connect.core import audit, keys, snapshots, usage
from airflow_nx1_connect.core.clock import iso
from airflow_nx1_connect.core.errors import (
    Conflict,
    DataApiNotFound,
    SnapshotNotFound,
    ValidationError,
)
from airflow_nx1_connect.core.store import KINDS

#: Validity of a data API's first key unless `key_days` is given (capped by max_key_days).
DEFAULT_FIRST_KEY_DAYS = 30
#: Airflow's limit on DAG and task ids.
_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,250}$")
FIRST_KEY_DESCRIPTION = "first key, created with the data API"


@dataclass(frozen=True)
class Actor:
    """Who acts, and from where (None for the command line)."""

    name: str
    remote_addr: str | None = None


# ---------------------------------------------------------------------------------------
# Public dicts
# ---------------------------------------------------------------------------------------


def data_api_dict(engine: Engine, api: snapshots.DataApi) -> dict[str, Any]:
    """A data API as `apis list --json` prints it (with its latest snapshot's summary)."""
    try:
        latest: dict[str, Any] | None = snapshots.latest_snapshot(engine, api.name).summary()
    except SnapshotNotFound:
        latest = None
    return {
        "name": api.name,
        "kind": api.kind,
        "description": api.description,
        "question": api.question,
        "dag_id": api.dag_id,
        "task_id": api.task_id,
        "write_mode": api.write_mode,
        "created_at": iso(api.created_at),
        "updated_at": iso(api.updated_at),
        "latest_snapshot": latest,
        "last_failure": api.last_failure(),
    }


def key_dicts(engine: Engine, found: Iterable[keys.ApiKey]) -> list[dict[str, Any]]:
    """Keys as `keys list --json` prints them, plus `rotated_from` and `usage`."""
    found = list(found)
    counts = usage.usage_for_keys(engine, [k.id for k in found])
    return [
        {**keys.key_to_dict(k), "rotated_from": k.rotated_from, "usage": counts[k.id]}
        for k in found
    ]


def key_dict(engine: Engine, key: keys.ApiKey) -> dict[str, Any]:
    """One key as in `key_dicts`."""
    return key_dicts(engine, [key])[0]


# ---------------------------------------------------------------------------------------
# Data APIs
# ---------------------------------------------------------------------------------------


def _rule_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValidationError(
            f"{field} must be the Airflow id of the rule's {field.removesuffix('_id')}: "
            "1-250 letters, digits, '_', '.' or '-'.",
            field=field,
        )
    return value


def create_data_api(
    engine: Engine,
    *,
    name: str,
    kind: str,
    dag_id: str,
    task_id: str,
    description: str | None = None,
    key_days: int | str | None = None,
    actor: Actor,
) -> tuple[snapshots.DataApi, keys.CreatedKey]:
    """Register a data API ahead of its rule's first run, bound to `dag_id`.`task_id`.

    Returns the data API and its first key (the secret, shown once). Until the rule's
    first run publishes, reads answer 404 "no snapshot published yet"; that run publishes
    into it (another task claiming the name is refused). Conflict when the name is taken.
    """
    snapshots.validate_name(name)
    if kind not in KINDS:
        raise ValidationError(
            f"kind must be one of {', '.join(KINDS)}; got {kind!r}.", field="kind"
        )
    _rule_id(dag_id, "dag_id")
    _rule_id(task_id, "task_id")
    if key_days is None or key_days == "":
        days = min(DEFAULT_FIRST_KEY_DAYS, keys.max_key_days())
    else:
        days = keys.validate_days(key_days)
    if description is not None and not isinstance(description, str):
        raise ValidationError("The description must be text.", field="description")
    text = (description or "").strip() or None
    if text is not None and len(text) > keys.MAX_DESCRIPTION_LENGTH:
        raise ValidationError(
            f"Keep the description to at most {keys.MAX_DESCRIPTION_LENGTH} characters.",
            field="description",
        )
    try:
        existing = snapshots.get_data_api(engine, name)
    except DataApiNotFound:
        pass
    else:
        owner = (
            f" (task {existing.task_id!r} of DAG {existing.dag_id!r})" if existing.dag_id else ""
        )
        raise Conflict(
            f"A data API called {name!r} already exists{owner}; choose another name, or "
            f"delete it first with: nx1-connect apis delete {name}"
        )
    api = snapshots.register_data_api(
        engine, name=name, kind=kind, description=text, dag_id=dag_id, task_id=task_id
    )
    created = keys.create_key(engine, data_api=name, days=days, description=FIRST_KEY_DESCRIPTION)
    audit.record(
        engine,
        actor=actor.name,
        action="create_data_api",
        data_api=name,
        key_id=created.key.id,
        remote_addr=actor.remote_addr,
        detail={"kind": kind, "dag_id": dag_id, "task_id": task_id, "key_days": days},
    )
    return api, created


def delete_data_api(engine: Engine, name: str, *, actor: Actor) -> dict[str, int]:
    """Delete a data API with its keys and snapshots; returns how many of each went."""
    snapshots.get_data_api(engine, name)
    n_keys = len(keys.list_keys(engine, data_api=name))
    n_snaps = len(
        snapshots.list_snapshots(engine, name, statuses=("published", "writing", "failed"))
    )
    snapshots.delete_data_api(engine, name)
    counts = {"keys": n_keys, "snapshots": n_snaps}
    audit.record(
        engine,
        actor=actor.name,
        action="delete_data_api",
        data_api=name,
        remote_addr=actor.remote_addr,
        detail=counts,
    )
    return counts


# ---------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------


def create_key(
    engine: Engine,
    *,
    data_api: str,
    days: int | str,
    description: str | None = None,
    scopes: Iterable[str] | None = None,
    rate_limit: int | str | None = None,
    actor: Actor,
) -> keys.CreatedKey:
    """Create a key (see `core.keys.create_key`) and audit it."""
    created = keys.create_key(
        engine,
        data_api=data_api,
        days=keys.validate_days(days),
        description=description,
        scopes=scopes,
        rate_limit=keys.validate_rate_limit(rate_limit),
    )
    k = created.key
    audit.record(
        engine,
        actor=actor.name,
        action="create_key",
        data_api=k.data_api,
        key_id=k.id,
        remote_addr=actor.remote_addr,
        detail={"expires": k.expires_at, "scopes": list(k.scopes), "rate_limit": k.rate_limit},
    )
    return created


def extend_key(engine: Engine, key_id: str, *, days: int | str, actor: Actor) -> keys.ApiKey:
    """Extend a key (see `core.keys.extend_key`) and audit it."""
    key = keys.extend_key(engine, key_id, days=keys.validate_days(days))
    _record_key(engine, "extend_key", key, actor, {"expires": key.expires_at})
    return key


def revoke_key(engine: Engine, key_id: str, *, actor: Actor) -> keys.ApiKey:
    """Revoke a key (see `core.keys.revoke_key`) and audit it."""
    key = keys.revoke_key(engine, key_id)
    _record_key(engine, "revoke_key", key, actor, {"revoked": key.revoked_at})
    return key


def rotate_key(
    engine: Engine,
    key_id: str,
    *,
    overlap_hours: int | str | None = None,
    actor: Actor,
    now: dt.datetime | None = None,
) -> tuple[keys.CreatedKey, keys.ApiKey]:
    """Rotate a key (see `core.keys.rotate_key`) and audit it: (new key, old key)."""
    created, old = keys.rotate_key(
        engine,
        key_id,
        overlap_hours=keys.validate_overlap_hours(overlap_hours),
        now=now,
    )
    _record_key(
        engine,
        "rotate_key",
        old,
        actor,
        {"new_key_id": created.key.id, "old_key_expires": old.expires_at},
    )
    return created, old


def delete_key(engine: Engine, key_id: str, *, actor: Actor) -> None:
    """Delete a key (see `core.keys.delete_key`) and audit it."""
    key = keys.get_key(engine, key_id)
    keys.delete_key(engine, key_id)
    _record_key(engine, "delete_key", key, actor, None)


def _record_key(
    engine: Engine, action: str, key: keys.ApiKey, actor: Actor, detail: dict[str, Any] | None
) -> None:
    audit.record(
        engine,
        actor=actor.name,
        action=action,
        data_api=key.data_api,
        key_id=key.id,
        remote_addr=actor.remote_addr,
        detail=detail,
    )
