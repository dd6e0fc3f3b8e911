"""The Anthropic Messages API, end to end: the official ``anthropic`` client, unchanged,
against the real gateway in front of the mock model and of scripted OpenAI-compatible and
Ollama upstreams (which record what reached them)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from relaygate.api.openapi import AnthropicError
from tests.conftest import MOCK, closed_port_url
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.integration.test_usage import rows
from tests.keys import new_key

HELLO = [{"role": "user", "content": "hello there"}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
SAMPLING = {"temperature": 0.3, "top_p": 0.8, "top_k": 20}
EVENT_ORDER = ["message_start", "ping", "content_block_start"]


def client(
    gateway: RunningGateway, key: str | None = None, **kwargs: Any
) -> anthropic.AsyncAnthropic:
    """The official client as its users make it: base URL and key, nothing else."""
    kwargs.setdefault("api_key", key or gateway.admin_key)
    return anthropic.AsyncAnthropic(base_url=gateway.url, max_retries=0, timeout=20, **kwargs)


async def post_raw(
    gateway: RunningGateway,
    body: dict[str, Any] | bytes,
    *,
    headers: dict[str, str] | None = None,
    path: str = "/v1/messages",
    method: str = "POST",
) -> tuple[int, CIMultiDict[str], bytes]:
    sent = {"x-api-key": gateway.admin_key, "content-type": "application/json", **(headers or {})}
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    async with aiohttp.ClientSession() as session:
        async with session.request(method, gateway.url + path, data=data, headers=sent) as response:
            return response.status, response.headers.copy(), await response.read()


def events(raw: bytes) -> list[dict[str, Any]]:
    """A raw Anthropic SSE body as its events' data; each event is named after its type."""
    out = []
    for block in raw.decode().strip().split("\n\n"):
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == "event: " + event["type"]
        out.append(event)
    return out


def assert_error_shape(body: bytes | object, error_type: str) -> dict[str, Any]:
    found = json.loads(body) if isinstance(body, bytes) else body
    assert isinstance(found, dict)
    assert found["type"] == "error" and set(found["error"]) == {"type", "message"}, found
    assert found["error"]["type"] == error_type, found
    assert "Traceback" not in found["error"]["message"]
    return found


def openai_model(fake: FakeOpenAI, name: str = "up") -> dict[str, Any]:
    return {"name": name, "deployments": [{"provider": "openai", "base_url": fake.base_url}]}


def ollama_model(fake: FakeOllama, name: str = "local") -> dict[str, Any]:
    deployment = {"provider": "ollama", "base_url": fake.base_url, "model": "llama3.2:1b"}
    return {"name": name, "deployments": [deployment]}


@pytest.fixture
async def upstreams(
    fake_openai: FakeOpenAI, fake_ollama: FakeOllama
) -> AsyncIterator[RunningGateway]:
    """A gateway with the mock model, "up" (OpenAI-compatible) and "local" (Ollama)."""
    models = [*MOCK, openai_model(fake_openai), ollama_model(fake_ollama)]
    async with running_gateway(make_settings(models)) as gateway:
        yield gateway


# -- success, every kind of upstream ---------------------------------------------------------


@pytest.mark.parametrize("model", ["mock", "up", "local"])
async def test_complete_and_stream_agree_on_every_kind_of_upstream(
    upstreams: RunningGateway, model: str
) -> None:
    async with client(upstreams) as c:
        message = await c.messages.create(model=model, max_tokens=100, messages=HELLO)  # type: ignore[arg-type]
        async with c.messages.stream(model=model, max_tokens=100, messages=HELLO) as stream:  # type: ignore[arg-type]
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    assert message.type == "message" and message.role == "assistant" and message.model == model
    assert message.id.startswith("msg_") and message.stop_reason == "end_turn"
    (block,) = message.content
    assert block.type == "text" and "hello there" in block.text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert final.model == model and final.stop_reason == "end_turn"
    assert [b.model_dump() for b in final.content] == [
        {"type": "text", "text": text, "citations": None}
    ]
    assert text == block.text
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        message.usage.input_tokens, message.usage.output_tokens,
    )  # fmt: skip


async def test_raw_stream_has_anthropics_event_sequence(mock_gateway: RunningGateway) -> None:
    async with client(mock_gateway) as c:
        stream = await c.messages.create(model="mock", max_tokens=50, messages=HELLO, stream=True)  # type: ignore[arg-type]
        seen = [event async for event in stream]
    types = [e.type for e in seen]
    assert types[:3] == ["message_start", "content_block_start", "content_block_delta"] or (
        types[:3] == EVENT_ORDER
    )
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(types[3:-3]) == {"content_block_delta"}
    deltas = [e.delta.text for e in seen if e.type == "content_block_delta"]  # type: ignore[union-attr]
    assert "hello there" in "".join(deltas)
    last = seen[-2]
    assert last.type == "message_delta" and last.delta.stop_reason == "end_turn"
    assert last.usage.output_tokens == len("".join(deltas).split())
    # on the wire: a ping right after message_start, as Anthropic sends it
    status, headers, raw = await post_raw(
        mock_gateway, {"model": "mock", "max_tokens": 50, "messages": HELLO, "stream": True}
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert [e["type"] for e in events(raw)][:3] == EVENT_ORDER


# -- what reaches the upstream ---------------------------------------------------------------


async def test_system_and_sampling_fields_reach_an_openai_upstream(
    upstreams: RunningGateway, fake_openai: FakeOpenAI
) -> None:
    async with client(upstreams) as c:
        await c.messages.create(
            model="up",
            max_tokens=64,
            system="You are terse.",
            messages=HELLO,  # type: ignore[arg-type]
            stop_sequences=["\n\nHuman:", "END"],
            metadata={"user_id": "user-42"},
            extra_body=SAMPLING,  # this SDK has no parameters for them; older ones had
        )
        await c.messages.create(
            model="up",
            max_tokens=64,
            system=[{"type": "text", "text": "First rule."}, {"type": "text", "text": "Second."}],
            messages=HELLO,  # type: ignore[arg-type]
        )
    first, second = (r.json for r in fake_openai.requests if r.path.endswith("/chat/completions"))
    assert first["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hello there"},
    ]
    assert first["stop"] == ["\n\nHuman:", "END"] and first["max_tokens"] == 64
    assert (first["temperature"], first["top_p"], first["top_k"]) == (0.3, 0.8, 20)
    assert first["user"] == "user-42"
    assert second["messages"][0] == {"role": "system", "content": "First rule.\nSecond."}


async def test_sampling_fields_and_images_reach_an_ollama_upstream(
    upstreams: RunningGateway, fake_ollama: FakeOllama
) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    async with client(upstreams) as c:
        await c.messages.create(
            model="local",
            max_tokens=64,
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "what is this"}, image]}
            ],  # type: ignore[list-item]
            stop_sequences=["END"],
            extra_body=SAMPLING,
        )
    sent = fake_ollama.requests[-1].json
    assert sent["options"] == {
        "temperature": 0.3, "top_p": 0.8, "top_k": 20, "num_predict": 64, "stop": ["END"],
    }  # fmt: skip
    assert sent["messages"] == [{"role": "user", "content": "what is this", "images": [PNG]}]


async def test_a_base64_image_reaches_an_openai_upstream_as_an_image_part(
    upstreams: RunningGateway, fake_openai: FakeOpenAI
) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    async with client(upstreams) as c:
        await c.messages.create(
            model="up",
            max_tokens=64,
            messages=[
                {"role": "user", "content": [image, {"type": "text", "text": "what is this"}]}
            ],  # type: ignore[list-item]
        )
    (message,) = fake_openai.requests[-1].json["messages"]
    assert message["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "what is this"},
    ]


# -- tools -------------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
async def test_tool_use_and_tool_result_round_trip(
    upstreams: RunningGateway, fake_openai: FakeOpenAI, streamed: bool
) -> None:
    fake_openai.push(Script(tool_calls=[{"id": "call_7", "name": "get_weather",
                                         "arguments": {"city": "Paris"}}]))  # fmt: skip
    ask = [{"role": "user", "content": "weather in Paris?"}]
    async with client(upstreams) as c:
        if streamed:
            async with c.messages.stream(
                model="up",
                max_tokens=100,
                messages=ask,
                tools=[WEATHER],  # type: ignore[arg-type, list-item]
            ) as stream:
                asked = await stream.get_final_message()
        else:
            asked = await c.messages.create(
                model="up", max_tokens=100, messages=ask, tools=[WEATHER],  # type: ignore[arg-type, list-item]
                tool_choice={"type": "auto"},
            )  # fmt: skip
        (use,) = asked.content
        assert use.type == "tool_use"
        assert (use.id, use.name, use.input) == ("call_7", "get_weather", {"city": "Paris"})
        assert asked.stop_reason == "tool_use"
        result = {"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees, sunny"}
        answered = await c.messages.create(
            model="up",
            max_tokens=100,
            tools=[WEATHER],  # type: ignore[list-item]
            messages=[
                *ask,  # type: ignore[list-item]
                {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},  # type: ignore[list-item]
                {"role": "user", "content": [result]},  # type: ignore[list-item]
            ],
        )
    first, second = (r.json for r in fake_openai.requests if r.path.endswith("/chat/completions"))
    assert first["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": WEATHER["input_schema"]}}]  # fmt: skip
    assert second["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_7", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_7", "content": "18 degrees, sunny"},
    ]  # fmt: skip
    assert answered.stop_reason == "end_turn" and answered.content[0].type == "text"


# -- errors, each in Anthropic's shape ---------------------------------------------------------


async def test_max_tokens_is_required(mock_gateway: RunningGateway) -> None:
    async with client(mock_gateway) as c:
        with pytest.raises(anthropic.BadRequestError) as error:
            await c.post("/v1/messages", body={"model": "mock", "messages": HELLO}, cast_to=object)
    assert error.value.status_code == 400
    body = assert_error_shape(error.value.body, "invalid_request_error")
    assert body["error"]["message"] == "max_tokens: Field required"


async def test_each_error_class_in_its_own_shape(fake_openai: FakeOpenAI) -> None:
    models = [
        *MOCK,
        openai_model(fake_openai),
        {"name": "down", "deployments": [{"provider": "openai", "base_url": closed_port_url()}]},
    ]
    tiers = {"tiny": {"requests_per_hour": 1}}
    settings_ = make_settings(models, tiers=tiers, max_body_bytes=4096)
    async with running_gateway(settings_) as gateway:
        _, tiny = await new_key(gateway, tier="tiny")
        ask: dict[str, Any] = {"max_tokens": 10, "messages": HELLO}
        raised: dict[type[Exception], anthropic.APIStatusError] = {}

        async def expect(
            kind: type[anthropic.APIStatusError], key: str | None = None, **kw: Any
        ) -> None:
            async with client(gateway, key) as c:
                with pytest.raises(kind) as error:
                    await c.messages.create(**{"model": "mock", **ask, **kw})
            raised[kind] = error.value

        await expect(anthropic.AuthenticationError, "rg_not_a_key")
        await expect(anthropic.NotFoundError, model="no-such-model")
        async with client(gateway, tiny) as c:
            await c.messages.create(model="mock", **ask)
        await expect(anthropic.RateLimitError, tiny)
        await expect(
            anthropic.RequestTooLargeError, messages=[{"role": "user", "content": "x" * 8000}]
        )
        fake_openai.push(Script(status=500, error_message="the GPU caught fire"))
        await expect(anthropic.InternalServerError, model="up")
        await expect(anthropic.ServiceUnavailableError, model="down")
    expected = {
        anthropic.AuthenticationError: (401, "authentication_error"),
        anthropic.NotFoundError: (404, "not_found_error"),
        anthropic.RateLimitError: (429, "rate_limit_error"),
        anthropic.RequestTooLargeError: (413, "request_too_large"),
        anthropic.InternalServerError: (502, "api_error"),
        anthropic.ServiceUnavailableError: (503, "overloaded_error"),
    }
    for kind, (status, error_type) in expected.items():
        assert raised[kind].status_code == status, kind
        assert_error_shape(raised[kind].body, error_type)
    assert "retry-after" in raised[anthropic.RateLimitError].response.headers


async def test_unknown_paths_methods_and_content_types_in_anthropics_shape(
    mock_gateway: RunningGateway,
) -> None:
    ask = {"model": "mock", "max_tokens": 10, "messages": HELLO}
    wrong_method = await post_raw(mock_gateway, b"", method="GET")
    unknown = await post_raw(mock_gateway, ask, path="/v1/messages/batches")
    not_json = await post_raw(mock_gateway, ask, headers={"content-type": "text/plain"})
    count_get = await post_raw(mock_gateway, b"", path="/v1/messages/count_tokens", method="GET")
    chat_unknown = await post_raw(mock_gateway, b"", path="/v1/nothing")
    assert wrong_method[0] == 405 and count_get[0] == 405
    assert_error_shape(wrong_method[2], "invalid_request_error")
    assert_error_shape(count_get[2], "invalid_request_error")
    assert unknown[0] == 404 and b"/v1/messages/count_tokens" in unknown[2]
    assert_error_shape(unknown[2], "not_found_error")
    assert not_json[0] == 415
    assert_error_shape(not_json[2], "invalid_request_error")
    msgspec.json.decode(unknown[2], type=AnthropicError)  # the shape /openapi.json documents
    assert chat_unknown[0] == 404 and json.loads(chat_unknown[2])["error"]["type"] != "error"


async def test_a_stream_that_fails_midway_ends_with_an_error_event(
    upstreams: RunningGateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.push(Script(content="one two three four", error_after=2), Script(error_after=1))
    body = {"model": "up", "max_tokens": 50, "messages": HELLO, "stream": True}
    status, _, raw = await post_raw(upstreams, body)
    seen = events(raw)
    assert status == 200 and [e["type"] for e in seen][:3] == EVENT_ORDER
    assert seen[-1]["type"] == "error" and seen[-1]["error"]["type"] == "api_error"
    assert "message_stop" not in [e["type"] for e in seen]
    async with client(upstreams) as c:
        with pytest.raises(anthropic.APIStatusError):
            async with c.messages.stream(model="up", max_tokens=50, messages=HELLO) as stream:  # type: ignore[arg-type]
                await stream.get_final_message()


# -- credentials ---------------------------------------------------------------------------------


async def test_x_api_key_and_bearer_both_accepted_and_version_optional(
    mock_gateway: RunningGateway,
) -> None:
    async with client(mock_gateway) as by_header:
        one = await by_header.messages.create(model="mock", max_tokens=10, messages=HELLO)  # type: ignore[arg-type]
    async with client(mock_gateway, api_key=None, auth_token=mock_gateway.admin_key) as bearer:
        two = await bearer.messages.create(model="mock", max_tokens=10, messages=HELLO)  # type: ignore[arg-type]
    ask = {"model": "mock", "max_tokens": 10, "messages": HELLO}
    bare = await post_raw(mock_gateway, ask)  # no anthropic-version header
    versioned = await post_raw(mock_gateway, ask, headers={"anthropic-version": "1999-01-01"})
    assert one.content[0].text == two.content[0].text  # type: ignore[union-attr]
    assert bare[0] == versioned[0] == 200
    assert json.loads(bare[2])["content"] == json.loads(versioned[2])["content"]


# -- cache, usage, count_tokens ------------------------------------------------------------------


async def test_cache_hits_replay_as_anthropic_answers_and_events() -> None:
    models = [{"name": "mock", "deployments": [{"provider": "mock", "chunk_delay": 0}]}]
    async with running_gateway(make_settings(models, cache={"enabled": True})) as gateway:
        ask = {"model": "mock", "max_tokens": 30, "messages": HELLO}
        first = await post_raw(gateway, ask)
        second = await post_raw(gateway, ask)
        streamed = {**ask, "stream": True}
        live = await post_raw(gateway, streamed)
        replayed = await post_raw(gateway, streamed)
        async with client(gateway) as c:
            raw = await c.messages.with_raw_response.create(**ask)  # type: ignore[arg-type]
            async with c.messages.stream(**ask) as stream:  # type: ignore[arg-type]
                final = await stream.get_final_message()
    assert first[1]["x-cache"] == "MISS" and second[1]["x-cache"] == "HIT"
    hit, miss = json.loads(second[2]), json.loads(first[2])
    assert hit["content"] == miss["content"] and hit["usage"] == miss["usage"]
    assert live[1]["x-cache"] in ("MISS", "HIT") and replayed[1]["x-cache"] == "HIT"
    assert [e["type"] for e in events(replayed[2])][:3] == EVENT_ORDER
    assert raw.headers["x-cache"] == "HIT"
    assert final.content[0].text == miss["content"][0]["text"]  # type: ignore[union-attr]
    assert final.usage.output_tokens == miss["usage"]["output_tokens"]


async def test_usage_recorded_under_api_anthropic(mock_gateway: RunningGateway) -> None:
    async with client(mock_gateway) as c:
        message = await c.messages.create(model="mock", max_tokens=30, messages=HELLO)  # type: ignore[arg-type]
        async with c.messages.stream(model="mock", max_tokens=30, messages=HELLO) as stream:  # type: ignore[arg-type]
            await stream.get_final_message()
    found = await rows(mock_gateway, 2)
    assert [(r.api, r.endpoint, r.http_status, r.model) for r in found] == [
        ("anthropic", "/v1/messages", 200, "mock")
    ] * 2
    for row in found:
        assert row.prompt_tokens == message.usage.input_tokens
        assert row.completion_tokens == message.usage.output_tokens
        assert not row.tokens_estimated
    mock_gateway.state.metrics.flush()  # the request tallies, as render() does
    registry = mock_gateway.state.metrics.registry
    labels = {"model": "mock", "api": "anthropic", "status": "200"}
    assert registry.get_sample_value("relaygate_requests_total", labels) == 2


async def test_count_tokens(mock_gateway: RunningGateway) -> None:
    async with client(mock_gateway) as c:
        short = await c.messages.count_tokens(model="mock", messages=HELLO)  # type: ignore[arg-type]
        longer = await c.messages.count_tokens(
            model="mock",
            system="Be brief.",
            messages=HELLO,
            tools=[WEATHER],  # type: ignore[arg-type, list-item]
        )
        with pytest.raises(anthropic.NotFoundError) as unknown:
            await c.messages.count_tokens(model="nope", messages=HELLO)  # type: ignore[arg-type]
        with pytest.raises(anthropic.BadRequestError) as bad:
            await c.messages.count_tokens(model="mock", messages=[])
    async with client(mock_gateway, "rg_wrong") as c:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await c.messages.count_tokens(model="mock", messages=HELLO)  # type: ignore[arg-type]
    assert 0 < short.input_tokens < longer.input_tokens
    assert_error_shape(unknown.value.body, "not_found_error")
    assert_error_shape(bad.value.body, "invalid_request_error")
    assert_error_shape(refused.value.body, "authentication_error")


# -- bad input: generated garbage never gets a 5xx, and always Anthropic's shape ----------------

JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)  # fmt: skip
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
VALID: dict[str, Any] = {
    "model": "mock",
    "max_tokens": 20,
    "system": [{"type": "text", "text": "s"}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]},
    ],
    "tools": [{"name": "f", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "auto"},
    "metadata": {"user_id": "u"},
    "stream": False,
}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in ``value`` a wrong value can go (its own root excluded)."""
    found: list[tuple[Any, ...]] = []
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in items:
        found.append((*prefix, key))
        found += paths(child, (*prefix, key))
    return found


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    copy = json.loads(json.dumps(value))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return copy


RAW_GARBAGE = st.sampled_from([
    b'{"model": "mock", "max_tokens": NaN, "messages": []}',
    b'{"model": "mock", "max_tokens": 10, "temperature": Infinity, "messages": []}',
    b'{"model": "mock", "max_tokens": -Infinity}',
    b'{"model": "mock", "max_tokens": 10, "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "mock", "max_tokens": 10, "system": "\\udfff\\ud800", "messages": []}',
    b'{"model": "mock", "messages": [', b"[]", b"null", b"", b"\xff\xfe", b"[" * 50_000,
])  # fmt: skip


async def test_generated_garbage_never_gets_a_5xx_and_errors_keep_anthropics_shape(
    mock_gateway: RunningGateway,
) -> None:
    loop = asyncio.get_running_loop()
    statuses: list[int] = []

    async def exercise(body: bytes, path: str) -> None:
        status, _, raw = await post_raw(mock_gateway, body, path=path)
        statuses.append(status)
        assert status < 500, raw
        if status != 200:
            assert_error_shape(raw, "invalid_request_error" if status == 400 else "not_found_error")

    @settings(
        max_examples=120,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        body=st.one_of(
            st.builds(replaced, st.just(VALID), st.sampled_from(paths(VALID)), JSON_VALUES).map(
                lambda b: json.dumps(b).encode()
            ),
            JSON_VALUES.map(lambda b: json.dumps(b).encode()),
            RAW_GARBAGE,
            st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
        ),
        path=st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]),
    )
    def one_example(body: bytes, path: str) -> None:
        asyncio.run_coroutine_threadsafe(exercise(body, path), loop).result(50)

    # Both outcomes exercised for certain, not left to what hypothesis happens to draw:
    # the valid body is answered and a broken one refused, on both routes.
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        await exercise(json.dumps(VALID).encode(), path)
        await exercise(b'{"model": "mock", "messages": [', path)
    assert statuses == [200, 400, 200, 400]
    await asyncio.to_thread(one_example)
