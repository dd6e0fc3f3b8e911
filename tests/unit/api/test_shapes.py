"""The path -> error shape registry."""

from __future__ import annotations

import msgspec
import pytest

from relaygate.api.shapes import error_renderer_for, ollama_error, openai_error
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
