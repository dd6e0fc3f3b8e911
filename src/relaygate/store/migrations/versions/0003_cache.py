"""The response cache's database tier, and each key's cache settings.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("cache", sa.JSON, nullable=True))
    op.create_table(
        "response_cache",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("scope", sa.String(300), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("entry", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_response_cache_expires_at", "response_cache", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_response_cache_expires_at", "response_cache")
    op.drop_table("response_cache")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("cache")
