"""The HTTP protocol's limits, fed byte streams directly (no sockets), and the uvicorn
internals it relies on."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import msgspec
import pytest
import uvicorn
from hypothesis import example, given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from relaygate.errors import PayloadTooLarge
from relaygate.server import GuardedHttpProtocol, ServerConfig, protocol_error_body
from relaygate.settings import HttpConfig

LIMITS = HttpConfig(max_header_bytes=2048, max_headers=20)


class FakeTransport(asyncio.Transport):
    """Collects what the protocol writes; knows whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def connect(limits: HttpConfig = LIMITS) -> tuple[GuardedHttpProtocol, FakeTransport]:
    config = ServerConfig(
        ok_app, limits=limits, lifespan="off", log_level="warning", access_log=False
    )
    protocol = GuardedHttpProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def settle(protocol: GuardedHttpProtocol) -> None:
    for _ in range(5):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    await asyncio.sleep(0)


def status_of(written: bytes) -> int | None:
    return int(written[9:12]) if written.startswith(b"HTTP/1.1 ") else None


def head(url_length: int, headers: list[tuple[int, int]]) -> bytes:
    lines = [b"GET /" + b"u" * url_length + b" HTTP/1.1\r\n"]
    lines += [b"x-" + b"n" * n + b": " + b"v" * v + b"\r\n" for n, v in headers]
    return b"".join(lines) + b"\r\n"


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


HEADER = st.tuples(st.integers(1, 40), st.one_of(st.integers(0, 8), st.integers(0, 400)))


@settings(max_examples=150, deadline=None)
@given(
    url_length=st.integers(0, 2100),
    headers=st.integers(0, 26).flatmap(lambda n: st.lists(HEADER, min_size=n, max_size=n)),
    cuts=st.lists(st.integers(0, 10**6), max_size=6),
)
@example(url_length=2030, headers=[], cuts=[])  # exactly max_header_bytes
@example(url_length=2031, headers=[], cuts=[2048])  # one byte over, cut at the limit
@example(url_length=0, headers=[(1, 0)] * 20, cuts=[])  # exactly max_headers
@example(url_length=0, headers=[(1, 0)] * 21, cuts=[7])  # one line over
async def test_431_exactly_when_the_head_is_over_a_limit(
    url_length: int, headers: list[tuple[int, int]], cuts: list[int]
) -> None:
    """However the bytes are split, a head over max_header_bytes (as received) or with more
    than max_headers lines is refused with 431 and the connection closed; any other is served."""
    data = head(url_length, headers)
    over = len(data) > LIMITS.max_header_bytes or len(headers) > LIMITS.max_headers
    protocol, transport = connect()
    for piece in pieces(data, cuts):
        if transport.closed:
            break
        protocol.data_received(piece)
    if over:
        assert status_of(bytes(transport.written)) == 431
        assert transport.closed
        body = transport.written.split(b"\r\n\r\n", 1)[1]
        assert msgspec.json.decode(body)["error"]["code"] == "request_headers_too_large"
    await settle(protocol)
    if not over:
        assert status_of(bytes(transport.written)) == 200


async def test_a_pipelined_request_is_held_to_the_limits_too() -> None:
    """A second request arriving in the same read as the first is still refused when its
    head is too large (its lines are counted; its bytes from the next read on)."""
    protocol, transport = connect()
    protocol.data_received(head(10, []) + head(0, [(5, 60)] * 30))
    assert b"HTTP/1.1 431" in transport.written
    assert transport.closed
    await settle(protocol)


async def test_a_body_left_unread_when_the_answer_is_complete_closes_the_connection() -> None:
    protocol, transport = connect()
    protocol.data_received(b"POST / HTTP/1.1\r\ncontent-length: 100000000\r\n\r\nxxxx")
    for _ in range(5):
        await asyncio.sleep(0)
    assert status_of(bytes(transport.written)) == 200
    assert transport.closed  # not kept alive to drain 100 MB
    await settle(protocol)


async def test_connections_over_the_cap_get_503_at_once() -> None:
    limits = HttpConfig(max_connections=2)
    config = ServerConfig(
        ok_app, limits=limits, lifespan="off", log_level="warning", access_log=False
    )
    state, loop = ServerState(), asyncio.get_running_loop()
    protocols = [GuardedHttpProtocol(config, state, {}, loop) for _ in range(3)]
    transports = [FakeTransport() for _ in range(3)]
    for protocol, transport in zip(protocols, transports, strict=True):
        protocol.connection_made(transport)
    assert [t.closed for t in transports] == [False, False, True]
    assert status_of(bytes(transports[2].written)) == 503
    assert b"retry-after: 1\r\n" in transports[2].written
    protocols[2].data_received(b"GET / HTTP/1.1\r\n\r\n")  # ignored, never served
    for protocol in protocols:
        protocol.connection_lost(None)
    assert not state.connections


@settings(max_examples=40, deadline=None)
@given(
    cap=st.integers(1, 4),
    paths=st.lists(
        st.sampled_from(["/v1/chat/completions", "/health", "/metrics?x=1", "/ready"]),
        min_size=1,
        max_size=8,
    ),
)
async def test_requests_over_the_in_flight_cap_are_shed_with_503(
    cap: int, paths: list[str]
) -> None:
    """While ``max_in_flight`` requests are being served, another one gets 503 with
    Retry-After: 1 and its connection closed, before the app sees it, unless it is an
    operational route (/health, /ready, /metrics), which are always served. Once the
    running ones finish, requests are served again."""
    release = asyncio.Event()
    seen: list[str] = []

    async def held_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await release.wait()
        await ok_app(scope, receive, send)

    config = ServerConfig(
        held_app, limits=HttpConfig(max_in_flight=cap), lifespan="off",
        log_level="warning", access_log=False,
    )  # fmt: skip
    state, loop = ServerState(), asyncio.get_running_loop()
    running, shed = 0, []
    opened = []
    for path in paths:
        protocol, transport = GuardedHttpProtocol(config, state, {}, loop), FakeTransport()
        protocol.connection_made(transport)
        protocol.data_received(f"GET {path} HTTP/1.1\r\n\r\n".encode())
        opened.append((protocol, transport))
        operational = path.split("?")[0] in ("/health", "/ready", "/metrics")
        if running >= cap and not operational:
            shed.append(path)
            assert status_of(bytes(transport.written)) == 503
            assert b"retry-after: 1\r\n" in transport.written
            body = transport.written.split(b"\r\n\r\n", 1)[1]
            assert msgspec.json.decode(body)["error"]["code"] == "overloaded"
            assert transport.closed
        else:
            running += 1
            assert not transport.closed and not transport.written
        await asyncio.sleep(0)
    assert len(seen) == len(paths) - len(shed)  # the shed ones never reached the app
    release.set()
    for _ in range(5):
        await asyncio.sleep(0)
    for protocol, transport in opened:
        if not transport.closed:
            assert status_of(bytes(transport.written)) == 200
        protocol.connection_lost(None)
    # Below the cap again: a new request is served.
    protocol, transport = GuardedHttpProtocol(config, state, {}, loop), FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(b"GET /v1/chat/completions HTTP/1.1\r\n\r\n")
    await settle(protocol)
    assert status_of(bytes(transport.written)) == 200


def test_error_shape_follows_the_path() -> None:
    error = PayloadTooLarge(10)
    openai = msgspec.json.decode(protocol_error_body("/v1/chat/completions", error))
    assert openai["error"]["code"] == "request_too_large"
    assert msgspec.json.decode(protocol_error_body("/api/chat", error)) == {"error": error.message}
    for path in ("/api/keys", "/api/stats", None, "/admin/keys"):
        assert "code" in msgspec.json.decode(protocol_error_body(path, error))["error"]


def test_payload_too_large_closes_the_connection() -> None:
    assert (b"connection", b"close") in PayloadTooLarge(1).headers()


@pytest.mark.parametrize(
    "name",
    [
        "connection_made",
        "connection_lost",
        "data_received",
        "on_message_begin",
        "on_url",
        "on_header",
        "on_headers_complete",
        "on_message_complete",
        "on_response_complete",
        "_unset_keepalive_if_required",
    ],
)
def test_uvicorn_still_has_the_hooks_overridden(name: str) -> None:
    """server.py subclasses uvicorn internals: fail loudly when an upgrade drops one."""
    assert callable(getattr(HttpToolsProtocol, name, None)), f"uvicorn lost {name}"


def test_uvicorn_server_still_has_its_hooks() -> None:
    for name in ("startup", "_log_started_message"):
        assert callable(getattr(uvicorn.Server, name, None)), f"uvicorn lost Server.{name}"


async def test_uvicorn_state_the_protocol_reads() -> None:
    protocol, _ = connect()
    assert protocol.parser is not None and protocol.cycle is None
    assert protocol in protocol.server_state.connections
    assert protocol.tasks is protocol.server_state.tasks  # the in-flight count (max_in_flight)
    protocol.data_received(b"GET /x?y HTTP/1.1\r\n")
    assert protocol.url == b"/x?y"
    protocol.data_received(b"\r\n")
    assert isinstance(protocol.cycle, RequestResponseCycle)
    for attribute in ("response_started", "response_complete", "disconnected", "message_event"):
        assert hasattr(protocol.cycle, attribute)
    assert protocol.config.http_protocol_class is GuardedHttpProtocol
    await settle(protocol)


class WriteLog(FakeTransport):
    """A FakeTransport that also keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(data)
        self.writes.append(bytes(data))


def app_with(pause: float, chunks: int) -> Any:
    """Starts a response, maybe waits, then sends ``chunks`` body parts."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if pause:
            await asyncio.sleep(pause)
        for i in range(chunks):
            more = i < chunks - 1
            await send({"type": "http.response.body", "body": b"part%d" % i, "more_body": more})

    return app


async def serve_bytes(protocol_class: type[HttpToolsProtocol], app: Any, requests: int) -> WriteLog:
    config = ServerConfig(app, limits=LIMITS, lifespan="off", log_level="warning")
    config.load()
    protocol = protocol_class(config, ServerState(), {}, asyncio.get_running_loop())
    transport = WriteLog()
    protocol.connection_made(transport)
    protocol.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n" * requests)
    for _ in range(200):  # until every answer is complete (chunked: ends with 0 CRLF CRLF)
        await asyncio.sleep(0.001)
        done = transport.written.count(b"0\r\n\r\n") == requests
        if done and transport.written.count(b"HTTP/1.1 200") == requests:
            break
    protocol.connection_lost(None)
    await asyncio.sleep(0)
    return transport


@settings(max_examples=20, deadline=None)
@given(
    pause=st.sampled_from([0.0, 0.002]),
    chunks=st.integers(1, 4),
    requests=st.integers(1, 3),
)
async def test_the_head_leaves_with_the_body_and_the_bytes_are_uvicorns(
    pause: float, chunks: int, requests: int
) -> None:
    """An answer's head goes out in one write with its first body bytes when they follow at
    once, alone (without waiting for them) when they do not; either way, pipelined requests
    included, the connection carries exactly the bytes plain uvicorn writes."""
    ours = await serve_bytes(GuardedHttpProtocol, app_with(pause, chunks), requests)
    plain = await serve_bytes(HttpToolsProtocol, app_with(pause, chunks), requests)
    assert bytes(ours.written) == bytes(plain.written)
    assert ours.written.count(b"HTTP/1.1 200") == requests
    heads = [w for w in ours.writes if w.startswith(b"HTTP/1.1 200")]
    assert len(heads) == requests
    for written in heads:
        if pause:
            assert written.endswith(b"\r\n\r\n")  # sent alone, not held for the body
        else:
            assert b"part0" in written  # one write: the head and the body's first part


async def test_a_held_head_goes_out_before_the_connection_closes() -> None:
    """A HEAD answer has no body to carry its head: closing the connection at once (its
    request body is still coming) still sends the head first."""
    protocol, transport = connect()
    protocol.data_received(b"HEAD / HTTP/1.1\r\ncontent-length: 100000\r\n\r\nxxxx")
    for _ in range(5):
        await asyncio.sleep(0)
    assert status_of(bytes(transport.written)) == 200
    assert transport.closed
    await settle(protocol)
