"""Fixtures of the tests that talk to the real Redis at 127.0.0.1:6379."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from redis.asyncio import Redis

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of the test's own; whatever it left under it is deleted after."""
    prefix = f"rgtest:{uuid4().hex}:"
    yield prefix
    plain = Redis.from_url(REDIS_URL)
    keys = [key async for key in plain.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await plain.delete(*keys)
    await plain.aclose()
