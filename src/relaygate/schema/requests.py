"""Canonical request types: the OpenAI schema, validated with msgspec.

Inbound APIs decode the wire body into a plain dict (so fields a particular
upstream understands, such as vLLM's ``top_k``, pass through untouched) and
validate it against these types. A wrong field gives one message naming the
field and what was expected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "MAX_DIMENSIONS",
    "MAX_TOKENS",
    "MAX_TOP_K",
    "Call",
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "ContentPart",
    "EmbeddingRequest",
    "Kind",
    "Penalty",
    "Probability",
    "ResponseFormat",
    "Seed",
    "Stop",
    "Temperature",
    "Tokens",
    "Tool",
    "content_parts_error",
    "embedding_inputs",
    "ollama_tagged",
]

# Bounds no real request reaches, that the arithmetic downstream holds: token counts are
# reserved in the limiters (Python ints, Redis Lua doubles exact to 2**53, Redis int64)
# and stored in 32-bit database columns.
MAX_TOKENS = 2**31 - 1
MAX_TOP_K = 1_000_000
MAX_DIMENSIONS = 65_536
Tokens = Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS)]
Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]
Seed = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


def ollama_tagged(name: str) -> str:
    """Ollama names default to the ``latest`` tag: ``llama3.2`` is ``llama3.2:latest``
    (what Ollama's /api/tags lists for it; a registry path's last part holds the tag)."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or not name else f"{name}:latest"


Stop = str | Annotated[list[str], msgspec.Meta(max_length=16)]
Kind = Literal["chat", "completion", "embedding"]


class _Wire(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Validated view of a wire body; unknown fields are allowed and passed on."""


class FunctionCall(_Wire, kw_only=True):
    name: str
    arguments: str


class ToolCall(_Wire, kw_only=True):
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class ChatMessage(_Wire, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class ImageURL(_Wire, kw_only=True):
    url: str
    detail: str | None = None


class ContentPart(_Wire, kw_only=True):
    """One part of a message's content: whatever its type, the fields the gateway reads
    (``text``, ``image_url``) have the types it expects; other fields pass on untouched."""

    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    text: str | None = None
    image_url: str | ImageURL | None = None


_Parts = list[ContentPart]


def content_parts_error(request: ChatRequest) -> msgspec.ValidationError | None:
    """The first content part with a wrong type, as msgspec names it (path included)."""
    for index, message in enumerate(request.messages):
        if isinstance(message.content, list):
            try:
                msgspec.convert(message.content, _Parts)
            except msgspec.ValidationError as exc:
                text, _, where = str(exc).partition(" - at `$")
                return msgspec.ValidationError(
                    f"{text} - at `$.messages[{index}].content{where.rstrip('`')}`"
                )
    return None


class JSONSchemaFormat(_Wire, kw_only=True):
    name: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormat(_Wire, kw_only=True):
    """``text``, ``json_object``, ``json_schema``, or a type an upstream knows of its own
    (vLLM's ``structural_tag``), passed on."""

    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(_Wire, kw_only=True):
    include_usage: bool | None = None


class ToolFunction(_Wire, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Wire, kw_only=True):
    type: Literal["function"]
    function: ToolFunction


class _Sampling(_Wire, kw_only=True):
    model: ModelName
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    max_tokens: Tokens | None = None
    stop: Stop | None = None
    seed: Seed | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    user: Annotated[str, msgspec.Meta(max_length=512)] | None = None


class ChatRequest(_Sampling, kw_only=True):
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    max_completion_tokens: Tokens | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None


class CompletionRequest(_Sampling, kw_only=True):
    prompt: str | Annotated[list[str], msgspec.Meta(min_length=1)]
    suffix: str | None = None
    echo: bool | None = None


class EmbeddingRequest(_Wire, kw_only=True):
    model: ModelName
    # str, list[str], list[int] (tokens) or list[list[int]]; msgspec allows one array
    # type in a union, so the element types are checked by ``embedding_inputs``.
    input: (
        Annotated[str, msgspec.Meta(min_length=1)]
        | Annotated[list[Any], msgspec.Meta(min_length=1, max_length=2048)]
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=MAX_DIMENSIONS)] | None = None
    user: str | None = None


def embedding_inputs(request: EmbeddingRequest) -> list[str] | None:
    """The inputs as a list of strings; None when they are token arrays (passed through)."""
    value = request.input
    if isinstance(value, str):
        return [value]
    if all(isinstance(item, str) for item in value):
        return list(value)
    return None


@dataclass(slots=True)
class Call:
    """One inference request on its way through the pipeline.

    ``body`` is the client's request as decoded (unknown fields kept);
    ``params`` is its validated, typed view. ``model`` is the public name the
    client asked for; responses always carry it back.
    """

    kind: Kind
    model: str
    body: dict[str, Any]
    params: ChatRequest | CompletionRequest | EmbeddingRequest
    stream: bool
    request_id: str
    usage: dict[str, Any] | None = None  # as the upstream reported it, once known
    served_by: tuple[str, str] | None = None  # (provider, deployment) last called
    relayed: list[str] = field(default_factory=list)  # streamed text while usage is unknown
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # added to the response
    started: float = field(default_factory=time.perf_counter)
    wire: dict[str, Any] = field(default_factory=dict)  # an inbound API's own state
    credential: str | None = field(default=None, repr=False)  # the caller's; scrubbed from errors
    # the deployments to try instead of the router's plan: the caller's own provider (BYOK)
    route: list[Any] | None = field(default=None, repr=False)
    # its spans (observability/tracing.py RequestTrace) when tracing is on, else None
    trace: Any = field(default=None, repr=False)
    # the client's API is OpenAI's own: a complete answer may be relayed as its bytes
    relay: bool = False

    @property
    def include_usage(self) -> bool:
        """Whether the client asked for the usage chunk at the end of a stream."""
        opts = getattr(self.params, "stream_options", None)
        return bool(opts is not None and opts.include_usage)

    @property
    def max_output_tokens(self) -> int | None:
        params = self.params
        if isinstance(params, ChatRequest) and params.max_completion_tokens is not None:
            return params.max_completion_tokens
        return getattr(params, "max_tokens", None)
