"""Cache keys: equal for requests with the same answer, different otherwise."""

from __future__ import annotations

import msgspec

from relaygate.cache.keys import cache_key, tag

BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 1,
    "max_tokens": 20,
}


def key(body: dict, *, kind: str = "chat", model: str = "m", scope: str = "t1") -> str:
    return cache_key(kind, model, scope, body)


def test_key_order_and_whitespace_do_not_matter() -> None:
    reordered = msgspec.json.decode(
        b'{ "max_tokens" : 20, "temperature": 1,\n "messages": [{"content": "hi", "role": "user"}],'
        b' "model": "m"}'
    )
    assert key(BODY) == key(reordered)
    assert len(key(BODY)) == 64 and int(key(BODY), 16) >= 0


def test_same_number_written_two_ways_is_the_same_setting() -> None:
    assert key(BODY) == key({**BODY, "temperature": 1.0})
    assert key({**BODY, "max_tokens": None, "max_completion_tokens": 20}) == key(BODY)


def test_delivery_fields_do_not_change_the_key() -> None:
    delivered = {**BODY, "stream": True, "stream_options": {"include_usage": True}, "user": "u"}
    assert key(delivered) == key(BODY)
    assert key({**BODY, "stop": None}) == key(BODY)


def test_everything_that_changes_the_answer_changes_the_key() -> None:
    variants = [
        {**BODY, "messages": [{"role": "user", "content": "hi!"}]},
        {**BODY, "temperature": 0.5},
        {**BODY, "top_p": 0.9},
        {**BODY, "max_tokens": 21},
        {**BODY, "stop": ["x"]},
        {**BODY, "seed": 1},
        {**BODY, "n": 2},
        {**BODY, "tools": [{"type": "function", "function": {"name": "f"}}]},
        {**BODY, "tool_choice": "none"},
        {**BODY, "response_format": {"type": "json_object"}},
        {**BODY, "top_k": 20},  # an upstream's own field changes the answer too
    ]
    keys = {key(v) for v in variants}
    assert len(keys) == len(variants) and key(BODY) not in keys


def test_scope_model_and_kind_separate_entries() -> None:
    assert key(BODY, scope="t2") != key(BODY)
    assert key(BODY, model="other") != key(BODY)
    assert key(BODY, kind="completion") != key(BODY)


def test_the_key_derivation_is_pinned() -> None:
    """Keys outlive a process (Redis, the database tier): a change to how they are derived
    must be deliberate, and this value updated with it (old entries then stop matching)."""
    assert key(BODY) == "4521c364a100d3c39640aa0c0eda26abcda7795d3e55877d84cdebd4f9772a7f"
    assert tag("acme") == "822b33ad87c148a0" and len(tag("acme")) == 16
