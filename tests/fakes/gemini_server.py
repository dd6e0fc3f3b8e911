"""A scriptable Gemini API upstream (generativelanguage.googleapis.com, v1beta).

Endpoints (under ``/v1beta``): ``POST models/{model}:generateContent``,
``POST models/{model}:streamGenerateContent?alt=sse``, ``POST models/{model}:embedContent``,
``POST models/{model}:batchEmbedContents`` and ``GET models`` (``pageSize``/``pageToken``,
answered with ``nextPageToken``). Wire format as Google documents it:

* requests are camelCase: ``contents`` ([{role: user|model, parts}]), ``systemInstruction``,
  ``tools`` ([{functionDeclarations}]), ``toolConfig.functionCallingConfig``,
  ``generationConfig``, ``safetySettings``; a part holds exactly one of ``text``,
  ``inlineData {mimeType, data}``, ``functionCall {name, args}``,
  ``functionResponse {name, response}``;
* answers carry ``candidates`` ([{content {role: model, parts}, finishReason, index,
  safetyRatings}]), ``usageMetadata`` (``promptTokenCount``, ``candidatesTokenCount``,
  ``totalTokenCount``, ``cachedContentTokenCount``) and ``modelVersion``; a blocked prompt has
  ``promptFeedback.blockReason`` and no candidates;
* streams are SSE (``data: {GenerateContentResponse}`` events, no ``[DONE]``); each event
  carries the usage so far, the last one the finish reason and the whole usage;
* errors are ``{"error": {"code", "message", "status", "details"?}}``; a 429 may carry a
  ``google.rpc.RetryInfo`` detail (``retryDelay: "7s"``); a key Google refuses is a 400
  ``INVALID_ARGUMENT`` with an ``ErrorInfo`` reason ``API_KEY_INVALID``; no key is a 403.

The fake CHECKS every request field by field (method, path, the ``x-goog-api-key`` header,
no key in the URL, every body field's name and type) and answers a violation 400 as Gemini
does (``Invalid JSON payload received. Unknown name ...``); each violation is also kept in
``violations`` so that tests can assert there were none. Replies echo the last user text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.script import (
    FakeServer,
    Flight,
    Frame,
    Script,
    StreamPlan,
    count_words,
    dumps,
    fake_embedding,
    normalize_tool_calls,
    split_chunks,
    tool_call_words,
    truncate_words,
)

SSE_CONTENT_TYPE = "text/event-stream"
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_TOP_LEVEL = {
    "contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
    "safetySettings", "cachedContent",
}  # fmt: skip
_GENERATION_CONFIG: dict[str, type | tuple[type, ...]] = {
    "temperature": (int, float),
    "topP": (int, float),
    "topK": int,
    "maxOutputTokens": int,
    "stopSequences": list,
    "candidateCount": int,
    "seed": int,
    "presencePenalty": (int, float),
    "frequencyPenalty": (int, float),
    "responseMimeType": str,
    "responseSchema": dict,
}
_SCHEMA_KEYS = {
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
    "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum",
}  # fmt: skip
_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT"}
_MODES = {"AUTO", "ANY", "NONE", "VALIDATED"}
_FINISH = {"stop": "STOP", "length": "MAX_TOKENS"}
_RATINGS = [
    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"},
]
_BLOCKED_RATINGS = [
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
]


@dataclass
class GeminiScript(Script):
    """A :class:`Script` with what only Gemini answers.

    ``finish_reason`` takes Gemini's names too (``"SAFETY"``, ``"RECITATION"``); OpenAI's
    ``"stop"``/``"length"`` are translated. With ``"SAFETY"`` and no ``content`` the candidate
    has no content at all, as Gemini answers a blocked reply.
    """

    block_reason: str | None = None
    """The prompt is blocked: ``promptFeedback.blockReason`` and no candidates."""
    retry_delay: str | None = None
    """An error's ``google.rpc.RetryInfo`` detail (``"7s"``)."""
    error_reason: str | None = None
    """An error's ``google.rpc.ErrorInfo`` reason (``"API_KEY_INVALID"``)."""
    cached_tokens: int = 0
    """Reported as ``usageMetadata.cachedContentTokenCount``."""
    thought_signature: str | None = None
    """Sent with each ``functionCall`` part, as thinking models do."""
    cut_short: bool = False
    """Streaming: end the stream cleanly without its last event (no finish reason)."""


def sse(obj: Any) -> bytes:
    return f"data: {dumps(obj)}\r\n\r\n".encode()


class Violation(Exception):
    """A request Gemini would refuse with 400 INVALID_ARGUMENT."""


class FakeGemini(FakeServer):
    """Gemini fake; ``base_url`` is ``http://127.0.0.1:PORT/v1beta``.

    ``api_key``: every call must carry it in ``x-goog-api-key``; ``page_size``: the largest
    page ``GET models`` answers.
    """

    api_prefix = "/v1beta"

    def __init__(
        self,
        models: Sequence[str] = ("gemini-1.5-flash", "gemini-1.5-pro", "text-embedding-004"),
        *,
        api_key: str | None = "test-gemini-key",
        embedding_dim: int = 8,
        page_size: int = 50,
    ) -> None:
        super().__init__(models, api_key=api_key, embedding_dim=embedding_dim)
        self.page_size = page_size
        self.violations: list[str] = []

    # -- plumbing -----------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1beta/models", self._models)
        app.router.add_post("/v1beta/models/{target}", self._call)

    def _error_response(self, status: int, message: str, script: Script | None) -> web.Response:
        error: dict[str, Any] = {
            "code": status,
            "message": message,
            "status": _STATUS.get(status, "UNKNOWN"),
        }
        details = []
        if isinstance(script, GeminiScript) and script.retry_delay:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": script.retry_delay,
                }
            )
        if isinstance(script, GeminiScript) and script.error_reason:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": script.error_reason,
                    "domain": "googleapis.com",
                }
            )
        if details:
            error["details"] = details
        return self._json_response({"error": error}, script, status=status)

    def _route_error(self, request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
        return self._error_response(exc.status, f"Not found: {request.path}", None)

    def _check_auth(self, request: web.Request) -> bool:
        if "key" in request.query or "Authorization" in request.headers:
            self.violations.append("the key must travel in x-goog-api-key only")
            return False
        if self.api_key is None:
            return True
        return request.headers.get("x-goog-api-key") == self.api_key

    def _unauthorized(self, request: web.Request) -> web.Response:
        if "key" in request.query or "Authorization" in request.headers:
            return self._error_response(400, "API keys go in x-goog-api-key (fake's rule)", None)
        if "x-goog-api-key" not in request.headers:
            message = (
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity."
            )
            return self._error_response(403, message, None)
        script = GeminiScript(error_reason="API_KEY_INVALID")
        return self._error_response(400, "API key not valid. Please pass a valid API key.", script)

    def _refuse(self, problem: str) -> web.Response:
        self.violations.append(problem)
        return self._error_response(400, f"Invalid JSON payload received. {problem}", None)

    # -- GET models ---------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.StreamResponse:
        try:
            size = min(int(request.query.get("pageSize", "50")), self.page_size)
            start = int(request.query.get("pageToken", "p0").removeprefix("p"))
        except ValueError:
            return self._refuse("pageSize and pageToken must be what the API gave")
        page = self.models[start : start + max(size, 1)]
        body: dict[str, Any] = {
            "models": [
                {
                    "name": f"models/{name}",
                    "version": "001",
                    "displayName": name,
                    "inputTokenLimit": 1048576,
                    "outputTokenLimit": 8192,
                    "supportedGenerationMethods": (
                        ["embedContent"] if "embedding" in name else ["generateContent"]
                    ),
                }
                for name in page
            ]
        }
        if start + len(page) < len(self.models):
            body["nextPageToken"] = f"p{start + len(page)}"
        return self._json_response(body)

    # -- POST models/{model}:{method} -----------------------------------------------------------

    async def _call(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].partition(":")
        if method not in ("generateContent", "streamGenerateContent", "embedContent",
                          "batchEmbedContents"):  # fmt: skip
            return self._error_response(404, f"Method not found: {method}", None)
        if model not in self.models:
            message = (
                f"models/{model} is not found for API version v1beta, or is not supported "
                f"for {method}. Call ListModels to see the list of available models."
            )
            return self._error_response(404, message, None)
        streaming = method == "streamGenerateContent"
        if streaming and request.query.get("alt") != "sse":
            return self._refuse("streamGenerateContent is asked for with ?alt=sse")
        if request.headers.get("Content-Type", "").split(";")[0] != "application/json":
            return self._refuse("the body must be application/json")
        body = await self._read_object(request)
        if body is None:
            return self._refuse("the body must be a JSON object")
        inputs: list[tuple[str, int]] = []
        try:
            if method in ("embedContent", "batchEmbedContents"):
                inputs = _check_embedding(body, model, batch=method == "batchEmbedContents")
            else:
                _check_generate(body)
        except Violation as exc:
            return self._refuse(str(exc))
        script = self._next_script()

        async def produce(flight: Flight) -> web.StreamResponse:
            if method in ("embedContent", "batchEmbedContents"):
                return self._embedding_answer(script, body, inputs, method)
            return await self._answer(flight, script, body, model, streaming)

        return await self._inference(request, script, produce)

    def _embedding_answer(
        self, script: Script, body: dict[str, Any], inputs: list[tuple[str, int]], method: str
    ) -> web.Response:
        if script.malformed:
            return self._malformed_response(b'{"embedding": {"values": [', script)
        vectors = [
            {"values": fake_embedding(text, dim or self.embedding_dim)} for text, dim in inputs
        ]
        if method == "embedContent":
            return self._json_response({"embedding": vectors[0]}, script)
        return self._json_response({"embeddings": vectors}, script)

    async def _answer(
        self,
        flight: Flight,
        script: Script,
        body: dict[str, Any],
        model: str,
        streaming: bool,
    ) -> web.StreamResponse:
        reply = _Reply(script, body, model)
        if reply.blocked is not None:
            if streaming:
                plan = StreamPlan([], [], [sse(reply.blocked)], b"")
                return await self._stream(flight, script, plan, SSE_CONTENT_TYPE)
            return self._json_response(reply.blocked, script)
        if not streaming:
            if script.malformed:
                return self._malformed_response(b'{"candidates": [{"content": ', script)
            parts = ([{"text": reply.content}] if reply.content else []) + reply.call_parts
            return self._json_response(reply.response(parts or None, True, True), script)
        frames: list[Frame] = [
            sse(reply.response([{"text": piece}], False, False))
            for piece in split_chunks(reply.content, script.chunks)
        ]
        if reply.call_parts:
            frames.append(sse(reply.response(reply.call_parts, False, False)))
        last = None if reply.reason == "SAFETY" and not reply.content else [{"text": ""}]
        tail: list[Frame] = [] if reply.cut_short else [sse(reply.response(last, True, True))]
        error = sse({"error": {"code": 500, "message": script.error_message, "status": "INTERNAL"}})
        plan = StreamPlan([], frames, tail, b'data: {"candidates": [\r\n\r\n', error)
        return await self._stream(flight, script, plan, SSE_CONTENT_TYPE)


class _Reply:
    """What one generateContent call answers, whole or as stream events."""

    def __init__(self, script: Script, body: dict[str, Any], model: str) -> None:
        gemini = script if isinstance(script, GeminiScript) else GeminiScript()
        self.script, self.model, self.cached = script, model, gemini.cached_tokens
        self.cut_short = gemini.cut_short
        contents = body["contents"]
        config = body.get("generationConfig") or {}
        system = _texts([body.get("systemInstruction") or {}])
        self.prompt_tokens = sum(count_words(t) for t in [*_texts(contents), *system])
        calls = normalize_tool_calls(script.tool_calls)
        if script.content is not None:
            content = script.content
        elif calls or script.finish_reason == "SAFETY":
            content = ""
        else:
            content = "Echo: " + _last_user_text(contents)
        self.content, cut = truncate_words(content, config.get("maxOutputTokens"))
        reason = _FINISH.get(script.finish_reason, script.finish_reason)
        self.reason = "MAX_TOKENS" if cut and reason == "STOP" else reason
        self.completion_tokens = count_words(self.content) + tool_call_words(calls)
        self.count = int(config.get("candidateCount") or 1)
        self.call_parts = [{"functionCall": {"name": c.name, "args": c.arguments}} for c in calls]
        if gemini.thought_signature:
            for part in self.call_parts:
                part["thoughtSignature"] = gemini.thought_signature
        self.blocked: dict[str, Any] | None = None
        if gemini.block_reason:
            feedback = {"blockReason": gemini.block_reason, "safetyRatings": _BLOCKED_RATINGS}
            self.blocked = {
                "promptFeedback": feedback,
                "usageMetadata": {
                    "promptTokenCount": self.prompt_tokens,
                    "totalTokenCount": self.prompt_tokens,
                },
                "modelVersion": model,
            }

    def usage(self, done: bool) -> dict[str, Any]:
        """The usage so far: stream events before the last do not count the reply yet."""
        out: dict[str, Any] = {"promptTokenCount": self.prompt_tokens}
        completion = self.completion_tokens * self.count if done else 0
        if done:
            out["candidatesTokenCount"] = completion
        out["totalTokenCount"] = self.prompt_tokens + completion
        if self.cached:
            out["cachedContentTokenCount"] = self.cached
        return out

    def candidate(self, index: int, parts: list[dict[str, Any]] | None, finish: bool) -> Any:
        out: dict[str, Any] = {"index": index}
        if parts is not None:
            out["content"] = {"parts": parts, "role": "model"}
        if finish:
            out["finishReason"] = self.reason
            out["safetyRatings"] = _BLOCKED_RATINGS if self.reason == "SAFETY" else _RATINGS
        return out

    def response(self, parts: list[dict[str, Any]] | None, finish: bool, done: bool) -> Any:
        obj: dict[str, Any] = {
            "candidates": [self.candidate(i, parts, finish) for i in range(self.count)],
            "modelVersion": self.model,
        }
        if self.script.usage:
            obj["usageMetadata"] = self.usage(done)
        return obj


# -- request checks -------------------------------------------------------------------------


def _unknown(where: str, keys: Any, allowed: set[str]) -> None:
    for key in keys:
        if key not in allowed:
            raise Violation(f"Unknown name \"{key}\" at '{where}': Cannot find field.")


def _check_generate(body: dict[str, Any]) -> None:
    _unknown("", body, _TOP_LEVEL)
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Violation("contents is not specified")
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            raise Violation(f"contents[{i}] must be an object")
        _unknown(f"contents[{i}]", content, {"role", "parts"})
        if content.get("role") not in ("user", "model"):
            raise Violation(f"contents[{i}].role must be 'user' or 'model'")
        _check_parts(content.get("parts"), f"contents[{i}].parts")
    system = body.get("systemInstruction")
    if system is not None:
        if not isinstance(system, dict):
            raise Violation("system_instruction must be an object")
        _unknown("system_instruction", system, {"role", "parts"})
        _check_parts(system.get("parts"), "system_instruction.parts", text_only=True)
    _check_tools(body.get("tools"))
    _check_tool_config(body.get("toolConfig"))
    _check_generation_config(body.get("generationConfig"))


def _check_generation_config(config: Any) -> None:
    if config is not None:
        if not isinstance(config, dict):
            raise Violation("generation_config must be an object")
        for key, value in config.items():
            expected = _GENERATION_CONFIG.get(key)
            if expected is None:
                raise Violation(
                    f"Unknown name \"{key}\" at 'generation_config': Cannot find field."
                )
            if isinstance(value, bool) or not isinstance(value, expected):
                raise Violation(f"generation_config.{key} has the wrong type")
        if "stopSequences" in config and not all(
            isinstance(s, str) for s in config["stopSequences"]
        ):
            raise Violation("generation_config.stop_sequences must be strings")
        if "responseSchema" in config:
            _check_schema(config["responseSchema"], "generation_config.response_schema")
            if config.get("responseMimeType") != "application/json":
                raise Violation("response_schema needs response_mime_type application/json")


def _check_parts(parts: Any, where: str, *, text_only: bool = False) -> None:
    if not isinstance(parts, list) or not parts:
        raise Violation(f"{where} must be a non-empty list")
    kinds = {"text", "inlineData", "functionCall", "functionResponse", "thought"}
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise Violation(f"{where}[{j}] must be an object")
        _unknown(f"{where}[{j}]", part, {"text"} if text_only else kinds | {"thoughtSignature"})
        if "thoughtSignature" in part and "functionCall" not in part:
            raise Violation(f"{where}[{j}].thought_signature belongs to a function call here")
        data = [k for k in part if k not in ("thought", "thoughtSignature")]
        if len(data) != 1:
            raise Violation(f"{where}[{j}] must hold exactly one kind of data")
        kind = data[0]
        value = part[kind]
        if kind == "text" and not (isinstance(value, str) and value):
            raise Violation("Unable to submit request because it has an empty text parameter.")
        if kind == "inlineData" and not (
            isinstance(value, dict)
            and set(value) == {"mimeType", "data"}
            and all(isinstance(v, str) and v for v in value.values())
        ):
            raise Violation(f"{where}[{j}].inline_data needs mime_type and data")
        if kind == "functionCall" and not (
            isinstance(value, dict)
            and isinstance(value.get("name"), str)
            and isinstance(value.get("args", {}), dict)
            and set(value) <= {"name", "args", "id"}
        ):
            raise Violation(f"{where}[{j}].function_call needs a name and object args")
        if kind == "functionResponse" and not (
            isinstance(value, dict)
            and isinstance(value.get("name"), str)
            and isinstance(value.get("response"), dict)
            and set(value) <= {"name", "response", "id"}
        ):
            raise Violation(f"{where}[{j}].function_response needs a name and an object response")


def _check_tools(tools: Any) -> None:
    if tools is not None:
        if not isinstance(tools, list):
            raise Violation("tools must be a list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise Violation(f"tools[{i}] must be an object")
            _unknown(f"tools[{i}]", tool, {"functionDeclarations", "googleSearch", "codeExecution"})
            for k, declaration in enumerate(tool.get("functionDeclarations") or []):
                where = f"tools[{i}].function_declarations[{k}]"
                if not isinstance(declaration, dict) or not isinstance(
                    declaration.get("name"), str
                ):
                    raise Violation(f"{where}.name is required")
                _unknown(where, declaration, {"name", "description", "parameters"})
                if "parameters" in declaration:
                    _check_schema(declaration["parameters"], f"{where}.parameters")


def _check_tool_config(tool_config: Any) -> None:
    if tool_config is not None:
        if not isinstance(tool_config, dict):
            raise Violation("tool_config must be an object")
        _unknown("tool_config", tool_config, {"functionCallingConfig"})
        calling = tool_config.get("functionCallingConfig")
        if not isinstance(calling, dict):
            raise Violation("tool_config.function_calling_config must be an object")
        _unknown("tool_config.function_calling_config", calling, {"mode", "allowedFunctionNames"})
        if calling.get("mode") not in _MODES:
            raise Violation(
                f"Invalid value at 'tool_config.function_calling_config.mode' ({calling.get('mode')!r})"
            )
        names = calling.get("allowedFunctionNames")
        if names is not None and (calling.get("mode") != "ANY" or not isinstance(names, list)):
            raise Violation("allowed_function_names needs mode ANY")


def _check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise Violation(f"{where} must be an object")
    _unknown(where, schema, _SCHEMA_KEYS)
    kind = schema.get("type")
    if kind is not None and kind not in _TYPES:
        raise Violation(f"Invalid value at '{where}.type' ({kind!r})")
    if kind == "OBJECT" and "properties" in schema and not schema["properties"]:
        raise Violation(f"{where}.properties: should be non-empty for OBJECT type")
    if "enum" in schema and not all(isinstance(v, str) for v in schema["enum"]):
        raise Violation(f"{where}.enum values must be strings")
    for name, sub in (schema.get("properties") or {}).items():
        _check_schema(sub, f"{where}.properties[{name}]")
    if "items" in schema:
        _check_schema(schema["items"], f"{where}.items")
    for k, sub in enumerate(schema.get("anyOf") or []):
        _check_schema(sub, f"{where}.any_of[{k}]")


def _check_embedding(body: dict[str, Any], model: str, *, batch: bool) -> list[tuple[str, int]]:
    """(text, dimensions) of each input."""
    if not batch:
        return [_embed_input(body, "", None)]
    _unknown("", body, {"requests"})
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise Violation("requests must be a non-empty list")
    if len(requests) > 100:
        raise Violation(
            "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch"
        )
    return [_embed_input(r, f"requests[{i}]", model) for i, r in enumerate(requests)]


def _embed_input(request: Any, where: str, model: str | None) -> tuple[str, int]:
    if not isinstance(request, dict):
        raise Violation(f"{where} must be an object")
    allowed = {"content", "taskType", "title", "outputDimensionality"}
    _unknown(where, request, allowed | ({"model"} if model else set()))
    if model is not None and request.get("model") != f"models/{model}":
        raise Violation(f"{where}.model must be models/{model}, as in the URL")
    content = request.get("content")
    if not isinstance(content, dict):
        raise Violation(f"{where}.content is required")
    _check_parts(content.get("parts"), f"{where}.content.parts", text_only=True)
    dims = request.get("outputDimensionality", 0)
    if not isinstance(dims, int) or isinstance(dims, bool):
        raise Violation(f"{where}.output_dimensionality must be an integer")
    return " ".join(p["text"] for p in content["parts"]), dims


def _texts(contents: list[Any]) -> list[str]:
    return [
        part["text"]
        for content in contents
        for part in content.get("parts") or []
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    ]


def _last_user_text(contents: list[Any]) -> str:
    for content in reversed(contents):
        if content.get("role") == "user":
            texts = _texts([content])
            if texts:
                return " ".join(texts)
    return ""
