"""Change feed: remember snapshots dropped by retention (410 instead of 404 for their ids).

Revision ID: 0003_changes
Revises: 0002_v2
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from airflow_nx1_connect.core.store import UTCDateTime

revision = "0003_changes"
down_revision = "0002_v2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nx1_retired_snapshots",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("data_api", sa.String(63), nullable=False),
        sa.Column("published_at", UTCDateTime, nullable=True),
        sa.Column("retired_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["data_api"],
            ["nx1_data_apis.name"],
            name="fk_nx1_retired_snapshots_data_api_nx1_data_apis",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_nx1_retired_snapshots"),
    )


def downgrade() -> None:
    op.drop_table("nx1_retired_snapshots")
