"""OpenAI Responses API request types (``POST /v1/responses``), validated with msgspec.

Only what relaygate translates is declared; fields it does not use
(``reasoning``, ``include``, ``truncation``, ``prompt_cache_key``, ...) are
accepted and ignored, as unknown fields. Input items are told apart by
``type`` (a message may leave it out: ``{"role", "content"}``), content parts
by ``type``, so an item or part relaygate cannot pass on (``input_file``,
``item_reference``, a built-in tool) is refused with the path of its ``type``.
Bounds follow the canonical request's (``user`` at most 512 characters).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from relaygate.schema.requests import MAX_TOKENS, ModelName

__all__ = [
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "InputImage",
    "InputText",
    "JsonObjectFormat",
    "JsonSchemaFormat",
    "MessageItem",
    "OutputText",
    "ReasoningItem",
    "Refusal",
    "ResponsesRequest",
    "TextConfig",
    "TextFormat",
    "ToolChoiceFunction",
]

CallId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
ToolName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
# OpenAI's bounds: 16 pairs, keys up to 64 characters, values up to 512.
Metadata = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=512)]],
    msgspec.Meta(max_length=16),
]


class _Part(msgspec.Struct, kw_only=True, tag_field="type"):
    """A content part; its ``type`` is the tag."""


class InputText(_Part, tag="input_text"):
    text: str


class InputImage(_Part, tag="input_image"):
    """An image by URL or data URL (``file_id`` needs OpenAI's file store: refused)."""

    image_url: Annotated[str, msgspec.Meta(min_length=1)]
    detail: Literal["low", "high", "auto", "original"] | None = None


class OutputText(_Part, tag="output_text"):
    """An earlier answer's text, as a previous response's output carries it."""

    text: str


class Refusal(_Part, tag="refusal"):
    refusal: str


Part = InputText | InputImage | OutputText | Refusal


class MessageItem(msgspec.Struct, kw_only=True):
    """``{"type": "message", "role", "content"}``; ``type`` may be left out."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]
    type: Literal["message"] = "message"


class FunctionCallItem(msgspec.Struct, kw_only=True):
    """A tool call the model made in an earlier turn."""

    call_id: CallId
    name: ToolName
    arguments: str
    type: Literal["function_call"] = "function_call"


class FunctionCallOutputItem(msgspec.Struct, kw_only=True):
    """The client's result for a tool call."""

    call_id: CallId
    output: str | list[InputText | InputImage]
    type: Literal["function_call_output"] = "function_call_output"


class ReasoningItem(msgspec.Struct, kw_only=True):
    """An earlier turn's reasoning, sent back by agents; not passed upstream."""

    type: Literal["reasoning"] = "reasoning"


class FunctionTool(msgspec.Struct, kw_only=True):
    """A function tool; OpenAI's built-in tools (web search, ...) have another ``type``."""

    type: Literal["function"]
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceFunction(msgspec.Struct, kw_only=True):
    type: Literal["function"]
    name: ToolName


class TextFormat(msgspec.Struct, kw_only=True, tag_field="type", tag="text"):
    pass


class JsonObjectFormat(msgspec.Struct, kw_only=True, tag_field="type", tag="json_object"):
    pass


class JsonSchemaFormat(msgspec.Struct, kw_only=True, tag_field="type", tag="json_schema"):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormat | JsonObjectFormat | JsonSchemaFormat | None = None


class ResponsesRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/responses``. Items of ``input`` are checked one by one (see ``responses``),
    as a message may leave its ``type`` out, which a tagged union cannot allow."""

    model: ModelName
    input: str | Annotated[list[dict[str, Any]], msgspec.Meta(max_length=10_000)] | None = None
    instructions: str | None = None
    tools: Annotated[list[FunctionTool], msgspec.Meta(max_length=512)] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS)] | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    metadata: Metadata | None = None
    user: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    text: TextConfig | None = None
