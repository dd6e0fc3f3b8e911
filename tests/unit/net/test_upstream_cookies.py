"""Upstream sessions keep no cookies: one caller's answer never sets what the next sends.

Every aiohttp session to upstreams is shared by many callers (net/session.py). Whatever
``Set-Cookie`` an upstream answers with (generated here: names, values, attributes,
several at once), no later request through any of the gateway's upstream sessions, to
the same host or another path, carries a ``Cookie`` header. The upstream is reached by
a host name (``localhost``), not an IP address: aiohttp's default jar ignores cookies of
IP addresses, so only a name shows the difference, which the control test proves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.net.session import upstream_session
from relaygate.net.ssrf import SsrfPolicy, guarded_session
from relaygate.routing.catalog import new_session
from tests.fakes.cookie_server import CookieServer

SESSIONS: dict[str, Callable[[], aiohttp.ClientSession]] = {
    "configured upstream": lambda: new_session(8),
    "configured upstream with a key": lambda: new_session(8, api_key="node-key"),
    "users' own keys (BYOK)": lambda: guarded_session(SsrfPolicy(["127.0.0.0/8", "::1/128"])),
    "node agent's local server": lambda: upstream_session(aiohttp.TCPConnector()),
}

NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-",
               min_size=1, max_size=12)  # fmt: skip
VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789+/=.", max_size=24)
ATTRIBUTES = st.fixed_dictionaries(
    {},
    optional={
        "path": st.sampled_from(["/", "/v1", "/v1/chat"]),
        "domain": st.just("localhost"),
        "max_age": st.sampled_from([1, 3600, 86400 * 365]),
        "httponly": st.just(True),
        "samesite": st.sampled_from(["Lax", "Strict", "None"]),
    },
)
COOKIES = st.lists(
    st.tuples(NAME, VALUE, ATTRIBUTES), min_size=1, max_size=4, unique_by=lambda c: c[0]
)
PATHS = st.lists(st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "/", "/api/chat"]),
                 min_size=2, max_size=4)  # fmt: skip


@pytest.mark.parametrize("kind", list(SESSIONS))
@settings(max_examples=25)
@given(cookies=COOKIES, paths=PATHS)
async def test_no_request_carries_a_cookie_an_answer_set(
    kind: str, cookies: list[tuple[str, str, dict[str, Any]]], paths: list[str]
) -> None:
    async with CookieServer(cookies) as upstream, SESSIONS[kind]() as session:
        for path in paths:
            async with session.post(upstream.host_url + path, data=b"{}") as r:
                assert r.status == 200
                assert len(r.headers.getall("Set-Cookie")) == len(cookies)
    assert upstream.cookies == [None] * len(paths)


async def test_the_control_a_default_session_would_send_them_back() -> None:
    """The same upstream and requests through a session with aiohttp's default jar: the
    second request carries the cookie the first answer set (what the test above rules
    out, and what it would see without net/session.py)."""
    plan: list[tuple[str, str, dict[str, Any]]] = [("session", "user-a-secret", {"httponly": True})]
    async with CookieServer(plan) as upstream, aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(upstream.host_url + "/v1/x", data=b"{}") as r:
                assert r.status == 200
    assert upstream.cookies == [None, "session=user-a-secret"]
