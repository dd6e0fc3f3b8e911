"""The limit store fails: a private redis-server is killed, paused and restarted mid-run.

Fail open answers from each process's own limiter (degraded, never unlimited);
fail closed refuses with 503; when Redis is back the shared limits are used again.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relaygate.errors import LimiterUnavailable
from relaygate.limits.base import Rule
from relaygate.limits.fallback import DegradedLease, FallbackLimiter
from relaygate.limits.memory import MemoryLimiter
from relaygate.limits.redis import RedisLimiter, connect

TIMEOUT = 0.1
RETRY = 0.2
RATE = Rule("rph:k:1", "rate", 5, 3600.0, 1, "requests_per_hour")
SLOTS = Rule("conc:k:1", "concurrency", 1, 900.0, 1, "max_concurrent")


class RedisServer:
    """A private redis-server on a free port that a test can kill, pause and restart."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.directory = directory
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.directory),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 5
        while not await self._pong():
            assert self.process.returncode is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            await asyncio.sleep(0.01)

    async def _pong(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            return await reader.readline() == b"+PONG\r\n"
        finally:
            writer.close()
            await writer.wait_closed()

    def save(self) -> None:
        """Write the data to disk, so a restart keeps it (the server runs with --save '')."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"SAVE\r\n")
            assert s.recv(100) == b"+OK\r\n"

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), 5)
        self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


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


def limiter_for(server: RedisServer, *, fail_closed: bool, events: Events) -> FallbackLimiter:
    primary = RedisLimiter(connect(server.url, wait=TIMEOUT), "rgfault:")
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
        started = time.monotonic()
        for i in range(20):  # within the retry interval: refused without trying Redis
            with pytest.raises(LimiterUnavailable):
                await limiter.acquire([RATE], f"c{i}")
        assert time.monotonic() - started < TIMEOUT
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
        started = time.monotonic()
        slow = await limiter.acquire([RATE], "a")
        assert time.monotonic() - started < TIMEOUT + 0.1  # the timeout and a small margin
        assert slow.allowed and isinstance(slow.lease, DegradedLease)
        started = time.monotonic()
        assert await admitted(limiter, 10, "b") == 4  # fallback: 5 in all
        assert time.monotonic() - started < 0.05  # no more waiting on the paused server
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
