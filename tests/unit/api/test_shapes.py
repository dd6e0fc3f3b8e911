"""The path -> error shape registry."""

from __future__ import annotations

import msgspec
import pytest

from relaygate.api.shapes import (
    anthropic_error,
    error_renderer_for,
    error_type,
    internal_error,
    ollama_error,
    openai_error,
)
from relaygate.errors import (
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    RelaygateError,
    UnsupportedMediaType,
)


@pytest.mark.parametrize(
    "path",
    ["/api/chat", "/api/generate", "/api/tags", "/api/pull", "/api/", "/api", "/api/keysX"],
)
def test_ollama_paths_get_ollamas_shape(path: str) -> None:
    assert error_renderer_for(path) is ollama_error


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions", "/v1/nothing", "/chat", "/ai/generate", "/usage", "/health",
        "/admin/keys", "/auth/create-key", "/api/keys", "/api/keys/key_1", "/api/stats",
        "/apix", "/", "",
    ],
)  # fmt: skip
def test_everything_else_gets_openais_shape(path: str) -> None:
    assert error_renderer_for(path) is openai_error


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest("bad", param="x"),
        MethodNotAllowed("no", allow=("POST",)),
        PayloadTooLarge(10),
        UnsupportedMediaType("type"),
        RelaygateError("boom"),
    ],
)
def test_renderers(error: RelaygateError) -> None:
    body, content_type = ollama_error(error)
    assert content_type == b"application/json"
    assert msgspec.json.decode(body) == {"error": error.message}
    body, content_type = openai_error(error)
    assert content_type == b"application/json"
    assert msgspec.json.decode(body) == {
        "error": {"message": error.message, "type": error.type, "param": error.param,
                  "code": error.code}
    }  # fmt: skip


def test_405_says_allow() -> None:
    assert MethodNotAllowed("no", allow=("GET", "POST")).headers() == [(b"allow", b"GET, POST")]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens", "/v1/messages/x/y"])
def test_anthropic_paths_get_anthropics_shape(path: str) -> None:
    assert error_renderer_for(path) is anthropic_error


@pytest.mark.parametrize("path", ["/v1/messagesX", "/v1/message", "/v1", "/messages"])
def test_paths_that_only_look_like_anthropics_get_openais_shape(path: str) -> None:
    assert error_renderer_for(path) is openai_error


@pytest.mark.parametrize(
    ("status", "type_"),
    [
        (400, "invalid_request_error"), (401, "authentication_error"), (402, "billing_error"),
        (403, "permission_error"), (404, "not_found_error"), (413, "request_too_large"),
        (429, "rate_limit_error"), (500, "api_error"), (503, "overloaded_error"),
        (504, "timeout_error"), (529, "overloaded_error"),
        # statuses without a type of their own: client errors, then everything else
        (405, "invalid_request_error"), (415, "invalid_request_error"),
        (499, "invalid_request_error"), (501, "api_error"), (502, "api_error"),
        (399, "api_error"), (600, "api_error"),
    ],
)  # fmt: skip
def test_anthropic_error_types_by_status(status: int, type_: str) -> None:
    assert error_type(status) == type_


def test_anthropic_renderer() -> None:
    body, content_type = anthropic_error(PayloadTooLarge(10))
    assert content_type == b"application/json"
    assert msgspec.json.decode(body) == {
        "type": "error",
        "error": {"type": "request_too_large", "message": PayloadTooLarge(10).message},
    }


def test_internal_error_is_a_500_that_names_the_request_and_nothing_else() -> None:
    error = internal_error("req_0123")
    assert (error.status, error.type, error.param) == (500, "server_error", None)
    assert error.message == "Internal error; the gateway's log has details under req_0123."
