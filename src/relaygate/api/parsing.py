"""The canonical request, parsed: what every inbound API ends its parsing with.

:func:`parse_call` validates an OpenAI-shaped body (the canonical format) into
a :class:`Call`; the other wire formats translate their body to that shape
first. :func:`invalid_request` turns msgspec's validation message into a 400
that names the field.
"""

from __future__ import annotations

import msgspec

from relaygate.api.http import decode_json_object
from relaygate.errors import InvalidRequest
from relaygate.schema.requests import (
    Call,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    Kind,
    content_parts_error,
    embedding_inputs,
)

__all__ = ["invalid_request", "parse_call"]

_SCHEMAS: dict[Kind, type[ChatRequest | CompletionRequest | EmbeddingRequest]] = {
    "chat": ChatRequest,
    "completion": CompletionRequest,
    "embedding": EmbeddingRequest,
}


def parse_call(kind: Kind, body: bytes, request_id: str) -> Call:
    data = decode_json_object(body)
    try:
        params = msgspec.convert(data, _SCHEMAS[kind])
    except msgspec.ValidationError as exc:
        raise invalid_request(str(exc)) from None
    if isinstance(params, ChatRequest) and (wrong := content_parts_error(params)) is not None:
        raise invalid_request(str(wrong))
    stream = bool(getattr(params, "stream", False))
    if isinstance(params, EmbeddingRequest) and not _valid_embedding_input(params):
        raise InvalidRequest(
            "input must be a string, an array of strings, or token arrays.", param="input"
        )
    return Call(kind, params.model, data, params, stream, request_id)


def _valid_embedding_input(params: EmbeddingRequest) -> bool:
    """Strings, or token arrays: a list of ints, or a list of lists of ints."""
    if embedding_inputs(params) is not None:
        return True
    items = params.input
    return all(isinstance(i, int) for i in items) or all(
        isinstance(i, list) and all(isinstance(t, int) for t in i) for i in items
    )


def invalid_request(message: str) -> InvalidRequest:
    """msgspec's ``Expected `int`, got `str` - at `$.max_tokens``` as a 400 naming the field."""
    text, _, where = message.partition(" - at `")
    param = where.rstrip("`").removeprefix("$.").removeprefix("$") or None
    if param is None and "missing required field" in text:
        param = text.rsplit("`", 2)[-2] if text.count("`") >= 2 else None
    detail = f"Invalid value for {param!r}: {text}." if param else f"Invalid request: {text}."
    return InvalidRequest(detail, param=param)
