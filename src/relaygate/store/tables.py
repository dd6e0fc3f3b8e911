"""The schema, as SQLAlchemy Core tables. Migrations in ``migrations/`` create it."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = [
    "api_keys",
    "metadata",
    "node_tokens",
    "provider_configs",
    "provider_secrets",
    "response_cache",
    "stored_responses",
    "tenants",
    "usage_daily",
    "usage_records",
]

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
    Column("cache", JSON, nullable=True),  # the key's cache settings (settings.KeyCache)
    # the user the key belongs to (BYOK ownership); None: the key is its own owner
    Column("user", String(200), nullable=True),
)
Index("ix_api_keys_tenant_id", api_keys.c.tenant_id)
Index("ix_api_keys_updated_at", api_keys.c.updated_at)

# One row per admitted request. On PostgreSQL the table is partitioned by month on
# created_at (see migration 0002), so the key must include created_at; a record
# always carries the same created_at, so replays still hit the same row.
usage_records = Table(
    "usage_records",
    metadata,
    Column("request_id", String(40), primary_key=True),
    Column("created_at", DateTime(timezone=True), primary_key=True),
    Column("key_id", String(40), nullable=True),
    Column("tenant_id", String(40), nullable=True),
    Column("api", String(16), nullable=False),
    Column("endpoint", String(128), nullable=False),
    Column("model", String(256), nullable=False),
    Column("provider", String(16), nullable=True),
    Column("deployment", String(300), nullable=True),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("tokens_estimated", Boolean, nullable=False),
    Column("cached", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("http_status", Integer, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("client_ip", String(64), nullable=True),
    Column("cost", Float, nullable=False),
    # "user" or "tenant": served with the caller's own (or its tenant's) provider key
    # (BYOK); None: with the operator's. See vault/.
    Column("billed_to", String(8), nullable=True),
)
Index("ix_usage_records_tenant_created", usage_records.c.tenant_id, usage_records.c.created_at)
Index("ix_usage_records_key_created", usage_records.c.key_id, usage_records.c.created_at)

# Daily rollups, maintained incrementally by the writer (never by scanning usage_records).
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("day", Date, primary_key=True),
    Column("tenant_id", String(40), primary_key=True),  # "" when none
    Column("key_id", String(40), primary_key=True),  # "" when none
    Column("endpoint", String(128), primary_key=True),
    Column("model", String(256), primary_key=True),
    Column("request_count", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("duration_ms_sum", Float, nullable=False),
    Column("cached_requests", BigInteger, nullable=False),
    Column("error_requests", BigInteger, nullable=False),
    Column("cost", Float, nullable=False),
)

# The response cache's third tier: popular answers kept long (cache/database.py).
# ``scope`` and ``model`` are kept so an administrator can drop a tenant's or a model's.
response_cache = Table(
    "response_cache",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("scope", String(300), nullable=False),
    Column("model", String(256), nullable=False),
    Column("expires_at", Float, nullable=False),  # seconds since the epoch
    Column("entry", LargeBinary, nullable=False),
)
Index("ix_response_cache_expires_at", response_cache.c.expires_at)

# Responses API answers kept for ``previous_response_id`` and ``GET /v1/responses/{id}``
# (store/responses.py). Reads are always scoped to ``owner``: the tenant's id, or the
# caller's subject (``key:<id>``, ``jwt:<sub>``) when it has no tenant.
stored_responses = Table(
    "responses",
    metadata,
    Column("id", String(300), primary_key=True),
    Column("owner", String(300), nullable=False),
    Column("tenant_id", String(40), nullable=True),
    Column("key_id", String(40), nullable=True),
    Column("model", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),  # None: until deleted
    Column("previous_response_id", String(300), nullable=True),
    Column("input_items", LargeBinary, nullable=False),  # JSON: the items this request added
    Column("response", LargeBinary, nullable=False),  # JSON: the Response object, output included
)
Index("ix_responses_expires_at", stored_responses.c.expires_at)

# Users' own provider keys (vault/), encrypted (vault/crypto.py). ``owner`` is the user
# (JWT subject, a key's ``user``, or ``key:<id>``); "" with ``shared``: the tenant's.
# ``tenant_id`` is "" for callers without a tenant. ``key_fingerprint`` names the master
# key the ciphertext is under; ``version`` changes whenever the ciphertext does.
provider_secrets = Table(
    "provider_secrets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(40), nullable=False),
    Column("owner", String(300), nullable=False),
    Column("shared", Boolean, nullable=False),
    Column("provider", String(32), nullable=False),
    Column("key_name", String(200), nullable=False),
    Column("masked", String(32), nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("key_fingerprint", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
)
Index("ix_provider_secrets_owner", provider_secrets.c.tenant_id, provider_secrets.c.owner)

# A user's provider choices (seed 004's AIProviderConfig); ``config`` is
# {model, temperature, max_tokens}; ``base_url`` only for the self-hosted types.
provider_configs = Table(
    "provider_configs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(40), nullable=False),
    Column("owner", String(300), nullable=False),
    Column("provider_type", String(32), nullable=False),
    Column("api_key_id", Integer, nullable=True),
    Column("base_url", String(2048), nullable=True),
    Column("config", JSON, nullable=False),
    Column("is_default", Boolean, nullable=False),
    Column("is_active", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_provider_configs_owner", provider_configs.c.tenant_id, provider_configs.c.owner)
# Tokens of nodes that dial out to the gateway (tunnel/): one name per node, the
# token's SHA-256 only. A node token serves; it never authenticates an API call.
node_tokens = Table(
    "node_tokens",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(32), nullable=False),  # shown in lists: "rgn_AbCdEf"
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)
Index("ix_node_tokens_name", node_tokens.c.name)
