"""The seeds' inference endpoints, kept working: POST /ai/generate (seeds 000 and 001)
and POST /chat (seed 002).

Both run the same pipeline as /v1/chat/completions (keys, limits, cache, routing,
usage) and differ only in their wire format:

- ``/ai/generate`` takes ``{"prompt", "model", "stream", "use_cache", "temperature",
  "max_tokens", "system"}`` and answers ``{"response", "model", "cached", "done",
  "done_reason", "prompt_eval_count", "eval_count", "total_duration_ms"}``; with
  ``"stream": true`` it answers Ollama-style NDJSON lines, the last one with
  ``"done": true``, ``cached`` and the counts. Without ``model``, the first
  configured model is used.
- ``/chat`` takes and answers OpenAI's chat shape, plus ``backend`` (the
  provider that answered) and ``cached``.

Errors keep OpenAI's shape (``{"error": {"message", ...}}``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from relaygate.api.http import decode_json_object, error_body
from relaygate.api.openai import OpenAIFormat
from relaygate.api.parsing import invalid_request, parse_call
from relaygate.errors import InvalidRequest, RelaygateError
from relaygate.schema.requests import Call, Kind, ModelName, Temperature, Tokens

__all__ = ["GenerateFormat", "SeedChatFormat"]

_encode = msgspec.json.encode
JSON = dict[str, Any]


class GenerateRequest(msgspec.Struct, kw_only=True):
    prompt: Annotated[str, msgspec.Meta(min_length=1)]
    model: ModelName | None = None
    stream: bool = False
    use_cache: bool = True
    temperature: Temperature | None = None
    max_tokens: Tokens | None = None
    system: str | None = None


class GenerateFormat:
    """POST /ai/generate: NDJSON lines when streaming; errors in OpenAI's shape."""

    name = "seed"
    json_type_required = True
    user_providers = True  # a task endpoint: the caller's own provider configuration (BYOK)
    stream_headers = (
        (b"content-type", b"application/x-ndjson"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    )

    def __init__(self, models: Mapping[str, Any]) -> None:
        self.models = models  # the configured models, by name: the first is the default

    def parse(self, kind: Kind, body: bytes, request_id: str) -> Call:
        try:
            params = msgspec.convert(decode_json_object(body), GenerateRequest)
        except msgspec.ValidationError as exc:
            raise invalid_request(str(exc)) from None
        model = params.model or next(iter(self.models), None)
        if model is None:
            raise InvalidRequest("No model is configured on this gateway.", param="model")
        messages = [{"role": "user", "content": params.prompt}]
        if params.system:
            messages.insert(0, {"role": "system", "content": params.system})
        chat: JSON = {"model": model, "messages": messages, "stream": params.stream}
        chat["use_cache"] = params.use_cache
        if params.temperature is not None:
            chat["temperature"] = params.temperature
        if params.max_tokens is not None:
            chat["max_tokens"] = params.max_tokens
        return parse_call("chat", _encode(chat), request_id)

    def render(self, call: Call, body: JSON, provider: str | None, cached: bool) -> bytes:
        choice = (body.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content") or ""
        reply = {"response": text, "model": call.model, "cached": cached, "done": True}
        reply["done_reason"] = choice.get("finish_reason")
        return _encode({**reply, **_counts(call, body.get("usage"))})

    def event(self, call: Call, chunk: JSON) -> bytes | None:
        return self.replayed(call, chunk)

    def replayed(self, call: Call, chunk: JSON) -> bytes | None:
        choices = chunk.get("choices")
        delta = (choices[0].get("delta") or {}) if choices else {}
        text = delta.get("content")
        if not text:
            return None
        return _encode({"model": call.model, "response": text, "done": False}) + b"\n"

    def end(self, call: Call, provider: str | None, cached: bool) -> bytes:
        last = {"model": call.model, "response": "", "done": True, "cached": cached}
        return _encode({**last, **_counts(call, call.usage)}) + b"\n"

    def error(self, error: RelaygateError) -> bytes:
        return error_body(error)

    def error_event(self, error: RelaygateError) -> bytes:
        return _encode({"error": error.message, "done": True}) + b"\n"


class SeedChatFormat:
    """POST /chat: OpenAI's chat format, whose answer adds ``backend`` and ``cached``."""

    name = "seed"

    def __init__(self) -> None:
        self.openai = OpenAIFormat()
        self.json_type_required = self.openai.json_type_required
        self.stream_headers = self.openai.stream_headers

    def parse(self, kind: Kind, body: bytes, request_id: str) -> Call:
        return self.openai.parse(kind, body, request_id)

    def render(self, call: Call, body: JSON, provider: str | None, cached: bool) -> bytes:
        return _encode({**body, "backend": provider, "cached": cached})

    def event(self, call: Call, chunk: JSON) -> bytes | None:
        return self.openai.event(call, chunk)

    def replayed(self, call: Call, chunk: JSON) -> bytes | None:
        return self.openai.replayed(call, chunk)

    def end(self, call: Call, provider: str | None, cached: bool) -> bytes:
        return self.openai.end(call, provider, cached)

    def error(self, error: RelaygateError) -> bytes:
        return self.openai.error(error)

    def error_event(self, error: RelaygateError) -> bytes:
        return self.openai.error_event(error)


def _counts(call: Call, usage: JSON | None) -> JSON:
    usage = usage or {}
    return {
        "prompt_eval_count": usage.get("prompt_tokens"),
        "eval_count": usage.get("completion_tokens"),
        "total_duration_ms": round((time.perf_counter() - call.started) * 1000, 2),
    }
