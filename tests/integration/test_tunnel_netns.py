"""Two nodes whose model servers the gateway cannot reach, serving through their agents.

Each node is a network namespace holding a fake Ollama server (on the namespace's own
127.0.0.1) and a ``relaygate node`` agent process that dials out, over a veth pair and a
bridge, to the gateway on the host side. The model servers are unreachable from the
gateway's side: only the agents' outbound connections carry requests. Connections are
cut by killing an agent (the socket closes) or by taking its link down (silence: the
heartbeat deadline finds it).

Needs root and ``ip netns`` (iproute2); skipped, saying why, without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import openai
import pytest

from relaygate.store.nodes import NodeTokenStore
from relaygate.tunnel.agent import EXIT_REFUSED
from tests.gateway import RunningGateway, make_settings, running_gateway

ROOT = Path(__file__).resolve().parents[2]
NODES = {"heartbeat_interval": 0.3, "heartbeat_timeout": 2.0, "revocation_poll": 0.3}
MODELS = [
    # "chat" is served by node a; when a fails, by node b (the fallback "chat-b")
    {
        "name": "chat",
        "deployments": [{"provider": "node", "node": "a", "model": "m:1b"}],
        "fallbacks": ["chat-b"],
    },
    {"name": "chat-b", "deployments": [{"provider": "node", "node": "b", "model": "m:1b"}]},
]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Network:
    host: str  # the gateway's address on the bridge
    namespaces: dict[str, str]  # node name -> namespace
    links: dict[str, str]  # node name -> its veth's host-side end
    addresses: dict[str, str]  # node name -> its address on the bridge


@pytest.fixture
def network() -> Iterator[Network]:
    """A bridge on the host and, per node, a namespace joined to it by a veth pair."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's ip")
    tag = secrets.token_hex(2)
    subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250) + 1}"
    bridge = f"rgtb{tag}"
    try:
        _ip("netns", "add", f"rgt{tag}a")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"ip netns is unavailable here: {exc.stderr.strip()}")
    namespaces = {"a": f"rgt{tag}a", "b": f"rgt{tag}b"}
    net = Network(f"{subnet}.1", namespaces, {}, {})
    try:
        _ip("netns", "add", namespaces["b"])
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{net.host}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for index, (node, ns) in enumerate(namespaces.items(), start=10):
            outside, inside = f"rgt{tag}{node}h", f"rgt{tag}{node}n"
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", ns)
            _ip("link", "set", outside, "master", bridge, "up")
            address = f"{subnet}.{index}"
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            net.links[node], net.addresses[node] = outside, address
        yield net
    finally:
        for outside in net.links.values():  # its peer goes with it
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", outside)
        for ns in namespaces.values():
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", ns)  # its veth ends go with it
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", bridge)


@dataclass
class Node:
    name: str
    namespace: str
    port: int  # the fake Ollama's port, on the namespace's loopback
    fake: asyncio.subprocess.Process
    agent: asyncio.subprocess.Process
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)


class Nodes:
    """Starts fakes and agents in the namespaces; kills every process it started."""

    def __init__(self, net: Network, gateway: RunningGateway) -> None:
        self.net = net
        self.gateway = gateway
        self.started: list[asyncio.subprocess.Process] = []
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}

    async def _spawn(self, ns: str, *argv: str) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, sys.executable, *argv,
            env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.started.append(process)
        return process

    async def start(
        self, name: str, *fake_args: str, capacity: int = 4, connect: bool = True
    ) -> Node:
        ns = self.net.namespaces[name]
        fake = await self._spawn(
            ns, "-m", "tests.fakes.ollama_process", "--models", "m:1b", *fake_args
        )
        assert fake.stdout is not None
        port = int((await asyncio.wait_for(fake.stdout.readline(), 20)).decode())
        _, secret = await NodeTokenStore(self.gateway.state.engine).create(name)
        agent = await self._spawn(
            ns, "-m", "relaygate", "node", "--gateway", self.gateway.url, "--token", secret,
            "--upstream", f"http://127.0.0.1:{port}", "--capacity", str(capacity),
            "--name", name, "--log-level", "warning",
        )  # fmt: skip
        node = Node(name, ns, port, fake, agent)
        if connect:
            await self.connected(name)
        return node

    async def connected(self, name: str) -> None:
        await until(lambda: self.gateway.state.hub.link(name) is not None, f"{name} connected")

    async def aclose(self) -> None:
        for process in self.started:
            if process.returncode is None:
                process.kill()
            await process.wait()


async def until(predicate: Any, what: str) -> None:
    """Until ``predicate()`` holds (polled; at most 20 s)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still waiting for: {what}")


@pytest.fixture
async def gateway(network: Network) -> AsyncIterator[RunningGateway]:
    settings = make_settings(MODELS, nodes=NODES)
    async with running_gateway(settings, host=network.host) as running:
        yield running


@pytest.fixture
async def nodes(network: Network, gateway: RunningGateway) -> AsyncIterator[Nodes]:
    started = Nodes(network, gateway)
    try:
        yield started
    finally:
        await started.aclose()


async def read_stream(client: openai.AsyncOpenAI, model: str) -> str:
    stream = await client.chat.completions.create(model=model, messages=ask("q"), stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


async def test_nodes_serve_models_the_gateway_cannot_reach(
    network: Network, gateway: RunningGateway, nodes: Nodes
) -> None:
    a = await nodes.start("a", "--content", "from a")
    b = await nodes.start("b", "--content", "from b")
    # neither model server is reachable from the gateway's side
    async with aiohttp.ClientSession() as session:
        for url in (
            f"http://127.0.0.1:{a.port}/api/tags",
            f"http://{network.addresses['a']}:{a.port}/api/tags",
            f"http://{network.addresses['b']}:{b.port}/api/tags",
        ):
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=3)):
                    pass
    async with gateway.client() as client:
        reply = await client.chat.completions.create(model="chat", messages=ask("hi"))
        assert reply.choices[0].message.content == "from a"
    async with ollama.AsyncClient(host=gateway.url, headers=gateway.headers) as client:
        parts = [
            p.message.content
            async for p in await client.chat(model="chat-b", messages=ask("hi"), stream=True)
        ]
        assert "".join(parts) == "from b"
        # many requests share each connection at once
        replies = await asyncio.gather(
            *(client.chat(model=m, messages=ask("x")) for m in ["chat", "chat-b"] * 10)
        )
        assert [r.message.content for r in replies] == ["from a", "from b"] * 10


async def test_a_connection_cut_mid_stream_ends_the_stream_with_an_error_at_once(
    gateway: RunningGateway, nodes: Nodes
) -> None:
    # node a streams 300 words, one every 0.2 s: a minute, longer than the test may run
    words = " ".join(f"w{i}" for i in range(300))
    a = await nodes.start("a", "--content", words, "--chunk-delay", "0.2")
    await nodes.start("b", "--content", "from b")
    async with gateway.client() as client:
        stream = await client.chat.completions.create(
            model="chat", messages=ask("long"), stream=True
        )
        received: list[str] = []
        with pytest.raises(openai.APIError) as failed:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
                    if len(received) == 3:
                        a.agent.kill()  # the agent's socket closes: the connection is gone
        assert "lost mid-response" in str(failed.value.message)
        assert 3 <= len(received) < 300
        # the gateway already knows: the next request for "chat" goes to b at once
        await until(lambda: gateway.state.hub.link("a") is None, "a dropped")
        reply = await client.chat.completions.create(model="chat", messages=ask("again"))
        assert reply.choices[0].message.content == "from b"


async def test_a_connection_cut_mid_queue_fails_over_to_the_other_node(
    network: Network, gateway: RunningGateway, nodes: Nodes
) -> None:
    # node a never answers in time; it runs one request at a time, the rest wait in its queue
    await nodes.start("a", "--first-byte-delay", "300", capacity=1)
    await nodes.start("b", "--content", "from b")
    async with gateway.client() as client:
        calls = [
            asyncio.ensure_future(client.chat.completions.create(model="chat", messages=ask("q")))
            for _ in range(3)
        ]
        # a stream's answer starts only once a first chunk exists: it waits at a too
        streamed = asyncio.ensure_future(read_stream(client, "chat"))
        link = gateway.state.hub.link("a")
        assert link is not None
        await until(lambda: link.in_flight == 4 and link.queued == 3, "4 requests at node a")
        _ip("link", "set", network.links["a"], "down")  # silence: no close reaches anyone
        replies = await asyncio.gather(*calls)
        assert [r.choices[0].message.content for r in replies] == ["from b"] * 3
        assert await streamed == "from b"
        assert gateway.state.hub.link("a") is None


async def test_an_agent_reconnects_when_its_link_comes_back(
    network: Network, gateway: RunningGateway, nodes: Nodes
) -> None:
    a = await nodes.start("a", "--content", "from a")
    await nodes.start("b", "--content", "from b")
    async with gateway.client() as client:
        _ip("link", "set", network.links["a"], "down")
        await until(lambda: gateway.state.hub.link("a") is None, "a's heartbeats missed")
        reply = await client.chat.completions.create(model="chat", messages=ask("x"))
        assert reply.choices[0].message.content == "from b"
        _ip("link", "set", network.links["a"], "up")
        await nodes.connected("a")  # the same agent process, with backoff and jitter
        assert a.agent.returncode is None
        reply = await client.chat.completions.create(model="chat", messages=ask("x"))
        assert reply.choices[0].message.content == "from a"


async def test_a_revoked_node_is_cut_off_and_its_agent_stops(
    gateway: RunningGateway, nodes: Nodes
) -> None:
    await nodes.start("a", "--content", "from a")
    b = await nodes.start("b", "--content", "from b")
    link = gateway.state.hub.link("b")
    assert link is not None
    async with aiohttp.ClientSession(headers=gateway.headers) as session:
        url = f"{gateway.url}/admin/node-tokens/{link.token_id}"
        async with session.delete(url) as r:
            assert r.status == 200
    assert gateway.state.hub.link("b") is None
    assert await asyncio.wait_for(b.agent.wait(), 20) == EXIT_REFUSED
    async with gateway.client() as client:
        with pytest.raises(openai.APIStatusError) as failed:
            await client.chat.completions.create(model="chat-b", messages=ask("x"))
        assert failed.value.status_code == 503
        reply = await client.chat.completions.create(model="chat", messages=ask("x"))
        assert reply.choices[0].message.content == "from a"
