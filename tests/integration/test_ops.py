"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import closed_port_url
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway

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
