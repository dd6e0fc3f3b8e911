"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MOCK, closed_port_url
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.redis_server import RedisServer
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key

USER = [{"role": "user", "content": "hi"}]


async def get(gateway: RunningGateway, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(gateway.url + path) as response:
        return response.status, await response.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_health_is_cheap_and_always_ok(mock_gateway: RunningGateway) -> None:
    assert await get(mock_gateway, "/health") == (200, '{"status":"ok"}')


async def test_metrics_by_model_api_status(fake_openai: FakeOpenAI) -> None:
    config = {
        "name": "m",
        "deployments": [
            {"provider": "openai", "base_url": fake_openai.base_url},
            {"provider": "openai", "base_url": closed_port_url(), "weight": 10**6},
        ],
    }
    async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
        await client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(model="m", messages=USER, stream=True)  # type: ignore[arg-type]
        async for _ in stream:
            pass
        async with aiohttp.ClientSession() as session:
            for body in ({"model": "nope"}, {"model": "x" * 200, "messages": USER}):
                async with session.post(
                    gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers
                ) as r:
                    await r.read()
        status, text = await get(gateway, "/metrics")
    assert status == 200
    s = samples(text)
    ok = (("api", "openai"), ("model", "m"), ("status", "200"))
    assert s[("relaygate_requests_total", ok)] == 2
    unknown = (("api", "openai"), ("model", "unknown"), ("status", "404"))
    assert s[("relaygate_requests_total", unknown)] == 1  # client-typed names never become labels
    assert s[("relaygate_requests_total", (*unknown[:2], ("status", "400")))] == 1
    hist = (("api", "openai"), ("model", "m"))
    assert s[("relaygate_request_duration_seconds_count", hist)] == 2
    assert s[("relaygate_time_to_first_byte_seconds_count", hist)] == 2
    errors = (("deployment", "m#2"), ("kind", "connect"))
    assert s[("relaygate_upstream_errors_total", errors)] >= 1
    assert s[("relaygate_in_flight_requests", (("api", "openai"),))] == 0
    assert s[("relaygate_event_loop_lag_seconds", ())] >= 0  # exposed from the start


async def test_in_flight_counts_open_streams(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Script(chunk_delay=0.1, chunks=20)
    config = {
        "name": "m",
        "deployments": [{"provider": "openai", "base_url": fake_openai.base_url}],
    }
    async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
        stream = await client.chat.completions.create(model="m", messages=USER, stream=True)  # type: ignore[arg-type]
        await stream.__anext__()
        _, text = await get(gateway, "/metrics")
        assert samples(text)[("relaygate_in_flight_requests", (("api", "openai"),))] == 1
        await stream.close()
        await asyncio.sleep(0.2)
        _, text = await get(gateway, "/metrics")
        assert samples(text)[("relaygate_in_flight_requests", (("api", "openai"),))] == 0


async def test_ready_reports_each_deployment(mock_gateway: RunningGateway) -> None:
    status, text = await get(mock_gateway, "/ready")
    assert status == 200
    assert '"mock":{"ready":true' in text and '"state":"healthy"' in text


async def test_tokens_cost_and_time_to_first_token(fake_openai: FakeOpenAI) -> None:
    """Tokens and cost are the usage records' figures, by model; a stream's time to first
    token counts from the request's arrival, so it includes the upstream's first byte."""
    config = {
        "name": "priced",
        "price": {"input": 2.0, "output": 4.0},  # US dollars per million tokens
        "deployments": [{"provider": "openai", "base_url": fake_openai.base_url}],
    }
    async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
        fake_openai.push(Script(content="one two three"))
        answer = await client.chat.completions.create(model="priced", messages=USER)  # type: ignore[arg-type]
        fake_openai.push(Script(content="a b", first_byte_delay=0.3))
        stream = await client.chat.completions.create(
            model="priced",
            messages=USER,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        streamed = [chunk async for chunk in stream]
        _, text = await get(gateway, "/metrics")
    s = samples(text)
    assert answer.usage is not None and streamed[-1].usage is not None
    prompt = answer.usage.prompt_tokens + streamed[-1].usage.prompt_tokens
    completion = answer.usage.completion_tokens + streamed[-1].usage.completion_tokens
    model = (("model", "priced"),)
    assert s[("relaygate_tokens_total", (("kind", "input"), *model))] == prompt
    assert s[("relaygate_tokens_total", (("kind", "output"), *model))] == completion == 5
    cost = s[("relaygate_cost_usd_total", model)]
    assert cost == pytest.approx((prompt * 2.0 + completion * 4.0) / 1e6)
    streams = (("api", "openai"), *model)
    assert s[("relaygate_time_to_first_token_seconds_count", streams)] == 1  # streams only
    assert s[("relaygate_time_to_first_token_seconds_sum", streams)] >= 0.3
    assert s[("relaygate_time_to_first_byte_seconds_sum", streams)] >= 0.3


async def test_redis_commands_are_timed_one_for_one(redis_server: RedisServer) -> None:
    """Every command the gateway sends is observed once: the histogram's count by command
    equals what Redis itself counted (a private Redis: no other client)."""
    import redis.asyncio as redis

    settings = make_settings(
        MOCK, redis_url=redis_server.url, tiers={"counted": {"requests_per_hour": 100}}
    )
    probe = redis.Redis.from_url(redis_server.url)
    try:
        async with running_gateway(settings) as gateway:
            _, secret = await new_key(gateway, tier="counted")
            async with gateway.client(api_key=secret) as client:
                await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
                _, text = await get(gateway, "/metrics")
                before = samples(text), await probe.info("commandstats")
                for _ in range(5):
                    await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
                _, text = await get(gateway, "/metrics")
                after = samples(text), await probe.info("commandstats")
    finally:
        await probe.aclose()
    ok = (("command", "EVALSHA"), ("result", "ok"))
    name = "relaygate_redis_command_duration_seconds_count"
    observed = after[0][(name, ok)] - before[0].get((name, ok), 0)
    counted = after[1]["cmdstat_evalsha"]["calls"] - before[1]["cmdstat_evalsha"]["calls"]
    assert observed == counted >= 5
