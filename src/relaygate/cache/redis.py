"""Tier 2: Redis, shared by every worker and replica.

Entry names are ``<prefix>cache:<scope tag>:<model tag>:<key>``, so an
administrator can drop one tenant's or one model's entries with a SCAN.
Redis expires entries itself (PX). A lookup or write that fails or outlasts
the timeout is skipped, and Redis is left alone for ``retry_after`` seconds:
a dead Redis costs requests nothing but the first timeout. Lookups and writes
go in the client's batches with the limit checks (``GatewayRedis.batched``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from relaygate.cache.keys import tag
from relaygate.errors import StoreUnavailable
from relaygate.limits.redis import GatewayRedis

__all__ = ["RedisTier"]


class RedisTier:
    name = "redis"

    def __init__(
        self,
        client: GatewayRedis,
        prefix: str,
        *,
        timeout: float,
        retry_after: float,
        on_error: Callable[[str], None],
    ) -> None:
        self.client = client
        self.prefix = prefix + "cache:"
        self.timeout = timeout
        self.retry_after = retry_after
        self.on_error = on_error  # called with "timeout" or "error"; never with details
        self._resting_until = 0.0

    def name_of(self, key: str, scope: str, model: str) -> str:
        return f"{self.prefix}{tag(scope)}:{tag(model)}:{key}"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._resting_until

    async def get(self, name: str) -> bytes | None:
        if not self.available:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                data = await self.client.batched("GET", name)
        except TimeoutError:
            self._failed("timeout")
            return None
        except (RedisError, OSError):
            self._failed("error")
            return None
        return data if isinstance(data, bytes) else None

    async def put(self, name: str, data: bytes, ttl: float) -> bool:
        if not self.available:
            return False
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.batched("SET", name, data, "PX", max(int(ttl * 1000), 1))
        except TimeoutError:
            self._failed("timeout")
            return False
        except (RedisError, OSError):
            self._failed("error")
            return False
        return True

    async def drop(self, name: str) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.unlink(name)
        except (TimeoutError, RedisError, OSError):
            self._failed("error")

    async def invalidate(self, model: str | None = None, scope: str | None = None) -> int:
        """Drop every entry, or one model's and/or one scope's; returns how many.

        Raises StoreUnavailable: an administrator asked, and must hear it failed.
        """
        try:
            return await self._invalidate(model, scope)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(
                f"Redis did not clear the cache ({type(exc).__name__}); nothing was kept "
                "from this request, retry when Redis is back."
            ) from None

    async def _invalidate(self, model: str | None, scope: str | None) -> int:
        scope_part = tag(scope) if scope is not None else "*"
        model_part = tag(model) if model is not None else "*"
        pattern = f"{self.prefix}{scope_part}:{model_part}:*"
        removed = 0
        batch: list[bytes] = []
        async for name in self.client.scan_iter(match=pattern, count=1000):
            batch.append(name)
            if len(batch) >= 1000:
                removed += await self.client.unlink(*batch)
                batch.clear()
        if batch:
            removed += await self.client.unlink(*batch)
        return removed

    def _failed(self, kind: str) -> None:
        self._resting_until = time.monotonic() + self.retry_after
        self.on_error(kind)
