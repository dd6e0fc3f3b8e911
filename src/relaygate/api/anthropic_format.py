"""The Anthropic Messages API's routes: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

:class:`AnthropicFormat` is the wire format the pipeline is given for
``/v1/messages``: requests are translated by :mod:`relaygate.api.anthropic`,
streams by :class:`~relaygate.api.anthropic_stream.AnthropicStream` (kept on
``call.wire``), and every error, before or during a stream, has Anthropic's
shape. The key comes in ``x-api-key`` (as Anthropic's clients send it) or as a
Bearer token; ``anthropic-version`` and ``anthropic-beta`` are accepted and not
required (relaygate speaks one version of the API, whatever the header says).

:class:`AnthropicCountTokens` answers ``count_tokens`` from the gateway's own
tokenizer, without calling an upstream. The 404 and 405 of the ``/v1/messages``
paths take Anthropic's shape from api/shapes.py, as every other error does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from relaygate.api import anthropic
from relaygate.api.anthropic_stream import AnthropicStream
from relaygate.api.http import decode_json_object
from relaygate.asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    new_request_id,
    read_body,
    send_bytes,
)
from relaygate.errors import RelaygateError
from relaygate.schema.requests import Call, Kind

if TYPE_CHECKING:
    from relaygate.state import AppState

__all__ = ["PREFIX", "AnthropicCountTokens", "AnthropicFormat"]

JSON = dict[str, Any]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
PREFIX = "/v1/messages"
# Longer bodies are counted in a thread once tiktoken is loaded: tokenizing megabytes
# would block the loop (until it is loaded, counts are a division, done in place).
_COUNT_IN_THREAD = 64 * 1024


class AnthropicFormat:
    """Anthropic's wire format: Messages requests, its SSE events, its error shape."""

    name = "anthropic"
    json_type_required = True  # the SDK and Anthropic's curl examples send application/json
    stream_headers = anthropic.STREAM_HEADERS

    def parse(self, kind: Kind, body: bytes, request_id: str) -> Call:
        return anthropic.parse(body, request_id)

    def render(self, call: Call, body: JSON, provider: str | None, cached: bool) -> bytes:
        return anthropic.render(call, body)

    def event(self, call: Call, chunk: JSON) -> bytes | None:
        return AnthropicStream.of(call).event(chunk) or None

    def replayed(self, call: Call, chunk: JSON) -> bytes | None:
        return AnthropicStream.of(call).event(chunk) or None  # reads chunks, never changes them

    def end(self, call: Call, provider: str | None, cached: bool) -> bytes:
        return AnthropicStream.of(call).end()

    def error(self, error: RelaygateError) -> bytes:
        return anthropic.error_body(error)

    def error_event(self, error: RelaygateError) -> bytes:
        return anthropic.error_event(error)


class AnthropicCountTokens:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, as relaygate estimates
    them (tiktoken's o200k_base; the upstream model's own tokenizer may differ). The key
    is checked and the model must exist; nothing is called, charged or recorded."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state, request_id = self.state, new_request_id()
        try:
            await state.auth.authenticate(scope)
            body = await read_body(scope, receive, state.max_body)
            data = decode_json_object(body)
            tokenizer = state.recorder.tokenizer
            if tokenizer.exact and len(body) > _COUNT_IN_THREAD:
                counted = await asyncio.to_thread(anthropic.count_tokens, data, tokenizer)
            else:
                counted = anthropic.count_tokens(data, tokenizer)
            state.router.get(data["model"])  # validated above: unknown models are a 404
        except RelaygateError as exc:
            await _send_error(send, exc, request_id)
            return
        except ClientGone:
            return
        except Exception:
            state.log.exception("unexpected error counting tokens for %s", request_id)
            error = RelaygateError(
                f"Internal error; the gateway's log has details under {request_id}."
            )
            await _send_error(send, error, request_id)
            return
        await send_bytes(send, 200, msgspec.json.encode(counted), request_id)


async def _send_error(send: Send, error: RelaygateError, request_id: str) -> None:
    # As the pipeline's errors: the request id is in the X-Request-Id header, not the body.
    body = anthropic.error_body(error)
    await send_bytes(send, error.status, body, request_id, extra=error.headers())
