"""The gateway's Redis client (limits/redis.py ``connect``): at most ``max_connections``
commands at once, a command waits ``wait`` s at most for a free connection, every command
ends within ``COMMAND_TIMEOUT``, and whatever is cancelled or times out, no connection
slot is lost and no reply reaches another command. Its connections pack commands in C,
to the bytes and errors of redis-py's own packing.

Against the real Redis at 127.0.0.1:6379, each test under its own key prefix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import relaygate.limits.redis
from relaygate.limits.redis import GatewayRedis, connect, hiredis_packing

URL = "redis://127.0.0.1:6379/0"


class Counted:
    """How many pool connections the client's commands hold at once, and the most they
    held (a connection the pool hands back itself, its taker cancelled, was never held)."""

    def __init__(self, client: GatewayRedis) -> None:
        self.held: set[int] = set()
        self.peak = 0
        pool = client.connection_pool
        take, give = pool.get_connection, pool.release

        async def get_connection(*args: Any, **kwargs: Any) -> Any:
            connection = await take(*args, **kwargs)
            self.held.add(id(connection))
            self.peak = max(self.peak, len(self.held))
            return connection

        async def release(connection: Any) -> None:
            self.held.discard(id(connection))
            await give(connection)

        pool.get_connection = get_connection  # type: ignore[method-assign]
        pool.release = release  # type: ignore[method-assign]


async def test_a_command_waits_for_a_free_connection_then_fails(prefix: str) -> None:
    client = connect(URL, max_connections=1, wait=0.2)
    try:
        holder = asyncio.ensure_future(client.blpop([prefix + "empty"], timeout=1))
        await asyncio.sleep(0.1)  # it holds the only connection
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await client.get(prefix + "x")
        assert 0.15 <= time.monotonic() - started < 0.9
        assert await holder is None  # the first command was not disturbed
        assert await client.get(prefix + "x") is None  # and the slot is free again
    finally:
        await client.aclose()


async def test_a_waiting_command_runs_once_a_connection_is_free(prefix: str) -> None:
    client = connect(URL, max_connections=1, wait=5)
    try:
        await client.set(prefix + "x", b"value")
        holder = asyncio.ensure_future(client.blpop([prefix + "empty"], timeout=0.3))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert await client.get(prefix + "x") == b"value"
        assert time.monotonic() - started >= 0.15  # it waited for the first
        assert await holder is None
    finally:
        await client.aclose()


async def test_a_command_without_a_reply_in_time_fails_and_leaves_no_reply_behind(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relaygate.limits.redis, "COMMAND_TIMEOUT", 0.2)
    client = connect(URL, max_connections=1, wait=1)
    observed: list[tuple[str, bool]] = []
    client.observe = lambda name, ok, seconds: observed.append((name, ok))
    try:
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError, match=r"No reply within 0\.2 s"):
            await client.blpop([prefix + "empty"], timeout=2)
        assert time.monotonic() - started < 1.5
        await client.rpush(prefix + "empty", b"late")  # what the timed-out BLPOP would take
        await client.set(prefix + "x", b"value")
        assert await client.get(prefix + "x") == b"value"
        assert await client.lpop(prefix + "empty") == b"late"
        assert observed == [("BLPOP", False), ("RPUSH", True), ("SET", True), ("GET", True),
                            ("LPOP", True)]  # fmt: skip
    finally:
        await client.aclose()


# Each command: read one's own key (its value must come back), or hold a connection
# with a short BLPOP on an empty list (None must come back); either may be cancelled by
# its caller after a delay (None: never), as a caller's own timeout does.
COMMANDS = st.lists(
    st.tuples(
        st.sampled_from(["get", "hold"]),
        st.one_of(st.none(), st.floats(min_value=0, max_value=0.03)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=30)
@given(size=st.integers(min_value=1, max_value=3), commands=COMMANDS)
async def test_whatever_is_cancelled_no_slot_is_lost_and_no_reply_goes_astray(
    size: int, commands: list[tuple[str, float | None]]
) -> None:
    prefix = f"rgclient:{uuid4().hex}:"
    client = connect(URL, max_connections=size, wait=5)
    counted = Counted(client)
    values = {f"{prefix}{i}": uuid4().hex.encode() for i in range(len(commands))}
    try:
        await client.mset(values)

        async def one(i: int, kind: str, cancel_after: float | None) -> None:
            key = f"{prefix}{i}"
            call: Callable[[], Awaitable[Any]]
            if kind == "get":
                call, expected = (lambda: client.get(key)), values[key]
            else:
                call, expected = (lambda: client.blpop([key + ":empty"], timeout=0.02)), None
            if cancel_after is None:
                assert await call() == expected
                return
            try:
                reply = await asyncio.wait_for(call(), cancel_after)
            except TimeoutError:
                return
            assert reply == expected

        await asyncio.gather(*(one(i, *command) for i, command in enumerate(commands)))
        assert not counted.held
        assert counted.peak <= size
        # every slot is free: ``size`` commands hold a connection at once
        counted.peak = 0
        holds = [client.blpop([f"{prefix}free:{n}"], timeout=0.15) for n in range(size)]
        assert await asyncio.gather(*holds) == [None] * size
        assert counted.peak == size
        for key, value in values.items():  # nothing was written by a stray reply
            assert await client.get(key) == value
    finally:
        await client.delete(*values)
        await client.aclose()


ARGUMENTS = st.lists(
    st.one_of(
        st.text(), st.binary(), st.integers(), st.floats(), st.booleans(), st.none(),
        st.binary().map(memoryview),
    ),
    max_size=12,
)  # fmt: skip


def _packed(pack: Callable[..., list[bytes]], *args: Any) -> tuple[str, bytes | str]:
    try:
        return "bytes", b"".join(pack(*args))
    except Exception as exc:  # the error a caller gets is part of the contract
        return "error", type(exc).__name__


@settings(max_examples=500)
@given(
    name=st.sampled_from(["GET", "EVALSHA", "SET", "CONFIG GET", b"HSET", b"CLIENT SETNAME"]),
    args=ARGUMENTS,
)
def test_commands_are_packed_in_c_to_the_same_bytes_and_errors(
    name: str | bytes, args: list[Any]
) -> None:
    """The client's connections pack commands with hiredis; whatever the arguments, the
    bytes on the wire, or the error raised (DataError for None and bool), are redis-py's
    own asyncio connection's."""
    python = Connection()
    packing = hiredis_packing(Connection)()
    assert type(packing).pack_command is not Connection.pack_command
    assert _packed(packing.pack_command, name, *args) == _packed(python.pack_command, name, *args)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        (URL, Connection),
        ("rediss://127.0.0.1:6379/0", SSLConnection),
        ("unix:///tmp/relaygate-no-such.sock", UnixDomainSocketConnection),
    ],
)
async def test_every_kind_of_url_keeps_its_connection_class_and_packs_in_c(
    url: str, base: type
) -> None:
    client = connect(url)
    try:
        used = client.connection_pool.connection_class
        assert issubclass(used, base) and used is hiredis_packing(base)
    finally:
        await client.aclose()


async def test_a_limit_check_round_trips_through_the_c_packing(prefix: str) -> None:
    client = connect(URL)
    try:
        await client.set(f"{prefix}k", "é\x00 1.5")
        assert await client.get(f"{prefix}k") == b"\xc3\xa9\x00 1.5"
        assert await client.eval("return {ARGV[1], ARGV[2], ARGV[3]}", 0, 1.5, -7, b"\xff") == [
            b"1.5",
            b"-7",
            b"\xff",
        ]
    finally:
        await client.delete(f"{prefix}k")
        await client.aclose()
