"""The OpenAI-compatible API against the development model, with the official client."""

from __future__ import annotations

import base64
import re
import time
from array import array

import aiohttp
import openai
import pytest

from tests.gateway import RunningGateway

USER = [{"role": "user", "content": "Say hello to relaygate"}]


async def test_chat_completion(mock_gateway: RunningGateway) -> None:
    async with mock_gateway.client() as client:
        reply = await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
    assert reply.model == "mock"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content is not None
    assert reply.choices[0].message.content.endswith("You said: Say hello to relaygate")
    assert reply.usage is not None and reply.usage.prompt_tokens == 4
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_same_prompt_same_reply(mock_gateway: RunningGateway) -> None:
    async with mock_gateway.client() as client:
        a = await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
        b = await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.id != b.id


async def test_streaming_chat_ends_with_done_and_matches(mock_gateway: RunningGateway) -> None:
    async with mock_gateway.client() as client:
        whole = await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(
            model="mock",
            messages=USER,
            stream=True,  # type: ignore[arg-type]
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert all(c.model == "mock" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks), "usage chunk only when asked for"
    # The SDK stops quietly whether or not the terminator came: read the raw SSE too.
    body = {"model": "mock", "messages": USER, "stream": True}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            mock_gateway.url + "/v1/chat/completions", json=body, headers=mock_gateway.headers
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            raw = await response.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    assert raw.count(b"[DONE]") == 1
    assert len(events) - 2 == len(chunks)  # every chunk is one event, then the terminator
    assert all(event.startswith(b"data: {") for event in events[:-2])


async def test_stream_usage_when_asked(mock_gateway: RunningGateway) -> None:
    async with mock_gateway.client() as client:
        stream = await client.chat.completions.create(
            model="mock",
            messages=USER,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=3,
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-2].choices[0].finish_reason == "length"


async def test_completions_and_stream(mock_gateway: RunningGateway) -> None:
    async with mock_gateway.client() as client:
        reply = await client.completions.create(model="mock", prompt="Once upon a time")
        stream = await client.completions.create(
            model="mock", prompt="Once upon a time", stream=True
        )
        text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert reply.object == "text_completion"
    assert reply.choices[0].text.endswith("You said: Once upon a time")
    assert text == reply.choices[0].text


async def test_embeddings_float_and_base64(mock_gateway: RunningGateway) -> None:
    async with mock_gateway.client() as client:
        floats = await client.embeddings.create(
            model="mock", input=["a b", "c"], encoding_format="float"
        )
        packed = await client.embeddings.create(model="mock", input=["a b", "c"])
    assert [e.index for e in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens == 3
    assert len(floats.data[0].embedding) == 16
    # The SDK asks for base64 by default and decodes it itself.
    assert packed.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)
    raw = array("f", base64.b64decode((await _raw_embedding(mock_gateway))["data"][0]["embedding"]))
    assert list(raw) == pytest.approx(floats.data[0].embedding, rel=1e-6)


async def _raw_embedding(gateway: RunningGateway) -> dict:  # type: ignore[type-arg]
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/embeddings",
            json={"model": "mock", "input": "a b", "encoding_format": "base64"},
            headers=gateway.headers,
        ) as response,
    ):
        return await response.json()  # type: ignore[no-any-return]


async def test_models_list_and_get(mock_gateway: RunningGateway) -> None:
    async with mock_gateway.client() as client:
        models = [m async for m in client.models.list()]
        one = await client.models.retrieve("mock")
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("no-such-model")
    assert [m.id for m in models] == ["mock"]
    assert models[0].owned_by == "relaygate-development"
    assert "Development model" in (models[0].model_extra or {})["description"]
    assert one.id == "mock"
    assert "GET /v1/models" in str(missing.value)


async def test_unknown_model_is_404_saying_how_to_list(mock_gateway: RunningGateway) -> None:
    async with mock_gateway.client() as client:
        with pytest.raises(openai.NotFoundError) as error:
            await client.chat.completions.create(model="gpt-9", messages=USER)  # type: ignore[arg-type]
    body = error.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert "GET /v1/models" in body["message"]


async def test_response_carries_request_id(mock_gateway: RunningGateway) -> None:
    async with mock_gateway.client() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="mock",
            messages=USER,  # type: ignore[arg-type]
        )
    request_id = raw.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)  # milliseconds, then random (asgi.py)
    assert abs(int(request_id[:12], 16) / 1000 - time.time()) < 60


async def test_sdk_error_classes_for_client_errors() -> None:
    from tests.conftest import MOCK
    from tests.gateway import make_settings, running_gateway

    async with running_gateway(make_settings(MOCK, max_body_bytes=2048)) as gateway:
        async with gateway.client() as client:
            with pytest.raises(openai.BadRequestError) as bad:
                await client.chat.completions.create(model="mock", messages=USER, temperature=5)  # type: ignore[arg-type]
            with pytest.raises(openai.APIStatusError) as large:
                await client.chat.completions.create(
                    model="mock", messages=[{"role": "user", "content": "x" * 5000}]
                )
    assert bad.value.status_code == 400 and bad.value.param == "temperature"  # type: ignore[attr-defined]
    assert large.value.status_code == 413
    assert "2048 bytes" in large.value.message
