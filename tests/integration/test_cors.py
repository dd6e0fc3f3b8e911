"""CORS, tested with the exact requests a browser sends: the preflight (OPTIONS with
Origin, Access-Control-Request-Method and -Headers), then the request with Origin."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import MOCK
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key

APP = "https://app.example.com"
OTHER = "https://evil.example.net"
USER = [{"role": "user", "content": "hi"}]
CHAT = {"model": "mock", "messages": USER}
# What the OpenAI JS SDK (v4/v5) sends with every request from a browser.
OPENAI_JS = (
    "authorization,content-type,x-stainless-arch,x-stainless-lang,x-stainless-os,"
    "x-stainless-package-version,x-stainless-retry-count,x-stainless-runtime,"
    "x-stainless-runtime-version,x-stainless-timeout"
)
# The Anthropic JS SDK with dangerouslyAllowBrowser.
ANTHROPIC_JS = (
    "anthropic-dangerous-direct-browser-access,anthropic-version,content-type,x-api-key,"
    "x-stainless-lang,x-stainless-retry-count"
)
TIERS = {"tiny": {"requests_per_hour": 1}}


@pytest.fixture
async def cors_gateway() -> AsyncIterator[RunningGateway]:
    settings = make_settings(
        MOCK, tiers=TIERS, cors={"allow_origins": [APP, "http://localhost:5173"]}
    )
    async with running_gateway(settings) as gateway:
        yield gateway


def concrete(path: str) -> str:
    """A real URL for a route template: ids that need not exist (a 404 is an answer too)."""
    return re.sub(r"\{[^}]+\}", "some-id", path)


async def preflight(
    session: aiohttp.ClientSession, url: str, origin: str, method: str, headers: str | None
) -> aiohttp.ClientResponse:
    request = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        request["Access-Control-Request-Headers"] = headers
    async with session.options(url, headers=request) as response:
        await response.read()
        return response


def listed(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


def cors_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    return {
        k.lower(): v for k, v in response.headers.items() if k.lower().startswith("access-control-")
    }


async def test_preflight_for_every_route_the_gateway_serves(cors_gateway: RunningGateway) -> None:
    """Every route (OpenAI, Ollama, seeds, admin) answers the browser's preflight before any
    authentication, allowing its method and the headers the clients send."""
    routes = cors_gateway.app.served_routes()
    for path in ("/v1/chat/completions", "/api/chat", "/ai/generate", "/chat", "/usage",
                 "/api/stats", "/api/keys", "/auth/create-key", "/admin/keys/{key_id}"):  # fmt: skip
        assert path in routes
    async with aiohttp.ClientSession() as session:
        for path, methods in routes.items():
            for method in methods:
                for requested in (
                    "authorization,content-type",
                    "content-type,x-api-key",
                    OPENAI_JS,
                ):
                    r = await preflight(
                        session, cors_gateway.url + concrete(path), APP, method, requested
                    )
                    assert r.status == 204, (method, path)
                    assert r.headers["Access-Control-Allow-Origin"] == APP
                    assert method.lower() in listed(r.headers["Access-Control-Allow-Methods"])
                    assert listed(r.headers["Access-Control-Allow-Headers"]) == listed(requested)
                    assert r.headers["Access-Control-Max-Age"] == "600"
                    assert r.headers["Vary"] == "Origin"
                    assert "Access-Control-Allow-Credentials" not in r.headers


async def test_anthropic_and_seed_pages_headers_are_allowed(cors_gateway: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session:
        r = await preflight(
            session, cors_gateway.url + "/v1/chat/completions", APP, "POST", ANTHROPIC_JS
        )
        assert listed(r.headers["Access-Control-Allow-Headers"]) == listed(ANTHROPIC_JS)
        r = await preflight(session, cors_gateway.url + "/ai/generate", "http://localhost:5173", "POST",
                            "Content-Type, X-API-Key")  # fmt: skip
        assert (
            r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
        )
        assert listed(r.headers["Access-Control-Allow-Headers"]) == {"content-type", "x-api-key"}
        # A header nobody allowed is left out: the browser then refuses the request.
        r = await preflight(
            session, cors_gateway.url + "/chat", APP, "POST", "content-type,x-secret-thing"
        )
        assert listed(r.headers["Access-Control-Allow-Headers"]) == {"content-type"}
        # No Access-Control-Request-Headers at all: nothing to allow.
        r = await preflight(session, cors_gateway.url + "/v1/models", APP, "GET", None)
        assert r.status == 204 and "Access-Control-Allow-Headers" not in r.headers


async def test_actual_requests_from_an_allowed_origin_expose_headers(
    cors_gateway: RunningGateway,
) -> None:
    _, secret = await new_key(cors_gateway, tier="tiny")
    async with aiohttp.ClientSession() as session:
        async with session.post(
            cors_gateway.url + "/ai/generate",
            json={"prompt": "hi", "model": "mock"},
            headers={"Origin": APP, "X-API-Key": secret},
        ) as r:
            assert r.status == 200 and (await r.json())["done"] is True
            headers = r.headers
    assert headers["Access-Control-Allow-Origin"] == APP
    exposed = listed(headers["Access-Control-Expose-Headers"])
    assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after",
            "x-request-id", "x-cache", "x-cache-tier"} <= exposed  # fmt: skip
    # what is exposed is really there for the script to read
    assert headers["X-RateLimit-Limit"] == "1" and headers["X-Request-Id"]
    assert headers["Vary"] == "Origin"


async def test_errors_carry_cors_headers_so_scripts_can_read_them(
    cors_gateway: RunningGateway,
) -> None:
    _, secret = await new_key(cors_gateway, tier="tiny")
    origin = {"Origin": APP}
    async with aiohttp.ClientSession() as session:
        # 401: no key (hot path and admin app)
        for method, path in (
            ("POST", "/v1/chat/completions"),
            ("GET", "/admin/keys"),
            ("GET", "/api/tags"),
        ):
            async with session.request(
                method, cors_gateway.url + path, json=CHAT, headers=origin
            ) as r:
                assert r.status == 401, path
                assert r.headers["Access-Control-Allow-Origin"] == APP
                assert "www-authenticate" in listed(r.headers["Access-Control-Expose-Headers"])
        # 429 after the tier's one request an hour: Retry-After and the limits readable
        auth = {**origin, "Authorization": f"Bearer {secret}"}
        for expected in (200, 429):
            async with session.post(
                cors_gateway.url + "/v1/chat/completions", json=CHAT, headers=auth
            ) as r:
                await r.read()
                assert r.status == expected
        assert r.headers["Access-Control-Allow-Origin"] == APP
        assert int(r.headers["Retry-After"]) >= 1 and r.headers["X-RateLimit-Remaining"] == "0"
        assert {"retry-after", "x-ratelimit-remaining"} <= listed(
            r.headers["Access-Control-Expose-Headers"]
        )
        # 404 and 405 from the router and from the admin app
        for method, path, status in (("GET", "/nope", 404), ("GET", "/v1/chat/completions", 405),
                                     ("PUT", "/admin/keys", 405)):  # fmt: skip
            async with session.request(method, cors_gateway.url + path, headers=auth) as r:
                assert r.status == status and r.headers["Access-Control-Allow-Origin"] == APP


async def test_streaming_response_carries_cors_headers(cors_gateway: RunningGateway) -> None:
    headers = {"Origin": APP, "Authorization": f"Bearer {cors_gateway.admin_key}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            cors_gateway.url + "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers=headers,
        ) as r:
            body = await r.read()
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Access-Control-Allow-Origin"] == APP
    assert "x-request-id" in listed(r.headers["Access-Control-Expose-Headers"])
    assert body.count(b"data: ") > 2 and body.endswith(b"data: [DONE]\n\n")


async def test_other_origins_get_no_cors_headers(cors_gateway: RunningGateway) -> None:
    """A page on an origin not listed: its preflight is refused (403, no Access-Control-*),
    and an actual request (a 'simple' one needs no preflight) gets no Allow-Origin, so the
    browser keeps the answer from the page."""
    auth = {"Origin": OTHER, "Authorization": f"Bearer {cors_gateway.admin_key}"}
    async with aiohttp.ClientSession() as session:
        for origin in (OTHER, APP + ":8443", "http://app.example.com", "null"):
            r = await preflight(session, cors_gateway.url + "/v1/chat/completions", origin, "POST",
                                "authorization,content-type")  # fmt: skip
            assert r.status == 403 and cors_headers(r) == {}
            assert r.headers["Vary"] == "Origin"
        async with session.options(
            cors_gateway.url + "/v1/chat/completions",
            headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"},
        ) as r:
            body = await r.json()
        assert (
            body["error"]["type"] == "permission_error"
            and "cors.allow_origins" in body["error"]["message"]
        )
        async with session.post(
            cors_gateway.url + "/v1/chat/completions", json=CHAT, headers=auth
        ) as r:
            assert r.status == 200  # served, but unreadable by the page
            assert cors_headers(r) == {} and r.headers["Vary"] == "Origin"
        # no Origin (curl, SDKs outside a browser): untouched
        async with session.get(cors_gateway.url + "/health") as r:
            assert cors_headers(r) == {} and "Vary" not in r.headers


async def test_cors_off_by_default() -> None:
    """No origins configured: no CORS at all; the preflight is an unsupported method."""
    async with running_gateway(make_settings(MOCK)) as gateway, aiohttp.ClientSession() as session:
        r = await preflight(
            session, gateway.url + "/v1/chat/completions", APP, "POST", "authorization"
        )
        assert r.status == 405 and cors_headers(r) == {}
        r = await preflight(session, gateway.url + "/admin/keys", APP, "GET", "authorization")
        assert r.status == 405 and cors_headers(r) == {}
        headers = {"Origin": APP, "Authorization": f"Bearer {gateway.admin_key}"}
        async with session.post(
            gateway.url + "/v1/chat/completions", json=CHAT, headers=headers
        ) as r:
            assert r.status == 200 and cors_headers(r) == {} and "Vary" not in r.headers


async def test_credentials_allowed() -> None:
    cors: dict[str, Any] = {"allow_origins": [APP], "allow_credentials": True, "max_age": 60}
    async with (
        running_gateway(make_settings(MOCK, cors=cors)) as gateway,
        aiohttp.ClientSession() as s,
    ):
        r = await preflight(s, gateway.url + "/v1/models", APP, "GET", "authorization")
        assert r.headers["Access-Control-Allow-Origin"] == APP  # never '*' with credentials
        assert r.headers["Access-Control-Allow-Credentials"] == "true"
        assert r.headers["Access-Control-Max-Age"] == "60"
        headers = {"Origin": APP, "Authorization": f"Bearer {gateway.admin_key}"}
        async with s.get(gateway.url + "/v1/models", headers=headers) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == APP
            assert r.headers["Access-Control-Allow-Credentials"] == "true"


async def test_any_origin_without_credentials() -> None:
    async with running_gateway(make_settings(MOCK, cors={"allow_origins": ["*"]})) as gateway:
        async with aiohttp.ClientSession() as session:
            r = await preflight(
                session, gateway.url + "/api/generate", OTHER, "POST", "content-type"
            )
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
            assert "Access-Control-Allow-Credentials" not in r.headers
            async with session.get(gateway.url + "/api/tags", headers={"Origin": OTHER}) as r:
                assert r.status == 401 and r.headers["Access-Control-Allow-Origin"] == "*"
