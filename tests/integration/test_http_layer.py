"""Slow and oversized clients, with raw sockets, against a gateway with short timeouts.

Each attack's connection must be closed, and not before its timeout (a timer cannot
fire early); the upper bound (``LATE``) is generous, so a slow machine cannot fail it.
Meanwhile another client is served normally.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import MOCK
from tests.gateway import RunningGateway, make_settings, running_gateway

TIMEOUT = 0.5
LATE = 30 * TIMEOUT  # still open by then: the limit does not hold
HTTP = {
    "header_timeout": TIMEOUT,
    "body_timeout": TIMEOUT,
    "keep_alive_timeout": TIMEOUT,
    "max_header_bytes": 8192,
    "max_headers": 50,
}
MB100 = 100 * 1024 * 1024
CHUNK = 64 * 1024
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gateway() -> AsyncIterator[RunningGateway]:
    async with running_gateway(make_settings(MOCK, http=HTTP)) as gateway:
        yield gateway


@dataclass
class Attack:
    """What one raw client sent and got. A thread with a blocking socket, as curl does:
    on a send error it still reads the answer the server wrote before closing."""

    received: bytes = b""
    sent: int = 0  # bytes sent after ``head``
    seconds: float = 0.0  # from the end of ``head`` to the close

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        head, _, body = self.received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), f"no answer: {self.received[:200]!r}"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers, body


def attack(port: int, head: bytes, rest: Iterable[bytes] = (), every: float = 0.0) -> Attack:
    """Send ``head``, then ``rest`` (a piece every ``every`` seconds) until the server
    closes the connection; then read everything it sent, until it closed."""
    result = Attack()
    with socket.create_connection(("127.0.0.1", port), timeout=LATE) as sock:
        sock.sendall(head)
        start = time.monotonic()
        try:
            for piece in rest:
                sock.sendall(piece)
                result.sent += len(piece)
                time.sleep(every)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = bytearray()
        try:
            while chunk := sock.recv(CHUNK):  # a timeout here: the server never closed
                received += chunk
        except ConnectionResetError:
            pass
        result.seconds = time.monotonic() - start
    result.received = bytes(received)
    return result


async def under_attack(gateway: RunningGateway, *args: Any, **kwargs: Any) -> Attack:
    """Run ``attack``; once it has started, a normal client is served."""
    attacking = asyncio.ensure_future(asyncio.to_thread(attack, gateway.port, *args, **kwargs))
    await asyncio.sleep(0.05)
    async with gateway.client() as client:
        reply = await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    return await attacking


def request_head(gateway: RunningGateway, path: str, *extra: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: relaygate",
        f"Authorization: Bearer {gateway.admin_key}",
        "Content-Type: application/json",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def one_byte_at_a_time(data: bytes) -> Iterator[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


def repeat(piece: bytes, total: int) -> Iterator[bytes]:
    return itertools.repeat(piece, total // len(piece))


async def test_slowloris_headers_one_byte_at_a_time(gateway: RunningGateway) -> None:
    head = request_head(gateway, "/v1/chat/completions")
    result = await under_attack(gateway, b"", one_byte_at_a_time(head * 20), every=0.05)
    status, headers, body = result.answer()
    assert status == 408
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert result.seconds >= TIMEOUT
    assert result.sent < len(head) * 20


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/v1/chat/completions", "openai"), ("/api/chat", "ollama")],
)
async def test_slow_body(gateway: RunningGateway, path: str, shape: str) -> None:
    body = json.dumps({"model": "mock", "messages": USER}).encode() + b" " * 2000
    head = request_head(gateway, path, f"Content-Length: {len(body)}")
    result = await under_attack(gateway, head, one_byte_at_a_time(body), every=0.05)
    status, headers, answer = result.answer()
    assert status == 408
    assert headers["connection"] == "close"
    error = json.loads(answer)["error"]
    if shape == "openai":
        assert error["code"] == "request_timeout"
    else:
        assert isinstance(error, str) and "did not arrive" in error
    assert result.seconds >= TIMEOUT
    assert result.sent < len(body)


async def test_connection_that_sends_nothing_is_closed_silently(gateway: RunningGateway) -> None:
    result = await under_attack(gateway, b"")
    assert result.received == b""
    assert result.seconds >= TIMEOUT * 0.9  # measured from just after the connection opened


async def test_idle_keep_alive_connection_is_closed(gateway: RunningGateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: relaygate\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" not in head.lower()
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    loop = asyncio.get_running_loop()
    answered = loop.time()
    async with gateway.client() as client:  # another client is served meanwhile
        await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
    async with asyncio.timeout(LATE):
        assert await reader.read() == b""
    assert loop.time() - answered >= TIMEOUT
    writer.close()


@pytest.mark.parametrize(
    ("start", "filler", "total"),
    [
        (b"GET /v1/models HTTP/1.1\r\nHost: relaygate\r\nX-Big: ", b"a" * CHUNK, 8 * 1024**2),
        (b"GET /v1/models HTTP/1.1\r\nHost: relaygate\r\n", b"X-H: v\r\n" * 1024, 20_000 * 8),
    ],
    ids=["8 MiB value", "20,000 headers"],
)
async def test_oversized_heads_get_431(
    gateway: RunningGateway, start: bytes, filler: bytes, total: int
) -> None:
    result = await under_attack(gateway, start, repeat(filler, total))
    status, headers, body = result.answer()
    assert status == 431
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_headers_too_large"
    assert result.sent < total


async def test_100mb_body_with_content_length_is_refused_unread(gateway: RunningGateway) -> None:
    head = request_head(gateway, "/v1/chat/completions", f"Content-Length: {MB100}")
    result = await under_attack(gateway, head, repeat(b"x" * CHUNK, MB100))
    status, headers, body = result.answer()
    assert status == 413
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert result.sent < MB100 // 4  # stopped by the close, never drained


async def test_chunked_100mb_body_is_cut_at_the_limit(gateway: RunningGateway) -> None:
    head = request_head(gateway, "/api/chat", "Transfer-Encoding: chunked")
    chunk = b"%x\r\n" % CHUNK + b"x" * CHUNK + b"\r\n"
    result = await under_attack(gateway, head, repeat(chunk, MB100 // CHUNK * len(chunk)))
    status, headers, body = result.answer()
    assert status == 413
    assert headers["connection"] == "close"
    assert "larger than the limit" in json.loads(body)["error"]  # Ollama's shape
    assert result.sent < MB100 // 4


async def test_expect_100_continue_with_too_large_body_gets_413_only(
    gateway: RunningGateway,
) -> None:
    extra = (f"Content-Length: {MB100}", "Expect: 100-continue")
    result = await under_attack(gateway, request_head(gateway, "/v1/chat/completions", *extra))
    assert b"100 Continue" not in result.received
    status, headers, _ = result.answer()
    assert status == 413
    assert headers["connection"] == "close"


async def test_connection_over_the_cap_gets_503_and_is_closed() -> None:
    settings = make_settings(MOCK, http={**HTTP, "max_connections": 4, "header_timeout": 30})
    async with running_gateway(settings) as gateway:
        held = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(4)]
        await asyncio.sleep(0.05)  # the server has accepted them
        result = await asyncio.to_thread(attack, gateway.port, b"GET /health HTTP/1.1\r\n\r\n")
        status, headers, body = result.answer()
        assert status == 503
        assert headers["retry-after"] == "1"
        assert headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        # one connection freed: the next client is served
        held.pop()[1].close()
        for _ in range(200):  # until the server has seen the close
            health = await asyncio.to_thread(attack, gateway.port, HEALTH)
            if health.answer()[0] == 200:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("no connection served after one was freed")
        for _, writer in held:
            writer.close()


HEALTH = b"GET /health HTTP/1.1\r\nHost: relaygate\r\nConnection: close\r\n\r\n"
