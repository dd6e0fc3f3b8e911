"""The seeds' inference endpoints: POST /ai/generate (seeds 000/001) and POST /chat (seed 002),
with ``cached: true|false`` from the response cache."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway


def settings(fake: FakeOpenAI, **cache: Any):  # type: ignore[no-untyped-def]
    models = [{"name": "llama3.2:1b", "deployments": [
        {"provider": "openai", "base_url": fake.base_url}]}]  # fmt: skip
    return make_settings(models, cache={"enabled": True, **cache})


async def post(gateway: RunningGateway, path: str, body: Any) -> tuple[int, Any, bytes]:
    headers = {"X-API-Key": gateway.admin_key}
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + path, json=body, headers=headers) as response:
            return response.status, response.headers.copy(), await response.read()


async def test_generate_answers_in_the_seed_shape_and_says_cached(fake_openai: FakeOpenAI) -> None:
    body = {"prompt": "Explain machine learning", "model": "llama3.2:1b", "stream": False,
            "use_cache": True}  # fmt: skip
    async with running_gateway(settings(fake_openai)) as gateway:
        first = await post(gateway, "/ai/generate", body)
        second = await post(gateway, "/ai/generate", body)
        fresh = await post(gateway, "/ai/generate", {**body, "use_cache": False})
        default_model = await post(gateway, "/ai/generate", {"prompt": "Explain machine learning"})
    replies = [msgspec.json.decode(r[2]) for r in (first, second, fresh, default_model)]
    assert [r[0] for r in (first, second, fresh)] == [200, 200, 200]
    assert [r["cached"] for r in replies] == [False, True, False, True]
    reply = replies[0]
    assert reply["response"] == "Echo: Explain machine learning"
    assert reply["model"] == "llama3.2:1b" and reply["done"] is True
    assert reply["eval_count"] == 4 and reply["prompt_eval_count"] > 0
    assert reply["total_duration_ms"] > 0
    assert replies[1]["response"] == reply["response"]
    sent = [r.json for r in fake_openai.requests if r.json]
    assert len(sent) == 2 and sent[0]["messages"] == [
        {"role": "user", "content": "Explain machine learning"}
    ]
    assert "use_cache" not in sent[0] and "prompt" not in sent[0]


async def test_generate_streams_ndjson_and_replays_it(fake_openai: FakeOpenAI) -> None:
    body = {"prompt": "stream this please", "stream": True, "system": "be brief"}
    async with running_gateway(settings(fake_openai)) as gateway:
        miss = await post(gateway, "/ai/generate", body)
        hit = await post(gateway, "/ai/generate", body)
    assert miss[1]["content-type"] == "application/x-ndjson"
    for status, _, raw in (miss, hit):
        lines = [msgspec.json.decode(line) for line in raw.splitlines()]
        assert status == 200 and all(not line["done"] for line in lines[:-1])
        assert "".join(line["response"] for line in lines) == "Echo: stream this please"
        assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 4
    assert msgspec.json.decode(miss[2].splitlines()[-1])["cached"] is False
    assert msgspec.json.decode(hit[2].splitlines()[-1])["cached"] is True
    assert hit[1]["x-cache"] == "HIT"
    assert miss[2].splitlines()[:-1] == hit[2].splitlines()[:-1]  # the same lines, replayed
    assert fake_openai.requests[-1].json["messages"][0] == {"role": "system", "content": "be brief"}


async def test_generate_bad_input_is_a_clear_400(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(settings(fake_openai)) as gateway:
        missing = await post(gateway, "/ai/generate", {"model": "llama3.2:1b"})
        wrong = await post(gateway, "/ai/generate", {"prompt": "x", "use_cache": "yes"})
        unknown = await post(gateway, "/ai/generate", {"prompt": "x", "model": "nope"})
    assert missing[0] == 400 and "prompt" in msgspec.json.decode(missing[2])["error"]["message"]
    assert wrong[0] == 400 and msgspec.json.decode(wrong[2])["error"]["param"] == "use_cache"
    assert unknown[0] == 404


async def test_generate_stream_failure_ends_with_an_error_line(fake_openai: FakeOpenAI) -> None:
    fake_openai.push(Script(error_after=1, error_message="model crashed"))
    async with running_gateway(settings(fake_openai)) as gateway:
        status, _, raw = await post(gateway, "/ai/generate", {"prompt": "a b c", "stream": True})
    last = msgspec.json.decode(raw.splitlines()[-1])
    assert status == 200 and last["done"] is True and "model crashed" in last["error"]


async def test_chat_seed_shape_with_backend_and_cached(fake_openai: FakeOpenAI) -> None:
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "Hi"}],
            "temperature": 0.7, "max_tokens": 2048}  # fmt: skip
    async with running_gateway(settings(fake_openai)) as gateway:
        first = msgspec.json.decode((await post(gateway, "/chat", body))[2])
        second = msgspec.json.decode((await post(gateway, "/chat", body))[2])
    assert first["object"] == "chat.completion" and first["backend"] == "openai"
    assert first["choices"][0]["message"]["content"] == "Echo: Hi"
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["choices"] == first["choices"] and second["id"] == first["id"]
