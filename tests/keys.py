"""Making keys in a running gateway's own database, for tests."""

from __future__ import annotations

from typing import Any

from tests.gateway import RunningGateway


async def new_key(
    gateway: RunningGateway,
    *,
    tier: str = "free",
    role: str = "user",
    tenant: str = "acme",
    **fields: Any,
) -> tuple[str, str]:
    """(key id, secret) of a new key in ``tenant`` (created when missing)."""
    store = gateway.state.identity
    found = await store.tenant_by_name(tenant) or await store.create_tenant(tenant)
    record, secret = await store.create_key(
        found.id, prefix=gateway.state.settings.auth.key_prefix, role=role, tier=tier, **fields
    )
    return record.id, secret
