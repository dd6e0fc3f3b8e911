"""No client input reaches a 500 through an Anthropic deployment: what the adapter cannot
translate is a 400 in OpenAI's shape, and what it sends the fake (which checks each field)
is refused there only for reasons a client's own values explain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes.anthropic_server import FakeAnthropic, Reply
from tests.fuzz import FUZZ, check_answer, mutated, request, sweep
from tests.gateway import RunningGateway, make_settings, running_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "sk-ant-fuzz-0123456789abcdef"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5ErkJggg=="
CHAT: dict[str, Any] = {
    "model": "claude",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "weather?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {"name": "weather", "parameters": {"type": "object"}},
        }
    ],
    "tool_choice": "auto",
    "max_tokens": 20,
    "temperature": 0.3,
    "top_p": 0.9,
    "top_k": 10,
    "stop": ["\n\n"],
    "user": "u1",
    "stream": False,
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=KEY) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(fake: FakeAnthropic) -> AsyncIterator[RunningGateway]:
    deployment = {"provider": "anthropic", "base_url": fake.base_url, "api_key": KEY}
    config = make_settings([{"name": "claude", "deployments": [deployment]}])
    async with running_gateway(config) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


PATH = "/v1/chat/completions"


async def test_the_valid_body_is_served_and_well_formed(
    gateway: RunningGateway, session: aiohttp.ClientSession, fake: FakeAnthropic
) -> None:
    raw = msgspec.json.encode(CHAT)
    status, _, body = await request(
        session, "POST", gateway.url + PATH, body=raw, key=gateway.admin_key
    )
    assert status == 200, body[:500]
    assert fake.problems == []


async def test_every_place_every_type(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    for raw in sweep(CHAT):
        url = gateway.url + PATH
        status, headers, body = await request(session, "POST", url, body=raw, key=gateway.admin_key)
        try:
            check_answer(PATH, status, headers, body)
        except AssertionError as exc:
            raise AssertionError(f"{raw.decode(errors='replace')}: {exc}") from None


@FUZZ
@given(raw=mutated(CHAT))
async def test_mutated_bodies(
    gateway: RunningGateway, session: aiohttp.ClientSession, raw: bytes
) -> None:
    url = gateway.url + PATH
    status, headers, body = await request(session, "POST", url, body=raw, key=gateway.admin_key)
    check_answer(PATH, status, headers, body)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8))
tool_inputs = st.dictionaries(
    st.text(max_size=6), st.one_of(json_scalars, st.lists(json_scalars, max_size=3)), max_size=4
)


@settings(FUZZ, max_examples=40)
@given(
    text=st.text(max_size=40),
    inputs=st.lists(tool_inputs, max_size=2),
    cache=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
)
async def test_a_stream_says_what_the_whole_answer_says(
    gateway: RunningGateway,
    session: aiohttp.ClientSession,
    fake: FakeAnthropic,
    text: str,
    inputs: list[dict[str, Any]],
    cache: tuple[int, int],
) -> None:
    """Any text and tool inputs: chunks joined give the same message, finish and usage."""
    uses = [{"id": f"toolu_{n}", "name": "weather", "input": i} for n, i in enumerate(inputs)]
    reply = Reply(text=text, tool_uses=uses, cache_read=cache[0], cache_creation=cache[1])
    fake.push(reply, reply)
    body = {"model": "claude", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 999}
    url = gateway.url + PATH
    headers = {"Authorization": f"Bearer {gateway.admin_key}"}
    async with session.post(url, json=body, headers=headers) as answer:
        whole = await answer.json()
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with session.post(url, json=stream_body, headers=headers) as answer:
        events = [line[6:] async for line in answer.content if line.startswith(b"data: {")]
    chunks = [msgspec.json.decode(e) for e in events]
    message = whole["choices"][0]["message"]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == (message["content"] or "")
    arguments: dict[int, str] = {}
    for d in deltas:
        for call in d.get("tool_calls") or ():
            arguments[call["index"]] = (
                arguments.get(call["index"], "") + call["function"]["arguments"]
            )
    calls = message.get("tool_calls") or []
    assert [msgspec.json.decode(a) for a in arguments.values()] == [
        msgspec.json.decode(c["function"]["arguments"]) for c in calls
    ]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == whole["usage"]


# What the fake refused that a client's own values explain (a tool result for a call that
# is not there, a conversation that starts with the assistant, a tool schema not of type
# object): everything else would be the adapter's own mistake.
CLIENTS_FAULT = (
    "tool_result: tool_use_id has no tool_use",
    "the first message must use the user role",
    "must be a JSON schema of type object",
)


async def test_zz_the_adapter_never_made_a_request_anthropic_refuses(
    fake: FakeAnthropic,
) -> None:
    """Runs after the others in the module (same fake): what they sent, checked."""
    assert len(fake.messages) > 50  # enough bodies got through to be worth checking
    ours = [p for p in fake.problems if not any(words in p for words in CLIENTS_FAULT)]
    assert ours == []
