"""The pipeline knows no wire format: a format it has never seen, defined here in a
few lines, gets every stage (keys, parsing errors, the call, streaming, metrics)
by being handed to it; nothing else changes. This is what adding an inbound API
costs: one module with a format, and its routes."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from relaygate.api.http import decode_json_object
from relaygate.api.parsing import parse_call
from relaygate.errors import RelaygateError
from relaygate.pipeline import Pipeline, WireFormat
from relaygate.schema.requests import Call, Kind
from tests.gateway import RunningGateway, make_settings, running_gateway

JSON = dict[str, Any]


class PlainText:
    """A made-up API: ``{"say": ..., "stream": ...}`` in, plain text out."""

    name = "plain"
    json_type_required = False
    stream_headers = ((b"content-type", b"text/plain"),)

    def parse(self, kind: Kind, body: bytes, request_id: str) -> Call:
        data = decode_json_object(body)
        chat = {"model": "mock", "messages": [{"role": "user", "content": data.get("say")}]}
        chat["stream"] = bool(data.get("stream"))
        return parse_call(kind, msgspec.json.encode(chat), request_id)

    def render(self, call: Call, body: JSON, provider: str | None, cached: bool) -> bytes:
        return str(body["choices"][0]["message"]["content"]).encode()

    def event(self, call: Call, chunk: JSON) -> bytes | None:
        return self.replayed(call, chunk)

    def replayed(self, call: Call, chunk: JSON) -> bytes | None:
        choices = chunk.get("choices")
        text = (choices[0].get("delta") or {}).get("content") if choices else None
        return text.encode() if text else None

    def end(self, call: Call, provider: str | None, cached: bool) -> bytes:
        return f"\n[{call.usage and call.usage['completion_tokens']} words]".encode()

    def error(self, error: RelaygateError) -> bytes:
        return f"sorry: {error.message}".encode()

    def error_event(self, error: RelaygateError) -> bytes:
        return self.error(error)


async def call(
    gateway: RunningGateway, fmt: WireFormat, body: bytes, key: str
) -> tuple[int, bytes]:
    """One request straight into the pipeline's ASGI handler."""
    handler = Pipeline(gateway.state).route(fmt, "chat")
    scope = {"type": "http", "method": "POST", "path": "/plain", "client": ("127.0.0.1", 1),
             "headers": [(b"authorization", f"Bearer {key}".encode())]}  # fmt: skip
    sent: list[JSON] = []
    done = asyncio.Event()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> JSON:
        if messages:
            return messages.pop()
        await done.wait()  # the client stays until the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: JSON) -> None:
        sent.append(message)

    await handler(scope, receive, send)
    done.set()
    status = sent[0]["status"]
    return status, b"".join(m.get("body", b"") for m in sent[1:])


async def test_a_new_format_gets_every_stage_by_being_handed_to_the_pipeline() -> None:
    async with running_gateway(make_settings(mock_model=True)) as gateway:
        key = gateway.admin_key
        whole = await call(gateway, PlainText(), b'{"say": "hello there"}', key)
        streamed = await call(gateway, PlainText(), b'{"say": "hello there", "stream": 1}', key)
        refused = await call(gateway, PlainText(), b'{"say": "hi"}', "rg_wrong")
        invalid = await call(gateway, PlainText(), b'{"say": 5}', key)
        gateway.state.metrics.flush()  # the request tallies, as render() does
        metrics = gateway.state.metrics.registry
    assert whole[0] == 200 and whole[1].endswith(b"You said: hello there")
    assert streamed[0] == 200
    text, _, words = streamed[1].rpartition(b"\n")
    assert text == whole[1] and words == f"[{len(whole[1].split())} words]".encode()
    assert refused[0] == 401 and refused[1].startswith(b"sorry: ")
    assert invalid[0] == 400 and b"messages[0].content" in invalid[1]
    count = metrics.get_sample_value
    assert (
        count("relaygate_requests_total", {"model": "mock", "api": "plain", "status": "200"}) == 2
    )
