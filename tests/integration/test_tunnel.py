"""Dial-out nodes on loopback: an agent in the test's loop, a fake model server, the gateway.

The network-namespace tests (test_tunnel_netns.py) show the same with model servers the
gateway cannot reach; these cover registration, both server kinds, tokens and usage.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ollama
import openai
import pytest
import sqlalchemy as sa

from relaygate.store.nodes import NodeTokenStore
from relaygate.store.tables import usage_records
from relaygate.tunnel.agent import EXIT_REFUSED, AgentConfig, NodeAgent
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway

NODES = {"heartbeat_interval": 0.2, "heartbeat_timeout": 3, "revocation_poll": 0.2}


async def wait_for(predicate: Any, what: str) -> None:
    """Until ``predicate()`` holds (polled; at most 10 s)."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still waiting for: {what}")


@contextlib.asynccontextmanager
async def agent(
    gateway: RunningGateway, name: str, upstream: str, **options: Any
) -> AsyncIterator[tuple[NodeAgent, asyncio.Task[int]]]:
    """A node agent for node ``name`` (a fresh token), connected before it is yielded."""
    _, secret = await NodeTokenStore(gateway.state.engine).create(name)
    node = NodeAgent(AgentConfig(gateway=gateway.url, token=secret, upstream=upstream, **options))
    task = asyncio.ensure_future(node.run())
    try:
        await wait_for(lambda: gateway.state.hub.link(name) is not None or task.done(), name)
        yield node, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def gateway() -> AsyncIterator[RunningGateway]:
    models = [
        {"name": "fixed", "deployments": [{"provider": "node", "node": "box", "model": "m1:1b"}]},
        {"name": "mock", "deployments": [{"provider": "mock", "chunk_delay": 0}]},
    ]
    async with running_gateway(make_settings(models, nodes=NODES)) as running:
        yield running


async def test_registered_models_are_served_and_listed(
    gateway: RunningGateway, fake_ollama: FakeOllama
) -> None:
    fake_ollama.models = ["m1:1b", "m2:1b"]
    fake_ollama.loaded = ["m1:1b"]
    async with gateway.client() as client:
        listed = {m.id async for m in client.models.list()}
        assert "m2:1b" not in listed
        async with agent(gateway, "box", fake_ollama.base_url):
            listed = {m.id async for m in client.models.list()}
            assert {"fixed", "m1:1b", "m2:1b"} <= listed
            reply = await client.chat.completions.create(
                model="m2:1b", messages=[{"role": "user", "content": "hello there"}]
            )
            assert reply.choices[0].message.content == "Echo: hello there"
            assert reply.model == "m2:1b"
            # a configured deployment on the node, under another public name
            stream = await client.chat.completions.create(
                model="fixed", messages=[{"role": "user", "content": "one two three"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == "Echo: one two three"
            assert [r.json["model"] for r in fake_ollama.requests if r.path == "/api/chat"] == [
                "m2:1b",
                "m1:1b",
            ]
            # a model pulled on the node is servable after its next heartbeat
            fake_ollama.models.append("m3:1b")
            await wait_for(lambda: "m3:1b" in gateway.state.router.models, "m3 registered")
            reply = await client.chat.completions.create(
                model="m3:1b", messages=[{"role": "user", "content": "new"}]
            )
            assert reply.choices[0].message.content == "Echo: new"
            link = gateway.state.hub.link("box")
            assert link is not None and link.kind == "ollama" and link.loaded == ["m1:1b"]
        # the node left: its registered models go, the configured one stays (and fails fast)
        await wait_for(lambda: "m2:1b" not in gateway.state.router.models, "m2 gone")
        listed = {m.id async for m in client.models.list()}
        assert "fixed" in listed and "m1:1b" not in listed
        with pytest.raises(openai.APIStatusError) as failed:
            await client.chat.completions.create(
                model="fixed", messages=[{"role": "user", "content": "x"}]
            )
        assert failed.value.status_code == 503
        assert "not connected" in failed.value.message


async def test_usage_names_the_node_that_served(
    gateway: RunningGateway, fake_ollama: FakeOllama
) -> None:
    fake_ollama.models = ["m1:1b", "m2:1b"]
    async with agent(gateway, "box", fake_ollama.base_url), gateway.client() as client:
        for model in ("m2:1b", "fixed"):
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "count me"}]
            )
    query = sa.select(usage_records.c.model, usage_records.c.provider, usage_records.c.deployment)
    rows: list[Any] = []
    for _ in range(100):
        async with gateway.state.engine.connect() as conn:
            rows = list((await conn.execute(query)).all())
        if len(rows) >= 2:
            break
        await asyncio.sleep(0.05)
    assert sorted(tuple(r) for r in rows) == [
        ("fixed", "node", "fixed@box"),
        ("m2:1b", "node", "m2:1b@box"),
    ]


async def test_the_ollama_client_through_an_openai_compatible_node(
    gateway: RunningGateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.models = ["gpt-local"]
    async with (
        agent(gateway, "gpu", fake_openai.base_url),
        ollama.AsyncClient(host=gateway.url, headers=gateway.headers) as client,
    ):
        link = gateway.state.hub.link("gpu")
        assert link is not None and link.kind == "openai"
        parts = [
            part.message.content
            async for part in await client.chat(
                model="gpt-local", messages=[{"role": "user", "content": "via node"}], stream=True
            )
        ]
        assert "".join(parts) == "Echo: via node"
        embedded = await client.embed(model="gpt-local", input="vector")
        assert len(embedded.embeddings[0]) == fake_openai.embedding_dim


async def test_a_node_token_cannot_call_the_api(gateway: RunningGateway) -> None:
    _, secret = await NodeTokenStore(gateway.state.engine).create("box")
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            await c.chat.completions.create(
                model="mock", messages=[{"role": "user", "content": "x"}]
            )
    headers = {"Authorization": f"Bearer {secret}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/admin/node-tokens", headers=headers) as r:
            assert r.status == 401


async def test_unknown_token_and_token_in_url_are_refused(gateway: RunningGateway) -> None:
    url = gateway.url.replace("http", "ws") + "/nodes/connect"
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer rgn_not-a-token"}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(url, headers=headers, protocols=("relaygate-node.v1",))
            assert refused.value.status == 401
        _, secret = await NodeTokenStore(gateway.state.engine).create("box")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url + f"?token={secret}", protocols=("relaygate-node.v1",))
        assert refused.value.status == 401
        # no other route takes a WebSocket, with any credential
        other = gateway.url.replace("http", "ws") + "/v1/chat/completions"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(other, headers={"Authorization": f"Bearer {secret}"})
        assert refused.value.status == 403
    node = NodeAgent(AgentConfig(gateway=gateway.url, token="rgn_wrong", upstream="http://x"))
    node.kind = "ollama"
    assert await node.run() == EXIT_REFUSED


async def test_admin_routes_create_list_and_revoke(
    gateway: RunningGateway, fake_ollama: FakeOllama
) -> None:
    fake_ollama.models = ["m2:1b"]
    async with aiohttp.ClientSession(headers=gateway.headers) as session:
        async with session.post(gateway.url + "/admin/node-tokens", json={"name": "bad name"}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["param"] == "name"
        async with session.post(gateway.url + "/admin/node-tokens", json={"name": "box"}) as r:
            assert r.status == 201
            created = await r.json()
        secret = created["token"]
        assert secret.startswith("rgn_") and created["connected"] is False
        node = NodeAgent(
            AgentConfig(gateway=gateway.url, token=secret, upstream=fake_ollama.base_url)
        )
        task = asyncio.ensure_future(node.run())
        await wait_for(lambda: gateway.state.hub.link("box") is not None, "connected")
        async with session.get(gateway.url + "/admin/node-tokens") as r:
            listed = (await r.json())["data"]
        assert [(t["id"], t["connected"]) for t in listed] == [(created["id"], True)]
        assert all("token" not in t and "token_hash" not in t for t in listed)
        async with session.delete(gateway.url + f"/admin/node-tokens/{created['id']}") as r:
            assert r.status == 200
            assert (await r.json())["revoked_at"] is not None
        # cut off at once, and the agent stops: the token will never work again
        assert gateway.state.hub.link("box") is None
        assert await asyncio.wait_for(task, 10) == EXIT_REFUSED
        assert "m2:1b" not in gateway.state.router.models
        async with session.delete(gateway.url + "/admin/node-tokens/node_nothing") as r:
            assert r.status == 404


async def test_revocation_in_the_database_alone_cuts_the_node_off(
    gateway: RunningGateway, fake_ollama: FakeOllama
) -> None:
    """As ``relaygate nodes token revoke`` does from another process without Redis."""
    store = NodeTokenStore(gateway.state.engine)
    async with agent(gateway, "box", fake_ollama.base_url) as (_, task):
        link = gateway.state.hub.link("box")
        assert link is not None
        await store.revoke(link.token_id)
        assert await asyncio.wait_for(task, 10) == EXIT_REFUSED
        assert gateway.state.hub.link("box") is None


async def test_a_node_name_that_is_not_the_tokens_is_refused(
    gateway: RunningGateway, fake_ollama: FakeOllama
) -> None:
    _, secret = await NodeTokenStore(gateway.state.engine).create("box")
    config = AgentConfig(
        gateway=gateway.url, token=secret, upstream=fake_ollama.base_url, name="other"
    )
    assert await asyncio.wait_for(NodeAgent(config).run(), 10) == EXIT_REFUSED


async def test_the_local_server_down_is_a_failover_not_a_hang(
    gateway: RunningGateway, fake_ollama: FakeOllama
) -> None:
    fake_ollama.models = ["m1:1b"]
    async with agent(gateway, "box", fake_ollama.base_url), gateway.client() as client:
        await fake_ollama.close()
        with pytest.raises(openai.APIStatusError) as failed:
            await client.chat.completions.create(
                model="fixed", messages=[{"role": "user", "content": "x"}]
            )
        assert failed.value.status_code == 503
        assert "local server is unreachable" in failed.value.message


async def test_a_slow_stream_is_cancelled_at_the_node_when_the_client_leaves(
    gateway: RunningGateway, fake_ollama: FakeOllama
) -> None:
    fake_ollama.models = ["m1:1b"]
    fake_ollama.push(Script(content="a b c d e f g h", chunk_delay=0.3))
    async with agent(gateway, "box", fake_ollama.base_url), gateway.client() as client:
        stream = await client.chat.completions.create(
            model="fixed", messages=[{"role": "user", "content": "x"}], stream=True
        )
        async for _chunk in stream:
            break
        await stream.close()
        await asyncio.wait_for(fake_ollama.client_gone.wait(), 10)
        assert fake_ollama.completed_streams == 0


async def test_an_ollama_stream_cut_mid_way_ends_with_an_error_line(
    gateway: RunningGateway, fake_ollama: FakeOllama
) -> None:
    """The error event is in the client's own shape: an Ollama client's error line."""
    fake_ollama.models = ["m1:1b"]
    words = " ".join(f"w{i}" for i in range(300))
    fake_ollama.push(Script(content=words, chunk_delay=0.2))
    async with (
        agent(gateway, "box", fake_ollama.base_url) as (_, task),
        ollama.AsyncClient(host=gateway.url, headers=gateway.headers) as client,
    ):
        received: list[str] = []
        with pytest.raises(ollama.ResponseError) as failed:
            async for part in await client.chat(
                model="fixed", messages=[{"role": "user", "content": "x"}], stream=True
            ):
                received.append(part.message.content or "")
                if len(received) == 3:
                    task.cancel()  # the agent stops: its connection closes
        assert "lost mid-response" in failed.value.error
        assert 3 <= len(received) < 300


async def test_a_token_store_failure_is_retried_not_a_refusal(
    gateway: RunningGateway, fake_ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database outage must not stop agents for good (exit 3 is for refused tokens)."""
    hub = gateway.state.hub
    check = hub.tokens.check
    failures = 0

    async def failing(secret: str) -> Any:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise OSError("database down")
        return await check(secret)

    monkeypatch.setattr(hub.tokens, "check", failing)  # a fault no fake server can produce
    url = gateway.url.replace("http", "ws") + "/nodes/connect"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            headers = {"Authorization": "Bearer rgn_x"}
            await session.ws_connect(url, headers=headers, protocols=("relaygate-node.v1",))
        assert refused.value.status == 503
    async with agent(gateway, "box", fake_ollama.base_url) as (_, task):
        assert not task.done() and failures == 2
        assert hub.link("box") is not None


async def test_a_dial_out_node_in_a_pool_is_balanced_with_an_http_node_and_listed(
    fake_ollama: FakeOllama,
) -> None:
    """A pool of a node the gateway calls and one that dials out: both serve the model,
    the dial-out one only through the pool (never as a registered model of its own),
    and it leaves the pool's rotation when its agent goes."""
    fake_ollama.models = ["m1:1b"]
    near = FakeOllama(["m1:1b"])
    await near.start()
    pools = {
        "home": {
            "nodes": [{"name": "near", "base_url": near.base_url}, {"node": "box"}],
            "probe_interval": 0.2,
            "balance": "round_robin",
        }
    }
    try:
        settings = make_settings(pools=pools, nodes=NODES)
        async with running_gateway(settings) as gateway, gateway.client() as client:
            pool = gateway.state.router.pools["home"]
            box = pool.node("box")
            assert box is not None and box.state != "healthy"  # not connected yet
            async with agent(gateway, "box", fake_ollama.base_url):
                await wait_for(lambda: box.state == "healthy", "box admitted to the pool")
                for _ in range(4):
                    reply = await client.chat.completions.create(
                        model="m1:1b", messages=[{"role": "user", "content": "hi"}]
                    )
                    assert reply.choices[0].message.content == "Echo: hi"
                chats = [r for r in fake_ollama.requests if r.path == "/api/chat"]
                assert (
                    len(chats) == 2
                    and len([r for r in near.requests if r.path == "/api/chat"]) == 2
                )
                # served through the pool only: no deployment of its own
                model = gateway.state.router.models["m1:1b"]
                assert all(d.provider_name != "node" for d in model.deployments)
                async with aiohttp.ClientSession(headers=gateway.headers) as http:
                    async with http.get(gateway.url + "/admin/nodes") as response:
                        view = {n["node"]: n for n in (await response.json())["data"]}
                assert view["box"]["dial_out"] and view["box"]["pool"] == "home"
                assert view["box"]["models"] == ["m1:1b"] and not view["near"]["dial_out"]
            await wait_for(lambda: box.state == "down", "box out of the pool")
            for _ in range(2):
                await client.chat.completions.create(
                    model="m1:1b", messages=[{"role": "user", "content": "after"}]
                )
            assert len([r for r in near.requests if r.path == "/api/chat"]) == 4
    finally:
        await near.close()
