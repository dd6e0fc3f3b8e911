"""An Ollama server behind the gateway: its native API translated to and from OpenAI's."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes.ollama_server import FakeOllama
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway

USER = [{"role": "user", "content": "why is the sky blue"}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def ollama_model(fake: FakeOllama, name: str = "llama3.2:1b") -> dict[str, Any]:
    return {"name": name, "deployments": [{"provider": "ollama", "base_url": fake.base_url}]}


async def test_chat_options_and_usage_translated(fake_ollama: FakeOllama) -> None:
    async with running_gateway(make_settings([ollama_model(fake_ollama)])) as gateway:
        async with gateway.client() as client:
            reply = await client.chat.completions.create(
                model="llama3.2:1b",
                messages=USER,
                temperature=0.2,
                top_p=0.9,  # type: ignore[arg-type]
                max_tokens=3,
                stop=["\n\n"],
                seed=42,
            )
    sent = fake_ollama.requests[-1]
    assert sent.path == "/api/chat"
    assert sent.json["stream"] is False
    assert sent.json["messages"] == [{"role": "user", "content": "why is the sky blue"}]
    assert sent.json["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "num_predict": 3,
        "stop": ["\n\n"],
        "seed": 42,
    }
    assert reply.model == "llama3.2:1b" and reply.object == "chat.completion"
    assert reply.choices[0].message.content == "Echo: why is"
    assert reply.choices[0].finish_reason == "length"  # done_reason "length"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (5, 3)


async def test_stream_ndjson_becomes_sse(fake_ollama: FakeOllama) -> None:
    async with running_gateway(make_settings([ollama_model(fake_ollama)])) as gateway:
        async with gateway.client() as client:
            stream = await client.chat.completions.create(
                model="llama3.2:1b",
                messages=USER,
                stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
    assert fake_ollama.requests[-1].json["stream"] is True
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: why is the sky blue"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 5 + 6
    assert len({c.id for c in chunks}) == 1 and all(c.model == "llama3.2:1b" for c in chunks)


async def test_tools_and_tool_calls(fake_ollama: FakeOllama) -> None:
    fake_ollama.push(
        Script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]),
        Script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}]),
    )
    history = [
        *USER,
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]  # fmt: skip
    async with running_gateway(make_settings([ollama_model(fake_ollama)])) as gateway:
        async with gateway.client() as client:
            reply = await client.chat.completions.create(
                model="llama3.2:1b",
                messages=history,
                tools=[WEATHER_TOOL],  # type: ignore[arg-type, list-item]
            )
            stream = await client.chat.completions.create(
                model="llama3.2:1b",
                messages=USER,
                tools=[WEATHER_TOOL],
                stream=True,  # type: ignore[arg-type, list-item]
            )
            chunks = [c async for c in stream]
    sent = fake_ollama.requests[0].json
    assert sent["tools"] == [WEATHER_TOOL]
    assert sent["messages"][1]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}
    ]
    assert sent["messages"][2]["role"] == "tool" and sent["messages"][2]["content"] == "sunny"
    call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.type == "function" and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert call.id.startswith("call_")
    assert reply.choices[0].finish_reason == "tool_calls"
    streamed = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert json.loads(streamed[0].function.arguments) == {"city": "Oslo"}  # type: ignore[arg-type, union-attr]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


async def test_images_as_data_urls_only(fake_ollama: FakeOllama) -> None:
    def vision(url: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": url}},
        ]}]  # fmt: skip

    async with running_gateway(make_settings([ollama_model(fake_ollama)])) as gateway:
        async with gateway.client() as client:
            await client.chat.completions.create(
                model="llama3.2:1b",
                messages=vision(f"data:image/png;base64,{PNG}"),  # type: ignore[arg-type]
            )
            with pytest.raises(openai.BadRequestError) as error:
                await client.chat.completions.create(
                    model="llama3.2:1b",
                    messages=vision("http://169.254.169.254/latest"),  # type: ignore[arg-type]
                )
    message = fake_ollama.requests[0].json["messages"][0]
    assert message == {"role": "user", "content": "what is this", "images": [PNG]}
    assert "data URLs" in error.value.message
    assert len(fake_ollama.requests) == 1  # the remote URL never reached Ollama


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_object"}, "json"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            {"type": "object"},
        ),
    ],
)
async def test_response_format_becomes_format(
    fake_ollama: FakeOllama, response_format: dict[str, Any], expected: Any
) -> None:
    async with running_gateway(make_settings([ollama_model(fake_ollama)])) as gateway:
        async with gateway.client() as client:
            await client.chat.completions.create(
                model="llama3.2:1b",
                messages=USER,
                response_format=response_format,  # type: ignore[arg-type]
            )
    assert fake_ollama.requests[-1].json["format"] == expected


async def test_completions_use_generate(fake_ollama: FakeOllama) -> None:
    async with running_gateway(make_settings([ollama_model(fake_ollama)])) as gateway:
        async with gateway.client() as client:
            whole = await client.completions.create(
                model="llama3.2:1b", prompt="def fib(n):", suffix="return x", max_tokens=50
            )
            stream = await client.completions.create(
                model="llama3.2:1b", prompt="def fib(n):", stream=True
            )
            text = "".join([c.choices[0].text async for c in stream if c.choices])
    sent = fake_ollama.requests[0]
    assert sent.path == "/api/generate"
    assert sent.json["prompt"] == "def fib(n):" and sent.json["suffix"] == "return x"
    assert sent.json["options"]["num_predict"] == 50
    assert whole.object == "text_completion" and whole.choices[0].text == "Echo: def fib(n):"
    assert text == whole.choices[0].text


async def test_embeddings_use_embed(fake_ollama: FakeOllama) -> None:
    async with running_gateway(make_settings([ollama_model(fake_ollama)])) as gateway:
        async with gateway.client() as client:
            floats = await client.embeddings.create(
                model="llama3.2:1b", input=["a", "b"], encoding_format="float"
            )
            packed = await client.embeddings.create(model="llama3.2:1b", input="a")
    assert fake_ollama.requests[0].path == "/api/embed"
    assert fake_ollama.requests[0].json["input"] == ["a", "b"]
    assert len(floats.data) == 2 and floats.usage.prompt_tokens > 0
    assert packed.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)


async def test_ollama_error_is_502_with_its_message(fake_ollama: FakeOllama) -> None:
    config = ollama_model(fake_ollama, "missing")
    config["deployments"][0]["model"] = "not-pulled:7b"
    async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
        with pytest.raises(openai.APIStatusError) as error:
            await client.chat.completions.create(model="missing", messages=USER)  # type: ignore[arg-type]
    assert error.value.status_code == 502
    assert "not found, try pulling it first" in error.value.message


async def test_n_above_one_is_refused(fake_ollama: FakeOllama) -> None:
    async with running_gateway(make_settings([ollama_model(fake_ollama)])) as gateway:
        async with gateway.client() as client:
            with pytest.raises(openai.BadRequestError) as error:
                await client.chat.completions.create(model="llama3.2:1b", messages=USER, n=2)  # type: ignore[arg-type]
    assert error.value.body["param"] == "n"  # type: ignore[index]
    assert fake_ollama.requests == []


async def test_stream_error_line_ends_with_error_event(fake_ollama: FakeOllama) -> None:
    fake_ollama.default = Script(error_after=2, error_message="model crashed")
    async with running_gateway(make_settings([ollama_model(fake_ollama)])) as gateway:
        async with gateway.client() as client:
            stream = await client.chat.completions.create(
                model="llama3.2:1b",
                messages=USER,
                stream=True,  # type: ignore[arg-type]
            )
            with pytest.raises(openai.APIError, match="model crashed"):
                async for _ in stream:
                    pass


async def test_discovery_serves_every_ollama_model(fake_ollama: FakeOllama) -> None:
    settings = make_settings(discover_ollama=[fake_ollama.base_url], mock_model=True)
    async with running_gateway(settings) as gateway, gateway.client() as client:
        names = sorted([m.id async for m in client.models.list()])
        reply = await client.chat.completions.create(model="qwen2.5:0.5b", messages=USER)  # type: ignore[arg-type]
    assert names == ["llama3.2:1b", "mock", "qwen2.5:0.5b"]
    assert reply.model == "qwen2.5:0.5b"


async def test_discovery_of_absent_server_is_quiet() -> None:
    from tests.conftest import closed_port_url

    settings = make_settings(discover_ollama=[closed_port_url("")], mock_model=True)
    async with running_gateway(settings) as gateway:
        assert await _model_ids(gateway) == ["mock"]


async def _model_ids(gateway: RunningGateway) -> list[str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/v1/models", headers=gateway.headers) as response:
            return [m["id"] for m in (await response.json())["data"]]


async def test_top_k_and_min_p_reach_ollama_options_from_every_api(fake_ollama: FakeOllama) -> None:
    """The canonical schema has no top_k/min_p: the adapter reads them from the client's body
    (Ollama's options, Anthropic's top_k, vLLM-style extra fields), and drops wrong types."""
    async with running_gateway(make_settings([ollama_model(fake_ollama)])) as gateway:
        async with gateway.client() as client:
            await client.chat.completions.create(
                model="llama3.2:1b",
                messages=USER,
                extra_body={"top_k": 7, "min_p": 0.05},  # type: ignore[arg-type]
            )
            await client.chat.completions.create(
                model="llama3.2:1b",
                messages=USER,
                extra_body={"top_k": "7", "min_p": True},  # type: ignore[arg-type]
            )
        async with aiohttp.ClientSession(headers=gateway.headers) as session:
            body = {"model": "llama3.2:1b", "messages": USER, "options": {"top_k": 3, "min_p": 0.2}}
            async with session.post(gateway.url + "/api/chat", json=body) as response:
                assert response.status == 200
    options = [r.json.get("options", {}) for r in fake_ollama.requests if r.path == "/api/chat"]
    assert [(o.get("top_k"), o.get("min_p")) for o in options] == [
        (7, 0.05),
        (None, None),
        (3, 0.2),
    ]
