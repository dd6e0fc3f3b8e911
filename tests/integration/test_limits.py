"""Tiers and limits through the gateway: 429 with headers and a body naming the limit."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import MOCK
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.redis_server import RedisServer
from tests.gateway import make_settings, running_gateway
from tests.keys import new_key

USER = [{"role": "user", "content": "hi"}]
TIERS = {
    "tiny": {"requests_per_hour": 3, "requests_per_month": 1000},
    "tokens": {"tokens_per_minute": 500},
    "one-at-a-time": {"max_concurrent": 1},
    "strict-embeddings": {
        "requests_per_hour": 100,
        "endpoints": {"/v1/embeddings": {"requests_per_hour": 1}},
        "models": {"mock": {"requests_per_minute": 3}, "other": {"requests_per_minute": 4}},
    },
    "unlimited": {"requests_per_hour": 1_000_000},
}


async def test_hourly_limit_gives_429_naming_limit_and_reset() -> None:
    async with running_gateway(make_settings(MOCK, tiers=TIERS)) as gateway:
        _, secret = await new_key(gateway, tier="tiny")
        async with gateway.client(api_key=secret) as client:
            ok = [
                await client.chat.completions.with_raw_response.create(model="mock", messages=USER)  # type: ignore[arg-type]
                for _ in range(3)
            ]
            with pytest.raises(openai.RateLimitError) as error:
                await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
    assert [r.headers["x-ratelimit-remaining"] for r in ok] == ["2", "1", "0"]
    assert all(r.headers["x-ratelimit-limit"] == "3" for r in ok)
    headers = error.value.response.headers
    assert int(headers["retry-after"]) >= 1100  # one request refills every 20 minutes
    assert headers["x-ratelimit-remaining"] == "0"
    message = error.value.message
    assert "requests_per_hour (3)" in message and "retry in" in message and "Z." in message


async def test_usage_reports_seed_shape() -> None:
    async with running_gateway(make_settings(MOCK, tiers=TIERS)) as gateway:
        _, secret = await new_key(gateway, tier="tiny")
        auth = {"Authorization": f"Bearer {secret}"}
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.post(
                    gateway.url + "/v1/chat/completions",
                    json={"model": "mock", "messages": USER},
                    headers=auth,
                ) as response:
                    assert response.status == 200
            async with session.get(gateway.url + "/usage", headers=auth) as response:
                usage: dict[str, Any] = await response.json()
    assert usage["tier"] == "tiny"
    assert (usage["requests_used"], usage["requests_limit"], usage["requests_remaining"]) == (
        2,
        3,
        1,
    )
    assert usage["window_reset"].endswith("Z")
    assert usage["requests_per_month"]["used"] == 2
    assert usage["requests_per_month"]["limit"] == 1000


async def test_token_reservation_refused_before_upstream_then_settled() -> None:
    async with running_gateway(make_settings(MOCK, tiers=TIERS)) as gateway:
        _, secret = await new_key(gateway, tier="tokens")
        async with gateway.client(api_key=secret) as client:
            with pytest.raises(openai.RateLimitError) as error:
                await client.chat.completions.create(model="mock", messages=USER, max_tokens=600)  # type: ignore[arg-type]
            assert "lower max_tokens" in error.value.message
            # Each call reserves ~100 tokens but uses ~15: settling refunds the rest, so
            # far more than 500/100 = 5 calls fit in the minute.
            for _ in range(12):
                await client.chat.completions.create(model="mock", messages=USER, max_tokens=60)  # type: ignore[arg-type]


async def test_concurrency_limit_and_release() -> None:
    slow = [{"name": "mock", "deployments": [{"provider": "mock", "chunk_delay": 0.05}]}]
    async with running_gateway(make_settings(slow, tiers=TIERS)) as gateway:
        _, secret = await new_key(gateway, tier="one-at-a-time")
        async with gateway.client(api_key=secret) as client:
            stream = await client.chat.completions.create(model="mock", messages=USER, stream=True)  # type: ignore[arg-type]
            with pytest.raises(openai.RateLimitError) as error:
                await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
            assert "max_concurrent (1)" in error.value.message
            async for _ in stream:
                pass
            await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]


async def test_endpoint_and_model_limits() -> None:
    """Each endpoint and each model has its own counter: one exhausted, the others still allowed."""
    more = [
        {"name": name, "deployments": [{"provider": "mock", "chunk_delay": 0}]}
        for name in ("other", "third")
    ]
    models = [*MOCK, *more]
    async with running_gateway(make_settings(models, tiers=TIERS)) as gateway:
        _, secret = await new_key(gateway, tier="strict-embeddings")
        async with gateway.client(api_key=secret) as client:
            await client.embeddings.create(model="third", input="a")
            with pytest.raises(openai.RateLimitError) as error:
                await client.embeddings.create(model="third", input="a")
            assert "for endpoint /v1/embeddings" in error.value.message
            # the model limits: three requests a minute on ``mock``, four on ``other``
            for _ in range(3):
                await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
            with pytest.raises(openai.RateLimitError) as error:
                await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
            message = error.value.message
            assert "requests_per_minute (3)" in message and "for model mock" in message
            assert int(error.value.response.headers["retry-after"]) >= 1
            for _ in range(4):  # ``mock`` exhausted takes nothing from ``other``
                await client.chat.completions.create(model="other", messages=USER)  # type: ignore[arg-type]
            with pytest.raises(openai.RateLimitError) as error:
                await client.chat.completions.create(model="other", messages=USER)  # type: ignore[arg-type]
            assert "requests_per_minute (4)" in error.value.message
            assert "for model other" in error.value.message
            await client.chat.completions.create(model="third", messages=USER)  # type: ignore[arg-type]


async def test_key_overrides_its_tier() -> None:
    async with running_gateway(make_settings(MOCK, tiers=TIERS)) as gateway:
        _, secret = await new_key(gateway, tier="tiny", limits={"requests_per_hour": 1})
        async with gateway.client(api_key=secret) as client:
            await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]


async def test_tenant_limits_are_shared_by_its_keys() -> None:
    async with running_gateway(make_settings(MOCK, tiers=TIERS)) as gateway:
        tenant = await gateway.state.identity.create_tenant("shared", tier="tiny")
        secrets = [(await new_key(gateway, tier="unlimited", tenant=tenant.name))[1] for _ in "ab"]
        statuses = []
        for secret in secrets * 2:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    gateway.url + "/v1/chat/completions",
                    json={"model": "mock", "messages": USER},
                    headers={"Authorization": f"Bearer {secret}"},
                ) as response,
            ):
                statuses.append(response.status)
                body = await response.json()
    assert statuses == [200, 200, 200, 429]
    assert "for this tenant" in body["error"]["message"]


async def test_exact_under_concurrency() -> None:
    async with running_gateway(
        make_settings(MOCK, tiers={"ten": {"requests_per_hour": 10}})
    ) as gateway:
        _, secret = await new_key(gateway, tier="ten")

        async def one(session: aiohttp.ClientSession) -> int:
            async with session.post(
                gateway.url + "/v1/chat/completions",
                json={"model": "mock", "messages": USER},
                headers={"Authorization": f"Bearer {secret}"},
            ) as response:
                await response.read()
                return response.status

        async with aiohttp.ClientSession() as session:
            statuses = await asyncio.gather(*(one(session) for _ in range(40)))
    assert statuses.count(200) == 10 and statuses.count(429) == 30


async def test_monthly_money_budget_reserves_then_charges_real_cost(
    fake_openai: FakeOpenAI,
) -> None:
    """gpt-4o-mini at $0.15/$0.60 per million tokens; a budget of $0.0001 (100 micro-dollars)."""
    models = [{"name": "gpt-4o-mini", "deployments": [
        {"provider": "openai", "base_url": fake_openai.base_url}
    ]}]  # fmt: skip
    tiers = {"thrifty": {"budget_per_month": 0.0001}}
    async with running_gateway(make_settings(models, tiers=tiers)) as gateway:
        _, secret = await new_key(gateway, tier="thrifty")
        async with gateway.client(api_key=secret) as client:
            await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=USER,
                max_tokens=50,  # type: ignore[arg-type]
            )
            with pytest.raises(openai.RateLimitError) as error:
                await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=USER,
                    max_tokens=1000,  # type: ignore[arg-type]
                )
        async with aiohttp.ClientSession() as session:
            usage = await (
                await session.get(
                    gateway.url + "/usage", headers={"Authorization": f"Bearer {secret}"}
                )
            ).json()
    assert "Budget exceeded: budget_per_month ($0.000100)" in error.value.message
    assert "lower max_tokens" in error.value.message
    assert len(fake_openai.requests) == 1  # refused before the upstream
    sent = fake_openai.requests[0].json
    assert sent["max_tokens"] == 50
    spent = usage["budget_per_month"]["used"]
    assert 0 < spent < 0.00002  # a few micro-dollars, not the ~30 reserved
    assert usage["budget_per_month"]["limit"] == 0.0001


async def test_monthly_quota_survives_a_restart_of_a_memory_limited_gateway() -> None:
    """The memory limiter forgets on restart; the month's use is primed from usage records."""
    settings = make_settings(MOCK, tiers={"five": {"requests_per_month": 5}})
    async with running_gateway(settings) as gateway:
        key_id, secret = await new_key(gateway, tier="five")
        async with gateway.client(api_key=secret) as client:
            for _ in range(3):
                await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
        await _written(gateway, key_id, 3)
    async with running_gateway(settings) as restarted:  # same database, empty limiter
        async with restarted.client(api_key=secret) as client:
            for _ in range(2):
                await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
            with pytest.raises(openai.RateLimitError) as error:
                await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
    assert "requests_per_month (5)" in error.value.message


async def _written(gateway: Any, key_id: str, count: int) -> None:
    import sqlalchemy as sa

    from relaygate.store.tables import usage_daily

    query = sa.select(sa.func.sum(usage_daily.c.request_count)).where(
        usage_daily.c.key_id == key_id
    )
    for _ in range(100):
        async with gateway.state.engine.connect() as conn:
            if (await conn.scalar(query) or 0) >= count:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("usage records were not written")


async def test_one_redis_round_trip_for_request_limits(redis_server: RedisServer) -> None:
    """Request counts are consumed at admission; nothing is left to settle afterwards.

    A private Redis, so that the EVALSHA count is this gateway's alone."""
    import redis.asyncio as redis

    settings = make_settings(
        MOCK, redis_url=redis_server.url,
        tiers={"counted": {"requests_per_hour": 100, "requests_per_month": 1000}},
    )  # fmt: skip
    probe = redis.Redis.from_url(redis_server.url)
    try:
        async with running_gateway(settings) as gateway:
            _, secret = await new_key(gateway, tier="counted")
            async with gateway.client(api_key=secret) as client:
                await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
                before = await _evalsha_calls(probe)
                for _ in range(10):
                    await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
                after = await _evalsha_calls(probe)
    finally:
        await probe.aclose()
    assert after - before == 10


async def _evalsha_calls(client: Any) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
