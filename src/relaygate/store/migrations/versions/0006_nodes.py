"""Tokens of nodes that dial out to the gateway (``relaygate node``).

Revision ID: 0006
Revises: 0004 (0005 is added beside this one; the chain is joined at merge)
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_tokens",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_node_tokens_name", "node_tokens", ["name"])


def downgrade() -> None:
    op.drop_index("ix_node_tokens_name", "node_tokens")
    op.drop_table("node_tokens")
