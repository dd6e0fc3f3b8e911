"""Every error relaygate raises, each knowing its HTTP status and error type.

Errors are raised as typed exceptions and rendered once, by the inbound API the
request arrived in (OpenAI shape under /v1). Library exceptions (aiohttp,
msgspec, asyncio timeouts) are translated at one boundary each, never leaked.

    RelaygateError
    ├── ClientError                  4xx: the request is wrong; never retried
    │   ├── InvalidRequest           400 (names the field in ``param``)
    │   ├── NotFound                 404
    │   │   └── ModelNotFound        404 (says how to list models)
    │   ├── MethodNotAllowed         405
    │   ├── RequestTimeout           408 (headers or body too slow to arrive)
    │   ├── PayloadTooLarge          413
    │   ├── HeadersTooLarge          431
    │   └── UnsupportedMediaType     415
    ├── UpstreamError                the deployment failed; may be retried before the first byte
    │   ├── UpstreamConnectError     503 when nothing could be reached
    │   ├── UpstreamTimeout          504
    │   ├── UpstreamStatusError      502, or the upstream's 4xx when it rejected the request
    │   ├── UpstreamProtocolError    502 (malformed body, connection cut mid-response)
    │   └── NodeBusy                 503 (a pool node's queue is full; not a health failure)
    ├── ShuttingDown                 503 (the drain time ran out before the answer was done)
    ├── AuthenticationError          401 (one message: never says which keys exist)
    ├── PermissionDenied             403
    ├── RateLimited                  429 (names the limit and when it resets)
    ├── LimiterUnavailable           503 (limit store down and fail_closed set)
    ├── StoreUnavailable             503 (the database cannot answer a needed read)
    ├── NoHealthyDeployment          503
    ├── TooManyConnections           503 (the worker's connection cap; Retry-After: 1)
    ├── Overloaded                   503 (the worker's in-flight cap; Retry-After: 1)
    └── ConfigError                  not an HTTP error: ``serve`` exits with code 2

Each class also knows the ``status`` its request's usage record gets (``usage_status``):
``rejected`` when the gateway refused the request, ``upstream_error`` or ``timeout`` when
the deployment failed, ``interrupted`` when the gateway stopped it while shutting down.
"""

from __future__ import annotations

from relaygate.usage.record import Status

__all__ = [
    "AuthenticationError",
    "ClientError",
    "ConfigError",
    "Conflict",
    "HeadersTooLarge",
    "InvalidRequest",
    "LimiterUnavailable",
    "MethodNotAllowed",
    "ModelNotFound",
    "NoHealthyDeployment",
    "NodeBusy",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "RelaygateError",
    "RequestTimeout",
    "ShuttingDown",
    "StoreUnavailable",
    "TooManyConnections",
    "Unavailable",
    "UnsupportedMediaType",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeout",
]


class RelaygateError(Exception):
    """Base of every error relaygate renders to a client."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None
    # the usage record's status; None: read from the HTTP status (an internal error's 500)
    usage_status: Status | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Extra response headers this error calls for (e.g. Retry-After)."""
        return []


class ClientError(RelaygateError):
    """The client sent something wrong; retrying the same request cannot help."""

    status = 400
    type = "invalid_request_error"
    usage_status: Status | None = "rejected"


class InvalidRequest(ClientError):
    status = 400


class NotFound(ClientError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model {model!r} does not exist on this gateway. "
            "List the models it serves with GET /v1/models.",
            param="model",
        )


class MethodNotAllowed(ClientError):
    """405; ``allow`` (the path's methods) is sent back in the ``Allow`` header."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"allow", ", ".join(self.allow).encode())] if self.allow else []


class Conflict(ClientError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ClientError):
    status = 413
    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body is larger than the limit of {limit} bytes.")

    def headers(self) -> list[tuple[bytes, bytes]]:
        # The rest of the body is never read: the connection closes after the answer.
        return [(b"connection", b"close")]


class HeadersTooLarge(ClientError):
    status = 431
    code = "request_headers_too_large"


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class UnsupportedMediaType(ClientError):
    status = 415
    code = "unsupported_media_type"


class UpstreamError(RelaygateError):
    """A deployment failed to answer. ``retryable`` errors may be tried elsewhere."""

    status = 502
    type = "upstream_error"
    usage_status: Status | None = "upstream_error"
    retryable = True
    counts_against_health = True  # a failure of the deployment (else: it was only busy)

    def __init__(self, message: str, *, deployment: str = "") -> None:
        super().__init__(message)
        self.deployment = deployment

    @property
    def kind(self) -> str:
        """A short, bounded label for metrics."""
        return "error"


class UpstreamConnectError(UpstreamError):
    status = 503
    code = "upstream_unreachable"

    @property
    def kind(self) -> str:
        return "connect"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"
    usage_status: Status | None = "timeout"

    def __init__(self, message: str, *, deployment: str = "", phase: str = "total") -> None:
        super().__init__(message, deployment=deployment)
        self.phase = phase

    @property
    def kind(self) -> str:
        return f"timeout_{self.phase}"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status.

    5xx and 429 are retryable; a 400/413/422 means the upstream rejected the
    request itself, which is passed on to the client as a 4xx.
    """

    code = "upstream_status"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int,
        deployment: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, deployment=deployment)
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.retryable = upstream_status >= 500 or upstream_status == 429
        if upstream_status == 429:
            self.status, self.type, self.code = 429, "rate_limit_error", "upstream_rate_limited"
        elif upstream_status in (400, 413, 422):
            self.status, self.type = (
                (413 if upstream_status == 413 else 400),
                "invalid_request_error",
            )
            self.code = "upstream_rejected_request"
            self.usage_status = "rejected"  # the request itself was refused, as the gateway would

    @property
    def kind(self) -> str:
        return f"status_{self.upstream_status // 100}xx" if self.upstream_status != 429 else "429"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [] if self.retry_after is None else _retry_after(self.retry_after)


class UpstreamProtocolError(UpstreamError):
    code = "upstream_bad_response"

    @property
    def kind(self) -> str:
        return "protocol"


class NodeBusy(UpstreamError):
    """Every slot and queue place of a pool node is taken (or the wait ran out): another
    node is tried; when none is left the client gets a 503 with Retry-After at once."""

    status = 503
    type = "service_unavailable"
    code = "node_queue_full"
    counts_against_health = False

    def __init__(self, message: str, *, deployment: str = "", retry_after: float = 1.0) -> None:
        super().__init__(message, deployment=deployment)
        self.retry_after = retry_after

    @property
    def kind(self) -> str:
        return "busy"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return _retry_after(self.retry_after)


class AuthenticationError(ClientError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "Missing or invalid credentials. Send an API key as 'Authorization: Bearer "
            "<key>' or 'X-API-Key: <key>'."
        )

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"www-authenticate", b'Bearer realm="relaygate"')]


class PermissionDenied(ClientError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class RateLimited(ClientError):
    """A limit was hit: the body names it and when it resets, headers say the same."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, retry_after: float, rate_headers: list[tuple[bytes, bytes]]
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_headers = rate_headers

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*_retry_after(self.retry_after), *self.rate_headers]


class LimiterUnavailable(RelaygateError):
    status = 503
    type = "service_unavailable"
    code = "limits_unavailable"
    usage_status: Status | None = "rejected"


class StoreUnavailable(RelaygateError):
    status = 503
    type = "service_unavailable"
    code = "store_unavailable"
    usage_status: Status | None = "rejected"


class NoHealthyDeployment(RelaygateError):
    status = 503
    type = "service_unavailable"
    code = "no_healthy_deployment"
    usage_status: Status | None = "upstream_error"

    def __init__(self, model: str, retry_in: float, why: str | None = None) -> None:
        why = why or "every deployment failed recently and is cooling down"
        super().__init__(
            f"No healthy deployment for model {model!r}: {why}; "
            f"retry in {max(1, round(retry_in))} s."
        )
        self.retry_in = retry_in

    def headers(self) -> list[tuple[bytes, bytes]]:
        return _retry_after(self.retry_in)


class Unavailable(RelaygateError):
    """503: this process cannot take the request now; another (or this one, a second
    later) can: ``Retry-After: 1``."""

    status = 503
    type = "service_unavailable"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


class ShuttingDown(Unavailable):
    """The gateway is stopping and ``graceful_shutdown_seconds`` ran out before this request
    was done: a stream that started ends with this as its error event, a request not yet
    answered gets it as a 503. Another replica (or this one, restarted) can serve a retry."""

    code = "shutting_down"
    usage_status: Status | None = "interrupted"

    def __init__(self) -> None:
        super().__init__(
            "The gateway is shutting down and its drain time ran out before this answer "
            "was complete; retry the request."
        )


class TooManyConnections(Unavailable):
    code = "too_many_connections"


class Overloaded(Unavailable):
    """The worker serves ``http.max_in_flight`` requests already: shed, retry shortly."""

    code = "overloaded"


def _retry_after(seconds: float) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", str(max(1, round(seconds))).encode())]


class ConfigError(Exception):
    """The configuration is wrong. Carries the file and line when they are known."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None) -> None:
        where = source or "configuration"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")
        self.message = message
        self.source = source
        self.line = line
