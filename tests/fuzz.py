"""Generated request bodies for property tests: a valid body with one value anywhere in it
replaced by another JSON value (wrong types at every depth, extremes, odd unicode), or by
raw JSON text no encoder writes (NaN, Infinity, 1e999, unpaired surrogate escapes).

And the check every answer must pass: never a 5xx, every error in its route's shape.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

# One running gateway per module, ~100 examples per route: seconds per test.
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Raw JSON text put in place of a value after encoding (no encoder writes these).
RAW_TOKENS = [
    b"NaN",
    b"-NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999",
    b"-1e999",
    b"1e-999",
    b"123456789012345678901234567890123456789",
    b"-0",
    b"-0.0",
    b'"\\ud800"',
    b'"\\udfff"',
    b'"a\\ud800b"',
    b'"\\ud800\\u0041"',
    b'"\\udc00\\ud800"',
    b'"\\u0000"',
]
_RAW_MARK = "\x00raw{}\x00"

EXTREMES = [
    0,
    -1,
    -0.0,
    2**31,
    2**31 - 1,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    2**64,
    10**30,
    -(10**30),
    1e308,
    -1e308,
    1.7976931348623157e308,
    5e-324,
    1e15,
    1e9,
    1e9 + 1,
    10**15,
    10**15 + 1,
]
# NUL, right-to-left override, BOM, astral, combining, line separator, noncharacter
ODD_TEXT = ["", "\x00", "a\x00b", "\u202eevil", "\ufeff", "😀" * 3, "e\u0301", "\u2028", "\uffff"]

text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(EXTREMES),
    text,
    st.sampled_from(ODD_TEXT),
    st.sampled_from([_RAW_MARK.format(i) for i in range(len(RAW_TOKENS))]),
)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)


# half the time one of the values most likely to break something, else any JSON value
_INTERESTING = [
    None, True, False, "", [], {}, [None], {"": None}, *EXTREMES, *ODD_TEXT,
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1970-01-01", "2099-02-30T00:00:00Z",
    *(_RAW_MARK.format(i) for i in range(len(RAW_TOKENS))),
]  # fmt: skip
replacements = st.one_of(st.sampled_from(_INTERESTING), json_values)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in ``value`` a value sits (the root's children and below)."""
    found: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append((*prefix, key))
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.append((*prefix, index))
            found += _paths(item, (*prefix, index))
    return found


# One of each JSON type, the extremes and raw tokens: put in every place of a body in turn.
SWEEP: list[Any] = [
    None, True, 10**30, 1e308, "a\x00b", [], {}, _RAW_MARK.format(10),
]  # fmt: skip


def sweep(valid: dict[str, Any]) -> list[bytes]:
    """``valid`` with each of its values in turn replaced by each value of SWEEP."""
    bodies = []
    for path in _paths(valid):
        for value in SWEEP:
            body = copy.deepcopy(valid)
            parent: Any = body
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = value
            bodies.append(_encode(body))
    return bodies


def _encode(body: Any) -> bytes:
    raw = msgspec.json.encode(body)
    for index, token in enumerate(RAW_TOKENS):
        raw = raw.replace(msgspec.json.encode(_RAW_MARK.format(index)), token)
    return raw


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    """``valid`` with one value replaced, one new field added or one removed, as JSON text."""
    body = copy.deepcopy(valid)
    places = _paths(body)
    action = draw(st.sampled_from(["replace", "replace", "replace", "add", "remove"]))
    path = draw(st.sampled_from(places))
    parent: Any = body
    for step in path[:-1]:
        parent = parent[step]
    if action == "replace":
        parent[path[-1]] = draw(replacements)
    elif action == "remove":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(text)] = draw(json_values)
    else:
        parent.append(draw(json_values))
    return _encode(body)


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    key: str | None = None,
) -> tuple[int, Mapping[str, str], bytes]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with session.request(method, url, data=body, headers=headers) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


def check_answer(path: str, status: int, headers: Mapping[str, str], body: bytes) -> None:
    """No 5xx; an error is JSON in the shape of the API ``path`` belongs to, with a request id."""
    assert status < 500, (path, status, body[:500])
    if status < 400:
        return
    assert headers.get("Content-Type", "").startswith("application/json"), headers
    assert headers.get("X-Request-Id"), headers
    check_shape(path, msgspec.json.decode(body))


def check_shape(path: str, error: Any) -> None:
    """Ollama's ``{"error": "..."}`` under /api/ (but seed 003's /api/keys and /api/stats),
    OpenAI's ``{"error": {"message", "type", "param", "code"}}`` everywhere else."""
    seed = path in ("/api/keys", "/api/stats") or path.startswith(("/api/keys/", "/api/ai/"))
    if (path == "/api" or path.startswith("/api/")) and not seed:
        assert set(error) == {"error"} and isinstance(error["error"], str), error
        assert error["error"] and "Traceback" not in error["error"]
        return
    assert set(error) == {"error"}, error
    assert set(error["error"]) == {"message", "type", "param", "code"}, error
    assert isinstance(error["error"]["message"], str) and error["error"]["message"]
    assert "Traceback" not in error["error"]["message"]
