"""Every error answers in the shape of the API its path belongs to, whatever its status:
Ollama's ``{"error": "..."}`` under /api/, OpenAI's everywhere else; a 405 names the
methods in ``Allow``; an unpaired surrogate is named as such; what escapes a handler is a
500 in the route's shape with a request id, never the server's plain text. Also the
bounds on numbers an admin sets, and PATCH of a key's cache settings merging."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

import aiohttp
import msgspec
import pytest
import pytest_asyncio

from tests.conftest import MOCK
from tests.fakes.redis_server import RedisServer
from tests.fuzz import check_answer, check_shape, request
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
OLLAMA_CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[RunningGateway]:
    settings = make_settings(
        MOCK, max_body_bytes=4096, tiers={"one": {"requests_per_minute": 1}, "free": {}}
    )
    async with running_gateway(settings) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def call(
    gateway: RunningGateway,
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = "admin",
) -> tuple[int, Any, Any]:
    """(status, headers, decoded body) after checking the error shape for ``path``."""
    raw = body if isinstance(body, bytes) or body is None else msgspec.json.encode(body)
    secret = gateway.admin_key if key == "admin" else key
    status, headers, answer = await request(
        session, method, gateway.url + path, body=raw, key=secret
    )
    check_answer(path, status, headers, answer)
    return status, headers, msgspec.json.decode(answer)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/nothing"), ("POST", "/api/pull"), ("DELETE", "/api/delete"), ("GET", "/api")],
)
async def test_ollama_unknown_path_is_404_in_ollama_shape(
    gateway: RunningGateway, session: aiohttp.ClientSession, method: str, path: str
) -> None:
    status, _, body = await call(gateway, session, method, path)
    assert status == 404
    assert set(body) == {"error"} and "/api/chat" in body["error"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/api/chat", "POST"),
        ("PUT", "/api/generate", "POST"),
        ("POST", "/api/tags", "GET"),
        ("GET", "/v1/chat/completions", "POST"),
        ("DELETE", "/v1/models", "GET"),
        ("PUT", "/admin/keys", "GET, HEAD, POST"),
        ("POST", "/api/stats", "GET"),
    ],
)
async def test_wrong_method_is_405_with_allow_in_the_paths_shape(
    gateway: RunningGateway, session: aiohttp.ClientSession, method: str, path: str, allow: str
) -> None:
    status, headers, body = await call(gateway, session, method, path)
    assert status == 405
    assert sorted(headers["Allow"].split(", ")) == sorted(allow.split(", "))
    message = body["error"] if isinstance(body["error"], str) else body["error"]["message"]
    assert f"Method {method} is not allowed" in message


async def test_unknown_v1_and_seed_paths_keep_openais_shape(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    for path in ("/v1/nothing", "/nothing", "/api/keys/x/y", "/admin/nothing"):
        status, _, body = await call(gateway, session, "GET", path)
        assert status == 404, path
        assert body["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/tags"])
async def test_ollama_401_in_ollama_shape(
    gateway: RunningGateway, session: aiohttp.ClientSession, path: str
) -> None:
    method = "GET" if path == "/api/tags" else "POST"
    status, headers, body = await call(gateway, session, method, path, OLLAMA_CHAT, key=None)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert "credentials" in body["error"]


async def test_ollama_413_in_ollama_shape(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    big = {**OLLAMA_CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    status, _, body = await call(gateway, session, "POST", "/api/chat", big)
    assert status == 413
    assert "4096 bytes" in body["error"]


async def test_ollama_429_in_ollama_shape_with_its_headers(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    _, secret = await new_key(gateway, tier="one")
    first, _, _ = await call(gateway, session, "POST", "/api/chat", OLLAMA_CHAT, key=secret)
    status, headers, body = await call(gateway, session, "POST", "/api/chat", OLLAMA_CHAT, key=secret)  # fmt: skip
    assert (first, status) == (200, 429)
    assert "requests_per_minute" in body["error"]
    assert int(headers["Retry-After"]) >= 1
    assert headers["X-RateLimit-Limit"] == "1" and headers["X-RateLimit-Remaining"] == "0"


async def test_415_in_openais_shape_on_v1(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    """No Ollama route asks for a Content-Type (Ollama's curl examples send a form type);
    under /v1 a wrong one is a 415, in OpenAI's shape."""
    async with session.post(
        gateway.url + "/v1/chat/completions", data=msgspec.json.encode(CHAT),
        headers={**gateway.headers, "Content-Type": "text/plain"},
    ) as response:  # fmt: skip
        assert response.status == 415
        check_shape("/v1/chat/completions", await response.json())
    async with session.post(
        gateway.url + "/api/chat", data=msgspec.json.encode(OLLAMA_CHAT),
        headers={**gateway.headers, "Content-Type": "text/plain"},
    ) as response:  # fmt: skip
        assert response.status == 200


@pytest.mark.parametrize(
    ("path", "raw", "byte"),
    [
        (
            "/v1/chat/completions",
            b'{"model": "mock", "messages": [{"role": "user", "content": "\\ud800"}]}',
            60,
        ),
        (
            "/api/chat",
            b'{"model": "mock", "messages": [{"role": "user", "content": "a\\udc00"}]}',
            61,
        ),
        ("/api/generate", b'{"model": "mock",\n "prompt": "\\ud83d\\u0041"}', 30),
    ],
)
async def test_unpaired_surrogate_is_named(
    gateway: RunningGateway, session: aiohttp.ClientSession, path: str, raw: bytes, byte: int
) -> None:
    status, _, body = await call(gateway, session, "POST", path, raw)
    assert status == 400
    message = body["error"] if isinstance(body["error"], str) else body["error"]["message"]
    assert "not valid JSON" in message and "unpaired UTF-16 surrogate" in message, message
    assert f"(byte {byte}," in message and "truncated" not in message


async def test_a_valid_surrogate_pair_and_an_escaped_backslash_are_fine(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    raw = (
        b'{"model": "mock", "messages": [{"role": "user", "content": "\\ud83d\\ude00 \\\\ud800"}]}'
    )
    status, _, _ = await call(gateway, session, "POST", "/v1/chat/completions", raw)
    assert status == 200


@pytest.mark.parametrize("function", ["weather", 42, True, [], None, {"arguments": {}}])
async def test_ollama_tool_call_function_must_be_an_object_with_a_name(
    gateway: RunningGateway, session: aiohttp.ClientSession, function: Any
) -> None:
    message = {"role": "assistant", "content": "", "tool_calls": [{"function": function}]}
    body = {**OLLAMA_CHAT, "messages": [message, {"role": "user", "content": "hi"}]}
    status, _, answer = await call(gateway, session, "POST", "/api/chat", body)
    assert status == 400
    assert "messages[0].tool_calls[0].function" in answer["error"]


async def test_escaped_exceptions_are_500s_in_the_routes_shape(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    """A fault no input produces (injected): JSON with the request id, never plain text."""
    state = gateway.state
    fault = RuntimeError("injected")
    with mock.patch.object(state.auth, "authenticate", side_effect=fault):
        for method, path in (("GET", "/api/tags"), ("GET", "/usage"), ("GET", "/v1/models"),
                             ("POST", "/api/chat"), ("GET", "/admin/keys")):  # fmt: skip
            raw = await request(session, method, gateway.url + path, body=b"{}")
            status, headers, body = raw
            assert status == 500, path
            check_shape(path, msgspec.json.decode(body))
            assert headers["X-Request-Id"] in body.decode(), path


async def test_usage_500_is_json_when_the_limiter_fails(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    with mock.patch.object(
        gateway.state.admission, "report", side_effect=OverflowError("injected")
    ):
        status, headers, body = await request(
            session, "GET", gateway.url + "/usage", key=gateway.admin_key
        )
    assert status == 500
    check_shape("/usage", msgspec.json.decode(body))
    assert headers["X-Request-Id"] in body.decode()


@pytest.mark.parametrize(
    ("limits", "param"),
    [
        ({"budget_per_month": 1e308}, "limits.budget_per_month"),
        ({"budget_per_month": 1e9 + 1}, "limits.budget_per_month"),
        ({"budget_per_month": -0.01}, "limits.budget_per_month"),
        ({"requests_per_month": 10**15 + 1}, "limits.requests_per_month"),
        ({"tokens_per_minute": 2**63}, "limits.tokens_per_minute"),
        ({"max_concurrent": -1}, "limits.max_concurrent"),
    ],
)
async def test_limits_out_of_bounds_are_refused(
    gateway: RunningGateway, session: aiohttp.ClientSession, limits: Any, param: str
) -> None:
    body = {"tenant_id": "acme-bounds", "limits": limits}
    await call(gateway, session, "POST", "/admin/tenants", {"name": "acme-bounds"})
    status, _, answer = await call(gateway, session, "POST", "/admin/keys", body)
    assert status == 400
    assert answer["error"]["param"] == param


async def test_limits_at_their_bounds_work_with_memory_limits(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    await _limits_at_bounds(gateway, session)


async def test_limits_at_their_bounds_work_with_redis_limits(
    session: aiohttp.ClientSession, tmp_path: Any
) -> None:
    server = RedisServer(tmp_path)
    await server.start()
    try:
        async with running_gateway(make_settings(MOCK, redis_url=server.url)) as gateway:
            await _limits_at_bounds(gateway, session)
    finally:
        await server.kill()


async def _limits_at_bounds(gateway: RunningGateway, session: aiohttp.ClientSession) -> None:
    """The largest accepted numbers: requests served, GET /usage shows them exactly."""
    count = 10**15
    limits = {
        "requests_per_minute": count, "requests_per_hour": count, "requests_per_month": count,
        "tokens_per_minute": count, "tokens_per_month": count, "max_concurrent": count,
        "budget_per_month": 1e9,
    }  # fmt: skip
    await call(gateway, session, "POST", "/admin/tenants", {"name": "acme-max"})
    status, _, created = await call(
        gateway, session, "POST", "/admin/keys", {"tenant_id": "acme-max", "limits": limits}
    )
    assert status == 201
    secret = created["api_key"]
    for _ in range(2):
        status, _, _ = await call(gateway, session, "POST", "/v1/chat/completions", CHAT, secret)
        assert status == 200
    status, _, usage = await call(gateway, session, "GET", "/usage", key=secret)
    assert status == 200
    assert usage["requests_per_month"]["limit"] == count
    assert usage["requests_per_month"]["remaining"] == count - 2
    assert usage["budget_per_month"]["limit"] == 1e9


async def test_patch_merges_a_keys_cache_settings(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    await call(gateway, session, "POST", "/admin/tenants", {"name": "acme-cache"})
    body = {"tenant_id": "acme-cache", "cache": {"enabled": False, "ttl": 60}}
    _, _, created = await call(gateway, session, "POST", "/admin/keys", body)
    path = f"/admin/keys/{created['key']['id']}"
    steps: list[tuple[Any, Any]] = [
        ({"ttl": 120}, {"enabled": False, "ttl": 120}),  # only the field given changes
        ({}, {"enabled": False, "ttl": 120}),
        ({"enabled": True}, {"enabled": True, "ttl": 120}),
        ({"ttl": None}, {"enabled": True}),  # null returns one field to the default
        (None, None),  # "cache": null returns them all
        ({"ttl": 30}, {"ttl": 30}),
    ]
    for change, expected in steps:
        status, _, key = await call(gateway, session, "PATCH", path, {"cache": change})
        assert status == 200, change
        assert key["cache"] == expected, change
    status, _, answer = await call(gateway, session, "PATCH", path, {"cache": {"ttl": 0}})
    assert status == 400 and answer["error"]["param"] == "cache.ttl"
    status, _, answer = await call(gateway, session, "PATCH", path, {"cache": {"size": 1}})
    assert status == 400 and answer["error"]["param"] == "cache.size"


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
async def test_times_outside_utcs_range_are_refused(
    gateway: RunningGateway, session: aiohttp.ClientSession, moment: str
) -> None:
    await call(gateway, session, "POST", "/admin/tenants", {"name": "acme-time"})
    body = {"tenant_id": "acme-time", "expires_at": moment}
    status, _, answer = await call(gateway, session, "POST", "/admin/keys", body)
    assert status == 400 and answer["error"]["param"] == "expires_at"
    _, _, created = await call(gateway, session, "POST", "/admin/keys", {"tenant_id": "acme-time"})
    path = f"/admin/keys/{created['key']['id']}"
    status, _, answer = await call(gateway, session, "PATCH", path, {"expires_at": moment})
    assert status == 400 and answer["error"]["param"] == "expires_at"


@pytest.mark.parametrize(
    "query",
    [
        "from=0001-01-01T00:00:00%2B01:00",
        "to=9999-12-31T23:59:59-01:00",
        "from=99999w",
        "top=0",
        "top=%C2%B2",
        "top=" + "9" * 5000,  # "²".isdigit() and 5000 digits: int() raised, a 500
    ],
)
async def test_usage_filters_out_of_range_are_4xx(
    gateway: RunningGateway, session: aiohttp.ClientSession, query: str
) -> None:
    for path in ("/admin/usage", "/admin/usage/export.csv"):
        status, headers, raw = await request(
            session, "GET", f"{gateway.url}{path}?{query}", key=gateway.admin_key
        )
        check_answer(path, status, headers, raw)


async def test_cache_control_max_age_with_a_latin1_digit_is_a_400() -> None:
    """``"²".isdigit()`` is true but it is no number: header values are read as Latin-1."""
    import asyncio

    async with running_gateway(make_settings(MOCK, cache={"enabled": True})) as cached:
        body = msgspec.json.encode(CHAT)
        reader, writer = await asyncio.open_connection("127.0.0.1", cached.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {cached.admin_key}\r\n".encode()
            + b"Cache-Control: max-age=\xb2\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    check_shape("/v1/chat/completions", msgspec.json.decode(payload))


@pytest.mark.parametrize("rate_limit", [10**15 + 1, 2**53 + 1, 2**63, -1])
async def test_seed_003_rate_limit_is_bounded_as_every_limit_is(
    gateway: RunningGateway, session: aiohttp.ClientSession, rate_limit: int
) -> None:
    body = {"name": "seed", "rate_limit": rate_limit, "tenant_id": "acme-seed"}
    status, _, answer = await call(gateway, session, "POST", "/api/keys", body)
    assert status == 400 and answer["error"]["param"] == "rate_limit"
