"""Tenant-scoped keys: a key's row filter and column allowlist (`core.policy`).

`nx1_api_keys.row_filter` holds the filter's terms and `nx1_api_keys.allowed_columns` the
column allowlist, each a JSON array (NULL: no filter / every column). Existing keys get
neither, so they read as before. Columns are added with ALTER TABLE ADD COLUMN (no table is
rebuilt, so SQLite never drops and recreates `nx1_api_keys`, whose usage rows cascade).

Revision ID: 0007_tenant_keys
Revises: 0006_webhooks
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_tenant_keys"
down_revision = "0006_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nx1_api_keys", sa.Column("row_filter", sa.Text, nullable=True))
    op.add_column("nx1_api_keys", sa.Column("allowed_columns", sa.Text, nullable=True))


def downgrade() -> None:
    # ALTER TABLE DROP COLUMN (SQLite 3.35+, PostgreSQL): no rebuild of the table.
    op.drop_column("nx1_api_keys", "allowed_columns")
    op.drop_column("nx1_api_keys", "row_filter")
