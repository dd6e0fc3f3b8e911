"""The schema, as SQLAlchemy Core tables. Migrations in ``migrations/`` create it."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["api_keys", "metadata", "tenants"]

metadata = MetaData()

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("tier", String(64), nullable=True),  # tenant-wide limits; None: only per-key limits
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(32), nullable=False),  # shown in lists: "rg_AbCdEf…"
    Column("name", String(200), nullable=False, default=""),
    Column("description", Text, nullable=False, default=""),
    Column("role", String(16), nullable=False),
    Column("tier", String(64), nullable=False),
    Column("limits", JSON, nullable=True),  # per-key overrides of the tier's numbers
    Column("enabled", Boolean, nullable=False, default=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("metadata", JSON, nullable=True, key="meta"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)
Index("ix_api_keys_tenant_id", api_keys.c.tenant_id)
Index("ix_api_keys_updated_at", api_keys.c.updated_at)
