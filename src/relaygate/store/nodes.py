"""Node tokens in the database: what lets a ``relaygate node`` agent dial in.

Only the token's SHA-256 is stored; the secret is returned once, by ``create``.
A node token is looked up here only by the tunnel hub: the API authenticator
reads ``api_keys`` alone, so a node token can never call the gateway's API.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate.auth.keys import display_prefix, generate_secret, hash_secret, new_id
from relaygate.errors import InvalidRequest, NotFound
from relaygate.store.identity import utcnow
from relaygate.store.tables import node_tokens

__all__ = ["NODE_TOKEN_PREFIX", "NodeToken", "NodeTokenStore", "check_node_name"]

NODE_TOKEN_PREFIX = "rgn_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_node_name(name: str, param: str = "name") -> str:
    """A node's name: 1-63 letters, digits, ``.``, ``_`` or ``-`` (it appears in
    deployment names, metric labels and the usage record)."""
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            "A node name is 1 to 63 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit.",
            param=param,
        )
    return name


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True, slots=True)
class NodeToken:
    """A node token as stored, without its secret or hash."""

    id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "node_token",
            "name": self.name,
            "prefix": self.prefix,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def _record(row: sa.Row[Any]) -> NodeToken:
    created = _aware(row.created_at)
    assert created is not None
    return NodeToken(row.id, row.name, row.prefix, created, _aware(row.revoked_at))


class NodeTokenStore:
    """Create, list, revoke and check node tokens."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, name: str) -> tuple[NodeToken, str]:
        """A new token for node ``name``; the secret is returned this once."""
        check_node_name(name)
        secret = generate_secret(NODE_TOKEN_PREFIX)
        values = {
            "id": new_id("node"),
            "name": name,
            "token_hash": hash_secret(secret),
            "prefix": display_prefix(secret, NODE_TOKEN_PREFIX),
            "created_at": utcnow(),
            "revoked_at": None,
        }
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(node_tokens).values(**values))
        return await self.get(str(values["id"])), secret

    async def get(self, token_id: str) -> NodeToken:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(node_tokens).where(node_tokens.c.id == token_id))
            ).first()
        if row is None:
            raise NotFound(f"No node token {token_id!r}.")
        return _record(row)

    async def list(self, *, include_revoked: bool = False) -> list[NodeToken]:
        query = sa.select(node_tokens).order_by(node_tokens.c.name, node_tokens.c.created_at)
        if not include_revoked:
            query = query.where(node_tokens.c.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(row) for row in rows]

    async def revoke(self, token_id: str) -> NodeToken:
        """Revoke a token (again is no error); the hub cuts its node off."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(node_tokens)
                .where(node_tokens.c.id == token_id, node_tokens.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return await self.get(token_id)

    async def check(self, secret: str) -> NodeToken | None:
        """The live token whose secret this is, else None (a hash lookup: the secret
        itself is never compared or stored)."""
        query = sa.select(node_tokens).where(
            node_tokens.c.token_hash == hash_secret(secret), node_tokens.c.revoked_at.is_(None)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _record(row)

    async def revoked_among(self, token_ids: Iterable[str]) -> set[str]:
        """Which of these tokens are revoked (or gone) now."""
        wanted = set(token_ids)
        if not wanted:
            return set()
        query = sa.select(node_tokens.c.id).where(
            node_tokens.c.id.in_(wanted), node_tokens.c.revoked_at.is_(None)
        )
        async with self.engine.connect() as conn:
            live = {str(row.id) for row in (await conn.execute(query)).all()}
        return wanted - live
