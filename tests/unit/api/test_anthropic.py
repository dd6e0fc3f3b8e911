"""The Anthropic Messages API wire format: requests as the official SDK sends them,
translated to the canonical chat request; answers and errors as the SDK reads them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anthropic
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaygate.api.anthropic import (
    count_tokens,
    error_body,
    error_event,
    error_type,
    from_canonical,
    parse,
    render,
    to_canonical,
)
from relaygate.errors import (
    AuthenticationError,
    InvalidRequest,
    ModelNotFound,
    NoHealthyDeployment,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    RelaygateError,
    UpstreamConnectError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from relaygate.schema.requests import ChatRequest
from relaygate.usage.tokens import LazyTokenizer
from tests.unit.api.sdk import CannedAnthropic

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def completion(message: dict[str, Any], finish: str = "stop", **usage: Any) -> dict[str, Any]:
    """An OpenAI chat completion, as an upstream answers."""
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "model": "llama3",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        "usage": usage or {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


@pytest.fixture
def canned() -> CannedAnthropic:
    sdk = CannedAnthropic()
    sdk.answer(msgspec.json.encode(from_canonical(completion({"content": "ok"}), "m")))
    return sdk


def sent_by_sdk(canned: CannedAnthropic, **params: Any) -> dict[str, Any]:
    """The JSON body the official client sends for ``messages.create(**params)``."""
    canned.client.messages.create(**params)
    return canned.sent[-1]


# -- requests ------------------------------------------------------------------


def test_system_string_and_sampling_fields(canned: CannedAnthropic) -> None:
    body = sent_by_sdk(
        canned,
        model="llama3",
        max_tokens=300,
        system="Answer in French.",
        messages=[{"role": "user", "content": "Hello"}],
        stop_sequences=["\n\nHuman:", "END"],
        metadata={"user_id": "user-42"},
        # anthropic 2.x dropped these parameters; older clients (and curl) still send them
        extra_body={"temperature": 0.4, "top_p": 0.9, "top_k": 40},
    )
    assert to_canonical(body) == {
        "model": "llama3",
        "messages": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Hello"},
        ],
        "max_tokens": 300,
        "stop": ["\n\nHuman:", "END"],
        "temperature": 0.4,
        "top_p": 0.9,
        "top_k": 40,
        "user": "user-42",
    }


def test_system_blocks_become_one_system_message(canned: CannedAnthropic) -> None:
    body = sent_by_sdk(
        canned,
        model="m",
        max_tokens=10,
        system=[
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Use metric units.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    )
    assert to_canonical(body)["messages"] == [
        {"role": "system", "content": "You are terse.\nUse metric units."},
        {"role": "user", "content": "Hi"},
    ]


def test_tool_use_and_tool_result_round_trip(canned: CannedAnthropic) -> None:
    """The assistant's tool call comes back from the SDK and goes upstream as OpenAI's."""
    canned.answer(
        msgspec.json.encode(
            from_canonical(
                completion(
                    {
                        "content": "Checking.",
                        "tool_calls": [
                            {
                                "id": "call_9",
                                "type": "function",
                                "function": {
                                    "name": "get_weather",
                                    "arguments": '{"city": "Paris"}',
                                },
                            }
                        ],
                    },
                    finish="tool_calls",
                ),
                "llama3",
            )
        )
    )
    question = {"role": "user", "content": "Weather in Paris?"}
    reply = canned.client.messages.create(
        model="llama3",
        max_tokens=256,
        tools=[WEATHER],
        messages=[question],  # type: ignore[list-item]
    )
    assert reply.stop_reason == "tool_use"
    tool_use = reply.content[1]
    assert tool_use.type == "tool_use" and tool_use.input == {"city": "Paris"}
    result = {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": tool_use.id, "content": "18°C, sunny"},
            {"type": "text", "text": "And tomorrow?"},
        ],
    }
    body = sent_by_sdk(
        canned,
        model="llama3",
        max_tokens=256,
        tools=[WEATHER],
        tool_choice={"type": "auto"},
        messages=[question, reply.to_param(), result],
    )
    assert to_canonical(body) == {
        "model": "llama3",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_9", "content": "18°C, sunny"},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather in a city",
                    "parameters": WEATHER["input_schema"],
                },
            }
        ],
        "tool_choice": "auto",
        "max_tokens": 256,
    }


def test_tool_results_come_before_the_rest_of_their_turn() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "a", "name": "f", "input": {}},
                    {"type": "tool_use", "id": "b", "name": "g", "input": {"x": [1, 2]}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Here they are."},
                    {
                        "type": "tool_result",
                        "tool_use_id": "a",
                        "content": [
                            {"type": "text", "text": "one"},
                            {"type": "text", "text": "two"},
                        ],
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "b",
                        "is_error": True,
                        "content": [
                            {"type": "text", "text": "no such file"},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": PNG,
                                },
                            },
                        ],
                    },
                ],
            },
        ],
    }
    messages = to_canonical(body)["messages"]
    assert messages[0] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": '{"x":[1,2]}'}},
        ],
    }
    assert messages[1:] == [
        {"role": "tool", "tool_call_id": "a", "content": "one\ntwo"},
        {"role": "tool", "tool_call_id": "b", "content": "Error: no such file"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here they are."},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
    ]
    msgspec.convert(to_canonical(body), ChatRequest)


def test_images_base64_and_url(canned: CannedAnthropic) -> None:
    body = sent_by_sdk(
        canned,
        model="llava",
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                    },
                    {"type": "text", "text": "What is in these?"},
                ],
            }
        ],
    )
    assert to_canonical(body)["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "What is in these?"},
            ],
        }
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "get_weather"},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        ),
        (
            {"type": "any", "disable_parallel_tool_use": True},
            {"tool_choice": "required", "parallel_tool_calls": False},
        ),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    body = {"model": "m", "max_tokens": 5, "tools": [WEATHER], "tool_choice": choice,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    chat = to_canonical(body)
    assert {k: chat[k] for k in expected} == expected
    assert "parallel_tool_calls" in chat or "parallel_tool_calls" not in expected


def test_earlier_thinking_is_not_sent_upstream() -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "easy", "signature": "s"},
                                          {"type": "redacted_thinking", "data": "xx"},
                                          {"type": "text", "text": "4"}]},
        {"role": "user", "content": "and 3+3?"},
    ]}  # fmt: skip
    assert to_canonical(body)["messages"][1] == {"role": "assistant", "content": "4"}


@pytest.mark.parametrize(
    ("change", "param", "message"),
    [
        ({"max_tokens": None}, "max_tokens", "max_tokens: Field required"),
        ({"max_tokens": 0}, "max_tokens", "max_tokens: Expected `int` >= 1"),
        ({"temperature": 1.5}, "temperature", "temperature: Expected `float` <= 1.0"),
        ({"top_p": -0.1}, "top_p", "top_p: Expected `float` >= 0.0"),
        ({"stop_sequences": ["x"] * 17}, "stop_sequences", None),
        ({"messages": []}, "messages", None),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role", None),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0].type",
            None,
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "a"}]}
                ]
            },
            "messages[0].content[0].type",
            None,
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/bmp",
                                    "data": "x",
                                },
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].source.media_type",
            None,
        ),
        (
            {"tools": [{"name": "f"}]},
            "tools[0].input_schema",
            "tools[0].input_schema: Field required",
        ),
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search", "input_schema": {}}]},
            "tools[0].type",
            None,
        ),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool"}}, "tool_choice.name", None),
        ({"metadata": {"user_id": "u" * 257}}, "metadata.user_id", None),
        ({"model": ""}, "model", None),
    ],
)
def test_bad_requests_name_the_field(
    change: dict[str, Any], param: str, message: str | None
) -> None:
    body: dict[str, Any] = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(InvalidRequest) as caught:
        to_canonical(body)
    assert caught.value.status == 400
    assert caught.value.param == param
    assert caught.value.message.startswith(message or f"{param}: ")


def test_missing_max_tokens_is_a_400_in_anthropics_shape() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', "req1")
    assert json.loads(error_body(caught.value, "req1")) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
        "request_id": "req1",
    }


def test_parse_gives_a_canonical_chat_call() -> None:
    body = b'{"model": "m", "max_tokens": 9, "stream": true, "stop_sequences": ["##"], "messages": [{"role": "user", "content": "hi"}]}'
    call = parse(body, "req7")
    assert (call.kind, call.model, call.stream, call.request_id) == ("chat", "m", True, "req7")
    assert isinstance(call.params, ChatRequest) and call.params.max_tokens == 9
    assert call.max_output_tokens == 9
    assert call.body["stop"] == ["##"] and call.wire["stop_sequences"] == ["##"]
    for bad in (b"", b"[1]", b"{nope"):
        with pytest.raises(InvalidRequest):
            parse(bad, "req8")


# -- responses -----------------------------------------------------------------


def test_render_answers_with_the_clients_model_and_the_request_id() -> None:
    call = parse(
        b'{"model": "fast", "max_tokens": 9, "stop_sequences": ["END"], "messages": [{"role": "user", "content": "count"}]}',
        "0a1b2c",
    )
    body = completion({"content": "1 2 3"})  # the upstream's own model name is "llama3"
    body["choices"][0]["stop_reason"] = "END"
    message = json.loads(render(call, body))
    assert (message["id"], message["model"]) == ("msg_0a1b2c", "fast")
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")


def test_text_answer_as_the_sdk_reads_it(canned: CannedAnthropic) -> None:
    canned.answer(
        msgspec.json.encode(
            from_canonical(completion({"content": "Bonjour !"}), "llama3", message_id="msg_req1")
        )
    )
    message = canned.client.messages.create(
        model="llama3", max_tokens=9, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.model_dump(exclude_none=True) == {
        "id": "msg_req1",
        "type": "message",
        "role": "assistant",
        "model": "llama3",
        "content": [{"type": "text", "text": "Bonjour !"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 12, "output_tokens": 3},
    }


def test_tool_call_arguments_that_are_not_an_object_become_empty_input() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{not json"}},
        {"type": "function", "function": {"name": "g", "arguments": "[1, 2]"}},
        {"id": "call_3", "function": {"name": "h", "arguments": {"already": "parsed"}}},
    ]
    message = from_canonical(
        completion({"content": None, "tool_calls": calls}, finish="tool_calls"), "m"
    )
    assert message["id"] == "msg_abc123"
    assert message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {}},
        {"type": "tool_use", "id": "toolu_abc123_1", "name": "g", "input": {}},
        {"type": "tool_use", "id": "call_3", "name": "h", "input": {"already": "parsed"}},
    ]
    assert message["stop_reason"] == "tool_use"
    anthropic.types.Message.model_validate(message)


@pytest.mark.parametrize(
    ("finish", "extra", "tools", "expected"),
    [
        ("stop", {}, False, ("end_turn", None)),
        ("length", {}, False, ("max_tokens", None)),
        ("tool_calls", {}, True, ("tool_use", None)),
        ("stop", {}, True, ("tool_use", None)),  # Ollama says "stop" after tool calls
        ("content_filter", {}, False, ("refusal", None)),
        ("stop", {"stop_reason": "END"}, False, ("stop_sequence", "END")),  # vLLM names the match
        ("stop", {"stop_reason": "other"}, False, ("end_turn", None)),
        ("stop", {"stop_reason": 128001}, False, ("end_turn", None)),  # a stop token id
        (None, {}, False, ("end_turn", None)),
    ],
)
def test_stop_reasons(
    finish: str | None, extra: dict[str, Any], tools: bool, expected: tuple[str, str | None]
) -> None:
    message: dict[str, Any] = {"content": "x"}
    if tools:
        message["tool_calls"] = [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ]
    body = completion(message, finish=finish)  # type: ignore[arg-type]
    body["choices"][0].update(extra)
    out = from_canonical(body, "m", stop_sequences=["END"])
    assert (out["stop_reason"], out["stop_sequence"]) == expected


def test_cached_prompt_tokens_are_reported_apart() -> None:
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 800},
    }
    out = from_canonical(completion({"content": "x"}, **usage), "m")
    assert out["usage"] == {
        "input_tokens": 200,
        "output_tokens": 20,
        "cache_read_input_tokens": 800,
    }
    written = {"prompt_tokens": 500, "completion_tokens": 1, "cache_creation_input_tokens": 400}
    out = from_canonical(completion({"content": "x"}, **written), "m")
    assert out["usage"] == {
        "input_tokens": 100,
        "output_tokens": 1,
        "cache_creation_input_tokens": 400,
    }


JSONS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    body=st.one_of(
        JSONS,
        st.fixed_dictionaries(
            {
                "id": JSONS,
                "choices": st.one_of(
                    JSONS,
                    st.lists(
                        st.fixed_dictionaries(
                            {
                                "message": st.one_of(
                                    JSONS,
                                    st.fixed_dictionaries({"content": JSONS, "tool_calls": JSONS}),
                                ),
                                "finish_reason": JSONS,
                            }
                        )
                    ),
                ),
            },
            optional={"usage": JSONS},
        ),
    )
)
def test_any_upstream_body_gives_a_message_the_sdk_accepts(body: Any) -> None:
    anthropic.types.Message.model_validate(from_canonical(body, "m"))


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "kind", "sdk_error"),
    [
        (InvalidRequest("bad", param="x"), 400, "invalid_request_error", anthropic.BadRequestError),
        (AuthenticationError(), 401, "authentication_error", anthropic.AuthenticationError),
        (PermissionDenied("no"), 403, "permission_error", anthropic.PermissionDeniedError),
        (ModelNotFound("gpt-9"), 404, "not_found_error", anthropic.NotFoundError),
        (PayloadTooLarge(10), 413, "request_too_large", anthropic.APIStatusError),
        (
            RateLimited("slow down", retry_after=3, rate_headers=[]),
            429,
            "rate_limit_error",
            anthropic.RateLimitError,
        ),
        (RelaygateError("boom"), 500, "api_error", anthropic.InternalServerError),
        (
            UpstreamStatusError("bad gateway", upstream_status=500),
            502,
            "api_error",
            anthropic.InternalServerError,
        ),
        (UpstreamConnectError("down"), 503, "overloaded_error", anthropic.InternalServerError),
        (NoHealthyDeployment("m", 2), 503, "overloaded_error", anthropic.InternalServerError),
        (UpstreamTimeout("slow"), 504, "timeout_error", anthropic.InternalServerError),
    ],
)
def test_errors_in_anthropics_shape(
    canned: CannedAnthropic,
    error: RelaygateError,
    status: int,
    kind: str,
    sdk_error: type[Exception],
) -> None:
    assert error.status == status and error_type(status) == kind
    canned.answer(error_body(error), status=status)
    with pytest.raises(sdk_error) as caught:
        canned.client.messages.create(
            model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}]
        )
    assert isinstance(caught.value, anthropic.APIStatusError)
    assert caught.value.status_code == status
    assert caught.value.body == {"type": "error", "error": {"type": kind, "message": error.message}}
    assert error_event(error) == b"event: error\ndata: " + error_body(error) + b"\n\n"


def test_other_statuses() -> None:
    assert [error_type(s) for s in (405, 415, 422, 529, 501)] == [
        "invalid_request_error", "invalid_request_error", "invalid_request_error", "overloaded_error", "api_error",
    ]  # fmt: skip


# -- count_tokens ----------------------------------------------------------------


async def test_count_tokens_counts_text_tool_calls_and_tools(tmp_path: Path) -> None:
    tokenizer = LazyTokenizer(tmp_path / "tiktoken", logging.getLogger("test"))
    await tokenizer.load()
    plain = {
        "model": "m",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello there"}],
    }
    assert count_tokens(plain, tokenizer) == {
        "input_tokens": tokenizer.prompt("Be brief.\nHello there")
    }
    with_tools = {**plain, "tools": [WEATHER], "messages": [
        *plain["messages"],  # type: ignore[list-item]
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "get_weather", "input": {"city": "Oslo"}}]},
    ]}  # fmt: skip
    tools = '[{"type":"function","function":{"name":"get_weather","description":"Weather in a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]'
    expected = "\n".join(["Be brief.\nHello there\n", "get_weather", '{"city":"Oslo"}', tools])
    assert count_tokens(with_tools, tokenizer) == {"input_tokens": tokenizer.prompt(expected)}
    with pytest.raises(InvalidRequest) as caught:
        count_tokens({"model": "m"}, tokenizer)
    assert caught.value.param == "messages"


# -- generated requests ------------------------------------------------------------

TEXT = st.text(max_size=30)
IDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)
TEXT_BLOCK = st.builds(lambda t: {"type": "text", "text": t}, TEXT)
IMAGE_BLOCK = st.builds(
    lambda kind, data: {
        "type": "image",
        "source": {"type": "base64", "media_type": kind, "data": data},
    },
    st.sampled_from(["image/jpeg", "image/png", "image/gif", "image/webp"]),
    st.text(alphabet="ABCDEFabcdef0123456789+/=", min_size=1, max_size=20),
)
TOOL_USE = st.builds(
    lambda i, n, args: {"type": "tool_use", "id": i, "name": n, "input": args},
    IDS, IDS, st.dictionaries(st.text(max_size=5), JSONS, max_size=3),
)  # fmt: skip
TOOL_RESULT = st.builds(
    lambda i, content, error: {"type": "tool_result", "tool_use_id": i, "content": content, "is_error": error},
    IDS, st.one_of(TEXT, st.lists(TEXT_BLOCK | IMAGE_BLOCK, max_size=3)), st.booleans(),
)  # fmt: skip
USER = st.builds(
    lambda c: {"role": "user", "content": c},
    st.one_of(TEXT, st.lists(TEXT_BLOCK | IMAGE_BLOCK | TOOL_RESULT, max_size=4)),
)
ASSISTANT = st.builds(
    lambda c: {"role": "assistant", "content": c},
    st.one_of(TEXT, st.lists(TEXT_BLOCK | TOOL_USE, max_size=4)),
)
TOOL = st.builds(
    lambda n, d, s: {"name": n, "description": d, "input_schema": s},
    IDS, st.none() | TEXT, st.dictionaries(st.text(max_size=5), JSONS, max_size=3),
)  # fmt: skip
REQUESTS = st.fixed_dictionaries(
    {
        "model": st.text(min_size=1, max_size=20),
        "max_tokens": st.integers(1, 2**31 - 1),
        "messages": st.lists(USER | ASSISTANT, min_size=1, max_size=5),
    },
    optional={
        "system": st.one_of(TEXT, st.lists(TEXT_BLOCK, max_size=3)),
        "stop_sequences": st.lists(TEXT, max_size=16),
        "temperature": st.floats(0, 1),
        "top_p": st.floats(0, 1),
        "top_k": st.integers(0, 1000),
        "metadata": st.fixed_dictionaries({}, optional={"user_id": st.text(max_size=256)}),
        "stream": st.booleans(),
        "tools": st.lists(TOOL, max_size=3),
        "tool_choice": st.one_of(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["auto", "any", "none"])},
                optional={"disable_parallel_tool_use": st.booleans()},
            ),
            st.fixed_dictionaries({"type": st.just("tool"), "name": IDS}),
        ),
    },
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=REQUESTS)
def test_every_valid_request_translates_to_a_valid_chat_request(body: dict[str, Any]) -> None:
    chat = to_canonical(body)
    request = msgspec.convert(chat, ChatRequest)
    assert request.max_tokens == body["max_tokens"]
    blocks = [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]]
    tool_messages = [m for m in chat["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == [
        b["tool_use_id"] for b in blocks if b["type"] == "tool_result"
    ]
    calls = [c for m in chat["messages"] for c in m.get("tool_calls") or ()]
    assert [(c["id"], json.loads(c["function"]["arguments"])) for c in calls] == [
        (b["id"], b["input"]) for b in blocks if b["type"] == "tool_use"
    ]


def _mutations(body: dict[str, Any]) -> st.SearchStrategy[Any]:
    """The body with one value, anywhere in it, replaced by arbitrary JSON."""
    paths: list[tuple[Any, ...]] = []

    def walk(value: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        items = (
            value.items()
            if isinstance(value, dict)
            else enumerate(value)
            if isinstance(value, list)
            else ()
        )
        for key, child in items:
            walk(child, (*path, key))

    walk(body, ())

    def replace(path: tuple[Any, ...], new: Any) -> Any:
        if not path:
            return new
        copy = json.loads(json.dumps(body))
        target = copy
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = new
        return copy

    return st.builds(replace, st.sampled_from(paths), JSONS)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(JSONS, REQUESTS.flatmap(_mutations)))
def test_any_body_is_translated_or_refused_with_a_400(body: Any) -> None:
    try:
        chat = to_canonical(body)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.message
        return
    msgspec.convert(chat, ChatRequest)
