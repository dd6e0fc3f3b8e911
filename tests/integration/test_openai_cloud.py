"""The OpenAI API itself as an upstream (organization and project headers, rate-limit
headers into the routing cooldown) and an Open WebUI server (its API under /api)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.openwebui_server import FakeOpenWebUI
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway

KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz012345"
USER = [{"role": "user", "content": "tell me a story"}]


@pytest.fixture
async def webui() -> AsyncIterator[FakeOpenWebUI]:
    async with FakeOpenWebUI(models=["llama3.2:1b"], api_key=KEY, strict_models=True) as fake:
        yield fake


def deployment(provider: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"provider": provider, "base_url": url, "api_key": KEY, **extra}


async def test_organization_and_project_headers(fake_openai: FakeOpenAI) -> None:
    config = {
        "name": "gpt",
        "deployments": [
            deployment("openai", fake_openai.base_url, organization="org-42", project="proj_7")
        ],
    }
    plain = {"name": "plain", "deployments": [deployment("openai", fake_openai.base_url)]}
    async with running_gateway(make_settings([config, plain])) as gateway:
        async with gateway.client() as client:
            await client.chat.completions.create(model="gpt", messages=USER)  # type: ignore[arg-type]
            await client.chat.completions.create(model="plain", messages=USER)  # type: ignore[arg-type]
    first, second = fake_openai.requests[-2:]
    assert first.headers["openai-organization"] == "org-42"
    assert first.headers["openai-project"] == "proj_7"
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert "openai-organization" not in second.headers and "openai-project" not in second.headers


@pytest.mark.parametrize(
    ("headers", "cooled"),
    [
        ({"Retry-After": "40"}, True),
        ({"x-ratelimit-reset-requests": "45s", "x-ratelimit-remaining-requests": "0"}, True),
        ({"x-ratelimit-reset-tokens": "1m0s"}, True),
        ({}, False),  # one 429 without a wait: below the failure threshold, still in use
        ({"Retry-After": "inf"}, False),  # not a wait (it once crashed the error's header)
        ({"Retry-After": "1e999"}, False),
    ],
)
async def test_429_wait_cools_the_deployment_down(
    fake_openai: FakeOpenAI, headers: dict[str, str], cooled: bool
) -> None:
    fake_openai.push(Script(status=429, headers=headers, error_message="Rate limit reached"))
    config = {"name": "gpt", "deployments": [deployment("openai", fake_openai.base_url)]}
    async with running_gateway(make_settings([config])) as gateway:
        async with gateway.client() as client:
            with pytest.raises(openai.RateLimitError) as error:
                await client.chat.completions.create(model="gpt", messages=USER)  # type: ignore[arg-type]
        state = (await _ready(gateway))["models"]["gpt"]["deployments"][0]["state"]
    assert "Rate limit reached" in error.value.message and KEY not in error.value.message
    assert state == ("cooling_down" if cooled else "degraded")
    if cooled:
        assert int(error.value.response.headers["retry-after"]) >= 40


async def test_rate_limited_deployment_yields_to_the_next(fake_openai: FakeOpenAI) -> None:
    async with FakeOpenAI() as other:
        fake_openai.push(Script(status=429, headers={"x-ratelimit-reset-requests": "30s"}))
        config = {
            "name": "gpt",
            "deployments": [
                deployment("openai", fake_openai.base_url, weight=10**6),
                deployment("openai", other.base_url),
            ],
        }
        async with running_gateway(make_settings([config])) as gateway:
            async with gateway.client() as client:
                for _ in range(3):
                    await client.chat.completions.create(model="gpt", messages=USER)  # type: ignore[arg-type]
        assert len(fake_openai.requests) == 1  # then cooled down for 30 s
        assert len(other.requests) == 3


async def test_open_webui_chat_stream_and_embeddings(webui: FakeOpenWebUI) -> None:
    config = {
        "name": "cafe",
        "deployments": [deployment("openwebui", webui.base_url, model="llama3.2:1b")],
    }
    async with running_gateway(make_settings([config])) as gateway:
        async with gateway.client() as client:
            reply = await client.chat.completions.create(model="cafe", messages=USER)  # type: ignore[arg-type]
            stream = await client.chat.completions.create(
                model="cafe",
                messages=USER,  # type: ignore[arg-type]
                stream=True,
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            vectors = await client.embeddings.create(model="cafe", input=["a", "b"])
            with pytest.raises(openai.BadRequestError) as error:
                await client.completions.create(model="cafe", prompt="hi")
    assert reply.choices[0].message.content == "Echo: tell me a story" and reply.model == "cafe"
    assert text == "Echo: tell me a story" and len(vectors.data) == 2
    paths = [r.path for r in webui.requests]
    assert paths == ["/api/chat/completions", "/api/chat/completions", "/api/embeddings"]
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in webui.requests)
    assert webui.requests[0].json["model"] == "llama3.2:1b"
    assert "served by an Open WebUI server, which has no completion API" in error.value.message


async def test_open_webui_refusing_the_key_hides_it(webui: FakeOpenWebUI) -> None:
    config = {"name": "cafe", "deployments": [deployment("openwebui", webui.base_url)]}
    config["deployments"][0]["api_key"] = "sk-wrong-" + KEY
    async with running_gateway(make_settings([config])) as gateway:
        async with gateway.client() as client:
            with pytest.raises(openai.APIStatusError) as error:
                await client.chat.completions.create(model="cafe", messages=USER)  # type: ignore[arg-type]
    assert error.value.status_code == 502 and "answered 401" in error.value.message
    assert KEY not in str(error.value.body)


async def _ready(gateway: RunningGateway) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(gateway.url + "/ready") as r:
        body: dict[str, Any] = await r.json()
        return body
