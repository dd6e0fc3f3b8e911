"""The inbound Ollama embedding API: POST /api/embed and the legacy POST /api/embeddings.

Both are wire formats of kind ``embedding``: the body becomes the canonical
(OpenAI) embeddings request, so every model the gateway serves can embed
through them, with keys, limits, the cache and usage accounting, exactly as
through /v1/embeddings (the two share cache entries: same model, same input,
same answer). ``keep_alive`` is kept for Ollama deployments (in ``call.wire``)
and ignored by the others; ``truncate`` and ``options`` are accepted and
ignored: deployments embed with their own defaults (Ollama's: truncate).
Embeddings never stream. Errors are Ollama's ``{"error": "..."}``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec

from relaygate.api.http import decode_json_object
from relaygate.api.parsing import invalid_request, parse_call
from relaygate.errors import RelaygateError
from relaygate.schema.requests import Call, Kind, ModelName

__all__ = [
    "KeepAlive",
    "OllamaEmbed",
    "OllamaEmbedFormat",
    "OllamaEmbeddings",
    "OllamaEmbeddingsFormat",
]

JSON = dict[str, Any]
_encode = msgspec.json.encode
# Ollama's keep_alive: a duration ("5m", "1h30m", "-1") or a number of seconds (-1: forever).
KeepAlive = Annotated[str, msgspec.Meta(max_length=64)] | int | float
_Text = Annotated[str, msgspec.Meta(min_length=1)]


class OllamaEmbed(msgspec.Struct, kw_only=True):
    """POST /api/embed: one input or several."""

    model: ModelName
    input: _Text | Annotated[list[_Text], msgspec.Meta(min_length=1, max_length=2048)]
    truncate: bool | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive | None = None
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None


class OllamaEmbeddings(msgspec.Struct, kw_only=True):
    """POST /api/embeddings (legacy): one prompt."""

    model: ModelName
    prompt: _Text
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive | None = None


class _OllamaEmbedding:
    """What both routes share: parsing to the canonical request, and Ollama's errors."""

    name = "ollama"
    json_type_required = False  # `curl URL -d '{...}'`, as Ollama's docs show, works
    stream_headers = ((b"content-type", b"application/x-ndjson"),)
    schema: type[OllamaEmbed | OllamaEmbeddings] = OllamaEmbed

    def parse(self, kind: Kind, body: bytes, request_id: str) -> Call:
        try:
            params = msgspec.convert(decode_json_object(body), self.schema)
        except msgspec.ValidationError as exc:
            raise invalid_request(str(exc)) from None
        canonical: JSON = {"model": params.model, "input": self.inputs(params)}
        if isinstance(params, OllamaEmbed) and params.dimensions is not None:
            canonical["dimensions"] = params.dimensions
        call = parse_call("embedding", _encode(canonical), request_id)
        if params.keep_alive is not None:
            call.wire["keep_alive"] = params.keep_alive
        return call

    def inputs(self, params: Any) -> str | list[str]:
        raise NotImplementedError

    def error(self, error: RelaygateError) -> bytes:
        return _encode({"error": error.message})

    def error_event(self, error: RelaygateError) -> bytes:
        # Embeddings never stream; a stream's error line would be the same object.
        return _encode({"error": error.message}) + b"\n"

    # An embedding call is never a stream (its canonical request has no ``stream``), so the
    # pipeline never asks for events; reaching one is a bug, logged as such (a 500).
    def event(self, call: Call, chunk: JSON) -> bytes | None:
        raise _never_streams()

    def replayed(self, call: Call, chunk: JSON) -> bytes | None:
        raise _never_streams()

    def end(self, call: Call, provider: str | None, cached: bool) -> bytes:
        raise _never_streams()


class OllamaEmbedFormat(_OllamaEmbedding):
    """POST /api/embed: ``{"model", "embeddings": [[...]], "total_duration",
    "load_duration", "prompt_eval_count"}``, one vector per input, in order."""

    schema = OllamaEmbed

    def inputs(self, params: OllamaEmbed) -> str | list[str]:
        return params.input

    def render(self, call: Call, body: JSON, provider: str | None, cached: bool) -> bytes:
        usage = body.get("usage") or {}
        return _encode(
            {
                "model": call.model,
                "embeddings": _vectors(body),
                "total_duration": int((time.perf_counter() - call.started) * 1e9),
                "load_duration": 0,
                "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
            }
        )


class OllamaEmbeddingsFormat(_OllamaEmbedding):
    """POST /api/embeddings (legacy): ``{"embedding": [...]}``."""

    schema = OllamaEmbeddings

    def inputs(self, params: OllamaEmbeddings) -> str | list[str]:
        return params.prompt

    def render(self, call: Call, body: JSON, provider: str | None, cached: bool) -> bytes:
        vectors = _vectors(body)
        return _encode({"embedding": vectors[0] if vectors else []})


def _never_streams() -> RuntimeError:
    return RuntimeError("an embedding call was treated as a stream")


def _vectors(body: JSON) -> list[Any]:
    """The canonical answer's vectors, in input order."""
    data = [d for d in body.get("data") or () if isinstance(d, dict)]
    data.sort(key=lambda d: d.get("index", 0))
    return [d.get("embedding") for d in data]
