"""Stored Responses API answers (``previous_response_id``, ``GET /v1/responses/{id}``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(300), primary_key=True),
        sa.Column("owner", sa.String(300), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=True),
        sa.Column("key_id", sa.String(40), nullable=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("previous_response_id", sa.String(300), nullable=True),
        sa.Column("input_items", sa.LargeBinary, nullable=False),
        sa.Column("output_items", sa.LargeBinary, nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_responses_owner_created", "responses", ["owner", "created_at"])
    op.create_index("ix_responses_expires_at", "responses", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_responses_expires_at", "responses")
    op.drop_index("ix_responses_owner_created", "responses")
    op.drop_table("responses")
