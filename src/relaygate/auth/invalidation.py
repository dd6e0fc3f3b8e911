"""Telling every worker and replica that something changed, through Redis pub/sub.

Keys: without Redis, workers find changes by polling the database (see
authenticator.py); this only makes it immediate. Cache invalidations use the
same mechanism on their own channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

__all__ = ["Events", "KeyEvents"]


class Events:
    """Publishes messages on ``<prefix><topic>``; calls ``on_message`` with each one
    published by anyone (this process included)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        topic: str,
        on_message: Callable[[str], None],
        log: logging.Logger,
    ) -> None:
        self.client = client
        self.channel = f"{prefix}{topic}"
        self.on_message = on_message
        self.log = log
        self._task: asyncio.Task[None] | None = None

    async def publish_text(self, message: str) -> None:
        """Best effort: a lost message is logged, never raised."""
        try:
            await self.client.publish(self.channel, message)
        except (RedisError, OSError) as exc:
            self.log.warning("could not publish on %s: %s", self.channel, type(exc).__name__)

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
                self.log.warning("%s channel lost (%s); retrying", self.channel, type(exc).__name__)
            await asyncio.sleep(1)

    async def _listen(self) -> None:
        async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(self.channel)
            async for message in pubsub.listen():
                data = message.get("data")
                if isinstance(data, bytes | str):
                    self.on_message(data.decode() if isinstance(data, bytes) else data)


class KeyEvents(Events):
    """Publishes changed key ids, and calls ``on_change`` with ids others published."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        on_change: Callable[[list[str]], None],
        log: logging.Logger,
    ) -> None:
        super().__init__(
            client, prefix, "keys", lambda text: on_change([k for k in text.split(",") if k]), log
        )

    async def publish(self, key_ids: list[str]) -> None:
        """Best effort: a lost message is caught by the database poll within seconds."""
        if key_ids:
            await self.publish_text(",".join(key_ids))
