"""Anthropic's Messages API behind the gateway: OpenAI's format translated to it and back.

The fake checks each request field by field (``fake.problems`` lists what it refused), so a
test that passes a request through also proves the request was well formed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from relaygate.settings import ConfigError
from tests.fakes.anthropic_server import FakeAnthropic, Reply
from tests.gateway import RunningGateway, make_settings, running_gateway

KEY = "sk-ant-api03-secretsecretsecretsecret-0123456789abcdef"
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


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=KEY) as server:
        yield server


def claude(*urls: str, name: str = "claude", **extra: Any) -> dict[str, Any]:
    deployments = [
        {
            "provider": "anthropic",
            "base_url": url,
            "api_key": KEY,
            "model": "claude-sonnet-4-5",
            **extra,
        }
        for url in urls
    ]
    return {"name": name, "deployments": deployments}


def sent(fake: FakeAnthropic) -> dict[str, Any]:
    body = fake.messages[-1].json
    assert isinstance(body, dict)
    return body


async def test_chat_translated_both_ways(fake: FakeAnthropic) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        *USER,
    ]
    async with running_gateway(make_settings([claude(fake.base_url)])) as gateway:
        async with gateway.client() as client:
            reply = await client.chat.completions.create(
                model="claude",
                messages=messages,  # type: ignore[arg-type]
                temperature=0.5,
                top_p=0.9,
                stop="\n\n",
                user="user-42",
                extra_body={"top_k": 40},
            )
    assert fake.problems == []
    request = fake.messages[-1]
    assert request.headers["x-api-key"] == KEY and "Authorization" not in request.headers
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert sent(fake) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,  # Anthropic requires it: the default
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "why is the sky blue"}]}
        ],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["\n\n"],
        "metadata": {"user_id": "user-42"},
    }
    assert reply.model == "claude" and reply.object == "chat.completion"
    assert reply.choices[0].message.content == "Echo: why is the sky blue"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2 + 3 + 5, 6)


async def test_max_tokens_from_client_and_configured_default(fake: FakeAnthropic) -> None:
    config = claude(fake.base_url, default_max_tokens=321, anthropic_version="2023-06-01")
    async with running_gateway(make_settings([config])) as gateway:
        async with gateway.client() as client:
            await client.chat.completions.create(model="claude", messages=USER)  # type: ignore[arg-type]
            assert sent(fake)["max_tokens"] == 321
            reply = await client.chat.completions.create(
                model="claude",
                messages=USER,  # type: ignore[arg-type]
                max_completion_tokens=3,
            )
    assert sent(fake)["max_tokens"] == 3
    assert reply.choices[0].message.content == "Echo: why is"
    assert reply.choices[0].finish_reason == "length"  # stop_reason max_tokens


async def test_configured_anthropic_version_is_sent() -> None:
    async with FakeAnthropic(api_key=KEY, version="2099-01-01") as fake:
        config = claude(fake.base_url, anthropic_version="2099-01-01")
        async with running_gateway(make_settings([config])) as gateway:
            async with gateway.client() as client:
                await client.chat.completions.create(model="claude", messages=USER)  # type: ignore[arg-type]
        assert fake.problems == [] and len(fake.messages) == 1


async def test_stream_events_become_chunks_with_usage(fake: FakeAnthropic) -> None:
    fake.push(Reply(text="The sky scatters blue light", cache_read=100, cache_creation=20))
    async with running_gateway(make_settings([claude(fake.base_url)])) as gateway:
        async with gateway.client() as client:
            stream = await client.chat.completions.create(
                model="claude",
                messages=USER,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
    assert sent(fake)["stream"] is True and fake.problems == []
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The sky scatters blue light"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 5
    assert chunks[-2].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == 5 + 100 + 20  # input + cache reads + cache writes
    assert last.usage.completion_tokens == 5
    details = last.usage.model_dump()["prompt_tokens_details"]
    assert details["cached_tokens"] == 100 and details["cache_write_tokens"] == 20
    assert len({c.id for c in chunks}) == 1 and all(c.model == "claude" for c in chunks)


async def test_usage_with_cache_counts(fake: FakeAnthropic) -> None:
    fake.push(Reply(text="ok", cache_read=1000, cache_creation=50))
    async with running_gateway(make_settings([claude(fake.base_url)])) as gateway:
        async with gateway.client() as client:
            reply = await client.chat.completions.create(model="claude", messages=USER)  # type: ignore[arg-type]
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 5 + 1000 + 50
    assert reply.usage.total_tokens == 5 + 1000 + 50 + 1
    details = reply.usage.model_dump()["prompt_tokens_details"]
    assert details["cached_tokens"] == 1000 and details["cache_write_tokens"] == 50


async def test_tools_round_trip(fake: FakeAnthropic) -> None:
    fake.push(
        Reply(
            text="",
            tool_uses=[{"id": "toolu_01", "name": "get_weather", "input": {"city": "Oslo"}}],
        ),
        Reply(text="It is sunny in Oslo"),
    )
    async with running_gateway(make_settings([claude(fake.base_url)])) as gateway:
        async with gateway.client() as client:
            first = await client.chat.completions.create(
                model="claude",
                messages=USER,  # type: ignore[arg-type]
                tools=[WEATHER_TOOL],  # type: ignore[list-item]
                tool_choice="required",
                parallel_tool_calls=False,
            )
            call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
            assert first.choices[0].finish_reason == "tool_calls"
            assert (call.id, call.function.name) == ("toolu_01", "get_weather")  # type: ignore[union-attr]
            assert json.loads(call.function.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]
            second = await client.chat.completions.create(
                model="claude",
                messages=[
                    *USER,
                    first.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": "toolu_01", "content": "sunny"},
                    {"role": "tool", "tool_call_id": "toolu_01", "content": "and warm"},
                    {"role": "user", "content": "so?"},
                ],  # type: ignore[list-item]
                tools=[WEATHER_TOOL],  # type: ignore[list-item]
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
            )
    assert fake.problems == []
    request = fake.messages[0].json
    assert request["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert request["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    follow = sent(fake)
    assert follow["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert follow["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                }
            ],
        },
        {  # tool results and the next user text merged into one user turn
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "and warm"},
                {"type": "text", "text": "so?"},
            ],
        },
    ]
    assert second.choices[0].message.content == "It is sunny in Oslo"


async def test_tool_call_stream(fake: FakeAnthropic) -> None:
    tool = {"id": "toolu_9", "name": "get_weather", "input": {"city": "Paris"}}
    fake.push(Reply(text="Let me look", tool_uses=[tool]))
    async with running_gateway(make_settings([claude(fake.base_url)])) as gateway:
        async with gateway.client() as client:
            stream = await client.chat.completions.create(
                model="claude",
                messages=USER,  # type: ignore[arg-type]
                tools=[WEATHER_TOOL],  # type: ignore[list-item]
                stream=True,
            )
            chunks = [c async for c in stream]
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].id == "toolu_9" and deltas[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert all(d.index == 0 for d in deltas)
    arguments = "".join(d.function.arguments or "" for d in deltas)  # type: ignore[union-attr]
    assert json.loads(arguments) == {"city": "Paris"} and len(deltas) == 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Let me look"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


async def test_images_as_base64_and_url(fake: FakeAnthropic) -> None:
    content = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    async with running_gateway(make_settings([claude(fake.base_url)])) as gateway:
        async with gateway.client() as client:
            await client.chat.completions.create(
                model="claude",
                messages=[{"role": "user", "content": content}],  # type: ignore[misc, list-item]
            )
    assert fake.problems == []
    assert sent(fake)["messages"][0]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"temperature": 1.5}, "temperature", "above 1"),
        ({"response_format": {"type": "json_object"}}, "response_format", "no JSON mode"),
        ({"n": 2}, "n", "one choice"),
    ],
)
async def test_what_anthropic_cannot_do_is_a_clear_400(
    fake: FakeAnthropic, extra: dict[str, Any], param: str, words: str
) -> None:
    async with running_gateway(make_settings([claude(fake.base_url)])) as gateway:
        async with aiohttp.ClientSession(headers=gateway.headers) as session:
            body = {"model": "claude", "messages": USER, **extra}
            async with session.post(gateway.url + "/v1/chat/completions", json=body) as answer:
                error = (await answer.json())["error"]
                status = answer.status
    assert status == 400 and error["param"] == param and words in error["message"]
    assert fake.messages == []  # nothing was sent upstream


async def test_embeddings_refused_clearly(fake: FakeAnthropic) -> None:
    async with running_gateway(make_settings([claude(fake.base_url)])) as gateway:
        async with gateway.client() as client:
            with pytest.raises(openai.BadRequestError) as error:
                await client.embeddings.create(model="claude", input="hello")
    assert "served by Anthropic, which has no embeddings API" in error.value.message
    assert fake.messages == []


@pytest.mark.parametrize(
    ("status", "client_status"), [(400, 400), (401, 502), (500, 502), (529, 502)]
)
async def test_upstream_errors_mapped_without_the_key(
    fake: FakeAnthropic, caplog: pytest.LogCaptureFixture, status: int, client_status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.default = Reply(status=status, error_message=f"bad things with key {KEY} happened")
    async with running_gateway(make_settings([claude(fake.base_url)])) as gateway:
        async with aiohttp.ClientSession(headers=gateway.headers) as session:
            body = {"model": "claude", "messages": USER}
            async with session.post(gateway.url + "/v1/chat/completions", json=body) as answer:
                text = await answer.text()
                assert answer.status == client_status
            async with session.get(gateway.url + "/admin/deployments") as admin:
                admin_text = await admin.text()
    assert f"answered {status}: bad things with key" in json.loads(text)["error"]["message"]
    for seen in (text, admin_text, caplog.text):
        assert KEY not in seen and KEY[:16] not in seen
    assert "bad things with key" in caplog.text  # the log did see the failure


async def test_wrong_key_is_refused_upstream(fake: FakeAnthropic) -> None:
    config = claude(fake.base_url)
    config["deployments"][0]["api_key"] = "sk-ant-wrong"
    async with running_gateway(make_settings([config])) as gateway:
        async with gateway.client() as client:
            with pytest.raises(openai.APIStatusError) as error:
                await client.chat.completions.create(model="claude", messages=USER)  # type: ignore[arg-type]
    assert error.value.status_code == 502 and "invalid x-api-key" in error.value.message
    assert "sk-ant-wrong" not in error.value.message


async def test_429_retry_after_cools_the_deployment_down(fake: FakeAnthropic) -> None:
    fake.push(Reply(status=429, retry_after="30", error_message="rate limited"))
    async with running_gateway(make_settings([claude(fake.base_url)])) as gateway:
        async with gateway.client() as client:
            with pytest.raises(openai.RateLimitError) as error:
                await client.chat.completions.create(model="claude", messages=USER)  # type: ignore[arg-type]
            assert error.value.response.headers["retry-after"] == "30"
            with pytest.raises(openai.APIStatusError) as second:
                await client.chat.completions.create(model="claude", messages=USER)  # type: ignore[arg-type]
        ready = await _ready(gateway)
    assert second.value.status_code == 503  # cooling down: not called again
    assert len(fake.messages) == 1
    assert ready["models"]["claude"]["deployments"][0]["state"] == "cooling_down"


async def test_529_overloaded_is_retried_on_a_second_deployment(fake: FakeAnthropic) -> None:
    async with FakeAnthropic(api_key=KEY) as other:
        fake.default = Reply(status=529, error_message="Overloaded")
        config = claude(fake.base_url, other.base_url)
        config["deployments"][0]["weight"] = 10**6  # the overloaded one is tried first
        async with running_gateway(make_settings([config])) as gateway:
            async with gateway.client() as client:
                reply = await client.chat.completions.create(model="claude", messages=USER)  # type: ignore[arg-type]
        assert reply.choices[0].message.content == "Echo: why is the sky blue"
        assert len(fake.messages) == 1 and len(other.messages) == 1


async def test_error_event_mid_stream_ends_the_stream_with_an_error(fake: FakeAnthropic) -> None:
    fake.push(Reply(text="one two three four", error_event_after=2, error_message=f"boom {KEY}"))
    async with running_gateway(make_settings([claude(fake.base_url)])) as gateway:
        async with aiohttp.ClientSession(headers=gateway.headers) as session:
            body = {"model": "claude", "messages": USER, "stream": True}
            async with session.post(gateway.url + "/v1/chat/completions", json=body) as answer:
                text = await answer.text()
    assert '"content":"one"' in text and "failed mid-stream: boom" in text
    assert KEY not in text and text.index('"content":"one"') < text.index("mid-stream")


async def test_stream_cut_before_message_stop_is_an_error(fake: FakeAnthropic) -> None:
    fake.push(Reply(text="one two three", cut_after=1))
    async with running_gateway(make_settings([claude(fake.base_url)])) as gateway:
        async with aiohttp.ClientSession(headers=gateway.headers) as session:
            body = {"model": "claude", "messages": USER, "stream": True}
            async with session.post(gateway.url + "/v1/chat/completions", json=body) as answer:
                text = await answer.text()
    assert "ended its stream before message_stop" in text


async def test_anthropic_inbound_to_anthropic_upstream(fake: FakeAnthropic) -> None:
    """/v1/messages in, canonical inside, the Messages API out, and back."""
    fake.push(
        Reply(
            text="", tool_uses=[{"id": "toolu_7", "name": "get_weather", "input": {"city": "Rome"}}]
        ),
        Reply(text="Sunny", cache_read=7),
    )
    async with running_gateway(make_settings([claude(fake.base_url)])) as gateway:
        client = anthropic.AsyncAnthropic(
            base_url=gateway.url, api_key=gateway.admin_key, max_retries=0, timeout=20
        )
        tools = [
            {
                "name": "get_weather",
                "description": "Weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ]
        first = await client.messages.create(
            model="claude",
            max_tokens=200,
            system="Be brief.",
            messages=[{"role": "user", "content": "weather in Rome?"}],
            tools=tools,  # type: ignore[arg-type]
            extra_body={"top_k": 5},
        )
        assert first.stop_reason == "tool_use"
        use = first.content[0]
        assert use.type == "tool_use" and use.id == "toolu_7" and use.input == {"city": "Rome"}
        second = await client.messages.create(
            model="claude",
            max_tokens=200,
            messages=[
                {"role": "user", "content": "weather in Rome?"},
                {"role": "assistant", "content": [use.model_dump()]},  # type: ignore[list-item]
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_7", "content": "sun"}
                    ],
                },
            ],
            tools=tools,  # type: ignore[arg-type]
        )
        await client.close()
    assert fake.problems == []
    assert fake.messages[0].json["top_k"] == 5 and fake.messages[0].json["max_tokens"] == 200
    assert fake.messages[0].json["system"] == "Be brief."
    assert sent(fake)["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_7", "content": "sun"}
    ]
    assert second.content[0].type == "text" and second.content[0].text == "Sunny"
    assert second.usage.cache_read_input_tokens == 7


async def test_models_listing_follows_pages(fake: FakeAnthropic) -> None:
    from relaygate.providers.anthropic import AnthropicProvider
    from relaygate.routing.catalog import new_session

    fake.models = [f"claude-{n}" for n in range(2500)]
    provider = AnthropicProvider(fake.base_url, new_session(4))
    try:
        names = await provider.list_models(KEY)
    finally:
        await provider.aclose()
    assert names == fake.models
    assert len([r for r in fake.requests if r.path == "/v1/models"]) == 3


def test_default_base_url_and_provider_only_fields() -> None:
    settings = make_settings(
        [{"name": "c", "deployments": [{"provider": "anthropic", "api_key": "k"}]}]
    )
    assert settings.models[0].deployments[0].base_url == "https://api.anthropic.com"
    with pytest.raises(ConfigError, match="default_max_tokens: only provider 'anthropic'"):
        make_settings(
            [
                {
                    "name": "o",
                    "deployments": [
                        {"provider": "openai", "base_url": "http://x", "default_max_tokens": 5}
                    ],
                }
            ]
        )


async def _ready(gateway: RunningGateway) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(gateway.url + "/ready") as r:
        body: dict[str, Any] = await r.json()
        return body


async def test_anthropic_inbound_stream_and_stop_sequence_round_trip(fake: FakeAnthropic) -> None:
    tool = {"id": "toolu_3", "name": "get_weather", "input": {"city": "Lima"}}
    fake.push(
        Reply(text="Checking now", tool_uses=[tool]),
        Reply(text="done", stop_reason="stop_sequence", stop_sequence="END"),
    )
    async with running_gateway(make_settings([claude(fake.base_url)])) as gateway:
        client = anthropic.AsyncAnthropic(
            base_url=gateway.url, api_key=gateway.admin_key, max_retries=0, timeout=20
        )
        async with client.messages.stream(
            model="claude",
            max_tokens=100,
            messages=[{"role": "user", "content": "weather in Lima?"}],
            tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
        ) as stream:
            streamed = await stream.get_final_message()
        stopped = await client.messages.create(
            model="claude",
            max_tokens=100,
            messages=[{"role": "user", "content": "say done"}],
            stop_sequences=["END"],
        )
        await client.close()
    assert fake.problems == [] and fake.messages[0].json["stream"] is True
    assert [b.type for b in streamed.content] == ["text", "tool_use"]
    assert streamed.content[0].text == "Checking now"  # type: ignore[union-attr]
    assert streamed.content[1].input == {"city": "Lima"}  # type: ignore[union-attr]
    assert streamed.stop_reason == "tool_use"
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "END")
    assert sent(fake)["stop_sequences"] == ["END"]
