"""OpenTelemetry traces of inference requests: opt-in (``tracing.enabled``), exported over
OTLP/HTTP, named and attributed by the GenAI semantic conventions.

One request is one trace (or the continuation of the caller's W3C ``traceparent``)::

    chat {model}                 SERVER  gen_ai.* request and response attributes, HTTP status
      authenticate               INTERNAL
      parse                      INTERNAL
      admit                      INTERNAL  limits and reservations
      cache lookup               INTERNAL  relaygate.cache.hit
      chat {upstream model}      CLIENT  one per deployment tried: gen_ai.provider.name,
                                         server.address, usage, finish reasons, error.type
      relay                      INTERNAL  streams: first chunk to last
      settle                     INTERNAL  reservations settled, usage recorded

The CLIENT span is the current context while its upstream HTTP request is sent, so the
``traceparent`` header the upstream sessions add (:meth:`Tracing.session_hooks`) names it.

Spans carry names, models, token counts and ids, never a key, a header's value, a prompt
or a completion; an error is recorded by its type, never its message (an upstream may
echo anything). When tracing is off nothing here is imported: the pipeline tests one
attribute (``state.tracing is None``) per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from relaygate import __version__
from relaygate.errors import UpstreamError

if TYPE_CHECKING:
    from relaygate.asgi import Scope
    from relaygate.auth.principal import Principal
    from relaygate.routing.router import Deployment
    from relaygate.schema.requests import Call
    from relaygate.settings import TracingConfig
    from relaygate.usage.record import UsageRecord

__all__ = ["Attempt", "RequestTrace", "Tracing"]

JSON = dict[str, Any]
_OPERATIONS = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}
# gen_ai.provider.name's well-known values, where relaygate's provider names differ
_PROVIDERS = {"gemini": "gcp.gemini", "mock": "relaygate.mock", "node": "relaygate.node"}
_PROPAGATOR = TraceContextTextMapPropagator()


class _AsgiHeaders(Getter[Sequence[tuple[bytes, bytes]]]):
    """Reads ``traceparent`` and ``tracestate`` from an ASGI scope's raw headers."""

    def get(self, carrier: Sequence[tuple[bytes, bytes]], key: str) -> list[str] | None:
        wanted = key.encode("latin-1")
        found = [v.decode("latin-1") for k, v in carrier if k.lower() == wanted]
        return found or None

    def keys(self, carrier: Sequence[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_GETTER = _AsgiHeaders()


class Tracing:
    """The gateway's tracer: one provider per process, its spans batched to the collector."""

    def __init__(self, config: TracingConfig, *, exporter: Any = None) -> None:
        resource = Resource(
            {"service.name": config.service_name or "relaygate", "service.version": __version__}
        )
        sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
        self.provider = TracerProvider(resource=resource, sampler=sampler)
        if exporter is None:
            exporter = OTLPSpanExporter(
                endpoint=config.traces_url, headers=dict(config.headers), timeout=config.timeout
            )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("relaygate", __version__)
        self._servers: dict[str, tuple[str | None, int | None]] = {}

    def start(self, scope: Scope, api: str) -> RequestTrace:
        """A request's root span, the caller's trace continued when it sent one."""
        return RequestTrace(self, scope, api)

    def session_hooks(self) -> list[aiohttp.TraceConfig]:
        """aiohttp hooks for upstream sessions: each request carries the current span
        as ``traceparent`` (and ``tracestate``)."""
        config = aiohttp.TraceConfig()
        config.on_request_start.append(_inject)
        return [config]

    def server(self, deployment: Deployment) -> tuple[str | None, int | None]:
        """``server.address`` and ``server.port`` of a deployment (never its credentials)."""
        base_url = getattr(deployment.provider, "base_url", None)
        if not isinstance(base_url, str):
            return None, None
        found = self._servers.get(base_url)
        if found is None:
            try:
                parts = urlsplit(base_url)
                found = (parts.hostname, parts.port)
            except ValueError:
                found = (None, None)
            self._servers[base_url] = found
        return found

    async def aclose(self) -> None:
        """Export what is left and stop (the exporter blocks: off the event loop)."""
        await asyncio.to_thread(self.provider.shutdown)


async def _inject(
    _session: aiohttp.ClientSession, _context: Any, params: aiohttp.TraceRequestStartParams
) -> None:
    _PROPAGATOR.inject(params.headers)


class RequestTrace:
    """The spans of one request: its root, one stage at a time, and upstream attempts."""

    __slots__ = (
        "_stage", "_stages", "_tracing", "context", "error", "finish_reasons", "response_model",
        "span",
    )  # fmt: skip

    def __init__(self, tracing: Tracing, scope: Scope, api: str) -> None:
        self._tracing = tracing
        parent = _PROPAGATOR.extract(scope["headers"], getter=_GETTER)
        method = scope.get("method", "POST")
        self.span: Span = tracing.tracer.start_span(
            f"{method} {scope['path']}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope["path"],
                "relaygate.api": api,
            },
        )
        self.context = trace.set_span_in_context(self.span, parent)
        self._stages: list[_Stage] = []
        self._stage: _Stage | None = None
        self.error: BaseException | None = None
        self.finish_reasons: list[str] = []
        self.response_model: str | None = None

    def stage(self, name: str | None) -> None:
        """End the current stage, and start ``name`` (None: no stage now). Only the times
        are taken here; the stages' spans are made once the answer is sent (``finish``),
        off the request's path, and only for a trace that is sampled."""
        now = time.time_ns()
        if self._stage is not None:
            self._stage.end = now
            self._stage = None
        if name is not None:
            self._stage = _Stage(name, now)
            self._stages.append(self._stage)

    def parsed(self, call: Call, principal: Principal, request_id: str) -> None:
        """The request is known: the root span is named ``{operation} {model}``."""
        call.trace = self
        operation = _OPERATIONS.get(call.kind, call.kind)
        span = self.span
        span.update_name(f"{operation} {call.model}")
        span.set_attributes(
            {
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": call.model,
                "relaygate.request_id": request_id,
                "relaygate.stream": call.stream,
            }
        )
        if principal.key_id:
            span.set_attribute("relaygate.key_id", principal.key_id)
        if principal.tenant_id:
            span.set_attribute("relaygate.tenant_id", principal.tenant_id)
        span.set_attributes(_request_attributes(call))

    def cache_result(self, hit: bool) -> None:
        if self._stage is not None:
            self._stage.hit = hit
        self.span.set_attribute("relaygate.cache.hit", hit)
        self.stage(None)

    def attempt(self, deployment: Deployment, call: Call) -> Attempt:
        """One upstream call, current until its first answer (so that it is propagated)."""
        self.stage(None)
        return Attempt(self, deployment, call)

    def chunk(self, chunk: JSON) -> None:
        """A relayed chunk, before it is renamed: the upstream's model and finish reasons."""
        if self.response_model is None:
            model = chunk.get("model")
            if isinstance(model, str):
                self.response_model = model
        for choice in chunk.get("choices") or ():
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if isinstance(reason, str):
                self.finish_reasons.append(reason)

    def answered(self, body: JSON) -> None:
        """A complete answer, before it is renamed."""
        self.chunk(body)

    def failed(self, error: BaseException) -> None:
        """What ended the request (or a stream after it started)."""
        self.error = error
        if self._stage is not None:
            self._stage.error = error

    def finish(
        self, status: int, provider: str | None, deployment: str | None, record: UsageRecord | None
    ) -> None:
        """The request is answered: its outcome on the root span, which ends."""
        self.stage(None)
        span = self.span
        if not span.is_recording():  # not sampled: nothing to add
            span.end()
            return
        self._stage_spans()
        span.set_attribute("http.response.status_code", status)
        if provider is not None:
            name = _PROVIDERS.get(provider, provider)
            span.set_attributes({"gen_ai.provider.name": name, "gen_ai.system": name})
        if deployment is not None:
            span.set_attribute("relaygate.deployment", deployment)
        if self.response_model is not None:
            span.set_attribute("gen_ai.response.model", self.response_model)
        if self.finish_reasons:
            span.set_attribute("gen_ai.response.finish_reasons", self.finish_reasons)
        if record is not None and status < 400:
            span.set_attributes(
                {
                    "gen_ai.usage.input_tokens": record.prompt_tokens,
                    "gen_ai.usage.output_tokens": record.completion_tokens,
                    "relaygate.usage.estimated": record.tokens_estimated,
                    "relaygate.cost_usd": record.cost,
                }
            )
        if self.error is not None:
            _set_error(span, self.error, failed=status >= 500)
        elif status >= 400:
            span.set_attribute("error.type", str(status))
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, str(status)))
        span.end()

    def _stage_spans(self) -> None:
        tracer, context = self._tracing.tracer, self.context
        for stage in self._stages:
            span = tracer.start_span(stage.name, context=context, start_time=stage.start)
            if stage.hit is not None:
                span.set_attribute("relaygate.cache.hit", stage.hit)
            if stage.error is not None:
                _set_error(span, stage.error)
            span.end(end_time=stage.end or stage.start)


@dataclass(slots=True)
class _Stage:
    """One stage's times (``time.time_ns()``) and outcome, until its span is made."""

    name: str
    start: int
    end: int = 0
    hit: bool | None = None
    error: BaseException | None = None


class Attempt:
    """One upstream call's CLIENT span; its context is attached while the call starts."""

    __slots__ = ("_token", "_trace", "span")

    def __init__(self, request: RequestTrace, deployment: Deployment, call: Call) -> None:
        self._trace = request
        operation = _OPERATIONS.get(call.kind, call.kind)
        provider = _PROVIDERS.get(deployment.provider_name, deployment.provider_name)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,
            "gen_ai.request.model": deployment.upstream_model,
            "relaygate.deployment": deployment.name,
        }
        address, port = request._tracing.server(deployment)
        if address:
            attributes["server.address"] = address
        if port:
            attributes["server.port"] = port
        attributes.update(_request_attributes(call))
        self.span: Span = request._tracing.tracer.start_span(
            f"{operation} {deployment.upstream_model}",
            context=request.context,
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        self._token: object | None = otel_context.attach(
            trace.set_span_in_context(self.span, request.context)
        )

    def started(self) -> None:
        """The call has its first answer: it is no longer the current context."""
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None

    def answered(self, body: JSON) -> None:
        """A complete answer (before it is renamed): the span ends."""
        self.started()
        self._trace.answered(body)
        model = body.get("model")
        if isinstance(model, str):
            self.span.set_attribute("gen_ai.response.model", model)
        response_id = body.get("id")
        if isinstance(response_id, str):
            self.span.set_attribute("gen_ai.response.id", response_id[:128])
        self._end(body.get("usage"), self._trace.finish_reasons)

    def streamed(self, usage: Any) -> None:
        """A stream ended (whole, cut short or failed): the relay stage ends, then the span."""
        self.started()
        request = self._trace
        request.stage(None)
        if request.response_model is not None:
            self.span.set_attribute("gen_ai.response.model", request.response_model)
        if request.error is not None:
            _set_error(self.span, request.error)
        self._end(usage, request.finish_reasons)

    def failed(self, error: BaseException) -> None:
        """The call failed before any answer: the span ends with the error's type."""
        self.started()
        _set_error(self.span, error)
        self.span.end()

    def _end(self, usage: Any, reasons: Iterable[str]) -> None:
        span = self.span
        if isinstance(usage, Mapping):
            for key, name in (
                ("prompt_tokens", "gen_ai.usage.input_tokens"),
                ("completion_tokens", "gen_ai.usage.output_tokens"),
            ):
                value = usage.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    span.set_attribute(name, value)
        reasons = list(reasons)
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", reasons)
        span.end()


def _request_attributes(call: Call) -> dict[str, Any]:
    """The request's sampling parameters (numbers only: never its content)."""
    found: dict[str, Any] = {}
    params = call.params
    for field, name in (
        ("max_tokens", "gen_ai.request.max_tokens"),
        ("temperature", "gen_ai.request.temperature"),
        ("top_p", "gen_ai.request.top_p"),
    ):
        value = getattr(params, field, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found[name] = value
    return found


def _set_error(span: Span, error: BaseException, *, failed: bool = True) -> None:
    """An error by its type: a bounded name, never its message (which may quote anyone).
    ``failed=False`` for a server span answered 4xx (or left by its client, 499): the
    client's doing, not the span's failure (HTTP conventions)."""
    kind = error.kind if isinstance(error, UpstreamError) else type(error).__name__
    span.set_attribute("error.type", kind)
    if failed:
        span.set_status(Status(StatusCode.ERROR, kind))
