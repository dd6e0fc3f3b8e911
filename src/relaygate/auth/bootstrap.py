"""The first admin key: created on an empty database, or taken from RELAYGATE_ADMIN_KEY.

Runs once in ``relaygate serve`` before any worker starts, so two workers
never both create one.
"""

from __future__ import annotations

from relaygate.auth.keys import hash_secret
from relaygate.errors import Conflict
from relaygate.settings import Settings
from relaygate.store.engine import create_engine
from relaygate.store.identity import IdentityStore

__all__ = ["ADMIN_TENANT", "ensure_admin_key"]

ADMIN_TENANT = "default"


async def ensure_admin_key(settings: Settings) -> str | None:
    """The new admin key's secret when one was just created (to print once), else None."""
    engine = create_engine(settings.database_url)
    try:
        store = IdentityStore(engine)
        given = settings.admin_key
        if given:
            if await store.find_by_hash(hash_secret(given)) is None:
                await _create(store, settings, secret=given)
            return None
        if await store.count_keys() == 0:
            return await _create(store, settings)
        return None
    finally:
        await engine.dispose()


async def _create(
    store: IdentityStore, settings: Settings, secret: str | None = None
) -> str | None:
    """Create the admin key; None when another replica starting at the same time won."""
    tenant = await store.tenant_by_name(ADMIN_TENANT)
    if tenant is None:
        try:
            tenant = await store.create_tenant(ADMIN_TENANT)
        except Conflict:  # created by a replica starting at the same moment
            tenant = await store.tenant_by_name(ADMIN_TENANT)
            assert tenant is not None
    try:
        _, created = await store.create_key(
            tenant.id,
            prefix=settings.auth.key_prefix,
            role="admin",
            tier="unlimited",
            name="admin",
            description="created at first start",
            secret=secret,
        )
    except Conflict:
        return None
    return created
