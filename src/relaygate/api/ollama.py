"""The inbound Ollama API: POST /api/chat, POST /api/generate, GET /api/tags.

Ollama's client libraries (ollama-python, ollama-js) and seed 003's clients can
use relaygate as if it were an Ollama server, and reach every model it serves,
Ollama or not, with keys, limits, the cache and usage accounting. Requests are
turned into the canonical (OpenAI) chat request: ``options`` to sampling fields
(``num_predict`` to ``max_tokens``; ``top_k`` and ``min_p`` passed on), ``format``
to ``response_format``, base64 ``images`` to image parts, tool calls with
arguments as JSON. Answers are Ollama's: one JSON body, or NDJSON lines (with
``"stream": true``; an absent ``stream`` means false, as on seed 003's /api/chat)
ending with ``"done": true``, the ``done_reason`` and the token counts. Errors
are ``{"error": "..."}``. Ollama-only options that are a server's own settings
(``num_ctx``, ...) are ignored; ``keep_alive`` is passed on to Ollama deployments
(kept in ``call.wire``) and ignored by the others.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from relaygate.api.http import decode_json_object, send_error
from relaygate.api.ollama_embed import KeepAlive
from relaygate.api.parsing import invalid_request, parse_call
from relaygate.api.shapes import error_renderer_for, ollama_error
from relaygate.asgi import Receive, Scope, Send, new_request_id, send_bytes
from relaygate.cache.entry import merge_delta
from relaygate.errors import InvalidRequest, RelaygateError
from relaygate.schema.requests import (
    MAX_TOKENS,
    MAX_TOP_K,
    Call,
    Kind,
    ModelName,
    Penalty,
    Probability,
    Seed,
    Stop,
    Temperature,
    Tokens,
    Tool,
)

if TYPE_CHECKING:
    from relaygate.state import AppState

__all__ = ["OllamaChatFormat", "OllamaGenerateFormat", "OllamaTags"]

JSON = dict[str, Any]
_encode = msgspec.json.encode
_decode = msgspec.json.decode
_SAMPLING = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
_PASSED_ON = ("top_k", "min_p")
_IMAGE_TYPES = {
    "/9j/": "image/jpeg",
    "iVBOR": "image/png",
    "R0lG": "image/gif",
    "UklG": "image/webp",
}


class OllamaFunctionCall(msgspec.Struct, kw_only=True):
    name: Annotated[str, msgspec.Meta(max_length=256)]
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class OllamaToolCall(msgspec.Struct, kw_only=True):
    function: OllamaFunctionCall


class OllamaMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[Annotated[str, msgspec.Meta(min_length=1)]] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class OllamaOptions(msgspec.Struct, kw_only=True):
    """The options relaygate uses; the others (``num_ctx``, ...) are a server's own settings
    and are ignored."""

    temperature: Temperature | None = None
    top_p: Probability | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0, le=MAX_TOP_K)] | None = None
    min_p: Probability | None = None
    seed: Seed | None = None
    # -1 (no limit) and -2 (fill the context) mean no max_tokens
    num_predict: Annotated[int, msgspec.Meta(ge=-2, le=MAX_TOKENS)] | None = None
    stop: Stop | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None


class _OllamaBody(msgspec.Struct, kw_only=True):
    model: ModelName
    # Ollama streams when "stream" is absent; seed 003's /api/chat answered one JSON body,
    # and its clients call response.json(). Ollama's own clients always send the field.
    stream: bool = False
    format: str | dict[str, Any] | None = None
    options: OllamaOptions | None = None
    # seed 003 sends these at the top level
    temperature: Temperature | None = None
    max_tokens: Tokens | None = None
    use_cache: bool | None = None
    keep_alive: KeepAlive | None = None  # passed on to Ollama deployments, ignored by others


class OllamaChat(_OllamaBody, kw_only=True):
    messages: Annotated[list[OllamaMessage], msgspec.Meta(min_length=1)]
    tools: list[Tool] | None = None


class OllamaGenerate(_OllamaBody, kw_only=True):
    prompt: Annotated[str, msgspec.Meta(min_length=1)]
    system: str | None = None
    images: list[Annotated[str, msgspec.Meta(min_length=1)]] | None = None


class _OllamaFormat:
    """What /api/chat and /api/generate share: NDJSON, counts, the error shape
    (api/shapes.py; a stream that fails after it started ends with an error line)."""

    name = "ollama"
    json_type_required = False  # `curl URL -d '{...}'`, as Ollama's docs show, works
    stream_headers = ((b"content-type", b"application/x-ndjson"),)
    schema: type[OllamaChat | OllamaGenerate] = OllamaChat

    def parse(self, kind: Kind, body: bytes, request_id: str) -> Call:
        try:
            params = msgspec.convert(decode_json_object(body), self.schema)
        except msgspec.ValidationError as exc:
            raise invalid_request(str(exc)) from None
        chat: JSON = {"model": params.model, "messages": self.messages(params)}
        chat["stream"] = params.stream
        if params.use_cache is not None:
            chat["use_cache"] = params.use_cache
        if isinstance(params, OllamaChat) and params.tools:
            chat["tools"] = msgspec.to_builtins(params.tools)
        chat.update(_sampling(params))
        if params.format == "json":
            chat["response_format"] = {"type": "json_object"}
        elif isinstance(params.format, dict):
            schema = {"name": "response", "schema": params.format}
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif params.format not in (None, ""):
            raise InvalidRequest('format must be "json" or a JSON schema.', param="format")
        call = parse_call("chat", _encode(chat), request_id)
        if params.keep_alive is not None:
            call.wire["keep_alive"] = params.keep_alive
        return call

    def messages(self, params: Any) -> list[JSON]:
        raise NotImplementedError

    def error(self, error: RelaygateError) -> bytes:
        return ollama_error(error)[0]

    def error_event(self, error: RelaygateError) -> bytes:
        return _encode({"error": error.message}) + b"\n"

    def event(self, call: Call, chunk: JSON) -> bytes | None:
        return self.replayed(call, chunk)

    def replayed(self, call: Call, chunk: JSON) -> bytes | None:
        choices = chunk.get("choices")
        if not choices:
            return None
        choice = choices[0]
        delta = choice.get("delta") or {}
        if delta.get("tool_calls"):
            merge_delta(call.wire.setdefault("message", {}), delta)
        if choice.get("finish_reason") is not None:
            call.wire["done_reason"] = choice["finish_reason"]
            calls = call.wire.get("message", {}).get("tool_calls")
            if calls:
                return self.line(call, "", _tool_calls(calls))
        text = delta.get("content")
        return self.line(call, text) if text else None

    def content(self, text: str, tool_calls: list[JSON] | None) -> JSON:
        """The answer's text: ``{"message": {...}}`` (chat) or ``{"response": ...}``."""
        raise NotImplementedError

    def line(self, call: Call, text: str, tool_calls: list[JSON] | None = None) -> bytes:
        out = {"model": call.model, "created_at": _now(), **self.content(text, tool_calls)}
        return _encode({**out, "done": False}) + b"\n"

    def end(self, call: Call, provider: str | None, cached: bool) -> bytes:
        last = self.reply(call, "", call.wire.get("done_reason"), call.usage)
        return _encode(last) + b"\n"

    def render(self, call: Call, body: JSON, provider: str | None, cached: bool) -> bytes:
        choice = (body.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        calls = _tool_calls(message.get("tool_calls") or [])
        reply = self.reply(
            call, message.get("content") or "", choice.get("finish_reason"), body.get("usage"),
            calls,
        )  # fmt: skip
        return _encode(reply)

    def reply(
        self,
        call: Call,
        text: str,
        finish: str | None,
        usage: JSON | None,
        tool_calls: list[JSON] | None = None,
    ) -> JSON:
        out = {"model": call.model, "created_at": _now(), **self.content(text, tool_calls)}
        return {**out, "done": True, **_done(call, finish, usage)}


class OllamaChatFormat(_OllamaFormat):
    """POST /api/chat."""

    schema = OllamaChat

    def messages(self, params: OllamaChat) -> list[JSON]:
        return [_message(m, i) for i, m in enumerate(params.messages)]

    def content(self, text: str, tool_calls: list[JSON] | None) -> JSON:
        message: JSON = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {"message": message}


class OllamaGenerateFormat(_OllamaFormat):
    """POST /api/generate."""

    schema = OllamaGenerate

    def messages(self, params: OllamaGenerate) -> list[JSON]:
        user = OllamaMessage(role="user", content=params.prompt, images=params.images)
        messages = [_message(user, 0)]
        if params.system:
            messages.insert(0, {"role": "system", "content": params.system})
        return messages

    def content(self, text: str, tool_calls: list[JSON] | None) -> JSON:
        return {"response": text}


class OllamaTags:
    """GET /api/tags (and seed 003's GET /api/models): the models the caller's key may
    use, in Ollama's listing shape. Sizes and digests are unknown (0 and "")."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def tags(self, scope: Scope, receive: Receive, send: Send) -> None:
        state, request_id = self.state, new_request_id()
        try:
            principal = await state.auth.authenticate(scope)
        except RelaygateError as exc:
            await send_error(send, exc, request_id, error_renderer_for(scope["path"]))
            return
        models = [
            {
                "name": model.name,
                "model": model.name,
                "modified_at": _timestamp(model.created),
                "size": 0,
                "digest": "",
                "details": {},
            }
            for model in state.models_for(principal)
        ]
        await send_bytes(send, 200, _encode({"models": models}), request_id)


def _message(message: OllamaMessage, index: int) -> JSON:
    text = message.content or ""
    out: JSON = {"role": message.role, "content": text}
    if message.images:
        parts: list[JSON] = [{"type": "text", "text": text}]
        parts += [{"type": "image_url", "image_url": {"url": _data_url(i)}} for i in message.images]
        out["content"] = parts
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": f"call_{index}_{n}",
                "type": "function",
                "function": {
                    "name": c.function.name,
                    "arguments": _encode(c.function.arguments).decode(),
                },
            }
            for n, c in enumerate(message.tool_calls)
        ]
    if message.tool_name:
        out["name"] = message.tool_name
    return out


def _data_url(image: str) -> str:
    kind = next((t for prefix, t in _IMAGE_TYPES.items() if image.startswith(prefix)), "image/png")
    return f"data:{kind};base64,{image}"


def _sampling(params: OllamaChat | OllamaGenerate) -> JSON:
    options = params.options or OllamaOptions()
    out: JSON = {
        name: value
        for name in (*_SAMPLING, *_PASSED_ON)
        if (value := getattr(options, name)) is not None
    }
    if params.temperature is not None:
        out.setdefault("temperature", params.temperature)
    predict = options.num_predict if options.num_predict is not None else params.max_tokens
    if predict is not None and predict > 0:
        out["max_tokens"] = predict
    if options.stop:
        out["stop"] = options.stop
    return out


def _tool_calls(calls: list[JSON]) -> list[JSON]:
    out = []
    for call in calls:
        function = call.get("function") or {}
        try:
            arguments = _decode(function.get("arguments") or "{}")
        except msgspec.DecodeError:
            arguments = {}
        out.append({"function": {"name": function.get("name", ""), "arguments": arguments}})
    return out


def _done(call: Call, finish: str | None, usage: JSON | None) -> JSON:
    usage = usage or {}
    return {
        "done_reason": "length" if finish == "length" else "stop",
        "total_duration": int((time.perf_counter() - call.started) * 1e9),
        "prompt_eval_count": usage.get("prompt_tokens", 0),
        "eval_count": usage.get("completion_tokens", 0),
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
