"""The fake Gemini refuses what Google refuses: its checks are what the adapter's tests rely on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.gemini_server import FakeGemini

KEY = "fake-gemini-key"
GOOD: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    async with FakeGemini(api_key=KEY) as server:
        yield server


async def post(
    fake: FakeGemini,
    body: Any,
    *,
    method: str = "generateContent",
    headers: dict[str, str] | None = None,
    query: str = "",
) -> tuple[int, Any]:
    url = f"{fake.base_url}/models/gemini-1.5-flash:{method}{query}"
    sent = {"x-goog-api-key": KEY} if headers is None else headers
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=sent) as response:
            return response.status, await response.json(content_type=None)


async def test_a_good_request_is_answered(fake: FakeGemini) -> None:
    status, body = await post(fake, GOOD)
    assert status == 200
    assert body["candidates"][0]["content"]["parts"] == [{"text": "Echo: hi"}]
    assert body["usageMetadata"]["promptTokenCount"] == 1
    assert fake.violations == []


@pytest.mark.parametrize(
    ("headers", "query", "status", "reason"),
    [
        ({}, "", 403, "PERMISSION_DENIED"),
        ({"x-goog-api-key": "wrong"}, "", 400, "INVALID_ARGUMENT"),
        ({}, f"?key={KEY}", 400, "INVALID_ARGUMENT"),
        ({"Authorization": f"Bearer {KEY}"}, "", 400, "INVALID_ARGUMENT"),
    ],
)
async def test_the_key_must_be_in_its_header(
    fake: FakeGemini, headers: dict[str, str], query: str, status: int, reason: str
) -> None:
    answered, body = await post(fake, GOOD, headers=headers, query=query)
    assert (answered, body["error"]["status"]) == (status, reason)
    assert body["error"]["code"] == status


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"contents": []},
        {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]},
        {"contents": [{"role": "user", "parts": [{"text": ""}]}]},
        {"contents": [{"role": "user", "parts": [{"text": "x", "inlineData": {}}]}]},
        {"contents": [{"role": "user", "parts": [{"image_url": "x"}]}]},
        {**GOOD, "system_instruction": {"parts": [{"text": "x"}]}},
        {**GOOD, "generationConfig": {"max_tokens": 5}},
        {**GOOD, "generationConfig": {"temperature": "hot"}},
        {**GOOD, "generationConfig": {"responseSchema": {"type": "OBJECT"}}},
        {**GOOD, "tools": [{"functionDeclarations": [
            {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "STRING"}}}}
        ]}]},
        {**GOOD, "tools": [{"functionDeclarations": [
            {"name": "f", "parameters": {"type": "OBJECT", "additionalProperties": False,
                                          "properties": {"a": {"type": "STRING"}}}}
        ]}]},
        {**GOOD, "toolConfig": {"functionCallingConfig": {"mode": "REQUIRED"}}},
        {**GOOD, "toolConfig": {"functionCallingConfig": {"mode": "AUTO",
                                                           "allowedFunctionNames": ["f"]}}},
        {"contents": [{"role": "user", "parts": [
            {"functionResponse": {"name": "f", "response": "sunny"}}]}]},
    ],
)  # fmt: skip
async def test_what_gemini_refuses_is_refused(fake: FakeGemini, body: dict[str, Any]) -> None:
    status, answer = await post(fake, body)
    assert status == 400 and answer["error"]["status"] == "INVALID_ARGUMENT"
    assert len(fake.violations) == 1


async def test_streams_need_alt_sse_and_batches_name_their_model(fake: FakeGemini) -> None:
    status, _ = await post(fake, GOOD, method="streamGenerateContent")
    assert status == 400
    batch = {"requests": [{"model": "models/other", "content": {"parts": [{"text": "a"}]}}]}
    status, _ = await post(fake, batch, method="batchEmbedContents")
    assert status == 400
    assert len(fake.violations) == 2


async def test_unknown_model_is_404(fake: FakeGemini) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{fake.base_url}/models/gemini-9:generateContent"
        async with session.post(url, json=GOOD, headers={"x-goog-api-key": KEY}) as response:
            body = await response.json()
    assert response.status == 404 and body["error"]["status"] == "NOT_FOUND"
