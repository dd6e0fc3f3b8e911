"""No input reaches a 500 on the public routes, and every error is in the route's own shape.

Each body is a valid one with one value, anywhere in it, replaced by another JSON value
(wrong type, extreme number, odd unicode), by raw text such as NaN, 1e999 or an unpaired
surrogate escape, or with a field added or removed. One gateway serves the whole module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import given

from relaygate.vault.crypto import new_key
from tests.conftest import MOCK, closed_port_url
from tests.fuzz import FUZZ, SWEEP, check_answer, mutated, request, sweep
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key as new_api_key

pytestmark = pytest.mark.asyncio(loop_scope="module")

IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5ErkJggg=="
TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object"},
    },
}
OPENAI_CHAT: dict[str, Any] = {
    "model": "mock",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "and tomorrow?"},
    ],
    "max_tokens": 8,
    "temperature": 0.5,
    "top_p": 1,
    "n": 1,
    "stop": ["\n\n"],
    "seed": 7,
    "tools": [TOOL],
    "tool_choice": "auto",
    "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {}}},
    "stream": False,
    "stream_options": {"include_usage": True},
    "user": "someone",
    "top_k": 40,
}
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": OPENAI_CHAT,
    "/chat": OPENAI_CHAT,
    "/v1/completions": {
        "model": "mock",
        "prompt": "Once upon a time",
        "max_tokens": 8,
        "temperature": 0.2,
        "stop": "\n",
        "suffix": ".",
        "echo": False,
    },
    "/v1/embeddings": {
        "model": "mock",
        "input": ["one", "two"],
        "encoding_format": "float",
        "dimensions": 8,
        "user": "someone",
    },
    "/api/chat": {
        "model": "mock",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "what is this?", "images": [IMAGE]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "content": "sunny", "tool_name": "weather"},
        ],
        "tools": [TOOL],
        "options": {
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "min_p": 0.05,
            "seed": 7,
            "num_predict": 8,
            "stop": ["\n"],
            "num_ctx": 4096,
        },
        "format": "json",
        "stream": False,
        "keep_alive": "5m",
    },
    "/api/generate": {
        "model": "mock",
        "prompt": "Why is the sky blue?",
        "system": "Be brief.",
        "images": [IMAGE],
        "options": {"temperature": 0.1, "num_predict": 8, "stop": "\n"},
        "format": {"type": "object", "properties": {"answer": {"type": "string"}}},
        "stream": False,
    },
    "/v1/responses": {
        "model": "mock",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
        "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
        "temperature": 0.2,
        "top_p": 0.9,
        "max_output_tokens": 16,
        "store": False,
        "stream": False,
        "metadata": {"k": "v"},
        "user": "someone",
    },
    "/ai/generate": {
        "prompt": "Why is the sky blue?",
        "model": "mock",
        "stream": False,
        "use_cache": True,
        "temperature": 0.1,
        "max_tokens": 8,
        "system": "Be brief.",
    },
    # seed 004's provider keys and configurations (BYOK)
    "/api/ai/api-keys": {
        "provider": "openai",
        "key_name": "My OpenAI Key",
        "api_key": "sk-fuzz-0123456789abcdef",
        "expires_at": None,
        "expires_in_days": 30,
        "shared": False,
        "check": False,
    },
    "/api/ai/provider-configs": {
        "provider_type": "ollama",
        "api_key_id": None,
        "base_url": "http://93.184.216.34:11434",
        "config": {"model": "llama3.1", "temperature": 0.7, "max_tokens": 2000},
        "is_default": True,
        "is_active": False,
    },
}


_USERS: dict[int, str] = {}


async def key_for(gateway: RunningGateway, path: str) -> str:
    """The admin key; for the provider-key routes a user's own, so that what the fuzz
    stores never serves the admin's inference requests (which are fuzzed too)."""
    if not path.startswith("/api/ai/"):
        return gateway.admin_key
    if id(gateway) not in _USERS:
        _, _USERS[id(gateway)] = await new_api_key(gateway, tenant="fuzz", user="fuzzer")
    return _USERS[id(gateway)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[RunningGateway]:
    # a secret key, for the provider-key routes; cloud providers where nothing answers
    byok = {"base_urls": {name: closed_port_url() for name in ("openai", "gemini", "anthropic")}}
    settings = make_settings(MOCK, secret_key=new_key(), byok=byok)
    async with running_gateway(settings) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.mark.parametrize("path", sorted(BODIES))
async def test_valid_bodies_are_served(
    gateway: RunningGateway, session: aiohttp.ClientSession, path: str
) -> None:
    """The bodies mutated below are valid to start with (so a mutation is what fails)."""
    import msgspec

    status, _, body = await request(
        session, "POST", gateway.url + path, body=msgspec.json.encode(BODIES[path]),
        key=await key_for(gateway, path),
    )  # fmt: skip
    assert status == (201 if path.startswith("/api/ai/") else 200), body[:500]


# /chat parses as /v1/chat/completions does (only its answer differs): fuzzed below
@pytest.mark.parametrize("path", sorted(set(BODIES) - {"/chat"}))
async def test_every_place_every_type(
    gateway: RunningGateway, session: aiohttp.ClientSession, path: str
) -> None:
    """Each value of the valid body, at every depth, replaced in turn by one of each JSON
    type, the extremes and raw NaN/Infinity/1e999/unpaired surrogates."""
    bodies = sweep(BODIES[path])
    assert len(bodies) >= 7 * len(SWEEP)
    for raw in bodies:
        status, headers, body = await request(
            session, "POST", gateway.url + path, body=raw, key=await key_for(gateway, path)
        )
        try:
            check_answer(path, status, headers, body)
        except AssertionError as exc:
            raise AssertionError(f"{raw.decode(errors='replace')}: {exc}") from None


def _fuzz(path: str) -> Any:
    @FUZZ
    @given(raw=mutated(BODIES[path]))
    async def test(gateway: RunningGateway, session: aiohttp.ClientSession, raw: bytes) -> None:
        url = gateway.url + path
        key = await key_for(gateway, path)
        status, headers, body = await request(session, "POST", url, body=raw, key=key)
        check_answer(path, status, headers, body)

    return test


test_openai_chat = _fuzz("/v1/chat/completions")
test_openai_completions = _fuzz("/v1/completions")
test_openai_embeddings = _fuzz("/v1/embeddings")
test_ollama_chat = _fuzz("/api/chat")
test_ollama_generate = _fuzz("/api/generate")
test_seed_generate = _fuzz("/ai/generate")
test_seed_chat = _fuzz("/chat")
test_responses = _fuzz("/v1/responses")
test_byok_api_keys = _fuzz("/api/ai/api-keys")
test_byok_provider_configs = _fuzz("/api/ai/provider-configs")
