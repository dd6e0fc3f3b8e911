"""Bring your own key: users' encrypted provider keys and provider configurations, the
user an API key belongs to, and whose key a usage record was billed to.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_secrets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("owner", sa.String(300), nullable=False),
        sa.Column("shared", sa.Boolean, nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("key_name", sa.String(200), nullable=False),
        sa.Column("masked", sa.String(32), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("key_fingerprint", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_provider_secrets_owner", "provider_secrets", ["tenant_id", "owner"])
    op.create_table(
        "provider_configs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("owner", sa.String(300), nullable=False),
        sa.Column("provider_type", sa.String(32), nullable=False),
        sa.Column("api_key_id", sa.Integer, nullable=True),
        sa.Column("base_url", sa.String(2048), nullable=True),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("is_default", sa.Boolean, nullable=False),
        sa.Column("is_active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_provider_configs_owner", "provider_configs", ["tenant_id", "owner"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("user", sa.String(200), nullable=True))
    # a plain ADD COLUMN: on PostgreSQL it reaches every monthly partition
    op.add_column("usage_records", sa.Column("billed_to", sa.String(8), nullable=True))


def downgrade() -> None:
    op.drop_column("usage_records", "billed_to")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("user")
    op.drop_index("ix_provider_configs_owner", "provider_configs")
    op.drop_table("provider_configs")
    op.drop_index("ix_provider_secrets_owner", "provider_secrets")
    op.drop_table("provider_secrets")
