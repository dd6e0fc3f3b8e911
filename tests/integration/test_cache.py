"""The response cache, end to end: the official openai client against the real gateway,
a scripted OpenAI-compatible upstream, and (where named) a private Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import msgspec
import pytest
import sqlalchemy as sa
from multidict import CIMultiDict

from relaygate.settings import Price
from relaygate.store.tables import response_cache
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.redis_server import RedisServer
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.integration.test_usage import rows
from tests.keys import new_key

USER = [{"role": "user", "content": "what is a cache"}]
REPLY = "Echo: what is a cache"


def model(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "deployments": [{"provider": "openai", "base_url": url}], **extra}


def cached_settings(fake: FakeOpenAI, cache: dict[str, Any] | None = None, **overrides: Any):  # type: ignore[no-untyped-def]
    models = overrides.pop("models", None) or [model("m", fake.base_url)]
    return make_settings(models, cache={"enabled": True, **(cache or {})}, **overrides)


class Clock:
    """A controllable cache clock."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def post_raw(
    gateway: RunningGateway,
    body: dict[str, Any] | bytes,
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/v1/chat/completions",
) -> tuple[int, CIMultiDict[str], bytes]:
    sent = {"Authorization": f"Bearer {key or gateway.admin_key}", **(headers or {})}
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    sent["Content-Type"] = "application/json"
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + path, data=data, headers=sent) as response:
            return response.status, response.headers.copy(), await response.read()


async def chat(gateway: RunningGateway, key: str | None = None, **kwargs: Any) -> tuple[str, Any]:
    """(X-Cache, the completion), through the official client."""
    async with gateway.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=kwargs.pop("model", "m"), messages=kwargs.pop("messages", USER), **kwargs
        )
    return raw.headers.get("x-cache", ""), raw.parse()


def calls(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path.endswith(("/completions", "/embeddings")))


async def test_hit_after_miss_with_the_official_client(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(cached_settings(fake_openai)) as gateway:
        first_status, first = await chat(gateway, temperature=0.2, max_tokens=50)
        second_status, second = await chat(gateway, temperature=0.2, max_tokens=50)
        other_status, _ = await chat(gateway, temperature=0.3, max_tokens=50)
        records = await rows(gateway, 3)
    assert (first_status, second_status, other_status) == ("MISS", "HIT", "MISS")
    assert calls(fake_openai) == 2
    assert second.model_dump() == first.model_dump()  # the same answer, id included
    assert second.choices[0].message.content == REPLY
    assert [r.cached for r in records] == [False, True, False]
    hit = records[1]
    assert hit.status == "ok" and hit.cost == 0.0 and hit.provider == "openai"
    assert (hit.prompt_tokens, hit.completion_tokens) == (
        first.usage.prompt_tokens,  # type: ignore[union-attr]
        first.usage.completion_tokens,  # type: ignore[union-attr]
    )


async def test_key_order_and_whitespace_still_hit(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(cached_settings(fake_openai)) as gateway:
        a = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": 3}'
        b = b'{ "seed":3,\n "messages":[ {"content":"x","role":"user"} ],"model":"m" }'
        first = await post_raw(gateway, a)
        second = await post_raw(gateway, b)
    assert first[1]["x-cache"] == "MISS" and second[1]["x-cache"] == "HIT"
    assert second[1]["x-cache-tier"] == "memory" and int(second[1]["age"]) >= 0
    assert second[2] == first[2]


async def test_streaming_replay_is_byte_for_byte_the_same(fake_openai: FakeOpenAI) -> None:
    body = {"model": "m", "messages": USER, "stream": True}
    with_usage = {**body, "stream_options": {"include_usage": True}}
    async with running_gateway(cached_settings(fake_openai)) as gateway:
        miss = await post_raw(gateway, body)
        hit = await post_raw(gateway, body)
        hit_with_usage = await post_raw(gateway, with_usage)
        # The same answer without streaming, assembled from the stored stream.
        plain_status, plain = await chat(gateway)
    assert miss[0] == hit[0] == 200 and calls(fake_openai) == 1
    assert (miss[1]["x-cache"], hit[1]["x-cache"]) == ("MISS", "HIT")
    assert hit[1]["content-type"].startswith("text/event-stream")
    assert hit[2] == miss[2]
    assert miss[2].endswith(b"data: [DONE]\n\n") and b'"usage"' not in miss[2]
    events = [e for e in hit_with_usage[2].split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    last = msgspec.json.decode(events[-2].removeprefix(b"data: "))
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5
    # Apart from the usage the client asked for (a null in each chunk, as OpenAI sends it,
    # and the usage chunk), the same bytes again.
    content = b"\n\n".join(events[:-2]).replace(b',"usage":null', b"")
    assert content + b"\n\ndata: [DONE]\n\n" == miss[2]
    assert plain_status == "HIT" and plain.choices[0].message.content == REPLY
    assert plain.object == "chat.completion" and plain.choices[0].finish_reason == "stop"


async def test_a_stored_answer_is_replayed_as_a_stream(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(cached_settings(fake_openai)) as gateway:
        status, first = await chat(gateway)
        async with gateway.client() as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="m", messages=USER, stream=True, stream_options={"include_usage": True}
            )
            chunks = [c async for c in raw.parse()]
    assert status == "MISS" and raw.headers["x-cache"] == "HIT" and calls(fake_openai) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.total_tokens == first.usage.total_tokens
    )  # type: ignore[union-attr]
    assert all(c.id == first.id for c in chunks)


async def test_aborted_failed_and_truncated_streams_are_not_stored(
    fake_openai: FakeOpenAI,
) -> None:
    body = {"model": "m", "messages": USER, "stream": True}
    fake_openai.push(
        Script(error_after=2),  # an error event in the middle
        Script(finish_reason=None),  # type: ignore[arg-type]  # ends without a finish_reason
        Script(),
    )
    async with running_gateway(cached_settings(fake_openai)) as gateway:
        failed = await post_raw(gateway, body)
        truncated = await post_raw(gateway, body)
        complete = await post_raw(gateway, body)
        again = await post_raw(gateway, body)
    assert b'"error"' in failed[2]
    assert [r[1]["x-cache"] for r in (failed, truncated, complete, again)] == [
        "MISS", "MISS", "MISS", "HIT",
    ]  # fmt: skip
    assert calls(fake_openai) == 3


async def test_client_abort_mid_stream_is_not_stored(fake_openai: FakeOpenAI) -> None:
    fake_openai.push(Script(chunk_delay=0.2, chunks=5))
    body = {"model": "m", "messages": USER, "stream": True}
    async with running_gateway(cached_settings(fake_openai)) as gateway:
        headers = {"Authorization": f"Bearer {gateway.admin_key}"}
        async with aiohttp.ClientSession() as session:
            async with session.post(
                gateway.url + "/v1/chat/completions", json=body, headers=headers
            ) as response:
                await response.content.readline()
        await fake_openai.wait_disconnect()
        after = await post_raw(gateway, body)
    assert after[1]["x-cache"] == "MISS" and calls(fake_openai) == 2


async def test_tenants_never_share_entries_unless_the_model_is_shared(
    fake_openai: FakeOpenAI,
) -> None:
    models = [model("m", fake_openai.base_url), model("pub", fake_openai.base_url, cache={"shared": True})]  # fmt: skip
    async with running_gateway(cached_settings(fake_openai, models=models)) as gateway:
        _, key_a = await new_key(gateway, tenant="alpha")
        _, key_a2 = await new_key(gateway, tenant="alpha")
        _, key_b = await new_key(gateway, tenant="beta")
        results = [
            (await chat(gateway, key_a))[0],
            (await chat(gateway, key_b))[0],  # another tenant: its own entry
            (await chat(gateway, key_a2))[0],  # another key of the same tenant: shared
            (await chat(gateway, key_a, model="pub"))[0],
            (await chat(gateway, key_b, model="pub"))[0],  # a shared model: one entry
        ]
    assert results == ["MISS", "MISS", "HIT", "MISS", "HIT"]


async def test_no_store_no_cache_max_age_and_use_cache(fake_openai: FakeOpenAI) -> None:
    body = {"model": "m", "messages": USER}
    clock = Clock()
    async with running_gateway(cached_settings(fake_openai)) as gateway:
        gateway.state.cache.clock = clock
        not_stored = await post_raw(gateway, body, headers={"Cache-Control": "no-store"})
        stored = await post_raw(gateway, body)
        hit = await post_raw(gateway, body)
        refreshed = await post_raw(gateway, body, headers={"Cache-Control": "no-cache"})
        clock.now += 30
        too_old = await post_raw(gateway, body, headers={"Cache-Control": "max-age=10"})
        young_enough = await post_raw(gateway, body, headers={"Cache-Control": "max-age=60"})
        bypass = await post_raw(gateway, {**body, "use_cache": False})
        seed_style = await post_raw(gateway, {**body, "use_cache": True})
    statuses = [r[1]["x-cache"] for r in (not_stored, stored, hit, refreshed, too_old,
                                          young_enough, bypass, seed_style)]  # fmt: skip
    assert statuses == ["MISS", "MISS", "HIT", "BYPASS", "MISS", "HIT", "BYPASS", "HIT"]
    assert calls(fake_openai) == 5
    assert all("use_cache" not in r.json for r in fake_openai.requests if r.json)


async def test_ttl_expiry_with_a_controllable_clock(fake_openai: FakeOpenAI) -> None:
    clock = Clock()
    async with running_gateway(cached_settings(fake_openai, {"ttl": 60})) as gateway:
        gateway.state.cache.clock = clock
        statuses = [(await chat(gateway))[0]]
        clock.now += 59
        statuses.append((await chat(gateway))[0])
        clock.now += 2
        statuses.append((await chat(gateway))[0])
        statuses.append((await chat(gateway))[0])
    assert statuses == ["MISS", "HIT", "MISS", "HIT"]


async def test_per_model_and_per_key_settings(fake_openai: FakeOpenAI) -> None:
    clock = Clock()
    models = [
        model("m", fake_openai.base_url, cache={"ttl": 100}),
        model("off", fake_openai.base_url, cache={"enabled": False}),
    ]
    async with running_gateway(cached_settings(fake_openai, models=models)) as gateway:
        gateway.state.cache.clock = clock
        _, no_cache_key = await new_key(gateway, cache={"enabled": False})
        _, short_key = await new_key(gateway, tenant="short", cache={"ttl": 10})
        off = [(await chat(gateway, model="off"))[0] for _ in range(2)]
        keyed_off = [(await chat(gateway, no_cache_key))[0] for _ in range(2)]
        await chat(gateway)
        await chat(gateway, short_key)
        clock.now += 50
        after_50s = [(await chat(gateway))[0], (await chat(gateway, short_key))[0]]
    assert off == ["BYPASS", "BYPASS"] and keyed_off == ["BYPASS", "BYPASS"]
    assert after_50s == ["HIT", "MISS"]  # the model's 100 s, the key's 10 s


async def test_single_flight_one_upstream_call_for_identical_requests(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.push(Script(first_byte_delay=0.5))
    async with running_gateway(cached_settings(fake_openai)) as gateway:
        results = await asyncio.gather(*(chat(gateway) for _ in range(10)))
        streams = await asyncio.gather(
            *(post_raw(gateway, {"model": "m", "messages": USER, "seed": 1, "stream": True})
              for _ in range(5))
        )  # fmt: skip
        records = await rows(gateway, 15)
    assert calls(fake_openai) == 2
    statuses = sorted(status for status, _ in results)
    assert statuses == ["HIT"] * 9 + ["MISS"]
    assert len({r.choices[0].message.content for _, r in results}) == 1
    assert sorted(s[1]["x-cache"] for s in streams) == ["HIT"] * 4 + ["MISS"]
    assert len({s[2] for s in streams}) == 1
    assert {s[1].get("x-cache-tier") for s in streams if s[1]["x-cache"] == "HIT"} == {"flight"}
    assert sum(r.cached for r in records) == 13


async def test_single_flight_can_be_switched_off(fake_openai: FakeOpenAI) -> None:
    fake_openai.push(*[Script(first_byte_delay=0.3) for _ in range(4)])
    settings = cached_settings(fake_openai, {"single_flight": False})
    async with running_gateway(settings) as gateway:
        await asyncio.gather(*(chat(gateway) for _ in range(4)))
    assert calls(fake_openai) == 4


async def test_followers_go_upstream_when_the_leader_fails(fake_openai: FakeOpenAI) -> None:
    fake_openai.push(Script(status=400, first_byte_delay=0.3))
    async with running_gateway(cached_settings(fake_openai)) as gateway:
        results = await asyncio.gather(
            *(post_raw(gateway, {"model": "m", "messages": USER}) for _ in range(3)),
        )
    assert sorted(r[0] for r in results) == [200, 200, 400]
    assert calls(fake_openai) >= 2


async def test_oversize_answers_are_not_stored(fake_openai: FakeOpenAI) -> None:
    fake_openai.push(Script(content="word " * 400), Script(content="word " * 400), Script())
    async with running_gateway(cached_settings(fake_openai, {"max_entry_bytes": 1000})) as gateway:
        statuses = [(await chat(gateway))[0] for _ in range(2)]
        statuses += [(await chat(gateway, messages=[{"role": "user", "content": "hi"}]))[0]
                     for _ in range(2)]  # fmt: skip
        figures = gateway.state.cache.stats()
    assert statuses == ["MISS", "MISS", "MISS", "HIT"]
    assert figures["too_large"] == 2


async def test_a_hit_counts_against_request_limits(fake_openai: FakeOpenAI) -> None:
    settings = cached_settings(fake_openai, tiers={"two": {"requests_per_hour": 2}})
    async with running_gateway(settings) as gateway:
        _, key = await new_key(gateway, tier="two")
        first = await post_raw(gateway, {"model": "m", "messages": USER}, key=key)
        second = await post_raw(gateway, {"model": "m", "messages": USER}, key=key)
        third = await post_raw(gateway, {"model": "m", "messages": USER}, key=key)
    assert (first[0], second[0], third[0]) == (200, 200, 429)
    assert second[1]["x-cache"] == "HIT" and second[1]["x-ratelimit-remaining"] == "0"


async def test_cached_tokens_are_not_charged_unless_configured(fake_openai: FakeOpenAI) -> None:
    for charge in (False, True):
        settings = cached_settings(fake_openai)
        settings.usage.prices["m"] = Price(input=1000.0, output=1000.0)
        settings.usage.charge_cached_tokens = charge
        async with running_gateway(settings) as gateway:
            await chat(gateway)
            await chat(gateway)
            records = await rows(gateway, 2)
        assert records[0].cost > 0
        assert records[1].cached and (records[1].cost > 0) is charge


async def test_bad_cache_input_is_a_clear_400(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(cached_settings(fake_openai)) as gateway:
        bad_flag = await post_raw(gateway, {"model": "m", "messages": USER, "use_cache": "yes"})
        bad_age = await post_raw(
            gateway, {"model": "m", "messages": USER}, headers={"Cache-Control": "max-age=soon"}
        )
    assert bad_flag[0] == 400 and bad_age[0] == 400
    assert msgspec.json.decode(bad_flag[2])["error"]["param"] == "use_cache"
    assert "max-age" in msgspec.json.decode(bad_age[2])["error"]["message"]
    assert calls(fake_openai) == 0


async def test_completions_and_embeddings_are_cached(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(cached_settings(fake_openai)) as gateway:
        async with gateway.client() as client:
            texts = []
            for _ in range(2):
                raw = await client.completions.with_raw_response.create(model="m", prompt="say hi")
                texts.append((raw.headers["x-cache"], raw.parse().choices[0].text))
            vectors = []
            for _ in range(2):
                raw_e = await client.embeddings.with_raw_response.create(model="m", input="hi")
                vectors.append((raw_e.headers["x-cache"], raw_e.parse().data[0].embedding))
    assert [t[0] for t in texts] == ["MISS", "HIT"] and texts[0][1] == texts[1][1]
    assert [v[0] for v in vectors] == ["MISS", "HIT"] and vectors[0][1] == vectors[1][1]
    assert calls(fake_openai) == 2


async def test_admin_clears_all_or_by_model_or_tenant(fake_openai: FakeOpenAI) -> None:
    models = [model("m", fake_openai.base_url), model("n", fake_openai.base_url)]
    async with running_gateway(cached_settings(fake_openai, models=models)) as gateway:
        _, key_a = await new_key(gateway, tenant="alpha")
        _, key_b = await new_key(gateway, tenant="beta")
        alpha = await gateway.state.identity.tenant_by_name("alpha")
        assert alpha is not None

        async def fill() -> None:
            for key in (key_a, key_b):
                for name in ("m", "n"):
                    await chat(gateway, key, model=name)

        async def statuses() -> list[str]:
            return [(await chat(gateway, k, model=n))[0] for k in (key_a, key_b) for n in "mn"]

        async def delete(query: str) -> dict[str, Any]:
            async with aiohttp.ClientSession(headers=gateway.headers) as session:
                async with session.delete(gateway.url + "/admin/cache" + query) as response:
                    assert response.status == 200, await response.text()
                    return await response.json()  # type: ignore[no-any-return]

        await fill()
        by_model = await delete("?model=n")
        after_model = await statuses()
        by_tenant = await delete("?tenant=alpha")
        after_tenant = await statuses()
        everything = await delete("")
        after_all = await statuses()
        async with aiohttp.ClientSession() as session:
            async with session.delete(gateway.url + "/admin/cache") as response:
                anonymous = response.status
            async with session.delete(
                gateway.url + "/admin/cache?tenant=nobody", headers=gateway.headers
            ) as response:
                unknown_tenant = response.status
    assert by_model["removed"]["memory"] == 2
    assert after_model == ["HIT", "MISS", "HIT", "MISS"]
    assert by_tenant["tenant"] == alpha.id and by_tenant["removed"]["memory"] == 2
    assert after_tenant == ["MISS", "MISS", "HIT", "HIT"]
    assert everything["removed"]["memory"] == 4
    assert after_all == ["MISS"] * 4
    assert anonymous == 401 and unknown_tenant == 404


async def test_statistics_in_metrics_and_admin(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(cached_settings(fake_openai)) as gateway:
        await chat(gateway)
        await chat(gateway)
        async with aiohttp.ClientSession(headers=gateway.headers) as session:
            async with session.get(gateway.url + "/metrics") as response:
                metrics = await response.text()
            async with session.get(gateway.url + "/admin/cache") as response:
                stats = await response.json()
            for _ in range(50):
                async with session.get(gateway.url + "/admin/usage") as response:
                    usage = await response.json()
                if usage["totals"]["requests"] >= 2:
                    break
                await asyncio.sleep(0.05)
    assert 'relaygate_cache_requests_total{model="m",result="hit",tier="memory"} 1.0' in metrics
    assert 'relaygate_cache_requests_total{model="m",result="miss",tier=""} 1.0' in metrics
    assert "relaygate_cache_memory_bytes" in metrics
    assert stats["hit_memory"] == 1 and stats["miss"] == 1 and stats["memory_entries"] == 1
    assert usage["cache"]["hit_memory"] == 1
    assert usage["totals"]["cache_hit_rate"] == 0.5


async def test_redis_tier_shared_by_two_gateways_and_its_faults(
    fake_openai: FakeOpenAI, redis_server: RedisServer
) -> None:
    prefix = f"cachetest{time.time_ns()}:"
    common = {"redis_url": redis_server.url, "redis_prefix": prefix}
    one = cached_settings(fake_openai, **common)
    # after one failure Redis is left alone for retry_after: long enough to count on
    resting = {"redis": {"retry_after": 3600}}
    two = cached_settings(fake_openai, resting, database_url=one.database_url, **common)
    async with running_gateway(one) as first, running_gateway(two) as second:
        miss, _ = await chat(first)
        await asyncio.sleep(0.1)  # the write to Redis happens after the answer
        hit_raw = await post_raw(second, {"model": "m", "messages": USER}, key=first.admin_key)
        # A corrupt entry is dropped and the request goes upstream.
        client = first.state.redis
        assert client is not None
        names = [n async for n in client.scan_iter(match=f"{prefix}cache:*")]
        assert len(names) == 1
        await client.set(names[0], b"\xc1 not an entry")
        first.state.cache.memory.invalidate()  # type: ignore[union-attr]
        corrupt, _ = await chat(first)
        await asyncio.sleep(0.1)
        # Redis stops: lookups are skipped, requests go upstream, nothing fails.
        await redis_server.kill()
        second.state.cache.memory.invalidate()  # type: ignore[union-attr]
        key = first.admin_key  # the second gateway shares the first's database and keys
        during = [(await chat(second, key, messages=[{"role": "user", "content": f"q{i}"}]))[0]
                  for i in range(5)]  # fmt: skip
        again, _ = await chat(second, key, messages=[{"role": "user", "content": "q1"}])
        redis_errors = second.state.metrics.registry.get_sample_value(
            "relaygate_cache_errors_total", {"tier": "redis", "kind": "error"}
        )
    assert miss == "MISS" and hit_raw[1]["x-cache"] == "HIT"
    assert hit_raw[1]["x-cache-tier"] == "redis"
    assert corrupt == "MISS"
    assert during == ["MISS"] * 5 and again == "HIT"  # memory still works
    assert redis_errors == 1  # tried once; then left alone, not tried per request
    assert second.state.cache.counts.get("miss", 0) >= 5


async def test_slow_redis_is_skipped_within_the_timeout(
    fake_openai: FakeOpenAI, redis_server: RedisServer
) -> None:
    settings = cached_settings(
        fake_openai, {"memory": {"enabled": False}, "redis": {"timeout": 0.05, "retry_after": 3600}},
        redis_url=redis_server.url, redis_prefix=f"slow{time.time_ns()}:",
    )  # fmt: skip
    async with running_gateway(settings) as gateway:
        assert (await chat(gateway))[0] == "MISS"
        await asyncio.sleep(0.1)
        assert (await chat(gateway))[0] == "HIT"
        assert redis_server.process is not None
        redis_server.process.send_signal(19)  # SIGSTOP: Redis hangs
        try:
            # Redis never answers: only the lookup's own timeout lets these through
            status, reply = await chat(gateway)
            after, _ = await chat(gateway)
        finally:
            redis_server.process.send_signal(18)  # SIGCONT
        errors = {
            kind: gateway.state.metrics.registry.get_sample_value(
                "relaygate_cache_errors_total", {"tier": "redis", "kind": kind}
            )
            for kind in ("timeout", "error")
        }
    assert status == "MISS" and reply.choices[0].message.content == REPLY
    assert after == "MISS"
    assert errors == {"timeout": 1, "error": None}  # one timeout, then Redis left alone
    assert calls(fake_openai) == 3


@pytest.mark.parametrize("min_hits", [0, 2])
async def test_database_tier_keeps_popular_answers(
    fake_openai: FakeOpenAI, database_url: str, min_hits: int
) -> None:
    cache = {"database": {"enabled": True, "min_hits": min_hits}}
    settings = cached_settings(fake_openai, cache, database_url=database_url)

    async def stored() -> int:
        for _ in range(50):
            async with gateway.state.engine.connect() as conn:
                count = await conn.scalar(sa.select(sa.func.count()).select_from(response_cache))
            if count:
                return int(count)
            await asyncio.sleep(0.05)
        return 0

    async with running_gateway(settings) as gateway:
        statuses = [(await chat(gateway))[0] for _ in range(1 + min_hits)]
        in_database = await stored()
        gateway.state.cache.memory.invalidate()  # type: ignore[union-attr]  # as after a restart
        status_raw = await post_raw(gateway, {"model": "m", "messages": USER})
        other = await post_raw(
            gateway, {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        )
        await asyncio.sleep(0.2)
        only_popular = await stored()
    assert statuses == ["MISS"] + ["HIT"] * min_hits
    assert in_database == 1
    assert status_raw[1]["x-cache"] == "HIT" and status_raw[1]["x-cache-tier"] == "database"
    assert other[1]["x-cache"] == "MISS"
    assert only_popular == (2 if min_hits == 0 else 1)  # min_hits 0: every answer
