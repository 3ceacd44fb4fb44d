"""Pydantic models of the admin REST API (`/nx1/api/v1/admin`): request bodies and the
OpenAPI schemas of what it answers (the dicts of `core.control` and `core.audit`)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from airflow_nx1_connect.core.key_options import MAX_DESCRIPTION_LENGTH, SCOPES
from airflow_nx1_connect.core.snapshots import NAME_RE
from airflow_nx1_connect.web.models import Kind, SnapshotSummary

Scope = Literal[SCOPES]  # type: ignore[valid-type]
_RULE_ID = r"^[A-Za-z0-9_.\-]{1,250}$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateDataApiBody(_Body):
    """A data API to create ahead of its rule's first run, with its first key."""

    name: str = Field(pattern=NAME_RE.pattern, description="The data API's name (a slug).")
    kind: Kind
    dag_id: str = Field(pattern=_RULE_ID, description="The rule's DAG.")
    task_id: str = Field(pattern=_RULE_ID, description="The rule's task in that DAG.")
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_LENGTH)
    key_days: int | None = Field(
        default=None, ge=1, description="Validity of the first key (default 30)."
    )


class CreateKeyBody(_Body):
    """A key to create."""

    data_api: str = Field(pattern=NAME_RE.pattern)
    days: int = Field(ge=1, description="Validity in days, at most `max_key_days`.")
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_LENGTH)
    scopes: list[Scope] | None = Field(default=None, description="`read` is always given.")
    rate_limit: int | None = Field(
        default=None, ge=0, description="Requests per minute (0 = none; default: the setting)."
    )
    row_filter: list[str] | None = Field(
        default=None,
        description="Row filter: terms `<column>=<op>.<value>` (the grammar of `where.`), "
        "AND-ed; the key reads only matching rows. Fixed at creation, kept by a rotation.",
        examples=[["region=eq.EU"]],
    )
    columns: list[str] | None = Field(
        default=None,
        description="Column allowlist: the key sees only these columns (null: all).",
        examples=[["region", "units"]],
    )


class ExtendKeyBody(_Body):
    """How many days later the key expires (counted from now if it already expired)."""

    days: int = Field(ge=1)


class RotateKeyBody(_Body):
    """How long the old key stays valid next to the new one."""

    overlap_hours: int | None = Field(default=None, ge=0, description="Default 24.")


class LastFailure(BaseModel):
    """A failed run of a data API's rule: nothing was published, the latest is unchanged."""

    run_id: str | None = Field(description="The Airflow run id.")
    at: dt.datetime = Field(description="When the run failed (UTC).")
    detail: str = Field(description="Why: failed publish checks, the database's error, ...")


class AdminDataApi(BaseModel):
    """A data API as `nx1-connect apis list --json` prints it."""

    name: str
    kind: Kind
    description: str | None
    question: str | None
    dag_id: str | None
    task_id: str | None
    write_mode: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    latest_snapshot: SnapshotSummary | None
    last_failure: LastFailure | None = Field(
        description="The last failed run of the rule; null when its last run published."
    )


class Usage(BaseModel):
    """Requests made with the key (UTC days; the last 7 days include today)."""

    today: int = Field(ge=0)
    last_7_days: int = Field(ge=0)
    total: int = Field(ge=0)


class AdminKey(BaseModel):
    """A key as `nx1-connect keys list --json` prints it, with its usage. Never the secret."""

    key_id: str
    prefix: str
    data_api: str
    description: str | None
    created: dt.datetime
    expires: dt.datetime
    last_used: dt.datetime | None
    revoked: dt.datetime | None
    status: Literal["active", "expired", "revoked"]
    scopes: list[Scope]
    rate_limit: int | None
    rotated_from: str | None
    usage: Usage
    row_filter: list[str] = Field(description="The key's row filter terms (empty: none).")
    columns: list[str] | None = Field(description="The key's column allowlist (null: all).")


class CreatedKey(AdminKey):
    """A new key: its record and the secret, shown this once."""

    key: str = Field(description="The data API key. Store it now: it is not shown again.")


class CreatedDataApi(AdminDataApi):
    """A new data API and its first key (the secret shown this once)."""

    key: CreatedKey


class AuditEvent(BaseModel):
    """An admin action: when, who, what, on which data API and key, from where."""

    at: dt.datetime
    actor: str
    action: str
    data_api: str | None
    key_id: str | None
    remote_addr: str | None
    detail: dict[str, object] | None
