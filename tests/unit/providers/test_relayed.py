"""An OpenAI-compatible answer relayed as its bytes (providers/base.py ``relayed``).

The fast path must be exactly the slow one: for any answer, the client gets the body
that decoding it, setting ``model`` and encoding it again would give (the same keys,
in the same order, the same values), and the same usage. Bytes that are not JSON, not
an object, or not UTF-8 are never relayed: the slow path answers them with its 502.
A JSON number beyond a double (``1e999``) is JSON: it is relayed as it came, where the
slow path's decoder would have refused it.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relaygate.providers.base import relayed

# JSON values as an upstream may send them: any text (escapes, non-ASCII, "model" as a
# key at any depth), integers JSON parsers agree on, finite floats.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
KEYS = st.sampled_from(["model", "usage", "choices", "data", "id", "x"]) | st.text(max_size=8)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)
USAGE = (
    st.fixed_dictionaries(
        {"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**6)}
    )
    | VALUES
)
ANSWERS = st.dictionaries(
    KEYS.filter(lambda k: k != "error"),
    VALUES,
    max_size=6,
).flatmap(
    lambda body: st.fixed_dictionaries(
        {},
        optional={"model": SCALARS, "usage": USAGE},
    ).map(lambda extra: {**body, **extra})
)
# how a server may write it: compact or spaced, \u escapes or not, indented
STYLES = st.sampled_from(
    [
        {"separators": (",", ":"), "ensure_ascii": False},
        {"separators": (", ", ": "), "ensure_ascii": True},
        {"indent": 2, "ensure_ascii": False},
    ]
)


def slow_path(raw: bytes, model: str) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.json.decode(raw)
    body["model"] = model
    return body


@settings(max_examples=400, deadline=None)
@given(answer=ANSWERS, style=STYLES, model=st.text())
@example(answer={"model": "up", "choices": [{"model": "up"}]}, style={}, model="public")
@example(answer={"id": "x"}, style={}, model="public")  # no model: added at the end
def test_a_relayed_answer_is_what_decoding_and_encoding_it_would_send(
    answer: dict[str, Any], style: dict[str, Any], model: str
) -> None:
    raw = json.dumps(answer, **style).encode()
    result = relayed(raw, model)
    assert result is not None  # any JSON object without an error is relayed
    expected = slow_path(raw, model)
    sent = msgspec.json.decode(result.raw)
    assert sent == expected
    assert list(sent) == list(expected)  # the upstream's key order, model where it was
    usage = answer.get("usage")
    assert result.usage == (usage if isinstance(usage, dict) else None)
    assert result.upstream_model == answer.get("model")
    assert result.body() == expected


@given(answer=ANSWERS, error=VALUES, model=st.text())
def test_an_answer_carrying_an_error_is_left_to_the_slow_path(
    answer: dict[str, Any], error: Any, model: str
) -> None:
    """The slow path decides whether it is an error (it is, unless choices or data came
    with it) and says so in the gateway's own words."""
    raw = json.dumps({**answer, "error": error}).encode()
    assert relayed(raw, model) is None


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A JSON answer with bytes changed, cut or inserted, or no JSON at all."""
    raw = bytearray(json.dumps(draw(ANSWERS), ensure_ascii=draw(st.booleans())).encode())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        what = draw(st.sampled_from(["replace", "insert", "cut"]))
        byte = draw(
            st.sampled_from([b"\xff", b"\xc3", b"\x00", b'"', b"\\", b"{", b"]", b",", b"x"])
        )
        if what == "cut":
            del raw[at:]
        elif what == "insert" or at == len(raw):
            raw[at:at] = byte
        else:
            raw[at : at + 1] = byte
    return bytes(raw)


@settings(max_examples=500, deadline=None)
@given(raw=damaged() | st.binary(max_size=64))
@example(raw=b'{"a":"\xff\xfe","model":"x"}')  # skipped text is not checked by msgspec
@example(raw=b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}")
@example(raw=b'[{"model":"x"}]')
@example(raw=b'{"a":"\\ud800x"}')
@example(raw=b'{"a":1e999,"b":123456789012345678901234567890}')  # JSON, relayed as it is
def test_only_json_objects_are_relayed(raw: bytes) -> None:
    result = relayed(raw, "public")
    if result is None:
        return
    # Python's parser as the reference: it raises on anything that is not JSON
    expected = json.loads(raw.decode("utf-8"))
    assert isinstance(expected, dict)
    assert json.loads(result.raw) == {**expected, "model": "public"}
