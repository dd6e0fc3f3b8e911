"""Entries: encoded and decoded, and served as a body or as a stream whichever was stored."""

from __future__ import annotations

from relaygate.cache.entry import FORMAT, Entry, assemble, decode_entry, encode_entry, split

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
BASE = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
CHUNKS = [
    {**BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {**BASE, "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
    {**BASE, "choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": None}]},
    {
        **BASE,
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {"index": 0, "id": "call_1", "type": "function",
                         "function": {"name": "f", "arguments": '{"a"'}},
                    ]
                },
            }
        ],
    },
    {**BASE, "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": ": 1}"}}]}}]},
    {**BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {**BASE, "choices": [], "usage": USAGE},
]  # fmt: skip


def entry(**fields: object) -> Entry:
    values: dict = {"body": None, "chunks": None, **fields}
    return Entry(FORMAT, "chat", "m", "t", 10.0, 20.0, "openai", USAGE, **values)


def test_a_stream_assembles_into_the_body_a_call_would_return() -> None:
    body = assemble(CHUNKS, "chat")
    assert body["object"] == "chat.completion" and body["id"] == "c1" and body["usage"] == USAGE
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Hello there"
    call = choice["message"]["tool_calls"][0]
    assert call["id"] == "call_1" and call["function"] == {"name": "f", "arguments": '{"a": 1}'}


def test_a_body_splits_into_a_stream_that_assembles_back() -> None:
    body = assemble(CHUNKS, "chat")
    chunks = split(body, "chat")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == USAGE
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert assemble(chunks, "chat") == body


def test_text_completions_split_and_assemble() -> None:
    body = {
        "id": "t", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "text": "abc", "finish_reason": "length"}], "usage": USAGE,
    }  # fmt: skip
    assert assemble(split(body, "completion"), "completion") == body


def test_encoding_round_trips_keeping_chunk_order_and_keys() -> None:
    stored = entry(chunks=CHUNKS)
    again = decode_entry(encode_entry(stored))
    assert again == stored
    assert again is not None and [list(c) for c in again.chunks or []] == [list(c) for c in CHUNKS]
    assert again.stream_chunks() is again.chunks
    assert entry(body={"x": 1}).response() == {"x": 1}


def test_corrupt_or_foreign_data_is_no_entry() -> None:
    data = encode_entry(entry(chunks=CHUNKS))
    assert decode_entry(data[:-7]) is None
    assert decode_entry(b"\x00garbage") is None
    assert decode_entry(b"") is None
    future = encode_entry(Entry(FORMAT + 1, "chat", "m", "t", 1, 2, None, None, {"x": 1}))
    assert decode_entry(future) is None
    empty = encode_entry(Entry(FORMAT, "chat", "m", "t", 1, 2, None, None))
    assert decode_entry(empty) is None
