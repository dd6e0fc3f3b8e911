"""CORS: web pages on other origins may call the API, when the operator lists them.

Closed by default: with no ``cors.allow_origins`` this wrapper is not installed,
responses carry no CORS header and a browser's preflight (``OPTIONS``) is
answered like any other unsupported method (405), so browsers refuse the call.

When origins are configured, the wrapper sits in front of every route (the
hot routes and the admin app alike) and:

* answers a preflight (``OPTIONS`` with ``Origin`` and
  ``Access-Control-Request-Method``) itself, before any authentication
  (preflights carry no credentials): 204 with the allowed methods and the
  requested headers that are allowed, for an allowed origin; 403 in OpenAI's
  error shape, without any ``Access-Control-*`` header, for another origin;
* adds ``Access-Control-Allow-Origin`` and ``Access-Control-Expose-Headers``
  (rate limits, request id, cache status) to every response to an allowed
  origin, errors and streams included, so scripts can read them;
* adds ``Vary: Origin`` to every response to a request that has an ``Origin``.

Requests without ``Origin`` (curl, SDKs outside browsers) pass through
untouched: one header scan, no wrapped ``send``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relaygate.api.http import error_body
from relaygate.asgi import ASGIApp, Message, Receive, Scope, Send, new_request_id
from relaygate.errors import PermissionDenied

if TYPE_CHECKING:
    from relaygate.settings import CorsConfig

__all__ = ["ALLOW_HEADERS", "ALLOW_METHODS", "CORS", "EXPOSE_HEADERS"]

# What the official clients send from a browser: the OpenAI and Anthropic JS SDKs
# (x-stainless-*, OpenAI-Organization/Project/Beta, anthropic-*), ollama-js (Accept,
# User-Agent where the browser lets a script set it), and the seeds' pages (X-API-Key).
ALLOW_HEADERS = (
    "accept",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "anthropic-version",
    "authorization",
    "cache-control",
    "content-type",
    "idempotency-key",
    "openai-beta",
    "openai-organization",
    "openai-project",
    "user-agent",
    "x-api-key",
    "x-request-id",
    "x-requested-with",
)
ALLOW_HEADER_PREFIXES = ("x-stainless-",)
ALLOW_METHODS = b"GET, HEAD, POST, PATCH, DELETE"  # HEAD: Ollama's probe of /
# Response headers scripts may read (beyond the CORS-safelisted Content-Type etc.).
EXPOSE_HEADERS = (
    b"X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After, "
    b"X-Request-Id, X-Cache, X-Cache-Tier, WWW-Authenticate"
)
_VARY = (b"vary", b"Origin")


class CORS:
    """The ASGI app ``app`` behind the CORS policy ``config`` (which lists origins)."""

    __slots__ = ("_allow_headers", "_any", "_app", "_headers", "_preflight")

    def __init__(self, config: CorsConfig, app: ASGIApp) -> None:
        self._app = app
        self._any = "*" in config.allow_origins
        self._allow_headers = frozenset(
            (*ALLOW_HEADERS, *(name.lower() for name in config.allow_headers))
        )
        credentials = [(b"access-control-allow-credentials", b"true")]
        if not config.allow_credentials:
            credentials = []
        expose = (b"access-control-expose-headers", EXPOSE_HEADERS)
        # Per allowed origin: what every response gets, and what a preflight answer gets.
        self._headers: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self._preflight: dict[bytes, list[tuple[bytes, bytes]]] = {}
        for origin in config.allow_origins:
            value = origin.encode()
            allow = [(b"access-control-allow-origin", value), *credentials]
            self._headers[value] = [*allow, expose, _VARY]
            self._preflight[value] = [
                *allow,
                (b"access-control-allow-methods", ALLOW_METHODS),
                (b"access-control-max-age", str(config.max_age).encode()),
                _VARY,
            ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = None
        preflight = scope["method"] == "OPTIONS"
        requested_method = requested_headers = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = bytes(value)
            elif preflight and name == b"access-control-request-method":
                requested_method = bytes(value)
            elif preflight and name == b"access-control-request-headers":
                requested_headers = bytes(value)
        if origin is None:
            await self._app(scope, receive, send)
            return
        extra = self._headers.get(b"*" if self._any else origin)
        if preflight and requested_method is not None:
            await self._answer_preflight(origin, requested_headers, send)
            return
        await self._app(scope, receive, _adding(send, extra or [_VARY]))

    async def _answer_preflight(self, origin: bytes, requested: bytes | None, send: Send) -> None:
        headers = self._preflight.get(b"*" if self._any else origin)
        if headers is None:
            error = PermissionDenied(
                f"The origin {origin.decode('latin-1')[:200]!r} is not allowed to call this API "
                "from a browser; the operator lists allowed origins in cors.allow_origins."
            )
            body = error_body(error)
            await send(
                {
                    "type": "http.response.start",
                    "status": error.status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"x-request-id", new_request_id().encode()),
                        _VARY,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        allowed = self.allowed_headers(requested) if requested else b""
        if allowed:
            headers = [*headers, (b"access-control-allow-headers", allowed)]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def allowed_headers(self, requested: bytes) -> bytes:
        """The requested headers that are allowed; a browser refuses the call if one is missing."""
        names = (n.strip().lower() for n in requested.decode("latin-1").split(","))
        return ", ".join(
            n
            for n in names
            if n and (n in self._allow_headers or n.startswith(ALLOW_HEADER_PREFIXES))
        ).encode("latin-1")


def _adding(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return cors_send
