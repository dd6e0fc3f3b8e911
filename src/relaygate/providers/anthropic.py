"""Adapter for Anthropic's Messages API as an upstream (``POST /v1/messages``).

Requests are translated from the canonical (OpenAI) format:

* ``system``/``developer`` messages, wherever they stand, to the top-level ``system``;
* user and assistant messages to content blocks: text, images (a data URL to a
  ``base64`` source, an http(s) URL to a ``url`` source, which Anthropic fetches),
  assistant ``tool_calls`` to ``tool_use`` blocks with the parsed arguments;
* ``tool`` messages to ``tool_result`` blocks in a user turn; consecutive messages
  of one role are merged into one turn, as Anthropic requires alternating roles;
* ``tools`` to ``{name, description, input_schema}``, ``tool_choice`` auto/none/
  required/function to auto/none/any/tool (``parallel_tool_calls: false`` to
  ``disable_parallel_tool_use``);
* ``max_tokens`` (or ``max_completion_tokens``), required upstream, from the client
  or else the deployment's ``default_max_tokens``; ``temperature`` (0 to 1 here:
  a higher value is refused, not changed), ``top_p``, ``top_k`` (from the client's
  body), ``stop`` to ``stop_sequences``, ``user`` to ``metadata.user_id``.

Refused with a 400: ``n`` above 1, ``response_format`` JSON modes (Anthropic has
no JSON mode; ask for JSON in the prompt), legacy text completions and
embeddings (Anthropic has no embeddings API). ``seed`` and the presence and
frequency penalties have no Anthropic equivalent and are left out.

Responses are translated back: text blocks joined, ``tool_use`` blocks to
``tool_calls`` (the block's id, the input as a JSON string), ``thinking`` to
``reasoning_content``, ``stop_reason`` to ``finish_reason``, and usage with the
cache counts: ``prompt_tokens`` is input + cache reads + cache writes, with
``prompt_tokens_details.cached_tokens`` (reads) and
``prompt_tokens_details.cache_write_tokens`` (writes: OpenAI's own name) kept apart
for pricing.
A stream's SSE events become OpenAI chunks ending with a usage chunk.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec

from relaygate.errors import InvalidRequest, UpstreamProtocolError
from relaygate.providers.base import (
    JSON,
    in_body_error,
    ndjson_lines,
    post,
    upstream_json,
)
from relaygate.schema.requests import ChatMessage, ChatRequest
from relaygate.schema.responses import usage as openai_usage

if TYPE_CHECKING:
    from relaygate.providers.base import Upstream
    from relaygate.schema.requests import Call

__all__ = [
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_VERSION",
    "DEFAULT_MAX_TOKENS",
    "AnthropicProvider",
    "finish_reason",
    "to_messages_request",
]

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

_encode = msgspec.json.encode
_decode = msgspec.json.decode
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_TOOL_CHOICE = {"auto": "auto", "none": "none", "required": "any"}


class AnthropicProvider:
    """One Anthropic Messages API endpoint, with one pooled keep-alive session.

    ``version`` is sent as ``anthropic-version``; ``default_max_tokens`` fills the
    ``max_tokens`` Anthropic requires when the client set none.
    """

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        version: str = ANTHROPIC_VERSION,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._version = version
        self._default_max_tokens = default_max_tokens
        self._url = self.base_url + "/v1/messages"

    def _headers(self, api_key: str | None, *, stream: bool = False) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "anthropic-version": self._version,
        }
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def _body(self, deployment: Upstream, call: Call, stream: bool) -> bytes:
        body = to_messages_request(call, self._default_max_tokens)
        body["model"] = deployment.upstream_model
        if stream:
            body["stream"] = True
        return _encode(body)

    async def complete(self, deployment: Upstream, call: Call) -> JSON:
        body = self._body(deployment, call, stream=False)
        headers = self._headers(deployment.api_key)
        async with post(self._session, self._url, body, headers, deployment, call) as response:
            raw = await response.read()
        reply = upstream_json(raw, deployment)
        if reply.get("type") == "error":
            raise in_body_error(deployment, call, reply.get("error"))
        return _completion(reply, call)

    async def stream(self, deployment: Upstream, call: Call) -> AsyncIterator[JSON]:
        body = self._body(deployment, call, stream=True)
        headers = self._headers(deployment.api_key, stream=True)
        translate = _StreamTranslator(call)
        async with post(self._session, self._url, body, headers, deployment, call) as response:
            async for line in ndjson_lines(response):
                if not line.startswith(b"data:"):
                    continue  # "event: ..." names repeat the data's own "type"
                event = upstream_json(line[5:].strip(), deployment)
                if event.get("type") == "error":
                    raise in_body_error(deployment, call, event.get("error"), mid_stream=True)
                for chunk in translate(event):
                    yield chunk
                if translate.done:
                    return
        raise UpstreamProtocolError(
            f"Deployment {deployment.name!r} ended its stream before message_stop.",
            deployment=deployment.name,
        )

    async def embed(self, deployment: Upstream, call: Call) -> JSON:
        raise InvalidRequest(
            f"The model {call.model!r} is served by Anthropic, which has no embeddings API.",
            param="model",
        )

    async def list_models(self, api_key: str | None = None) -> list[str]:
        """Every model id, following ``has_more``/``last_id`` pages."""
        names: list[str] = []
        after: str | None = None
        for _ in range(100):  # a bound: a server that always says has_more cannot loop us
            params = {"limit": "1000", **({"after_id": after} if after else {})}
            async with self._session.get(
                self.base_url + "/v1/models", params=params, headers=self._headers(api_key)
            ) as response:
                response.raise_for_status()
                page = _decode(await response.read())
            data = page.get("data", []) if isinstance(page, dict) else []
            names.extend(str(m["id"]) for m in data if isinstance(m, dict) and "id" in m)
            after = page.get("last_id") if isinstance(page, dict) else None
            if not (isinstance(page, dict) and page.get("has_more") and after):
                break
        return names

    async def aclose(self) -> None:
        await self._session.close()


# -- request -------------------------------------------------------------------


def to_messages_request(call: Call, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> JSON:
    """The Messages API body (without ``model`` and ``stream``) for a canonical chat call.

    Raises InvalidRequest for what Anthropic cannot do, naming the field.
    """
    params = call.params
    if not isinstance(params, ChatRequest):
        raise InvalidRequest(
            f"The model {call.model!r} is served by Anthropic, which answers chat completions "
            "only; use /v1/chat/completions.",
            param="model",
        )
    if (params.n or 1) > 1:
        raise InvalidRequest("Anthropic deployments return one choice; n must be 1.", param="n")
    fmt = params.response_format
    if fmt is not None and fmt.type != "text":
        raise InvalidRequest(
            f"response_format {fmt.type!r} is not supported by Anthropic deployments: the "
            "Messages API has no JSON mode. Ask for JSON in the prompt instead.",
            param="response_format",
        )
    system, messages = _messages(params.messages)
    if not messages:
        raise InvalidRequest(
            "Anthropic deployments need at least one user or assistant message with content.",
            param="messages",
        )
    body: JSON = {
        "max_tokens": call.max_output_tokens or default_max_tokens,
        "messages": messages,
    }
    if system:
        body["system"] = system
    body.update(_sampling(params, call.body))
    if params.tools:
        body["tools"] = [_tool(t.function) for t in params.tools]
        choice = _tool_choice(params.tool_choice, call.body.get("parallel_tool_calls"))
        if choice is not None:
            body["tool_choice"] = choice
    return body


def _sampling(params: ChatRequest, client_body: JSON) -> JSON:
    body: JSON = {}
    if params.temperature is not None:
        if params.temperature > 1:
            raise InvalidRequest(
                f"temperature {params.temperature} is above 1, the most Anthropic models "
                "accept (their range is 0 to 1).",
                param="temperature",
            )
        body["temperature"] = params.temperature
    if params.top_p is not None:
        body["top_p"] = params.top_p
    top_k = client_body.get("top_k")
    if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 0:
        body["top_k"] = top_k
    if params.stop:
        body["stop_sequences"] = [params.stop] if isinstance(params.stop, str) else params.stop
    if params.user:
        body["metadata"] = {"user_id": params.user}
    return body


def _messages(messages: list[ChatMessage]) -> tuple[str, list[JSON]]:
    system: list[str] = []
    turns: list[JSON] = []
    for message in messages:
        if message.role in ("system", "developer"):
            text = "\n".join(_texts(message.content, "system"))
            if text:
                system.append(text)
            continue
        if message.role in ("tool", "function"):
            role, blocks = "user", [_tool_result(message)]
        elif message.role == "assistant":
            role, blocks = "assistant", _assistant_blocks(message)
        else:
            role, blocks = "user", _user_blocks(message.content)
        if not blocks:
            continue  # Anthropic refuses empty turns
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(system), turns


def _texts(content: str | list[dict[str, Any]] | None, where: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    texts: list[str] = []
    for part in content:
        if part.get("type") != "text":
            raise InvalidRequest(
                f"{where} messages for Anthropic deployments take text content only, "
                f"not {part.get('type')!r}.",
                param="messages",
            )
        if part.get("text"):
            texts.append(str(part["text"]))
    return texts


def _user_blocks(content: str | list[dict[str, Any]] | None) -> list[JSON]:
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[JSON] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": str(part["text"])})
        elif kind == "image_url":
            image = part.get("image_url")
            blocks.append(_image(image.get("url") if isinstance(image, dict) else image))
        else:
            raise InvalidRequest(
                f"Anthropic deployments accept text and image_url content parts, not {kind!r}.",
                param="messages",
            )
    return blocks


def _image(url: object) -> JSON:
    if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
        header, data = url[5:].split(";base64,", 1)
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": header or "image/png", "data": data},
        }
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest(
        "Images for Anthropic deployments are data URLs (data:image/...;base64,...) "
        "or http(s) URLs.",
        param="messages",
    )


def _assistant_blocks(message: ChatMessage) -> list[JSON]:
    blocks: list[JSON] = [{"type": "text", "text": t} for t in _texts(message.content, "assistant")]
    for n, call in enumerate(message.tool_calls or ()):
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id or f"toolu_{n}",
                "name": call.function.name,
                "input": _arguments(call.function.arguments),
            }
        )
    return blocks


def _tool_result(message: ChatMessage) -> JSON:
    if not message.tool_call_id:
        raise InvalidRequest(
            "A tool message for an Anthropic deployment needs the tool_call_id it answers.",
            param="messages",
        )
    block: JSON = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    text = "\n".join(_texts(message.content, "tool"))
    if text:
        block["content"] = text
    return block


def _arguments(arguments: str) -> JSON:
    try:
        value = _decode(arguments) if arguments.strip() else {}
    except (msgspec.DecodeError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(
            "tool_calls[].function.arguments must be a JSON object encoded as a string.",
            param="messages",
        )
    return value


def _tool(function: Any) -> JSON:
    tool: JSON = {
        "name": function.name,
        "input_schema": {"type": "object", **(function.parameters or {"properties": {}})},
    }
    if function.description:
        tool["description"] = function.description
    return tool


def _tool_choice(choice: str | dict[str, Any] | None, parallel: object) -> JSON | None:
    out: JSON | None
    if choice is None:
        out = {"type": "auto"} if parallel is False else None
    elif isinstance(choice, str):
        if choice not in _TOOL_CHOICE:
            raise InvalidRequest(
                f"tool_choice {choice!r} is not one of auto, none, required.", param="tool_choice"
            )
        out = {"type": _TOOL_CHOICE[choice]}
    else:
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidRequest(
                "tool_choice must name a function: {type: function, function: {name}}.",
                param="tool_choice",
            )
        out = {"type": "tool", "name": name}
    if out is not None and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


# -- response ------------------------------------------------------------------


def finish_reason(stop_reason: object) -> str:
    """OpenAI's ``finish_reason`` for an Anthropic ``stop_reason`` (unknown ones: stop)."""
    return _FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(found: object, output: object = None) -> JSON:
    source = found if isinstance(found, dict) else {}
    read = _count(source.get("cache_read_input_tokens"))
    written = _count(source.get("cache_creation_input_tokens"))
    prompt = _count(source.get("input_tokens")) + read + written
    out = openai_usage(
        prompt, _count(output if output is not None else source.get("output_tokens"))
    )
    details: JSON = {"cached_tokens": read}
    if written:
        details["cache_write_tokens"] = written
    out["prompt_tokens_details"] = details
    return out


def _completion(reply: JSON, call: Call) -> JSON:
    blocks = reply.get("content")
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[JSON] = []
    for block in blocks if isinstance(blocks, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name", "")),
                        "arguments": _encode(block.get("input") or {}).decode(),
                    },
                }
            )
    message: JSON = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    choice: JSON = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(reply.get("stop_reason")),
    }
    if isinstance(reply.get("stop_sequence"), str):
        choice["stop_reason"] = reply["stop_sequence"]  # the matched stop string, as vLLM says
    return {
        "id": "chatcmpl-" + call.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [choice],
        "usage": _usage(reply.get("usage")),
    }


class _StreamTranslator:
    """Anthropic's stream events to OpenAI chunks, one request at a time."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.id = "chatcmpl-" + call.request_id
        self.created = int(time.time())
        self.tools: dict[int, int] = {}  # content block index -> tool call index
        self.usage: JSON = {}
        self.output: object = None
        self.stop_reason: object = None
        self.stop_sequence: object = None
        self.done = False

    def __call__(self, event: JSON) -> list[JSON]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            found = message.get("usage") if isinstance(message, dict) else None
            self.usage = dict(found) if isinstance(found, dict) else {}
            return [self._delta({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "content_block_delta":
            return self._block_delta(event)
        if kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict):
                self.stop_reason = delta.get("stop_reason", self.stop_reason)
                self.stop_sequence = delta.get("stop_sequence", self.stop_sequence)
            found = event.get("usage")
            if isinstance(found, dict):
                self.output = found.get("output_tokens", self.output)
                for key in (
                    "input_tokens",
                    "cache_read_input_tokens",
                    "cache_creation_input_tokens",
                ):
                    if _count(found.get(key)):
                        self.usage[key] = found[key]
            return []
        if kind == "message_stop":
            self.done = True
            choice: JSON = {
                "index": 0,
                "delta": {},
                "logprobs": None,
                "finish_reason": finish_reason(self.stop_reason),
            }
            if isinstance(self.stop_sequence, str):
                choice["stop_reason"] = self.stop_sequence
            return [self._chunk([choice]), self._chunk([], _usage(self.usage, self.output))]
        return []  # ping, content_block_stop, and event types added later

    def _block_start(self, event: JSON) -> list[JSON]:
        block = event.get("content_block")
        if not isinstance(block, dict):
            return []
        if block.get("type") == "tool_use":
            index = len(self.tools)
            self.tools[_count(event.get("index"))] = index
            call = {
                "index": index,
                "id": str(block.get("id", "")),
                "type": "function",
                "function": {"name": str(block.get("name", "")), "arguments": ""},
            }
            return [self._delta({"tool_calls": [call]})]
        if block.get("type") == "text" and block.get("text"):
            return [self._delta({"content": str(block["text"])})]
        return []

    def _block_delta(self, event: JSON) -> list[JSON]:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._delta({"content": str(delta["text"])})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._delta({"reasoning_content": str(delta["thinking"])})]
        if kind == "input_json_delta" and delta.get("partial_json"):
            index = self.tools.get(_count(event.get("index")))
            if index is None:
                return []
            fragment = {"index": index, "function": {"arguments": str(delta["partial_json"])}}
            return [self._delta({"tool_calls": [fragment]})]
        return []

    def _delta(self, delta: JSON) -> JSON:
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def _chunk(self, choices: list[JSON], usage: JSON | None = None) -> JSON:
        chunk: JSON = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.call.model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk
