"""The control plane: every admin action on data APIs and keys, each one audited.

The command line, the admin view and the admin REST API call these, never `core.keys` /
`core.snapshots` directly for a change, so every change lands in the audit trail
(`core.audit`) with its actor (`cli:<os user>` or the Airflow user) and remote address.
Also the public dicts of a data API (`apis list --json`) and a key with its usage.

Least privilege, through two ports that the adapters fill with Airflow's answers (core does
not import Airflow):

- a data API is bound only to a real rule task: `create_data_api` asks a `RuleFinder`
  (`airflow_nx1_connect.rule_tasks.find_rule_task`) what task `dag_id`.`task_id` is, and
  refuses (ValidationError, 400) anything but a rule operator of the data API's kind that
  publishes to that name;
- a key with the `run` scope is created or rotated only by an actor who may trigger the rule's
  DAG (`Actor.may_trigger`, which the web adapters ask of Airflow's auth manager; the command
  line acts as the machine's operator, `Actor.operator`); otherwise AdminForbidden (403).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from airflow_nx1_connect.core import audit, key_options, keys, snapshots, usage
from airflow_nx1_connect.core.clock import as_utc, iso
from airflow_nx1_connect.core.errors import (
    AdminForbidden,
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


def _may_not_trigger(dag_id: str | None) -> bool:
    return False


@dataclass(frozen=True)
class Actor:
    """Who acts, and from where (None for the command line).

    `may_trigger(dag_id)` says whether the actor may trigger a run of that DAG (a key with the
    `run` scope lets an app do it); by default nobody may: the web adapters ask Airflow's auth
    manager for the logged-in user, and the command line acts as the machine's operator
    (`Actor.operator`).
    """

    name: str
    remote_addr: str | None = None
    may_trigger: Callable[[str | None], bool] = field(default=_may_not_trigger, compare=False)

    @classmethod
    def operator(cls, name: str) -> Actor:
        """The machine's operator (the command line): may trigger any DAG."""
        return cls(name, None, lambda _dag_id: True)


#: Rule operators by kind (what the messages name).
RULE_OPERATORS = {"ask": "AskRuleOperator", "engineer": "EngineerRuleOperator"}


@dataclass(frozen=True)
class RuleTask:
    """A task as Airflow can load it: its operator class and, for a rule operator (`kind`
    set), the data API it publishes to."""

    task_type: str
    kind: str | None = None
    data_api: str | None = None


#: Finds task `task_id` of DAG `dag_id` in what Airflow can load (None: no such DAG or
#: task). The adapters pass `airflow_nx1_connect.rule_tasks.find_rule_task`.
RuleFinder = Callable[[str, str], "RuleTask | None"]


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


def key_to_dict(key: keys.ApiKey, now: dt.datetime | None = None) -> dict[str, Any]:
    """The public view of a key (JSON-ready; ISO 8601 UTC times). Never the secret or hash."""
    return {
        "key_id": key.id,
        "prefix": key.prefix,
        "data_api": key.data_api,
        "description": key.description,
        "created": iso(key.created_at),
        "expires": iso(key.expires_at),
        "last_used": iso(key.last_used_at),
        "revoked": iso(key.revoked_at),
        "status": key.status(as_utc(now) if now is not None else None),
        "scopes": list(key.scopes),
        "rate_limit": key.rate_limit,
        **key.policy.to_dict(),
    }


def key_dicts(engine: Engine, found: Iterable[keys.ApiKey]) -> list[dict[str, Any]]:
    """Keys as `keys list --json` prints them, plus `rotated_from` and `usage`."""
    found = list(found)
    counts = usage.usage_for_keys(engine, [k.id for k in found])
    return [
        {**key_to_dict(k), "rotated_from": k.rotated_from, "usage": counts[k.id]} for k in found
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


def check_rule_task(rules: RuleFinder, *, name: str, kind: str, dag_id: str, task_id: str) -> None:
    """ValidationError unless `dag_id`.`task_id` is a rule task of `kind` publishing to `name`."""
    task = rules(dag_id, task_id)
    where = f"Task {task_id!r} of DAG {dag_id!r}"
    if task is None:
        raise ValidationError(
            f"{where} is not in Airflow: no DAG {dag_id!r} with a task {task_id!r} in its "
            "serialized DAGs or DAG folder. A data API is bound to a rule task that Airflow "
            "can load; deploy the rule's DAG first, or check the ids.",
            field="task_id",
        )
    expected = RULE_OPERATORS[kind]
    if task.kind is None:
        raise ValidationError(
            f"{where} is a {task.task_type}, not a rule: an {kind} data API is bound to an "
            f"{expected} task.",
            field="task_id",
        )
    if task.kind != kind:
        raise ValidationError(
            f"{where} is an {task.task_type} (an {task.kind} rule); an {kind} data API is "
            f"bound to an {expected} task.",
            field="task_id",
        )
    if task.data_api != name:
        raise ValidationError(
            f"{where} publishes to data API {task.data_api!r}, not {name!r}: name the data "
            f"API {task.data_api!r}, or bind {name!r} to the rule task that publishes to it.",
            field="task_id",
        )


def create_data_api(
    engine: Engine,
    *,
    name: str,
    kind: str,
    dag_id: str,
    task_id: str,
    description: str | None = None,
    key_days: int | str | None = None,
    rules: RuleFinder,
    actor: Actor,
) -> tuple[snapshots.DataApi, keys.CreatedKey]:
    """Register a data API ahead of its rule's first run, bound to `dag_id`.`task_id`.

    Returns the data API and its first key (read only; the secret, shown once). The task
    must be a rule task of `kind` that publishes to `name`, as `rules` finds it in Airflow
    (ValidationError otherwise, nothing created). Until the rule's first run publishes,
    reads answer 404 "no snapshot published yet"; that run publishes into it (another task
    claiming the name is refused). Conflict when the name is taken.
    """
    snapshots.validate_name(name)
    if kind not in KINDS:
        raise ValidationError(
            f"kind must be one of {', '.join(KINDS)}; got {kind!r}.", field="kind"
        )
    _rule_id(dag_id, "dag_id")
    _rule_id(task_id, "task_id")
    if key_days is None or key_days == "":
        days = min(DEFAULT_FIRST_KEY_DAYS, key_options.max_key_days())
    else:
        days = key_options.validate_days(key_days)
    if description is not None and not isinstance(description, str):
        raise ValidationError("The description must be text.", field="description")
    text = (description or "").strip() or None
    if text is not None and len(text) > key_options.MAX_DESCRIPTION_LENGTH:
        raise ValidationError(
            f"Keep the description to at most {key_options.MAX_DESCRIPTION_LENGTH} characters.",
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
    check_rule_task(rules, name=name, kind=kind, dag_id=dag_id, task_id=task_id)
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
    identity = audit.data_api_id(engine, name)
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
        data_api_id=identity,
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
    row_filter: Iterable[str] | None = None,
    columns: Iterable[str] | str | None = None,
    actor: Actor,
) -> keys.CreatedKey:
    """Create a key (see `core.keys.create_key`) and audit it, with its policy (row filter
    and column allowlist, `core.policy`).

    A key with the `run` scope only for an actor who may trigger the rule's DAG (403).
    """
    if "run" in set(scopes or ()):
        check_may_trigger(engine, actor, data_api)
    created = keys.create_key(
        engine,
        data_api=data_api,
        days=key_options.validate_days(days),
        description=description,
        scopes=scopes,
        rate_limit=key_options.validate_rate_limit(rate_limit),
        row_filter=row_filter,
        columns=columns,
    )
    k = created.key
    audit.record(
        engine,
        actor=actor.name,
        action="create_key",
        data_api=k.data_api,
        key_id=k.id,
        remote_addr=actor.remote_addr,
        detail={
            "expires": k.expires_at,
            "scopes": list(k.scopes),
            "rate_limit": k.rate_limit,
            **k.policy.to_dict(),
        },
    )
    return created


def check_may_trigger(engine: Engine, actor: Actor, data_api: str) -> None:
    """AdminForbidden unless `actor` may trigger the DAG of `data_api`'s rule."""
    api = snapshots.get_data_api(engine, data_api)
    if not actor.may_trigger(api.dag_id):
        dag = f"DAG {api.dag_id!r}" if api.dag_id else "DAGs"
        raise AdminForbidden(
            f"User {actor.name!r} may not make or rotate a key with the run scope for data API "
            f"{data_api!r}: Airflow does not let this user trigger {dag}, and a run key "
            "would. Make a read-only key, or ask an Airflow administrator for the right to "
            "trigger it."
        )


def extend_key(engine: Engine, key_id: str, *, days: int | str, actor: Actor) -> keys.ApiKey:
    """Extend a key (see `core.keys.extend_key`) and audit it."""
    key = keys.extend_key(engine, key_id, days=key_options.validate_days(days))
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
    """Rotate a key (see `core.keys.rotate_key`) and audit it: (new key, old key).

    A key with the `run` scope only by an actor who may trigger the rule's DAG (403).
    """
    current = keys.get_key(engine, key_id)
    if "run" in current.scopes:
        check_may_trigger(engine, actor, current.data_api)
    created, old = keys.rotate_key(
        engine,
        key_id,
        overlap_hours=key_options.validate_overlap_hours(overlap_hours),
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
