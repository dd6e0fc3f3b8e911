"""Adapter for Google's Gemini API (generativelanguage.googleapis.com, v1beta).

Endpoints: ``models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``,
``:embedContent``, ``:batchEmbedContents`` and ``GET models`` (paginated). The API
key travels only in the ``x-goog-api-key`` header, never in the URL (URLs reach
logs and proxies).

Requests are translated from the canonical (OpenAI) format: system and developer
messages to ``systemInstruction``; user/assistant to roles ``user``/``model``;
data-URL images to ``inlineData`` (remote URLs are refused: the gateway does not
fetch them); assistant ``tool_calls`` to ``functionCall`` parts and tool messages
to ``functionResponse`` parts (named after the call they answer); ``tools`` to
``functionDeclarations`` and ``tool_choice`` to ``toolConfig``; sampling fields to
``generationConfig`` (``top_k`` from the client's body); ``response_format`` to
``responseMimeType``/``responseSchema``. JSON schemas are reduced to the OpenAPI
subset Gemini's ``Schema`` accepts.

Responses are translated back: candidates to choices, ``functionCall`` parts to
tool calls, ``finishReason`` to ``finish_reason`` (safety stops and a blocked
prompt are ``content_filter``, with the reason in the message's ``refusal``),
``usageMetadata`` to usage. Errors (``{"error": {code, message, status}}``) become
relaygate's upstream errors; a 429's ``RetryInfo`` delay feeds the cooldown like
``Retry-After`` does.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import msgspec

from relaygate.errors import InvalidRequest, UpstreamProtocolError, UpstreamStatusError
from relaygate.providers.base import (
    JSON,
    in_body_error,
    ndjson_lines,
    translate_errors,
    upstream_json,
    upstream_text,
)
from relaygate.schema.requests import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    embedding_inputs,
)
from relaygate.schema.responses import embedding_list

if TYPE_CHECKING:
    from relaygate.providers.base import Upstream
    from relaygate.schema.requests import Call

__all__ = ["DEFAULT_BASE_URL", "GeminiProvider", "clean_schema", "request_body"]

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
log = logging.getLogger("relaygate.providers.gemini")
_encode = msgspec.json.encode
_decode = msgspec.json.decode
_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
_TOOL_CHOICE = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_MAX_PAGES = 100
_BATCH = 100  # the most requests one batchEmbedContents call takes
_ERROR_BYTES = 64 * 1024
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)(?:;[^,;]*)*;base64,(.*)\Z", re.S)


class GeminiProvider:
    """One Gemini API endpoint (a base URL), with one pooled keep-alive session."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session

    def _url(self, deployment: Upstream, method: str) -> str:
        return f"{self.base_url}/models/{_model_path(deployment.upstream_model)}:{method}"

    async def complete(self, deployment: Upstream, call: Call) -> JSON:
        url = self._url(deployment, "generateContent")
        reply = await self._post_json(url, request_body(call), deployment, call)
        return _Translator(deployment, call).whole(reply)

    async def stream(self, deployment: Upstream, call: Call) -> AsyncIterator[JSON]:
        body = _encode(request_body(call))
        url = self._url(deployment, "streamGenerateContent") + "?alt=sse"
        translate = _Translator(deployment, call)
        async with self._post(url, body, deployment, call, accept="text/event-stream") as r:
            async for line in ndjson_lines(r):
                if not line.startswith(b"data:"):
                    continue  # comments, event names, ids
                event = upstream_json(line[5:].strip(), deployment)
                _raise_if_error(event, deployment, call, mid_stream=True)
                for chunk in translate.event(event):
                    yield chunk
        if not translate.finish:  # Gemini's last event carries the finish reason
            raise UpstreamProtocolError(
                f"Deployment {deployment.name!r} ended its stream before its finish reason.",
                deployment=deployment.name,
            )
        for chunk in translate.end():
            yield chunk

    async def embed(self, deployment: Upstream, call: Call) -> JSON:
        params = call.params
        assert isinstance(params, EmbeddingRequest)
        inputs = embedding_inputs(params)
        if inputs is None:
            raise InvalidRequest(
                "Gemini deployments embed text; token arrays are not accepted.", param="input"
            )
        requests = [_embed_request(text, params.dimensions) for text in inputs]
        if len(requests) == 1:
            url = self._url(deployment, "embedContent")
            reply = await self._post_json(url, requests[0], deployment, call)
            vectors = _vectors([reply.get("embedding")], 1, deployment)
        else:  # batchEmbedContents takes at most _BATCH requests at a time
            model = "models/" + _model_name(deployment.upstream_model)
            url = self._url(deployment, "batchEmbedContents")
            vectors = []
            for start in range(0, len(requests), _BATCH):
                batch = [{"model": model, **r} for r in requests[start : start + _BATCH]]
                reply = await self._post_json(url, {"requests": batch}, deployment, call)
                vectors += _vectors(reply.get("embeddings"), len(batch), deployment)
        tokens = sum(math.ceil(len(text.encode()) / 4) for text in inputs)  # not reported
        return embedding_list(vectors, call.model, params.encoding_format, tokens)

    async def _post_json(self, url: str, body: JSON, deployment: Upstream, call: Call) -> JSON:
        async with self._post(url, _encode(body), deployment, call) as response:
            raw = await response.read()
        reply = upstream_json(raw, deployment)
        _raise_if_error(reply, deployment, call)
        return reply

    async def list_models(self, api_key: str | None = None) -> list[str]:
        """Every model name, without the ``models/`` prefix, across all pages."""
        headers = {"x-goog-api-key": api_key} if api_key else {}
        names: list[str] = []
        token = ""
        for _ in range(_MAX_PAGES):
            query = {"pageSize": "1000", **({"pageToken": token} if token else {})}
            url = self.base_url + "/models"
            async with self._session.get(url, params=query, headers=headers) as response:
                response.raise_for_status()
                body = _decode(await response.read())
            for entry in body.get("models") or []:
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    names.append(_model_name(entry["name"]))
            token = body.get("nextPageToken") or ""
            if not token:
                break
        return names

    async def aclose(self) -> None:
        await self._session.close()

    @asynccontextmanager
    async def _post(
        self,
        url: str,
        body: bytes,
        deployment: Upstream,
        call: Call,
        accept: str = "application/json",
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        headers = {"Content-Type": "application/json", "Accept": accept}
        if deployment.api_key:
            headers["x-goog-api-key"] = deployment.api_key
        with translate_errors(deployment, call):
            async with self._session.post(
                url, data=body, headers=headers, timeout=deployment.client_timeout
            ) as response:
                if response.status >= 400:
                    raw = await response.content.read(_ERROR_BYTES)
                    raise _status_error(response, raw, deployment, call)
                yield response


# -- errors -------------------------------------------------------------------------------


def _status_error(
    response: aiohttp.ClientResponse, raw: bytes, deployment: Upstream, call: Call
) -> UpstreamStatusError:
    """Gemini's ``{"error": {code, message, status, details}}`` as relaygate's error.

    A key Gemini refuses is answered 400 ``API_KEY_INVALID``: that is the gateway's
    configuration, not the client's request, so it counts as a 401 (502 to the client).
    A 429's ``RetryInfo.retryDelay`` is its retry-after when no header gives one.
    """
    status = response.status
    error: Any = None
    try:
        error = _decode(raw).get("error")
    except (msgspec.DecodeError, RecursionError, AttributeError):
        error = None
    if isinstance(error, dict):
        message = str(error.get("message") or response.reason or "error")
        if isinstance(error.get("status"), str):
            message += f" ({error['status']})"
        details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    else:
        message = raw.decode("utf-8", "replace").strip() or response.reason or "error"
        details = []
    if status == 400 and any(d.get("reason") == "API_KEY_INVALID" for d in details):
        status = 401
    retry_after = _seconds(response.headers.get("Retry-After"))
    if retry_after is None:
        for detail in details:
            if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
                retry_after = _seconds(str(detail.get("retryDelay", "")).removesuffix("s"))
    return UpstreamStatusError(
        f"Deployment {deployment.name!r} answered {response.status}: "
        f"{upstream_text(message, deployment, call)}",
        upstream_status=status,
        deployment=deployment.name,
        retry_after=retry_after,
    )


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _raise_if_error(
    reply: JSON, deployment: Upstream, call: Call, *, mid_stream: bool = False
) -> None:
    if "error" in reply and not reply.get("candidates"):
        raise in_body_error(deployment, call, reply["error"], mid_stream=mid_stream)


def _model_name(model: str) -> str:
    return model.removeprefix("models/")


def _model_path(model: str) -> str:
    return quote(_model_name(model), safe="")


# -- requests -----------------------------------------------------------------------------


def request_body(call: Call) -> JSON:
    """The generateContent body for a chat or text completion call."""
    params = call.params
    if isinstance(params, ChatRequest):
        system, contents = _contents(params.messages, call.body.get("messages"))
    elif isinstance(params, CompletionRequest):
        prompt = _prompt(params)
        system, contents = [], [{"role": "user", "parts": [{"text": prompt}]}] if prompt else []
    else:  # pragma: no cover - embeddings go through embed()
        raise InvalidRequest("Embeddings are not a completion.")
    if not contents:
        raise InvalidRequest(
            "Gemini deployments need at least one user or assistant message.", param="messages"
        )
    body: JSON = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    if isinstance(params, ChatRequest) and params.tools:  # tool_choice means nothing without
        body["tools"] = [{"functionDeclarations": [_declaration(t) for t in params.tools]}]
        if params.tool_choice is not None:
            body["toolConfig"] = {"functionCallingConfig": _tool_choice(params.tool_choice)}
    config = _generation_config(params, call)
    if config:
        body["generationConfig"] = config
    return body


def _prompt(params: CompletionRequest) -> str:
    if params.suffix is not None:
        raise InvalidRequest("Gemini deployments do not take a suffix.", param="suffix")
    if isinstance(params.prompt, str):
        return params.prompt
    if len(params.prompt) != 1:
        raise InvalidRequest("Gemini deployments take one prompt per request.", param="prompt")
    return params.prompt[0]


def _contents(messages: list[ChatMessage], raw: Any) -> tuple[list[JSON], list[JSON]]:
    """(systemInstruction parts, contents); adjacent turns of one role are merged.

    ``raw`` is the client's own messages, for the thought signatures Gemini gave its tool
    calls (kept by clients in ``extra_content.google.thought_signature``, as Google's
    OpenAI-compatible API has them)."""
    system: list[JSON] = []
    contents: list[JSON] = []
    names: dict[str, str] = {}  # tool call id -> function name, from earlier assistant turns
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if message.role in ("system", "developer"):
            system.extend({"text": text} for text in _texts(message.content, where) if text)
            continue
        if message.role == "user":
            role, parts = "user", _user_parts(message.content, where)
        elif message.role == "assistant":
            role = "model"
            parts = [{"text": text} for text in _texts(message.content, where) if text]
            for number, tool_call in enumerate(message.tool_calls or []):
                if tool_call.id:
                    names[tool_call.id] = tool_call.function.name
                args = _arguments(tool_call.function.arguments, f"{where}.tool_calls[{number}]")
                part: JSON = {"functionCall": {"name": tool_call.function.name, "args": args}}
                signature = _signature(raw, index, number)
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
        else:  # tool, function
            role, parts = "user", [_function_response(message, names, where)]
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def _signature(raw: Any, message: int, number: int) -> str | None:
    """``messages[message].tool_calls[number].extra_content.google.thought_signature``."""
    try:
        value = raw[message]["tool_calls"][number]["extra_content"]["google"]["thought_signature"]
    except (LookupError, TypeError):
        return None
    return value if isinstance(value, str) and value else None


def _texts(content: str | list[dict[str, Any]] | None, where: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    texts = []
    for number, part in enumerate(content):
        if part.get("type") != "text":
            raise InvalidRequest(
                f"{where}.content[{number}]: only text parts are accepted in this message.",
                param=f"{where}.content",
            )
        texts.append(str(part.get("text") or ""))
    return texts


def _user_parts(content: str | list[dict[str, Any]] | None, where: str) -> list[JSON]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []  # Gemini refuses empty text
    parts: list[JSON] = []
    for number, part in enumerate(content):
        field = f"{where}.content[{number}]"
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append({"inlineData": _inline_data(url, f"{field}.image_url")})
        elif kind == "file":  # OpenAI's file part: a PDF (or other document) as a data URL
            file = part.get("file")
            data = file.get("file_data") if isinstance(file, dict) else None
            parts.append({"inlineData": _inline_data(data, f"{field}.file.file_data")})
        elif kind == "input_audio":
            parts.append({"inlineData": _audio(part.get("input_audio"), f"{field}.input_audio")})
        else:
            raise InvalidRequest(
                "Gemini deployments accept text, image_url, file and input_audio content "
                f"parts, not {kind!r}.",
                param=field,
            )
    return parts


def _audio(audio: object, field: str) -> JSON:
    """OpenAI's ``input_audio {data, format}`` (base64 wav or mp3) as ``inlineData``."""
    data = audio.get("data") if isinstance(audio, dict) else None
    kind = audio.get("format") if isinstance(audio, dict) else None
    if not isinstance(data, str) or not data or kind not in ("wav", "mp3"):
        raise InvalidRequest(
            f"{field} must be {{data: base64 audio, format: 'wav' or 'mp3'}}.", param=field
        )
    return {"mimeType": f"audio/{kind}", "data": data}


def _inline_data(url: object, field: str) -> JSON:
    """A data URL as ``inlineData``; Gemini cannot fetch arbitrary URLs, nor does the gateway."""
    match = _DATA_URL.match(url) if isinstance(url, str) else None
    if match is None:
        raise InvalidRequest(
            f"{field}: images and files for Gemini deployments must be data URLs "
            "(data:image/png;base64,...); the gateway does not fetch remote URLs.",
            param=field,
        )
    return {"mimeType": match.group(1), "data": match.group(2)}


def _arguments(arguments: str, field: str) -> JSON:
    try:
        value = _decode(arguments)
    except (msgspec.DecodeError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"{field}.function.arguments must be a JSON object encoded as a string.",
            param=f"{field}.function.arguments",
        )
    return value


def _function_response(message: ChatMessage, names: dict[str, str], where: str) -> JSON:
    name = names.get(message.tool_call_id or "") or message.name
    if not name:
        raise InvalidRequest(
            f"{where}: tool_call_id {message.tool_call_id!r} answers no earlier assistant "
            "tool call; Gemini needs the function's name.",
            param=f"{where}.tool_call_id",
        )
    text = "".join(_texts(message.content, where))
    try:
        value = _decode(text)
    except (msgspec.DecodeError, RecursionError):
        value = None
    response = value if isinstance(value, dict) else {"content": text}
    return {"functionResponse": {"name": name, "response": response}}


def _declaration(tool: Any) -> JSON:
    function = tool.function
    out: JSON = {"name": function.name}
    if function.description:
        out["description"] = function.description
    if function.parameters:
        parameters = clean_schema(function.parameters)
        if parameters.get("properties") or parameters.get("type") != "OBJECT":
            out["parameters"] = parameters  # an object without properties is refused
    return out


def _tool_choice(choice: str | dict[str, Any]) -> JSON:
    if isinstance(choice, str) and choice in _TOOL_CHOICE:
        return {"mode": _TOOL_CHOICE[choice]}
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise InvalidRequest(
        "tool_choice must be 'auto', 'none', 'required' or "
        '{"type": "function", "function": {"name": ...}}.',
        param="tool_choice",
    )


def _generation_config(params: ChatRequest | CompletionRequest, call: Call) -> JSON:
    config: JSON = {}
    if params.temperature is not None:
        config["temperature"] = params.temperature
    if params.top_p is not None:
        config["topP"] = params.top_p
    top_k = call.body.get("top_k")
    if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > 0:
        config["topK"] = top_k
    if call.max_output_tokens is not None:
        config["maxOutputTokens"] = call.max_output_tokens
    if params.stop is not None:
        config["stopSequences"] = [params.stop] if isinstance(params.stop, str) else params.stop
    if params.n is not None:
        config["candidateCount"] = params.n
    if params.seed is not None:
        config["seed"] = params.seed
    if params.presence_penalty is not None:
        config["presencePenalty"] = params.presence_penalty
    if params.frequency_penalty is not None:
        config["frequencyPenalty"] = params.frequency_penalty
    fmt = params.response_format if isinstance(params, ChatRequest) else None
    if fmt is not None and fmt.type in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = fmt.json_schema.schema if fmt.json_schema is not None else None
        if schema:
            config["responseSchema"] = clean_schema(schema)
    return config


# Gemini's Schema: a subset of OpenAPI 3.0's. Other JSON-schema keys ($schema,
# additionalProperties, $ref, oneOf, const, ...) are refused by the API, so they are dropped.
_SCHEMA_KEYS = {
    "description", "title", "nullable", "default", "example", "pattern",
    "minimum", "maximum", "minItems", "maxItems", "minLength", "maxLength",
    "minProperties", "maxProperties", "propertyOrdering",
}  # fmt: skip
_TYPES = {"string", "number", "integer", "boolean", "array", "object"}
_FORMATS = {"enum", "date-time", "float", "double", "int32", "int64"}
_MAX_DEPTH = 32


def clean_schema(schema: Any, depth: int = 0) -> JSON:
    """A JSON schema reduced to what Gemini's ``Schema`` accepts (types in upper case,
    ``["x", "null"]`` as ``nullable``, enum values as strings)."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return {}
    out: JSON = {key: schema[key] for key in _SCHEMA_KEYS if key in schema}
    out.update(_schema_type(schema.get("type")))
    if schema.get("format") in _FORMATS:
        out["format"] = schema["format"]
    if isinstance(schema.get("enum"), list):
        out["enum"] = [str(value) for value in schema["enum"]]
        out.setdefault("type", "STRING")
    properties = schema.get("properties")
    if isinstance(properties, dict):
        if properties:  # Gemini refuses an empty ``properties``
            out["properties"] = {str(k): clean_schema(v, depth + 1) for k, v in properties.items()}
        out.setdefault("type", "OBJECT")
        required = schema.get("required")
        if isinstance(required, list):
            out["required"] = [r for r in required if isinstance(r, str) and r in properties]
    if isinstance(schema.get("items"), dict):
        out["items"] = clean_schema(schema["items"], depth + 1)
        out.setdefault("type", "ARRAY")
    choices = schema.get("anyOf", schema.get("oneOf"))
    if isinstance(choices, list):
        options = [clean_schema(c, depth + 1) for c in choices if isinstance(c, dict)]
        if any(o == {"type": "NULL"} or o == {} for o in options):
            out["nullable"] = True
        options = [o for o in options if o]
        if options:
            out["anyOf"] = options
    return out


def _schema_type(kind: Any) -> JSON:
    """``type`` in upper case; a list with ``"null"`` as ``nullable``."""
    out: JSON = {}
    if isinstance(kind, list):
        if "null" in kind:
            out["nullable"] = True
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if isinstance(kind, str) and kind.lower() in _TYPES:
        out["type"] = kind.upper()
    return out


def _embed_request(text: str, dimensions: int | None) -> JSON:
    request: JSON = {"content": {"parts": [{"text": text}]}}
    if dimensions is not None:
        request["outputDimensionality"] = dimensions
    return request


def _vectors(found: Any, count: int, deployment: Upstream) -> list[list[float]]:
    vectors = []
    for entry in found if isinstance(found, list) else []:
        values = entry.get("values") if isinstance(entry, dict) else None
        if isinstance(values, list):
            vectors.append(values)
    if len(vectors) != count:
        raise UpstreamProtocolError(
            f"Deployment {deployment.name!r} sent {len(vectors)} embeddings for {count} inputs.",
            deployment=deployment.name,
        )
    return vectors


# -- responses ----------------------------------------------------------------------------


def _usage(metadata: Any) -> JSON | None:
    if not isinstance(metadata, dict):
        return None
    prompt = int(metadata.get("promptTokenCount") or 0)
    completion = int(metadata.get("candidatesTokenCount") or 0)
    thoughts = int(metadata.get("thoughtsTokenCount") or 0)
    total = int(metadata.get("totalTokenCount") or 0) or prompt + completion + thoughts
    usage: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion + thoughts,
        "total_tokens": total,
    }
    cached = metadata.get("cachedContentTokenCount")
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": int(cached)}
    if thoughts:
        usage["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return usage


class _Translator:
    """Gemini answers (whole, or stream events) to OpenAI chat or text completions."""

    def __init__(self, deployment: Upstream, call: Call) -> None:
        self.deployment = deployment
        self.call = call
        self.chat = call.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + call.request_id
        self.created = int(time.time())
        self.started: set[int] = set()
        self.tool_calls: dict[int, int] = {}  # candidate -> tool calls so far
        self.finish: dict[int, str] = {}
        self.refusal: dict[int, str] = {}  # candidate -> why Gemini blocked it
        self.refused: set[int] = set()  # refusals already streamed
        self.usage: JSON | None = None

    # -- whole answers --

    def whole(self, reply: JSON) -> JSON:
        choices = []
        candidates = list(self._candidates(reply))
        if not candidates:
            raise UpstreamProtocolError(
                f"Deployment {self.deployment.name!r} answered without a candidate.",
                deployment=self.deployment.name,
            )
        for index, candidate in candidates:
            text, reasoning, calls = self._parts(index, candidate)
            reason = self._finish(index, candidate, bool(calls))
            if not self.chat:
                choices.append(
                    {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
                )
                continue
            message: JSON = {"role": "assistant", "content": text if text or not calls else None}
            if reasoning:
                message["reasoning_content"] = reasoning
            if calls:
                message["tool_calls"] = [
                    {k: v for k, v in c.items() if k != "index"} for c in calls
                ]
            if index in self.refusal:
                message["refusal"] = self.refusal[index]
            choices.append(
                {"index": index, "message": message, "logprobs": None, "finish_reason": reason}
            )
        out: JSON = {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.call.model,
            "choices": choices,
        }
        usage = _usage(reply.get("usageMetadata"))
        if usage is not None:
            out["usage"] = usage
        return out

    # -- streams --

    def event(self, event: JSON) -> list[JSON]:
        usage = _usage(event.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        choices = []
        for index, candidate in self._candidates(event):
            text, reasoning, calls = self._parts(index, candidate)
            if "finishReason" in candidate or index in self.refusal:
                self.finish[index] = self._finish(
                    index, candidate, self.tool_calls.get(index, 0) > 0
                )
            if not self.chat:
                if text:
                    choices.append(
                        {"index": index, "text": text, "logprobs": None, "finish_reason": None}
                    )
                continue
            delta: JSON = {}
            if index not in self.started:
                self.started.add(index)
                delta = {"role": "assistant", "content": ""}
            if text:
                delta["content"] = text
            if reasoning:
                delta["reasoning_content"] = reasoning
            if calls:
                delta["tool_calls"] = calls
            if index in self.refusal and index not in self.refused:
                self.refused.add(index)
                delta["refusal"] = self.refusal[index]
            if delta:
                choices.append(
                    {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                )
        return [self._chunk(choices)] if choices else []

    def end(self) -> list[JSON]:
        """The final chunk (every choice's finish reason), then usage when it was reported."""
        indexes = sorted(self.started | set(self.finish)) or [0]
        chunks = []
        final: list[JSON] = []
        for i in indexes:
            reason = self.finish.get(i, "stop")
            if not self.chat:
                final.append({"index": i, "text": "", "logprobs": None, "finish_reason": reason})
                continue
            if i not in self.started:  # an answer without any part still opens its turn
                opening = {"role": "assistant", "content": ""}
                chunks.append(self._chunk([{"index": i, "delta": opening, "logprobs": None,
                                            "finish_reason": None}]))  # fmt: skip
            final.append({"index": i, "delta": {}, "logprobs": None, "finish_reason": reason})
        chunks.append(self._chunk(final))
        if self.usage is not None:
            chunks.append(self._chunk([], usage=self.usage))
        return chunks

    def _chunk(self, choices: list[JSON], usage: JSON | None = None) -> JSON:
        chunk: JSON = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.call.model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    # -- shared --

    def _candidates(self, reply: JSON) -> Iterator[tuple[int, JSON]]:
        candidates = [c for c in reply.get("candidates") or [] if isinstance(c, dict)]
        feedback = reply.get("promptFeedback")
        reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
        if reason and not candidates:
            self._blocked(0, f"Gemini blocked the prompt ({reason}).")
            yield 0, {}
            return
        for position, candidate in enumerate(candidates):
            index = candidate.get("index", position)
            yield (index if isinstance(index, int) else position), candidate

    def _blocked(self, index: int, message: str) -> None:
        if index not in self.refusal:
            self.refusal[index] = message
            log.info("deployment %s: %s", self.deployment.name, message)

    def _parts(self, index: int, candidate: JSON) -> tuple[str, str, list[JSON]]:
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[JSON] = []
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str):
                (thoughts if part.get("thought") else texts).append(part["text"])
            call = part.get("functionCall")
            if isinstance(call, dict):
                number = self.tool_calls.get(index, 0)
                self.tool_calls[index] = number + 1
                identifier = call.get("id")
                tool_call: JSON = {
                    "index": number,
                    "id": identifier
                    if isinstance(identifier, str) and identifier
                    else "call_" + secrets.token_hex(12),
                    "type": "function",
                    "function": {
                        "name": str(call.get("name", "")),
                        "arguments": _encode(call.get("args") or {}).decode(),
                    },
                }
                signature = part.get("thoughtSignature")
                if isinstance(signature, str) and signature:  # to be sent back with the call
                    tool_call["extra_content"] = {"google": {"thought_signature": signature}}
                calls.append(tool_call)
        return "".join(texts), "".join(thoughts), calls

    def _finish(self, index: int, candidate: JSON, has_calls: bool) -> str:
        if index in self.refusal:
            return "content_filter"
        reason = str(candidate.get("finishReason") or "STOP")
        mapped = _FINISH.get(reason, "stop")
        if mapped == "content_filter":
            self._blocked(index, f"Gemini stopped the answer ({reason}).")
        elif has_calls:
            return "tool_calls"
        return mapped
