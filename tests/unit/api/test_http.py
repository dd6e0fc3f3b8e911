"""A body that is not valid JSON because of an unpaired UTF-16 surrogate escape says so."""

from __future__ import annotations

import pytest

from relaygate.api.http import _lone_surrogate, decode_json_object
from relaygate.errors import InvalidRequest


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


def test_the_window_may_begin_between_the_halves_of_a_pair() -> None:
    body = rb'"\ud83d\ude00\ud800"'
    assert _lone_surrogate(body, start=7) == 13


def test_an_escaped_backslash_run_before_the_window_counts() -> None:
    body = b'"' + b"\\\\" * 1000 + rb'\ud800"'  # 2000 backslashes, then an escape
    assert _lone_surrogate(body, start=len(body) - 10) == 2001
    body = b'"' + b"\\\\" * 1000 + rb'\\ud800"'  # 2002: the backslash is escaped
    assert _lone_surrogate(body, start=len(body) - 10) is None


@pytest.mark.parametrize(
    ("body", "escape", "where"),
    [
        (b'"' + rb"\ud83d\ude00" * 200_000 + rb'\ud800"', "\\ud800", 2_400_001),
        (b'"' + rb"\ud83d\ude00" * 200_000 + rb'\udc00"', "\\udc00", 2_400_001),
        (b'{"a": "' + rb"\ud83d\ude00" * 200_000 + rb'\ud800\u0041"}', "\\ud800", 2_400_007),
        (b'"' + b"\\\\" * 200_000 + rb'\ud800"', "\\ud800", 400_001),
    ],
)
def test_large_bodies_name_the_right_escape(body: bytes, escape: str, where: int) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_json_object(body)
    assert f"escape {escape}, an unpaired UTF-16 surrogate (byte {where}," in caught.value.message


def test_other_invalid_json_keeps_msgspecs_message() -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_json_object(b'{"a": "b"')
    assert caught.value.message == "The request body is not valid JSON: Input data was truncated."
