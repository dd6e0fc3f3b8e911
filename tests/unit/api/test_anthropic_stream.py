"""OpenAI chat chunks as Anthropic stream events, read by the official anthropic client."""

from __future__ import annotations

import copy
import json
from typing import Any

import anthropic
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from relaygate.api.anthropic import from_canonical, parse
from relaygate.api.anthropic_stream import AnthropicStream
from relaygate.cache.entry import split
from relaygate.errors import UpstreamConnectError
from tests.unit.api.sdk import CannedAnthropic

RAW_EVENT: TypeAdapter[Any] = TypeAdapter(anthropic.types.RawMessageStreamEvent)


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "llama3",
        "choices": [choice],
        **extra,
    }


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage}


def tool_delta(
    index: int, arguments: str, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call.update(id=call_id, type="function")
    if name is not None:
        call["function"]["name"] = name
    return {"tool_calls": [call]}


def relay(chunks: list[dict[str, Any]], **options: Any) -> bytes:
    stream = AnthropicStream("llama3", "msg_req1", **options)
    return b"".join(stream.event(c) for c in chunks) + stream.end()


def events(body: bytes) -> list[dict[str, Any]]:
    """Each event's data, checked: named after its type, and (ping aside) one of the SDK's types."""
    out = []
    for block in body.decode().split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {data['type']}"
        if data["type"] != "ping":
            RAW_EVENT.validate_python(data)
        out.append(data)
    assert body.endswith(b"\n\n")
    return out


def sdk_final(body: bytes) -> dict[str, Any]:
    """The message the official client accumulates from the stream."""
    canned = CannedAnthropic()
    canned.answer(body, stream=True)
    with canned.client.messages.stream(
        model="llama3", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        message = stream.get_final_message()
    return message.model_dump(
        exclude_none=True, exclude={"content": {"__all__": {"parsed_output"}}}
    )


def test_text_only() -> None:
    body = relay([
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo!"}),
        chunk(finish="stop"),
        usage_chunk(9, 2),
    ])  # fmt: skip
    assert [e["type"] for e in events(body)] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert sdk_final(body) == {
        "id": "msg_req1",
        "type": "message",
        "role": "assistant",
        "model": "llama3",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 9, "output_tokens": 2},
    }


def test_text_then_a_tool_call_with_fragmented_arguments() -> None:
    body = relay([
        chunk({"role": "assistant", "content": "Let me check."}),
        chunk(tool_delta(0, "", "call_7", "get_weather")),
        chunk(tool_delta(0, '{"ci')),
        chunk(tool_delta(0, 'ty": "Pa')),
        chunk(tool_delta(0, 'ris", "days": [1, ')),
        chunk(tool_delta(0, "2]}")),
        chunk(finish="tool_calls"),
        usage_chunk(30, 17),
    ])  # fmt: skip
    sent = events(body)
    assert [(e["type"], e.get("index")) for e in sent if e["type"].startswith("content_block_")] == [
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), *[("content_block_delta", 1)] * 4, ("content_block_stop", 1),
    ]  # fmt: skip
    assert sent[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"input_tokens": 30, "output_tokens": 17},
    }
    final = sdk_final(body)
    assert final["content"] == [
        {"type": "text", "text": "Let me check."},
        {
            "type": "tool_use",
            "id": "call_7",
            "name": "get_weather",
            "input": {"city": "Paris", "days": [1, 2]},
        },
    ]
    assert final["stop_reason"] == "tool_use"


def test_two_tool_calls() -> None:
    body = relay([
        chunk(tool_delta(0, '{"city": ', "call_a", "get_weather")),
        chunk(tool_delta(0, '"Oslo"}')),
        chunk(tool_delta(1, "", "call_b", "get_time")),
        chunk(tool_delta(1, '{"tz": "CET"}')),
        chunk(finish="tool_calls"),
        usage_chunk(5, 6),
    ])  # fmt: skip
    final = sdk_final(body)
    assert final["content"] == [
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {"tz": "CET"}},
    ]
    assert (final["stop_reason"], final["usage"]) == (
        "tool_use",
        {"input_tokens": 5, "output_tokens": 6},
    )


def test_a_tool_call_whose_name_comes_later_waits_for_it() -> None:
    body = relay([
        chunk(tool_delta(0, '{"q":', "call_x")),
        chunk(tool_delta(0, ' 1}', name="search")),
        chunk(tool_delta(1, "{}")),  # never named: started, nameless, when the stream ends
        chunk(finish="stop"),  # Ollama says "stop" after tool calls
    ])  # fmt: skip
    final = sdk_final(body)
    assert final["content"] == [
        {"type": "tool_use", "id": "call_x", "name": "search", "input": {"q": 1}},
        {"type": "tool_use", "id": "toolu_req1_1", "name": "", "input": {}},
    ]
    assert final["stop_reason"] == "tool_use"
    assert final["usage"] == {"input_tokens": 0, "output_tokens": 0}  # the upstream sent none


def test_stop_sequence_named_by_vllm() -> None:
    finish = chunk(finish="stop")
    finish["choices"][0]["stop_reason"] = "4"  # vLLM names the stop string that matched
    body = relay([chunk({"content": "1, 2, 3"}), finish], stop_sequences=["4", "five"])
    final = sdk_final(body)
    assert (final["stop_reason"], final["stop_sequence"]) == ("stop_sequence", "4")


def test_length_and_usage_known_from_the_first_chunk() -> None:
    running = {"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41}
    body = relay(
        [
            chunk({"content": "a"}, usage=running),
            chunk(finish="length", usage={**running, "completion_tokens": 8}),
        ]
    )
    start = events(body)[0]
    assert start["message"]["usage"] == {"input_tokens": 40, "output_tokens": 0}
    final = sdk_final(body)
    assert (final["stop_reason"], final["usage"]) == (
        "max_tokens",
        {"input_tokens": 40, "output_tokens": 8},
    )


def test_an_empty_stream_is_still_a_whole_message() -> None:
    stream = AnthropicStream("llama3", "msg_e", input_tokens=3)
    body = stream.end()
    assert [e["type"] for e in events(body)] == [
        "message_start",
        "ping",
        "message_delta",
        "message_stop",
    ]
    final = sdk_final(body)
    assert (final["content"], final["stop_reason"], final["usage"]) == (
        [],
        "end_turn",
        {"input_tokens": 3, "output_tokens": 0},
    )


def test_an_error_after_the_start_reaches_the_client_as_an_error_event() -> None:
    stream = AnthropicStream("llama3", "msg_f")
    body = stream.event(chunk({"content": "partial"})) + stream.error_event(
        UpstreamConnectError("upstream went away")
    )
    canned = CannedAnthropic()
    canned.answer(body, stream=True)
    with pytest.raises(anthropic.APIStatusError) as caught:
        with canned.client.messages.stream(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        ) as s:
            s.get_final_message()
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "upstream went away"},
    }


def test_one_stream_per_call_kept_on_the_call() -> None:
    call = parse(
        b'{"model": "fast", "max_tokens": 9, "stream": true, "stop_sequences": ["Z"], "messages": [{"role": "user", "content": "hi"}]}',
        "r9",
    )
    stream = AnthropicStream.of(call)
    assert AnthropicStream.of(call) is stream
    finish = chunk(finish="stop")
    finish["choices"][0]["stop_reason"] = "Z"
    body = (
        stream.event(chunk({"content": "x"}))
        + AnthropicStream.of(call).event(finish)
        + stream.end()
    )
    final = sdk_final(body)
    assert (final["id"], final["model"], final["stop_sequence"]) == ("msg_r9", "fast", "Z")


def test_chunks_are_read_never_changed() -> None:
    chunks = [
        chunk({"role": "assistant", "content": "x"}),
        chunk(tool_delta(0, "{}", "c", "f")),
        chunk(finish="tool_calls"),
        usage_chunk(1, 1),
    ]
    kept = copy.deepcopy(chunks)
    relay(chunks)
    assert chunks == kept


def test_malformed_chunks_do_not_break_the_stream() -> None:
    body = relay([
        {"choices": None}, {"choices": [None, 3]}, {"choices": [{"delta": "x"}]},
        {"choices": [{"index": 0, "delta": {"content": 5, "tool_calls": [None, {"function": 3}]}}]},
        {"choices": [{"index": 1, "delta": {"content": "other choice"}}]}, {"usage": "many"},
    ])  # fmt: skip
    assert sdk_final(body)["stop_reason"] in ("end_turn", "tool_use")


ARGUMENTS = st.dictionaries(
    st.text(max_size=6), st.integers() | st.text(max_size=6) | st.booleans(), max_size=3
)
CALLS = st.lists(
    st.builds(
        lambda i, name, args: {"id": i and f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}},
        st.none() | st.integers(1, 10**6),  # some upstreams give no id
        st.text(alphabet="abcdefgh_", min_size=1, max_size=10),
        ARGUMENTS,
    ),
    max_size=3,
)  # fmt: skip
COMPLETIONS = st.builds(
    lambda text, refusal, calls, finish, prompt, out: {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "llama3",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": refusal, **({"tool_calls": calls} if calls else {})}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out},
    },
    st.none() | st.text(max_size=20), st.none() | st.text(max_size=9), CALLS, st.sampled_from(["stop", "length", "tool_calls", "content_filter"]),
    st.integers(0, 10**6), st.integers(0, 10**6),
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(body=COMPLETIONS)
def test_a_cached_answer_replayed_as_a_stream_is_the_same_message(body: dict[str, Any]) -> None:
    """A stream of ``split(body)`` (how the cache replays) accumulates, in the SDK, to
    exactly the message the same answer gives unstreamed."""
    streamed = sdk_final(relay(split(body, "chat")))
    whole = anthropic.types.Message.model_validate(
        from_canonical(body, "llama3", message_id="msg_req1")
    )
    assert streamed == whole.model_dump(exclude_none=True)
    assert msgspec.json.decode(msgspec.json.encode(streamed)) == streamed
