"""Google's Gemini API behind the gateway: its native wire format translated to and from
OpenAI's, driven by the official openai client (and once by an Ollama client's /api/chat)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes.gemini_server import FakeGemini, GeminiScript
from tests.fakes.script import Script
from tests.gateway import make_settings, running_gateway

# Shaped like no known key: only the gateway's knowledge of its configuration can scrub it.
KEY = "zqg3mfa0q7xkd9t2"
USER = [{"role": "user", "content": "why is the sky blue"}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": ["integer", "null"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture
async def fake_gemini() -> AsyncIterator[FakeGemini]:
    """A real Gemini-API server on a free port, scripted per test, checking every request."""
    async with FakeGemini(api_key=KEY) as fake:
        yield fake
    assert fake.violations == []  # every request the gateway sent was one Gemini accepts


def gemini_model(fake: FakeGemini, name: str = "flash", **deployment: Any) -> dict[str, Any]:
    dep = {"provider": "gemini", "base_url": fake.base_url, "api_key": KEY,
           "model": "gemini-1.5-flash", **deployment}  # fmt: skip
    return {"name": name, "deployments": [dep]}


async def test_chat_translated_both_ways(fake_gemini: FakeGemini) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Answer in English."},
        *USER,
    ]
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client() as client:
            reply = await client.chat.completions.create(
                model="flash",
                messages=messages,  # type: ignore[arg-type]
                temperature=0.2,
                top_p=0.9,
                max_tokens=3,
                stop=["\n\n"],
                seed=7,
                extra_body={"top_k": 40},
            )
    sent = fake_gemini.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1beta/models/gemini-1.5-flash:generateContent")
    assert sent.headers["x-goog-api-key"] == KEY and sent.query == {}
    assert "authorization" not in sent.headers
    assert sent.json == {
        "contents": [{"role": "user", "parts": [{"text": "why is the sky blue"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in English."}]},
        "generationConfig": {
            "temperature": 0.2,
            "topP": 0.9,
            "topK": 40,
            "maxOutputTokens": 3,
            "stopSequences": ["\n\n"],
            "seed": 7,
        },
    }
    assert reply.model == "flash" and reply.object == "chat.completion"
    assert reply.choices[0].message.content == "Echo: why is"
    assert reply.choices[0].finish_reason == "length"  # MAX_TOKENS
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (5 + 2 + 3, 3)
    assert reply.usage.total_tokens == 13


async def test_stream_events_become_chunks_with_usage(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(GeminiScript(cached_tokens=4))
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client() as client:
            stream = await client.chat.completions.create(
                model="flash",
                messages=USER,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
    sent = fake_gemini.requests[-1]
    assert sent.path == "/v1beta/models/gemini-1.5-flash:streamGenerateContent"
    assert sent.query == {"alt": "sse"}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: why is the sky blue"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 6
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 6)
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 4  # type: ignore[union-attr]
    assert len({c.id for c in chunks}) == 1 and all(c.model == "flash" for c in chunks)


async def test_tools_round_trip(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(
        Script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]),
        Script(content="It is sunny in Paris."),
        Script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}]),
    )
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client() as client:
            first = await client.chat.completions.create(
                model="flash",
                messages=USER,  # type: ignore[arg-type]
                tools=[WEATHER_TOOL],  # type: ignore[list-item]
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
            )
            call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
            history = [
                *USER,
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
            ]
            second = await client.chat.completions.create(
                model="flash",
                messages=history,  # type: ignore[arg-type]
                tools=[WEATHER_TOOL],  # type: ignore[list-item]
                tool_choice="auto",
            )
            stream = await client.chat.completions.create(
                model="flash",
                messages=USER,  # type: ignore[arg-type]
                tools=[WEATHER_TOOL],  # type: ignore[list-item]
                tool_choice="required",
                stream=True,
            )
            chunks = [c async for c in stream]
    assert call.type == "function" and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert call.id.startswith("call_") and first.choices[0].finish_reason == "tool_calls"
    declared = fake_gemini.requests[0].json["tools"]
    assert declared == [{"functionDeclarations": [{
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "OBJECT",
            "properties": {"city": {"type": "STRING"}, "days": {"type": "INTEGER", "nullable": True}},
            "required": ["city"],
        },
    }]}]  # fmt: skip
    assert fake_gemini.requests[0].json["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }
    round_trip = fake_gemini.requests[1].json
    assert round_trip["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    assert round_trip["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "sunny, 21C"}}}]},
    ]  # fmt: skip
    assert second.choices[0].message.content == "It is sunny in Paris."
    assert fake_gemini.requests[2].json["toolConfig"]["functionCallingConfig"] == {"mode": "ANY"}
    streamed = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(streamed) == 1 and streamed[0].index == 0
    assert json.loads(streamed[0].function.arguments) == {"city": "Oslo"}  # type: ignore[arg-type, union-attr]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


async def test_thought_signatures_make_the_round_trip(fake_gemini: FakeGemini) -> None:
    """Thinking models sign their function calls and want the signature back with them."""
    fake_gemini.push(
        GeminiScript(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}],
                     thought_signature="c2lnbmF0dXJl"),
        Script(content="Sunny."),
    )  # fmt: skip
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client() as client:
            first = await client.chat.completions.create(
                model="flash",
                messages=USER,  # type: ignore[arg-type]
                tools=[WEATHER_TOOL],  # type: ignore[list-item]
            )
            message = first.choices[0].message.model_dump(exclude_none=True)
            call_id = message["tool_calls"][0]["id"]
            await client.chat.completions.create(
                model="flash",
                messages=[*USER, message,  # type: ignore[list-item]
                          {"role": "tool", "tool_call_id": call_id, "content": "sunny"}],
            )  # fmt: skip
    extra = message["tool_calls"][0]["extra_content"]
    assert extra == {"google": {"thought_signature": "c2lnbmF0dXJl"}}
    model_turn = fake_gemini.requests[1].json["contents"][1]
    assert model_turn["parts"][0]["thoughtSignature"] == "c2lnbmF0dXJl"


async def test_json_tool_result_passes_as_the_response_object(fake_gemini: FakeGemini) -> None:
    history = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "abc", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "abc", "content": '{"sky": "clear"}'},
    ]  # fmt: skip
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client() as client:
            await client.chat.completions.create(model="flash", messages=history)  # type: ignore[arg-type]
            with pytest.raises(openai.BadRequestError) as error:
                await client.chat.completions.create(
                    model="flash",
                    messages=[*USER, {"role": "tool", "tool_call_id": "nope", "content": "x"}],  # type: ignore[list-item]
                )
    last = fake_gemini.requests[0].json["contents"][-1]
    assert last["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}}
    ]
    assert "tool_call_id" in error.value.message and len(fake_gemini.requests) == 1


async def test_image_data_url_becomes_inline_data(fake_gemini: FakeGemini) -> None:
    def vision(url: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": url}},
        ]}]  # fmt: skip

    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client() as client:
            await client.chat.completions.create(
                model="flash",
                messages=vision(f"data:image/png;base64,{PNG}"),  # type: ignore[arg-type]
            )
            with pytest.raises(openai.BadRequestError) as error:
                await client.chat.completions.create(
                    model="flash",
                    messages=vision("https://example.com/cat.png"),  # type: ignore[arg-type]
                )
    assert fake_gemini.requests[0].json["contents"][0]["parts"] == [
        {"text": "what is this"},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
    ]
    assert "messages[0].content[1].image_url" in error.value.message
    assert "data URLs" in error.value.message
    assert len(fake_gemini.requests) == 1  # the remote URL never reached Gemini


async def test_pdf_and_audio_parts_become_inline_data(fake_gemini: FakeGemini) -> None:
    content = [
        {"type": "text", "text": "summarise both"},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    ]  # fmt: skip
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client() as client:
            await client.chat.completions.create(
                model="flash",
                messages=[{"role": "user", "content": content}],  # type: ignore[list-item, misc]
            )
            with pytest.raises(openai.BadRequestError) as error:
                await client.chat.completions.create(
                    model="flash",
                    messages=[{"role": "user", "content": [  # type: ignore[list-item, misc]
                        {"type": "input_audio", "input_audio": {"data": "x", "format": "ogg"}}]}],
                )  # fmt: skip
    assert fake_gemini.requests[0].json["contents"][0]["parts"] == [
        {"text": "summarise both"},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
    ]
    assert "messages[0].content[0].input_audio" in error.value.message
    assert len(fake_gemini.requests) == 1


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_object"}, {"responseMimeType": "application/json"}),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "additionalProperties": False,
                "properties": {"n": {"type": "integer"}, "tag": {"enum": ["a", 1]}},
            }}},
            {"responseMimeType": "application/json", "responseSchema": {
                "type": "OBJECT",
                "properties": {"n": {"type": "INTEGER"}, "tag": {"type": "STRING", "enum": ["a", "1"]}},
            }},
        ),
    ],
)  # fmt: skip
async def test_json_output(
    fake_gemini: FakeGemini, response_format: dict[str, Any], expected: dict[str, Any]
) -> None:
    fake_gemini.push(Script(content='{"n": 1}'))
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client() as client:
            reply = await client.chat.completions.create(
                model="flash",
                messages=USER,  # type: ignore[arg-type]
                response_format=response_format,  # type: ignore[arg-type]
            )
    assert fake_gemini.requests[-1].json["generationConfig"] == expected
    assert json.loads(reply.choices[0].message.content or "") == {"n": 1}


async def test_n_is_candidate_count(fake_gemini: FakeGemini) -> None:
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client() as client:
            reply = await client.chat.completions.create(model="flash", messages=USER, n=2)  # type: ignore[arg-type]
    assert fake_gemini.requests[-1].json["generationConfig"] == {"candidateCount": 2}
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage is not None and reply.usage.completion_tokens == 12


@pytest.mark.parametrize("stream", [False, True])
async def test_safety_blocks_are_content_filter(
    fake_gemini: FakeGemini, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake_gemini.push(GeminiScript(block_reason="SAFETY"), GeminiScript(finish_reason="SAFETY"))
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client() as client:
            results = []
            for _ in range(2):
                if not stream:
                    reply = await client.chat.completions.create(model="flash", messages=USER)  # type: ignore[arg-type]
                    message = reply.choices[0].message
                    results.append(
                        (reply.choices[0].finish_reason, message.content, message.refusal)
                    )
                    continue
                chunks = [
                    c
                    async for c in await client.chat.completions.create(
                        model="flash",
                        messages=USER,
                        stream=True,  # type: ignore[arg-type]
                    )
                ]
                deltas = [c.choices[0].delta for c in chunks if c.choices]
                results.append((
                    [c.choices[0].finish_reason for c in chunks if c.choices][-1],
                    "".join(d.content or "" for d in deltas),
                    "".join(d.refusal or "" for d in deltas),
                ))  # fmt: skip
    assert (
        results[0][:2] == ("content_filter", "") and "blocked the prompt (SAFETY)" in results[0][2]
    )
    assert (
        results[1][:2] == ("content_filter", "") and "stopped the answer (SAFETY)" in results[1][2]
    )
    assert "Gemini blocked the prompt (SAFETY)" in caplog.text


async def test_text_completion(fake_gemini: FakeGemini) -> None:
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client() as client:
            whole = await client.completions.create(
                model="flash", prompt="def fib(n):", max_tokens=9
            )
            stream = await client.completions.create(
                model="flash", prompt="def fib(n):", stream=True
            )
            text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert fake_gemini.requests[0].json["contents"] == [
        {"role": "user", "parts": [{"text": "def fib(n):"}]}
    ]
    assert whole.object == "text_completion" and whole.choices[0].text == "Echo: def fib(n):"
    assert text == whole.choices[0].text


async def test_embeddings_one_and_many(fake_gemini: FakeGemini) -> None:
    config = gemini_model(fake_gemini, "embed", model="text-embedding-004")
    async with running_gateway(make_settings([config])) as gateway:
        async with gateway.client() as client:
            one = await client.embeddings.create(model="embed", input="hello", dimensions=4)
            many = await client.embeddings.create(model="embed", input=["hello", "world"])
    first, second = fake_gemini.requests
    assert first.path == "/v1beta/models/text-embedding-004:embedContent"
    assert first.json == {"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 4}
    assert second.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert [r["model"] for r in second.json["requests"]] == ["models/text-embedding-004"] * 2
    assert len(one.data[0].embedding) == 4 and len(many.data) == 2
    assert [d.index for d in many.data] == [0, 1]
    assert many.usage.prompt_tokens > 0  # estimated: Gemini does not report it


async def test_many_embeddings_go_in_batches_of_100(fake_gemini: FakeGemini) -> None:
    config = gemini_model(fake_gemini, "embed", model="text-embedding-004")
    texts = [f"text {i}" for i in range(150)]
    async with running_gateway(make_settings([config])) as gateway:
        async with gateway.client() as client:
            reply = await client.embeddings.create(model="embed", input=texts)
            single = await client.embeddings.create(model="embed", input="text 120")
    batches = [r.json["requests"] for r in fake_gemini.requests[:2]]
    assert [len(b) for b in batches] == [100, 50]
    sent = [r["content"]["parts"][0]["text"] for b in batches for r in b]
    assert sent == texts
    assert [d.index for d in reply.data] == list(range(150))
    assert reply.data[120].embedding == pytest.approx(single.data[0].embedding)


async def test_ollama_clients_reach_gemini(fake_gemini: FakeGemini) -> None:
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with aiohttp.ClientSession(headers=gateway.headers) as session:
            body = {"model": "flash", "messages": USER, "stream": False}
            async with session.post(gateway.url + "/api/chat", json=body) as response:
                reply = await response.json()
    assert response.status == 200
    assert reply["message"]["content"] == "Echo: why is the sky blue"
    assert fake_gemini.requests[-1].path.endswith(":generateContent")


async def test_anthropic_clients_reach_gemini_with_tools(fake_gemini: FakeGemini) -> None:
    import anthropic

    fake_gemini.push(Script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}]))
    tool = {
        "name": "get_weather",
        "description": "Weather in a city",
        "input_schema": WEATHER_TOOL["function"]["parameters"],
    }  # type: ignore[index]
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        client = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=gateway.admin_key)
        async with client:
            reply = await client.messages.create(
                model="flash", max_tokens=64, system="Be brief.", extra_body={"top_k": 5},
                messages=[{"role": "user", "content": "weather in Oslo?"}],
                tools=[tool],  # type: ignore[list-item]
            )  # fmt: skip
    sent = fake_gemini.requests[-1].json
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["generationConfig"] == {"maxOutputTokens": 64, "topK": 5}
    assert sent["tools"][0]["functionDeclarations"][0]["parameters"]["type"] == "OBJECT"
    (block,) = [b for b in reply.content if b.type == "tool_use"]
    assert block.name == "get_weather" and block.input == {"city": "Oslo"}
    assert reply.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("script", "client_status", "text"),
    [
        (Script(status=400, error_message="Invalid value at 'contents'"), 400, "INVALID_ARGUMENT"),
        (Script(status=500, error_message="An internal error has occurred."), 502, "INTERNAL"),
        (Script(status=403, error_message="Permission denied."), 502, "PERMISSION_DENIED"),
        (
            GeminiScript(status=400, error_reason="API_KEY_INVALID",
                         error_message=f"API key not valid: {KEY}"),
            502,
            "API key not valid: ***",
        ),
    ],
)  # fmt: skip
async def test_errors_are_mapped_and_the_key_never_leaks(
    fake_gemini: FakeGemini,
    script: Script,
    client_status: int,
    text: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_gemini.default = script
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client() as client:
            with pytest.raises(openai.APIStatusError) as error:
                await client.chat.completions.create(model="flash", messages=USER)  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as session:
            metrics = await (await session.get(gateway.url + "/metrics")).text()
            ready = await (await session.get(gateway.url + "/ready")).text()
    assert error.value.status_code == client_status
    assert text in error.value.message
    if client_status != 400:
        assert "answered" in caplog.text  # the failure is logged: scrubbed there too
    for seen in (str(error.value.body), metrics, ready, caplog.text):
        assert KEY not in seen and KEY[:8] not in seen
    if client_status == 400:
        assert len(fake_gemini.requests) == 1  # a rejected request is not retried


@pytest.mark.parametrize(
    "script",
    [
        Script(status=429, retry_after="7", error_message="Resource has been exhausted"),
        GeminiScript(status=429, retry_delay="7s", error_message="Quota exceeded"),
    ],
)
async def test_429_retry_delay_cools_the_deployment_down(
    fake_gemini: FakeGemini, script: Script
) -> None:
    fake_gemini.push(script)
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client(max_retries=0) as client:
            with pytest.raises(openai.RateLimitError) as error:
                await client.chat.completions.create(model="flash", messages=USER)  # type: ignore[arg-type]
            with pytest.raises(openai.APIStatusError) as cooling:
                await client.chat.completions.create(model="flash", messages=USER)  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as session:
            ready = await (await session.get(gateway.url + "/ready")).json()
    assert error.value.response.headers["retry-after"] == "7"
    assert "RESOURCE_EXHAUSTED" in error.value.message
    states = {d["name"]: d["state"] for d in ready["models"]["flash"]["deployments"]}
    assert states == {"flash": "cooling_down"}
    assert cooling.value.status_code == 503  # no deployment until the delay is over
    assert len(fake_gemini.requests) == 1


async def test_stream_error_event_ends_with_error_without_the_key(
    fake_gemini: FakeGemini, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_gemini.default = Script(error_after=2, error_message=f"backend crashed, key {KEY}")
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client() as client:
            stream = await client.chat.completions.create(
                model="flash",
                messages=USER,
                stream=True,  # type: ignore[arg-type]
            )
            with pytest.raises(openai.APIError, match="backend crashed") as error:
                async for _ in stream:
                    pass
    assert "key ***" in str(error.value)
    assert KEY not in str(error.value) and KEY[:8] not in caplog.text


async def test_stream_without_its_last_event_is_an_error(fake_gemini: FakeGemini) -> None:
    fake_gemini.default = GeminiScript(cut_short=True)
    async with running_gateway(make_settings([gemini_model(fake_gemini)])) as gateway:
        async with gateway.client() as client:
            stream = await client.chat.completions.create(
                model="flash",
                messages=USER,
                stream=True,  # type: ignore[arg-type]
            )
            received = []
            with pytest.raises(openai.APIError, match="before its finish reason"):
                async for chunk in stream:
                    received.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) == (
        "Echo: why is the sky blue"
    )
    assert all(c.choices[0].finish_reason is None for c in received if c.choices)


async def test_models_listed_across_pages() -> None:
    from relaygate.providers.gemini import GeminiProvider
    from relaygate.routing.catalog import new_session

    names = [f"gemini-test-{i}" for i in range(5)]
    async with FakeGemini(names, api_key=KEY, page_size=2) as fake:
        provider = GeminiProvider(fake.base_url, new_session(4))
        try:
            listed = await provider.list_models(KEY)
        finally:
            await provider.aclose()
    assert listed == names
    assert [r.query.get("pageToken") for r in fake.requests] == [None, "p2", "p4"]
    assert all(r.headers["x-goog-api-key"] == KEY and "key" not in r.query for r in fake.requests)
