"""Webhooks: subscriptions, the outbox of events, and one delivery per event and subscription.

Revision ID: 0006_webhooks
Revises: 0005_least_privilege
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from airflow_nx1_connect.core.store import UTCDateTime

revision = "0006_webhooks"
down_revision = "0005_least_privilege"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nx1_webhooks",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("data_api", sa.String(63), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("secret_encrypted", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["data_api"],
            ["nx1_data_apis.name"],
            name="fk_nx1_webhooks_data_api_nx1_data_apis",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_nx1_webhooks"),
    )
    op.create_index("ix_nx1_webhooks_data_api", "nx1_webhooks", ["data_api"])
    op.create_table(
        "nx1_webhook_events",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("data_api", sa.String(63), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("snapshot_id", sa.String(32), nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["data_api"],
            ["nx1_data_apis.name"],
            name="fk_nx1_webhook_events_data_api_nx1_data_apis",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_nx1_webhook_events"),
    )
    op.create_table(
        "nx1_webhook_deliveries",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(40), nullable=False),
        sa.Column("webhook_id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime, nullable=True),
        sa.Column("last_attempt_at", UTCDateTime, nullable=True),
        sa.Column("response_status", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", UTCDateTime, nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'retrying', 'delivered', 'failed')",
            name="ck_nx1_webhook_deliveries_status",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["nx1_webhook_events.id"],
            name="fk_nx1_webhook_deliveries_event_id_nx1_webhook_events",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["nx1_webhooks.id"],
            name="fk_nx1_webhook_deliveries_webhook_id_nx1_webhooks",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_nx1_webhook_deliveries"),
    )
    op.create_index(
        "ix_nx1_webhook_deliveries_due", "nx1_webhook_deliveries", ["status", "next_attempt_at"]
    )
    op.create_index(
        "ix_nx1_webhook_deliveries_webhook",
        "nx1_webhook_deliveries",
        ["webhook_id", "created_at"],
    )
    op.create_index("ix_nx1_webhook_deliveries_event", "nx1_webhook_deliveries", ["event_id"])


def downgrade() -> None:
    op.drop_table("nx1_webhook_deliveries")
    op.drop_table("nx1_webhook_events")
    op.drop_index("ix_nx1_webhooks_data_api", table_name="nx1_webhooks")
    op.drop_table("nx1_webhooks")
