"""The inbound OpenAI-compatible API: /v1/chat/completions, /v1/completions,
/v1/embeddings, /v1/models.

:class:`OpenAIFormat` is the wire format the pipeline is given for the
inference routes: it parses the body into a :class:`Call` and renders the
result as JSON or as server-sent events. Every error has OpenAI's shape. A
stream is relayed chunk by chunk as it arrives and ends with ``data: [DONE]``.
:class:`OpenAIModels` answers the model listing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from relaygate.api.http import error_body, send_error
from relaygate.api.parsing import parse_call
from relaygate.api.shapes import error_renderer_for
from relaygate.asgi import Receive, Scope, Send, new_request_id, send_bytes
from relaygate.errors import ModelNotFound, RelaygateError
from relaygate.schema.requests import Call, Kind

if TYPE_CHECKING:
    from relaygate.routing.router import Model
    from relaygate.state import AppState

__all__ = ["OpenAIFormat", "OpenAIModels"]

_encode = msgspec.json.encode
_SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)
_DONE = b"data: [DONE]\n\n"


class OpenAIFormat:
    """OpenAI's wire format: JSON bodies, server-sent events, OpenAI's error shape."""

    name = "openai"
    json_type_required = True  # Content-Type must say JSON (Ollama's API does not ask it)
    stream_headers = _SSE_HEADERS
    relays_openai = True  # render() is the canonical body as it is: an upstream's bytes do

    def parse(self, kind: Kind, body: bytes, request_id: str) -> Call:
        return parse_call(kind, body, request_id)

    def render(self, call: Call, body: dict[str, Any], provider: str | None, cached: bool) -> bytes:
        return _encode(body)

    def event(self, call: Call, chunk: dict[str, Any]) -> bytes | None:
        return _sse(chunk, call)

    def replayed(self, call: Call, chunk: dict[str, Any]) -> bytes | None:
        return _replayed(chunk, call)

    def end(self, call: Call, provider: str | None, cached: bool) -> bytes:
        return _DONE

    def error(self, error: RelaygateError) -> bytes:
        return error_body(error)

    def error_event(self, error: RelaygateError) -> bytes:
        return b"data: " + error_body(error) + b"\n\n"


class OpenAIModels:
    """GET /v1/models and /v1/models/{name}: the models the caller's key may use."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._model_listing(scope, send, None)

    async def model(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._model_listing(scope, send, scope["path"][len("/v1/models/") :])

    async def _model_listing(self, scope: Scope, send: Send, name: str | None) -> None:
        """GET /v1/models (``name`` None) or /v1/models/{name}."""
        request_id = new_request_id()
        try:
            principal = await self.state.auth.authenticate(scope)
            models = self.state.models_for(principal)
            if name is None:
                body = _encode({"object": "list", "data": [_model_entry(m) for m in models]})
            elif (model := next((m for m in models if m.name == name), None)) is not None:
                body = _encode(_model_entry(model))
            else:
                raise ModelNotFound(name)
        except RelaygateError as exc:
            await send_error(send, exc, request_id, error_renderer_for(scope["path"]))
            return
        await send_bytes(send, 200, body, request_id)


def _model_entry(model: Model) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": model.name,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by,
    }
    if model.description:
        entry["description"] = model.description
    return entry


def _sse(chunk: dict[str, Any], call: Call) -> bytes | None:
    """One SSE event; the usage chunk is dropped unless the client asked for it."""
    if not call.include_usage:
        if not chunk.get("choices") and "usage" in chunk:
            return None
        chunk.pop("usage", None)
    return b"data: " + _encode(chunk) + b"\n\n"


def _replayed(chunk: dict[str, Any], call: Call) -> bytes | None:
    """One SSE event from a chunk that must stay as it is (it is, or will be, cached)."""
    if not call.include_usage and "usage" in chunk:
        if not chunk.get("choices"):
            return None
        chunk = {k: v for k, v in chunk.items() if k != "usage"}
    return b"data: " + _encode(chunk) + b"\n\n"
