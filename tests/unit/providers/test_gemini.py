"""The Gemini translation, both ways, on generated input.

Every canonical chat body the gateway accepts either becomes a generateContent body that
the fake Gemini's field-by-field checks accept, or is refused as the client's mistake (400);
every answer Gemini could send becomes OpenAI chunks and completions without an exception.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from relaygate.errors import InvalidRequest, UpstreamProtocolError
from relaygate.providers.gemini import _Translator, clean_schema, request_body
from relaygate.providers.mock import MockProvider
from relaygate.routing.health import Health
from relaygate.routing.router import Deployment
from relaygate.schema.requests import Call, ChatRequest
from relaygate.settings import RoutingConfig, Timeouts
from tests.fakes.gemini_server import _check_generate, _check_schema

FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter"}
TEXT = st.text(max_size=12)
NAMES = st.sampled_from(["get_weather", "lookup", "a.b-c_d", "x"])
IDS = st.sampled_from(["call_1", "call_2", "abc"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
SCHEMAS = st.recursive(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(
                [
                    "string",
                    "integer",
                    "number",
                    "boolean",
                    "null",
                    "object",
                    "array",
                    "STRING",
                    "bogus",
                ]
            )
            | st.lists(st.sampled_from(["string", "null", "integer"]), max_size=3),
            "format": st.sampled_from(["date-time", "email", "int64", "enum", "uuid"]),
            "enum": st.lists(JSON_VALUES, max_size=3),
            "description": TEXT,
            "additionalProperties": st.booleans(),
            "$schema": st.just("http://json-schema.org/draft-07/schema#"),
            "$ref": st.just("#/$defs/x"),
            "const": JSON_VALUES,
            "required": st.lists(TEXT, max_size=3),
        },
    ),
    lambda inner: st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["object", "array"]),
            "properties": st.dictionaries(TEXT, inner, max_size=3),
            "items": inner,
            "anyOf": st.lists(inner, max_size=3),
            "oneOf": st.lists(inner, max_size=2),
            "required": st.lists(TEXT, max_size=3),
        },
    ),
    max_leaves=10,
)
IMAGE_URLS = st.sampled_from(
    ["data:image/png;base64,iVBORw0KGgo=", "data:image/jpeg;name=x;base64,/9j/4A==",
     "https://example.com/cat.png", "data:text/plain,hello", "data:;base64,AAAA"]
)  # fmt: skip
PARTS = st.lists(
    st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
        st.fixed_dictionaries(
            {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": IMAGE_URLS})}
        ),
        st.fixed_dictionaries({"type": st.just("input_audio")}),
        st.fixed_dictionaries(
            {"type": st.just("file"), "file": st.fixed_dictionaries({"file_data": IMAGE_URLS})}
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("input_audio"),
                "input_audio": st.fixed_dictionaries(
                    {"data": TEXT, "format": st.sampled_from(["wav", "mp3", "ogg"])}
                ),
            }
        ),
    ),
    max_size=3,
)
ARGUMENTS = st.one_of(
    st.dictionaries(TEXT, JSON_VALUES, max_size=3).map(json.dumps),
    st.sampled_from(["", "[1]", "not json", "null", '"s"']),
)
TOOL_CALLS = st.lists(
    st.fixed_dictionaries(
        {"id": IDS, "type": st.just("function"),
         "function": st.fixed_dictionaries({"name": NAMES, "arguments": ARGUMENTS})}
    ),
    min_size=1,
    max_size=2,
)  # fmt: skip
MESSAGES = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["system", "developer"]),
                               "content": TEXT | st.lists(st.fixed_dictionaries(
                                   {"type": st.just("text"), "text": TEXT}), max_size=2)}),
        st.fixed_dictionaries({"role": st.just("user"), "content": TEXT | PARTS}),
        st.fixed_dictionaries({"role": st.just("assistant"), "content": st.none() | TEXT},
                              optional={"tool_calls": TOOL_CALLS}),
        st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": IDS,
                               "content": TEXT | st.dictionaries(TEXT, JSON_VALUES, max_size=2)
                               .map(json.dumps)}),
        st.fixed_dictionaries({"role": st.just("function"), "content": TEXT},
                              optional={"name": NAMES}),
    ),
    min_size=1,
    max_size=6,
)  # fmt: skip
TOOLS = st.lists(
    st.fixed_dictionaries(
        {"type": st.just("function"),
         "function": st.fixed_dictionaries(
             {"name": NAMES}, optional={"description": TEXT, "parameters": SCHEMAS})}
    ),
    max_size=2,
)  # fmt: skip
CHAT_BODIES = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": MESSAGES},
    optional={
        "tools": TOOLS,
        "tool_choice": st.sampled_from(["auto", "none", "required", "bogus"])
        | st.fixed_dictionaries({"type": st.just("function"),
                                 "function": st.fixed_dictionaries({"name": NAMES})}),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "top_k": JSON_VALUES,
        "n": st.integers(1, 4),
        "max_tokens": st.integers(1, 4096),
        "max_completion_tokens": st.integers(1, 4096),
        "stop": TEXT | st.lists(TEXT, max_size=3),
        "seed": st.integers(0, 2**31),
        "presence_penalty": st.floats(-2, 2),
        "response_format": st.one_of(
            st.just({"type": "text"}),
            st.just({"type": "json_object"}),
            st.builds(lambda s: {"type": "json_schema", "json_schema": {"name": "x", "schema": s}},
                      SCHEMAS),
        ),
    },
)  # fmt: skip


def chat_call(body: dict[str, Any], stream: bool = False) -> Call:
    try:
        params = msgspec.convert(body, ChatRequest)
    except msgspec.ValidationError:
        assume(False)
        raise
    return Call("chat", "m", body, params, stream, "req")


def deployment() -> Deployment:
    return Deployment(
        name="m", model="m", provider=MockProvider(), provider_name="gemini",
        upstream_model="gemini-1.5-flash", weight=1.0, timeouts=Timeouts(),
        health=Health(RoutingConfig()), api_key="k",
    )  # fmt: skip


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CHAT_BODIES)
def test_every_chat_body_is_one_gemini_accepts_or_a_400(body: dict[str, Any]) -> None:
    call = chat_call(body)
    try:
        translated = request_body(call)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.message
        event("refused")
        return
    event("translated")
    _check_generate(msgspec.json.decode(msgspec.json.encode(translated)))  # raises Violation


@settings(max_examples=100, deadline=None)
@given(SCHEMAS | JSON_VALUES)
def test_cleaned_schemas_are_gemini_schemas(schema: Any) -> None:
    cleaned = clean_schema(schema)
    assert "additionalProperties" not in json.dumps(cleaned)
    assert "$schema" not in json.dumps(cleaned)
    _check_schema(cleaned, "schema")


def test_a_deep_schema_is_cut_rather_than_recursed_forever() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(2000):
        schema = {"type": "array", "items": schema}
    cleaned = clean_schema(schema)
    _check_schema(cleaned, "schema")
    assert json.dumps(cleaned).count('"ARRAY"') <= 40


def test_non_data_image_url_names_the_field() -> None:
    body = {"model": "m", "messages": [
        {"role": "user", "content": "look"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]},
    ]}  # fmt: skip
    with pytest.raises(InvalidRequest) as error:
        request_body(chat_call(body))
    assert error.value.param == "messages[1].content[0].image_url"


PART = st.one_of(
    st.fixed_dictionaries({"text": TEXT}, optional={"thought": st.booleans()}),
    st.fixed_dictionaries(
        {"functionCall": st.fixed_dictionaries({"name": NAMES}, optional={
            "args": st.dictionaries(TEXT, JSON_VALUES, max_size=2), "id": IDS})}
    ),
    JSON_VALUES,
)  # fmt: skip
CANDIDATE = st.fixed_dictionaries(
    {},
    optional={
        "content": st.fixed_dictionaries({"role": st.just("model"), "parts": st.lists(PART, max_size=3)}),
        "finishReason": st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "RECITATION", "OTHER",
                                         "MALFORMED_FUNCTION_CALL", "SPII"]),
        "index": st.integers(0, 2),
    },
)  # fmt: skip
RESPONSES = st.fixed_dictionaries(
    {},
    optional={
        "candidates": st.lists(CANDIDATE, max_size=3),
        "promptFeedback": st.fixed_dictionaries({"blockReason": st.sampled_from(["SAFETY", "OTHER"])}),
        "usageMetadata": st.fixed_dictionaries({}, optional={
            "promptTokenCount": st.integers(0, 10**6), "candidatesTokenCount": st.integers(0, 10**6),
            "totalTokenCount": st.integers(0, 10**6), "cachedContentTokenCount": st.integers(0, 99),
            "thoughtsTokenCount": st.integers(0, 99)}),
    },
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(st.lists(RESPONSES, min_size=1, max_size=4))
def test_every_gemini_answer_becomes_openai_shapes(events: list[dict[str, Any]]) -> None:
    call = chat_call({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    answered = any(isinstance(c, dict) for c in events[0].get("candidates") or [])
    if not answered and "promptFeedback" not in events[0]:
        with pytest.raises(UpstreamProtocolError):
            _Translator(deployment(), call).whole(events[0])
        return
    whole = _Translator(deployment(), call).whole(events[0])
    assert whole["choices"]
    assert whole["object"] == "chat.completion"
    for choice in whole["choices"]:
        assert choice["finish_reason"] in FINISH_REASONS
        assert choice["message"]["role"] == "assistant"
        for tool_call in choice["message"].get("tool_calls", []):
            assert isinstance(json.loads(tool_call["function"]["arguments"]), dict)
    streaming = _Translator(deployment(), chat_call(call.body, stream=True))
    chunks = [chunk for event in events for chunk in streaming.event(event)] + streaming.end()
    with_choices = [c for c in chunks if c["choices"]]
    assert with_choices[0]["choices"][0]["delta"].get("role") == "assistant"
    finals = [ch for c in with_choices for ch in c["choices"] if ch["finish_reason"]]
    assert finals and all(ch["finish_reason"] in FINISH_REASONS for ch in finals)
    assert len({ch["index"] for ch in finals}) == len(finals)  # one finish per choice
    assert chunks[-1]["choices"] or "usage" in chunks[-1]
