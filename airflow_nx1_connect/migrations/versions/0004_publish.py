"""Publish checks: remember a data API's last failed run (`last_failure`).

Revision ID: 0004_publish
Revises: 0003_changes
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from airflow_nx1_connect.core.store import UTCDateTime

revision = "0004_publish"
down_revision = "0003_changes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN: a rebuilt `nx1_data_apis` on SQLite would cascade-delete
    # its keys and snapshots.
    op.add_column("nx1_data_apis", sa.Column("last_failure_run_id", sa.String(250)))
    op.add_column("nx1_data_apis", sa.Column("last_failure_at", UTCDateTime))
    op.add_column("nx1_data_apis", sa.Column("last_failure_detail", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("nx1_data_apis") as batch:
        batch.drop_column("last_failure_detail")
        batch.drop_column("last_failure_at")
        batch.drop_column("last_failure_run_id")
