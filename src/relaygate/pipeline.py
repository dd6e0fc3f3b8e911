"""The request pipeline, top to bottom, for every inbound API.

    authenticate -> parse -> admit -> cache -> route -> call -> relay -> settle

:meth:`Pipeline.serve` runs one inference request through every stage, in
order. It knows no wire format: each inbound API (``api/``) hands it a
:class:`WireFormat` that parses the request into a :class:`Call` and renders
answers, stream events and errors in that API's shape. Routing and calling,
below, try deployments in the router's order, retrying on another one only
while nothing has reached the client, and apply each deployment's timeouts.

A format may also have :class:`Hooks` (``prepare``, ``completed``,
``stream_error``), looked up once when its route is built: an API that keeps
state between requests (the Responses API's stored conversations) uses them;
the others pay nothing.

With tracing on (observability/tracing.py), each stage is marked on the request's
trace and each upstream attempt is a span of its own; off, ``state.tracing`` is None
and nothing is made (``outcome.trace`` and ``call.trace`` stay None).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from relaygate.asgi import (
    ASGIApp,
    ClientGone,
    DisconnectWatch,
    Receive,
    Scope,
    Send,
    header,
    new_request_id,
    read_body,
    send_bytes,
)
from relaygate.auth.credentials import read_credential
from relaygate.cache.response import BYPASS
from relaygate.errors import (
    RateLimited,
    RelaygateError,
    ShuttingDown,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from relaygate.providers.base import Relayed
from relaygate.redact import scrub
from relaygate.usage.accounting import Served
from relaygate.vault.service import SERVER_HEADERS, Picked

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.cache.response import Hit, Plan
    from relaygate.limits.admission import Admitted
    from relaygate.observability.tracing import Attempt, RequestTrace
    from relaygate.routing.router import Deployment
    from relaygate.schema.requests import Call, Kind
    from relaygate.state import AppState
    from relaygate.usage.record import Status, UsageRecord

__all__ = [
    "Hooks",
    "Pipeline",
    "UpstreamStream",
    "WireFormat",
    "complete",
    "observe",
    "open_stream",
]

JSON = dict[str, Any]
Headers = tuple[tuple[bytes, bytes], ...]
_NOTHING_USED = {"prompt_tokens": 0, "completion_tokens": 0}
AUTO_MODEL = "auto"  # "serve me as my provider configuration says" (BYOK)
BYOK_LABEL = "byok"  # the metric label of requests served by a user's own provider


class WireFormat(Protocol):
    """An inbound API's wire format: how it reads a request and writes answers.

    The pipeline is given one per route. Chunks and bodies it is given are
    canonical (OpenAI-shaped); the model name in them is already the client's.
    A format that needs state across one request's events keeps it in
    ``call.wire``.
    """

    @property
    def name(self) -> str:
        """The API's name in metrics and usage records."""

    @property
    def json_type_required(self) -> bool:
        """Whether the request's Content-Type must say JSON."""

    @property
    def stream_headers(self) -> Headers:
        """The response headers of a stream (its content type first)."""

    def parse(self, kind: Kind, body: bytes, request_id: str) -> Call:
        """The request body as a canonical call; bad input raises InvalidRequest."""

    def render(self, call: Call, body: JSON, provider: str | None, cached: bool) -> bytes:
        """A complete answer's body."""

    def event(self, call: Call, chunk: JSON) -> bytes | None:
        """One relayed chunk as an event (None: nothing to send); may change ``chunk``."""

    def replayed(self, call: Call, chunk: JSON) -> bytes | None:
        """One chunk that is, or will be, cached, as an event; must not change it."""

    def end(self, call: Call, provider: str | None, cached: bool) -> bytes:
        """What closes a complete stream."""

    def error(self, error: RelaygateError) -> bytes:
        """An error answer's body, in this API's error shape."""

    def error_event(self, error: RelaygateError) -> bytes:
        """What closes a stream that failed after it started."""


@dataclass(frozen=True, slots=True)
class Hooks:
    """The optional part of a wire format, found once per route (``Hooks.of``).

    A format defines any of these methods, with these names, when it needs them:

    ``async prepare(call, principal)``
        After parsing, before the cache key and admission (it may change the
        prompt, e.g. with a stored conversation); may raise a RelaygateError.
    ``completed(call, principal)``
        Once a whole answer has been sent (live, streamed or from the cache);
        must not block: slow work goes to the background.
    ``stream_error(call, error) -> bytes``
        What closes a stream that failed after it started, when it depends on
        the events sent so far; else ``error_event(error)`` is used.
    ``async authenticate(scope) -> Principal``
        Who the request is, in place of the gateway's keys (a webhook whose caller
        cannot send a key proves a shared secret instead); may raise a RelaygateError.

    and these attributes:

    ``user_providers = True``
        A task endpoint: every request is served by the caller's own provider
        configuration when it has one (BYOK, seed 004), else by the server's default.
        Other routes do so only for model ``auto`` or with ``X-Relaygate-Provider``.
    ``relays_openai = True``
        ``render`` writes the canonical (OpenAI) body as it is: a complete answer
        from an OpenAI-compatible upstream is sent as the bytes it came as, only
        ``model`` replaced (``call.relay``; providers/base.py ``relayed``).
    """

    prepare: Callable[[Call, Principal], Awaitable[None]] | None = None
    completed: Callable[[Call, Principal], None] | None = None
    stream_error: Callable[[Call, RelaygateError], bytes] | None = None
    authenticate: Callable[[Scope], Awaitable[Principal]] | None = None
    user_providers: bool = False
    relays_openai: bool = False

    @classmethod
    def of(cls, fmt: WireFormat) -> Hooks:
        return cls(
            getattr(fmt, "prepare", None),
            getattr(fmt, "completed", None),
            getattr(fmt, "stream_error", None),
            getattr(fmt, "authenticate", None),
            bool(getattr(fmt, "user_providers", False)),
            bool(getattr(fmt, "relays_openai", False)),
        )


_NO_HOOKS = Hooks()


@dataclass(slots=True)
class _Outcome:
    """What the metrics record of one request."""

    started: float  # time.perf_counter() when the request arrived
    model: str = "unknown"  # a configured name: bounded, fit for a metric label
    status: int = 500
    error: RelaygateError | None = None  # what ended the request, when an error did
    answered: bool = False  # a response has started: nothing else can be sent
    ttfb: float | None = None  # streams: seconds from arrival to the first chunk sent
    admitted: bool = False  # authenticated: the request gets a usage record
    admission: Admitted | None = None  # past the limits: settled once its record is made
    hit: Hit | None = None  # answered from the cache
    trace: RequestTrace | None = None  # its spans, when tracing is on

    def failed(self, error: BaseException) -> None:
        """What ended the request, on its root span (when tracing is on)."""
        if self.trace is not None:
            self.trace.failed(error)


class Pipeline:
    """Every inference request's stages, bound to the app's state."""

    __slots__ = ("state",)

    def __init__(self, state: AppState) -> None:
        self.state = state

    def route(self, fmt: WireFormat, kind: Kind) -> ASGIApp:
        """The ASGI handler of one inference route: this pipeline, in ``fmt``."""
        hooks = Hooks.of(fmt)
        if hooks == _NO_HOOKS:
            return partial(self.serve, fmt, kind)
        return partial(self.serve, fmt, kind, hooks=hooks)

    async def serve(
        self,
        fmt: WireFormat,
        kind: Kind,
        scope: Scope,
        receive: Receive,
        send: Send,
        hooks: Hooks = _NO_HOOKS,
    ) -> None:
        """One request, start to end: every error answered in ``fmt``'s shape,
        metrics always, and exactly one usage record once it is authenticated."""
        state = self.state
        started = time.perf_counter()
        served = Served(new_request_id(), fmt.name, scope["path"])
        outcome = _Outcome(started)
        tracing = state.tracing  # None when off: no span
        if tracing is not None:
            outcome.trace = tracing.start(scope, fmt.name)
        state.metrics.started(fmt.name)
        try:
            await self._serve(fmt, kind, scope, receive, send, served, outcome, hooks)
        except RelaygateError as exc:
            outcome.status, outcome.error = exc.status, exc
            if isinstance(exc, RateLimited):
                state.metrics.ratelimited.labels(fmt.name).inc()
            outcome.failed(exc)
            await _send_error(send, fmt, exc, served.request_id)
        except ClientGone as exc:
            outcome.status = 499
            outcome.failed(exc)
        except asyncio.CancelledError:
            # Not the client leaving (that is absorbed below): the server stopping this
            # request, its drain time over. One not answered yet gets an answer now rather
            # than a cut connection (a started stream ends itself, in _relay).
            _uncancel()
            if not outcome.answered:
                error = ShuttingDown()
                outcome.status, outcome.error = error.status, error
                outcome.failed(error)
                await _send_error(send, fmt, error, served.request_id)
        except Exception as exc:
            state.log.exception("unexpected error serving request %s", served.request_id)
            outcome.failed(exc)
            await _send_error(send, fmt, _internal_error(served.request_id), served.request_id)
        finally:
            await self._end(fmt, served, outcome, time.perf_counter() - started)

    async def _end(
        self, fmt: WireFormat, served: Served, outcome: _Outcome, elapsed: float
    ) -> None:
        """settle: the record, then the limits at its figures, then the root span."""
        record = self._finished(fmt, served, outcome, elapsed)
        trace = outcome.trace
        if outcome.admission is not None and record is not None:
            if trace is not None:
                trace.stage("settle")
            await self._settle(outcome.admission, served, record)
        if trace is not None:
            trace.finish(outcome.status, served.provider, served.deployment, record)

    def _finished(
        self, fmt: WireFormat, served: Served, outcome: _Outcome, elapsed: float
    ) -> UsageRecord | None:
        """Metrics, the usage record and the access line of one request; its record."""
        state = self.state
        metrics = state.metrics
        ttfb = outcome.ttfb
        metrics.finished(outcome.model, fmt.name, outcome.status, elapsed, ttfb or elapsed)
        if ttfb is not None:
            metrics.first_token(outcome.model, fmt.name, ttfb)
        record = None
        if outcome.admitted:
            served.http_status, served.ttft = outcome.status, ttfb
            served.status = _usage_status(outcome.error)
            record = state.recorder.record(served)
            metrics.used(outcome.model, record.prompt_tokens, record.completion_tokens, record.cost)
        access = state.access_log  # None when off: no work
        if access is not None:
            access.served(served, outcome.model, outcome.status, elapsed, ttfb, record)
        return record

    async def _settle(self, admitted: Admitted, served: Served, record: UsageRecord) -> None:
        """Token and money reservations settled at the figures of the usage record: the
        upstream's usage, else the record's estimate (a request that failed is charged
        what it used, not its worst case), so a quota counts what the usage table says."""
        state = self.state
        if served.cached and not state.settings.usage.charge_cached_tokens:
            used: JSON = _NOTHING_USED
        else:
            reported = served.usage if served.usage and not record.tokens_estimated else {}
            used = {**reported, "prompt_tokens": record.prompt_tokens,
                    "completion_tokens": record.completion_tokens}  # fmt: skip
        try:
            await state.admission.settle(admitted, used, served.provider, served.deployment)
        except Exception:
            state.log.exception("settling the limits of request %s failed", served.request_id)

    async def _serve(
        self,
        fmt: WireFormat,
        kind: Kind,
        scope: Scope,
        receive: Receive,
        send: Send,
        served: Served,
        outcome: _Outcome,
        hooks: Hooks,
    ) -> None:
        """authenticate -> parse -> admit -> route/call/relay -> settle."""
        state = self.state
        trace = outcome.trace
        principal, call, size = await self._parse(fmt, kind, scope, receive, served, outcome, hooks)
        call.relay = hooks.relays_openai
        picked, chosen = self._choose(call, principal, scope, served, outcome, hooks)
        if hooks.prepare is not None:  # before the cache key and admission: may change the prompt
            await hooks.prepare(call, principal)
            served.body = call.body
        control = header(scope, b"cache-control")
        plan = state.cache.plan(
            kind, call.model, call.body, principal, control.decode("latin-1") if control else None
        )
        if picked is not None:
            plan = BYPASS  # one user's provider answers: never shared through the cache
        if trace is not None:
            trace.stage("admit")
        admitted = await state.admission.admit(
            principal,
            served.request_id,
            model=call.model,
            endpoint=scope["path"],
            body_size=size,
            max_output_tokens=call.max_output_tokens,
            own_key=picked is not None,
        )
        outcome.admission = admitted
        call.headers = admitted.headers + chosen if chosen else admitted.headers
        try:
            await self._run(fmt, call, plan, receive, send, outcome, hooks)
            if hooks.completed is not None and outcome.status == 200:
                hooks.completed(call, principal)
        finally:
            if plan.leader:  # failed or incomplete: identical requests go upstream themselves
                state.cache.release(plan, None)
            served.usage, served.relayed = call.usage, call.relayed
            if outcome.hit is not None:
                served.cached, served.provider = True, outcome.hit.entry.provider
            elif call.served_by is not None:
                served.provider, served.deployment = call.served_by

    def _choose(
        self,
        call: Call,
        principal: Principal,
        scope: Scope,
        served: Served,
        outcome: _Outcome,
        hooks: Hooks,
    ) -> tuple[Picked | None, list[tuple[bytes, bytes]]]:
        """route (the model, or the caller's own provider): raises NotFound for a model that
        does not exist. Returns the provider picked (BYOK) and the headers that say so."""
        picked: Picked | None = None
        chosen: list[tuple[bytes, bytes]] = []
        if hooks.user_providers or call.model == AUTO_MODEL or self._asks_provider(scope):
            picked, chosen = self._user_provider(call, principal, scope, hooks.user_providers)
        served.model, served.body = call.model, call.body
        if picked is None:
            outcome.model = self.state.router.get(call.model).name
        else:  # the caller's own key: billed to it, never the operator's money
            outcome.model = BYOK_LABEL
            served.billed_to = picked.key_owner
        if outcome.trace is not None:  # a model that exists: the root span is named after it
            outcome.trace.parsed(call, principal, served.request_id)
        return picked, chosen

    async def _parse(
        self,
        fmt: WireFormat,
        kind: Kind,
        scope: Scope,
        receive: Receive,
        served: Served,
        outcome: _Outcome,
        hooks: Hooks,
    ) -> tuple[Principal, Call, int]:
        """authenticate -> parse: who asks, what, and the body's size."""
        state = self.state
        trace = outcome.trace
        if trace is not None:
            trace.stage("authenticate")
        if hooks.authenticate is not None:
            principal = await hooks.authenticate(scope)
        else:
            principal = await state.auth.authenticate(scope)
        outcome.admitted = True  # from here on, the request gets a usage record
        served.key_id, served.tenant_id = principal.key_id, principal.tenant_id
        served.client_ip = state.auth.client_ip(scope)
        if trace is not None:
            trace.stage("parse")
        body = await read_body(
            scope, receive, state.max_body, json_type_required=fmt.json_type_required
        )
        call = fmt.parse(kind, body, served.request_id)
        call.credential = read_credential(scope)  # scrubbed from any upstream error text
        return principal, call, len(body)

    def _asks_provider(self, scope: Scope) -> bool:
        """Whether the request names a provider (only looked for when the vault is on)."""
        return self.state.vault.active and header(scope, b"x-relaygate-provider") is not None

    def _user_provider(
        self, call: Call, principal: Principal, scope: Scope, task: bool
    ) -> tuple[Picked | None, list[tuple[bytes, bytes]]]:
        """Seed 004's choice: the caller's own provider configuration, else the server's
        default model (for ``auto``: the first configured model, else ``mock``).
        Returns the choice and the response headers that say who served it."""
        state = self.state
        raw = header(scope, b"x-relaygate-provider") if state.vault.active else None
        wanted = raw.decode("latin-1").strip().lower() if raw is not None else None
        picked = None
        if state.vault.active and wanted != "server":
            picked = state.vault.pick(principal, wanted)
        if picked is None:
            if call.model == AUTO_MODEL and AUTO_MODEL not in state.router.models:
                call.model = next(iter(state.router.models), AUTO_MODEL)  # else a 404 below
                call.body["model"] = call.model
            return None, list(SERVER_HEADERS) if state.vault.active else []
        deployment = picked.deployment
        if task or call.model == AUTO_MODEL:  # the configuration's model
            call.model = deployment.upstream_model or call.model
        else:  # the model the client named, at the client's own provider
            deployment = dataclasses.replace(deployment, upstream_model=call.model)
        call.route = [deployment]
        call.body["model"] = call.model
        _apply_defaults(call, picked.config.config)
        return picked, picked.headers

    async def _run(
        self,
        fmt: WireFormat,
        call: Call,
        plan: Plan,
        receive: Receive,
        send: Send,
        outcome: _Outcome,
        hooks: Hooks,
    ) -> None:
        """Look up, or call and relay; the client leaving cancels the upstream call at once."""
        watch = DisconnectWatch(receive)
        trace = outcome.trace
        try:
            if trace is not None:
                trace.stage("cache lookup" if plan.used else None)
            hit = await self.state.cache.fetch(plan) if plan.used else None
            if trace is not None:
                trace.cache_result(hit is not None)
            call.headers += plan.headers()
            if hit is not None:
                outcome.hit = hit
                outcome.answered = True  # the replay is sent at once
                outcome.status = await _replay(fmt, call, hit, send)
                outcome.ttfb = None
            elif call.stream:
                await self._stream(fmt, call, plan, send, watch, hooks, outcome)
            else:
                outcome.status = await self._complete(fmt, call, plan, send, watch, outcome)
        except asyncio.CancelledError:
            if not watch.absorb():
                raise
            outcome.status = 499
        finally:
            watch.close()

    async def _complete(
        self,
        fmt: WireFormat,
        call: Call,
        plan: Plan,
        send: Send,
        watch: DisconnectWatch,
        outcome: _Outcome,
    ) -> int:
        answer, deployment = await complete(self.state, call)
        if isinstance(answer, Relayed):  # the upstream's bytes: already in the client's format
            call.usage, rendered = answer.usage, answer.raw
        else:
            usage = answer.get("usage")
            call.usage = usage if isinstance(usage, dict) else None
            rendered = fmt.render(call, answer, deployment.provider_name, False)
        outcome.answered, outcome.status = True, 200
        await send_bytes(send, 200, rendered, call.request_id, extra=call.headers)
        watch.close()
        if plan.store or plan.leader:
            body = answer.body() if isinstance(answer, Relayed) else answer
            if body.get("choices") or body.get("data"):
                cache = self.state.cache
                entry = cache.entry(plan, deployment.provider_name, call.usage, body=body)
                cache.release(plan, entry)
        return 200

    async def _stream(
        self,
        fmt: WireFormat,
        call: Call,
        plan: Plan,
        send: Send,
        watch: DisconnectWatch,
        hooks: Hooks,
        outcome: _Outcome,
    ) -> None:
        """Relay a stream; the client going away cancels the upstream call at once.
        What the client got (status, the error that ended it, TTFB) goes on ``outcome``
        as it happens, so a cancellation after the end cannot lose it."""
        upstream = await open_stream(self.state, call)
        try:
            await self._relay(fmt, upstream, call, plan, send, hooks, watch, outcome)
        finally:
            watch.close()
            await upstream.aclose()
            if upstream.attempt is not None:
                upstream.attempt.streamed(call.usage)

    async def _relay(
        self,
        fmt: WireFormat,
        upstream: UpstreamStream,
        call: Call,
        plan: Plan,
        send: Send,
        hooks: Hooks,
        watch: DisconnectWatch,
        outcome: _Outcome,
    ) -> None:
        """Relay the stream, one write per batch the upstream gave (a batch is what one
        network read brought, where the adapter can tell): nothing waits for more."""
        trace: RequestTrace | None = call.trace
        if trace is not None:
            trace.stage("relay")
        headers = [*fmt.stream_headers, (b"x-request-id", call.request_id.encode()), *call.headers]
        outcome.answered, outcome.status = True, 200
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        kept: list[JSON] | None = [] if plan.store or plan.leader else None
        batch = upstream.first
        events: list[bytes] = []  # rendered, not yet sent
        try:
            while batch is not None:
                _render(fmt, call, batch, kept, trace, events)
                if events:
                    body = events[0] if len(events) == 1 else b"".join(events)
                    events = []
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    if outcome.ttfb is None:
                        outcome.ttfb = time.perf_counter() - outcome.started
                batch = await upstream.next()
        except UpstreamError as exc:
            await _end_with_error(fmt, hooks, call, send, exc, outcome, events)
            return
        except asyncio.CancelledError:
            if watch.client_gone:
                raise
            _uncancel()  # the server stopping it (drain time over): end it cleanly
            await _end_with_error(fmt, hooks, call, send, ShuttingDown(), outcome, events)
            return
        except Exception as exc:
            self.state.log.exception("unexpected error relaying stream %s", call.request_id)
            error = _internal_error(call.request_id)
            await _end_with_error(fmt, hooks, call, send, error, outcome, events)
            outcome.failed(exc)  # on the span: what went wrong, not the answer it got
            return
        provider = upstream.deployment.provider_name
        last = fmt.end(call, provider, False)
        await send({"type": "http.response.body", "body": last, "more_body": False})
        if kept and _finished(kept):  # complete: a truncated stream is never stored
            cache = self.state.cache
            cache.release(plan, cache.entry(plan, provider, call.usage, chunks=kept))


async def _replay(fmt: WireFormat, call: Call, hit: Hit, send: Send) -> int:
    """A cached answer, in the form this request asked for."""
    entry = hit.entry
    call.usage = entry.usage
    if not call.stream:
        body = fmt.render(call, entry.response(), entry.provider, True)
        await send_bytes(send, 200, body, call.request_id, extra=call.headers)
        return 200
    events = [e for chunk in entry.stream_chunks() if (e := fmt.replayed(call, chunk))]
    events.append(fmt.end(call, entry.provider, True))
    headers = [*fmt.stream_headers, (b"x-request-id", call.request_id.encode()), *call.headers]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
    return 200


async def _send_error(send: Send, fmt: WireFormat, error: RelaygateError, request_id: str) -> None:
    """An error answer, in the API's error shape."""
    await send_bytes(send, error.status, fmt.error(error), request_id, extra=error.headers())


def _render(
    fmt: WireFormat,
    call: Call,
    batch: list[JSON],
    kept: list[JSON] | None,
    trace: RequestTrace | None,
    events: list[bytes],
) -> None:
    """A batch of upstream chunks as the client's events, added to ``events``."""
    for chunk in batch:
        if trace is not None:
            trace.chunk(chunk)
        observe(chunk, call, kept)
        data = fmt.event(call, chunk) if kept is None else fmt.replayed(call, chunk)
        if data:
            events.append(data)


async def _end_with_error(
    fmt: WireFormat,
    hooks: Hooks,
    call: Call,
    send: Send,
    error: RelaygateError,
    outcome: _Outcome,
    before: list[bytes],
) -> None:
    """A stream that already started ends with an error event and a clean close, after
    the events ``before`` it that were rendered but not yet sent."""
    outcome.status, outcome.error = error.status, error
    outcome.failed(error)
    if hooks.stream_error is not None:
        body = hooks.stream_error(call, error)
    else:
        body = fmt.error_event(error)
    if before:
        body = b"".join(before) + body
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _uncancel() -> None:
    """Take back the cancellation just caught, so the request can still answer and settle."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _usage_status(error: RelaygateError | None) -> Status | None:
    """The usage record's status when an error ended the request (None: from the HTTP
    status, as for an unexpected internal error)."""
    return None if error is None else error.usage_status


def observe(chunk: JSON, call: Call, kept: list[JSON] | None) -> None:
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


def _finished(chunks: list[JSON]) -> bool:
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


def _keep_text(chunk: JSON, call: Call) -> None:
    """Keep what was relayed, to estimate tokens if the stream ends without usage."""
    choices = chunk.get("choices")
    if choices:
        first = choices[0]
        delta = first.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else first.get("text")
        if isinstance(text, str) and text:
            call.relayed.append(text)


def _apply_defaults(call: Call, config: dict[str, Any]) -> None:
    """A provider configuration's temperature and max_tokens, where the request set none."""
    if call.kind == "embedding":
        return
    params: Any = call.params
    for name in ("temperature", "max_tokens"):
        value = config.get(name)
        if value is None or call.body.get(name) is not None:
            continue
        if name == "max_tokens" and call.body.get("max_completion_tokens") is not None:
            continue
        call.body[name] = value
        if hasattr(params, name) and getattr(params, name) is None:
            call.params = msgspec.structs.replace(params, **{name: value})
            params = call.params


def _internal_error(request_id: str) -> RelaygateError:
    return RelaygateError(f"Internal error; the gateway's log has details under {request_id}.")


async def complete(state: AppState, call: Call) -> tuple[JSON | Relayed, Deployment]:
    """Call the first deployment that answers; return its (OpenAI-shaped) body, or its
    bytes (``call.relay``), ``model`` the client's name either way."""
    last: UpstreamError | None = None
    trace: RequestTrace | None = call.trace
    for deployment in call.route or state.router.plan(call.model):
        provider = deployment.provider
        call.served_by = (deployment.provider_name, deployment.name)
        method = provider.embed if call.kind == "embedding" else provider.complete
        attempt = trace.attempt(deployment, call) if trace is not None else None
        started = time.monotonic()
        try:
            async with asyncio.timeout(deployment.timeouts.total):
                body = await method(deployment, call)
        except TimeoutError:
            last = _timed_out(deployment, "total", time.monotonic() - started)
        except UpstreamError as exc:
            last = exc
        except BaseException as exc:  # cancelled (the client left), or a bug
            if attempt is not None:
                attempt.failed(exc)
            raise
        else:
            if attempt is not None:
                attempt.answered(body if isinstance(body, dict) else body.as_sent())
            deployment.health.record_success()
            _served(call, deployment, time.monotonic() - started)
            if isinstance(body, dict):
                body["model"] = call.model
            return body, deployment
        if attempt is not None:
            attempt.failed(last)
        _record_failure(state, deployment, last, call)
        if not last.retryable:
            break
    assert last is not None
    raise last


async def open_stream(state: AppState, call: Call) -> UpstreamStream:
    """Start a stream on the first deployment that yields a first chunk.

    Until that chunk exists nothing has been sent to the client, so a failed
    deployment is replaced by the next one in the plan.
    """
    last: UpstreamError | None = None
    trace: RequestTrace | None = call.trace
    for deployment in call.route or state.router.plan(call.model):
        call.served_by = (deployment.provider_name, deployment.name)
        attempt = trace.attempt(deployment, call) if trace is not None else None
        started = time.monotonic()
        stream = UpstreamStream.of(deployment, call)
        try:
            first = await stream.next()
        except UpstreamError as exc:
            if attempt is not None:
                attempt.failed(exc)
            await stream.aclose()
            last = exc
            _record_failure(state, deployment, exc, call)
            if not exc.retryable:
                break
            continue
        except BaseException as exc:  # cancelled (the client left), or a bug
            if attempt is not None:
                attempt.failed(exc)
            raise
        deployment.health.record_success()
        _served(call, deployment, time.monotonic() - started)
        stream.first = first
        if attempt is not None:  # its span lasts as long as the stream
            attempt.started()
            stream.attempt = attempt
        return stream
    assert last is not None
    raise last


@dataclass(slots=True, eq=False)
class UpstreamStream:
    """An upstream stream with its deadlines: first byte, idle between reads, total.

    It gives batches of chunks: all that one network read brought when the adapter can
    tell (``stream_batches``, the OpenAI-compatible one), else one chunk at a time.
    """

    deployment: Deployment
    chunks: AsyncIterator[list[JSON]] | AsyncIterator[JSON]
    batched: bool = False  # ``chunks`` yields lists of chunks
    first: list[JSON] | None = None
    started: float = field(default_factory=time.monotonic)
    received: int = 0
    attempt: Attempt | None = None  # its CLIENT span, when tracing is on

    @classmethod
    def of(cls, deployment: Deployment, call: Call) -> UpstreamStream:
        """The deployment's stream for ``call``, in batches where its adapter has them."""
        provider = deployment.provider
        batches = getattr(provider, "stream_batches", None)
        if batches is not None:
            return cls(deployment, batches(deployment, call), batched=True)
        return cls(deployment, provider.stream(deployment, call))

    async def next(self) -> list[JSON] | None:
        """The next batch, None at the end; raises UpstreamError on failure or expiry."""
        t = self.deployment.timeouts
        now = time.monotonic()
        total_deadline = self.started + t.total
        wait = t.idle if self.received else t.first_byte
        phase = "idle" if self.received else "first_byte"
        if now + wait >= total_deadline:
            wait, phase = total_deadline - now, "total"
        try:
            async with asyncio.timeout(wait):
                got: Any = await anext(self.chunks)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise _timed_out(self.deployment, phase, wait) from None
        self.received += 1
        return got if self.batched else [got]

    async def aclose(self) -> None:
        """Release the upstream connection (cancels the upstream request if unfinished)."""
        close = getattr(self.chunks, "aclose", None)
        if close is not None:
            await close()


def _timed_out(deployment: Deployment, phase: str, seconds: float) -> UpstreamTimeout:
    what = {
        "first_byte": "waiting for the first chunk",
        "idle": "waiting for the next chunk",
        "total": "for the whole call",
        "connect": "connecting",
    }[phase]
    return UpstreamTimeout(
        f"Deployment {deployment.name!r} timed out {what} (after {seconds:.3g} s).",
        deployment=deployment.name,
        phase=phase,
    )


_LATENCY_ALPHA = 0.3


def _served(call: Call, deployment: Deployment, first_byte: float) -> None:
    """A deployment answered: its time to first byte joins its EWMA (the model router's
    ``fastest`` policy reads it), and the answer's ``x-relaygate-model`` header names the
    model that served it (a fallback's, or a virtual model's member)."""
    if deployment.latency is None:
        deployment.latency = first_byte
    else:
        deployment.latency += _LATENCY_ALPHA * (first_byte - deployment.latency)
    call.headers.append((b"x-relaygate-model", deployment.model.encode("latin-1", "replace")))


def _record_failure(
    state: AppState, deployment: Deployment, error: UpstreamError, call: Call
) -> None:
    """Health, metric and log of one failure: a bounded class, and text scrubbed again here
    (providers scrub what they quote; this is the last gate before health state and the log)."""
    retry_after = error.retry_after if isinstance(error, UpstreamStatusError) else None
    text = scrub(error.message, *deployment.known_secrets, call.credential)
    if error.retryable and error.counts_against_health:
        deployment.health.record_failure(time.monotonic(), text, retry_after, kind=error.kind)
    state.metrics.upstream_error(deployment.name, error.kind)
    state.log.warning("upstream failure (%s): %s", error.kind, text)
