"""The document's request schemas and the validators the routes run agree on what is
valid: generated bodies are accepted by both or refused by both."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from relaygate.api.admin import KeyCreate
from relaygate.api.openapi import OPERATIONS, build_document
from relaygate.schema.requests import ChatRequest

_DOCUMENT = build_document({"/v1/chat/completions": ["POST"]})


_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=msgspec.ValidationError)
def _is_time(value: object) -> bool:
    """The document says `format: date-time`; the gateway parses such times with msgspec."""
    return not isinstance(value, str) or bool(msgspec.convert(value, datetime))


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    root = {"$ref": f"#/components/schemas/{name}", "components": _DOCUMENT["components"]}
    return Draft202012Validator(root, format_checker=_FORMATS)


_CHAT = _validator("ChatRequest")
_anything = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "robot"])},
        optional={"content": st.text(max_size=5) | st.none() | st.integers(), "name": _anything},
    ),
    max_size=3,
)
_chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.text(max_size=3) | st.integers() | st.just("m" * 257),
        "messages": _messages | _anything,
        "temperature": st.floats(-1, 3, allow_nan=False) | _anything,
        "top_p": st.floats(-0.5, 1.5, allow_nan=False),
        "n": st.integers(-1, 130),
        "max_tokens": st.integers(-1, 3) | st.text(max_size=2),
        "stop": st.text(max_size=3) | st.lists(st.text(max_size=2), max_size=17) | st.integers(),
        "stream": _anything,
        "seed": st.integers(-(2**64), 2**64),
        "top_logprobs": st.integers(-1, 21),
        "extra_field": _anything,  # passed through to upstreams: allowed by both
    },
)


@settings(max_examples=200)
@given(body=_chat_bodies)
def test_chat_schema_agrees_with_the_validator(body: dict[str, Any]) -> None:
    try:
        msgspec.convert(body, ChatRequest)
        accepted = True
    except msgspec.ValidationError:
        accepted = False
    assert _CHAT.is_valid(body) == accepted, body


_BODIES = sorted(
    {op.body for op in OPERATIONS.values() if op.body is not None}, key=lambda t: t.__name__
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 300)
    | st.sampled_from([2**31, -(2**63), 2**64])
    | st.floats(-3, 3, allow_nan=False).filter(lambda x: not x.is_integer())
    | st.text(max_size=4)
    | st.sampled_from(["", "user", "admin", "free", "x" * 201, "x" * 4001])
    | st.sampled_from(["2030-01-02T03:04:05Z", "2030-01-02T03:04:05", "2030-13-01T00:00:00Z"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


def test_times_are_documented_as_times() -> None:
    """msgspec's schema says only "string" for a datetime: the document adds the format."""
    expires = _DOCUMENT["components"]["schemas"]["KeyCreate"]["properties"]["expires_at"]
    assert {"type": "string", "format": "date-time"}.items() <= expires["anyOf"][0].items()
    body = {"tenant_id": "t", "expires_at": "next tuesday"}
    assert not _validator("KeyCreate").is_valid(body)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(body, KeyCreate)


@pytest.mark.parametrize("schema", _BODIES, ids=lambda t: t.__name__)
@settings(max_examples=100)
@given(data=st.data())
def test_every_request_schema_agrees_with_its_validator(
    schema: type[msgspec.Struct], data: st.DataObject
) -> None:
    """For every request body the document describes, generated bodies (its own fields
    and an unknown one, with values of every JSON kind) are accepted by the document's
    schema exactly when the route's validator accepts them."""
    names = [*schema.__struct_fields__, "unknown_field"]
    body = data.draw(st.dictionaries(st.sampled_from(names), _VALUES, max_size=len(names)))
    try:
        msgspec.convert(body, schema)
        accepted = True
    except msgspec.ValidationError:
        accepted = False
    assert _validator(schema.__name__).is_valid(body) == accepted, body
