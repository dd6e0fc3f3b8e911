"""The OpenAI Responses API end to end: the official ``openai`` client's ``client.responses``
against the real gateway, over the mock model and a scripted OpenAI-compatible upstream.

Creating (string and item input, instructions, function tools and their outputs),
streaming with typed events, stored responses (previous_response_id, GET, DELETE,
``store: false``, one tenant never reading another's), the usage record, cache
replay, every error class in OpenAI's shape, and garbage bodies never a 5xx.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import closed_port_url
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.integration.test_usage import rows
from tests.keys import new_key

JSON = dict[str, Any]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def gateway_settings(fake: FakeOpenAI, **overrides: Any):  # type: ignore[no-untyped-def]
    models = [
        {"name": "mock", "deployments": [{"provider": "mock", "chunk_delay": 0}]},
        {"name": "up", "deployments": [{"provider": "openai", "base_url": fake.base_url}]},
        {"name": "down", "deployments": [{"provider": "openai", "base_url": closed_port_url()}]},
    ]
    tiers = {"tiny": {"requests_per_hour": 1}}
    return make_settings(models, tiers=tiers, **overrides)


@pytest.fixture
async def gateway(fake_openai: FakeOpenAI) -> AsyncIterator[RunningGateway]:
    async with running_gateway(gateway_settings(fake_openai)) as running:
        yield running


def upstream_messages(fake: FakeOpenAI) -> list[JSON]:
    """The chat messages of the last request the upstream received."""
    chats = [r for r in fake.requests if r.path.endswith("/chat/completions")]
    messages: list[JSON] = chats[-1].json["messages"]
    return messages


# -- creating ------------------------------------------------------------------------


async def test_string_input_and_instructions(
    gateway: RunningGateway, fake_openai: FakeOpenAI
) -> None:
    async with gateway.client() as client:
        raw = await client.responses.with_raw_response.create(
            model="up", input="hello there", instructions="Answer briefly."
        )
    response = raw.parse()
    assert upstream_messages(fake_openai) == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "hello there"},
    ]
    assert response.id.startswith("resp_") and raw.headers["x-request-id"] in response.id
    assert response.object == "response" and response.status == "completed"
    assert response.model == "up" and response.instructions == "Answer briefly."
    assert response.output_text == "Echo: hello there"
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    assert response.usage is not None
    assert response.usage.output_tokens == 3  # the fake counts words
    assert response.usage.total_tokens == response.usage.input_tokens + 3


async def test_item_input_on_the_mock_model(gateway: RunningGateway) -> None:
    items: Any = [
        {"role": "developer", "content": "Be kind."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": [{"type": "input_text", "text": "say something"}]},
    ]
    async with gateway.client() as client:
        response = await client.responses.create(model="mock", input=items)
    assert response.status == "completed" and response.model == "mock"
    assert response.output_text.endswith("You said: say something")
    assert response.usage is not None and response.usage.output_tokens > 0


async def test_function_call_and_its_output_round_trip(
    gateway: RunningGateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.push(Script(tool_calls=[{"id": "call_w1", "name": "get_weather",
                                         "arguments": {"city": "Paris"}}]))  # fmt: skip
    async with gateway.client() as client:
        first = await client.responses.create(
            model="up",
            input="Weather in Paris?",
            tools=[WEATHER],  # type: ignore[list-item]
        )
        (call,) = first.output
        assert call.type == "function_call"
        assert (call.name, call.call_id, json.loads(call.arguments)) == (
            "get_weather", "call_w1", {"city": "Paris"}
        )  # fmt: skip
        assert fake_openai.requests[-1].json["tools"] == [
            {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
        ]
        # the client sends the call back with its output, as items (no stored state used)
        second = await client.responses.create(
            model="up",
            input=[
                {"role": "user", "content": "Weather in Paris?"},
                call.model_dump(exclude_none=True),  # type: ignore[list-item]
                {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
            ],
            tools=[WEATHER],  # type: ignore[list-item]
        )
        sent = upstream_messages(fake_openai)
        # ...or with previous_response_id: only the output is sent again
        third = await client.responses.create(
            model="up",
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": "call_w1", "output": "sunny"}],
            tools=[WEATHER],  # type: ignore[list-item]
        )
    expected = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_w1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }]},
        {"role": "tool", "tool_call_id": "call_w1", "content": "sunny"},
    ]  # fmt: skip
    assert sent == expected
    assert upstream_messages(fake_openai) == expected
    assert second.output_text == third.output_text == "Echo: Weather in Paris?"


# -- streaming -----------------------------------------------------------------------


async def test_stream_typed_events_and_usage(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        events = [e async for e in await client.responses.create(
            model="mock", input="stream this please", stream=True
        )]  # fmt: skip
        whole = await client.responses.create(model="mock", input="stream this please")
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    completed = events[-1].response  # type: ignore[union-attr]
    assert deltas == completed.output_text == whole.output_text
    assert completed.status == "completed" and completed.usage is not None
    assert completed.usage.output_tokens == len(deltas.split())


async def test_stream_helper_with_a_tool_call(
    gateway: RunningGateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.push(Script(tool_calls=[{"id": "call_s", "name": "get_weather",
                                         "arguments": {"city": "Oslo"}}]))  # fmt: skip
    async with gateway.client() as client:
        async with client.responses.stream(
            model="up",
            input="Weather in Oslo?",
            tools=[WEATHER],  # type: ignore[list-item]
        ) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    (call,) = final.output
    assert call.type == "function_call" and call.call_id == "call_s"
    assert json.loads(call.arguments) == {"city": "Oslo"}
    assert final.usage is not None and final.usage.input_tokens > 0


async def test_a_stream_failing_midway_ends_with_error_and_response_failed(
    gateway: RunningGateway, fake_openai: FakeOpenAI
) -> None:
    fake_openai.push(Script(content="one two three four five", error_after=3))
    async with gateway.client() as client:
        stream = await client.responses.create(model="up", input="go", stream=True)
        events = [e async for e in stream]
        with pytest.raises(openai.NotFoundError):  # a failed answer is not stored
            await client.responses.retrieve(events[0].response.id)  # type: ignore[union-attr]
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and "response.output_text.delta" in kinds
    assert kinds[-2:] == ["error", "response.failed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.status == "failed"  # type: ignore[union-attr]


# -- stored responses ----------------------------------------------------------------


async def test_previous_response_id_get_and_delete(
    fake_openai: FakeOpenAI, database_url: str
) -> None:
    """On SQLite and PostgreSQL: a conversation continued, read back, deleted."""
    settings = gateway_settings(fake_openai, database_url=database_url)
    async with running_gateway(settings) as gateway, gateway.client() as client:
        first = await client.responses.create(model="up", input="My name is Ada.")
        second = await client.responses.create(
            model="up", input="What is my name?", previous_response_id=first.id
        )
        assert upstream_messages(fake_openai) == [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Echo: My name is Ada."},
            {"role": "user", "content": "What is my name?"},
        ]
        third = await client.responses.create(
            model="up", input="And again?", previous_response_id=second.id,
            instructions="Not carried over.",
        )  # fmt: skip
        assert [m["content"] for m in upstream_messages(fake_openai)] == [
            "Not carried over.", "My name is Ada.", "Echo: My name is Ada.",
            "What is my name?", "Echo: What is my name?", "And again?",
        ]  # fmt: skip
        read = await client.responses.retrieve(third.id)
        assert read.model_dump() == third.model_dump()
        assert read.previous_response_id == second.id

        deleted = await client.responses.with_raw_response.delete(second.id)
        assert deleted.http_response.json() == {
            "id": second.id, "object": "response.deleted", "deleted": True
        }  # fmt: skip
        with pytest.raises(openai.NotFoundError) as gone:
            await client.responses.retrieve(second.id)
        with pytest.raises(openai.NotFoundError) as again:
            await client.responses.delete(second.id)
        with pytest.raises(openai.NotFoundError) as previous:
            await client.responses.create(model="up", input="x", previous_response_id=second.id)
        # the chain stops at the deleted response: the third keeps only its own turn
        await client.responses.create(model="up", input="Last.", previous_response_id=third.id)
        assert [m["content"] for m in upstream_messages(fake_openai)] == [
            "And again?",
            "Echo: And again?",
            "Last.",
        ]
    for error in (gone.value, again.value):
        assert error.body == {
            "message": f"Response with id '{second.id}' not found.",
            "type": "invalid_request_error", "param": "response_id", "code": "not_found",
        }  # fmt: skip
    assert previous.value.code == "previous_response_not_found"
    assert previous.value.param == "previous_response_id"


async def test_store_false_is_not_retrievable(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        kept = await client.responses.create(model="mock", input="keep me")
        unkept = await client.responses.create(model="mock", input="forget me", store=False)
        assert unkept.to_dict()["store"] is False and kept.to_dict()["store"] is True
        assert (await client.responses.retrieve(kept.id)).id == kept.id
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(unkept.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="mock", input="x", previous_response_id=unkept.id)


async def test_storage_turned_off_stores_nothing(fake_openai: FakeOpenAI) -> None:
    settings = gateway_settings(fake_openai, responses={"store": False})
    async with running_gateway(settings) as gateway, gateway.client() as client:
        created = await client.responses.create(model="mock", input="keep me")
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(created.id)


async def test_one_tenant_never_reads_another_tenants_responses(gateway: RunningGateway) -> None:
    _, acme = await new_key(gateway, tenant="acme")
    _, acme_too = await new_key(gateway, tenant="acme")
    _, globex = await new_key(gateway, tenant="globex")
    async with gateway.client(acme) as a, gateway.client(acme_too) as a2:
        async with gateway.client(globex) as g:
            created = await a.responses.create(model="mock", input="acme's secret plan")
            assert (await a2.responses.retrieve(created.id)).id == created.id  # same tenant
            with pytest.raises(openai.NotFoundError) as read:
                await g.responses.retrieve(created.id)
            with pytest.raises(openai.NotFoundError):
                await g.responses.delete(created.id)
            with pytest.raises(openai.NotFoundError):
                await g.responses.create(
                    model="mock", input="and?", previous_response_id=created.id
                )
            with pytest.raises(openai.NotFoundError):  # nor the bootstrap admin, tenant-less
                async with gateway.client() as admin:
                    await admin.responses.retrieve(created.id)
            assert (await a.responses.retrieve(created.id)).output_text == created.output_text
    assert "secret plan" not in str(read.value.body)


# -- usage, cache ----------------------------------------------------------------------


async def test_usage_record(gateway: RunningGateway) -> None:
    key_id, key = await new_key(gateway, tenant="acme")
    async with gateway.client(key) as client:
        created = await client.responses.create(model="mock", input="count me")
        streamed = await client.responses.create(model="mock", input="count me", stream=True)
        events = [e async for e in streamed]
    records = [r for r in await rows(gateway, 2) if r.key_id == key_id]
    assert [(r.api, r.endpoint, r.model, r.status, r.http_status) for r in records] == [
        ("responses", "/v1/responses", "mock", "ok", 200)
    ] * 2
    assert created.usage is not None
    assert (records[0].prompt_tokens, records[0].completion_tokens) == (
        created.usage.input_tokens,
        created.usage.output_tokens,
    )
    assert records[1].completion_tokens == events[-1].response.usage.output_tokens  # type: ignore[union-attr]
    assert not any(r.tokens_estimated for r in records)


async def test_cache_replay(fake_openai: FakeOpenAI) -> None:
    settings = gateway_settings(fake_openai, cache={"enabled": True})
    async with running_gateway(settings) as gateway, gateway.client() as client:
        body: Any = {"model": "up", "input": "cache me", "temperature": 0.2}
        first = await client.responses.with_raw_response.create(**body)
        second = await client.responses.with_raw_response.create(**body)
        streamed = await client.responses.create(**body, stream=True)
        events = [e async for e in streamed]
        assert (await client.responses.retrieve(second.parse().id)).id == second.parse().id
        records = await rows(gateway, 3)
    assert first.headers["x-cache"] == "MISS" and second.headers["x-cache"] == "HIT"
    assert len([r for r in fake_openai.requests if r.path.endswith("/completions")]) == 1
    a, b = first.parse(), second.parse()
    assert a.id != b.id  # one response per request, a hit included
    assert a.output_text == b.output_text == events[-1].response.output_text == "Echo: cache me"
    assert b.usage == a.usage
    assert [r.cached for r in records] == [False, True, True]


# -- errors ----------------------------------------------------------------------------


async def test_each_error_class_in_openais_shape(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(gateway_settings(fake_openai)) as gateway:
        _, tiny = await new_key(gateway, tier="tiny")
        async with gateway.client("rg_not_a_key") as stranger, gateway.client() as client:
            with pytest.raises(openai.AuthenticationError) as unauthenticated:
                await stranger.responses.create(model="mock", input="hi")
            with pytest.raises(openai.AuthenticationError):
                await stranger.responses.retrieve("resp_x")
            with pytest.raises(openai.NotFoundError) as unknown_model:
                await client.responses.create(model="nope", input="hi")
            with pytest.raises(openai.BadRequestError) as bad_item:
                await client.responses.create(model="mock", input=[{"type": "bogus"}])  # type: ignore[list-item,misc]
            with pytest.raises(openai.BadRequestError) as no_input:
                await client.responses.create(model="mock")
            with pytest.raises(openai.InternalServerError) as down:
                await client.responses.create(model="down", input="hi")
            with pytest.raises(openai.InternalServerError) as down_stream:
                await client.responses.create(model="down", input="hi", stream=True)
            fake_openai.push(Script(status=500, error_message="boom"))
            with pytest.raises(openai.APIStatusError) as upstream_500:
                await client.responses.create(model="up", input="hi")
        async with gateway.client(tiny) as limited:
            await limited.responses.create(model="mock", input="one")
            with pytest.raises(openai.RateLimitError) as limited_error:
                await limited.responses.create(model="mock", input="two")
    cases = {
        "unauthenticated": (unauthenticated.value, 401, "authentication_error", None),
        "unknown_model": (unknown_model.value, 404, "invalid_request_error", "model"),
        "bad_item": (bad_item.value, 400, "invalid_request_error", "input[0].type"),
        "no_input": (no_input.value, 400, "invalid_request_error", "input"),
        "down": (down.value, 503, "upstream_error", None),
        "down_stream": (down_stream.value, 503, "upstream_error", None),
        "upstream_500": (upstream_500.value, 502, "upstream_error", None),
        "limited": (limited_error.value, 429, "rate_limit_error", None),
    }
    for name, (error, status, kind, param) in cases.items():
        assert isinstance(error.body, dict), name
        assert set(error.body) == {"message", "type", "param", "code"}, name
        assert (error.status_code, error.body["type"]) == (status, kind), name
        if param is not None:
            assert error.body["param"] == param, name
    assert "Retry-After" in limited_error.value.response.headers


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from([
    "model", "input", "instructions", "tools", "tool_choice", "stream", "store", "text",
    "previous_response_id", "max_output_tokens", "temperature", "metadata", "type", "role",
    "content", "call_id", "output", "arguments", "name", "parallel_tool_calls",
])  # fmt: skip
ITEM = st.dictionaries(FIELDS, JSON_VALUES | st.sampled_from(
    ["message", "function_call", "function_call_output", "user", "input_text", "mock"]
), max_size=5)  # fmt: skip
BODIES = st.one_of(
    st.binary(max_size=64),
    st.dictionaries(FIELDS, JSON_VALUES, max_size=6).map(msgspec.json.encode),
    st.fixed_dictionaries(
        {"model": st.just("mock")},
        optional={"input": st.text(max_size=10) | st.lists(ITEM, max_size=3) | JSON_VALUES,
                  "tools": st.lists(ITEM, max_size=2) | JSON_VALUES,
                  "previous_response_id": st.text(max_size=10) | JSON_VALUES,
                  "stream": st.booleans() | JSON_VALUES, "text": JSON_VALUES,
                  "instructions": JSON_VALUES, "tool_choice": JSON_VALUES},
    ).map(msgspec.json.encode),
)  # fmt: skip


async def test_garbage_bodies_are_never_a_5xx(gateway: RunningGateway) -> None:
    loop = asyncio.get_running_loop()
    statuses: list[int] = []
    headers = {**gateway.headers, "Content-Type": "application/json"}

    async def post(session: aiohttp.ClientSession, body: bytes) -> None:
        async with session.post(gateway.url + "/v1/responses", data=body, headers=headers) as r:
            raw = await r.read()
        statuses.append(r.status)
        assert r.status < 500, (body, r.status, raw)
        if r.status >= 400:
            error = msgspec.json.decode(raw)["error"]
            assert set(error) == {"message", "type", "param", "code"}, raw
            assert "Traceback" not in error["message"]

    async with aiohttp.ClientSession() as session:
        await post(session, b'{"model": "mock", "input": [')  # the validators answer, for certain
        assert statuses == [400]

        @settings(
            max_examples=150,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(body=BODIES)
        def one(body: bytes) -> None:
            asyncio.run_coroutine_threadsafe(post(session, body), loop).result(30)

        await asyncio.to_thread(one)


async def test_stored_routes_with_odd_ids_are_404(gateway: RunningGateway) -> None:
    async with aiohttp.ClientSession(headers=gateway.headers) as session:
        for path in ("/v1/responses/", "/v1/responses/x/input_items", "/v1/responses/%00",
                     "/v1/responses/" + "a" * 5000):  # fmt: skip
            for method in ("GET", "DELETE"):
                async with session.request(method, gateway.url + path) as r:
                    body = await r.json()
                assert r.status == 404 and body["error"]["code"] == "not_found", (method, path)
        async with session.put(gateway.url + "/v1/responses/resp_x") as r:
            assert r.status == 405
