"""The path -> error shape registry, and naming an unpaired surrogate in a JSON body."""

from __future__ import annotations

import msgspec
import pytest

from relaygate.api.http import _lone_surrogate, decode_json_object
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


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (rb'"\ud800"', 1),
        (rb'"\uDBFF"', 1),
        (rb'"\udc00"', 1),
        (rb'"ab\ud800\u0041"', 3),
        (rb'"\ud800 \udc00"', 1),
        (rb'"\ud83d\ude00\udc00"', 13),
        (rb'"\\\ud800"', 3),
        (rb'{"a": "\ud800\ud800"}', 7),
    ],
)
def test_lone_surrogates_found(raw: bytes, where: int) -> None:
    assert _lone_surrogate(raw) == where


@pytest.mark.parametrize(
    "raw", [rb'"\ud83d\ude00"', rb'"\\ud800"', rb'"\\\\ud800"', rb'"\u0041\n"', b'"plain"']
)
def test_no_lone_surrogate(raw: bytes) -> None:
    assert _lone_surrogate(raw) is None


def test_decode_names_the_surrogate_and_where() -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_json_object(b'{\n  "a": "x\\ud800"}')
    message = caught.value.message
    assert "unpaired UTF-16 surrogate" in message
    assert "\\ud800" in message and "(byte 11, line 2, column 10)" in message
