"""A scriptable OpenAI-compatible upstream (OpenAI itself, vLLM, llama.cpp server, ...).

Endpoints (under ``/v1``): ``POST chat/completions``, ``POST completions``, ``POST embeddings``,
``GET models``, ``GET models/{id}``. Wire format follows the OpenAI API reference:

* non-stream bodies are ``chat.completion`` / ``text_completion`` / ``list`` objects;
* streams are SSE: ``data: {json}\\n\\n`` events ending with ``data: [DONE]\\n\\n``. Chat streams
  start with a role-only delta, then content (or tool-call) deltas, then an empty delta with
  ``finish_reason``. With ``stream_options.include_usage`` every chunk carries ``"usage": null``
  and one extra chunk with ``"choices": []`` and the usage comes right before ``[DONE]``;
* errors are ``{"error": {"message", "type", "param", "code"}}``.

The ``model`` of every response is the model the request named (a gateway must rewrite it).
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from tests.fakes.script import (
    FakeServer,
    Flight,
    Frame,
    Script,
    StreamPlan,
    ToolCall,
    count_words,
    dumps,
    fake_embedding,
    last_user_text,
    messages_words,
    normalize_tool_calls,
    split_chunks,
    tool_call_words,
    truncate_words,
)

MALFORMED_BODY = b'{"id": "x", "choices": ['
SSE_GARBAGE = b'data: {"id": "x", "choices": [\n\n'
SSE_DONE = b"data: [DONE]\n\n"
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
SYSTEM_FINGERPRINT = "fp_fake"
MODEL_CREATED = 1_700_000_000


def sse(obj: Any) -> bytes:
    return f"data: {dumps(obj)}\n\n".encode()


def _error_kind(status: int) -> tuple[str, str | None]:
    if status == 401:
        return "invalid_request_error", "invalid_api_key"
    if status == 404:
        return "invalid_request_error", "model_not_found"
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status >= 500:
        return "server_error", None
    return "invalid_request_error", None


_AUTO: Any = object()  # "derive the error code from the status"


def openai_error(
    status: int,
    message: str,
    *,
    type_: str | None = None,
    code: str | None = _AUTO,
    param: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error envelope: {"error": {"message", "type", "param", "code"}}."""
    default_type, default_code = _error_kind(status)
    return {
        "error": {
            "message": message,
            "type": type_ or default_type,
            "param": param,
            "code": default_code if code is _AUTO else code,
        }
    }


class FakeOpenAI(FakeServer):
    """OpenAI-compatible fake; ``base_url`` is ``http://127.0.0.1:PORT/v1``.

    ``api_key``: when set, requests without ``Authorization: Bearer <api_key>`` get 401.
    ``strict_models``: when true, inference for a model not in ``models`` gets 404
    ``model_not_found`` (default: any model name is answered).
    ``embedding_dim``: length of embedding vectors unless the request asks for ``dimensions``.
    """

    api_prefix = "/v1"

    def __init__(
        self,
        models: Sequence[str] = ("fake-model",),
        *,
        api_key: str | None = None,
        strict_models: bool = False,
        embedding_dim: int = 8,
    ) -> None:
        super().__init__(models, api_key=api_key, embedding_dim=embedding_dim)
        self.strict_models = strict_models

    # -- plumbing -----------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/v1/models/{model_id:.+}", self._get_model)

    def _error_response(self, status: int, message: str, script: Script | None) -> web.Response:
        code = script.error_code if script and script.error_code is not None else _AUTO
        payload = openai_error(
            status, message, type_=script.error_type if script else None, code=code
        )
        return self._json_response(payload, script, status=status)

    @staticmethod
    def _sse_error(script: Script) -> bytes:
        code = script.error_code if script.error_code is not None else _AUTO
        status = script.status if script.status >= 400 else 500
        return sse(openai_error(status, script.error_message, type_=script.error_type, code=code))

    def _bad_request(self, message: str, param: str | None = None) -> web.Response:
        return self._json_response(openai_error(400, message, param=param), status=400)

    def _unauthorized(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        if not auth:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            payload = openai_error(401, message, code=None)
        else:
            shown = auth.removeprefix("Bearer ")[:4]
            message = f"Incorrect API key provided: {shown}****."
            payload = openai_error(401, message)
        return self._json_response(payload, status=401)

    def _route_error(self, request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
        message = f"Invalid URL ({request.method} {request.path})"
        payload = openai_error(exc.status, message, code=None)
        return self._json_response(payload, status=exc.status)

    def _model_not_found(self, model: str) -> web.Response:
        message = f"The model `{model}` does not exist or you do not have access to it."
        return self._json_response(openai_error(404, message, param="model"), status=404)

    async def _validated(
        self, request: web.Request, required: str
    ) -> tuple[dict[str, Any], str] | web.Response:
        body = await self._read_object(request)
        if body is None:
            return self._bad_request(
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly.)"
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._bad_request("you must provide a model parameter", param="model")
        if body.get(required) is None:
            return self._bad_request(f"Missing required parameter: '{required}'.", required)
        if self.strict_models and model not in self.models:
            return self._model_not_found(model)
        return body, model

    @staticmethod
    def _include_usage(body: dict[str, Any], script: Script) -> bool:
        options = body.get("stream_options")
        return script.usage and isinstance(options, dict) and bool(options.get("include_usage"))

    @staticmethod
    def _usage(prompt: int, completion: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    @staticmethod
    def _choice_count(body: dict[str, Any]) -> int:
        value = body.get("n")
        return max(1, value) if isinstance(value, int) and not isinstance(value, bool) else 1

    @staticmethod
    def _max_tokens(body: dict[str, Any]) -> int | None:
        value = body.get("max_completion_tokens", body.get("max_tokens"))
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    # -- chat completions ---------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        checked = await self._validated(request, "messages")
        if isinstance(checked, web.Response):
            return checked
        body, model = checked
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            return self._bad_request("'messages' must be a non-empty array", "messages")
        script = self._next_script()

        async def produce(flight: Flight) -> web.StreamResponse:
            return await self._chat_answer(flight, script, body, model, messages)

        return await self._inference(request, script, produce)

    def _chat_reply(
        self, script: Script, body: dict[str, Any], messages: list[Any]
    ) -> tuple[str | None, list[ToolCall], str]:
        """(content, tool calls, finish_reason) of a chat answer."""
        calls = normalize_tool_calls(script.tool_calls)
        content: str | None
        if script.content is not None:
            content = script.content
        elif calls:
            content = None
        else:
            content = "Echo: " + last_user_text(messages)
        finish = script.finish_reason
        if content is not None:
            content, cut = truncate_words(content, self._max_tokens(body))
            if cut and finish == "stop":
                finish = "length"
        if calls and finish == "stop":
            finish = "tool_calls"
        return content, calls, finish

    async def _chat_answer(
        self,
        flight: Flight,
        script: Script,
        body: dict[str, Any],
        model: str,
        messages: list[Any],
    ) -> web.StreamResponse:
        n = self._choice_count(body)
        content, calls, finish = self._chat_reply(script, body, messages)
        per_choice = count_words(content or "") + tool_call_words(calls)
        usage = self._usage(messages_words(messages), per_choice * n)
        completion_id = f"chatcmpl-fake{self._next_id()}"
        created = int(time.time())

        if not body.get("stream"):
            if script.malformed:
                return self._malformed_response(MALFORMED_BODY, script)
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": self._chat_choices(content, calls, finish, n),
            }
            if script.usage:
                payload["usage"] = usage
            return self._json_response(payload, script)

        include_usage = self._include_usage(body, script)

        def chunk(choice: dict[str, Any]) -> bytes:
            obj: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [choice],
            }
            if include_usage:
                obj["usage"] = None
            return sse(obj)

        def delta(i: int, d: dict[str, Any], reason: str | None = None) -> bytes:
            return chunk({"index": i, "delta": d, "logprobs": None, "finish_reason": reason})

        preamble: list[Frame] = [delta(i, {"role": "assistant", "content": ""}) for i in range(n)]
        pieces = split_chunks(content or "", script.chunks)
        body_frames: list[Frame] = [delta(i, {"content": p}) for p in pieces for i in range(n)]
        for call_delta in self._tool_call_deltas(calls, script.chunks):
            body_frames.extend(delta(i, {"tool_calls": [call_delta]}) for i in range(n))
        tail: list[Frame] = [delta(i, {}, finish) for i in range(n)]
        if include_usage:
            tail.append(
                sse(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "system_fingerprint": SYSTEM_FINGERPRINT,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        tail.append(SSE_DONE)
        plan = StreamPlan(preamble, body_frames, tail, SSE_GARBAGE, self._sse_error(script))
        return await self._stream(flight, script, plan, SSE_CONTENT_TYPE, _SSE_HEADERS)

    @staticmethod
    def _chat_choices(
        content: str | None, calls: Sequence[ToolCall], finish: str, n: int
    ) -> list[dict[str, Any]]:
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments_json},
                }
                for c in calls
            ]
        return [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
            for i in range(n)
        ]

    @staticmethod
    def _tool_call_deltas(calls: Sequence[ToolCall], chunks: int | None) -> list[dict[str, Any]]:
        """Per call: a header delta (id, type, name, empty arguments), then argument pieces."""
        deltas: list[dict[str, Any]] = []
        for index, call in enumerate(calls):
            deltas.append(
                {
                    "index": index,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
            )
            deltas.extend(
                {"index": index, "function": {"arguments": piece}}
                for piece in split_chunks(call.arguments_json, chunks)
            )
        return deltas

    # -- legacy completions -------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        checked = await self._validated(request, "prompt")
        if isinstance(checked, web.Response):
            return checked
        body, model = checked
        prompts = _prompt_list(body["prompt"])
        if prompts is None:
            return self._bad_request("'prompt' must be a string or an array of strings", "prompt")
        script = self._next_script()

        async def produce(flight: Flight) -> web.StreamResponse:
            return await self._completions_answer(flight, script, body, model, prompts)

        return await self._inference(request, script, produce)

    async def _completions_answer(
        self,
        flight: Flight,
        script: Script,
        body: dict[str, Any],
        model: str,
        prompts: list[str],
    ) -> web.StreamResponse:
        n = self._choice_count(body)
        max_tokens = self._max_tokens(body)
        texts: list[str] = []
        reasons: list[str] = []
        for prompt in prompts:
            text = script.content if script.content is not None else "Echo: " + prompt
            text, cut = truncate_words(text, max_tokens)
            reason = "length" if cut and script.finish_reason == "stop" else script.finish_reason
            texts.extend([text] * n)
            reasons.extend([reason] * n)
        usage = self._usage(
            sum(count_words(p) for p in prompts), sum(count_words(t) for t in texts)
        )
        completion_id = f"cmpl-fake{self._next_id()}"
        created = int(time.time())

        if not body.get("stream"):
            if script.malformed:
                return self._malformed_response(MALFORMED_BODY, script)
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [
                    {"text": t, "index": i, "logprobs": None, "finish_reason": r}
                    for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
                ],
            }
            if script.usage:
                payload["usage"] = usage
            return self._json_response(payload, script)

        include_usage = self._include_usage(body, script)

        def chunk(choices: list[dict[str, Any]], usage_value: Any = None) -> bytes:
            obj: dict[str, Any] = {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices,
            }
            if include_usage:
                obj["usage"] = usage_value
            return sse(obj)

        def piece(i: int, text: str, reason: str | None = None) -> bytes:
            return chunk([{"text": text, "index": i, "logprobs": None, "finish_reason": reason}])

        split = [split_chunks(t, script.chunks) for t in texts]
        body_frames: list[Frame] = []
        for k in range(max((len(s) for s in split), default=0)):
            body_frames.extend(piece(i, s[k]) for i, s in enumerate(split) if k < len(s))
        tail: list[Frame] = [piece(i, "", r) for i, r in enumerate(reasons)]
        if include_usage:
            tail.append(chunk([], usage))
        tail.append(SSE_DONE)
        plan = StreamPlan([], body_frames, tail, SSE_GARBAGE, self._sse_error(script))
        return await self._stream(flight, script, plan, SSE_CONTENT_TYPE, _SSE_HEADERS)

    # -- embeddings ---------------------------------------------------------------------------

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        checked = await self._validated(request, "input")
        if isinstance(checked, web.Response):
            return checked
        body, model = checked
        inputs = _embedding_inputs(body["input"])
        if not inputs:
            return self._bad_request("'input' must be a non-empty string or array", "input")
        dims = body.get("dimensions")
        dim = dims if isinstance(dims, int) and dims > 0 else self.embedding_dim
        base64_format = body.get("encoding_format") == "base64"
        script = self._next_script()

        async def produce(flight: Flight) -> web.StreamResponse:
            if script.malformed:
                return self._malformed_response(MALFORMED_BODY, script)
            data = []
            for i, text in enumerate(inputs):
                vector = fake_embedding(text, dim)
                encoded: Any = vector
                if base64_format:
                    packed = struct.pack(f"<{len(vector)}f", *vector)
                    encoded = base64.b64encode(packed).decode()
                data.append({"object": "embedding", "index": i, "embedding": encoded})
            payload: dict[str, Any] = {"object": "list", "data": data, "model": model}
            if script.usage:
                tokens = sum(count_words(t) for t in inputs)
                payload["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
            return self._json_response(payload, script)

        return await self._inference(request, script, produce)

    # -- models -------------------------------------------------------------------------------

    @staticmethod
    def _model_object(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": "fake"}

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        data = [self._model_object(m) for m in self.models]
        return self._json_response({"object": "list", "data": data})

    async def _get_model(self, request: web.Request) -> web.StreamResponse:
        model_id = request.match_info["model_id"]
        if model_id not in self.models:
            return self._model_not_found(model_id)
        return self._json_response(self._model_object(model_id))


_SSE_HEADERS = {"Cache-Control": "no-cache"}


def _prompt_list(prompt: Any) -> list[str] | None:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, int) for p in prompt):  # a single prompt given as token ids
            return [" ".join(str(t) for t in prompt)]
        if all(isinstance(p, list) for p in prompt):
            return [" ".join(str(t) for t in p) for p in prompt]
    return None


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(isinstance(v, int) for v in value):  # one input given as token ids
            return [" ".join(str(t) for t in value)]
        if all(isinstance(v, list) for v in value):
            return [" ".join(str(t) for t in v) for v in value]
    return []
