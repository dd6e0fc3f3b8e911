"""Adapter for Ollama's native API (/api/chat, /api/generate, /api/embed, /api/tags,
and /api/show and /api/ps for the inbound Ollama API's model information).

Requests are translated from the canonical (OpenAI) format: sampling fields to
``options`` (``max_tokens`` to ``num_predict``; ``top_k`` and ``min_p``, which
the canonical schema lacks, from the client's body), ``response_format`` to
``format``, data-URL images to base64 ``images``, tool calls with parsed
arguments. Responses are translated back: NDJSON lines to chunks,
``prompt_eval_count``/``eval_count`` to usage, ``done_reason`` to
``finish_reason``. An Ollama client's ``keep_alive`` (kept by the inbound Ollama
API in ``call.wire["keep_alive"]``, outside the canonical body so that it neither
reaches other upstreams nor changes cache keys) is passed on as it came.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec

from relaygate.errors import InvalidRequest
from relaygate.providers.base import (
    JSON,
    in_body_error,
    ndjson_lines,
    post,
    raise_for_status,
    translate_errors,
    upstream_json,
)
from relaygate.schema.requests import ChatMessage, ChatRequest, CompletionRequest, EmbeddingRequest
from relaygate.schema.responses import embedding_list, usage

if TYPE_CHECKING:
    from relaygate.providers.base import Upstream
    from relaygate.schema.requests import Call

__all__ = ["OllamaProvider"]

_encode = msgspec.json.encode
_decode = msgspec.json.decode
_HEADERS = {"Content-Type": "application/json"}
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


class OllamaProvider:
    """One Ollama server, with one pooled keep-alive session."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session

    async def complete(self, deployment: Upstream, call: Call) -> JSON:
        path, body = _request(deployment, call, stream=False)
        raw = await self._post(deployment, call, path, body)
        reply = upstream_json(raw, deployment)
        _raise_if_error(reply, deployment, call)
        if call.kind == "chat":
            return _chat_completion(reply, call)
        return _text_completion(reply, call)

    async def stream(self, deployment: Upstream, call: Call) -> AsyncIterator[JSON]:
        path, body = _request(deployment, call, stream=True)
        translate = _ChunkTranslator(call)
        url = self.base_url + path
        async with post(self._session, url, _encode(body), _HEADERS, deployment, call) as response:
            async for line in ndjson_lines(response):
                event = upstream_json(line, deployment)
                _raise_if_error(event, deployment, call, mid_stream=True)
                for chunk in translate(event):
                    yield chunk

    async def embed(self, deployment: Upstream, call: Call) -> JSON:
        params = call.params
        assert isinstance(params, EmbeddingRequest)
        body: dict[str, Any] = {"model": deployment.upstream_model, "input": params.input}
        if params.dimensions is not None:
            body["dimensions"] = params.dimensions
        _keep_alive(body, call)
        raw = await self._post(deployment, call, "/api/embed", body)
        reply = upstream_json(raw, deployment)
        _raise_if_error(reply, deployment, call)
        vectors = reply.get("embeddings") or []
        prompt_tokens = int(reply.get("prompt_eval_count") or 0)
        return embedding_list(vectors, call.model, params.encoding_format, prompt_tokens)

    async def list_models(self) -> list[str]:
        async with self._session.get(self.base_url + "/api/tags") as response:
            response.raise_for_status()
            body = _decode(await response.read())
        return [str(m.get("name") or m.get("model")) for m in body.get("models", [])]

    async def running_models(self) -> list[str]:
        """Names of the models the server has loaded now (its /api/ps), for discovery."""
        async with self._session.get(self.base_url + "/api/ps") as response:
            response.raise_for_status()
            body = _decode(await response.read())
        return [str(m.get("name") or m.get("model")) for m in body.get("models", [])]

    async def show(self, deployment: Upstream, verbose: bool) -> JSON:
        """The node's /api/show of the deployment's upstream model, as the node answers it."""
        body: JSON = {"model": deployment.upstream_model}
        if verbose:
            body["verbose"] = True
        return await self._ask(deployment, "POST", "/api/show", body)

    async def running(self, deployment: Upstream) -> list[JSON]:
        """The models the node has loaded now (its /api/ps entries, as it lists them)."""
        reply = await self._ask(deployment, "GET", "/api/ps", None)
        models = reply.get("models")
        return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []

    async def _ask(self, deployment: Upstream, method: str, path: str, body: JSON | None) -> JSON:
        """One model-information call (the caller bounds its time); relaygate's errors."""
        data = _encode(body) if body is not None else None
        url = self.base_url + path
        with translate_errors(deployment):
            async with self._session.request(
                method, url, data=data, headers=_HEADERS, timeout=deployment.client_timeout
            ) as response:
                await raise_for_status(response, deployment)
                raw = await response.read()
        return upstream_json(raw, deployment)

    async def aclose(self) -> None:
        await self._session.close()

    async def _post(self, deployment: Upstream, call: Call, path: str, body: JSON) -> bytes:
        url = self.base_url + path
        async with post(self._session, url, _encode(body), _HEADERS, deployment, call) as response:
            return await response.read()


def _raise_if_error(
    reply: JSON, deployment: Upstream, call: Call, *, mid_stream: bool = False
) -> None:
    if "error" in reply:
        raise in_body_error(deployment, call, reply["error"], mid_stream=mid_stream)


def _request(deployment: Upstream, call: Call, stream: bool) -> tuple[str, JSON]:
    params = call.params
    if isinstance(params, ChatRequest):
        body = _chat_body(params)
        path = "/api/chat"
    elif isinstance(params, CompletionRequest):
        body = _generate_body(params)
        path = "/api/generate"
    else:  # pragma: no cover - embeddings go through embed()
        raise InvalidRequest("Embeddings are not a completion.")
    if (params.n or 1) > 1:
        raise InvalidRequest("Ollama deployments return one choice; n must be 1.", param="n")
    body["model"] = deployment.upstream_model
    body["stream"] = stream
    _keep_alive(body, call)
    options = _options(params, call.max_output_tokens)
    options.update(_passed_on(call.body))
    if options:
        body["options"] = options
    return path, body


def _keep_alive(body: JSON, call: Call) -> None:
    """The client's keep_alive (an Ollama client's, else the node's default applies)."""
    keep_alive = call.wire.get("keep_alive")
    if keep_alive is not None:
        body["keep_alive"] = keep_alive


def _options(params: ChatRequest | CompletionRequest, max_tokens: int | None) -> JSON:
    options: JSON = {}
    for ours, theirs in _OPTIONS.items():
        value = getattr(params, ours)
        if value is not None:
            options[theirs] = value
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    if params.stop is not None:
        options["stop"] = [params.stop] if isinstance(params.stop, str) else params.stop
    return options


def _passed_on(body: JSON) -> JSON:
    """Sampling fields the canonical schema has no place for, read from the client's body:
    ``top_k`` (Anthropic's and Ollama's own APIs send it; vLLM's extension of OpenAI's too)
    and ``min_p``. Values of the wrong type are left out rather than sent to fail there."""
    out: JSON = {}
    top_k = body.get("top_k")
    if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 0:
        out["top_k"] = top_k
    min_p = body.get("min_p")
    if isinstance(min_p, int | float) and not isinstance(min_p, bool) and 0 <= min_p <= 1:
        out["min_p"] = min_p
    return out


def _chat_body(params: ChatRequest) -> JSON:
    body: JSON = {"messages": [_message(m) for m in params.messages]}
    if params.tools:
        body["tools"] = [msgspec.to_builtins(tool) for tool in params.tools]
    fmt = params.response_format
    if fmt is not None and fmt.type == "json_object":
        body["format"] = "json"
    elif fmt is not None and fmt.type == "json_schema":
        schema = fmt.json_schema.schema if fmt.json_schema is not None else None
        body["format"] = schema if schema is not None else "json"
    return body


def _generate_body(params: CompletionRequest) -> JSON:
    if not isinstance(params.prompt, str):
        if len(params.prompt) != 1:
            raise InvalidRequest("Ollama deployments take one prompt per request.", param="prompt")
        prompt = params.prompt[0]
    else:
        prompt = params.prompt
    body: JSON = {"prompt": prompt}
    if params.suffix is not None:
        body["suffix"] = params.suffix
    return body


def _message(message: ChatMessage) -> JSON:
    role = "system" if message.role == "developer" else message.role
    out: JSON = {"role": "tool" if role == "function" else role, "content": ""}
    content = message.content
    if isinstance(content, str):
        out["content"] = content
    elif content:
        texts, images = _parts(content)
        out["content"] = "\n".join(texts)
        if images:
            out["images"] = images
    if message.tool_calls:
        out["tool_calls"] = [
            {"function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
            for c in message.tool_calls
        ]
    if message.name and role in ("tool", "function"):
        out["tool_name"] = message.name
    return out


def _parts(content: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            images.append(_image_data(url))
        else:
            raise InvalidRequest(
                f"Ollama deployments accept text and image_url content parts, not {kind!r}.",
                param="messages",
            )
    return texts, images


def _image_data(url: object) -> str:
    """Ollama takes base64 images; only data URLs are accepted (no fetching: SSRF)."""
    if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
        return url.split(";base64,", 1)[1]
    raise InvalidRequest(
        "Images for Ollama deployments must be data URLs (data:image/...;base64,...); "
        "the gateway does not fetch remote URLs.",
        param="messages",
    )


def _arguments(arguments: str) -> Any:
    try:
        return _decode(arguments)
    except (msgspec.DecodeError, RecursionError):
        raise InvalidRequest(
            "tool_calls[].function.arguments must be a JSON object encoded as a string.",
            param="messages",
        ) from None


def _finish_reason(reply: JSON, has_tool_calls: bool) -> str:
    if has_tool_calls:
        return "tool_calls"
    return "length" if reply.get("done_reason") == "length" else "stop"


def _tool_calls(message: JSON) -> list[JSON]:
    calls = message.get("tool_calls") or []
    return [
        {
            "index": index,
            "id": "call_" + secrets.token_hex(12),
            "type": "function",
            "function": {
                "name": (c.get("function") or {}).get("name", ""),
                "arguments": _encode((c.get("function") or {}).get("arguments", {})).decode(),
            },
        }
        for index, c in enumerate(calls)
    ]


def _usage(reply: JSON) -> JSON:
    return usage(int(reply.get("prompt_eval_count") or 0), int(reply.get("eval_count") or 0))


def _chat_completion(reply: JSON, call: Call) -> JSON:
    message = reply.get("message") or {}
    tool_calls = _tool_calls(message)
    out_message: JSON = {"role": "assistant", "content": message.get("content", "")}
    if message.get("thinking"):
        out_message["reasoning_content"] = message["thinking"]
    if tool_calls:
        out_message["tool_calls"] = [
            {k: v for k, v in c.items() if k != "index"} for c in tool_calls
        ]
    return {
        "id": "chatcmpl-" + call.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [
            {
                "index": 0,
                "message": out_message,
                "logprobs": None,
                "finish_reason": _finish_reason(reply, bool(tool_calls)),
            }
        ],
        "usage": _usage(reply),
    }


def _text_completion(reply: JSON, call: Call) -> JSON:
    return {
        "id": "cmpl-" + call.request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [
            {
                "index": 0,
                "text": reply.get("response", ""),
                "logprobs": None,
                "finish_reason": _finish_reason(reply, False),
            }
        ],
        "usage": _usage(reply),
    }


class _ChunkTranslator:
    """Turns Ollama's NDJSON events into OpenAI chunks, one request at a time."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.chat = call.kind == "chat"
        self.created = int(time.time())
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + call.request_id
        self.object = "chat.completion.chunk" if self.chat else "text_completion"
        self.first = True
        self.saw_tool_calls = False

    def __call__(self, event: JSON) -> list[JSON]:
        chunks: list[JSON] = []
        choice = self._choice(event)
        if choice is not None:
            chunks.append(self._chunk([choice]))
        if event.get("done"):
            chunks.append(self._chunk([self._final_choice(event)]))
            chunks.append(self._chunk([], usage=_usage(event)))
        return chunks

    def _chunk(self, choices: list[JSON], usage: JSON | None = None) -> JSON:
        chunk: JSON = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.call.model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    def _choice(self, event: JSON) -> JSON | None:
        if not self.chat:
            text = event.get("response", "")
            if not text and not self.first:
                return None
            self.first = False
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
        message = event.get("message") or {}
        delta: JSON = {}
        if self.first:
            delta["role"] = "assistant"
        if message.get("content"):
            delta["content"] = message["content"]
        elif self.first:
            delta["content"] = ""
        if message.get("thinking"):
            delta["reasoning_content"] = message["thinking"]
        tool_calls = _tool_calls(message)
        if tool_calls:
            self.saw_tool_calls = True
            delta["tool_calls"] = tool_calls
        if not delta:
            return None
        self.first = False
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}

    def _final_choice(self, event: JSON) -> JSON:
        reason = _finish_reason(event, self.saw_tool_calls)
        if self.chat:
            return {"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}
        return {"index": 0, "text": "", "logprobs": None, "finish_reason": reason}
