"""A scriptable Ollama native-API upstream.

Endpoints: ``POST /api/chat``, ``POST /api/generate``, ``POST /api/embed``,
``POST /api/embeddings`` (legacy), ``POST /api/show``, ``GET /api/ps``, ``GET /api/tags``,
``GET /api/version`` and ``GET /`` ("Ollama is running"). Wire format follows Ollama's
docs/api.md:

* ``stream`` defaults to TRUE; streams are NDJSON (``application/x-ndjson``), one JSON object
  per line with ``"done": false``, then a final line with ``"done": true``, ``done_reason``,
  ``total_duration``, ``load_duration``, ``prompt_eval_count``, ``prompt_eval_duration``,
  ``eval_count``, ``eval_duration`` (durations in nanoseconds). The final chat line carries an
  empty assistant message; the final generate line an empty ``response`` (plus ``context``);
* ``stream: false`` gives one JSON object with the whole reply and the same statistics;
* tool calls are ``message.tool_calls = [{"function": {"name", "arguments": {...}}}]`` with
  arguments as a JSON *object* (not a string as in OpenAI); streamed as one extra line;
* errors are ``{"error": "..."}`` with the HTTP status; an unknown model is a 404; an error
  after streaming began is an ``{"error": "..."}`` NDJSON line (status stays 200);
* ``/api/show`` answers a known model (``model``, or legacy ``name``) with a modelfile whose
  ``FROM`` comment names it, its details, ``model_info`` and ``capabilities``; ``/api/ps``
  lists the models in ``loaded`` (a test sets it) with sizes, details and ``expires_at``;
* empty ``messages`` (chat) / empty ``prompt`` (generate) just load the model
  (``done_reason: "load"``, or ``"unload"`` with ``keep_alive: 0``) and consume no script.

For pools of nodes: ``models`` and ``loaded`` may be changed while it runs (a pull, a
load); ``service_time`` adds a fixed time to every inference answer, ``max_concurrency``
answers that many at once and queues the rest (as Ollama's ``OLLAMA_NUM_PARALLEL``
does), ``served`` counts inference answers begun, and ``restart()`` listens again on
the same port after ``close()`` (a node that was switched off and on).

Request fields such as ``options``, ``tools``, ``format``, ``keep_alive``, ``images`` are
recorded untouched in ``requests`` (``options.num_predict`` also caps the reply length).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Sequence
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
    rfc3339_now,
    split_chunks,
    tool_call_words,
    truncate_words,
)

NDJSON_CONTENT_TYPE = "application/x-ndjson"
NDJSON_GARBAGE = b'{"model": "x", "message": {\n'
MODIFIED_AT = "2024-11-01T12:00:00.123456789Z"


def ndjson(obj: Any) -> bytes:
    return (dumps(obj) + "\n").encode()


def canonical_model(name: str) -> str:
    """Ollama names default to the ``latest`` tag: ``llama3.2`` == ``llama3.2:latest``."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _unloading(keep_alive: Any) -> bool:
    return keep_alive in (0, "0", "0s", "0m", "0h")


class FakeOllama(FakeServer):
    """Ollama fake; ``base_url`` is ``http://127.0.0.1:PORT`` (no ``/v1``).

    ``api_key``: when set, requests without ``Authorization: Bearer <api_key>`` get 401
    ``{"error": "unauthorized"}`` (as a reverse proxy / ollama.com would answer).
    """

    def __init__(
        self,
        models: Sequence[str] = ("llama3.2:1b",),
        *,
        api_key: str | None = None,
        embedding_dim: int = 8,
        version: str = "0.12.6",
        service_time: float = 0.0,
        max_concurrency: int | None = None,
        loaded: Sequence[str] = (),
    ) -> None:
        super().__init__(models, api_key=api_key, embedding_dim=embedding_dim)
        self.version = version
        self.loaded: list[str] = list(loaded)  # what /api/ps lists
        self.service_time = service_time
        self.max_concurrency = max_concurrency
        self.served = 0  # inference answers begun (after any wait for a slot)
        self._slots: asyncio.Semaphore | None = None

    async def _inference(
        self,
        request: web.Request,
        script: Script,
        produce: Callable[[Flight], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """The scripted answer, behind the concurrency cap and after the service time."""

        async def served(flight: Flight) -> web.StreamResponse:
            if self.max_concurrency is None:
                return await self._serve_one(flight, produce)
            if self._slots is None:
                self._slots = asyncio.Semaphore(self.max_concurrency)
            async with self._slots:
                return await self._serve_one(flight, produce)

        return await super()._inference(request, script, served)

    async def _serve_one(
        self, flight: Flight, produce: Callable[[Flight], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.served += 1
        if self.service_time > 0:
            await asyncio.sleep(self.service_time)
        return await produce(flight)

    # -- plumbing -----------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_post("/api/embed", self._embed)
        app.router.add_post("/api/embeddings", self._embeddings)
        app.router.add_post("/api/show", self._show)
        app.router.add_get("/api/ps", self._ps)

    def _error_response(self, status: int, message: str, script: Script | None) -> web.Response:
        return self._json_response({"error": message}, script, status=status)

    def _route_error(self, request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
        # Ollama's Go router answers unknown routes in plain text.
        text = "404 page not found" if exc.status == 404 else "405 method not allowed"
        return web.Response(status=exc.status, text=text)

    def _known(self, model: str) -> bool:
        wanted = canonical_model(model)
        return any(canonical_model(m) == wanted for m in self.models)

    async def _validated(self, request: web.Request) -> tuple[dict[str, Any], str] | web.Response:
        body = await self._read_object(request)
        if body is None:
            return self._error_response(400, "invalid request body: expected a JSON object", None)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._error_response(400, "model is required", None)
        if not self._known(model):
            message = f'model "{model}" not found, try pulling it first'
            return self._error_response(404, message, None)
        return body, model

    @staticmethod
    def _streaming(body: dict[str, Any]) -> bool:
        return body.get("stream") is not False  # absent / null -> stream (Ollama's default)

    @staticmethod
    def _num_predict(body: dict[str, Any]) -> int | None:
        options = body.get("options")
        if not isinstance(options, dict):
            return None
        value = options.get("num_predict")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _stats(
        self, script: Script, start_ns: int, prompt_tokens: int, completion_tokens: int
    ) -> dict[str, Any]:
        total = self._elapsed_ns(start_ns)
        load = total // 20
        prompt_eval = total // 10
        stats: dict[str, Any] = {
            "total_duration": total,
            "load_duration": load,
        }
        if script.usage:
            stats["prompt_eval_count"] = prompt_tokens
        stats["prompt_eval_duration"] = prompt_eval
        if script.usage:
            stats["eval_count"] = completion_tokens
        stats["eval_duration"] = max(1, total - load - prompt_eval)
        return stats

    @staticmethod
    def _ollama_tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
        return [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls]

    # -- simple endpoints ---------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return self._json_response({"version": self.version})

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        return self._json_response({"models": [self._tag_entry(m) for m in self.models]})

    @staticmethod
    def _tag_entry(model: str) -> dict[str, Any]:
        name = canonical_model(model)
        base, _, tag = name.rpartition(":")
        short = base.rsplit("/", 1)[-1]
        family_match = re.match(r"[A-Za-z]+", short)
        family = family_match.group(0).lower() if family_match else short
        size_match = re.search(r"(\d+(?:\.\d+)?)([bBmM])", tag)
        parameter_size = (
            f"{size_match.group(1)}{size_match.group(2).upper()}" if size_match else "7B"
        )
        digest = hashlib.sha256(name.encode()).hexdigest()
        return {
            "name": name,
            "model": name,
            "modified_at": MODIFIED_AT,
            "size": 1_000_000_000 + int(digest[:6], 16),
            "digest": digest,
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": family,
                "families": [family],
                "parameter_size": parameter_size,
                "quantization_level": "Q4_K_M",
            },
        }

    async def _show(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_object(request)
        model = (body or {}).get("model") or (body or {}).get("name")
        if not isinstance(model, str) or not model:
            return self._error_response(400, "model is required", None)
        if not self._known(model):
            return self._error_response(404, f"model '{model}' not found", None)
        entry = self._tag_entry(model)
        details = entry["details"]
        name = entry["name"]
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {name}\n\n"
            f"FROM /root/.ollama/models/blobs/sha256-{entry['digest']}\n"
            'TEMPLATE "{{ .Prompt }}"\nPARAMETER stop <|eot_id|>\n'
        )
        return self._json_response(
            {
                "modelfile": modelfile,
                "parameters": 'stop                           "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": details,
                "model_info": {
                    "general.architecture": details["family"],
                    "general.parameter_count": 1_235_814_432,
                    f"{details['family']}.context_length": 131072,
                },
                "capabilities": ["completion", "tools"],
                "modified_at": MODIFIED_AT,
            }
        )

    async def _ps(self, request: web.Request) -> web.StreamResponse:
        running = []
        for model in self.loaded:
            entry = self._tag_entry(model)
            running.append(
                {
                    "name": entry["name"],
                    "model": entry["name"],
                    "size": entry["size"],
                    "digest": entry["digest"],
                    "details": entry["details"],
                    "expires_at": "2099-01-01T00:05:00.000000000Z",
                    "size_vram": entry["size"],
                    "context_length": 4096,
                }
            )
        return self._json_response({"models": running})

    # -- /api/chat ----------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        checked = await self._validated(request)
        if isinstance(checked, web.Response):
            return checked
        body, model = checked
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            return self._error_response(400, "messages must be an array", None)
        if not messages:
            reason = "unload" if _unloading(body.get("keep_alive")) else "load"
            return self._json_response(
                {
                    "model": model,
                    "created_at": rfc3339_now(),
                    "message": {"role": "assistant", "content": ""},
                    "done_reason": reason,
                    "done": True,
                }
            )
        script = self._next_script()

        async def produce(flight: Flight) -> web.StreamResponse:
            return await self._chat_answer(flight, script, body, model, messages)

        return await self._inference(request, script, produce)

    async def _chat_answer(
        self,
        flight: Flight,
        script: Script,
        body: dict[str, Any],
        model: str,
        messages: list[Any],
    ) -> web.StreamResponse:
        start_ns = time.perf_counter_ns()
        calls = normalize_tool_calls(script.tool_calls)
        if script.content is not None:
            content = script.content
        elif calls:
            content = ""
        else:
            content = "Echo: " + last_user_text(messages)
        content, cut = truncate_words(content, self._num_predict(body))
        reason = "length" if cut and script.finish_reason == "stop" else script.finish_reason
        prompt_tokens = messages_words(messages)
        completion_tokens = count_words(content) + tool_call_words(calls)

        def final(message_content: str, with_calls: bool) -> dict[str, Any]:
            message: dict[str, Any] = {"role": "assistant", "content": message_content}
            if with_calls and calls:
                message["tool_calls"] = self._ollama_tool_calls(calls)
            return {
                "model": model,
                "created_at": rfc3339_now(),
                "message": message,
                "done_reason": reason,
                "done": True,
                **self._stats(script, start_ns, prompt_tokens, completion_tokens),
            }

        if not self._streaming(body):
            if script.malformed:
                return self._malformed_response(NDJSON_GARBAGE.rstrip(b"\n"), script)
            return self._json_response(final(content, True), script)

        def line(message: dict[str, Any]) -> bytes:
            obj = {"model": model, "created_at": rfc3339_now(), "message": message, "done": False}
            return ndjson(obj)

        frames: list[Frame] = [
            line({"role": "assistant", "content": piece})
            for piece in split_chunks(content, script.chunks)
        ]
        if calls:
            frames.append(
                line(
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": self._ollama_tool_calls(calls),
                    }
                )
            )
        tail: list[Frame] = [lambda: ndjson(final("", False))]
        plan = StreamPlan([], frames, tail, NDJSON_GARBAGE, ndjson({"error": script.error_message}))
        return await self._stream(flight, script, plan, NDJSON_CONTENT_TYPE)

    # -- /api/generate ------------------------------------------------------------------------

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        checked = await self._validated(request)
        if isinstance(checked, web.Response):
            return checked
        body, model = checked
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            return self._error_response(400, "prompt must be a string", None)
        if not prompt:
            payload: dict[str, Any] = {
                "model": model,
                "created_at": rfc3339_now(),
                "response": "",
                "done": True,
            }
            if _unloading(body.get("keep_alive")):
                payload["done_reason"] = "unload"
            return self._json_response(payload)
        script = self._next_script()

        async def produce(flight: Flight) -> web.StreamResponse:
            return await self._generate_answer(flight, script, body, model, prompt)

        return await self._inference(request, script, produce)

    async def _generate_answer(
        self, flight: Flight, script: Script, body: dict[str, Any], model: str, prompt: str
    ) -> web.StreamResponse:
        start_ns = time.perf_counter_ns()
        content = script.content if script.content is not None else "Echo: " + prompt
        content, cut = truncate_words(content, self._num_predict(body))
        reason = "length" if cut and script.finish_reason == "stop" else script.finish_reason
        system = body.get("system")
        system_words = count_words(system) if isinstance(system, str) else 0
        prompt_tokens = count_words(prompt) + system_words
        completion_tokens = count_words(content)
        raw = body.get("raw") is True

        def final(response: str) -> dict[str, Any]:
            obj: dict[str, Any] = {
                "model": model,
                "created_at": rfc3339_now(),
                "response": response,
                "done": True,
                "done_reason": reason,
            }
            if not raw:
                obj["context"] = list(range(1, prompt_tokens + completion_tokens + 1))
            obj.update(self._stats(script, start_ns, prompt_tokens, completion_tokens))
            return obj

        if not self._streaming(body):
            if script.malformed:
                return self._malformed_response(b'{"model": "x", "response": ', script)
            return self._json_response(final(content), script)

        frames: list[Frame] = [
            ndjson({"model": model, "created_at": rfc3339_now(), "response": p, "done": False})
            for p in split_chunks(content, script.chunks)
        ]
        tail: list[Frame] = [lambda: ndjson(final(""))]
        plan = StreamPlan([], frames, tail, NDJSON_GARBAGE, ndjson({"error": script.error_message}))
        return await self._stream(flight, script, plan, NDJSON_CONTENT_TYPE)

    # -- /api/embed ---------------------------------------------------------------------------

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        checked = await self._validated(request)
        if isinstance(checked, web.Response):
            return checked
        body, model = checked
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            inputs = [raw_input]
        elif isinstance(raw_input, list) and all(isinstance(i, str) for i in raw_input):
            inputs = list(raw_input)
        else:
            return self._error_response(400, "invalid input type", None)
        dims = body.get("dimensions")
        dim = dims if isinstance(dims, int) and dims > 0 else self.embedding_dim
        script = self._next_script()

        async def produce(flight: Flight) -> web.StreamResponse:
            start_ns = time.perf_counter_ns()
            if script.malformed:
                return self._malformed_response(b'{"model": "x", "embeddings": [[', script)
            payload: dict[str, Any] = {
                "model": model,
                "embeddings": [fake_embedding(text, dim) for text in inputs],
            }
            total = self._elapsed_ns(start_ns)
            payload["total_duration"] = total
            payload["load_duration"] = total // 20
            if script.usage:
                payload["prompt_eval_count"] = sum(count_words(t) for t in inputs)
            return self._json_response(payload, script)

        return await self._inference(request, script, produce)

    # -- /api/embeddings (legacy) -------------------------------------------------------------

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        checked = await self._validated(request)
        if isinstance(checked, web.Response):
            return checked
        body, _ = checked
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return self._error_response(400, "prompt must be a string", None)
        if not prompt:  # Ollama loads the model and answers an empty vector
            return self._json_response({"embedding": []})
        script = self._next_script()

        async def produce(flight: Flight) -> web.StreamResponse:
            if script.malformed:
                return self._malformed_response(b'{"embedding": [', script)
            return self._json_response(
                {"embedding": fake_embedding(prompt, self.embedding_dim)}, script
            )

        return await self._inference(request, script, produce)
