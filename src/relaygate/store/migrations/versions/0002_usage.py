"""Usage records (partitioned by month on PostgreSQL) and daily rollups.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = """
    request_id VARCHAR(40) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    key_id VARCHAR(40),
    tenant_id VARCHAR(40),
    api VARCHAR(16) NOT NULL,
    endpoint VARCHAR(128) NOT NULL,
    model VARCHAR(256) NOT NULL,
    provider VARCHAR(16),
    deployment VARCHAR(300),
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    tokens_estimated BOOLEAN NOT NULL,
    cached BOOLEAN NOT NULL,
    status VARCHAR(16) NOT NULL,
    http_status INTEGER NOT NULL,
    duration_ms DOUBLE PRECISION NOT NULL,
    ttft_ms DOUBLE PRECISION,
    client_ip VARCHAR(64),
    cost DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (request_id, created_at)
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Seed 001: PARTITION BY RANGE (created_at). Monthly partitions are created
        # ahead by the writer; the default partition catches anything outside them.
        op.execute(f"CREATE TABLE usage_records ({_COLUMNS}) PARTITION BY RANGE (created_at)")
        op.execute("CREATE TABLE usage_records_default PARTITION OF usage_records DEFAULT")
    else:
        op.execute(f"CREATE TABLE usage_records ({_COLUMNS})")
    op.create_index("ix_usage_records_tenant_created", "usage_records", ["tenant_id", "created_at"])
    op.create_index("ix_usage_records_key_created", "usage_records", ["key_id", "created_at"])
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("endpoint", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("request_count", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("duration_ms_sum", sa.Float, nullable=False),
        sa.Column("cached_requests", sa.BigInteger, nullable=False),
        sa.Column("error_requests", sa.BigInteger, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("usage_daily")
    op.drop_index("ix_usage_records_key_created", "usage_records")
    op.drop_index("ix_usage_records_tenant_created", "usage_records")
    op.execute("DROP TABLE usage_records CASCADE")
