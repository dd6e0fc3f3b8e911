"""Tests for the fake upstreams themselves, driven by a plain aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import FakeServer, Script, fake_embedding, split_chunks, truncate_words

# ------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def oai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def oll() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as fake:
        yield fake


@pytest.fixture(params=["openai", "ollama"])
async def any_fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeServer]:
    fake: FakeServer = FakeOpenAI() if request.param == "openai" else FakeOllama()
    async with fake:
        yield fake


def chat(text: str = "hello world", **extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}], **extra}


def ochat(text: str = "hello world", **extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2:1b", "messages": [{"role": "user", "content": text}], **extra}


def parse_sse(text: str) -> list[Any]:
    """Parse a complete SSE body strictly: events are 'data: ...' separated by blank lines."""
    assert text.endswith("\n\n")
    events: list[Any] = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def parse_ndjson(text: str) -> list[dict[str, Any]]:
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def stream_request(fake: FakeServer, text: str = "a b c d e f") -> tuple[str, dict[str, Any]]:
    if isinstance(fake, FakeOpenAI):
        return f"{fake.base_url}/chat/completions", chat(text, stream=True)
    return f"{fake.base_url}/api/chat", ochat(text)


async def next_frame(resp: aiohttp.ClientResponse) -> str:
    """The next non-blank line of a stream (an SSE event or an NDJSON object)."""
    while True:
        raw = await resp.content.readline()
        if not raw:
            raise EOFError("stream ended")
        line = raw.decode().strip()
        if line:
            return line


async def next_content(resp: aiohttp.ClientResponse) -> str:
    """Read frames until one carries content; return that content (skips the role preamble)."""
    while True:
        data = json.loads((await next_frame(resp)).removeprefix("data: "))
        if "choices" in data:
            piece = data["choices"][0]["delta"].get("content")
        else:
            piece = data["message"]["content"]
        if piece:
            return str(piece)


async def read_all_content(resp: aiohttp.ClientResponse) -> list[str]:
    pieces: list[str] = []
    while True:
        try:
            pieces.append(await next_content(resp))
        except EOFError:
            return pieces


# ------------------------------------------------------------------------------------------
# helpers


def test_split_chunks_concatenate_exactly() -> None:
    text = "  Echo:  hello   wide world \n"
    assert split_chunks("Echo: hello world") == ["Echo:", " hello", " world"]
    assert "".join(split_chunks(text)) == text
    for n in (1, 2, 3, 7, 40):
        pieces = split_chunks(text, n)
        assert len(pieces) == n
        assert "".join(pieces) == text
    assert split_chunks("") == []
    assert truncate_words("a b  c d", 3) == ("a b  c", True)
    assert truncate_words("a b", 5) == ("a b", False)


def test_fake_embedding_is_deterministic_unit_vector() -> None:
    v = fake_embedding("hello", 16)
    assert v == fake_embedding("hello", 16)
    assert v != fake_embedding("hellp", 16)
    assert len(v) == 16
    assert abs(sum(x * x for x in v) - 1.0) < 1e-9


# ------------------------------------------------------------------------------------------
# OpenAI: chat completions


async def test_openai_chat_non_stream(oai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    assert oai.base_url == f"http://127.0.0.1:{oai.port}/v1"
    body = {
        "model": "any-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi there"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "say something"},
        ],
    }
    headers = {"Authorization": "Bearer sk-test", "X-Custom": "1"}
    async with session.post(f"{oai.base_url}/chat/completions", json=body, headers=headers) as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        data = await r.json()
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    assert data["model"] == "any-model"  # echoes the requested model
    (choice,) = data["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Echo: say something"
    # prompt = words of all messages (2 + 2 + 1 + 2), completion = "Echo: say something"
    assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}

    (req,) = oai.requests
    assert req.method == "POST"
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test"
    assert req.headers["x-custom"] == "1"
    assert req.json == body
    assert json.loads(req.raw) == body


async def test_openai_chat_stream(oai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    url = f"{oai.base_url}/chat/completions"
    async with session.post(url, json=chat("one two three", stream=True)) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        text = await r.text()
    assert text.endswith("data: [DONE]\n\n")
    events = parse_sse(text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["model"] == "fake-model" for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert contents == ["Echo:", " one", " two", " three"]  # one chunk per word
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert oai.completed_streams == 1
    assert oai.disconnects == 0


async def test_openai_stream_include_usage(oai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    body = chat("one two", stream=True, stream_options={"include_usage": True})
    async with session.post(f"{oai.base_url}/chat/completions", json=body) as r:
        events = parse_sse(await r.text())
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert all(e["usage"] is None for e in events[:-2])

    oai.push(Script(usage=False))  # upstream that ignores include_usage
    async with session.post(f"{oai.base_url}/chat/completions", json=body) as r:
        events = parse_sse(await r.text())
    assert all("usage" not in e for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


async def test_openai_scripted_chunks_n_and_finish(
    oai: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    oai.push(Script(content="abcdefghij", chunks=3, finish_reason="length"))
    body = chat(stream=True, n=2)
    async with session.post(f"{oai.base_url}/chat/completions", json=body) as r:
        events = parse_sse(await r.text())
    chunks = events[:-1]
    by_choice: dict[int, list[str]] = {0: [], 1: []}
    reasons: dict[int, str] = {}
    for c in chunks:
        (choice,) = c["choices"]
        if "content" in choice["delta"] and "role" not in choice["delta"]:
            by_choice[choice["index"]].append(choice["delta"]["content"])
        if choice["finish_reason"]:
            reasons[choice["index"]] = choice["finish_reason"]
    assert by_choice == {0: ["abcd", "efg", "hij"], 1: ["abcd", "efg", "hij"]}
    assert reasons == {0: "length", 1: "length"}

    async with session.post(f"{oai.base_url}/chat/completions", json=chat(n=3)) as r:
        data = await r.json()
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert data["usage"]["completion_tokens"] == 9  # 3 words x 3 choices


async def test_openai_max_tokens_truncates(oai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    body = chat("a b c d e", max_tokens=3)
    async with session.post(f"{oai.base_url}/chat/completions", json=body) as r:
        data = await r.json()
    assert data["choices"][0]["message"]["content"] == "Echo: a b"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 3


async def test_openai_tool_calls(oai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    call = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}
    oai.push(Script(tool_calls=[call]), Script(tool_calls=[call, {"name": "noop"}]))
    url = f"{oai.base_url}/chat/completions"
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    async with session.post(url, json=chat(tools=tools)) as r:
        data = await r.json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (tc,) = choice["message"]["tool_calls"]
    assert tc["type"] == "function"
    assert tc["id"]
    assert tc["function"]["name"] == "get_weather"
    assert isinstance(tc["function"]["arguments"], str)  # a JSON *string* in OpenAI
    assert json.loads(tc["function"]["arguments"]) == {"city": "Paris", "unit": "c"}
    assert oai.requests[-1].json["tools"] == tools

    async with session.post(url, json=chat(stream=True)) as r:
        events = parse_sse(await r.text())
    calls: dict[int, dict[str, str]] = {}
    for e in events[:-1]:
        for d in e["choices"][0]["delta"].get("tool_calls", []):
            slot = calls.setdefault(d["index"], {"id": "", "name": "", "arguments": ""})
            slot["id"] += d.get("id", "")
            slot["name"] += d.get("function", {}).get("name", "")
            slot["arguments"] += d.get("function", {}).get("arguments", "")
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "c"}
    assert calls[1]["name"] == "noop"
    assert calls[0]["id"] != calls[1]["id"]
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


# ------------------------------------------------------------------------------------------
# OpenAI: completions, embeddings, models, auth, errors


async def test_openai_completions(oai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    url = f"{oai.base_url}/completions"
    async with session.post(url, json={"model": "m", "prompt": "say hi"}) as r:
        data = await r.json()
    assert data["object"] == "text_completion"
    assert data["model"] == "m"
    assert data["choices"][0]["text"] == "Echo: say hi"
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}

    body = {
        "model": "m",
        "prompt": "say hi",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with session.post(url, json=body) as r:
        events = parse_sse(await r.text())
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == []
    assert events[-2]["usage"]["total_tokens"] == 5
    texts = [e["choices"][0]["text"] for e in events[:-2]]
    assert "".join(texts) == "Echo: say hi"
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert all(e["object"] == "text_completion" for e in events[:-1])


async def test_openai_embeddings(oai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    url = f"{oai.base_url}/embeddings"
    async with session.post(url, json={"model": "emb", "input": "hello world"}) as r:
        data = await r.json()
    assert data["object"] == "list"
    assert data["model"] == "emb"
    (item,) = data["data"]
    assert item["object"] == "embedding"
    assert item["index"] == 0
    assert item["embedding"] == fake_embedding("hello world", 8)
    assert data["usage"] == {"prompt_tokens": 2, "total_tokens": 2}

    body = {"model": "emb", "input": ["a", "b c"], "dimensions": 4, "encoding_format": "float"}
    async with session.post(url, json=body) as r:
        data = await r.json()
    assert [d["index"] for d in data["data"]] == [0, 1]
    assert data["data"][1]["embedding"] == fake_embedding("b c", 4)
    assert data["usage"]["prompt_tokens"] == 3

    body = {"model": "emb", "input": "x", "encoding_format": "base64"}
    async with session.post(url, json=body) as r:
        data = await r.json()
    raw = base64.b64decode(data["data"][0]["embedding"])
    decoded = struct.unpack("<8f", raw)
    assert decoded == pytest.approx(fake_embedding("x", 8), rel=1e-6)


async def test_openai_models(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(models=["m1", "org/m2"]) as fake:
        async with session.get(f"{fake.base_url}/models") as r:
            data = await r.json()
        assert data["object"] == "list"
        assert [m["id"] for m in data["data"]] == ["m1", "org/m2"]
        assert all(m["object"] == "model" and "owned_by" in m for m in data["data"])
        async with session.get(f"{fake.base_url}/models/org/m2") as r:
            assert r.status == 200
            assert (await r.json())["id"] == "org/m2"
        async with session.get(f"{fake.base_url}/models/nope") as r:
            assert r.status == 404
            err = (await r.json())["error"]
        assert err["code"] == "model_not_found"
        assert fake.pending == 0


async def test_openai_api_key(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key="x") as fake:
        url = f"{fake.base_url}/chat/completions"
        async with session.post(url, json=chat()) as r:
            assert r.status == 401
            err = (await r.json())["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error"
        async with session.post(url, json=chat(), headers={"Authorization": "Bearer y"}) as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "invalid_api_key"
        async with session.post(url, json=chat(), headers={"Authorization": "Bearer x"}) as r:
            assert r.status == 200
        async with session.get(f"{fake.base_url}/models") as r:
            assert r.status == 401
        assert [r.headers.get("authorization") for r in fake.requests] == [
            None,
            "Bearer y",
            "Bearer x",
            None,
        ]


async def test_openai_errors_and_queue(oai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    url = f"{oai.base_url}/chat/completions"
    oai.push(
        Script(status=429, retry_after="7", error_message="slow down"),
        Script(status=503),
        Script(content="second"),
    )
    oai.default = Script(content="from default")
    async with session.post(url, json=chat(stream=True)) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "7"
        assert r.content_type == "application/json"
        err = (await r.json())["error"]
    assert err == {
        "message": "slow down",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    async with session.post(url, json=chat()) as r:
        assert r.status == 503
        assert (await r.json())["error"]["type"] == "server_error"
    async with session.get(f"{oai.base_url}/models") as r:  # does not consume a script
        assert r.status == 200
    async with session.post(url, json=chat()) as r:
        assert (await r.json())["choices"][0]["message"]["content"] == "second"
    for _ in range(2):
        async with session.post(url, json=chat()) as r:
            assert (await r.json())["choices"][0]["message"]["content"] == "from default"


async def test_openai_bad_requests(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(strict_models=True) as fake:
        url = f"{fake.base_url}/chat/completions"
        async with session.post(url, data=b"{nope", headers={"Content-Type": "x"}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"
        assert fake.requests[0].json is None
        assert fake.requests[0].raw == b"{nope"
        async with session.post(url, json={"model": "fake-model"}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["param"] == "messages"
        async with session.post(url, json=chat() | {"model": "other"}) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "model_not_found"
        async with session.post(f"{fake.base_url}/nothing", json={}) as r:
            assert r.status == 404
            assert "Invalid URL" in (await r.json())["error"]["message"]


async def test_openai_malformed(oai: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    oai.push(Script(malformed=True), Script(malformed=True, content="a b c d"))
    url = f"{oai.base_url}/chat/completions"
    async with session.post(url, json=chat()) as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        body = await r.read()
    assert body == b'{"id": "x", "choices": ['
    with pytest.raises(ValueError):
        json.loads(body)

    async with session.post(url, json=chat(stream=True)) as r:
        text = await r.text()
    blocks = text.split("\n\n")[:-1]
    bad = [b for b in blocks if b != "data: [DONE]" and not _is_json(b.removeprefix("data: "))]
    assert len(bad) == 1
    assert blocks[-1] == "data: [DONE]"
    good = [json.loads(b.removeprefix("data: ")) for b in blocks[:-1] if b not in bad]
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in good)
    assert content == "a b c d"
    assert blocks.index(bad[0]) not in (0, len(blocks) - 1)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------
# Ollama


async def test_ollama_chat_streams_by_default(
    oll: FakeOllama, session: aiohttp.ClientSession
) -> None:
    assert oll.base_url == f"http://127.0.0.1:{oll.port}"
    body = ochat("why is the sky blue?")
    async with session.post(f"{oll.base_url}/api/chat", json=body) as r:
        assert r.status == 200
        assert r.content_type == "application/x-ndjson"
        lines = parse_ndjson(await r.text())
    *parts, final = lines
    assert [p["message"]["content"] for p in parts] == [
        "Echo:",
        " why",
        " is",
        " the",
        " sky",
        " blue?",
    ]
    for p in parts:
        assert p["done"] is False
        assert p["model"] == "llama3.2:1b"
        assert p["message"]["role"] == "assistant"
        assert p["created_at"].endswith("Z")
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["prompt_eval_count"] == 5
    assert final["eval_count"] == 6
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int)
        assert final[key] > 0
    assert oll.completed_streams == 1


async def test_ollama_chat_non_stream_and_recorded_fields(
    oll: FakeOllama, session: aiohttp.ClientSession
) -> None:
    options = {"temperature": 0.2, "top_p": 0.9, "num_predict": 50, "stop": ["\n"], "seed": 7}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    body = {
        "model": "llama3.2:1b",
        "messages": [
            {"role": "system", "content": "terse"},
            {"role": "user", "content": "what is this", "images": ["aGVsbG8="]},
        ],
        "stream": False,
        "options": options,
        "tools": tools,
        "format": {"type": "object"},
        "keep_alive": "10m",
    }
    async with session.post(f"{oll.base_url}/api/chat", json=body) as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        data = await r.json()
    assert data["message"] == {"role": "assistant", "content": "Echo: what is this"}
    assert data["done"] is True
    assert data["done_reason"] == "stop"
    assert data["prompt_eval_count"] == 4
    assert data["eval_count"] == 4
    rec = oll.requests[-1].json
    assert rec["options"] == options
    assert rec["tools"] == tools
    assert rec["format"] == {"type": "object"}
    assert rec["keep_alive"] == "10m"
    assert rec["messages"][1]["images"] == ["aGVsbG8="]


async def test_ollama_num_predict_usage_and_done_reason(
    oll: FakeOllama, session: aiohttp.ClientSession
) -> None:
    url = f"{oll.base_url}/api/chat"
    body = ochat("a b c d", stream=False, options={"num_predict": 2})
    async with session.post(url, json=body) as r:
        data = await r.json()
    assert data["message"]["content"] == "Echo: a"
    assert data["done_reason"] == "length"
    assert data["eval_count"] == 2

    oll.push(Script(usage=False, finish_reason="length", content="x y"))
    async with session.post(url, json=ochat()) as r:
        final = parse_ndjson(await r.text())[-1]
    assert final["done_reason"] == "length"
    assert "prompt_eval_count" not in final
    assert "eval_count" not in final
    assert "total_duration" in final


async def test_ollama_tool_calls(oll: FakeOllama, session: aiohttp.ClientSession) -> None:
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    oll.push(Script(tool_calls=[call]), Script(tool_calls=[call]))
    url = f"{oll.base_url}/api/chat"
    async with session.post(url, json=ochat(stream=False)) as r:
        data = await r.json()
    assert data["message"]["content"] == ""
    assert data["message"]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert data["done_reason"] == "stop"

    async with session.post(url, json=ochat()) as r:
        lines = parse_ndjson(await r.text())
    with_calls = [ln for ln in lines if "tool_calls" in ln.get("message", {})]
    assert len(with_calls) == 1
    assert with_calls[0]["done"] is False
    assert with_calls[0]["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert lines[-1]["done"] is True


async def test_ollama_generate(oll: FakeOllama, session: aiohttp.ClientSession) -> None:
    url = f"{oll.base_url}/api/generate"
    body = {"model": "llama3.2:1b", "prompt": "why blue", "system": "be short"}
    async with session.post(url, json=body) as r:
        assert r.content_type == "application/x-ndjson"
        lines = parse_ndjson(await r.text())
    *parts, final = lines
    assert "".join(p["response"] for p in parts) == "Echo: why blue"
    assert all(p["done"] is False for p in parts)
    assert final["response"] == ""
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["prompt_eval_count"] == 4  # prompt + system words
    assert final["eval_count"] == 3
    assert isinstance(final["context"], list)

    async with session.post(url, json=body | {"stream": False, "raw": True}) as r:
        data = await r.json()
    assert data["response"] == "Echo: why blue"
    assert data["done"] is True
    assert "context" not in data

    # empty prompt loads the model without consuming a script
    oll.push(Script(status=500))
    async with session.post(url, json={"model": "llama3.2:1b"}) as r:
        data = await r.json()
    assert data["done"] is True
    assert data["response"] == ""
    async with session.post(url, json={"model": "llama3.2:1b", "keep_alive": 0}) as r:
        assert (await r.json())["done_reason"] == "unload"
    assert oll.pending == 1


async def test_ollama_embed(oll: FakeOllama, session: aiohttp.ClientSession) -> None:
    url = f"{oll.base_url}/api/embed"
    async with session.post(url, json={"model": "llama3.2:1b", "input": "hello you"}) as r:
        data = await r.json()
    assert data["model"] == "llama3.2:1b"
    assert data["embeddings"] == [fake_embedding("hello you", 8)]
    assert data["prompt_eval_count"] == 2
    body = {"model": "llama3.2:1b", "input": ["a", "b"], "dimensions": 3}
    async with session.post(url, json=body) as r:
        data = await r.json()
    assert data["embeddings"] == [fake_embedding("a", 3), fake_embedding("b", 3)]


async def test_ollama_tags_version_root(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(models=["llama3.2:1b", "qwen2.5"]) as fake:
        async with session.get(f"{fake.base_url}/api/tags") as r:
            data = await r.json()
        names = [m["name"] for m in data["models"]]
        assert names == ["llama3.2:1b", "qwen2.5:latest"]
        first = data["models"][0]
        assert first["model"] == "llama3.2:1b"
        assert len(first["digest"]) == 64
        assert isinstance(first["size"], int)
        assert first["modified_at"]
        assert first["details"]["format"] == "gguf"
        assert first["details"]["family"] == "llama"
        assert first["details"]["parameter_size"] == "1B"
        assert first["details"]["quantization_level"]
        async with session.get(f"{fake.base_url}/api/version") as r:
            assert (await r.json()) == {"version": "0.12.6"}
        async with session.get(f"{fake.base_url}/") as r:
            assert await r.text() == "Ollama is running"
        # "qwen2.5" resolves to "qwen2.5:latest"
        async with session.post(f"{fake.base_url}/api/chat", json=ochat() | {"model": "qwen2.5"}):
            pass
        assert fake.completed_streams == 1


async def test_ollama_errors(oll: FakeOllama, session: aiohttp.ClientSession) -> None:
    url = f"{oll.base_url}/api/chat"
    async with session.post(url, json=ochat() | {"model": "x"}) as r:
        assert r.status == 404
        assert await r.json() == {"error": 'model "x" not found, try pulling it first'}
    async with session.post(f"{oll.base_url}/api/embed", json={"model": "x", "input": "a"}) as r:
        assert r.status == 404
    oll.push(Script(status=429, retry_after="3", error_message="busy"), Script(status=500))
    async with session.post(url, json=ochat()) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "3"
        assert r.content_type == "application/json"
        assert await r.json() == {"error": "busy"}
    async with session.post(url, json=ochat(stream=False)) as r:
        assert r.status == 500
        assert await r.json() == {"error": "upstream failure"}
    async with session.post(url, json={"messages": []}) as r:
        assert r.status == 400
        assert "error" in await r.json()
    oll.push(Script(malformed=True))
    async with session.post(url, json=ochat(stream=False)) as r:
        assert r.status == 200
        with pytest.raises(ValueError):
            json.loads(await r.read())


async def test_ollama_malformed_stream_and_api_key(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(api_key="k") as fake:
        url = f"{fake.base_url}/api/chat"
        async with session.post(url, json=ochat()) as r:
            assert r.status == 401
            assert await r.json() == {"error": "unauthorized"}
        fake.push(Script(malformed=True, content="a b c d"))
        async with session.post(url, json=ochat(), headers={"Authorization": "Bearer k"}) as r:
            lines = (await r.text()).splitlines()
        bad = [ln for ln in lines if not _is_json(ln)]
        assert len(bad) == 1
        assert lines.index(bad[0]) not in (0, len(lines) - 1)
        good = [json.loads(ln) for ln in lines if ln not in bad]
        assert "".join(g["message"]["content"] for g in good) == "a b c d"


# ------------------------------------------------------------------------------------------
# timing / failure behaviour, for both fakes


async def test_first_byte_delay(any_fake: FakeServer, session: aiohttp.ClientSession) -> None:
    any_fake.push(Script(first_byte_delay=0.2))
    url, body = stream_request(any_fake)
    start = time.monotonic()
    async with session.post(url, json=body) as r:
        assert time.monotonic() - start >= 0.19
        assert r.status == 200
        await r.read()


async def test_chunk_delay_spreads_chunks(
    any_fake: FakeServer, session: aiohttp.ClientSession
) -> None:
    any_fake.push(Script(content="a b c", chunk_delay=0.08))
    url, body = stream_request(any_fake)
    async with session.post(url, json=body) as r:
        arrivals = []
        pieces = []
        for _ in range(3):
            pieces.append(await next_content(r))
            arrivals.append(time.monotonic())
        await r.read()
    assert pieces == ["a", " b", " c"]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(g >= 0.06 for g in gaps), gaps


async def test_client_disconnect_mid_stream_is_recorded(
    any_fake: FakeServer, session: aiohttp.ClientSession
) -> None:
    any_fake.push(Script(content="w " * 50, chunk_delay=0.02))
    url, body = stream_request(any_fake)
    r = await session.post(url, json=body)
    assert await next_content(r) == "w"
    r.close()
    await any_fake.wait_disconnect(1.0)
    assert any_fake.disconnects == 1
    assert any_fake.client_gone.is_set()
    assert any_fake.completed_streams == 0


async def test_stall_after_hangs_until_client_leaves(
    any_fake: FakeServer, session: aiohttp.ClientSession
) -> None:
    any_fake.push(Script(content="a b c d", stall_after=2))
    url, body = stream_request(any_fake)
    r = await session.post(url, json=body)
    assert [await next_content(r), await next_content(r)] == ["a", " b"]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await next_frame(r)
    assert any_fake.in_flight == 1
    assert any_fake.disconnects == 0
    r.close()
    await any_fake.wait_disconnect(1.0)
    assert any_fake.disconnects == 1
    assert any_fake.completed_streams == 0


async def test_reset_after_aborts_connection(
    any_fake: FakeServer, session: aiohttp.ClientSession
) -> None:
    any_fake.push(Script(content="a b c d", reset_after=2))
    url, body = stream_request(any_fake)
    async with session.post(url, json=body) as r:
        assert r.status == 200
        assert [await next_content(r), await next_content(r)] == ["a", " b"]
        with pytest.raises(aiohttp.ClientError):
            await read_all_content(r)
    assert any_fake.disconnects == 0  # we reset it, the client did not leave
    assert any_fake.completed_streams == 0


async def test_error_after_sends_in_band_error(
    any_fake: FakeServer, session: aiohttp.ClientSession
) -> None:
    any_fake.push(Script(content="a b c d", error_after=1, error_message="model crashed"))
    url, body = stream_request(any_fake)
    async with session.post(url, json=body) as r:
        assert r.status == 200
        text = await r.text()
    if isinstance(any_fake, FakeOpenAI):
        events = parse_sse(text)
        assert "[DONE]" not in events
        assert events[-1]["error"]["message"] == "model crashed"
        assert events[-1]["error"]["type"] == "server_error"
        assert events[-2]["choices"][0]["delta"]["content"] == "a"
    else:
        lines = parse_ndjson(text)
        assert lines[-1] == {"error": "model crashed"}
        assert [ln["message"]["content"] for ln in lines[:-1]] == ["a"]
    assert any_fake.completed_streams == 0
    assert any_fake.disconnects == 0


async def test_error_text_sends_a_plain_text_error_body(
    any_fake: FakeServer, session: aiohttp.ClientSession
) -> None:
    any_fake.push(Script(status=502, error_message="bad gateway: it crashed", error_text=True))
    url, body = stream_request(any_fake)
    async with session.post(url, json=body) as r:
        assert r.status == 502
        assert r.content_type == "text/plain"
        assert await r.text() == "bad gateway: it crashed"


async def test_disconnect_during_first_byte_delay(
    any_fake: FakeServer, session: aiohttp.ClientSession
) -> None:
    any_fake.push(Script(first_byte_delay=5))
    url, body = stream_request(any_fake)
    with pytest.raises(TimeoutError):
        await session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=0.1))
    await any_fake.wait_disconnect(1.0)
    assert any_fake.disconnects == 1


async def test_close_releases_stalled_stream(session: aiohttp.ClientSession) -> None:
    for fake in (FakeOpenAI(), FakeOllama()):
        await fake.start()
        fake.push(Script(stall_after=0))
        url, body = stream_request(fake)
        async with session.post(url, json=body) as r:
            assert r.status == 200
            await asyncio.wait_for(fake.close(), 10)  # returns: the stall does not hold it
            with pytest.raises(aiohttp.ClientError):
                await read_all_content(r)
        assert fake.disconnects == 0  # closing the fake is not a client disconnect
        await fake.close()  # idempotent


async def test_reset_stats_and_restart(session: aiohttp.ClientSession) -> None:
    fake = FakeOpenAI()
    with pytest.raises(RuntimeError):
        _ = fake.base_url
    async with fake:
        async with session.get(f"{fake.base_url}/models"):
            pass
        assert len(fake.requests) == 1
        fake.reset_stats()
        assert fake.requests == []


# ------------------------------------------------------------------------------------------
# conformance: the official OpenAI SDK parses what the fake sends


async def test_official_openai_sdk_parses_fake_output(oai: FakeOpenAI) -> None:
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(base_url=oai.base_url, api_key="sk-x", max_retries=0)
    try:
        messages = [{"role": "user", "content": "hi there"}]
        reply = await client.chat.completions.create(model="m", messages=messages)
        assert reply.choices[0].message.content == "Echo: hi there"
        assert reply.usage.total_tokens == 5

        stream = await client.chat.completions.create(
            model="m", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        parts, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        assert "".join(parts) == "Echo: hi there"
        assert usage is not None and usage.completion_tokens == 3

        oai.push(Script(tool_calls=[{"name": "w", "arguments": {"city": "Paris"}}]))
        async with client.chat.completions.stream(model="m", messages=messages) as events:
            final = await events.get_final_completion()
        (call,) = final.choices[0].message.tool_calls
        assert (call.function.name, json.loads(call.function.arguments)) == ("w", {"city": "Paris"})

        emb = await client.embeddings.create(model="e", input=["a", "b c"])  # SDK asks base64
        assert emb.data[1].embedding == pytest.approx(fake_embedding("b c", 8), rel=1e-6)

        oai.push(Script(status=429, retry_after="1", error_message="slow"))
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="m", messages=messages)
        assert info.value.code == "rate_limit_exceeded"
    finally:
        await client.close()
