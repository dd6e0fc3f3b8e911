"""A pool of three Ollama nodes with different models behind the gateway, called with the
official ``openai`` and ``ollama`` clients: routing by model, loaded first, a node killed
mid-run, re-admitted, a model pulled while the gateway runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import ollama
import openai
import pytest
import sqlalchemy as sa

from relaygate.store.tables import usage_records
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.redis_server import RedisServer
from tests.gateway import RunningGateway, make_settings, running_gateway

USER = [{"role": "user", "content": "hello there"}]


def pool_settings(nodes: list[FakeOllama], **pool: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "nodes": [{"name": f"n{i + 1}", "base_url": n.base_url} for i, n in enumerate(nodes)],
        "probe_interval": 0.2,
        "probe_timeout": 1.0,
        **pool,
    }
    return {"home": config}


@asynccontextmanager
async def three_nodes() -> AsyncIterator[list[FakeOllama]]:
    """n1 has llama and qwen, n2 has llama (loaded), n3 has phi."""
    nodes = [
        FakeOllama(["llama3.2:1b", "qwen2.5:0.5b"]),
        FakeOllama(["llama3.2:1b"], loaded=["llama3.2:1b"]),
        FakeOllama(["phi3:mini"]),
    ]
    for node in nodes:
        await node.start()
    try:
        yield nodes
    finally:
        for node in nodes:
            await node.close()


def inference(node: FakeOllama) -> list[str]:
    """The models a node was asked to answer with."""
    return [r.json["model"] for r in node.requests if r.path in ("/api/chat", "/api/generate")]


async def until(condition: Any, seconds: float = 5.0) -> None:
    """Poll ``condition`` (probes and writers run on their own clocks)."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not met within {seconds} s")


def ollama_client(gateway: RunningGateway) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=gateway.url, headers=gateway.headers)


async def test_requests_go_only_to_nodes_with_the_model_and_loaded_first() -> None:
    async with three_nodes() as (n1, n2, n3):
        settings = make_settings(pools=pool_settings([n1, n2, n3]))
        async with running_gateway(settings) as gateway:
            async with gateway.client() as client:
                listed = {m.id async for m in client.models.list()}
                assert {"llama3.2:1b", "qwen2.5:0.5b", "phi3:mini"} <= listed
                for _ in range(4):  # one at a time: the loaded node always wins
                    reply = await client.chat.completions.with_raw_response.create(
                        model="llama3.2:1b", messages=USER
                    )
                    assert reply.headers["x-relaygate-model"] == "llama3.2:1b"
                await client.chat.completions.create(model="phi3:mini", messages=USER)
            async with ollama_client(gateway) as c:
                answer = await c.chat(model="qwen2.5:0.5b", messages=USER)
                assert answer.message.content == "Echo: hello there"
                tags = {m.model for m in (await c.list()).models}
                assert {"llama3.2:1b", "qwen2.5:0.5b", "phi3:mini"} <= tags
                running = [m.model for m in (await c.ps()).models]
                assert running == ["llama3.2:1b"]  # what n2 has loaded
                shown = await c.show("phi3:mini")  # asked of n3, the node that has it
                assert shown.modelfile is not None and "FROM phi3:mini" in shown.modelfile
    assert inference(n2) == ["llama3.2:1b"] * 4
    assert inference(n1) == ["qwen2.5:0.5b"]
    assert inference(n3) == ["phi3:mini"]


async def test_busy_loaded_node_spills_to_a_free_one() -> None:
    async with three_nodes() as (n1, n2, n3):
        n2.service_time = 1.0  # still busy when the second request is routed
        settings = make_settings(pools=pool_settings([n1, n2, n3], max_concurrency=1))
        async with running_gateway(settings) as gateway, gateway.client() as client:
            replies = await asyncio.gather(
                *(client.chat.completions.create(model="llama3.2:1b", messages=USER)
                  for _ in range(2))
            )  # fmt: skip
    assert all(r.choices[0].message.content == "Echo: hello there" for r in replies)
    assert inference(n2) == ["llama3.2:1b"] and inference(n1) == ["llama3.2:1b"]
    assert inference(n3) == []


async def test_full_queue_is_a_503_in_each_apis_shape_not_a_hang() -> None:
    async with three_nodes() as (n1, n2, n3):
        n3.service_time = 2.0
        pools = pool_settings([n1, n2, n3], max_concurrency=1, max_queue=0)
        async with running_gateway(make_settings(pools=pools)) as gateway:
            async with gateway.client() as client:
                first = asyncio.ensure_future(
                    client.chat.completions.create(model="phi3:mini", messages=USER)
                )
                await until(lambda: n3.in_flight == 1)
                with pytest.raises(openai.APIStatusError) as refused:
                    await client.chat.completions.create(model="phi3:mini", messages=USER)
                assert refused.value.status_code == 503
                assert refused.value.response.headers["retry-after"] == "1"
                assert refused.value.body["code"] == "node_queue_full"  # type: ignore[index]
                async with ollama_client(gateway) as c:
                    with pytest.raises(ollama.ResponseError) as native:
                        await c.chat(model="phi3:mini", messages=USER)
                assert native.value.status_code == 503 and "busy" in native.value.error
                assert (await first).choices[0].message.content == "Echo: hello there"
            # the refusals were not failures of the node: it is still healthy
            async with aiohttp.ClientSession(headers=gateway.headers) as http:
                async with http.get(gateway.url + "/admin/nodes") as response:
                    nodes = (await response.json())["data"]
    n3_view = next(n for n in nodes if n["node"] == "n3")
    assert n3_view["state"] == "healthy" and n3_view["consecutive_failures"] == 0
    assert n3_view["models"] == ["phi3:mini"] and n3_view["loaded"] == []
    assert (n3_view["in_flight"], n3_view["queued"], n3_view["max_queue"]) == (0, 0, 0)
    assert n3_view["ttft_ewma_ms"] > 0 and n3_view["address"].startswith("http://127.0.0.1:")
    n2_view = next(n for n in nodes if n["node"] == "n2")
    assert n2_view["loaded"] == ["llama3.2:1b"] and n2_view["ttft_ewma_ms"] is None


async def test_killed_node_is_ejected_in_flight_requests_succeed_elsewhere_and_it_comes_back() -> (
    None
):
    async with three_nodes() as (n1, n2, n3):
        n2.service_time = 5.0  # the loaded node takes every request, then dies mid-run
        pools = pool_settings(
            [n1, n2, n3],
            ejection={"consecutive_failures": 2, "base_ejection_time": 0.3},
        )
        async with running_gateway(make_settings(pools=pools)) as gateway:
            async with gateway.client() as client:
                calls = [
                    asyncio.ensure_future(
                        client.chat.completions.with_raw_response.create(
                            model="llama3.2:1b", messages=USER
                        )
                    )
                    for _ in range(3)
                ]
                await until(lambda: n2.in_flight == 3)
                await n2.close()  # killed mid-run: its connections are cut
                replies = await asyncio.gather(*calls)
                for reply in replies:
                    assert reply.parse().choices[0].message.content == "Echo: hello there"
                assert inference(n1) == ["llama3.2:1b"] * 3  # the only other node with it
                pool = gateway.state.router.pools["home"]
                node = pool.node("n2")
                assert node is not None and node.state in ("ejected", "down")
                async with aiohttp.ClientSession(headers=gateway.headers) as http:
                    async with http.get(gateway.url + "/admin/nodes") as response:
                        view = next(n for n in (await response.json())["data"] if n["node"] == "n2")
                    async with http.get(gateway.url + "/metrics") as response:
                        metrics = await response.text()
                assert view["state"] in ("ejected", "down") and view["reason"]
                assert 'relaygate_node_up{node="n2",pool="home"} 0.0' in metrics
                assert 'relaygate_node_up{node="n1",pool="home"} 1.0' in metrics
                n2.service_time = 0.0
                await n2.restart()
                await until(lambda: node.state == "healthy")
                await client.chat.completions.create(model="llama3.2:1b", messages=USER)
    assert inference(n2)[-1:] == ["llama3.2:1b"]  # re-admitted, and loaded: preferred again


async def test_model_pulled_on_a_node_becomes_servable_and_one_removed_stops() -> None:
    async with three_nodes() as (n1, n2, n3):
        async with running_gateway(make_settings(pools=pool_settings([n1, n2, n3]))) as gateway:
            async with gateway.client() as client:
                with pytest.raises(openai.NotFoundError):
                    await client.chat.completions.create(model="mistral:7b", messages=USER)
                n3.models.append("mistral:7b")  # `ollama pull mistral:7b` on n3
                router = gateway.state.router
                await until(lambda: "mistral:7b" in router.models)
                listed = {m.id async for m in client.models.list()}
                assert "mistral:7b" in listed
                reply = await client.chat.completions.create(model="mistral:7b", messages=USER)
                assert reply.model == "mistral:7b"
                async with ollama_client(gateway) as c:
                    assert "mistral:7b" in {m.model for m in (await c.list()).models}
                n1.models.remove("qwen2.5:0.5b")  # `ollama rm` on the only node with it
                await until(lambda: "qwen2.5:0.5b" not in router.models)
                with pytest.raises(openai.NotFoundError):
                    await client.chat.completions.create(model="qwen2.5:0.5b", messages=USER)
                n1.models.remove("llama3.2:1b")  # still on n2: never routed to n1 again
                await until(lambda: "llama3.2:1b" not in router.pools["home"].nodes[0].models)
                n2.loaded.clear()
                for _ in range(3):
                    await client.chat.completions.create(model="llama3.2:1b", messages=USER)
    assert inference(n3) == ["mistral:7b"]
    assert "llama3.2:1b" not in inference(n1)


async def test_a_configured_model_prefers_the_pool_and_falls_back_to_the_cloud(
    fake_openai: Any,
) -> None:
    async with three_nodes() as (n1, n2, n3):
        models = [
            {
                "name": "chat",
                "order": "preference",
                "deployments": [
                    {"provider": "ollama", "pool": "home", "model": "phi3:mini"},
                    {"provider": "openai", "base_url": fake_openai.base_url, "model": "gpt-4o"},
                ],
            }
        ]
        pools = pool_settings([n1, n2, n3], expose_models=False)
        async with running_gateway(make_settings(models, pools=pools)) as gateway:
            async with gateway.client() as client:
                listed = {m.id async for m in client.models.list()}
                assert listed == {"chat"}  # the pool's own models are not exposed
                local = await client.chat.completions.with_raw_response.create(
                    model="chat", messages=USER
                )
                await n3.close()  # the node is switched off
                cloud = await client.chat.completions.with_raw_response.create(
                    model="chat", messages=USER
                )
    assert local.headers["x-relaygate-model"] == "chat" == cloud.headers["x-relaygate-model"]
    assert local.parse().model == "chat" and cloud.parse().model == "chat"
    assert inference(n3) == ["phi3:mini"]
    assert [r.json["model"] for r in fake_openai.requests] == ["gpt-4o"]


async def test_streams_through_a_node_release_its_slot_and_no_node_is_a_503() -> None:
    async with three_nodes() as (_, _, n3):
        node = {"name": "n3", "base_url": n3.base_url}
        models = [{"name": "phi", "deployments": [  # the nodes listed in the deployment
            {"provider": "ollama", "nodes": [node], "model": "phi3:mini"}]}]  # fmt: skip
        async with running_gateway(make_settings(models)) as gateway:
            async with gateway.client() as client:
                stream = await client.chat.completions.create(
                    model="phi", messages=USER, stream=True
                )
                text = "".join(
                    [c.choices[0].delta.content or "" async for c in stream if c.choices]
                )
                assert text == "Echo: hello there"
            async with ollama_client(gateway) as c:
                parts = [p.message.content async for p in await c.chat(
                    model="phi", messages=USER, stream=True)]  # fmt: skip
                assert "".join(parts) == "Echo: hello there"
            pool = gateway.state.router.pools["phi"]  # a pool of its own, named after it
            found = pool.node("n3")
            assert found is not None and (found.in_flight, found.queued) == (0, 0)
            assert found.ewma_ttft is not None
            await n3.close()
            await gateway.state.router.probers[0].tick()  # the next probe, now
            assert found.state == "down" and "probe failed" in found.reason
            async with gateway.client() as client:
                with pytest.raises(openai.APIStatusError) as refused:
                    await client.chat.completions.create(model="phi", messages=USER)
    assert refused.value.status_code == 503
    assert "no healthy node of pool 'phi' has it now" in refused.value.message
    assert [r.json["stream"] for r in n3.requests if r.path == "/api/chat"] == [True, True]


async def test_model_router_picks_by_policy_and_says_which_model_served(
    fake_openai: Any,
) -> None:
    async with three_nodes() as (n1, n2, n3):
        models = [
            {"name": "gpt-4o", "deployments": [
                {"provider": "openai", "base_url": fake_openai.base_url}]},
            {"name": "gpt-4o-mini", "deployments": [
                {"provider": "openai", "base_url": fake_openai.base_url}]},
            {"name": "local", "deployments": [
                {"provider": "ollama", "pool": "home", "model": "phi3:mini"}]},
        ]  # fmt: skip
        router = [
            {"name": "cheap", "policy": "cheapest", "models": ["gpt-4o", "gpt-4o-mini"]},
            {"name": "auto", "policy": "local_first", "models": ["gpt-4o", "local"]},
        ]
        pools = pool_settings([n1, n2, n3], expose_models=False)
        settings = make_settings(models, pools=pools, model_router=router)
        async with running_gateway(settings) as gateway, gateway.client() as client:
            cheap = await client.chat.completions.with_raw_response.create(
                model="cheap", messages=USER
            )
            auto = await client.chat.completions.with_raw_response.create(
                model="auto", messages=USER
            )
            await n3.close()
            auto_off = await client.chat.completions.with_raw_response.create(
                model="auto", messages=USER
            )
            listed = {m.id async for m in client.models.list()}
            records = await usage_rows(gateway, 3)
    assert cheap.headers["x-relaygate-model"] == "gpt-4o-mini"
    assert cheap.parse().model == "cheap"
    assert auto.headers["x-relaygate-model"] == "local"
    assert auto_off.headers["x-relaygate-model"] == "gpt-4o"
    assert {"cheap", "auto"} <= listed
    assert records == [("cheap", "gpt-4o-mini"), ("auto", "local@n3"), ("auto", "gpt-4o")]


async def usage_rows(gateway: RunningGateway, expected: int) -> list[tuple[str, str]]:
    """(model asked for, deployment that served), once ``expected`` rows are written."""
    query = sa.select(usage_records.c.model, usage_records.c.deployment).order_by(
        usage_records.c.created_at
    )
    found: list[tuple[str, str]] = []
    for _ in range(100):
        async with gateway.state.engine.connect() as conn:
            found = [(r[0], r[1]) for r in (await conn.execute(query)).all()]
        if len(found) >= expected:
            break
        await asyncio.sleep(0.05)
    return found


async def test_redis_shares_discovery_and_ejection_with_a_second_gateway(
    redis_server: RedisServer,
) -> None:
    async with three_nodes() as (n1, n2, n3):
        # probes only when a test asks (tick) or a failure wakes the prober
        pools = pool_settings([n1, n2, n3], probe_interval=3600)
        shared = {"redis_url": redis_server.url, "redis_prefix": "nodes-test:"}
        async with (
            running_gateway(make_settings(pools=pools, **shared)) as a,
            running_gateway(make_settings(pools=pools, **shared)) as b,
        ):
            a_prober, b_prober = a.state.router.probers[0], b.state.router.probers[0]
            n3.models.append("mistral:7b")
            await a_prober.tick()  # A holds every node's claim since it started first
            assert "mistral:7b" in a.state.router.models
            asked = len(n3.requests)
            await b_prober.tick()
            assert len(n3.requests) == asked  # B did not ask the node: it read Redis
            assert "mistral:7b" in b.state.router.models
            async with b.client() as client:
                reply = await client.chat.completions.create(model="mistral:7b", messages=USER)
                assert reply.model == "mistral:7b"
            a_node = a.state.router.pools["home"].node("n1")
            b_node = b.state.router.pools["home"].node("n1")
            assert a_node is not None and b_node is not None
            for _ in range(3):  # three failed calls in a row on A
                a_node.health.record_failure(time.monotonic(), "cut", kind="connect")
            assert a_node.state == "ejected"
            for _ in range(100):  # A publishes the ejection in the background
                await b_prober.tick()
                if b_node.state == "ejected":
                    break
                await asyncio.sleep(0.02)
            assert b_node.state == "ejected"
            assert "3 failures in a row" in b_node.reason
