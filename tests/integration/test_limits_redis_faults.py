"""The limit store fails: a private redis-server is killed, paused and restarted mid-run.

Fail open answers from each process's own limiter (degraded, never unlimited);
fail closed refuses with 503; when Redis is back the shared limits are used again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from relaygate.errors import LimiterUnavailable
from relaygate.limits.base import Decision, Rule
from relaygate.limits.fallback import DegradedLease, FallbackLimiter
from relaygate.limits.memory import MemoryLimiter
from relaygate.limits.redis import RedisLimiter, connect
from tests.fakes.redis_server import RedisServer

TIMEOUT = 0.1
RETRY = 1.0  # long enough for a burst of requests to fall inside one interval
RATE = Rule("rph:k:1", "rate", 5, 3600.0, 1, "requests_per_hour")
SLOTS = Rule("conc:k:1", "concurrency", 1, 900.0, 1, "max_concurrent")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        yield redis
    finally:
        await redis.kill()


class Events(list[bool]):
    """What ``on_degraded`` was told, in order."""


class CountedRedisLimiter(RedisLimiter):
    """The real Redis limiter, counting the requests that were put to it."""

    tries = 0

    async def acquire(
        self, rules: Sequence[Rule], request_id: str, now: float | None = None
    ) -> Decision:
        self.tries += 1
        return await super().acquire(rules, request_id, now)


def tries(limiter: FallbackLimiter) -> int:
    """How many acquires reached the Redis limiter (answered or not)."""
    primary = limiter._primary
    assert isinstance(primary, CountedRedisLimiter)
    return primary.tries


def limiter_for(server: RedisServer, *, fail_closed: bool, events: Events) -> FallbackLimiter:
    primary = CountedRedisLimiter(connect(server.url, wait=TIMEOUT), "rgfault:")
    return FallbackLimiter(
        primary, MemoryLimiter(), fail_closed=fail_closed, timeout=TIMEOUT,
        on_degraded=events.append, retry_interval=RETRY,
    )  # fmt: skip


async def admitted(limiter: FallbackLimiter, n: int, tag: str) -> int:
    decisions = [await limiter.acquire([RATE], f"{tag}{i}") for i in range(n)]
    return sum(d.allowed for d in decisions)


async def test_fail_open_limits_in_process_then_recovers(server: RedisServer) -> None:
    events = Events()
    limiter = limiter_for(server, fail_closed=False, events=events)
    try:
        assert await admitted(limiter, 3, "a") == 3  # 2 left in Redis
        await server.kill()
        decisions = [await limiter.acquire([RATE], f"b{i}") for i in range(12)]
        assert sum(d.allowed for d in decisions) == 5  # the fallback's own limit
        assert all(isinstance(d.lease, DegradedLease) for d in decisions if d.allowed)
        assert events == [True] and limiter.degraded
        await server.start()  # same port, empty
        await asyncio.sleep(RETRY)
        back = await limiter.acquire([RATE], "c")
        assert back.allowed and type(back.lease) is not DegradedLease
        assert events == [True, False] and not limiter.degraded
        assert await admitted(limiter, 5, "d") == 4  # Redis counts again: 1 + 4
    finally:
        await limiter.aclose()


async def test_fail_closed_refuses_then_recovers(server: RedisServer) -> None:
    events = Events()
    limiter = limiter_for(server, fail_closed=True, events=events)
    try:
        assert await admitted(limiter, 1, "a") == 1
        await server.kill()
        with pytest.raises(LimiterUnavailable) as caught:
            await limiter.acquire([RATE], "b")
        assert caught.value.status == 503
        assert "limit store is unreachable" in caught.value.message
        tried = tries(limiter)
        for i in range(20):  # within the retry interval: refused without trying Redis
            with pytest.raises(LimiterUnavailable):
                await limiter.acquire([RATE], f"c{i}")
        assert tries(limiter) == tried
        assert events == [True]
        await server.start()
        await asyncio.sleep(RETRY)
        assert await admitted(limiter, 1, "d") == 1
        assert events == [True, False]
    finally:
        await limiter.aclose()


async def test_slow_redis_costs_at_most_the_timeout(server: RedisServer) -> None:
    events = Events()
    limiter = limiter_for(server, fail_closed=False, events=events)
    try:
        assert await admitted(limiter, 1, "warm") == 1
        server.pause()
        tried = tries(limiter)
        # Redis never answers while paused: only the timeout lets this one through
        slow = await limiter.acquire([RATE], "a")
        assert slow.allowed and isinstance(slow.lease, DegradedLease)
        assert tries(limiter) == tried + 1
        assert await admitted(limiter, 10, "b") == 4  # fallback: 5 in all
        assert tries(limiter) == tried + 1  # no more waiting on the paused server
        assert events == [True]
        server.resume()
        await asyncio.sleep(RETRY)
        back = await limiter.acquire([RATE], "c")
        assert back.allowed and type(back.lease) is not DegradedLease
        assert events == [True, False]
        await limiter.settle(slow.lease)  # settled where it was granted
        assert slow.lease.settled
    finally:
        await limiter.aclose()


async def test_settles_missed_during_an_outage_are_replayed(server: RedisServer) -> None:
    events = Events()
    limiter = limiter_for(server, fail_closed=False, events=events)
    try:
        held = await limiter.acquire([SLOTS], "held")
        assert held.allowed and held.lease is not None
        server.save()
        await server.kill()
        await limiter.settle(held.lease)  # Redis is down: kept for later
        assert not held.lease.settled
        await server.start()  # the saved lease is still held in Redis
        await asyncio.sleep(RETRY)
        after = await limiter.acquire([SLOTS], "after")  # Redis answers; then the replay
        assert not after.allowed  # checked before the replay freed the slot
        assert held.lease.settled
        assert (await limiter.acquire([SLOTS], "again")).allowed
        assert events == [True, False]
    finally:
        await limiter.aclose()
