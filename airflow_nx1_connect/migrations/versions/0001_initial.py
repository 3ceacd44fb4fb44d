"""Initial snapshot store: data APIs, snapshots, API keys.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from airflow_nx1_connect.core.store import UTCDateTime

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nx1_data_apis",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("question", sa.Text, nullable=True),
        sa.Column("dag_id", sa.String(250), nullable=True),
        sa.Column("task_id", sa.String(250), nullable=True),
        sa.Column("conn_id", sa.String(250), nullable=True),
        sa.Column("write_mode", sa.String(16), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("latest_snapshot_id", sa.String(32), nullable=True),
        sa.CheckConstraint("kind IN ('ask', 'engineer')", name="ck_nx1_data_apis_kind"),
        sa.PrimaryKeyConstraint("name", name="pk_nx1_data_apis"),
    )
    op.create_table(
        "nx1_snapshots",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("data_api", sa.String(63), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=True),
        sa.Column("data_interval_end", UTCDateTime, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("row_count", sa.BigInteger, nullable=True),
        sa.Column("columns", sa.JSON, nullable=True),
        sa.Column("column_types", sa.JSON, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("published_at", UTCDateTime, nullable=True),
        sa.Column("table_name", sa.String(63), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.CheckConstraint(
            "status IN ('writing', 'published', 'failed')", name="ck_nx1_snapshots_status"
        ),
        sa.ForeignKeyConstraint(
            ["data_api"],
            ["nx1_data_apis.name"],
            name="fk_nx1_snapshots_data_api_nx1_data_apis",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_nx1_snapshots"),
        sa.UniqueConstraint("table_name", name="uq_nx1_snapshots_table_name"),
    )
    op.create_index(
        "ix_nx1_snapshots_api_status_published",
        "nx1_snapshots",
        ["data_api", "status", "published_at"],
    )
    op.create_table(
        "nx1_api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("data_api", sa.String(63), nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.Column("last_used_at", UTCDateTime, nullable=True),
        sa.ForeignKeyConstraint(
            ["data_api"],
            ["nx1_data_apis.name"],
            name="fk_nx1_api_keys_data_api_nx1_data_apis",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_nx1_api_keys"),
    )
    op.create_index("ix_nx1_api_keys_key_hash", "nx1_api_keys", ["key_hash"], unique=True)
    op.create_index("ix_nx1_api_keys_data_api", "nx1_api_keys", ["data_api"])


def downgrade() -> None:
    op.drop_table("nx1_api_keys")
    op.drop_table("nx1_snapshots")
    op.drop_table("nx1_data_apis")
