"""Least privilege: a stable id per data API, recorded on each audit event.

`nx1_data_apis.api_id` is new for every data API ever made (a data API that takes a deleted
one's name gets another), and `nx1_audit.data_api_id` names the data API an event was
recorded for, so a deleted data API's events are never shown as the events of the next one
with its name. Existing data APIs get an id; existing events get the id of the data API of
their name that existed when they were recorded (created at or before the event); events
older than that data API belonged to a deleted one and keep no id (Admin sees them).

Columns are added with ALTER TABLE ADD COLUMN (no table is rebuilt, so SQLite never drops
and recreates `nx1_data_apis`, whose snapshots and keys cascade on delete).

Revision ID: 0005_least_privilege
Revises: 0004_publish
Create Date: 2026-12-04
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0005_least_privilege"
down_revision = "0004_publish"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nx1_data_apis", sa.Column("api_id", sa.String(32), nullable=True))
    op.add_column("nx1_audit", sa.Column("data_api_id", sa.String(32), nullable=True))
    bind = op.get_bind()
    apis = sa.table("nx1_data_apis", sa.column("name", sa.String), sa.column("api_id", sa.String))
    for (name,) in bind.execute(sa.select(apis.c.name)).all():
        bind.execute(
            apis.update().where(apis.c.name == name).values(api_id=uuid.uuid4().hex)
        )
    op.create_index("ix_nx1_data_apis_api_id", "nx1_data_apis", ["api_id"], unique=True)
    # Both times are stored by the same column type, so they compare on either database.
    bind.execute(
        sa.text(
            "UPDATE nx1_audit SET data_api_id = (SELECT d.api_id FROM nx1_data_apis d "
            "WHERE d.name = nx1_audit.data_api AND d.created_at <= nx1_audit.at) "
            "WHERE data_api IS NOT NULL"
        )
    )
    op.create_index("ix_nx1_audit_data_api_id", "nx1_audit", ["data_api_id"])


def downgrade() -> None:
    op.drop_index("ix_nx1_audit_data_api_id", table_name="nx1_audit")
    op.drop_column("nx1_audit", "data_api_id")
    op.drop_index("ix_nx1_data_apis_api_id", table_name="nx1_data_apis")
    op.drop_column("nx1_data_apis", "api_id")
