"""Users' provider secrets and provider configurations in the database.

Every read and write is scoped to an owner: ``(tenant_id, owner)``, where a tenant's
shared secrets have ``shared`` set. A row of another owner is not found, exactly as
a row that does not exist: callers turn both into the same 404. Ciphertexts leave
this module only towards the vault (:mod:`relaygate.vault.providers`), never to a
response.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate.errors import NotFound
from relaygate.store.tables import provider_configs, provider_secrets
from relaygate.vault.crypto import SecretBox

__all__ = ["ConfigRow", "Owner", "SecretRow", "VaultStore", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose secrets: a user (or key) within a tenant ("" when it has none)."""

    tenant_id: str
    owner: str


@dataclass(frozen=True, slots=True)
class SecretRow:
    id: int
    tenant_id: str
    owner: str
    shared: bool
    provider: str
    key_name: str
    masked: str
    ciphertext: bytes
    key_fingerprint: str
    version: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def visible_to(self, who: Owner) -> bool:
        if self.tenant_id != who.tenant_id:
            return False
        return self.shared or self.owner == who.owner

    def public(self, now: datetime) -> dict[str, Any]:
        """What the API shows: the masked key, never the secret or its ciphertext."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id, "provider": self.provider, "key_name": self.key_name,
            "masked_key": self.masked, "shared": self.shared,
            "created_at": iso(self.created_at), "expires_at": iso(self.expires_at),
            "last_used_at": iso(self.last_used_at), "expired": self.expired(now),
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class ConfigRow:
    id: int
    tenant_id: str
    owner: str
    provider_type: str
    api_key_id: int | None
    base_url: str | None
    config: dict[str, Any]
    is_default: bool
    is_active: bool
    created_at: datetime
    updated_at: datetime

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id, "provider_type": self.provider_type, "api_key_id": self.api_key_id,
            "base_url": self.base_url, "config": self.config, "is_default": self.is_default,
            "is_active": self.is_active, "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }  # fmt: skip


def _secret(row: Any) -> SecretRow:
    return SecretRow(
        row.id, row.tenant_id, row.owner, bool(row.shared), row.provider, row.key_name,
        row.masked, bytes(row.ciphertext), row.key_fingerprint, row.version,
        _aware(row.created_at) or utcnow(), _aware(row.updated_at) or utcnow(),
        _aware(row.expires_at), _aware(row.last_used_at),
    )  # fmt: skip


def _config(row: Any) -> ConfigRow:
    return ConfigRow(
        row.id, row.tenant_id, row.owner, row.provider_type, row.api_key_id, row.base_url,
        dict(row.config or {}), bool(row.is_default), bool(row.is_active),
        _aware(row.created_at) or utcnow(), _aware(row.updated_at) or utcnow(),
    )  # fmt: skip


def _visible(who: Owner) -> sa.ColumnElement[bool]:
    t = provider_secrets.c
    return sa.and_(t.tenant_id == who.tenant_id, sa.or_(t.owner == who.owner, t.shared))


class VaultStore:
    """Repository of provider secrets and configurations over one async engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # secrets

    async def add_secret(
        self,
        who: Owner,
        *,
        shared: bool,
        provider: str,
        key_name: str,
        masked: str,
        ciphertext: bytes,
        key_fingerprint: str,
        expires_at: datetime | None,
    ) -> SecretRow:
        now = utcnow()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.insert(provider_secrets).values(
                    tenant_id=who.tenant_id, owner="" if shared else who.owner, shared=shared,
                    provider=provider, key_name=key_name, masked=masked, ciphertext=ciphertext,
                    key_fingerprint=key_fingerprint, version=1, created_at=now, updated_at=now,
                    expires_at=expires_at,
                ).returning(provider_secrets.c.id)
            )  # fmt: skip
            new_id = int(result.scalar_one())
        return await self.get_secret(who, new_id)

    async def list_secrets(self, who: Owner) -> list[SecretRow]:
        query = sa.select(provider_secrets).where(_visible(who)).order_by(provider_secrets.c.id)
        async with self.engine.connect() as conn:
            return [_secret(r) for r in (await conn.execute(query)).all()]

    async def get_secret(self, who: Owner, secret_id: int) -> SecretRow:
        query = sa.select(provider_secrets).where(provider_secrets.c.id == secret_id, _visible(who))
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"No API key {secret_id}.")
        return _secret(row)

    async def delete_secret(self, who: Owner, secret_id: int, *, tenant_admin: bool) -> None:
        """Delete one's own secret; a tenant's shared one only as its admin."""
        t = provider_secrets.c
        mine = sa.and_(t.owner == who.owner, sa.not_(t.shared))
        allowed = sa.or_(mine, t.shared) if tenant_admin else mine
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.delete(provider_secrets).where(
                    t.id == secret_id, t.tenant_id == who.tenant_id, allowed
                )
            )
        if result.rowcount == 0:
            raise NotFound(f"No API key {secret_id}.")

    async def record_last_used(self, used: Mapping[int, datetime]) -> None:
        """One batch of ``last_used_at`` times (never earlier than what is stored)."""
        t = provider_secrets.c
        async with self.engine.begin() as conn:
            for secret_id, at in used.items():
                await conn.execute(
                    sa.update(provider_secrets)
                    .where(t.id == secret_id, sa.or_(t.last_used_at.is_(None), t.last_used_at < at))
                    .values(last_used_at=at)
                )  # fmt: skip

    async def fingerprints(self) -> dict[str, int]:
        """How many secrets are stored under each master key (by fingerprint)."""
        t = provider_secrets.c
        query = sa.select(t.key_fingerprint, sa.func.count()).group_by(t.key_fingerprint)
        async with self.engine.connect() as conn:
            return {str(fp): int(n) for fp, n in (await conn.execute(query)).all()}

    async def rotate(self, box: SecretBox, batch: int = 200) -> int:
        """Re-encrypt every secret not under the newest key; returns how many were.

        Each row is updated only if its ciphertext is still the one read (a concurrent
        change wins and is left alone: it was written under the newest key anyway).
        """
        t = provider_secrets.c
        done = 0
        while True:
            query = (
                sa.select(t.id, t.ciphertext, t.version)
                .where(t.key_fingerprint != box.newest)
                .order_by(t.id)
                .limit(batch)
            )
            async with self.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
            if not rows:
                return done
            async with self.engine.begin() as conn:
                for row in rows:
                    token = box.rotate(bytes(row.ciphertext))
                    result = await conn.execute(
                        sa.update(provider_secrets)
                        .where(t.id == row.id, t.version == row.version)
                        .values(
                            ciphertext=token, key_fingerprint=box.newest,
                            version=row.version + 1, updated_at=utcnow(),
                        )
                    )  # fmt: skip
                    done += result.rowcount

    # configurations

    async def add_config(
        self,
        who: Owner,
        *,
        provider_type: str,
        api_key_id: int | None,
        base_url: str | None,
        config: dict[str, Any],
        is_default: bool,
        is_active: bool,
    ) -> ConfigRow:
        now = utcnow()
        async with self.engine.begin() as conn:
            if is_default:
                await self._clear_default(conn, who)
            result = await conn.execute(
                sa.insert(provider_configs).values(
                    tenant_id=who.tenant_id, owner=who.owner, provider_type=provider_type,
                    api_key_id=api_key_id, base_url=base_url, config=config,
                    is_default=is_default, is_active=is_active, created_at=now, updated_at=now,
                ).returning(provider_configs.c.id)
            )  # fmt: skip
            new_id = int(result.scalar_one())
        return await self.get_config(who, new_id)

    @staticmethod
    async def _clear_default(conn: Any, who: Owner) -> None:
        t = provider_configs.c
        await conn.execute(
            sa.update(provider_configs)
            .where(t.tenant_id == who.tenant_id, t.owner == who.owner, t.is_default)
            .values(is_default=False, updated_at=utcnow())
        )

    def _own(self, who: Owner) -> sa.ColumnElement[bool]:
        t = provider_configs.c
        return sa.and_(t.tenant_id == who.tenant_id, t.owner == who.owner)

    async def list_configs(self, who: Owner) -> list[ConfigRow]:
        query = sa.select(provider_configs).where(self._own(who)).order_by(provider_configs.c.id)
        async with self.engine.connect() as conn:
            return [_config(r) for r in (await conn.execute(query)).all()]

    async def get_config(self, who: Owner, config_id: int) -> ConfigRow:
        query = sa.select(provider_configs).where(
            provider_configs.c.id == config_id, self._own(who)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"No provider configuration {config_id}.")
        return _config(row)

    async def update_config(
        self, who: Owner, config_id: int, changes: Mapping[str, Any]
    ) -> ConfigRow:
        values = dict(changes)
        values["updated_at"] = utcnow()
        async with self.engine.begin() as conn:
            if values.get("is_default"):
                await self._clear_default(conn, who)
            result = await conn.execute(
                sa.update(provider_configs)
                .where(provider_configs.c.id == config_id, self._own(who))
                .values(**values)
            )
            if result.rowcount == 0:
                raise NotFound(f"No provider configuration {config_id}.")
        return await self.get_config(who, config_id)

    async def delete_config(self, who: Owner, config_id: int) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.delete(provider_configs).where(
                    provider_configs.c.id == config_id, self._own(who)
                )
            )
        if result.rowcount == 0:
            raise NotFound(f"No provider configuration {config_id}.")

    # the gateway's in-memory index

    async def load_all(self) -> tuple[list[SecretRow], list[ConfigRow]]:
        async with self.engine.connect() as conn:
            secrets = (await conn.execute(sa.select(provider_secrets))).all()
            configs = (
                await conn.execute(sa.select(provider_configs).order_by(provider_configs.c.id))
            ).all()
        return [_secret(r) for r in secrets], [_config(r) for r in configs]

    async def signature(self) -> tuple[Any, ...]:
        """Changes whenever a secret or configuration is added, changed or deleted."""
        s, c = provider_secrets.c, provider_configs.c
        async with self.engine.connect() as conn:
            one = (await conn.execute(sa.select(sa.func.count(), sa.func.max(s.updated_at),
                                                sa.func.sum(s.id)))).one()  # fmt: skip
            two = (await conn.execute(sa.select(sa.func.count(), sa.func.max(c.updated_at),
                                                sa.func.sum(c.id)))).one()  # fmt: skip
        return (*tuple(one), *tuple(two))
