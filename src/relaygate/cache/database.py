"""Tier 3 (optional): popular answers kept long in the database (seed 001's "Level 3").

Only entries served ``min_hits`` times from the tiers above are copied here,
in the background. Lookups reach the database only after the memory and
Redis tiers missed, and give up after a short timeout: a slow or failing
database makes the request go upstream, never fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate.errors import StoreUnavailable
from relaygate.store.tables import response_cache

__all__ = ["DatabaseTier"]

_PURGE_EVERY = 100  # writes between two deletions of expired rows


class DatabaseTier:
    name = "database"

    def __init__(
        self, engine: AsyncEngine, *, timeout: float, on_error: Callable[[str], None]
    ) -> None:
        self.engine = engine
        self.timeout = timeout
        self.on_error = on_error
        self._writes = 0
        insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._insert = insert(response_cache)

    async def get(self, key: str, now: float) -> bytes | None:
        query = sa.select(response_cache.c.entry).where(
            response_cache.c.key == key, response_cache.c.expires_at > now
        )
        try:
            async with asyncio.timeout(self.timeout), self.engine.connect() as conn:
                data = await conn.scalar(query)
        except TimeoutError:
            self.on_error("timeout")
            return None
        except (SQLAlchemyError, OSError):
            self.on_error("error")
            return None
        return bytes(data) if data is not None else None

    async def put(
        self, key: str, data: bytes, *, scope: str, model: str, expires: float, now: float
    ) -> bool:
        values = {"key": key, "scope": scope, "model": model, "expires_at": expires, "entry": data}
        upsert = self._insert.values(**values).on_conflict_do_update(
            index_elements=[response_cache.c.key],
            set_={"expires_at": expires, "entry": data, "scope": scope, "model": model},
        )
        self._writes += 1
        try:
            async with self.engine.begin() as conn:
                await conn.execute(upsert)
                if self._writes % _PURGE_EVERY == 1:
                    await conn.execute(
                        sa.delete(response_cache).where(response_cache.c.expires_at <= now)
                    )
        except (SQLAlchemyError, OSError):
            self.on_error("error")
            return False
        return True

    async def drop(self, key: str) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(sa.delete(response_cache).where(response_cache.c.key == key))
        except (SQLAlchemyError, OSError):
            self.on_error("error")

    async def invalidate(self, model: str | None = None, scope: str | None = None) -> int:
        """Drop every entry, or one model's and/or one scope's; raises StoreUnavailable."""
        statement = sa.delete(response_cache)
        if model is not None:
            statement = statement.where(response_cache.c.model == model)
        if scope is not None:
            statement = statement.where(response_cache.c.scope == scope)
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(statement)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(
                f"The database did not clear the cache ({type(exc).__name__}); retry."
            ) from None
        return int(result.rowcount or 0)
