"""A scriptable Anthropic Messages API upstream (``POST /v1/messages``, ``GET /v1/models``).

It speaks the documented wire format and checks every request field by field, as the real
API does: the ``x-api-key`` and ``anthropic-version`` headers, ``max_tokens`` present, roles
alternating and starting with ``user``, block shapes (text, base64/url images, ``tool_use``
only in assistant turns, ``tool_result`` only in user turns answering a ``tool_use`` of the
turn before), tools and ``tool_choice``, and no field the API does not know. A request that
fails a check gets Anthropic's 400 ``invalid_request_error`` and is listed in ``problems``.

Each ``POST /v1/messages`` consumes one :class:`Reply` from a FIFO (``push``), or the default
(``"Echo: " + the last user text``). Streams are SSE: ``message_start``, ``ping``, one
``content_block_start``/``content_block_delta``.../``content_block_stop`` per block (text as a
delta per word, tool input as ``input_json_delta`` fragments), ``message_delta`` with the stop
reason and output tokens, ``message_stop``. Tokens are words (``len(text.split())``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.local_app import LocalApp

VERSION = "2023-06-01"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "metadata",
    "tools",
    "tool_choice",
    "stream",
}
_MEDIA_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}


@dataclass
class Reply:
    """How the fake answers one ``POST /v1/messages``."""

    status: int = 200
    error_message: str = "upstream failure"
    retry_after: str | None = None
    text: str | None = None  # default: "Echo: " + the last user text
    tool_uses: list[dict[str, Any]] = field(default_factory=list)  # {id, name, input}
    stop_reason: str | None = None  # default: tool_use with tools, else end_turn
    stop_sequence: str | None = None
    cache_read: int = 0
    cache_creation: int = 0
    error_event_after: int | None = None  # stream: an ``error`` event after N text deltas
    cut_after: int | None = None  # stream: end the body after N text deltas, no message_stop


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    json: Any


class FakeAnthropic(LocalApp):
    """Anthropic's API on 127.0.0.1; ``base_url`` has no path, as ``api.anthropic.com``."""

    def __init__(
        self,
        models: list[str] | None = None,
        *,
        api_key: str = "sk-ant-fake-key-0123456789",
        version: str = VERSION,
    ) -> None:
        super().__init__()
        self.models = models or ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"]
        self.api_key = api_key
        self.version = version
        self.default = Reply()
        self.requests: list[Received] = []
        self.problems: list[str] = []
        self._queue: list[Reply] = []
        self._count = 0

    def push(self, *replies: Reply) -> None:
        self._queue.extend(replies)

    @property
    def messages(self) -> list[Received]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)

    # -- handlers -------------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(Received(request.path, dict(request.headers), body))
        refused = self._check_headers(request, json_body=True)
        if refused is not None:
            return refused
        problem = check_messages_body(body)
        if problem is not None:
            self.problems.append(problem)
            return error_response(400, problem)
        reply = self._queue.pop(0) if self._queue else self.default
        if reply.status != 200:
            headers = {"retry-after": reply.retry_after} if reply.retry_after else {}
            return error_response(reply.status, reply.error_message, headers)
        self._count += 1
        message = self._message(body, reply)
        if body.get("stream"):
            return await self._stream(request, message, reply)
        return web.json_response(message)

    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append(Received(request.path, dict(request.headers), None))
        refused = self._check_headers(request, json_body=False)
        if refused is not None:
            return refused
        limit = int(request.query.get("limit", "20"))
        after = request.query.get("after_id")
        start = self.models.index(after) + 1 if after in self.models else 0
        page = self.models[start : start + limit]
        data = [
            {
                "type": "model",
                "id": m,
                "display_name": m,
                "created_at": "2025-01-01T00:00:00Z",
            }
            for m in page
        ]
        return web.json_response(
            {
                "data": data,
                "has_more": start + limit < len(self.models),
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            }
        )

    def _check_headers(self, request: web.Request, *, json_body: bool) -> web.Response | None:
        if request.headers.get("x-api-key") != self.api_key:
            message = "invalid x-api-key"
            if request.headers.get("Authorization"):
                message += " (Authorization is not how this API takes its key)"
            return error_response(401, message)
        version = request.headers.get("anthropic-version")
        if version != self.version:
            problem = f"anthropic-version: expected {self.version!r}, got {version!r}"
            self.problems.append(problem)
            return error_response(400, problem)
        if json_body and not request.headers.get("Content-Type", "").startswith("application/json"):
            self.problems.append("content-type is not application/json")
            return error_response(400, "content-type must be application/json")
        return None

    # -- answers --------------------------------------------------------------------------

    def _message(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        text = reply.text if reply.text is not None else "Echo: " + _last_user_text(body)
        words = text.split()
        if len(words) > body["max_tokens"]:
            text, stop = " ".join(words[: body["max_tokens"]]), "max_tokens"
        else:
            stop = reply.stop_reason or ("tool_use" if reply.tool_uses else "end_turn")
        content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        for n, tool in enumerate(reply.tool_uses):
            content.append(
                {
                    "type": "tool_use",
                    "id": tool.get("id", f"toolu_fake_{n}"),
                    "name": tool["name"],
                    "input": tool.get("input", {}),
                }
            )
        output = len(text.split()) + sum(
            len(json.dumps(b["input"]).split()) for b in content if b["type"] == "tool_use"
        )
        return {
            "id": f"msg_fake_{self._count}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop,
            "stop_sequence": reply.stop_sequence,
            "usage": {
                "input_tokens": _prompt_words(body),
                "cache_creation_input_tokens": reply.cache_creation,
                "cache_read_input_tokens": reply.cache_read,
                "output_tokens": output,
            },
        }

    async def _stream(
        self, request: web.Request, message: dict[str, Any], reply: Reply
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        usage = dict(message["usage"])
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {**usage, "output_tokens": 1}
        await response.write(sse("message_start", {"type": "message_start", "message": start}))
        await response.write(sse("ping", {"type": "ping"}))
        deltas = 0
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                opened = {"type": "text", "text": ""}
                pieces = [
                    {"type": "text_delta", "text": w} for w in _pieces(block["text"].split(" "))
                ]
            else:
                opened = {**block, "input": {}}
                encoded = json.dumps(block["input"])
                half = len(encoded) // 2
                pieces = [
                    {"type": "input_json_delta", "partial_json": p}
                    for p in ("", encoded[:half], encoded[half:])
                ]
            await response.write(
                sse(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": opened},
                )
            )
            for piece in pieces:
                if reply.error_event_after is not None and deltas == reply.error_event_after:
                    error = {"type": "overloaded_error", "message": reply.error_message}
                    await response.write(sse("error", {"type": "error", "error": error}))
                    return response
                if reply.cut_after is not None and deltas == reply.cut_after:
                    return response
                event = {"type": "content_block_delta", "index": index, "delta": piece}
                await response.write(sse("content_block_delta", event))
                deltas += 1
            stop = {"type": "content_block_stop", "index": index}
            await response.write(sse("content_block_stop", stop))
        delta = {
            "type": "message_delta",
            "delta": {
                "stop_reason": message["stop_reason"],
                "stop_sequence": message["stop_sequence"],
            },
            "usage": {"output_tokens": usage["output_tokens"]},
        }
        await response.write(sse("message_delta", delta))
        await response.write(sse("message_stop", {"type": "message_stop"}))
        await response.write_eof()
        return response


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    kind = _ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_f"}
    return web.json_response(body, status=status, headers=headers)


def _pieces(words: list[str]) -> list[str]:
    """Words with their separating spaces kept, so that the pieces join to the text."""
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    for block in content:
        if block.get("type") == "text":
            out.append(block["text"])
        elif block.get("type") == "tool_result":
            out.extend(_texts(block.get("content") or []))
    return out


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if message["role"] == "user":
            texts = _texts(message["content"])
            if texts:
                return texts[-1]
    return ""


def _prompt_words(body: dict[str, Any]) -> int:
    system = body.get("system") or ""
    words = len(" ".join(_texts(system)).split())
    for message in body["messages"]:
        words += len(" ".join(_texts(message["content"])).split())
    return words


# -- request checks, field by field, as the API validates them -----------------------------


def check_messages_body(body: Any) -> str | None:
    """The first problem Anthropic would report for this request body, or None."""
    if not isinstance(body, dict):
        return "body: not a JSON object"
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        return f"{unknown[0]}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required (an integer >= 1)"
    problem = _check_system(body.get("system"))
    if problem:
        return problem
    for name, low, high in (("temperature", 0, 1), ("top_p", 0, 1)):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or not low <= value <= high):
            return f"{name}: must be a number from {low} to {high}"
    if "top_k" in body and (not isinstance(body["top_k"], int) or body["top_k"] < 0):
        return "top_k: must be a non-negative integer"
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops)
    ):
        return "stop_sequences: must be a list of non-empty strings"
    metadata = body.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict)
        or set(metadata) - {"user_id"}
        or not isinstance(metadata.get("user_id"), str)
    ):
        return "metadata: only user_id (a string) is accepted"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream: must be a boolean"
    problem = _check_tools(body.get("tools"), body.get("tool_choice"))
    return problem or _check_messages(body.get("messages"))


def _check_system(system: Any) -> str | None:
    if system is None or (isinstance(system, str) and system):
        return None
    if isinstance(system, list) and all(_text_block(b) for b in system):
        return None
    return "system: a non-empty string or a list of text blocks"


def _text_block(block: Any) -> bool:
    return (
        isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
        and bool(block["text"])
        and set(block) <= {"type", "text", "cache_control"}
    )


def _check_tools(tools: Any, choice: Any) -> str | None:
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: must be a list"
        for n, tool in enumerate(tools):
            if not isinstance(tool, dict) or set(tool) - {"name", "description", "input_schema"}:
                return f"tools.{n}: only name, description and input_schema"
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                return f"tools.{n}.name: Field required"
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                return f"tools.{n}.input_schema: must be a JSON schema of type object"
    if choice is None:
        return None
    if tools is None:
        return "tool_choice: may only be specified while providing tools"
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        return "tool_choice.type: one of auto, any, tool, none"
    if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
        return "tool_choice.name: Field required"
    if set(choice) - {"type", "name", "disable_parallel_tool_use"}:
        return "tool_choice: Extra inputs are not permitted"
    return None


def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous_tools: set[str] = set()
    for n, message in enumerate(messages):
        where = f"messages.{n}"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            return f"{where}: a message is exactly {{role, content}}"
        role = message["role"]
        if role not in ("user", "assistant"):
            return f"{where}.role: Input should be 'user' or 'assistant'"
        if n == 0 and role != "user":
            return "messages: the first message must use the user role"
        if n and messages[n - 1]["role"] == role:
            return f"{where}: roles must alternate between user and assistant"
        content = message["content"]
        if isinstance(content, str):
            if not content:
                return f"{where}: content must be non-empty"
            previous_tools = set()
            continue
        if not isinstance(content, list) or not content:
            return f"{where}: content must be a non-empty string or list"
        tools: set[str] = set()
        for k, block in enumerate(content):
            problem = _check_block(block, role, previous_tools, tools)
            if problem:
                return f"{where}.content.{k}: {problem}"
        previous_tools = tools
    return None


def _check_block(  # noqa: C901 - one check per block shape
    block: Any, role: str, answerable: set[str], uses: set[str]
) -> str | None:
    if not isinstance(block, dict):
        return "not an object"
    kind = block.get("type")
    if kind == "text":
        return None if _text_block(block) else "text blocks must be non-empty"
    if kind == "image":
        source = block.get("source")
        if role != "user" or not isinstance(source, dict):
            return "image blocks belong in user turns, with a source"
        if source.get("type") == "base64":
            if source.get("media_type") not in _MEDIA_TYPES or not source.get("data"):
                return "image.source: media_type and base64 data required"
            return None
        if source.get("type") == "url" and str(source.get("url", "")).startswith("http"):
            return None
        return "image.source.type: base64 or url"
    if kind == "tool_use":
        if role != "assistant":
            return "tool_use blocks belong in assistant turns"
        if not all(isinstance(block.get(k), str) and block[k] for k in ("id", "name")):
            return "tool_use: id and name required"
        if not isinstance(block.get("input"), dict):
            return "tool_use.input: must be an object"
        uses.add(block["id"])
        return None
    if kind == "tool_result":
        if role != "user":
            return "tool_result blocks belong in user turns"
        if block.get("tool_use_id") not in answerable:
            return "tool_result: tool_use_id has no tool_use in the previous assistant turn"
        content = block.get("content")
        if content is not None and not isinstance(content, str | list):
            return "tool_result.content: a string or a list of blocks"
        return None
    return f"unknown block type {kind!r}"
