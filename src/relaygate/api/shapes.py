"""Which error shape a path answers in, decided in this one place.

Each inbound API has its own error shape, for every status (400 to 5xx, and the
404 of an unknown path or the 405 of a wrong method as well):

* Ollama's API (``/api/chat``, ``/api/generate``, ``/api/tags`` and any unknown
  ``/api/...`` path): ``{"error": "message"}``.
* Anthropic's Messages API (``/v1/messages`` and below):
  ``{"type": "error", "error": {"type", "message"}}``, its types by status.
* Everything else (``/v1/...``, the seed routes ``/ai/generate``, ``/chat``,
  ``/usage``, seed 003's ``/api/keys`` and ``/api/stats``, the admin and ops routes):
  OpenAI's ``{"error": {"message", "type", "param", "code"}}``.

:func:`error_renderer_for` is what every part of the gateway that answers an error
without a route's own handler (unknown paths, wrong methods, protocol-level errors
before routing, anything that escaped a handler) asks for the shape.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from relaygate.errors import RelaygateError

__all__ = [
    "JSON_TYPE",
    "ErrorRenderer",
    "anthropic_error",
    "anthropic_error_object",
    "error_renderer_for",
    "error_type",
    "internal_error",
    "ollama_error",
    "openai_error",
]

JSON_TYPE = b"application/json"
ErrorRenderer = Callable[[RelaygateError], tuple[bytes, bytes]]
"""An error to its response body and Content-Type."""

_encode = msgspec.json.encode
_OLLAMA_PREFIX = "/api/"
# seed 003's own routes under /api/ keep the shape they always had (OpenAI's)
_SEED_EXACT = frozenset({"/api/keys", "/api/stats"})
_SEED_PREFIXES = ("/api/keys/", "/api/ai/")  # /api/ai/: seed 004's provider keys (BYOK)
_ANTHROPIC = "/v1/messages"
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def openai_error(error: RelaygateError) -> tuple[bytes, bytes]:
    """OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }
    return _encode(body), JSON_TYPE


def ollama_error(error: RelaygateError) -> tuple[bytes, bytes]:
    """Ollama's shape: ``{"error": "message"}``."""
    return _encode({"error": error.message}), JSON_TYPE


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def anthropic_error_object(error: RelaygateError) -> dict[str, str]:
    """The inner ``{"type", "message"}`` of Anthropic's error (bodies and stream events)."""
    return {"type": error_type(error.status), "message": error.message}


def anthropic_error(error: RelaygateError) -> tuple[bytes, bytes]:
    """Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
    return _encode({"type": "error", "error": anthropic_error_object(error)}), JSON_TYPE


def is_ollama_path(path: str) -> bool:
    """Whether ``path`` belongs to the Ollama API (known route or not)."""
    if not path.startswith(_OLLAMA_PREFIX) and path != "/api":
        return False
    return path not in _SEED_EXACT and not path.startswith(_SEED_PREFIXES)


def error_renderer_for(path: str) -> ErrorRenderer:
    """The error renderer of the API that ``path`` belongs to (routed or not)."""
    if is_ollama_path(path):
        return ollama_error
    if path == _ANTHROPIC or path.startswith(_ANTHROPIC + "/"):
        return anthropic_error
    return openai_error


def internal_error(request_id: str) -> RelaygateError:
    """What a client is told of a failure it did not cause: a 500 naming the request id."""
    return RelaygateError(f"Internal error; the gateway's log has details under {request_id}.")
