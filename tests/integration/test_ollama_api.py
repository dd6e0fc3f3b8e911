"""The inbound Ollama API (/api/chat, /api/generate, /api/tags), driven by the official
ollama client, in front of an OpenAI-compatible upstream, with the response cache."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec
import ollama

from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway

USER = [{"role": "user", "content": "why is the sky blue"}]


def settings(fake: FakeOpenAI, cache: bool = True):  # type: ignore[no-untyped-def]
    models = [{"name": "llama3.2:1b", "deployments": [
        {"provider": "openai", "base_url": fake.base_url}]}]  # fmt: skip
    return make_settings(models, cache={"enabled": cache})


def client(gateway: RunningGateway, key: str | None = None) -> ollama.AsyncClient:
    """The official client; use it as ``async with`` so its connections are closed."""
    return ollama.AsyncClient(
        host=gateway.url, headers={"Authorization": f"Bearer {key or gateway.admin_key}"}
    )


async def test_chat_translates_both_ways(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(settings(fake_openai, cache=False)) as gateway, client(gateway) as c:
        reply = await c.chat(
            model="llama3.2:1b",
            messages=USER,
            options={"temperature": 0.2, "num_predict": 50, "top_k": 20, "stop": ["\n\n"],
                     "num_ctx": 4096},
            format="json",
        )  # fmt: skip
    sent = fake_openai.requests[-1].json
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50 and sent["top_k"] == 20
    assert sent["stop"] == ["\n\n"] and sent["response_format"] == {"type": "json_object"}
    assert "num_ctx" not in sent and "options" not in sent
    assert reply.model == "llama3.2:1b" and reply.done and reply.done_reason == "stop"
    assert reply.message.role == "assistant"
    assert reply.message.content == "Echo: why is the sky blue"
    assert reply.prompt_eval_count and reply.eval_count == 6 and reply.total_duration


async def test_chat_streams_ndjson_and_a_hit_replays_it(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(settings(fake_openai)) as gateway, client(gateway) as c:
        parts = []
        for _ in range(2):
            stream = await c.chat(model="llama3.2:1b", messages=USER, stream=True)
            parts.append([p async for p in stream])
        plain = await c.chat(model="llama3.2:1b", messages=USER)
    assert sum(1 for r in fake_openai.requests if r.path.endswith("/completions")) == 1
    for stream in parts:
        assert "".join(p.message.content or "" for p in stream) == "Echo: why is the sky blue"
        assert all(not p.done for p in stream[:-1]) and stream[-1].done
        assert stream[-1].eval_count == 6 and stream[-1].done_reason == "stop"
    assert [p.message.content for p in parts[0]] == [p.message.content for p in parts[1]]
    assert plain.message.content == "Echo: why is the sky blue"


async def test_tool_calls_come_back_in_ollama_shape(fake_openai: FakeOpenAI) -> None:
    call = {"name": "weather", "arguments": {"city": "Paris"}}
    fake_openai.push(Script(tool_calls=[call]), Script(tool_calls=[call]))
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    async with running_gateway(settings(fake_openai, cache=False)) as gateway, client(gateway) as c:
        reply = await c.chat(model="llama3.2:1b", messages=USER, tools=tools)
        stream = await c.chat(model="llama3.2:1b", messages=USER, tools=tools, stream=True)
        parts = [p async for p in stream]
        # The assistant's tool call and the tool's answer, sent back the Ollama way.
        history: list[Any] = [
            *USER,
            {"role": "assistant", "content": "", "tool_calls": [{"function": call}]},
            {"role": "tool", "content": "sunny", "tool_name": "weather"},
        ]
        await c.chat(model="llama3.2:1b", messages=history)
    assert reply.message.tool_calls is not None
    assert reply.message.tool_calls[0].function.name == "weather"
    assert reply.message.tool_calls[0].function.arguments == {"city": "Paris"}
    streamed = [tc for p in parts for tc in (p.message.tool_calls or [])]
    assert [(tc.function.name, tc.function.arguments) for tc in streamed] == [
        ("weather", {"city": "Paris"})
    ]
    sent = fake_openai.requests[-1].json["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {
        "name": "weather", "arguments": '{"city":"Paris"}'
    }  # fmt: skip
    assert sent[2] == {"role": "tool", "content": "sunny", "name": "weather"}


async def test_generate_and_tags(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(settings(fake_openai)) as gateway, client(gateway) as c:
        first = await c.generate(model="llama3.2:1b", prompt="hi", system="short")
        stream = await c.generate(model="llama3.2:1b", prompt="hi", system="short",
                                                stream=True)  # fmt: skip
        parts = [p async for p in stream]
        tags = await c.list()
    assert first.response == "Echo: hi" and first.done
    assert "".join(p.response for p in parts) == "Echo: hi" and parts[-1].done
    assert fake_openai.requests[0].json["messages"] == [
        {"role": "system", "content": "short"}, {"role": "user", "content": "hi"},
    ]  # fmt: skip
    assert len([r for r in fake_openai.requests if r.path.endswith("/completions")]) == 1
    assert [m.model for m in tags.models] == ["llama3.2:1b"]


async def test_errors_have_ollamas_shape(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(settings(fake_openai)) as gateway:
        async with aiohttp.ClientSession() as session:

            async def post(body: Any, key: str | None = gateway.admin_key) -> tuple[int, Any]:
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                async with session.post(
                    gateway.url + "/api/chat", json=body, headers=headers
                ) as response:
                    return response.status, msgspec.json.decode(await response.read())

            missing = await post({"model": "llama3.2:1b"})
            unknown = await post({"model": "nope", "messages": USER})
            anonymous = await post({"model": "llama3.2:1b", "messages": USER}, key=None)
            bad_format = await post({"model": "llama3.2:1b", "messages": USER, "format": "xml"})
    assert missing[0] == 400 and "messages" in missing[1]["error"]
    assert unknown[0] == 404 and "nope" in unknown[1]["error"]
    assert anonymous[0] == 401 and isinstance(anonymous[1]["error"], str)
    assert bad_format[0] == 400 and "format" in bad_format[1]["error"]


async def test_seed_003_request_gets_one_json_body(fake_openai: FakeOpenAI) -> None:
    body = {"model": "llama3.2:1b", "messages": USER, "temperature": 0.7}
    async with running_gateway(settings(fake_openai)) as gateway:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                gateway.url + "/api/chat", json=body, headers=gateway.headers
            ) as response:
                reply = await response.json()
    assert response.status == 200 and reply["done"] is True
    assert reply["message"]["content"] == "Echo: why is the sky blue"
    assert fake_openai.requests[-1].json["temperature"] == 0.7


async def test_ollama_style_curl_without_json_content_type(fake_openai: FakeOpenAI) -> None:
    body = b'{"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}'
    headers = {"Content-Type": "application/x-www-form-urlencoded"}  # what `curl -d` sends
    async with running_gateway(settings(fake_openai)) as gateway:
        async with aiohttp.ClientSession(headers=gateway.headers) as session:
            async with session.post(gateway.url + "/api/chat", data=body, headers=headers) as r:
                reply = await r.json(content_type=None)
            async with session.post(
                gateway.url + "/api/chat", data=b"model=x", headers=headers
            ) as r:
                bad = (r.status, await r.json(content_type=None))
    assert reply["message"]["content"] == "Echo: hi"
    assert bad[0] == 400 and "JSON" in bad[1]["error"]
