"""The OpenAI Responses API as a wire format: requests in, Response objects and errors out.

``to_canonical`` turns a Responses request into the canonical (OpenAI chat)
request: ``instructions`` to a system message, message items to chat messages
(``developer`` as ``system``; ``input_image`` parts to ``image_url`` parts),
``function_call`` items to an assistant turn's ``tool_calls`` (consecutive
calls, and the message item before them, make one turn), ``function_call_output``
items to ``tool`` messages, function tools and ``tool_choice`` to chat's,
``max_output_tokens`` to ``max_tokens``, ``text.format`` to ``response_format``.
A stored conversation (``previous_response_id``: its input and output items,
oldest first) goes before the input; instructions are not carried over, as
OpenAI's are not. ``from_canonical`` turns an OpenAI chat completion into a
Response object; ``responses_stream.ResponsesStream`` does the same for a
stream. Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

Left out on purpose: ``reasoning`` items sent back are dropped (upstreams
cannot read them); a refusal is answered as text, as the Anthropic wire format
does; ``input_file``, ``item_reference`` and built-in tools are refused (400).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from relaygate.api.canonical import as_dict, first_item, text_of
from relaygate.api.canonical import named_event as sse
from relaygate.api.http import decode_json_object
from relaygate.api.responses_schema import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    InputImage,
    InputText,
    JsonObjectFormat,
    JsonSchemaFormat,
    MessageItem,
    OutputText,
    ReasoningItem,
    Refusal,
    ResponsesRequest,
    ToolChoiceFunction,
)
from relaygate.auth.principal import Principal
from relaygate.errors import InvalidRequest, NotFound, RelaygateError
from relaygate.schema.requests import Call, ChatRequest
from relaygate.store.responses import ResponseRecord

__all__ = [
    "STREAM_HEADERS",
    "WIRE_KEY",
    "Pending",
    "ResponseObject",
    "call_id",
    "deleted_body",
    "error_body",
    "from_canonical",
    "not_found",
    "owner",
    "parse",
    "pending",
    "previous_not_found",
    "previous_response_id",
    "read",
    "record",
    "render",
    "response_object",
    "sse",
    "status_of",
    "stored_body",
    "to_canonical",
    "usage",
    "with_history",
]

JSON = dict[str, Any]
Item = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem
_encode = msgspec.json.encode

WIRE_KEY = "responses"  # where ``parse`` keeps its :class:`Pending` on ``call.wire``
STREAM_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)
_ITEMS: dict[str, type[Item]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "reasoning": ReasoningItem,
}
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass(slots=True)
class Pending:
    """One Responses request on its way: what answering and storing it need.

    ``items`` are this request's input items (reasoning dropped), the part of
    the conversation this response adds before its output (turned into JSON
    only when it is stored); ``response`` is the final Response object, once
    ``render`` or the stream's ``end`` has made it, and ``encoded`` its JSON
    as ``render`` sent it (stored as is: encoded once).
    """

    response_id: str
    created_at: int
    request: ResponsesRequest
    items: list[Item]
    response: ResponseObject | None = None
    encoded: bytes | None = None

    @property
    def input_items(self) -> list[JSON]:
        """The input items as JSON, as they are stored."""
        items: list[JSON] = msgspec.to_builtins(self.items)
        return items


# -- requests ------------------------------------------------------------------


def parse(body: bytes, request_id: str, history: Sequence[JSON] = ()) -> Call:
    """A Responses request body as a canonical chat :class:`Call`.

    ``history`` is the stored conversation of ``previous_response_id``; the
    pipeline may instead parse without it and call :func:`with_history` once it
    knows the tenant. ``call.wire[WIRE_KEY]`` keeps the :class:`Pending`.
    """
    request, items = read(decode_json_object(body))
    chat = _chat(request, items, history)
    params = _convert(chat, ChatRequest)
    call = Call("chat", params.model, chat, params, params.stream, request_id)
    kept = [item for item in items if type(item) is not ReasoningItem] if items else items
    call.wire[WIRE_KEY] = Pending(response_id_from(request_id), int(time.time()), request, kept)
    return call


def to_canonical(body: Any, history: Sequence[JSON] = ()) -> JSON:
    """A Responses request as the canonical OpenAI chat request.

    Raises :class:`InvalidRequest`, naming the field, for anything relaygate
    cannot pass on (and anything OpenAI's API would refuse that would break it).
    """
    request, items = read(body)
    return _chat(request, items, history)


def read(body: Any) -> tuple[ResponsesRequest, list[Item]]:
    """The validated request and its input items (a string input is one user message)."""
    request: ResponsesRequest = _convert(body, ResponsesRequest)
    if request.input is None:
        return request, []
    if isinstance(request.input, str):
        return request, [MessageItem(role="user", content=request.input)]
    return request, [_item(raw, f"input[{n}]") for n, raw in enumerate(request.input)]


def pending(call: Call) -> Pending:
    """The :class:`Pending` that ``parse`` kept on the call."""
    found = call.wire.get(WIRE_KEY)
    if not isinstance(found, Pending):
        raise TypeError("this call was not made by responses.parse")
    return found


def previous_response_id(call: Call) -> str | None:
    """The stored response this request continues, if any."""
    return pending(call).request.previous_response_id


def with_history(call: Call, history: Sequence[JSON]) -> None:
    """Put a stored conversation (``ResponseStore.chain``) before the call's input."""
    state = pending(call)
    chat = _chat(state.request, state.items, history)
    call.params = _convert(chat, ChatRequest)
    call.body = chat


def previous_not_found(response_id: str) -> NotFound:
    """What OpenAI answers when ``previous_response_id`` names no stored response."""
    error = NotFound(
        f"Previous response with id '{response_id}' not found.", param="previous_response_id"
    )
    error.code = "previous_response_not_found"
    return error


def _item(raw: Any, path: str) -> Item:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{path}: Expected `object`, got `{_json_type(raw)}`", param=path)
    kind = raw.get("type", "message" if "role" in raw else None)
    if kind is None:
        raise InvalidRequest(f"{path}.type: Field required", param=f"{path}.type")
    if not isinstance(kind, str) or kind not in _ITEMS:
        shown = kind if isinstance(kind, str) else _json_type(kind)
        raise InvalidRequest(
            f"{path}.type: Item type {str(shown)[:64]!r} is not supported; expected one of "
            + ", ".join(repr(k) for k in _ITEMS),
            param=f"{path}.type",
        )
    item: Item = _convert(raw, _ITEMS[kind], path)
    return item


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "str"
    return "array" if isinstance(value, list) else "object"


def _convert(body: Any, schema: type[Any], path: str = "") -> Any:
    try:
        return msgspec.convert(body, schema)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc), path) from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None


def _invalid(message: str, prefix: str = "") -> InvalidRequest:
    """msgspec's message with the field's path: ``input[0].content: Expected ...``."""
    text, _, where = message.partition(" - at `")
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    path = f"{prefix}{'.' if prefix and path and not path.startswith('[') else ''}{path}"
    if text.startswith("Object missing required field `"):
        field = text.split("`")[1]
        param = f"{path}.{field}" if path else field
        return InvalidRequest(f"{param}: Field required", param=param)
    if path:
        return InvalidRequest(f"{path}: {text}", param=path)
    return InvalidRequest(f"Invalid request body: {text}")


def _chat(request: ResponsesRequest, items: Sequence[Item], history: Sequence[JSON]) -> JSON:
    messages: list[JSON] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    turns = _Messages(messages)
    if history:
        turns.add([_item(raw, "previous_response_id") for raw in history], "previous_response_id")
    turns.add(items, "input").flush()
    for message in messages:
        if message["role"] != "system":
            break
    else:
        raise InvalidRequest(
            "input: Field required (the request has no input and no previous response)",
            param="input",
        )
    chat: JSON = {"model": request.model, "messages": messages}
    if request.tools:
        chat.update(_tools(request))
    if request.max_output_tokens is not None:
        chat["max_tokens"] = request.max_output_tokens
    if request.temperature is not None:
        chat["temperature"] = request.temperature
    if request.top_p is not None:
        chat["top_p"] = request.top_p
    if request.user:
        chat["user"] = request.user
    if request.text is not None and (response_format := _response_format(request)) is not None:
        chat["response_format"] = response_format
    if request.stream:
        chat["stream"] = True
    return chat


def _response_format(request: ResponsesRequest) -> JSON | None:
    """``text.format`` as chat's ``response_format`` (None for plain text)."""
    fmt = request.text.format if request.text is not None else None
    if isinstance(fmt, JsonObjectFormat):
        return {"type": "json_object"}
    if isinstance(fmt, JsonSchemaFormat):
        schema: JSON = {"name": fmt.name, "schema": fmt.schema}
        if fmt.description is not None:
            schema["description"] = fmt.description
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        return {"type": "json_schema", "json_schema": schema}
    return None


def _tools(request: ResponsesRequest) -> JSON:
    """Function tools, ``tool_choice`` and ``parallel_tool_calls`` as chat's."""
    chat: JSON = {}
    if request.tools:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    **({"parameters": tool.parameters} if tool.parameters is not None else {}),
                    **({"strict": tool.strict} if tool.strict is not None else {}),
                },
            }
            for tool in request.tools
        ]
        choice = request.tool_choice
        if isinstance(choice, ToolChoiceFunction):
            chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        elif choice is not None:
            chat["tool_choice"] = choice
        if request.parallel_tool_calls is not None:
            chat["parallel_tool_calls"] = request.parallel_tool_calls
    return chat


class _Messages:
    """Items to chat messages, one at a time (tool calls join the assistant turn before)."""

    def __init__(self, messages: list[JSON]) -> None:
        self.messages = messages
        self.images: list[JSON] = []  # from tool outputs: a user turn after the tool messages

    def add(self, items: Sequence[Item], path: str) -> _Messages:
        for n, item in enumerate(items):
            if isinstance(item, FunctionCallOutputItem):
                text, images = _tool_output(item.output)
                self.messages.append(
                    {"role": "tool", "tool_call_id": item.call_id, "content": text}
                )
                self.images += images
                continue
            if self.images:
                self.flush()
            if isinstance(item, MessageItem):
                self.messages.append(_message(item, path, n))
            elif isinstance(item, FunctionCallItem):
                self._call(item)
        return self

    def flush(self) -> None:
        if self.images:
            self.messages.append({"role": "user", "content": self.images})
            self.images = []

    def _call(self, item: FunctionCallItem) -> None:
        call = {
            "id": item.call_id,
            "type": "function",
            "function": {"name": item.name, "arguments": item.arguments},
        }
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
            if last["content"] == "":
                last["content"] = None
        else:
            self.messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _message(item: MessageItem, path: str, index: int) -> JSON:
    role = "system" if item.role == "developer" else item.role
    if isinstance(item.content, str):
        return {"role": role, "content": item.content}
    parts: list[JSON] = []
    for n, part in enumerate(item.content):
        if isinstance(part, InputImage):
            if role != "user":
                where = f"{path}[{index}].content[{n}]"
                raise InvalidRequest(
                    f"{where}: Images are only allowed in user messages", param=where
                )
            parts.append(_image(part))
        else:
            parts.append({"type": "text", "text": _part_text(part)})
    if role != "user" or (all(p["type"] == "text" for p in parts) and len(parts) <= 1):
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def _part_text(part: InputText | OutputText | Refusal) -> str:
    return part.refusal if isinstance(part, Refusal) else part.text


def _image(part: InputImage) -> JSON:
    image: JSON = {"url": part.image_url}
    if part.detail in ("low", "high", "auto"):
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _tool_output(output: str | list[InputText | InputImage]) -> tuple[str, list[JSON]]:
    if isinstance(output, str):
        return output, []
    text = "".join(p.text for p in output if isinstance(p, InputText))
    return text, [_image(p) for p in output if isinstance(p, InputImage)]


# -- responses -----------------------------------------------------------------


def response_id_from(request_id: str) -> str:
    """``resp_<request id>``: one per request, a cache hit included."""
    return "resp_" + (request_id or "0")


def render(call: Call, body: JSON) -> bytes:
    """A complete answer's body for a request that ``parse`` made (live or from the cache).

    The Response object is kept on the call's :class:`Pending` for :func:`record`.
    """
    state = pending(call)
    state.response = from_canonical(body, state, call.model)
    state.encoded = _encode(state.response)
    return state.encoded


def from_canonical(body: JSON, state: Pending, model: str) -> ResponseObject:
    """An OpenAI chat completion as a Response object (first choice; never raises)."""
    rid = state.response_id.removeprefix("resp_")
    body = as_dict(body)
    choice = first_item(body.get("choices"))
    message = as_dict(choice.get("message"))
    output: list[JSON] = []
    text = text_of(message.get("content")) or text_of(message.get("refusal"))
    if text:
        output.append(message_item(f"msg_{rid}_0", text, "completed"))
    calls = message.get("tool_calls")
    if calls and isinstance(calls, list):
        seen: set[str] = set()
        for n, call in enumerate(calls):
            function = as_dict(as_dict(call).get("function"))
            arguments = function.get("arguments")
            if isinstance(arguments, dict):
                arguments = _encode(arguments).decode()
            output.append(
                function_item(
                    f"fc_{rid}_{len(output)}",
                    call_id(as_dict(call).get("id"), rid, n, seen),
                    text_of(function.get("name")),
                    arguments if isinstance(arguments, str) else "",
                )
            )
    status, details = status_of(choice.get("finish_reason"))
    if status == "incomplete" and output:
        output[-1]["status"] = "incomplete"  # the item the answer was cut in
    return response_object(state, model, status, output, usage(body.get("usage")), details)


def call_id(upstream: Any, rid: str, index: int, seen: set[str]) -> str:
    """A tool call's ``call_id``: the upstream's, or ``call_<rid>_<index>`` when it gave
    none or repeated one (a client matches its outputs to calls by this id)."""
    found = upstream if isinstance(upstream, str) and upstream not in seen else ""
    found = found or f"call_{rid}_{index}"
    seen.add(found)
    return found


def message_item(item_id: str, text: str, status: str) -> JSON:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def function_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> JSON:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def status_of(finish: Any) -> tuple[str, JSON | None]:
    """The Response's ``status`` and ``incomplete_details`` for a chat ``finish_reason``."""
    if isinstance(finish, str) and finish in _INCOMPLETE:
        return "incomplete", {"reason": _INCOMPLETE[finish]}
    return "completed", None


class ResponseObject(msgspec.Struct):
    """The Response object, its fields in the order OpenAI sends them. A Struct, not a dict:
    msgspec builds and encodes one in 17k instructions against 29k (callgrind; every
    answer is one, and a stream sends it three times)."""

    id: str
    object: str
    created_at: int
    status: str
    background: bool
    error: JSON | None
    incomplete_details: JSON | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[JSON]
    parallel_tool_calls: bool
    previous_response_id: str | None
    store: bool
    temperature: float
    text: JSON
    tool_choice: Any
    tools: list[JSON]
    top_p: float
    truncation: str
    usage: JSON | None
    user: str | None
    metadata: dict[str, str]


def response_object(
    state: Pending,
    model: str,
    status: str,
    output: list[JSON],
    counts: JSON | None,
    incomplete: JSON | None = None,
    error: JSON | None = None,
) -> ResponseObject:
    """The Response object, the request's settings echoed as OpenAI echoes them."""
    request = state.request
    choice = request.tool_choice
    fmt = request.text.format if request.text is not None else None
    temperature, top_p, parallel = request.temperature, request.top_p, request.parallel_tool_calls
    return ResponseObject(
        state.response_id,
        "response",
        state.created_at,
        status,
        False,  # background
        error,
        incomplete,
        request.instructions,
        request.max_output_tokens,
        model,
        output,
        True if parallel is None else parallel,
        request.previous_response_id,
        request.store,
        1.0 if temperature is None else temperature,
        {"format": {"type": "text"} if fmt is None else msgspec.to_builtins(fmt)},
        "auto" if choice is None else msgspec.to_builtins(choice),
        _echoed_tools(request.tools) if request.tools else [],
        1.0 if top_p is None else top_p,
        "disabled",  # truncation
        counts,
        request.user,
        dict(request.metadata) if request.metadata else {},
    )


def _echoed_tools(tools: Sequence[FunctionTool]) -> list[JSON]:
    return [
        {
            "type": "function",
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
            "strict": True if tool.strict is None else tool.strict,
        }
        for tool in tools
    ]


def usage(openai_usage: Any) -> JSON | None:
    """The Responses usage from chat's; None when the upstream reported none. A count that
    is not a positive int reads as 0 (``canonical.token_count``, inlined: a function call
    is most of what this costs, and every answer runs it)."""
    if not openai_usage or type(openai_usage) is not dict:
        return None
    get = openai_usage.get
    prompt, completion = get("prompt_tokens"), get("completion_tokens")
    details, output_details = get("prompt_tokens_details"), get("completion_tokens_details")
    cached = details.get("cached_tokens") if type(details) is dict else 0
    reasoning = output_details.get("reasoning_tokens") if type(output_details) is dict else 0
    prompt = prompt if type(prompt) is int and prompt > 0 else 0
    completion = completion if type(completion) is int and completion > 0 else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": cached if type(cached) is int and cached > 0 else 0,
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": reasoning if type(reasoning) is int and reasoning > 0 else 0
        },
        "total_tokens": prompt + completion,
    }


# -- storage -------------------------------------------------------------------


def owner(principal: Principal) -> str:
    """Whose stored responses a caller reads and writes: its tenant's, or, for a caller
    with no tenant (a JWT without the claim, anonymous access), its own subject."""
    return principal.tenant_id or principal.subject


def record(
    call: Call,
    principal: Principal,
    *,
    retention_days: int | None,
    enabled: bool = True,
) -> ResponseRecord | None:
    """What to save once the answer is complete; None when nothing is to be stored
    (``store: false``, storage turned off, or no complete response: a failed stream)."""
    state = pending(call)
    if not enabled or not state.request.store or state.response is None:
        return None
    created, expires = _lifetime(state.created_at, retention_days)
    return ResponseRecord(
        id=state.response_id,
        owner=owner(principal),
        tenant_id=principal.tenant_id,
        key_id=principal.key_id,
        model=call.model,
        created_at=created,
        expires_at=expires,
        previous_response_id=state.request.previous_response_id,
        input_items=state.input_items,
        response=state.response,
        encoded=state.encoded,
    )


@functools.lru_cache(maxsize=8)
def _lifetime(created_at: int, retention_days: int | None) -> tuple[datetime, datetime | None]:
    """When a response made at ``created_at`` (whole seconds) was made and expires, as
    datetimes: one pair for every answer of that second (7.5k instructions less a stored
    answer, callgrind)."""
    created = datetime.fromtimestamp(created_at, UTC)
    return created, created + timedelta(days=retention_days) if retention_days else None


def not_found(response_id: str) -> NotFound:
    """``GET``/``DELETE /v1/responses/{id}`` for an id the caller's owner has not stored."""
    return NotFound(f"Response with id '{response_id[:256]}' not found.", param="response_id")


def stored_body(found: ResponseRecord) -> bytes:
    """``GET /v1/responses/{id}``'s answer: the Response object as it was stored."""
    return found.encoded or _encode(found.response)


def deleted_body(response_id: str) -> bytes:
    """``DELETE /v1/responses/{id}``'s answer."""
    return _encode({"id": response_id, "object": "response.deleted", "deleted": True})


# -- errors --------------------------------------------------------------------


def error_body(error: RelaygateError, request_id: str | None = None) -> bytes:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    del request_id  # sent in X-Request-Id, as OpenAI does
    return _encode(
        {
            "error": {
                "message": error.message,
                "type": error.type,
                "param": error.param,
                "code": error.code,
            }
        }
    )


# -- small readers of upstream JSON (never raise) --------------------------------
