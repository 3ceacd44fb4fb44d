"""The webhook tables of the snapshot store (revision 0006_webhooks).

- `nx1_webhooks`: subscriptions, one data API each; the secret is kept encrypted with
  Airflow's Fernet key (`secret_encrypted` says whether a key was configured).
- `nx1_webhook_events`: the outbox. One row per `snapshot.published` (written in the publish
  transaction) or `ping`; `payload` is the exact JSON body that is signed and sent.
- `nx1_webhook_deliveries`: one row per event and subscription: its status, attempts, last
  answer, when it is due next, and the claim (`claimed_by` until `claimed_until`) of the
  delivering process that is making an attempt.
"""

from __future__ import annotations

import sqlalchemy as sa

from airflow_nx1_connect.core.store import UTCDateTime, metadata

STATUSES = ("pending", "retrying", "delivered", "failed")

webhooks = sa.Table(
    "nx1_webhooks",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "data_api",
        sa.String(63),
        sa.ForeignKey("nx1_data_apis.name", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("secret_encrypted", sa.Boolean, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_nx1_webhooks_data_api", "data_api"),
)

events = sa.Table(
    "nx1_webhook_events",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "data_api",
        sa.String(63),
        sa.ForeignKey("nx1_data_apis.name", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("snapshot_id", sa.String(32), nullable=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

deliveries = sa.Table(
    "nx1_webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "event_id",
        sa.String(40),
        sa.ForeignKey("nx1_webhook_events.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column(
        "webhook_id",
        sa.String(32),
        sa.ForeignKey("nx1_webhooks.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime, nullable=True),
    sa.Column("last_attempt_at", UTCDateTime, nullable=True),
    sa.Column("response_status", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("claimed_until", UTCDateTime, nullable=True),
    sa.CheckConstraint("status IN ('pending', 'retrying', 'delivered', 'failed')", name="status"),
    sa.Index("ix_nx1_webhook_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_nx1_webhook_deliveries_webhook", "webhook_id", "created_at"),
    sa.Index("ix_nx1_webhook_deliveries_event", "event_id"),
)
