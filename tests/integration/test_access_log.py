"""The access log through the real gateway: one line per inference request with its ids,
model, deployment, status and timings, as JSON; never a key or a prompt, whatever an
upstream echoes, unless prompt logging is switched on (and then scrubbed)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest

from relaygate.observability.logging import ACCESS_LOGGER, JsonFormatter, TextFormatter
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key

UPSTREAM_KEY = "zq7upstreamdeploykey42"  # shaped like nothing: only the configuration knows it
PROMPT = "PROMPTMARK tell me about the harbour"


async def post(
    gateway: RunningGateway, key: str, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + path, json=body, headers=headers) as response:
            return response.status, response.headers["x-request-id"], await response.read()


async def access_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    """The first ``count`` access lines, as the JSON formatter writes them (the line is
    written just after the response's last byte: wait for it)."""
    for _ in range(500):
        records = [r for r in caplog.records if r.name == ACCESS_LOGGER]
        if len(records) >= count:
            break
        await asyncio.sleep(0.01)
    assert len(records) == count, [r.getMessage() for r in records]
    return [json.loads(JsonFormatter().format(r)) for r in records]


def chat(model: str = "oa", stream: bool = False, content: str = PROMPT) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}


def openai_model(fake: FakeOpenAI) -> list[dict[str, Any]]:
    fake.api_key = UPSTREAM_KEY
    return [
        {"name": "oa", "deployments": [
            {"provider": "openai", "base_url": fake.base_url, "api_key": UPSTREAM_KEY}
        ]},
    ]  # fmt: skip


async def test_one_json_line_per_request_with_its_ids_status_and_timings(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    settings = make_settings(openai_model(fake_openai), access_log=True)
    async with running_gateway(settings) as gateway:
        key_id, key = await new_key(gateway, tier="unlimited", tenant="acme")
        tenant = await gateway.state.identity.tenant_by_name("acme")
        assert tenant is not None
        fake_openai.push(Script(content="a b c"))
        ok = await post(gateway, key, chat())
        fake_openai.push(Script(content="a b c"))
        streamed = await post(gateway, key, chat(stream=True))
        unknown = await post(gateway, key, chat(model="no-such-model"))
        refused = await post(gateway, "rg_not-a-key-at-all-0123456789", chat())
        lines = await access_lines(caplog, 4)

    assert [ok[0], streamed[0], unknown[0], refused[0]] == [200, 200, 404, 401]
    first, second, third, fourth = lines
    assert first["request_id"] == ok[1] and second["request_id"] == streamed[1]
    for line in (first, second):
        assert line["logger"] == ACCESS_LOGGER and line["level"] == "info"
        assert line["key_id"] == key_id and line["tenant_id"] == tenant.id
        assert line["model"] == "oa" and line["provider"] == "openai"
        assert line["deployment"] == "oa" and line["api"] == "openai"
        assert line["endpoint"] == "/v1/chat/completions"
        assert line["status"] == 200 and line["outcome"] == "ok" and line["cached"] is False
        assert line["completion_tokens"] > 0 and line["prompt_tokens"] > 0
        assert line["duration_ms"] > 0
    assert first["ttfb_ms"] is None  # a complete answer has no first chunk
    assert 0 < second["ttfb_ms"] <= second["duration_ms"]
    # a model that does not exist is logged under the bounded name, never what was typed
    assert third["status"] == 404 and third["model"] == "unknown"
    assert "no-such-model" not in json.dumps(third)
    # no key, no usage record: still one line, without a key or token counts
    assert fourth["status"] == 401 and fourth["key_id"] is None and "outcome" not in fourth
    assert "prompt" not in first  # prompt logging is off by default


async def test_an_upstream_echoing_the_key_or_the_prompt_never_reaches_the_line(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    settings = make_settings(openai_model(fake_openai), access_log=True)
    async with running_gateway(settings) as gateway:
        _, key = await new_key(gateway, tier="unlimited", tenant="acme")
        echo = f"{UPSTREAM_KEY} Bearer {key} you said: {PROMPT}"
        fake_openai.push(Script(status=500, error_message=echo))
        failed = await post(gateway, key, chat())
        fake_openai.push(Script(content="a b c", error_after=1, error_message=echo))
        cut = await post(gateway, key, chat(stream=True))
        fake_openai.push(Script(content=echo))  # an answer that quotes both
        answered = await post(gateway, key, chat())
        lines = await access_lines(caplog, 3)
        records = [r for r in caplog.records if r.name == ACCESS_LOGGER]

    assert failed[0] == 502 and cut[0] == 200 and answered[0] == 200
    assert PROMPT.encode() in answered[2]  # the upstream did echo it, to the client
    assert [line["status"] for line in lines] == [502, 502, 200]
    assert lines[0]["outcome"] == "upstream_error"
    written = [JsonFormatter().format(r) for r in records] + [
        TextFormatter().format(r) for r in records
    ]
    for text in written:
        for secret in (UPSTREAM_KEY, key, "PROMPTMARK", "harbour"):
            assert secret not in text, text


async def test_prompt_logging_adds_the_prompt_scrubbed_of_secrets(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    settings = make_settings(openai_model(fake_openai), access_log=True, log_prompts=True)
    async with running_gateway(settings) as gateway:
        _, key = await new_key(gateway, tier="unlimited", tenant="acme")
        pasted = f"{PROMPT}; my key is {key}"
        fake_openai.push(Script(content="a b c"))
        status, _, _ = await post(gateway, key, chat(content=pasted))
        (line,) = await access_lines(caplog, 1)
    assert status == 200
    assert "PROMPTMARK tell me about the harbour" in line["prompt"]
    assert key not in json.dumps(line)


async def test_no_access_line_unless_switched_on(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with running_gateway(make_settings(openai_model(fake_openai))) as gateway:
        assert gateway.state.access_log is None
        _, key = await new_key(gateway, tier="unlimited", tenant="acme")
        fake_openai.push(Script(content="a b c"))
        assert (await post(gateway, key, chat()))[0] == 200
    assert not [r for r in caplog.records if r.name == ACCESS_LOGGER]
