"""The provider boundary: upstream text enters the gateway scrubbed of every secret it knows."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol
from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.errors import UpstreamProtocolError, UpstreamStatusError
from relaygate.providers import base
from relaygate.providers.base import in_body_error, ndjson_lines, sse_data_batches, upstream_text
from relaygate.providers.mock import MockProvider
from relaygate.routing.health import Health
from relaygate.routing.router import Deployment
from relaygate.schema.requests import Call, ChatMessage, ChatRequest
from relaygate.settings import RoutingConfig, Timeouts

DEPLOYMENT_KEY = "zq8kd93mfa0q7x"  # shaped like nothing: only knowing it removes it
OTHER_KEY = "p4ssw0rdlike1"  # another deployment's key
CALLER = "opaque7credential"  # a caller credential shaped like nothing either


def deployment() -> Deployment:
    return Deployment(
        name="m", model="m", provider=MockProvider(), provider_name="mock", upstream_model="m",
        weight=1.0, timeouts=Timeouts(), health=Health(RoutingConfig()), api_key=DEPLOYMENT_KEY,
        known_secrets=(DEPLOYMENT_KEY, OTHER_KEY),
    )  # fmt: skip


def call(credential: str | None = CALLER) -> Call:
    params = ChatRequest(model="m", messages=[ChatMessage(role="user", content="hi")])
    return Call("chat", "m", {}, params, False, "req", credential=credential)


def test_upstream_text_removes_the_deployment_keys_and_the_callers_credential() -> None:
    text = f"bad key {DEPLOYMENT_KEY}; also {OTHER_KEY} and {CALLER}; model llama3.2:1b"
    assert (
        upstream_text(text, deployment(), call())
        == "bad key ***; also *** and ***; model llama3.2:1b"
    )
    assert CALLER in upstream_text(text, deployment(), call(None))  # what threading it is for


def test_upstream_text_scrubs_before_it_cuts() -> None:
    text = "x" * 1990 + DEPLOYMENT_KEY
    assert upstream_text(text, deployment(), call()) == "x" * 1990 + "***"


@pytest.mark.parametrize(
    "error",
    [
        f"invalid credential {CALLER}",
        {"message": f"invalid credential {CALLER}", "type": "auth"},
        {"code": 401, "detail": f"key={DEPLOYMENT_KEY}"},
    ],
)
def test_in_body_errors_are_scrubbed(error: object) -> None:
    exc = in_body_error(deployment(), call(), error, mid_stream=True)
    assert isinstance(exc, UpstreamStatusError) and exc.status == 502 and exc.retryable
    assert exc.message.startswith("Deployment 'm' failed mid-stream: ")
    assert CALLER not in exc.message and DEPLOYMENT_KEY not in exc.message
    assert "***" in exc.message


def test_health_keeps_the_class_apart_from_the_text() -> None:
    health = Health(RoutingConfig())
    health.record_failure(10.0, "Deployment 'm' answered 503: ***", kind="status_5xx", at=1e9)
    assert (health.last_error_kind, health.last_error, health.last_error_at) == (
        "status_5xx", "Deployment 'm' answered 503: ***", 1e9
    )  # fmt: skip
    health.record_success()
    assert (health.last_error_kind, health.last_error, health.last_error_at) == ("", "", None)


class _Response:
    """Just what the stream readers use of an aiohttp response: its body as a real
    ``aiohttp.StreamReader``, fed ``pieces`` one per turn of the event loop."""

    def __init__(self, pieces: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        protocol = BaseProtocol(loop)
        protocol.connection_made(asyncio.Transport())  # bodies here stay below flow control
        self.content = aiohttp.StreamReader(protocol, 2**16, loop=loop)
        self.feeding = asyncio.ensure_future(self._feed(pieces))

    async def _feed(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.content.feed_data(piece)
            await asyncio.sleep(0)
        self.content.feed_eof()


SSE_LINE = st.one_of(
    st.builds(lambda s: b"data: " + s.encode(), st.text(max_size=30)),
    st.builds(lambda s: b"data:" + s.encode(), st.text(max_size=30)),
    st.sampled_from([b"", b": keep-alive", b"event: delta", b"id: 7", b"data: [DONE]"]),
    st.builds(lambda s: s.encode(), st.text(max_size=20)),
)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(SSE_LINE, max_size=12),
    crlf=st.booleans(),
    final_newline=st.booleans(),
    cuts=st.lists(st.integers(0, 10**4), max_size=8),
)
async def test_sse_batches_hold_the_data_lines_read_line_by_line(
    lines: list[bytes], crlf: bool, final_newline: bool, cuts: list[int]
) -> None:
    """However the body is cut into network reads, the batches hold, in order, exactly the
    ``data:`` payloads that reading it line by line (``ndjson_lines``) finds; no batch is
    empty."""
    body = (b"\r\n" if crlf else b"\n").join(lines) + (b"\n" if final_newline else b"")
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    pieces = [body[a:b] for a, b in itertools.pairwise(points)]
    by_line = _Response(pieces)
    expected = [
        line[5:].strip()
        async for line in ndjson_lines(by_line)  # type: ignore[arg-type]
        if line.startswith(b"data:")
    ]
    batched = _Response(pieces)
    batches = [b async for b in sse_data_batches(batched, deployment())]  # type: ignore[arg-type]
    assert all(batches)
    assert [data for batch in batches for data in batch] == expected
    await asyncio.gather(by_line.feeding, batched.feeding)


async def test_an_sse_line_over_the_limit_is_the_upstreams_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A line that never ends (within MAX_SSE_LINE) is an upstream protocol error, not a
    buffer that grows without bound."""
    monkeypatch.setattr(base, "MAX_SSE_LINE", 64)
    fine = _Response([b"data: " + b"x" * 58 + b"\n", b"data: " + b"y" * 58])
    batches = [b async for b in sse_data_batches(fine, deployment())]  # type: ignore[arg-type]
    assert batches == [[b"x" * 58], [b"y" * 58]]
    endless = _Response([b"data: {", b"z" * 40, b"z" * 40])
    with pytest.raises(UpstreamProtocolError, match="longer than 64 bytes"):
        async for _ in sse_data_batches(endless, deployment()):  # type: ignore[arg-type]
            pass
    await asyncio.gather(fine.feeding, endless.feeding)
