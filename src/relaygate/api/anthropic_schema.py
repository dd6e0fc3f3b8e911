"""Anthropic Messages API request types (``POST /v1/messages``), validated with msgspec.

Only what relaygate translates is declared; fields it does not use
(``cache_control`` on blocks, ``citations``, ``service_tier``, ...) are accepted
and ignored, as unknown fields. Messages are told apart by ``role`` and content
blocks by ``type``, so a block that has no place in a turn (a ``tool_result``
from the assistant, a ``document``) is refused with the path of its ``type``.
Bounds follow Anthropic's where relaygate's canonical request allows them
(``stop_sequences`` at most 16, as the canonical ``stop``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from relaygate.schema.requests import MAX_TOKENS, ModelName

__all__ = [
    "AssistantMessage",
    "Base64Source",
    "CountTokensRequest",
    "ImageBlock",
    "MessagesRequest",
    "RedactedThinkingBlock",
    "TextBlock",
    "ThinkingBlock",
    "ToolChoice",
    "ToolDefinition",
    "ToolResultBlock",
    "ToolUseBlock",
    "UrlSource",
    "UserMessage",
]

ImageType = Literal["image/jpeg", "image/png", "image/gif", "image/webp"]


class _Block(msgspec.Struct, kw_only=True, tag_field="type"):
    """A content block; its ``type`` is the tag."""


class TextBlock(_Block, tag="text"):
    text: str


class _Source(msgspec.Struct, kw_only=True, tag_field="type"):
    """Where an image comes from; its ``type`` is the tag."""


class Base64Source(_Source, tag="base64"):
    media_type: ImageType
    data: Annotated[str, msgspec.Meta(min_length=1)]


class UrlSource(_Source, tag="url"):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]


class ImageBlock(_Block, tag="image"):
    source: Base64Source | UrlSource


class ToolUseBlock(_Block, tag="tool_use"):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    input: dict[str, Any]


class ToolResultBlock(_Block, tag="tool_result"):
    tool_use_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    content: str | list[TextBlock | ImageBlock] = ""
    is_error: bool = False


class ThinkingBlock(_Block, tag="thinking"):
    """An earlier turn's reasoning, sent back by clients; not passed upstream."""

    thinking: str = ""


class RedactedThinkingBlock(_Block, tag="redacted_thinking"):
    """Encrypted reasoning from Anthropic's own models; not passed upstream."""


UserBlock = TextBlock | ImageBlock | ToolResultBlock
AssistantBlock = TextBlock | ToolUseBlock | ThinkingBlock | RedactedThinkingBlock


class _Message(msgspec.Struct, kw_only=True, tag_field="role"):
    """One turn; its ``role`` is the tag."""


class UserMessage(_Message, tag="user"):
    content: str | list[UserBlock]


class AssistantMessage(_Message, tag="assistant"):
    content: str | list[AssistantBlock]


class ToolDefinition(msgspec.Struct, kw_only=True):
    """A client tool; Anthropic's server tools (web search, ...) have another ``type``."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoice(msgspec.Struct, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(msgspec.Struct, kw_only=True):
    user_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class CountTokensRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/messages/count_tokens``: a Messages request without sampling fields."""

    model: ModelName
    messages: Annotated[list[UserMessage | AssistantMessage], msgspec.Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: Annotated[list[ToolDefinition], msgspec.Meta(max_length=512)] | None = None
    tool_choice: ToolChoice | None = None


class MessagesRequest(CountTokensRequest, kw_only=True):
    """``POST /v1/messages``. ``max_tokens`` is required, as Anthropic requires it."""

    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS)]
    stop_sequences: Annotated[list[str], msgspec.Meta(max_length=16)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)] | None = None
    metadata: Metadata | None = None
    stream: bool = False
