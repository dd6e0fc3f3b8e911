"""Telling every worker and replica that keys changed, through Redis pub/sub.

Without Redis, workers find changes by polling the database (see
authenticator.py); this only makes it immediate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

__all__ = ["KeyEvents"]


class KeyEvents:
    """Publishes changed key ids, and calls ``on_change`` with ids others published."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        on_change: Callable[[list[str]], None],
        log: logging.Logger,
    ) -> None:
        self.client = client
        self.channel = f"{prefix}keys"
        self.on_change = on_change
        self.log = log
        self._task: asyncio.Task[None] | None = None

    async def publish(self, key_ids: list[str]) -> None:
        """Best effort: a lost message is caught by the database poll within seconds."""
        if not key_ids:
            return
        try:
            await self.client.publish(self.channel, ",".join(key_ids))
        except (RedisError, OSError) as exc:
            self.log.warning("could not publish key change: %s", type(exc).__name__)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._listen_forever())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                self.log.warning("key change channel lost (%s); retrying", type(exc).__name__)
            await asyncio.sleep(1)

    async def _listen(self) -> None:
        async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(self.channel)
            async for message in pubsub.listen():
                data = message.get("data")
                if isinstance(data, bytes | str):
                    text = data.decode() if isinstance(data, bytes) else data
                    self.on_change([k for k in text.split(",") if k])
