"""The Anthropic adapter's request translation, checked by the fake's own request checker
over generated OpenAI conversations."""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.errors import InvalidRequest
from relaygate.providers.anthropic import finish_reason, to_messages_request
from relaygate.schema.requests import Call, ChatRequest
from tests.fakes.anthropic_server import check_messages_body

texts = st.text(alphabet="ab \n", max_size=6)
content = st.one_of(
    texts,
    st.none(),
    st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts), max_size=2),
)


def call_of(body: dict[str, Any]) -> Call:
    params = msgspec.convert(body, ChatRequest)
    return Call("chat", "m", body, params, False, "req")


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Valid OpenAI conversations: tool results follow the assistant turn that asked."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": draw(texts) + "q"}]
    for n in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["system", "developer", "user", "assistant", "tools"]))
        if kind == "tools":
            ids = [f"toolu_{n}_{k}" for k in range(draw(st.integers(1, 3)))]
            calls = [
                {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}}
                for i in ids
            ]
            messages.append({"role": "assistant", "content": draw(content), "tool_calls": calls})
            messages.extend(
                {"role": "tool", "tool_call_id": i, "content": draw(texts)} for i in ids
            )
        else:
            messages.append({"role": kind, "content": draw(content)})
    return messages


@settings(max_examples=150, deadline=None)
@given(conversations())
def test_every_conversation_becomes_a_request_anthropic_accepts(
    messages: list[dict[str, Any]],
) -> None:
    body = to_messages_request(call_of({"model": "m", "messages": messages}))
    body["model"] = "claude"
    assert check_messages_body(body) is None, json.dumps(body)
    roles = [m["role"] for m in body["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles))


def test_the_checker_refuses_what_anthropic_refuses() -> None:
    """The fake is strict: each broken body names its problem."""
    good = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    assert check_messages_body(good) is None
    broken = [
        ({**good, "max_tokens": None}, "max_tokens"),
        ({**good, "n": 2}, "Extra inputs"),
        ({**good, "temperature": 1.5}, "temperature"),
        ({**good, "messages": [{"role": "user", "content": ""}]}, "non-empty"),
        ({**good, "messages": [good["messages"][0]] * 2}, "alternate"),  # type: ignore[index]
        (
            {**good, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
            "non-empty",
        ),
        ({**good, "tool_choice": {"type": "auto"}}, "tool_choice"),
    ]
    for body, words in broken:
        problem = check_messages_body(body)
        assert problem is not None and words in problem, (body, problem)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 1.01}, "temperature"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"n": 3}, "n"),
        (
            {
                "tool_choice": "sometimes",
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            "tool_choice",
        ),
    ],
)
def test_refusals_name_the_field(extra: dict[str, Any], param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(InvalidRequest) as error:
        to_messages_request(call_of(body))
    assert error.value.param == param


def test_only_system_messages_is_a_400() -> None:
    with pytest.raises(InvalidRequest, match="at least one user or assistant"):
        to_messages_request(
            call_of({"model": "m", "messages": [{"role": "system", "content": "x"}]})
        )


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
        (None, "stop"),
    ],
)
def test_stop_reasons(stop: str | None, finish: str) -> None:
    assert finish_reason(stop) == finish
