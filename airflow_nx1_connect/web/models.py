"""Pydantic models of the data API's JSON bodies: the source of the OpenAPI schemas.

`core.serving` builds the bodies; these models describe them, and the contract tests
validate real responses against the OpenAPI document generated from them (schemathesis),
so the document cannot drift from what is sent.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from airflow_nx1_connect.core.store import KINDS
from airflow_nx1_connect.core.types import FAMILIES

Family = Literal[FAMILIES]  # type: ignore[valid-type]
Kind = Literal[KINDS]  # type: ignore[valid-type]


class Problem(BaseModel):
    """RFC 9457 problem details (application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str


class SnapshotSummary(BaseModel):
    """A published snapshot, without its rows."""

    id: str
    run_id: str | None
    data_interval_end: dt.datetime | None
    published_at: dt.datetime | None
    row_count: int | None


class Column(BaseModel):
    """A column of the latest snapshot and its type family."""

    name: str
    type: Family


class DataApi(BaseModel):
    """A data API: what it serves and its latest snapshot."""

    name: str
    kind: Kind
    description: str | None
    question: str | None
    created_at: dt.datetime
    latest_snapshot: SnapshotSummary | None
    columns: list[Column]
    indexed_columns: list[str] = Field(
        description="Columns of the latest snapshot with an index: filters on them are fast."
    )
    key_columns: list[str] = Field(description="Columns that identify a row (may be empty).")


class SnapshotList(BaseModel):
    """Retained published snapshots of a data API, newest first."""

    data_api: str
    snapshots: list[SnapshotSummary]


class RowsData(BaseModel):
    """One page of rows."""

    start: int = Field(ge=0)
    row_count: int = Field(ge=0, description="Rows in this page.")
    columns: list[str]
    column_types: list[Family]
    next_start: int | None = Field(description="start of the next page; null on the last.")
    next_url: str | None = Field(
        description="URL of the next page, on the snapshot's own URL (a publish between "
        "pages never mixes snapshots); null on the last."
    )
    data: list[list[Any]] | list[dict[str, Any]] = Field(
        description="The rows: lists in the order of `columns` (`shape=arrays`, the default) "
        'or objects `{"<column>": value}` (`shape=objects`).'
    )


class RowsPage(BaseModel):
    """A JSON page of a snapshot's rows."""

    data_api: str
    snapshot: SnapshotSummary
    data: RowsData


class ChangesData(BaseModel):
    """One page of a change feed: `_op` (insert, update or delete) leads every row."""

    start: int = Field(ge=0)
    row_count: int = Field(ge=0, description="Changes in this page.")
    columns: list[str] = Field(description="`_op`, then the snapshot's columns.")
    next_start: int | None = Field(description="start of the next page; null on the last.")
    next_url: str | None = Field(
        description="The next page's URL, `to` pinned to this feed's snapshot; null on the last."
    )
    data: list[list[Any]] | list[dict[str, Any]] = Field(
        description="The changes: lists in the order of `columns` (`shape=arrays`, the "
        'default) or objects `{"_op": ..., "<column>": value}` (`shape=objects`).'
    )


class ChangesPage(BaseModel):
    """A JSON page of the changes between two retained snapshots of a data API."""

    model_config = ConfigDict(populate_by_name=True)

    data_api: str
    from_: SnapshotSummary = Field(alias="from", description="The `since` snapshot.")
    to: SnapshotSummary = Field(description="The `to` snapshot (default: the latest).")
    data: ChangesData


RunState = Literal["queued", "running", "success", "failed"]


class RunStatus(BaseModel):
    """A run of the data API's rule: its state and the snapshot it published (on success)."""

    run_id: str = Field(description="The Airflow DAG run id.")
    state: RunState
    snapshot: SnapshotSummary | None = Field(
        description="The snapshot the run published; null until it has succeeded."
    )


class RunStarted(RunStatus):
    """A run started (or the API-requested run still in progress), with its status URL."""

    status_url: str = Field(description="GET it for the run's state (also in `Location`).")
