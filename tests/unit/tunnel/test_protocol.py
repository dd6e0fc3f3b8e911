"""Frames, the agent's URL and backoff, and reading a body that arrives in frames."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import msgspec
import pytest

from relaygate.errors import ConfigError, UpstreamConnectError, UpstreamProtocolError
from relaygate.settings import load_settings
from relaygate.tunnel.agent import Backoff, connect_url
from relaygate.tunnel.client import TunnelSession
from relaygate.tunnel.hub import Lost, NodeLink
from relaygate.tunnel.protocol import Body, End, Head, Hello, Request, decode, encode


def test_frames_round_trip_and_reject_garbage() -> None:
    frames = [
        Hello("mac", "ollama", ["llama3:8b"], [], 4, "0.1.0"),
        Request(7, "POST", "/api/chat", [("Content-Type", "application/json")], b"{}"),
        Body(7, b"\x00\xff data"),
        End(7),
    ]
    for frame in frames:
        assert decode(encode(frame)) == frame
    with pytest.raises(msgspec.DecodeError):
        decode(b"\xc1 not msgpack")
    with pytest.raises(msgspec.ValidationError):
        decode(msgspec.msgpack.encode(["nope", 1]))


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("https://gw.example.com", "wss://gw.example.com/nodes/connect"),
        ("http://10.0.0.2:8000/", "ws://10.0.0.2:8000/nodes/connect"),
        ("https://gw.example.com/relay", "wss://gw.example.com/relay/nodes/connect"),
        ("wss://gw.example.com/nodes/connect", "wss://gw.example.com/nodes/connect"),
    ],
)
def test_connect_url(given: str, url: str) -> None:
    assert connect_url(given) == url


@pytest.mark.parametrize(
    "bad", ["ftp://gw", "gw.example.com", "https://gw/?token=x", "https://u:p@gw"]
)
def test_connect_url_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        connect_url(bad)


def test_backoff_grows_with_jitter_up_to_its_ceiling_and_resets() -> None:
    backoff = Backoff(rng=random.Random(4))
    waits = [backoff.next() for _ in range(12)]
    for attempt, wait in enumerate(waits):
        ceiling = min(30.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= wait <= ceiling
    assert len(set(waits[-4:])) == 4  # jittered, not one fixed value
    backoff.reset()
    assert backoff.next() <= 0.5


class _Sent(list[Any]):
    async def __call__(self, message: Any) -> None:
        self.append(message)


def _link() -> tuple[NodeLink, _Sent]:
    sent = _Sent()
    return NodeLink("mac", "node_1", "ollama", [], [], 1, "0", sent), sent


async def test_lines_across_frames_and_loss_mid_body() -> None:
    link, sent = _link()
    session = TunnelSession("mac", lambda _name: link)

    async def answer() -> None:
        await asyncio.sleep(0)
        link.deliver(Head(1, 200, "OK", [("Content-Type", "application/x-ndjson")]))
        link.deliver(Body(1, b'{"a": 1}\n{"b"'))
        link.deliver(Body(1, b": 2}\n"))
        await asyncio.sleep(0.01)
        link.fail_all("the connection closed")

    task = asyncio.ensure_future(answer())
    lines = []
    with pytest.raises(UpstreamProtocolError, match="lost mid-response"):
        async with session.post("/api/chat", data=b"{}") as response:
            assert response.status == 200
            assert response.headers["content-type"] == "application/x-ndjson"
            async for line in response.content:
                lines.append(line)
    await task
    assert lines == [b'{"a": 1}\n', b'{"b": 2}\n']
    request = decode(sent[0]["bytes"])
    assert isinstance(request, Request) and request.path == "/api/chat"


async def test_a_lost_node_before_its_answer_is_a_retryable_connect_error() -> None:
    link, _ = _link()
    link.fail_all("gone")
    with pytest.raises(UpstreamConnectError, match="was lost") as lost:
        async with TunnelSession("mac", lambda _name: link).post("/api/chat", data=b"{}"):
            pass
    assert lost.value.retryable
    with pytest.raises(UpstreamConnectError, match="not connected"):
        async with TunnelSession("pc", lambda _name: None).post("/api/chat", data=b"{}"):
            pass
    assert isinstance(Lost("x"), Lost)


def test_a_node_deployment_names_its_node_and_has_no_base_url() -> None:
    node = {"provider": "node", "node": "mac"}
    settings = load_settings(
        environ={}, overrides={"models": [{"name": "m", "deployments": [node]}]}
    )
    assert settings.models[0].deployments[0].node == "mac"
    for deployment, problem in (
        ({"provider": "node"}, "node: required"),
        ({**node, "base_url": "http://x:1"}, "base_url: a node has none"),
        ({**node, "node": "has space"}, "node"),
        ({"provider": "ollama", "base_url": "http://x:1", "node": "mac"}, "only provider 'node'"),
    ):
        with pytest.raises(ConfigError, match=problem):
            load_settings(
                environ={}, overrides={"models": [{"name": "m", "deployments": [deployment]}]}
            )
