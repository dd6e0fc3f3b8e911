"""The Anthropic Messages API as a wire format: requests in, answers and errors out.

``to_canonical`` turns a Messages request into the canonical (OpenAI chat)
request: ``system`` to a system message, images to ``image_url`` data URLs,
``tool_use`` blocks to ``tool_calls`` (arguments as a JSON string),
``tool_result`` blocks to ``tool`` messages placed before the rest of their
user turn, tools and ``tool_choice`` to OpenAI's, ``stop_sequences`` to
``stop``, ``metadata.user_id`` to ``user``; ``top_k`` is passed on.
``from_canonical`` turns an OpenAI chat completion into an Anthropic Message;
``anthropic_stream.AnthropicStream`` does the same for a stream. Errors have
Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``.

Left out on purpose: earlier ``thinking`` blocks are dropped (upstreams cannot
read them), and a ``tool_result`` with ``is_error`` reaches the model as its
text prefixed with ``Error:`` (OpenAI's tool messages have no such flag).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from relaygate.api.anthropic_schema import (
    AssistantMessage,
    CountTokensRequest,
    ImageBlock,
    MessagesRequest,
    TextBlock,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
    UrlSource,
    UserMessage,
)
from relaygate.api.canonical import as_dict, first_item, text_of, token_count
from relaygate.api.canonical import named_event as sse
from relaygate.api.http import decode_json_object
from relaygate.api.shapes import anthropic_error_object, error_type
from relaygate.errors import InvalidRequest, RelaygateError
from relaygate.schema.requests import Call, ChatRequest
from relaygate.usage.tokens import prompt_text

__all__ = [
    "STREAM_HEADERS",
    "TokenCounter",
    "count_tokens",
    "error_body",
    "error_event",
    "error_type",
    "from_canonical",
    "message_id_from",
    "parse",
    "render",
    "sse",
    "stop_reason",
    "to_canonical",
    "tool_input",
    "usage",
]

JSON = dict[str, Any]
_encode = msgspec.json.encode
_decode = msgspec.json.decode

STREAM_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)
# Anthropic's error types by HTTP status; other 4xx are invalid_request_error, other 5xx api_error.
_FINISH_REASONS = {
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


class TokenCounter(Protocol):
    """What counts a prompt's tokens (``usage.tokens.LazyTokenizer``)."""

    def prompt(self, text: str) -> int: ...


# -- requests ------------------------------------------------------------------


def parse(body: bytes, request_id: str) -> Call:
    """A Messages request body as a canonical chat :class:`Call`.

    ``call.wire["stop_sequences"]`` keeps the client's stop sequences, which
    ``from_canonical`` and ``AnthropicStream`` need to report the one that matched.
    """
    chat = to_canonical(decode_json_object(body))
    params = _convert(chat, ChatRequest)
    call = Call("chat", params.model, chat, params, params.stream, request_id)
    call.wire["stop_sequences"] = list(chat.get("stop") or ())
    return call


def to_canonical(body: Any) -> JSON:
    """An Anthropic Messages request as the canonical OpenAI chat request.

    Raises :class:`InvalidRequest`, naming the field, for anything Anthropic's API
    would refuse (``max_tokens`` missing included).
    """
    request = _convert(body, MessagesRequest)
    chat = _chat(request)
    chat["max_tokens"] = request.max_tokens
    if request.stream:
        chat["stream"] = True
    if request.stop_sequences:
        chat["stop"] = list(request.stop_sequences)
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(request, name)
        if value is not None:
            chat[name] = value
    if request.metadata is not None and request.metadata.user_id:
        chat["user"] = request.metadata.user_id
    return chat


def count_tokens(body: Any, tokenizer: TokenCounter) -> dict[str, int]:
    """``POST /v1/messages/count_tokens``: the prompt's tokens, as relaygate estimates them.

    Counted over the canonical request: message text, tool calls and their
    arguments, and the tool definitions (images are not counted).
    """
    chat = _chat(_convert(body, CountTokensRequest))
    parts = [prompt_text(chat)]
    for message in chat["messages"]:
        for call in message.get("tool_calls") or ():
            parts += [call["function"]["name"], call["function"]["arguments"]]
    if chat.get("tools"):
        parts.append(_encode(chat["tools"]).decode())
    return {"input_tokens": tokenizer.prompt("\n".join(parts))}


def _convert(body: Any, schema: type[Any]) -> Any:
    try:
        return msgspec.convert(body, schema)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None


def _invalid(message: str) -> InvalidRequest:
    """msgspec's message as Anthropic words it: ``max_tokens: Field required``."""
    text, _, where = message.partition(" - at `")
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    if text.startswith("Object missing required field `"):
        field = text.split("`")[1]
        param = f"{path}.{field}" if path else field
        return InvalidRequest(f"{param}: Field required", param=param)
    if path:
        return InvalidRequest(f"{path}: {text}", param=path)
    return InvalidRequest(f"Invalid request body: {text}")


def _chat(request: CountTokensRequest) -> JSON:
    """What a Messages and a count_tokens request share: model, messages, tools."""
    messages: list[JSON] = []
    system = _system(request.system)
    if system:
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        if isinstance(message, UserMessage):
            messages += _user(message)
        else:
            messages.append(_assistant(message))
    chat: JSON = {"model": request.model, "messages": messages}
    if request.tools:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    "parameters": tool.input_schema,
                },
            }
            for tool in request.tools
        ]
        if request.tool_choice is not None:
            chat.update(_tool_choice(request.tool_choice))
    return chat


def _system(system: str | list[TextBlock] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    return "\n".join(block.text for block in system)


def _user(message: UserMessage) -> list[JSON]:
    """Tool results first, as ``tool`` messages, then the rest of the turn."""
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    results: list[JSON] = []
    parts: list[JSON] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            text, images = _tool_result(block)
            results.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
            parts += images
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        else:
            parts.append(_image(block))
    if not parts and results:
        return results
    if all(part["type"] == "text" for part in parts) and len(parts) <= 1:
        return [*results, {"role": "user", "content": parts[0]["text"] if parts else ""}]
    return [*results, {"role": "user", "content": parts}]


def _tool_result(block: ToolResultBlock) -> tuple[str, list[JSON]]:
    """The result's text, and its images (which go to the user turn that follows)."""
    if isinstance(block.content, str):
        text, images = block.content, []
    else:
        text = "\n".join(b.text for b in block.content if isinstance(b, TextBlock))
        images = [_image(b) for b in block.content if isinstance(b, ImageBlock)]
    if block.is_error:
        text = f"Error: {text}" if text else "Error"
    return text, images


def _image(block: ImageBlock) -> JSON:
    source = block.source
    if isinstance(source, UrlSource):
        url = source.url
    else:
        url = f"data:{source.media_type};base64,{source.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _assistant(message: AssistantMessage) -> JSON:
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
    calls = [
        {
            "id": block.id,
            "type": "function",
            "function": {"name": block.name, "arguments": _encode(block.input).decode()},
        }
        for block in message.content
        if isinstance(block, ToolUseBlock)
    ]
    out: JSON = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        out["tool_calls"] = calls
    return out


def _tool_choice(choice: ToolChoice) -> JSON:
    out: JSON = {}
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest(
                'tool_choice.name: Field required when tool_choice.type is "tool"',
                param="tool_choice.name",
            )
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        out["tool_choice"] = _TOOL_CHOICES[choice.type]
    if choice.disable_parallel_tool_use and choice.type != "none":
        out["parallel_tool_calls"] = False
    return out


# -- responses -----------------------------------------------------------------


def from_canonical(
    body: JSON,
    model: str,
    *,
    message_id: str | None = None,
    stop_sequences: Sequence[str] = (),
) -> JSON:
    """An OpenAI chat completion as an Anthropic Message (first choice; never raises).

    ``message_id`` defaults to one derived from the upstream's id.
    """
    mid = message_id or message_id_from(as_dict(body).get("id"))
    choice = first_item(as_dict(body).get("choices"))
    message = as_dict(choice.get("message"))
    content: list[JSON] = []
    text = text_of(message.get("content")) or text_of(message.get("refusal"))
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for n, call in enumerate(calls if isinstance(calls, list) else ()):
        function = as_dict(as_dict(call).get("function"))
        content.append(
            {
                "type": "tool_use",
                "id": text_of(as_dict(call).get("id")) or f"toolu_{mid.removeprefix('msg_')}_{n}",
                "name": text_of(function.get("name")),
                "input": tool_input(function.get("arguments")),
            }
        )
    reason, sequence = stop_reason(
        choice.get("finish_reason"),
        choice.get("stop_reason"),
        stop_sequences,
        used_tools=any(block["type"] == "tool_use" for block in content),
    )
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(body.get("usage") if isinstance(body, dict) else None),
    }


def render(call: Call, body: JSON) -> bytes:
    """A complete answer's body for a request that ``parse`` made (live or from the cache)."""
    message = from_canonical(
        body,
        call.model,
        message_id=message_id_from(call.request_id),
        stop_sequences=call.wire.get("stop_sequences", ()),
    )
    return _encode(message)


def message_id_from(source: Any) -> str:
    """``msg_<id>`` from a request id or an upstream's ``chatcmpl-<id>``."""
    text = source if isinstance(source, str) and source else "0"
    return "msg_" + text.removeprefix("chatcmpl-").removeprefix("msg_")


def stop_reason(
    finish: Any, matched: Any, stop_sequences: Sequence[str], *, used_tools: bool
) -> tuple[str, str | None]:
    """Anthropic's ``(stop_reason, stop_sequence)`` for an OpenAI ``finish_reason``.

    ``matched`` is the ``stop_reason`` vLLM adds to a choice: the stop string that
    ended the answer. A ``stop`` with tool calls (as Ollama says) is ``tool_use``.
    """
    if isinstance(finish, str) and finish in _FINISH_REASONS:
        return _FINISH_REASONS[finish], None
    if used_tools:
        return "tool_use", None
    if isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return "end_turn", None


def usage(openai_usage: Any) -> JSON:
    """Anthropic's usage from OpenAI's; cached prompt tokens are reported apart, as
    Anthropic does (its ``input_tokens`` leaves out cache reads and writes)."""
    found = as_dict(openai_usage)
    details = as_dict(found.get("prompt_tokens_details"))
    read = token_count(details.get("cached_tokens")) or token_count(
        found.get("cache_read_input_tokens")
    )
    written = (
        token_count(found.get("cache_creation_input_tokens"))
        or token_count(details.get("cache_write_tokens"))
        or token_count(details.get("cache_creation_tokens"))
    )
    out: JSON = {
        "input_tokens": max(token_count(found.get("prompt_tokens")) - read - written, 0),
        "output_tokens": token_count(found.get("completion_tokens")),
    }
    if read:
        out["cache_read_input_tokens"] = read
    if written:
        out["cache_creation_input_tokens"] = written
    return out


def tool_input(arguments: Any) -> JSON:
    """A tool call's arguments as an object: ``{}`` when they are not a JSON object."""
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str) and arguments.strip():
        try:
            value = _decode(arguments)
        except (msgspec.DecodeError, RecursionError):
            return {}
        if isinstance(value, dict):
            return value
    return {}


# -- errors --------------------------------------------------------------------


def error_body(error: RelaygateError, request_id: str | None = None) -> bytes:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}``."""
    out: JSON = {"type": "error", "error": _error(error)}
    if request_id:
        out["request_id"] = request_id
    return _encode(out)


def error_event(error: RelaygateError) -> bytes:
    """The ``error`` event that ends a stream that failed after it started."""
    return sse({"type": "error", "error": _error(error)})


def _error(error: RelaygateError) -> JSON:
    return anthropic_error_object(error)


# -- small readers of upstream JSON (never raise) --------------------------------
