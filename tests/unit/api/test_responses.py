"""The Responses API wire format: requests to canonical chat, chat answers and chunks to
Response objects and typed events, read by the official ``openai`` client and its types."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import msgspec
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from relaygate.api import responses
from relaygate.api.responses import (
    deleted_body,
    error_body,
    not_found,
    parse,
    previous_not_found,
    record,
    render,
    to_canonical,
    with_history,
)
from relaygate.api.responses_stream import ResponsesStream
from relaygate.auth.principal import Principal
from relaygate.cache.entry import split
from relaygate.errors import InvalidRequest, UpstreamConnectError
from relaygate.schema.requests import ChatRequest

EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
CALLER = Principal("key:key_1", "key", "user", "free", key_id="key_1", tenant_id="ten_a")
NO_TENANT = Principal("jwt:alice", "jwt", "user", "free")


def request(**fields: Any) -> bytes:
    return json.dumps({"model": "llama3", **fields}).encode()


def completion(
    content: str | None = "Hello!",
    tool_calls: list[dict[str, Any]] | None = None,
    finish: str = "stop",
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "model": "llama3",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage or {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {"id": "chatcmpl-9", "object": "chat.completion.chunk", "choices": [choice]}


def usage_chunk(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"id": "chatcmpl-9", "object": "chat.completion.chunk", "choices": [], "usage": usage}


def tool_delta(
    index: int, arguments: str, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call.update(id=call_id, type="function")
    if name is not None:
        call["function"]["name"] = name
    return {"tool_calls": [call]}


def relay(body: bytes, chunks: list[dict[str, Any]]) -> bytes:
    call = parse(body, "req1")
    stream = ResponsesStream.of(call)
    return b"".join(stream.event(c) for c in chunks) + stream.end()


def events(sse: bytes) -> list[Any]:
    """Each event validated by the SDK's types; names match types, numbers count from 0."""
    found = []
    for block in sse.decode().split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        event = EVENT.validate_json(data_line.removeprefix("data: "))
        assert name_line == f"event: {event.type}"
        found.append(event)
    assert [e.sequence_number for e in found] == list(range(len(found)))
    return found


class CannedOpenAI:
    """An ``openai.OpenAI`` whose every request is answered with the bytes given."""

    def __init__(self, body: bytes, *, stream: bool = False, status: int = 200) -> None:
        self.sent: list[dict[str, Any]] = []
        content_type = "text/event-stream" if stream else "application/json"

        def answer(req: httpx2.Request) -> httpx2.Response:
            self.sent.append(json.loads(req.content) if req.content else {})
            return httpx2.Response(status, content=body, headers={"content-type": content_type})

        self.client = openai.OpenAI(
            api_key="sk-test",
            base_url="http://relaygate.test/v1",
            http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
            max_retries=0,
        )


# -- requests ------------------------------------------------------------------


def test_string_input_and_instructions_become_system_and_user_messages() -> None:
    chat = to_canonical(
        {
            "model": "llama3",
            "input": "Hi",
            "instructions": "Be brief.",
            "max_output_tokens": 64,
            "temperature": 0.2,
            "top_p": 0.9,
            "user": "u-1",
            "store": False,
            "metadata": {"a": "b"},
        }
    )
    assert chat == {
        "model": "llama3",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u-1",
    }


def test_item_input_messages_images_and_developer_role() -> None:
    chat = to_canonical(
        {
            "model": "llama3",
            "input": [
                {"role": "developer", "content": "Rules."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                        {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
                    ],
                },
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_1",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "A cat.", "annotations": []}],
                },
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"role": "user", "content": [{"type": "input_text", "text": "Sure?"}]},
            ],
        }
    )
    assert chat["messages"] == [
        {"role": "system", "content": "Rules."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            ],
        },
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Sure?"},
    ]


def test_tools_function_calls_and_outputs_round_trip() -> None:
    chat = to_canonical(
        {
            "model": "llama3",
            "tools": [
                {
                    "type": "function",
                    "name": "weather",
                    "description": "Weather in a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                    "strict": True,
                },
                {"type": "function", "name": "time"},
            ],
            "tool_choice": {"type": "function", "name": "weather"},
            "parallel_tool_calls": False,
            "input": [
                {"role": "user", "content": "Weather and time in Paris?"},
                {"type": "message", "role": "assistant", "content": "Checking."},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "time", "arguments": ""},
                {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [
                        {"type": "input_text", "text": "12:00"},
                        {"type": "input_image", "image_url": "https://x/clock.png"},
                    ],
                },
                {"type": "function_call", "call_id": "c3", "name": "time", "arguments": "{}"},
            ],
        }
    )
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "time"}},
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert chat["parallel_tool_calls"] is False

    def call(cid: str, name: str, args: str) -> dict[str, Any]:
        return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}

    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [call("c1", "weather", "{}"), call("c2", "time", "")],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "12:00"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://x/clock.png"}}],
        },
        {"role": "assistant", "content": None, "tool_calls": [call("c3", "time", "{}")]},
    ]
    msgspec.convert(chat, ChatRequest)


def test_text_format_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    chat = to_canonical({"model": "m", "input": "x", "text": {"format": fmt}})
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }
    chat = to_canonical({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}})
    assert chat["response_format"] == {"type": "json_object"}
    assert "response_format" not in to_canonical(
        {"model": "m", "input": "x", "text": {"format": {"type": "text"}}}
    )


def test_previous_conversation_goes_before_the_input_and_instructions_are_not_carried() -> None:
    first = parse(request(input="Pick a number.", instructions="Old rules."), "r1")
    render(first, completion("Seven."))
    stored = record(first, CALLER, retention_days=30)
    assert stored is not None
    history = stored.input_items + msgspec.to_builtins(stored.response)["output"]

    body = request(input="Double it.", previous_response_id="resp_r1", instructions="New.")
    second = parse(body, "r2")
    assert responses.previous_response_id(second) == "resp_r1"
    assert second.body["messages"] == [
        {"role": "system", "content": "New."},
        {"role": "user", "content": "Double it."},
    ]
    with_history(second, history)
    assert second.body["messages"] == [
        {"role": "system", "content": "New."},
        {"role": "user", "content": "Pick a number."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "Double it."},
    ]
    assert second.params.messages[1].content == "Pick a number."
    assert parse(body, "r3", history).body == second.body


def test_function_calls_from_a_stored_output_continue_with_their_results() -> None:
    first = parse(request(input="Weather?", tools=[{"type": "function", "name": "w"}]), "r1")
    calls = [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]
    render(first, completion(None, calls, "tool_calls"))
    stored = record(first, NO_TENANT, retention_days=None)
    assert stored is not None and stored.expires_at is None
    assert (stored.owner, stored.tenant_id, stored.key_id) == ("jwt:alice", None, None)
    output = [{"type": "function_call_output", "call_id": "call_1", "output": "Rain"}]
    chat = to_canonical(
        {"model": "m", "input": output, "tools": [{"type": "function", "name": "w"}]},
        stored.input_items + msgspec.to_builtins(stored.response)["output"],
    )
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "tool"]
    assert chat["messages"][1]["tool_calls"] == calls
    msgspec.convert(chat, ChatRequest)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": 3}, "input"),
        ({"model": "m", "input": ["hi"]}, "input[0]"),
        ({"model": "m", "input": [{"content": "hi"}]}, "input[0].type"),
        ({"model": "m", "input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].image_url",
        ),
        (
            {
                "model": "m",
                "input": [
                    {"role": "system", "content": [{"type": "input_image", "image_url": "u"}]}
                ],
            },
            "input[0].content[0]",
        ),
        ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
        (
            {"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]},
            "input[0].output",
        ),
        ({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"model": "m", "input": "x", "temperature": 3}, "temperature"),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": "x", "metadata": {"k": 1}}, "metadata[...]"),
        ({"model": "m", "input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(json.dumps(body).encode(), "r")
    assert caught.value.param == param, caught.value.message
    assert caught.value.message.startswith(param)


@pytest.mark.parametrize("body", [b"", b"[]", b"{", b'"x"'])
def test_bodies_that_are_not_json_objects_are_invalid(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        parse(body, "r")


# -- complete answers ------------------------------------------------------------


def test_a_complete_answer_is_a_valid_response_the_sdk_reads() -> None:
    body = request(input="Hi", instructions="Be brief.", metadata={"k": "v"}, max_output_tokens=9)
    call = parse(body, "req1")
    usage = {
        "prompt_tokens": 11,
        "completion_tokens": 5,
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    answer = render(call, completion("Hello!", usage=usage))
    sdk = CannedOpenAI(answer)
    response = sdk.client.responses.create(model="llama3", input="Hi")
    assert isinstance(response, Response)
    assert response.id == "resp_req1" and response.status == "completed"
    assert response.output_text == "Hello!"
    assert response.instructions == "Be brief." and response.metadata == {"k": "v"}
    assert response.max_output_tokens == 9 and response.store is True
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 5)
    assert response.usage.total_tokens == 16
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert response.usage.output_tokens_details.reasoning_tokens == 2
    assert sdk.sent == [{"model": "llama3", "input": "Hi"}]


def test_tool_calls_are_function_call_items() -> None:
    call = parse(request(input="Weather?", tools=[{"type": "function", "name": "w"}]), "req1")
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "w", "arguments": '{"c":1}'}},
        {"type": "function", "function": {"name": "w", "arguments": {"c": 2}}},
    ]
    response = Response.model_validate_json(render(call, completion("Let me see.", calls)))
    kinds = [(item.type, getattr(item, "id", None)) for item in response.output]
    assert kinds == [
        ("message", "msg_req1_0"),
        ("function_call", "fc_req1_1"),
        ("function_call", "fc_req1_2"),
    ]
    first, second = response.output[1], response.output[2]
    assert first.type == "function_call" and second.type == "function_call"
    assert (first.call_id, first.name, first.arguments) == ("call_a", "w", '{"c":1}')
    assert (second.call_id, json.loads(second.arguments)) == ("call_req1_1", {"c": 2})
    assert response.tools[0].type == "function" and response.tools[0].name == "w"


@pytest.mark.parametrize(
    ("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_a_cut_answer_is_incomplete(finish: str, reason: str) -> None:
    call = parse(request(input="Hi"), "req1")
    response = Response.model_validate_json(render(call, completion("Hel", finish=finish)))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == reason
    assert response.output[0].type == "message" and response.output[0].status == "incomplete"


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
@settings(max_examples=150, deadline=None)
def test_any_upstream_body_renders_a_valid_response(body: Any) -> None:
    call = parse(request(input="Hi"), "req1")
    Response.model_validate_json(
        render(call, body if isinstance(body, dict) else {"choices": body})
    )


# -- streams ---------------------------------------------------------------------


def test_a_text_stream_is_the_sdks_event_sequence_and_accumulates() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo!"}),
        chunk(finish="stop"),
        usage_chunk(11, 2, cached=3),
    ]
    sse = relay(request(input="Hi", stream=True), chunks)
    assert [e.type for e in events(sse)] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    sdk = CannedOpenAI(sse, stream=True)
    with sdk.client.responses.stream(model="llama3", input="Hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["Hel", "lo!"]
    assert final.output_text == "Hello!" and final.status == "completed"
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 2)
    assert final.usage.input_tokens_details.cached_tokens == 3
    assert sdk.sent[0]["stream"] is True


def test_a_function_call_stream_with_fragmented_arguments() -> None:
    chunks = [
        chunk({"content": "Checking."}),
        chunk(tool_delta(0, "", call_id="call_1")),  # name comes later
        chunk(tool_delta(0, '{"ci', name="weather")),
        chunk(tool_delta(1, '{"x"', call_id="call_2", name="time")),
        chunk(tool_delta(0, 'ty": "Paris"}')),
        chunk(tool_delta(1, ": 1}")),
        chunk(finish="tool_calls"),
        usage_chunk(20, 9),
    ]
    body = request(input="Weather?", stream=True, tools=[{"type": "function", "name": "weather"}])
    sse = relay(body, chunks)
    found = events(sse)
    added = [e.item for e in found if e.type == "response.output_item.added"]
    assert [(i.type, i.id) for i in added] == [
        ("message", "msg_req1_0"),
        ("function_call", "fc_req1_1"),
        ("function_call", "fc_req1_2"),
    ]
    done = {
        e.item_id: e.arguments for e in found if e.type == "response.function_call_arguments.done"
    }
    assert done == {"fc_req1_1": '{"city": "Paris"}', "fc_req1_2": '{"x": 1}'}
    sdk = CannedOpenAI(sse, stream=True)
    with sdk.client.responses.stream(model="llama3", input="Weather?") as stream:
        snapshots = {
            e.item_id: e.snapshot
            for e in stream
            if e.type == "response.function_call_arguments.delta"
        }
        final = stream.get_final_response()
    assert snapshots == {"fc_req1_1": '{"city": "Paris"}', "fc_req1_2": '{"x": 1}'}
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("call_1", "weather", {"city": "Paris"}),
        ("call_2", "time", {"x": 1}),
    ]
    assert final.output_text == "Checking."


def test_the_stream_and_the_complete_answer_agree() -> None:
    body = request(input="Weather?", tools=[{"type": "function", "name": "w"}])
    streamed_call = parse(body, "req1")
    stream = ResponsesStream.of(streamed_call)
    assert ResponsesStream.of(streamed_call) is stream
    sse = b"".join(
        stream.event(c)
        for c in [
            chunk({"content": "On it."}),
            chunk(tool_delta(0, '{"a": 1}', call_id="call_9", name="w")),
            chunk(finish="length"),
            usage_chunk(3, 4),
        ]
    )
    last = events(sse + stream.end())[-1]
    assert last.type == "response.incomplete"
    complete_call = parse(body, "req1")
    calls = [
        {"id": "call_9", "type": "function", "function": {"name": "w", "arguments": '{"a": 1}'}}
    ]
    render(
        complete_call,
        completion("On it.", calls, "length", usage={"prompt_tokens": 3, "completion_tokens": 4}),
    )
    streamed = responses.pending(streamed_call).response
    complete = responses.pending(complete_call).response
    assert streamed is not None and complete is not None
    assert streamed.output == complete.output
    assert streamed.usage == complete.usage and streamed.status == "incomplete"
    assert last.response.model_dump(exclude_none=True) == Response.model_validate(
        msgspec.to_builtins(streamed)
    ).model_dump(exclude_none=True)


def test_an_empty_stream_still_completes() -> None:
    found = events(relay(request(input="Hi", stream=True), []))
    assert [e.type for e in found] == [
        "response.created",
        "response.in_progress",
        "response.completed",
    ]
    assert found[-1].response.output == [] and found[-1].response.usage is None


def test_a_failed_stream_ends_with_error_and_response_failed_and_is_not_stored() -> None:
    call = parse(request(input="Hi", stream=True), "req1")
    stream = ResponsesStream.of(call)
    head = stream.event(chunk({"content": "Hel"}))
    tail = stream.error_event(UpstreamConnectError("The upstream went away."))
    found = events(head + tail)
    assert [e.type for e in found[-2:]] == ["error", "response.failed"]
    assert found[-2].message == "The upstream went away."
    assert found[-1].response.status == "failed"
    assert found[-1].response.error is not None
    assert record(call, CALLER, retention_days=30) is None


@given(
    st.lists(
        st.one_of(
            st.text(max_size=5).map(lambda t: chunk({"content": t})),
            st.tuples(
                st.integers(0, 2),
                st.text(max_size=5),
                st.none() | st.sampled_from(["f", "g"]),
                st.none() | st.sampled_from(["id1", "id2"]),
            ).map(lambda t: chunk(tool_delta(t[0], t[1], call_id=t[3], name=t[2]))),
            st.sampled_from(["stop", "length", "tool_calls"]).map(lambda f: chunk(finish=f)),
            st.integers(0, 50).map(lambda n: usage_chunk(n, n)),
        ),
        max_size=12,
    )
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_chunk_sequence_is_a_valid_event_sequence_the_sdk_accumulates(
    chunks: list[dict[str, Any]],
) -> None:
    sse = relay(request(input="Hi", stream=True), chunks)
    found = events(sse)
    assert found[-1].type in ("response.completed", "response.incomplete")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert Response.model_validate(found[-1].response.model_dump()).output_text == text
    sdk = CannedOpenAI(sse, stream=True)
    with sdk.client.responses.stream(model="llama3", input="Hi") as stream:
        ends = [e.response for e in stream if e.type == found[-1].type]
    assert [r.output_text for r in ends] == [text]


# -- errors and storage helpers ----------------------------------------------------


def test_errors_have_openais_shape() -> None:
    error = InvalidRequest("input: Field required", param="input")
    assert json.loads(error_body(error, "req1")) == {
        "error": {
            "message": "input: Field required",
            "type": "invalid_request_error",
            "param": "input",
            "code": None,
        }
    }
    missing = previous_not_found("resp_x")
    assert missing.status == 404 and missing.code == "previous_response_not_found"
    assert json.loads(error_body(missing))["error"]["param"] == "previous_response_id"
    sdk = CannedOpenAI(error_body(not_found("resp_y")), status=404)
    with pytest.raises(openai.NotFoundError, match="resp_y"):
        sdk.client.responses.retrieve("resp_y")
    sdk = CannedOpenAI(deleted_body("resp_y"))
    sdk.client.responses.delete("resp_y")


def test_a_response_is_recorded_unless_the_request_or_the_settings_say_not_to() -> None:
    call = parse(request(input="Hi", store=False), "req1")
    render(call, completion())
    assert record(call, CALLER, retention_days=30) is None
    call = parse(request(input="Hi"), "req2")
    assert record(call, CALLER, retention_days=30) is None  # not answered yet
    render(call, completion())
    assert record(call, CALLER, retention_days=30, enabled=False) is None
    saved = record(call, CALLER, retention_days=30)
    assert saved is not None
    assert (saved.id, saved.owner, saved.tenant_id, saved.key_id, saved.model) == (
        "resp_req2",
        "ten_a",
        "ten_a",
        "key_1",
        "llama3",
    )
    assert json.loads(responses.stored_body(saved)) == msgspec.to_builtins(saved.response)
    assert saved.expires_at is not None and (saved.expires_at - saved.created_at).days == 30
    assert saved.input_items == [{"type": "message", "role": "user", "content": "Hi"}]
    [message] = msgspec.to_builtins(saved.response)["output"]  # stored inside the Response object
    assert message["role"] == "assistant" and message["content"][0]["text"] == "Hello!"


# -- generated requests ----------------------------------------------------------------

_text = st.text(max_size=20)
_part = st.one_of(
    st.builds(lambda t: {"type": "input_text", "text": t}, _text),
    st.builds(lambda u: {"type": "input_image", "image_url": "https://x/" + u}, _text),
)
_message = st.one_of(
    st.builds(
        lambda r, c: {"role": r, "content": c},
        st.sampled_from(["user", "assistant", "system", "developer"]),
        _text,
    ),
    st.builds(
        lambda c: {"type": "message", "role": "user", "content": c}, st.lists(_part, max_size=3)
    ),
    st.builds(
        lambda t: {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": t, "annotations": []}],
        },
        _text,
    ),
)
_call_id = st.sampled_from(["c1", "c2", "c3"])
_item = st.one_of(
    _message,
    st.builds(
        lambda c, n, a: {"type": "function_call", "call_id": c, "name": n, "arguments": a},
        _call_id,
        st.sampled_from(["f", "g"]),
        _text,
    ),
    st.builds(
        lambda c, o: {"type": "function_call_output", "call_id": c, "output": o}, _call_id, _text
    ),
    st.just({"type": "reasoning", "summary": []}),
)
_tool = st.builds(
    lambda n, d: {
        "type": "function",
        "name": n,
        **({"description": d} if d else {}),
        "parameters": {"type": "object"},
    },
    st.sampled_from(["f", "g"]),
    st.none() | _text,
)
_valid = st.fixed_dictionaries(
    {
        "model": st.text(min_size=1, max_size=30),
        "input": st.one_of(
            _text,
            st.lists(_item, min_size=1, max_size=8).filter(
                lambda items: any("role" in i or i["type"] != "reasoning" for i in items)
            ),
        ),
    },
    optional={
        "instructions": _text,
        "tools": st.lists(_tool, max_size=3),
        "tool_choice": st.sampled_from(
            ["auto", "none", "required", {"type": "function", "name": "f"}]
        ),
        "parallel_tool_calls": st.booleans(),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_output_tokens": st.integers(1, 2**31 - 1),
        "stream": st.booleans(),
        "store": st.booleans(),
        "user": _text,
        "metadata": st.dictionaries(st.text(max_size=10), _text, max_size=4),
        "text": st.sampled_from(
            [{"format": {"type": "text"}}, {"format": {"type": "json_object"}}]
        ),
        "reasoning": st.just({"effort": "low"}),
    },
)


@given(_valid)
@settings(max_examples=200, deadline=None)
def test_generated_valid_requests_translate_to_a_valid_chat_request(body: dict[str, Any]) -> None:
    try:
        call = parse(json.dumps(body).encode(), "r")
    except InvalidRequest as exc:
        # Only a conversation with nothing but system messages is refused.
        assert exc.param == "input", exc.message
        return
    msgspec.convert(call.body, ChatRequest)
    assert call.stream is bool(body.get("stream"))
    assert call.model == body["model"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda c: (
        st.lists(c, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "role",
                    "content",
                    "text",
                    "input",
                    "model",
                    "call_id",
                    "name",
                    "arguments",
                    "output",
                    "tools",
                    "image_url",
                    "x",
                ]
            ),
            c,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@given(
    st.one_of(
        _json,
        st.fixed_dictionaries(
            {"model": st.just("m"), "input": _json},
            optional={"tools": _json, "text": _json, "tool_choice": _json, "metadata": _json},
        ),
    )
)
@settings(max_examples=200, deadline=None)
def test_garbage_is_invalid_request_or_a_valid_chat_request(body: Any) -> None:
    try:
        call = parse(json.dumps(body).encode(), "r")
    except InvalidRequest:
        return
    msgspec.convert(call.body, ChatRequest)


_ARGUMENTS = st.dictionaries(
    st.text(max_size=6), st.integers() | st.text(max_size=6) | st.booleans(), max_size=3
)
_CALLS = st.lists(
    st.builds(
        lambda i, name, args: {"id": i and f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}},
        st.none() | st.integers(1, 10**6),  # some upstreams give no id
        st.text(alphabet="abcdefgh_", min_size=1, max_size=10),
        _ARGUMENTS,
    ),
    max_size=3,
)  # fmt: skip
_COMPLETIONS = st.builds(
    lambda text, refusal, calls, finish, prompt, out: {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "llama3",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": refusal, **({"tool_calls": calls} if calls else {})}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out},
    },
    st.none() | st.text(max_size=20), st.none() | st.text(max_size=9), _CALLS,
    st.sampled_from(["stop", "length", "tool_calls", "content_filter"]),
    st.integers(0, 10**6), st.integers(0, 10**6),
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(body=_COMPLETIONS)
def test_a_cached_answer_replayed_as_a_stream_is_the_same_response(body: dict[str, Any]) -> None:
    """A stream of ``split(body)`` (how the cache replays it) accumulates, in the SDK, to
    the Response the same answer gives unstreamed."""
    streamed = relay(request(input="Hi", stream=True), split(body, "chat"))
    sdk = CannedOpenAI(streamed, stream=True)
    with sdk.client.responses.stream(model="llama3", input="Hi") as stream:
        ends = [
            e.response for e in stream if e.type in ("response.completed", "response.incomplete")
        ]
    assert len(ends) == 1
    final = ends[0]
    whole = Response.model_validate_json(render(parse(request(input="Hi"), "req1"), body))
    last = events(streamed)[-1].response
    assert last.model_dump(exclude={"created_at"}) == whole.model_dump(exclude={"created_at"})
    assert [i.model_dump(exclude_none=True) for i in final.output] == [
        i.model_dump(exclude_none=True) for i in whole.output
    ]


@given(st.binary(max_size=200))
@settings(max_examples=100, deadline=None)
def test_any_bytes_are_invalid_request_or_a_valid_chat_request(body: bytes) -> None:
    try:
        call = parse(body, "r")
    except InvalidRequest:
        return
    msgspec.convert(call.body, ChatRequest)
