"""The inbound OpenAI-compatible API: /v1/chat/completions, /v1/completions,
/v1/embeddings, /v1/models.

Parses the wire body into a :class:`Call`, runs it through the pipeline and
renders the result as JSON or as server-sent events. Every error has OpenAI's
shape. A stream is relayed chunk by chunk as it arrives, ends with
``data: [DONE]``, and is cancelled upstream the moment the client goes away.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from relaygate import pipeline
from relaygate.api.http import (
    ClientGone,
    DisconnectWatch,
    Receive,
    Scope,
    Send,
    decode_json_object,
    error_body,
    header,
    new_request_id,
    read_body,
    send_bytes,
    send_error,
)
from relaygate.api.shapes import error_renderer_for, internal_error
from relaygate.cache.response import Hit, Plan
from relaygate.errors import (
    InvalidRequest,
    ModelNotFound,
    NoHealthyDeployment,
    RateLimited,
    RelaygateError,
    UpstreamError,
)
from relaygate.schema.requests import (
    Call,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    Kind,
    content_parts_error,
    embedding_inputs,
)
from relaygate.usage.accounting import Served

if TYPE_CHECKING:
    from relaygate.state import AppState

__all__ = ["OpenAIAPI", "observe"]

API = "openai"
_encode = msgspec.json.encode
_SCHEMAS: dict[Kind, type[ChatRequest | CompletionRequest | EmbeddingRequest]] = {
    "chat": ChatRequest,
    "completion": CompletionRequest,
    "embedding": EmbeddingRequest,
}
_SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)
_DONE = b"data: [DONE]\n\n"
_NOTHING_USED = {"prompt_tokens": 0, "completion_tokens": 0}


@dataclass(slots=True)
class _Outcome:
    """What the metrics record of one request."""

    model: str = "unknown"  # a configured name: bounded, fit for a metric label
    status: int = 500
    ttfb: float | None = None
    admitted: bool = False  # authenticated: the request gets a usage record
    hit: Hit | None = None  # answered from the cache


class OpenAIAPI:
    """Handlers for the OpenAI-compatible routes, bound to the app's state.

    The pipeline (authenticate, parse, admit, cache, call, relay, settle) lives
    here once; an API with another wire format (the seed endpoints in
    api/seed.py) overrides the hooks ``parse``, ``render``, ``event``,
    ``replayed`` and ``end``.
    """

    api = API
    json_type_required = True  # Content-Type must say JSON (Ollama's API does not ask it)
    stream_headers: tuple[tuple[bytes, bytes], ...] = _SSE_HEADERS

    def __init__(self, state: AppState) -> None:
        self.state = state

    # -- the wire format: hooks ------------------------------------------------

    def parse(self, kind: Kind, body: bytes, request_id: str) -> Call:
        return _parse(kind, body, request_id)

    def render(self, call: Call, body: dict[str, Any], provider: str | None, cached: bool) -> bytes:
        """A complete answer's body."""
        return _encode(body)

    def event(
        self, call: Call, chunk: dict[str, Any], kept: list[dict[str, Any]] | None
    ) -> bytes | None:
        """One relayed chunk (``kept``, when given, receives it whole, for the cache)."""
        return _sse(chunk, call, kept)

    def replayed(self, call: Call, chunk: dict[str, Any]) -> bytes | None:
        """One cached chunk, which must not be changed."""
        return _replayed(chunk, call)

    def end(self, call: Call, provider: str | None, cached: bool) -> bytes:
        """What closes a complete stream."""
        return _DONE

    def error_event(self, error: RelaygateError) -> bytes:
        """What closes a stream that failed after it started."""
        return b"data: " + error_body(error) + b"\n\n"

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inference("chat", scope, receive, send)

    async def completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inference("completion", scope, receive, send)

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inference("embedding", scope, receive, send)

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._model_listing(scope, send, None)

    async def model(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._model_listing(scope, send, scope["path"][len("/v1/models/") :])

    async def _model_listing(self, scope: Scope, send: Send, name: str | None) -> None:
        """GET /v1/models (``name`` None) or /v1/models/{name}: pre-rendered at start."""
        request_id = new_request_id()
        try:
            await self.state.auth.authenticate(scope)
            if name is None:
                body = self.state.models_json
            elif (entry := self.state.model_entries.get(name)) is not None:
                body = entry
            else:
                raise ModelNotFound(name)
        except RelaygateError as exc:
            await send_error(send, exc, request_id, error_renderer_for(scope["path"]))
            return
        await send_bytes(send, 200, body, request_id)

    async def _inference(self, kind: Kind, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        started = time.perf_counter()
        served = Served(new_request_id(), self.api, scope["path"])
        outcome = _Outcome()
        state.metrics.started(self.api)
        try:
            await self._serve(kind, scope, receive, send, served, outcome)
        except RelaygateError as exc:
            outcome.status = exc.status
            served.rejected = not isinstance(exc, UpstreamError | NoHealthyDeployment)
            if isinstance(exc, RateLimited):
                state.metrics.ratelimited.labels(self.api).inc()
            await send_error(send, exc, served.request_id, error_renderer_for(scope["path"]))
        except ClientGone:
            outcome.status = 499
        except Exception:
            state.log.exception("unexpected error serving request %s", served.request_id)
            error = internal_error(served.request_id)
            await send_error(send, error, served.request_id, error_renderer_for(scope["path"]))
        finally:
            elapsed = time.perf_counter() - started
            ttfb = outcome.ttfb or elapsed
            state.metrics.finished(outcome.model, self.api, outcome.status, elapsed, ttfb)
            if outcome.admitted:
                served.http_status, served.ttft = outcome.status, outcome.ttfb
                state.recorder.record(served)

    async def _serve(
        self,
        kind: Kind,
        scope: Scope,
        receive: Receive,
        send: Send,
        served: Served,
        outcome: _Outcome,
    ) -> None:
        """authenticate -> parse -> admit -> route/call/relay -> settle."""
        state = self.state
        principal = await state.auth.authenticate(scope)
        outcome.admitted = True  # from here on, the request gets a usage record
        served.key_id, served.tenant_id = principal.key_id, principal.tenant_id
        served.client_ip = state.auth.client_ip(scope)
        body = await read_body(
            scope, receive, state.max_body, json_type_required=self.json_type_required
        )
        call = self.parse(kind, body, served.request_id)
        served.model, served.body = call.model, call.body
        outcome.model = state.router.get(call.model).name
        control = header(scope, b"cache-control")
        plan = state.cache.plan(
            kind, call.model, call.body, principal, control.decode("latin-1") if control else None
        )
        admitted = await state.admission.admit(
            principal,
            served.request_id,
            model=call.model,
            endpoint=scope["path"],
            body_size=len(body),
            max_output_tokens=call.max_output_tokens,
        )
        call.headers = admitted.headers
        try:
            await self._run(call, plan, receive, send, outcome)
        finally:
            if plan.leader:  # failed or incomplete: identical requests go upstream themselves
                state.cache.release(plan, None)
            served.usage, served.relayed = call.usage, call.relayed
            charged = call.usage
            if outcome.hit is not None:
                served.cached, served.provider = True, outcome.hit.entry.provider
                if not state.settings.usage.charge_cached_tokens:
                    charged = _NOTHING_USED
            elif call.served_by is not None:
                served.provider, served.deployment = call.served_by
            await state.admission.settle(admitted, charged, served.provider)

    async def _run(
        self, call: Call, plan: Plan, receive: Receive, send: Send, outcome: _Outcome
    ) -> None:
        """Look up, or call and relay; the client leaving cancels the upstream call at once."""
        watch = DisconnectWatch(receive)
        try:
            hit = await self.state.cache.fetch(plan) if plan.used else None
            call.headers += plan.headers()
            if hit is not None:
                outcome.hit = hit
                outcome.status = await self._replay(call, hit, send)
                outcome.ttfb = None
            elif call.stream:
                outcome.status, outcome.ttfb = await self._stream(call, plan, send, watch)
            else:
                outcome.status = await self._complete(call, plan, send, watch)
        except asyncio.CancelledError:
            if not watch.absorb():
                raise
            outcome.status = 499
        finally:
            watch.close()

    async def _replay(self, call: Call, hit: Hit, send: Send) -> int:
        """A cached answer, in the form this request asked for."""
        entry = hit.entry
        call.usage = entry.usage
        if not call.stream:
            body = self.render(call, entry.response(), entry.provider, True)
            await send_bytes(send, 200, body, call.request_id, extra=call.headers)
            return 200
        events = [e for chunk in entry.stream_chunks() if (e := self.replayed(call, chunk))]
        events.append(self.end(call, entry.provider, True))
        headers = [*self.stream_headers, (b"x-request-id", call.request_id.encode()), *call.headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
        return 200

    async def _complete(self, call: Call, plan: Plan, send: Send, watch: DisconnectWatch) -> int:
        body, deployment = await pipeline.complete(self.state, call)
        usage = body.get("usage")
        call.usage = usage if isinstance(usage, dict) else None
        rendered = self.render(call, body, deployment.provider_name, False)
        await send_bytes(send, 200, rendered, call.request_id, extra=call.headers)
        watch.close()
        if (plan.store or plan.leader) and (body.get("choices") or body.get("data")):
            cache = self.state.cache
            cache.release(plan, cache.entry(plan, deployment.provider_name, call.usage, body=body))
        return 200

    async def _stream(
        self, call: Call, plan: Plan, send: Send, watch: DisconnectWatch
    ) -> tuple[int, float | None]:
        """Relay a stream; the client going away cancels the upstream call at once."""
        upstream = await pipeline.open_stream(self.state, call)
        try:
            return await self._relay(upstream, call, plan, send)
        finally:
            watch.close()
            await upstream.aclose()

    async def _relay(
        self, upstream: pipeline.UpstreamStream, call: Call, plan: Plan, send: Send
    ) -> tuple[int, float | None]:
        started = time.perf_counter()
        headers = [*self.stream_headers, (b"x-request-id", call.request_id.encode()), *call.headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        ttfb: float | None = None
        kept: list[dict[str, Any]] | None = [] if plan.store or plan.leader else None
        chunk = upstream.first
        try:
            while chunk is not None:
                data = self.event(call, chunk, kept)
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    if ttfb is None:
                        ttfb = time.perf_counter() - started
                chunk = await upstream.next()
        except UpstreamError as exc:
            return await self._end_with_error(send, exc), ttfb
        except Exception:
            self.state.log.exception("unexpected error relaying stream %s", call.request_id)
            return await self._end_with_error(send, internal_error(call.request_id)), ttfb
        provider = upstream.deployment.provider_name
        last = self.end(call, provider, False)
        await send({"type": "http.response.body", "body": last, "more_body": False})
        if kept and _finished(kept):  # complete: a truncated stream is never stored
            cache = self.state.cache
            cache.release(plan, cache.entry(plan, provider, call.usage, chunks=kept))
        return 200, ttfb

    async def _end_with_error(self, send: Send, error: RelaygateError) -> int:
        """A stream that already started ends with an error event and a clean close."""
        body = self.error_event(error)
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return error.status


def observe(chunk: dict[str, Any], call: Call, kept: list[dict[str, Any]] | None) -> None:
    """Every relayed chunk: the client's model name, usage (or the text, to estimate it),
    and the chunk kept whole (usage included) when the cache will store the stream."""
    chunk["model"] = call.model
    usage = chunk.get("usage")
    if usage:
        call.usage = usage
    elif call.usage is None:
        _keep_text(chunk, call)
    if kept is not None:
        kept.append(chunk)


def _sse(chunk: dict[str, Any], call: Call, kept: list[dict[str, Any]] | None) -> bytes | None:
    """One SSE event; the usage chunk is dropped unless the client asked for it."""
    observe(chunk, call, kept)
    if kept is not None:
        return _replayed(chunk, call)
    if not call.include_usage:
        if not chunk.get("choices") and "usage" in chunk:
            return None
        chunk.pop("usage", None)
    return b"data: " + _encode(chunk) + b"\n\n"


def _replayed(chunk: dict[str, Any], call: Call) -> bytes | None:
    """One SSE event from a chunk that must stay as it is (it is, or will be, cached)."""
    if not call.include_usage and "usage" in chunk:
        if not chunk.get("choices"):
            return None
        chunk = {k: v for k, v in chunk.items() if k != "usage"}
    return b"data: " + _encode(chunk) + b"\n\n"


def _finished(chunks: list[dict[str, Any]]) -> bool:
    """Whether every choice of a stream reached a finish_reason (else it was cut short)."""
    started: set[int] = set()
    finished: set[int] = set()
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            started.add(index)
            if choice.get("finish_reason") is not None:
                finished.add(index)
    return bool(started) and started == finished


def _keep_text(chunk: dict[str, Any], call: Call) -> None:
    """Keep what was relayed, to estimate tokens if the stream ends without usage."""
    choices = chunk.get("choices")
    if choices:
        first = choices[0]
        delta = first.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else first.get("text")
        if isinstance(text, str) and text:
            call.relayed.append(text)


def _parse(kind: Kind, body: bytes, request_id: str) -> Call:
    data = decode_json_object(body)
    try:
        params = msgspec.convert(data, _SCHEMAS[kind])
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from None
    if isinstance(params, ChatRequest) and (wrong := content_parts_error(params)) is not None:
        raise _invalid(str(wrong))
    stream = bool(getattr(params, "stream", False))
    if isinstance(params, EmbeddingRequest) and not _valid_embedding_input(params):
        raise InvalidRequest(
            "input must be a string, an array of strings, or token arrays.", param="input"
        )
    return Call(kind, params.model, data, params, stream, request_id)


def _valid_embedding_input(params: EmbeddingRequest) -> bool:
    """Strings, or token arrays: a list of ints, or a list of lists of ints."""
    if embedding_inputs(params) is not None:
        return True
    items = params.input
    return all(isinstance(i, int) for i in items) or all(
        isinstance(i, list) and all(isinstance(t, int) for t in i) for i in items
    )


def _invalid(message: str) -> InvalidRequest:
    """msgspec's ``Expected `int`, got `str` - at `$.max_tokens``` as a 400 naming the field."""
    text, _, where = message.partition(" - at `")
    param = where.rstrip("`").removeprefix("$.").removeprefix("$") or None
    if param is None and "missing required field" in text:
        param = text.rsplit("`", 2)[-2] if text.count("`") >= 2 else None
    detail = f"Invalid value for {param!r}: {text}." if param else f"Invalid request: {text}."
    return InvalidRequest(detail, param=param)
