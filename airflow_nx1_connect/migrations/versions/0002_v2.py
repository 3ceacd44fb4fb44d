"""Version 2: index and key columns, key scopes and rate limits, usage, audit, run requests.

Revision ID: 0002_v2
Revises: 0001_initial
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from airflow_nx1_connect.core.store import UTCDateTime

revision = "0002_v2"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nx1_data_apis") as batch:
        batch.add_column(sa.Column("key_columns", sa.JSON, nullable=True))
        batch.add_column(sa.Column("index_columns", sa.JSON, nullable=True))
    with op.batch_alter_table("nx1_snapshots") as batch:
        batch.add_column(sa.Column("key_columns", sa.JSON, nullable=True))
        batch.add_column(sa.Column("indexed_columns", sa.JSON, nullable=True))
    with op.batch_alter_table("nx1_api_keys") as batch:
        batch.add_column(
            sa.Column("scopes", sa.String(64), nullable=False, server_default="read")
        )
        batch.add_column(sa.Column("rate_limit", sa.Integer, nullable=True))
        batch.add_column(sa.Column("rotated_from", sa.String(32), nullable=True))
    op.create_table(
        "nx1_key_usage",
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["nx1_api_keys.id"],
            name="fk_nx1_key_usage_key_id_nx1_api_keys",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key_id", "day", name="pk_nx1_key_usage"),
    )
    op.create_table(
        "nx1_audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(250), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("data_api", sa.String(63), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("remote_addr", sa.String(64), nullable=True),
        sa.Column("detail", sa.JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_nx1_audit"),
    )
    op.create_index("ix_nx1_audit_at", "nx1_audit", ["at"])
    op.create_table(
        "nx1_run_requests",
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("data_api", sa.String(63), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("requested_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["data_api"],
            ["nx1_data_apis.name"],
            name="fk_nx1_run_requests_data_api_nx1_data_apis",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("dag_id", "run_id", name="pk_nx1_run_requests"),
    )
    op.create_index(
        "ix_nx1_run_requests_data_api", "nx1_run_requests", ["data_api", "requested_at"]
    )


def downgrade() -> None:
    op.drop_table("nx1_run_requests")
    op.drop_table("nx1_audit")
    op.drop_table("nx1_key_usage")
    with op.batch_alter_table("nx1_api_keys") as batch:
        batch.drop_column("rotated_from")
        batch.drop_column("rate_limit")
        batch.drop_column("scopes")
    with op.batch_alter_table("nx1_snapshots") as batch:
        batch.drop_column("indexed_columns")
        batch.drop_column("key_columns")
    with op.batch_alter_table("nx1_data_apis") as batch:
        batch.drop_column("index_columns")
        batch.drop_column("key_columns")
