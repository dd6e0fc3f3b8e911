"""Streams relayed in batches (one write per network read, the OpenAI-compatible adapter's
``stream_batches``) are invisible to clients: the same bytes, headers and usage records as
relaying chunk by chunk (what every adapter without batches gets).

Two gateways with the same configuration and their own database and cache call one fake
OpenAI server; on one, the deployment's adapter is wrapped so that it has no
``stream_batches``. Each generated Chat Completions request goes to both, each answered
by the same generated upstream reply (text, chunking and pacing, usage or none, tool
calls, ``n``, an error before or in the middle of the stream, a garbage line); the
answers must be the same bytes, the cache must answer repeats alike, and the usage
records and the request and upstream error counters must agree.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaygate.providers.base import Provider, Upstream
from relaygate.routing.health import Health
from relaygate.schema.requests import Call
from relaygate.store.tables import usage_records
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "zq8kd93mfa0q7x"  # the deployment's key: an upstream error quoting it is scrubbed
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
# What differs between two answers of the fake by design: its completion ids and clocks.
UPSTREAM_IDS = re.compile(rb'"id":"chatcmpl-fake\d+"|"created":\d+')
# Response headers that differ between two requests by design (the length with the ids:
# the body is compared instead, and checked against it).
PER_REQUEST = re.compile(r"^(x-request-id|date|x-ratelimit-.*|content-length)$")
RECORD_FIELDS = (
    "api", "endpoint", "model", "provider", "deployment", "prompt_tokens",
    "completion_tokens", "tokens_estimated", "cached", "status", "http_status", "cost",
    "billed_to",
)  # fmt: skip


class ChunkByChunk:
    """The same adapter, without ``stream_batches``: the pipeline relays it chunk by chunk."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.base_url = inner.base_url

    async def complete(self, deployment: Upstream, call: Call) -> Any:
        return await self.inner.complete(deployment, call)

    def stream(self, deployment: Upstream, call: Call) -> Any:
        return self.inner.stream(deployment, call)

    async def embed(self, deployment: Upstream, call: Call) -> Any:
        return await self.inner.embed(deployment, call)

    async def list_models(self) -> list[str]:
        return await self.inner.list_models()

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateways(fake: FakeOpenAI) -> AsyncIterator[tuple[RunningGateway, RunningGateway]]:
    def settings_() -> Any:
        deployment = {"provider": "openai", "base_url": fake.base_url, "api_key": SECRET}
        return make_settings([{"name": "m", "deployments": [deployment]}], cache={"enabled": True})

    async with running_gateway(settings_()) as batched, running_gateway(settings_()) as single:
        for deployment in single.state.router.get("m").deployments:
            deployment.provider = ChunkByChunk(deployment.provider)
        for gateway in (batched, single):  # exact estimates from the start, on both
            await gateway.state.recorder.tokenizer.load()
        assert hasattr(batched.state.router.get("m").deployments[0].provider, "stream_batches")
        yield batched, single


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
MESSAGES = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user"]), "content": TEXT}),
    max_size=2,
).map(lambda m: [*m, {"role": "user", "content": "say something"}])
REQUEST = st.fixed_dictionaries(
    {"messages": MESSAGES, "stream": st.booleans()},
    optional={
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "n": st.integers(1, 3),
        "max_tokens": st.integers(1, 12),
        "tools": st.just([TOOL]),
        "tool_choice": st.just("auto"),
        "logprobs": st.booleans(),
        "top_logprobs": st.integers(0, 3),
        "temperature": st.floats(0, 2),
    },
)
TOOL_CALLS = st.lists(
    st.fixed_dictionaries({"name": st.just("weather"), "arguments": st.fixed_dictionaries(
        {"city": TEXT})}),
    min_size=1, max_size=2,
)  # fmt: skip
SCRIPT = st.builds(
    Script,
    content=st.one_of(st.none(), TEXT),
    chunks=st.one_of(st.none(), st.integers(1, 6)),
    usage=st.booleans(),
    finish_reason=st.sampled_from(["stop", "length"]),
    tool_calls=st.one_of(st.none(), TOOL_CALLS),
    chunk_delay=st.sampled_from([0.0, 0.0, 0.002]),
    error_after=st.one_of(st.none(), st.none(), st.integers(0, 3)),
    error_message=st.sampled_from(["overloaded", f"bad key {SECRET}"]),
    malformed=st.sampled_from([False] * 9 + [True]),
    status=st.sampled_from([200] * 8 + [400, 429, 500]),
)
_EXAMPLES = itertools.count()


Answer = tuple[int, list[tuple[str, str]], bytes]


async def answer(
    session: aiohttp.ClientSession, gateway: RunningGateway, body: dict[str, Any], ids: list[str]
) -> Answer:
    """Status, headers (less those that differ per request) and body; its id joins ``ids``."""
    async with session.post(
        gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers
    ) as response:
        raw = await response.read()
        ids.append(response.headers["x-request-id"])
        if "content-length" in response.headers:
            assert int(response.headers["content-length"]) == len(raw)
        headers = [
            (name.lower(), value)
            for name, value in response.headers.items()
            if not PER_REQUEST.match(name.lower())
        ]
        return response.status, sorted(headers), UPSTREAM_IDS.sub(b"#", raw)


def counters(gateway: RunningGateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The request and upstream error counters, by labels."""
    found = {}
    gateway.state.metrics.flush()  # the request tallies, as render() does
    for metric in gateway.state.metrics.registry.collect():
        if metric.name in ("relaygate_requests", "relaygate_upstream_errors"):
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def grown(before: dict[Any, float], after: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


async def records(gateway: RunningGateway, ids: list[str]) -> list[tuple[Any, ...]]:
    """The usage records of these requests, in their order, once the writer has them all."""
    query = sa.select(usage_records).where(usage_records.c.request_id.in_(ids))
    found: dict[str, Any] = {}
    for _ in range(200):
        async with gateway.state.engine.connect() as conn:
            found = {row.request_id: row for row in (await conn.execute(query)).all()}
        if len(found) == len(ids):
            break
        await asyncio.sleep(0.025)
    assert sorted(found) == sorted(ids)  # exactly one record per request
    return [tuple(getattr(found[i], name) for name in RECORD_FIELDS) for i in ids]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=REQUEST, script=SCRIPT)
async def test_batched_streams_are_the_chunk_by_chunk_ones(
    gateways: tuple[RunningGateway, RunningGateway],
    fake: FakeOpenAI,
    session: aiohttp.ClientSession,
    request: dict[str, Any],
    script: Script,
) -> None:
    batched, single = gateways
    unique = {"role": "system", "content": f"example {next(_EXAMPLES)}"}  # no cache cross-talk
    body = {"model": "m", **request, "messages": [unique, *request["messages"]]}
    ids: tuple[list[str], list[str]] = ([], [])
    for gateway in gateways:  # a failure in an earlier example cools neither down
        for deployment in gateway.state.router.get("m").deployments:
            deployment.health = Health(deployment.health.policy)
    fake.drop_pending()
    before = [counters(gateway) for gateway in gateways]
    fake.push(script, script)
    first = await answer(session, batched, body, ids[0])
    assert fake.pending == 1, first  # it went upstream
    assert first == await answer(session, single, body, ids[1])
    assert SECRET.encode() not in first[2]
    if first[0] == 200:  # stored in the cache, or not, alike: a repeat is answered alike
        fake.push(script, script)
        again = await answer(session, batched, body, ids[0])
        assert again == await answer(session, single, body, ids[1])
    assert await records(batched, ids[0]) == await records(single, ids[1])
    assert grown(before[0], counters(batched)) == grown(before[1], counters(single))
