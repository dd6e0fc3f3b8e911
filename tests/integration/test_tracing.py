"""OpenTelemetry traces through the real gateway, exported over OTLP/HTTP to an in-process
collector: the spans of each pipeline stage and their parents, the GenAI attributes, the
caller's traceparent continued and passed on upstream, errors by type, and never a key,
a prompt or a completion in anything exported."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import string
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.otlp_collector import OtlpCollector, Span
from tests.fakes.script import Script
from tests.fuzz import FUZZ
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key

pytestmark = pytest.mark.asyncio(loop_scope="module")

UPSTREAM_KEY = "zq7upstreamtracekey93"  # shaped like nothing: only the configuration knows it
COLLECTOR_KEY = "collector-secret-4471"  # sent to the collector as a header, never in a span
UPSTREAM_MODEL = "gpt-upstream-1"
STAGES = ["authenticate", "parse", "admit", "settle"]


class Setup:
    def __init__(self, gateway: RunningGateway, fake: FakeOpenAI, collector: OtlpCollector):
        self.gateway, self.fake, self.collector = gateway, fake, collector
        self.key = ""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup() -> AsyncIterator[Setup]:
    async with OtlpCollector() as collector, FakeOpenAI([UPSTREAM_MODEL]) as fake:
        fake.api_key = UPSTREAM_KEY
        models = [
            {"name": "oa", "deployments": [{
                "provider": "openai", "base_url": fake.base_url, "api_key": UPSTREAM_KEY,
                "model": UPSTREAM_MODEL,
            }]},
        ]  # fmt: skip
        tracing = {
            "enabled": True,
            "endpoint": collector.endpoint,
            "headers": {"x-collector-key": COLLECTOR_KEY},
            "service_name": "relaygate-test",
        }
        settings = make_settings(models, tracing=tracing)
        async with running_gateway(settings) as gateway:
            ready = Setup(gateway, fake, collector)
            _, ready.key = await new_key(gateway, tier="unlimited")
            yield ready


def traceparent() -> tuple[str, str, str]:
    """A caller's sampled W3C traceparent: (header, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


async def post(
    setup: Setup, body: dict[str, Any], key: str | None = None, **headers: str
) -> tuple[int, bytes]:
    sent = {"Authorization": f"Bearer {key or setup.key}", **headers}
    async with aiohttp.ClientSession() as session:
        url = setup.gateway.url + "/v1/chat/completions"
        async with session.post(url, json=body, headers=sent) as response:
            return response.status, await response.read()


async def spans_of(setup: Setup, trace_id: str, count: int) -> list[Span]:
    """The trace's spans once its root has ended and been exported."""
    tracing = setup.gateway.state.tracing
    assert tracing is not None
    for _ in range(100):
        await asyncio.to_thread(tracing.provider.force_flush)
        found = setup.collector.trace(trace_id)
        if len(found) >= count and any(s.kind == "server" for s in found):
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"{len(found)} spans of {count} exported: {[s.name for s in found]}")


def chat(stream: bool = False, content: str = "hello there") -> dict[str, Any]:
    body: dict[str, Any] = {"model": "oa", "messages": [{"role": "user", "content": content}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def one(spans: list[Span], name: str) -> Span:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_a_completion_is_one_trace_that_continues_the_callers(setup: Setup) -> None:
    header, trace_id, caller_span = traceparent()
    setup.fake.push(Script(content="one two three"))
    status, body = await post(setup, chat(), traceparent=header)
    assert status == 200, body
    spans = await spans_of(setup, trace_id, 6)

    root = one(spans, "chat oa")
    assert root.kind == "server" and root.parent_id == caller_span and root.status == "unset"
    assert root.resource["service.name"] == "relaygate-test"
    attributes = root.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "oa"
    assert attributes["gen_ai.response.model"] == UPSTREAM_MODEL
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["http.response.status_code"] == 200
    usage = json.loads(body)["usage"]
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 3

    for name in STAGES:
        stage = one(spans, name)
        assert stage.parent_id == root.span_id and stage.kind == "internal"
    upstream = one(spans, f"chat {UPSTREAM_MODEL}")
    assert upstream.kind == "client" and upstream.parent_id == root.span_id
    assert upstream.attributes["server.address"] == "127.0.0.1"
    assert upstream.attributes["server.port"] == setup.fake.port
    assert upstream.attributes["gen_ai.request.model"] == UPSTREAM_MODEL
    assert upstream.attributes["gen_ai.usage.output_tokens"] == 3
    # the stages follow each other in the pipeline's order
    order = [one(spans, n) for n in ("authenticate", "parse", "admit")] + [upstream]
    order.append(one(spans, "settle"))
    assert all(a.end <= b.start for a, b in itertools.pairwise(order))
    assert root.start <= order[0].start and order[-1].end <= root.end

    # the upstream request carried the trace on, with the CLIENT span as its parent
    sent = setup.fake.requests[-1].headers
    assert sent["traceparent"] == f"00-{trace_id}-{upstream.span_id}-01"


async def test_a_stream_is_relayed_under_its_own_stage(setup: Setup) -> None:
    header, trace_id, _caller_span = traceparent()
    setup.fake.push(Script(content="a b c d", finish_reason="length"))
    status, _ = await post(setup, chat(stream=True), traceparent=header)
    assert status == 200
    spans = await spans_of(setup, trace_id, 7)
    root = one(spans, "chat oa")
    relay = one(spans, "relay")
    upstream = one(spans, f"chat {UPSTREAM_MODEL}")
    assert relay.parent_id == upstream.parent_id == root.span_id
    assert root.attributes["relaygate.stream"] is True
    assert root.attributes["gen_ai.response.finish_reasons"] == ["length"]
    assert root.attributes["gen_ai.usage.output_tokens"] == 4
    assert upstream.attributes["gen_ai.usage.output_tokens"] == 4
    assert upstream.attributes["gen_ai.response.model"] == UPSTREAM_MODEL
    # the upstream's span lasts as long as its stream, relayed meanwhile
    assert upstream.start <= relay.start and relay.end <= upstream.end <= root.end


async def test_a_new_trace_starts_without_a_traceparent(setup: Setup) -> None:
    setup.fake.push(Script(content="x"))
    before = len(setup.collector.spans)
    status, _ = await post(setup, chat())
    assert status == 200
    tracing = setup.gateway.state.tracing
    assert tracing is not None
    roots: list[Span] = []
    for _ in range(100):
        await asyncio.to_thread(tracing.provider.force_flush)
        roots = [s for s in setup.collector.spans[before:] if s.kind == "server"]
        if roots:
            break
        await asyncio.sleep(0.02)
    assert len(roots) == 1 and roots[0].parent_id == ""
    assert setup.fake.requests[-1].headers["traceparent"].split("-")[1] == roots[0].trace_id


async def test_errors_are_recorded_by_type(setup: Setup) -> None:
    # an upstream failing: the CLIENT span is an error of kind status_5xx, the root too
    header, trace_id, _ = traceparent()
    setup.fake.push(Script(status=500, error_message="boom " + UPSTREAM_KEY))
    status, _ = await post(setup, chat(), traceparent=header)
    assert status == 502
    spans = await spans_of(setup, trace_id, 6)
    upstream = one(spans, f"chat {UPSTREAM_MODEL}")
    assert upstream.status == "error" and upstream.attributes["error.type"] == "status_5xx"
    root = one(spans, "chat oa")
    assert root.status == "error" and root.attributes["http.response.status_code"] == 502

    # a model that does not exist: a 4xx, which is the client's, not the server span's error
    header, trace_id, _ = traceparent()
    status, _ = await post(setup, {**chat(), "model": "no-such-model"}, traceparent=header)
    assert status == 404
    spans = await spans_of(setup, trace_id, 3)
    root = one(spans, "POST /v1/chat/completions")
    assert root.status == "unset" and root.attributes["error.type"] == "ModelNotFound"
    assert root.attributes["http.response.status_code"] == 404
    assert not [s for s in spans if s.kind == "client"]

    # a key that does not exist: stopped at authenticate
    header, trace_id, _ = traceparent()
    status, _ = await post(setup, chat(), key="rg_not-a-key-0123456789", traceparent=header)
    assert status == 401
    spans = await spans_of(setup, trace_id, 2)
    assert {s.name for s in spans} == {"POST /v1/chat/completions", "authenticate"}
    assert one(spans, "authenticate").status == "error"


async def test_a_client_leaving_mid_stream_ends_every_span(setup: Setup) -> None:
    header, trace_id, _ = traceparent()
    setup.fake.push(Script(content=" ".join(["word"] * 40), chunk_delay=0.05))
    headers = {"Authorization": f"Bearer {setup.key}", "traceparent": header}
    async with aiohttp.ClientSession() as session:
        url = setup.gateway.url + "/v1/chat/completions"
        async with session.post(url, json=chat(stream=True), headers=headers) as response:
            assert response.status == 200
            await response.content.readline()  # the first event, then the client goes
    spans = await spans_of(setup, trace_id, 7)
    root = one(spans, "chat oa")
    assert root.attributes["http.response.status_code"] == 499
    assert root.status == "unset"  # the client's doing, not a failure of the gateway
    upstream = one(spans, f"chat {UPSTREAM_MODEL}")
    assert upstream.end >= upstream.start and upstream.parent_id == root.span_id
    assert one(spans, "relay").end <= upstream.end


SECRET = st.text(alphabet=string.ascii_letters + string.digits, min_size=24, max_size=40)


@settings(FUZZ, max_examples=25)
@given(secret=SECRET, prompt=SECRET, completion=SECRET)
async def test_no_key_prompt_or_completion_is_ever_exported(
    setup: Setup, secret: str, prompt: str, completion: str
) -> None:
    header, trace_id, _ = traceparent()
    # the secret as a key that does not exist, and in headers an upstream never needs
    status, _ = await post(setup, chat(), key="rg_" + secret, traceparent=header)
    assert status == 401
    header2, trace2, _ = traceparent()
    setup.fake.push(Script(content=completion))
    status, answer = await post(
        setup,
        chat(content=prompt),
        traceparent=header2,
        **{"x-secret-note": secret, "cookie": f"session={secret}"},
    )
    assert status == 200 and completion.encode() in answer
    await spans_of(setup, trace_id, 2)
    await spans_of(setup, trace2, 6)
    exported = b"".join(setup.collector.exports)
    for hidden in (
        secret,
        prompt,
        completion,
        setup.key,
        setup.gateway.admin_key,
        UPSTREAM_KEY,
        COLLECTOR_KEY,
    ):
        assert hidden.encode() not in exported
    assert all(h["x-collector-key"] == COLLECTOR_KEY for h in setup.collector.headers)
