"""An OpenTelemetry collector's OTLP/HTTP traces endpoint, in process: it decodes each
export with the official protobuf definitions (``opentelemetry-proto``) and keeps the raw
bytes too, so that a test can search everything the gateway sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from tests.fakes.local_app import LocalApp

KINDS = {
    SpanProto.SPAN_KIND_INTERNAL: "internal",
    SpanProto.SPAN_KIND_SERVER: "server",
    SpanProto.SPAN_KIND_CLIENT: "client",
}


@dataclass
class Span:
    """One exported span, flattened: ids as hex, attributes as Python values."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    status: str  # "unset", "ok", "error"
    start: int
    end: int
    resource: dict[str, Any] = field(default_factory=dict)


def value_of(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if which is None:
        return None
    return getattr(value, which)


class OtlpCollector(LocalApp):
    """``POST /v1/traces`` (protobuf), on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__()
        self.exports: list[bytes] = []  # every request body, as received
        self.headers: list[dict[str, str]] = []  # lower-case keys
        self.spans: list[Span] = []

    @property
    def endpoint(self) -> str:
        """The base URL (spans go to ``/v1/traces`` under it)."""
        return self.base_url

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/traces", self._traces)

    async def _traces(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415)
        body = await request.read()
        self.exports.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(_flat(span, resource))
        answer = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]


def _flat(span: SpanProto, resource: dict[str, Any]) -> Span:
    status = {0: "unset", 1: "ok", 2: "error"}[span.status.code]
    return Span(
        name=span.name,
        kind=KINDS.get(span.kind, str(span.kind)),
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=span.parent_span_id.hex(),
        attributes={a.key: value_of(a.value) for a in span.attributes},
        status=status,
        start=span.start_time_unix_nano,
        end=span.end_time_unix_nano,
        resource=resource,
    )
