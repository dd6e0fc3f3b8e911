"""The rest of Ollama's API (/api/embed, /api/embeddings, /api/show, /api/ps, /api/version,
GET and HEAD /), driven by the official ollama client where it has a call, in front of the
development model and of a fake Ollama node; and Open WebUI's call sequence, replayed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import ollama
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaygate.api.ollama_meta import OLLAMA_VERSION
from tests.conftest import MOCK, closed_port_url
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import fake_embedding
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.integration.test_usage import rows
from tests.keys import new_key

USER = [{"role": "user", "content": "why is the sky blue"}]


def client(gateway: RunningGateway, key: str | None = None) -> ollama.AsyncClient:
    """The official client, with a key as Open WebUI sends it; use it as ``async with``."""
    return ollama.AsyncClient(
        host=gateway.url, headers={"Authorization": f"Bearer {key or gateway.admin_key}"}
    )


def node_models(fake: FakeOllama) -> list[dict[str, Any]]:
    """``small`` is an alias of the node's llama3.2:1b; qwen2.5:0.5b keeps its own name."""
    return [
        {"name": "small", "deployments": [
            {"provider": "ollama", "base_url": fake.base_url, "model": "llama3.2:1b"}]},
        {"name": "qwen2.5:0.5b", "deployments": [
            {"provider": "ollama", "base_url": fake.base_url}]},
    ]  # fmt: skip


@pytest.fixture
async def node_gateway(fake_ollama: FakeOllama) -> AsyncIterator[RunningGateway]:
    async with running_gateway(make_settings([*node_models(fake_ollama), *MOCK])) as gateway:
        yield gateway


async def request(
    gateway: RunningGateway, method: str, path: str, body: Any = None, key: str | None = "admin"
) -> tuple[int, Any, dict[str, str]]:
    """Status, decoded JSON (or text) and headers of one plain HTTP request."""
    headers = {"Authorization": f"Bearer {gateway.admin_key if key == 'admin' else key}"}
    if key is None:
        headers = {}
    data = body if isinstance(body, bytes) else None
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, gateway.url + path, json=None if data else body, data=data, headers=headers
        ) as response:
            raw = await response.read()
            try:
                decoded: Any = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                decoded = raw.decode("utf-8", "replace")
            return response.status, decoded, dict(response.headers)


# -- the development model ---------------------------------------------------------------


async def test_embed_and_embeddings_with_the_mock(mock_gateway: RunningGateway) -> None:
    async with client(mock_gateway) as c:
        many = await c.embed(model="mock", input=["first text", "second text"])
        one = await c.embed(model="mock", input="first text", keep_alive="5m", truncate=True)
        legacy = await c.embeddings(model="mock", prompt="first text")
    assert many.model == "mock" and len(many.embeddings) == 2
    assert many.embeddings[0] != many.embeddings[1] and len(many.embeddings[0]) > 0
    assert one.embeddings == [many.embeddings[0]] and list(legacy.embedding) == one.embeddings[0]
    assert many.prompt_eval_count == 4 and many.total_duration and many.load_duration == 0


async def test_show_and_ps_from_what_the_gateway_knows(mock_gateway: RunningGateway) -> None:
    async with client(mock_gateway) as c:
        shown = await c.show("mock")
        running = await c.ps()
    assert shown.capabilities == ["completion", "embedding"] and shown.modelinfo == {}
    assert shown.details is not None and shown.details.family == ""
    assert shown.details.format == "" and shown.modified_at is not None
    assert running.models == []  # only Ollama nodes know what they have loaded


async def test_version_and_root_need_no_key(mock_gateway: RunningGateway) -> None:
    status, version, _ = await request(mock_gateway, "GET", "/api/version", key=None)
    assert status == 200 and version == {"version": OLLAMA_VERSION}
    assert tuple(int(p) for p in version["version"].split(".")) >= (0, 5, 0)
    status, text, headers = await request(mock_gateway, "GET", "/", key=None)
    assert (status, text) == (200, "Ollama is running")
    assert headers["Content-Type"].startswith("text/plain")
    async with aiohttp.ClientSession() as session:
        async with session.head(mock_gateway.url + "/") as response:
            assert response.status == 200 and await response.read() == b""
            assert response.headers["Content-Length"] == str(len("Ollama is running"))


# -- an Ollama node ----------------------------------------------------------------------


async def test_show_asks_the_node_under_the_upstream_name(
    node_gateway: RunningGateway, fake_ollama: FakeOllama
) -> None:
    async with client(node_gateway) as c:
        shown = await c.show("small")
    asked = [r for r in fake_ollama.requests if r.path == "/api/show"]
    assert [r.json for r in asked] == [{"model": "llama3.2:1b"}]
    assert shown.modelfile is not None and "# FROM small\n" in shown.modelfile
    assert "llama3.2:1b" not in shown.modelfile
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    # legacy {"name": ...}, as older clients send it
    status, body, _ = await request(node_gateway, "POST", "/api/show", {"name": "qwen2.5:0.5b"})
    assert status == 200 and body["details"]["family"] == "qwen"


async def test_ps_lists_what_nodes_run_under_public_names_only(
    node_gateway: RunningGateway, fake_ollama: FakeOllama
) -> None:
    fake_ollama.loaded = ["llama3.2:1b", "mistral:7b"]  # mistral is no model of the gateway
    async with client(node_gateway) as c:
        running = await c.ps()
    assert [(m.name, m.model) for m in running.models] == [("small", "small")]
    entry = running.models[0]
    assert entry.size and entry.size_vram == entry.size and entry.expires_at is not None
    assert entry.details is not None and entry.details.family == "llama"
    assert [r.path for r in fake_ollama.requests] == ["/api/ps"]  # one node, asked once


async def test_ps_skips_a_node_that_is_down(fake_ollama: FakeOllama) -> None:
    fake_ollama.loaded = ["qwen2.5:0.5b"]
    down = [{"name": "gone", "deployments": [
        {"provider": "ollama", "base_url": closed_port_url(""), "model": "llama3.2:1b"}]}]  # fmt: skip
    settings = make_settings([*node_models(fake_ollama), *down])
    async with running_gateway(settings) as gateway, client(gateway) as c:
        running = await c.ps()
    assert [m.name for m in running.models] == ["qwen2.5:0.5b"]


async def test_embed_reaches_the_node_with_keep_alive_and_is_counted(
    node_gateway: RunningGateway, fake_ollama: FakeOllama
) -> None:
    async with client(node_gateway) as c:
        many = await c.embed(model="small", input=["one two", "three"], keep_alive="10m")
        legacy = await c.embeddings(model="small", prompt="one two")
    sent = [r.json for r in fake_ollama.requests if r.path == "/api/embed"]
    assert sent[0] == {"model": "llama3.2:1b", "input": ["one two", "three"], "keep_alive": "10m"}
    assert sent[1] == {"model": "llama3.2:1b", "input": "one two"}
    assert many.model == "small" and many.prompt_eval_count == 3
    assert [list(v) for v in many.embeddings] == [
        fake_embedding("one two"), fake_embedding("three")
    ]  # fmt: skip
    assert list(legacy.embedding) == fake_embedding("one two")
    found = await rows(node_gateway, 2)
    assert [(r.api, r.endpoint, r.model, r.http_status) for r in found] == [
        ("ollama", "/api/embed", "small", 200), ("ollama", "/api/embeddings", "small", 200),
    ]  # fmt: skip
    assert found[0].prompt_tokens == 3 and found[0].provider == "ollama"


async def test_embed_is_cached_like_v1_embeddings(fake_ollama: FakeOllama) -> None:
    settings = make_settings(node_models(fake_ollama), cache={"enabled": True})
    async with running_gateway(settings) as gateway, client(gateway) as c:
        first = await c.embed(model="small", input=["cache me"])
        again = await c.embed(model="small", input=["cache me"], keep_alive=0)
        legacy = await c.embeddings(model="small", prompt="cache me")
        _, openai, _ = await request(
            gateway, "POST", "/v1/embeddings", {"model": "small", "input": "cache me"}
        )
    assert sum(r.path == "/api/embed" for r in fake_ollama.requests) == 2  # a list, a string
    assert again.embeddings == first.embeddings
    assert list(legacy.embedding) == first.embeddings[0] == openai["data"][0]["embedding"]


# -- errors, each in Ollama's shape -------------------------------------------------------


async def test_errors_have_ollamas_shape(node_gateway: RunningGateway) -> None:
    gateway = node_gateway
    cases: list[tuple[str, str, Any, str | None, int, str]] = [
        ("POST", "/api/embed", {"model": "mock", "input": "x"}, None, 401, ""),
        ("POST", "/api/embeddings", {"model": "mock", "prompt": "x"}, "nope", 401, ""),
        ("POST", "/api/show", {"model": "mock"}, None, 401, ""),
        ("GET", "/api/ps", None, "rg_wrong", 401, ""),
        ("POST", "/api/embed", {"model": "nope", "input": "x"}, "admin", 404, "nope"),
        ("POST", "/api/embeddings", {"model": "nope", "prompt": "x"}, "admin", 404, "nope"),
        ("POST", "/api/show", {"model": "nope"}, "admin", 404, "model 'nope' not found"),
        ("POST", "/api/embed", {"model": "mock", "input": []}, "admin", 400, "input"),
        ("POST", "/api/embed", {"model": "mock", "input": [1, 2]}, "admin", 400, "input"),
        ("POST", "/api/embed", {"input": "x"}, "admin", 400, "model"),
        ("POST", "/api/embed", {"model": "mock", "input": "x", "dimensions": 0}, "admin", 400,
         "dimensions"),
        ("POST", "/api/embeddings", {"model": "mock", "prompt": ""}, "admin", 400, "prompt"),
        ("POST", "/api/embed", {"model": "mock", "input": "x", "keep_alive": [1]}, "admin", 400,
         "keep_alive"),
        ("POST", "/api/show", {}, "admin", 400, "model"),
        ("POST", "/api/show", b"{not json", "admin", 400, "JSON"),
    ]  # fmt: skip
    for method, path, body, key, status, says in cases:
        got, answer, _ = await request(gateway, method, path, body, key=key)
        assert got == status, (path, body, got, answer)
        assert isinstance(answer, dict) and list(answer) == ["error"], answer
        assert isinstance(answer["error"], str) and says in answer["error"], (path, answer)


async def test_a_tiny_tier_gets_429_on_embed() -> None:
    settings = make_settings(MOCK, tiers={"tiny": {"requests_per_hour": 1}})
    async with running_gateway(settings) as gateway:
        _, key = await new_key(gateway, tier="tiny")
        first = await request(gateway, "POST", "/api/embed", {"model": "mock", "input": "a"}, key)
        second = await request(gateway, "POST", "/api/embed", {"model": "mock", "input": "a"}, key)
    assert first[0] == 200
    assert second[0] == 429 and list(second[1]) == ["error"] and "Retry-After" in second[2]


async def test_a_node_that_is_down_is_a_503() -> None:
    down = [{"name": "gone", "deployments": [
        {"provider": "ollama", "base_url": closed_port_url(""), "model": "llama3.2:1b"}]}]  # fmt: skip
    async with running_gateway(make_settings(down)) as gateway:
        for path, body in (
            ("/api/embed", {"model": "gone", "input": "x"}),
            ("/api/show", {"model": "gone"}),
        ):
            status, answer, _ = await request(gateway, "POST", path, body)
            assert status == 503 and list(answer) == ["error"] and "gone" in answer["error"]
            assert "127.0.0.1" not in answer["error"]  # the node's address is not disclosed
        with pytest.raises(ollama.ResponseError) as raised:
            async with client(gateway) as c:
                await c.show("gone")
    assert raised.value.status_code == 503


# -- Open WebUI ---------------------------------------------------------------------------


async def test_open_webui_call_sequence(
    node_gateway: RunningGateway, fake_ollama: FakeOllama
) -> None:
    """What Open WebUI sends when relaygate is its Ollama server (with a key): the version,
    the models, the running models, each model's details, then a streamed chat."""
    fake_ollama.loaded = ["qwen2.5:0.5b"]
    _, key = await new_key(node_gateway)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    chat = {
        "model": "small",
        "messages": USER,
        "stream": True,
        "keep_alive": "5m",
        "options": {"temperature": 0.8, "num_ctx": 2048, "top_k": 40},
    }
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(node_gateway.url + "/api/version") as r:
            assert r.status == 200 and (await r.json())["version"] == OLLAMA_VERSION
        async with session.get(node_gateway.url + "/api/tags") as r:
            names = [m["name"] for m in (await r.json())["models"]]
        async with session.get(node_gateway.url + "/api/ps") as r:
            assert [m["name"] for m in (await r.json())["models"]] == ["qwen2.5:0.5b"]
        for name in names:
            async with session.post(node_gateway.url + "/api/show", json={"model": name}) as r:
                assert r.status == 200 and "capabilities" in await r.json(), name
        async with session.post(node_gateway.url + "/api/chat", json=chat) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "application/x-ndjson"
            lines = [json.loads(line) async for line in r.content if line.strip()]
    assert names == ["small", "qwen2.5:0.5b", "mock"]
    assert "".join(p["message"]["content"] for p in lines) == "Echo: why is the sky blue"
    assert lines[-1]["done"] is True and all(not p["done"] for p in lines[:-1])
    sent = next(r.json for r in fake_ollama.requests if r.path == "/api/chat")
    assert sent["model"] == "llama3.2:1b" and sent["keep_alive"] == "5m"
    assert sent["options"]["temperature"] == 0.8 and sent["stream"] is True


async def test_keep_alive_is_not_sent_to_other_upstreams(fake_openai: FakeOpenAI) -> None:
    models = [{"name": "up", "deployments": [
        {"provider": "openai", "base_url": fake_openai.base_url}]}]  # fmt: skip
    async with running_gateway(make_settings(models)) as gateway, client(gateway) as c:
        await c.chat(model="up", messages=USER, keep_alive=-1)
        await c.embed(model="up", input="x", keep_alive="5m")
    assert [r.path for r in fake_openai.requests] == ["/v1/chat/completions", "/v1/embeddings"]
    assert all("keep_alive" not in r.json for r in fake_openai.requests)


# -- garbage bodies -----------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=8,
)  # fmt: skip
_FIELDS = ["model", "input", "prompt", "name", "truncate", "options", "keep_alive",
           "dimensions", "verbose"]  # fmt: skip
_BODIES = st.one_of(
    st.binary(max_size=40),
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(_FIELDS), st.sampled_from(["mock", "nope", "small"]) | _JSON, max_size=5
    ).map(lambda v: json.dumps(v).encode()),
)


async def test_garbage_bodies_get_a_4xx_in_ollamas_shape(mock_gateway: RunningGateway) -> None:
    loop = asyncio.get_running_loop()
    seen: list[int] = []

    async def post(path: str, body: bytes) -> None:
        status, answer, _ = await request(mock_gateway, "POST", path, body or b" ")
        seen.append(status)
        assert status < 500, (path, body, status, answer)
        if status != 200:
            assert isinstance(answer, dict) and isinstance(answer.get("error"), str), answer

    @settings(
        max_examples=120,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(path=st.sampled_from(["/api/embed", "/api/embeddings", "/api/show"]), body=_BODIES)
    def one_example(path: str, body: bytes) -> None:
        asyncio.run_coroutine_threadsafe(post(path, body), loop).result(30)

    await asyncio.to_thread(one_example)
    assert 400 in seen  # the bodies were mostly wrong, and said so
