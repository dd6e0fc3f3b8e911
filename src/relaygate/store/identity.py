"""Tenants and API keys in the database.

Only key hashes are stored. Nothing here returns a secret except the calls
that make one (create, rotate), which return it once beside the record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate.auth.keys import (
    display_prefix,
    generate_secret,
    hash_secret,
    imported_display,
    new_id,
)
from relaygate.errors import Conflict, NotFound
from relaygate.store.tables import api_keys, tenants

__all__ = ["IdentityStore", "KeyRecord", "Tenant", "resolve_tenant", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every time here is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    tier: str | None
    created_at: datetime

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "tier": self.tier,
            "created_at": self.created_at.isoformat(),
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key as stored, without its secret or hash."""

    id: str
    tenant_id: str
    tenant_name: str
    tenant_tier: str | None
    prefix: str
    name: str
    description: str
    role: str
    tier: str
    limits: dict[str, int] | None
    enabled: bool
    expires_at: datetime | None
    last_used_at: datetime | None
    metadata: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    revoked_at: datetime | None
    cache: dict[str, Any] | None = None  # the key's own cache settings (settings.KeyCache)
    user: str | None = None  # the user the key belongs to (BYOK); None: its own owner

    def usable(self, now: datetime) -> bool:
        """Enabled, not revoked, not expired."""
        if not self.enabled or self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > now

    def public(self) -> dict[str, Any]:
        """What an API may show: never the hash, never the secret."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id, "tenant_id": self.tenant_id, "prefix": self.prefix,
            "name": self.name, "description": self.description, "role": self.role,
            "tier": self.tier, "limits": self.limits, "enabled": self.enabled,
            "expires_at": iso(self.expires_at), "last_used_at": iso(self.last_used_at),
            "metadata": self.metadata, "created_at": iso(self.created_at),
            "revoked": self.revoked_at is not None, "cache": self.cache, "user": self.user,
        }  # fmt: skip


_KEY_COLUMNS = (
    api_keys.c.id, api_keys.c.tenant_id, tenants.c.name, tenants.c.tier, api_keys.c.prefix,
    api_keys.c.name, api_keys.c.description, api_keys.c.role, api_keys.c.tier,
    api_keys.c.limits, api_keys.c.enabled, api_keys.c.expires_at, api_keys.c.last_used_at,
    api_keys.c.meta, api_keys.c.created_at, api_keys.c.updated_at, api_keys.c.revoked_at,
    api_keys.c.cache, api_keys.c.user,
)  # fmt: skip
_KEY_SELECT = sa.select(*_KEY_COLUMNS).join(tenants, tenants.c.id == api_keys.c.tenant_id)
_EDITABLE = {
    "name", "description", "role", "tier", "limits", "enabled", "expires_at", "metadata", "cache",
    "user",
}  # fmt: skip


def _key(row: Sequence[Any]) -> KeyRecord:
    values = list(row)
    for index in (11, 12, 14, 15, 16):
        values[index] = _aware(values[index])
    return KeyRecord(*values)


class IdentityStore:
    """Repository of tenants and keys over one async engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # tenants

    async def create_tenant(self, name: str, tier: str | None = None) -> Tenant:
        tenant = Tenant(new_id("ten"), name, tier, utcnow())
        try:
            async with self.engine.begin() as conn:
                await conn.execute(sa.insert(tenants).values(
                    id=tenant.id, name=name, tier=tier, created_at=tenant.created_at
                ))  # fmt: skip
        except IntegrityError:
            raise Conflict(f"A tenant named {name!r} already exists.", param="name") from None
        return tenant

    async def get_tenant(self, tenant_id: str) -> Tenant:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(tenants).where(tenants.c.id == tenant_id))).first()
        if row is None:
            raise NotFound(f"No tenant {tenant_id!r}.")
        return Tenant(row.id, row.name, row.tier, _aware(row.created_at) or utcnow())

    async def tenant_by_name(self, name: str) -> Tenant | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(tenants).where(tenants.c.name == name))).first()
        return (
            None
            if row is None
            else Tenant(row.id, row.name, row.tier, _aware(row.created_at) or utcnow())
        )

    async def list_tenants(self) -> list[Tenant]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(tenants).order_by(tenants.c.created_at))).all()
        return [Tenant(r.id, r.name, r.tier, _aware(r.created_at) or utcnow()) for r in rows]

    async def update_tenant(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant:
        values = {k: v for k, v in changes.items() if k in ("name", "tier")}
        if values:
            try:
                async with self.engine.begin() as conn:
                    result = await conn.execute(
                        sa.update(tenants).where(tenants.c.id == tenant_id).values(**values)
                    )
            except IntegrityError:
                raise Conflict("A tenant with that name already exists.", param="name") from None
            if result.rowcount == 0:
                raise NotFound(f"No tenant {tenant_id!r}.")
            await self._touch_tenant_keys(tenant_id)
        return await self.get_tenant(tenant_id)

    async def delete_tenant(self, tenant_id: str) -> None:
        async with self.engine.begin() as conn:
            live = await conn.scalar(
                sa.select(sa.func.count()).select_from(api_keys).where(
                    api_keys.c.tenant_id == tenant_id, api_keys.c.revoked_at.is_(None)
                )
            )  # fmt: skip
            if live:
                raise Conflict(f"Tenant {tenant_id!r} still has {live} keys; revoke them first.")
            await conn.execute(sa.delete(api_keys).where(api_keys.c.tenant_id == tenant_id))
            result = await conn.execute(sa.delete(tenants).where(tenants.c.id == tenant_id))
        if result.rowcount == 0:
            raise NotFound(f"No tenant {tenant_id!r}.")

    async def _touch_tenant_keys(self, tenant_id: str) -> None:
        """A tenant's change (its tier) must reach every cache holding its keys."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(api_keys).where(api_keys.c.tenant_id == tenant_id)
                .values(updated_at=utcnow())
            )  # fmt: skip

    # keys

    async def create_key(
        self,
        tenant_id: str,
        *,
        prefix: str,
        role: str = "user",
        tier: str = "free",
        name: str = "",
        description: str = "",
        limits: dict[str, int] | None = None,
        expires_at: datetime | None = None,
        metadata: dict[str, Any] | None = None,
        cache: dict[str, Any] | None = None,
        secret: str | None = None,
        imported: bool = False,
        user: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key; returns the record and the secret, which is never shown again.

        ``imported``: ``secret`` was made elsewhere (a migration), so it may be short and
        of any shape; less of it is kept for display. The caller has checked it
        (:func:`relaygate.auth.keys.check_imported`). A secret already a key: Conflict.
        """
        await self.get_tenant(tenant_id)
        secret = secret or generate_secret(prefix)
        shown = imported_display(secret) if imported else display_prefix(secret, prefix)
        now = utcnow()
        key_id = new_id("key")
        try:
            async with self.engine.begin() as conn:
                await conn.execute(sa.insert(api_keys).values(
                    id=key_id, tenant_id=tenant_id, key_hash=hash_secret(secret),
                    prefix=shown, name=name, description=description,
                    role=role, tier=tier, limits=limits, enabled=True, expires_at=expires_at,
                    meta=metadata, cache=cache, created_at=now, updated_at=now, user=user,
                ))  # fmt: skip
        except IntegrityError:
            raise Conflict("That key already exists.") from None
        return await self.get_key(key_id), secret

    async def get_key(self, key_id: str) -> KeyRecord:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_KEY_SELECT.where(api_keys.c.id == key_id))).first()
        if row is None:
            raise NotFound(f"No key {key_id!r}.")
        return _key(row)

    async def find_by_hash(self, key_hash: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_KEY_SELECT.where(api_keys.c.key_hash == key_hash))).first()
        return None if row is None else _key(row)

    async def list_keys(
        self, tenant_id: str | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        query = _KEY_SELECT.order_by(api_keys.c.created_at)
        if tenant_id is not None:
            query = query.where(api_keys.c.tenant_id == tenant_id)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            return [_key(row) for row in (await conn.execute(query)).all()]

    async def update_key(self, key_id: str, changes: Mapping[str, Any]) -> KeyRecord:
        values = {
            ("meta" if k == "metadata" else k): v for k, v in changes.items() if k in _EDITABLE
        }
        values["updated_at"] = utcnow()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(api_keys).where(api_keys.c.id == key_id).values(**values)
            )
        if result.rowcount == 0:
            raise NotFound(f"No key {key_id!r}.")
        return await self.get_key(key_id)

    async def revoke_key(self, key_id: str) -> KeyRecord:
        now = utcnow()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(api_keys).where(api_keys.c.id == key_id)
                .values(enabled=False, revoked_at=now, updated_at=now)
            )  # fmt: skip
        if result.rowcount == 0:
            raise NotFound(f"No key {key_id!r}.")
        return await self.get_key(key_id)

    async def rotate_key(self, key_id: str, prefix: str) -> tuple[KeyRecord, str]:
        """A new secret for the same key id; the old secret stops working."""
        secret = generate_secret(prefix)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(key_hash=hash_secret(secret), prefix=display_prefix(secret, prefix),
                        updated_at=utcnow())
            )  # fmt: skip
        if result.rowcount == 0:
            raise NotFound(f"No key {key_id!r} (or it was revoked).")
        return await self.get_key(key_id), secret

    async def changed_since(self, since: datetime) -> dict[str, datetime]:
        """Keys changed after ``since``: id -> when."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(api_keys.c.id, api_keys.c.updated_at)
                .where(api_keys.c.updated_at > since)
            )).all()  # fmt: skip
        return {r.id: _aware(r.updated_at) or since for r in rows}

    async def record_last_used(self, used: Mapping[str, datetime]) -> None:
        """Batched last_used_at updates (one statement, many rows)."""
        if not used:
            return
        statement = (
            sa.update(api_keys)
            .where(api_keys.c.id == sa.bindparam("key_id"))
            .values(last_used_at=sa.bindparam("used_at"))
        )
        async with self.engine.begin() as conn:
            await conn.execute(statement, [{"key_id": k, "used_at": t} for k, t in used.items()])

    async def count_keys(self) -> int:
        async with self.engine.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(api_keys)) or 0)


async def resolve_tenant(
    store: IdentityStore, ref: str, *, create: bool = False, param: str = "tenant_id"
) -> Tenant:
    """The tenant with this id, else this name; with ``create``, a new tenant of that name."""
    try:
        return await store.get_tenant(ref)
    except NotFound:
        pass
    tenant = await store.tenant_by_name(ref)
    if tenant is not None:
        return tenant
    if not create:
        raise NotFound(f"No tenant with the id or name {ref!r}.", param=param)
    try:
        return await store.create_tenant(ref)
    except Conflict:  # created by a concurrent request
        tenant = await store.tenant_by_name(ref)
        if tenant is None:
            raise
        return tenant
