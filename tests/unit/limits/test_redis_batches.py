"""The gateway's Redis client sends the request path's commands in batches
(``GatewayRedis.batched``): commands issued while ``BATCH_LANES`` batches are in flight
go together, in one write and one read. Whatever the mix and the timing, each command
gets its own reply or its own error; a caller that gives up before its batch is sent
takes its command out; a batch that loses its connection fails its commands, and the
next batch connects again.

Against the real Redis at 127.0.0.1:6379, each test under its own key prefix.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from relaygate.limits.base import Rule
from relaygate.limits.redis import BATCH_LANES, GatewayRedis, RedisLimiter, connect
from tests.fakes.redis_server import RedisServer
from tests.fakes.tcp_proxy import TcpProxy

URL = "redis://127.0.0.1:6379/0"


class Trips:
    """How many connections the client took from its pool: one a round trip, whether
    the trip carried one command or a batch."""

    def __init__(self, client: GatewayRedis) -> None:
        self.count = 0
        pool = client.connection_pool
        take = pool.get_connection

        async def get_connection(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await take(*args, **kwargs)

        pool.get_connection = get_connection  # type: ignore[method-assign]


async def test_commands_issued_together_share_round_trips(prefix: str) -> None:
    client = connect(URL)
    observed: list[tuple[str, bool]] = []
    client.observe = lambda name, ok, seconds: observed.append((name, ok))
    trips = Trips(client)
    try:
        replies = await asyncio.gather(*(client.batched("INCR", f"{prefix}{i}") for i in range(64)))
        assert replies == [1] * 64
        # the first BATCH_LANES go at once, one each; the other 62 ride together
        assert trips.count <= BATCH_LANES + 2
        assert observed == [("INCR", True)] * 64  # the metric still counts every command
    finally:
        await client.aclose()


async def test_alone_a_command_goes_at_once(prefix: str) -> None:
    client = connect(URL)
    trips = Trips(client)
    try:
        for n in range(1, 6):
            assert await client.batched("INCR", prefix + "x") == n
        assert trips.count == 5
    finally:
        await client.aclose()


# One command each: INCR a key (its reply tells which of that key's increments it was),
# or HGET on a key that holds a string (Redis answers WRONGTYPE: that command's own error);
# each issued after some turns of the event loop, so batches form in every shape.
OPS = st.lists(
    st.tuples(st.sampled_from(["incr", "wrongtype"]), st.integers(0, 3), st.integers(0, 3)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
async def test_each_command_gets_its_own_reply_or_error(ops: list[tuple[str, int, int]]) -> None:
    prefix = f"rgbatch:{uuid4().hex}:"
    client = connect(URL)
    keys = [f"{prefix}{k}" for k in range(4)]
    try:
        await client.mset(dict.fromkeys(keys, b"0"))

        async def one(kind: str, key: int, turns: int) -> Any:
            for _ in range(turns):
                await asyncio.sleep(0)
            if kind == "incr":
                return await client.batched("INCR", keys[key])
            return await client.batched("HGET", keys[key], "field")

        replies = await asyncio.gather(*(one(*op) for op in ops), return_exceptions=True)
        increments: dict[int, list[int]] = {k: [] for k in range(4)}
        for (kind, key, _), reply in zip(ops, replies, strict=True):
            if kind == "wrongtype":
                assert isinstance(reply, ResponseError) and "WRONGTYPE" in str(reply)
            else:
                assert isinstance(reply, int)
                increments[key].append(reply)
        wanted = Counter(key for kind, key, _ in ops if kind == "incr")
        for key, got in increments.items():
            # a key's increments answered 1..n, each once: no reply went to another command
            assert sorted(got) == list(range(1, wanted[key] + 1))
            assert await client.get(keys[key]) == str(wanted[key]).encode()
    finally:
        await client.delete(*keys)
        await client.aclose()


async def test_a_caller_that_gives_up_before_its_batch_is_sent_takes_its_command_out(
    prefix: str,
) -> None:
    client = connect(URL)
    try:
        # every lane busy: these block for 0.3 s on empty lists
        holds = [client.batched("BLPOP", f"{prefix}empty{i}", 0.3) for i in range(BATCH_LANES)]
        held = asyncio.gather(*holds)
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.batched("INCR", prefix + "gave-up"), 0.05)
        assert await client.batched("INCR", prefix + "kept") == 1  # queued behind the holds
        assert await held == [None] * BATCH_LANES
        assert await client.get(prefix + "gave-up") is None  # never sent
    finally:
        await client.aclose()


async def test_a_batch_that_loses_its_connection_fails_its_commands_then_reconnects(
    prefix: str,
) -> None:
    proxy = TcpProxy("127.0.0.1", 6379)
    await proxy.start()
    client = connect(f"redis://127.0.0.1:{proxy.port}/0")
    try:
        holds = [client.batched("BLPOP", f"{prefix}empty{i}", 5) for i in range(BATCH_LANES)]
        queued = [client.batched("INCR", f"{prefix}q{i}") for i in range(5)]
        calls = asyncio.gather(*holds, *queued, return_exceptions=True)
        await asyncio.sleep(0.1)
        await proxy.cut()
        await proxy.restore()
        failed = await asyncio.wait_for(calls, 2)
        assert all(isinstance(reply, RedisConnectionError) for reply in failed[:BATCH_LANES])
        # the queued ones went in the next batch: sent on a new connection, or failed with it
        assert all(reply == 1 or isinstance(reply, RedisConnectionError) for reply in failed)
        assert await client.batched("INCR", prefix + "after") == 1
    finally:
        await client.aclose()
        await proxy.cut()


async def test_a_limit_check_loads_its_script_when_redis_has_lost_it(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # its own: SCRIPT FLUSH would reach other tests' scripts
    await server.start()
    client = connect(server.url)
    limiter = RedisLimiter(client, "rgbatch:", close_client=False)
    rule = Rule("r", "rate", 3, 60.0, 1, "requests_per_minute")
    try:
        assert (await limiter.acquire([rule], "a")).allowed
        script = limiter._check
        with pytest.raises(NoScriptError):  # as after SCRIPT FLUSH or a Redis restart
            await client.batched("EVALSHA", "0" * 40, 0)
        await client.script_flush()
        assert (await limiter.acquire([rule], "b")).allowed
        assert await client.script_exists(script.sha) == [True]
        assert [(await limiter.acquire([rule], c)).allowed for c in "cd"] == [True, False]
    finally:
        await client.aclose()
        await server.kill()
