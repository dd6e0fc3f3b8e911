"""Shared fixtures: the real gateway on a free port, real fake upstreams, real clients."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.gateway import RunningGateway, make_settings, running_gateway

MOCK = [{"name": "mock", "deployments": [{"provider": "mock", "chunk_delay": 0}]}]


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which relaygate's code blocks the event loop.

    Only relaygate's own frames are scanned: client libraries used by the tests
    (the openai SDK loads certificates when constructed) are not the product.
    """
    with blockbuster_ctx("relaygate") as bb:
        yield bb


@pytest.fixture
async def mock_gateway() -> AsyncIterator[RunningGateway]:
    """A gateway serving only the development model ``mock`` (no delay)."""
    async with running_gateway(make_settings(MOCK)) as gateway:
        yield gateway


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A real OpenAI-compatible server on a free port, scripted per test."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def fake_ollama() -> AsyncIterator[FakeOllama]:
    """A real Ollama-native server on a free port, scripted per test."""
    async with FakeOllama(models=["llama3.2:1b", "qwen2.5:0.5b"]) as fake:
        yield fake


def closed_port_url(path: str = "/v1") -> str:
    """A loopback URL where nothing listens: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
