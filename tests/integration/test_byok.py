"""Bring your own key (seed 004): users' provider keys, provider configurations, the
provider each request is served by, and whose key pays for it.

Real gateway, real fake upstreams (the cloud types' base URLs point at them), real
SQLite or PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import anthropic
import msgspec
import pytest
import sqlalchemy as sa

from relaygate.errors import ConfigError
from relaygate.store.tables import provider_secrets, usage_records
from relaygate.vault.crypto import new_key
from tests.conftest import MOCK
from tests.fakes.cookie_server import CookieServer
from tests.fakes.gemini_server import FakeGemini
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key as new_api_key

SECRET_KEY = new_key()
ALICE_OPENAI = "sk-alice-0123456789abcdefXYZ123"
ALICE_GEMINI = "AIzaAliceGemini0123456789abcdef"
BOB_OPENAI = "sk-bob-9876543210fedcbaQRS789"
TENANT_OPENAI = "sk-tenant-shared-5555aaaa6666bbbb"


class Client:
    """One caller of the gateway's HTTP API, with its key."""

    def __init__(self, gateway: RunningGateway, secret: str) -> None:
        self.gateway = gateway
        self.secret = secret
        self.headers = {"Authorization": f"Bearer {secret}"}

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        async with aiohttp.ClientSession() as session:
            async with session.request(
                method, self.gateway.url + path, json=body,
                headers={**self.headers, **(headers or {})},
            ) as response:  # fmt: skip
                raw = await response.read()
                data = json.loads(raw) if raw else None
                return response.status, data, {k.lower(): v for k, v in response.headers.items()}

    async def add_key(self, provider: str, api_key: str, **extra: Any) -> dict[str, Any]:
        body = {"provider": provider, "key_name": f"my {provider} key", "api_key": api_key}
        status, data, _ = await self.call("POST", "/api/ai/api-keys", {**body, **extra})
        assert status == 201, data
        assert isinstance(data, dict)
        return data

    async def configure(self, provider_type: str, **fields: Any) -> dict[str, Any]:
        status, data, _ = await self.call(
            "POST", "/api/ai/provider-configs", {"provider_type": provider_type, **fields}
        )
        assert status == 201, data
        assert isinstance(data, dict)
        return data

    async def chat(self, prompt: str = "hello there") -> tuple[int, Any, dict[str, str]]:
        return await self.call("POST", "/ai/chat", {"prompt": prompt})


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeOpenAI, FakeGemini]]:
    async with FakeOpenAI() as openai_fake, FakeGemini(api_key=ALICE_GEMINI) as gemini_fake:
        yield openai_fake, gemini_fake


def byok_settings(
    openai_url: str,
    gemini_url: str | None = None,
    secret_key: str | None = SECRET_KEY,
    **extra: Any,
) -> Any:
    urls = {"openai": openai_url}
    if gemini_url:
        urls["gemini"] = gemini_url
    byok = {"base_urls": urls, "poll_interval": 0.2, **extra.pop("byok", {})}
    return make_settings(MOCK, secret_key=secret_key, byok=byok, **extra)


@pytest.fixture
async def gateway(
    fakes: tuple[FakeOpenAI, FakeGemini], database_url: str
) -> AsyncIterator[RunningGateway]:
    openai_fake, gemini_fake = fakes
    settings = byok_settings(openai_fake.base_url, gemini_fake.base_url, database_url=database_url)
    async with running_gateway(settings) as running:
        yield running


async def user(
    gateway: RunningGateway, name: str | None, tenant: str = "cafe", **kw: Any
) -> Client:
    _, secret = await new_api_key(gateway, tenant=tenant, user=name, tier="unlimited", **kw)
    return Client(gateway, secret)


async def usage_rows(gateway: RunningGateway, endpoint: str, expected: int) -> list[Any]:
    """The usage rows of ``endpoint``, once the writer wrote ``expected`` (or 5 s passed)."""
    query = sa.select(usage_records).where(usage_records.c.endpoint == endpoint)
    found: list[Any] = []
    for _ in range(100):
        async with gateway.state.engine.connect() as conn:
            found = list((await conn.execute(query)).all())
        if len(found) >= expected:
            break
        await asyncio.sleep(0.05)
    return found


# adding a key, configuring a default, /ai/chat served with it


async def test_a_users_key_serves_their_ai_chat(
    gateway: RunningGateway, fakes: tuple[FakeOpenAI, FakeGemini]
) -> None:
    openai_fake, _ = fakes
    alice = await user(gateway, "alice")
    added = await alice.add_key("openai", ALICE_OPENAI)
    assert added["masked_key"] == "sk-...XYZ123"
    assert ALICE_OPENAI not in json.dumps(added)
    config = await alice.configure(
        "openai", api_key_id=added["id"],
        config={"model": "gpt-4o-mini", "temperature": 0.3, "max_tokens": 50}, is_default=True,
    )  # fmt: skip
    assert config["is_default"] is True and config["config"]["model"] == "gpt-4o-mini"

    status, body, headers = await alice.chat("plan my day")
    assert status == 200, body
    assert headers["x-relaygate-provider"] == "openai"
    assert headers["x-relaygate-key-owner"] == "user"
    sent = openai_fake.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {ALICE_OPENAI}"
    assert sent.json["model"] == "gpt-4o-mini"
    assert sent.json["temperature"] == 0.3 and sent.json["max_tokens"] == 50
    assert "plan my day" in body["response"]

    # listed masked, with last_used_at written by the batch
    await gateway.state.vault.flush_last_used()
    status, listed, _ = await alice.call("GET", "/api/ai/api-keys")
    assert status == 200 and [k["id"] for k in listed] == [added["id"]]
    assert listed[0]["masked_key"] == "sk-...XYZ123" and listed[0]["last_used_at"] is not None
    assert ALICE_OPENAI not in json.dumps(listed)
    status, configs, _ = await alice.call("GET", "/api/ai/provider-configs")
    assert status == 200 and [c["id"] for c in configs] == [config["id"]]


async def test_the_seeds_web_and_ios_routes_and_gemini(
    gateway: RunningGateway, fakes: tuple[FakeOpenAI, FakeGemini]
) -> None:
    _, gemini_fake = fakes
    alice = await user(gateway, "alice")
    key = await alice.add_key("gemini", ALICE_GEMINI)
    status, config, _ = await alice.call(
        "POST", "/api/ai/provider-config",  # the web client's path
        {"provider_type": "gemini", "api_key_id": key["id"], "config": {"model": "gemini-1.5-flash"},
         "is_default": True},
    )  # fmt: skip
    assert status == 201, config
    status, body, headers = await alice.call("POST", "/ai/tasks/suggest", {"title": "Buy milk"})
    assert status == 200, body
    assert headers["x-relaygate-provider"] == "gemini"
    sent = gemini_fake.requests[-1]
    assert sent.headers["x-goog-api-key"] == ALICE_GEMINI
    assert "gemini-1.5-flash" in sent.path


# the fallback order


async def test_selection_follows_seed_004s_order(
    gateway: RunningGateway, fakes: tuple[FakeOpenAI, FakeGemini]
) -> None:
    openai_fake, _ = fakes
    alice = await user(gateway, "alice")

    # no configuration at all: the server's default (here the development model mock)
    status, _, headers = await alice.chat()
    assert status == 200 and headers["x-relaygate-key-owner"] == "server"
    assert not openai_fake.requests

    key = await alice.add_key("openai", ALICE_OPENAI)
    first = await alice.configure("openai", api_key_id=key["id"], config={"model": "first"})
    default = await alice.configure(
        "openai", api_key_id=key["id"], config={"model": "chosen"}, is_default=True
    )

    async def served_model() -> str | None:
        before = len(openai_fake.requests)
        status, body, headers = await alice.chat()
        assert status == 200, body
        if len(openai_fake.requests) == before:
            assert headers["x-relaygate-key-owner"] == "server"
            return None
        return str(openai_fake.requests[-1].json["model"])

    assert await served_model() == "chosen"  # 1. the default
    status, _, _ = await alice.call(
        "PATCH", f"/api/ai/provider-configs/{default['id']}", {"is_active": False}
    )
    assert status == 200
    assert await served_model() == "first"  # 2. the first active one
    status, _, _ = await alice.call(
        "PATCH", f"/api/ai/provider-configs/{first['id']}", {"is_active": False}
    )
    assert await served_model() is None  # 3./4. the server's default: mock
    # making another default unsets the first default
    await alice.call("PATCH", f"/api/ai/provider-configs/{first['id']}",
                     {"is_active": True, "is_default": True})  # fmt: skip
    status, configs, _ = await alice.call("GET", "/api/ai/provider-configs")
    assert [c["is_default"] for c in configs] == [True, False]
    assert await served_model() == "first"
    status, _, _ = await alice.call("DELETE", f"/api/ai/provider-configs/{first['id']}")
    assert status == 200
    assert await served_model() is None


# the other APIs: model auto, or X-Relaygate-Provider


async def test_openai_anthropic_and_ollama_apis_with_auto_or_the_header(
    gateway: RunningGateway, fakes: tuple[FakeOpenAI, FakeGemini]
) -> None:
    openai_fake, _ = fakes
    alice = await user(gateway, "alice")
    key = await alice.add_key("openai", ALICE_OPENAI)
    await alice.configure("openai", api_key_id=key["id"], config={"model": "gpt-4o-mini"},
                          is_default=True)  # fmt: skip
    messages = [{"role": "user", "content": "hi"}]

    async with gateway.client(alice.secret) as client:
        # a named model, no header: the server's model, as before
        plain = await client.chat.completions.create(model="mock", messages=messages)  # type: ignore[arg-type]
        assert plain.model == "mock" and not openai_fake.requests
        auto = await client.chat.completions.with_raw_response.create(
            model="auto",
            messages=messages,  # type: ignore[arg-type]
        )
        assert auto.headers["x-relaygate-key-owner"] == "user"
        assert auto.parse().model == "gpt-4o-mini"
        assert openai_fake.requests[-1].headers["authorization"] == f"Bearer {ALICE_OPENAI}"
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=messages,
            stream=True,  # type: ignore[arg-type]
            extra_headers={"X-Relaygate-Provider": "openai"},
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert "hi" in text
        assert openai_fake.requests[-1].json["model"] == "gpt-4o"  # the model the client named

    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=alice.secret, max_retries=0
    ) as claude:
        message = await claude.messages.create(
            model="auto", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content and openai_fake.requests[-1].json["model"] == "gpt-4o-mini"

    status, body, headers = await alice.call(
        "POST", "/api/chat", {"model": "auto", "messages": messages, "stream": False}
    )
    assert status == 200 and headers["x-relaygate-provider"] == "openai", body
    assert body["message"]["content"]

    # a provider type the user has not configured: 404, in the API's own shape
    status, body, _ = await alice.call(
        "POST", "/v1/chat/completions", {"model": "auto", "messages": messages},
        headers={"X-Relaygate-Provider": "anthropic"},
    )  # fmt: skip
    assert status == 404 and "X-Relaygate-Provider" in body["error"]["message"]
    # "server" asks for the server's own default
    status, body, headers = await alice.call(
        "POST", "/v1/chat/completions", {"model": "auto", "messages": messages},
        headers={"X-Relaygate-Provider": "server"},
    )  # fmt: skip
    assert status == 200 and body["model"] == "mock"
    assert headers["x-relaygate-key-owner"] == "server"
    # "²" (one Latin-1 byte) passed str.isdigit() as a configuration id and int() raised: a 500
    for raw in (b"\xb2", b"9" * 5000):
        head, payload = await _raw_chat(gateway, alice.secret, b"X-Relaygate-Provider: " + raw)
        assert head.startswith(b"HTTP/1.1 404"), head
        assert "X-Relaygate-Provider" in msgspec.json.decode(payload)["error"]["message"]


async def _raw_chat(gateway: RunningGateway, secret: str, header: bytes) -> tuple[bytes, bytes]:
    """A chat request with a header as raw bytes (a client library would encode it)."""
    body = b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}]}'
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {secret}\r\n".encode() + header + b"\r\n"
        + f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )  # fmt: skip
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return head, payload


# who sees what


async def test_another_users_or_tenants_ids_answer_404(gateway: RunningGateway) -> None:
    alice = await user(gateway, "alice")
    alice_again = await user(gateway, "alice")  # a second key of the same user
    bob = await user(gateway, "bob")
    alice_elsewhere = await user(gateway, "alice", tenant="other")
    keyless = await user(gateway, None)  # a key without a user: its own owner
    key = await alice.add_key("openai", ALICE_OPENAI)
    config = await alice.configure("openai", api_key_id=key["id"], config={"model": "m"})

    for stranger in (bob, alice_elsewhere, keyless):
        status, listed, _ = await stranger.call("GET", "/api/ai/api-keys")
        assert status == 200 and listed == []
        status, body, _ = await stranger.call("DELETE", f"/api/ai/api-keys/{key['id']}")
        assert status == 404, body
        status, body, _ = await stranger.call(
            "POST", "/api/ai/provider-configs",
            {"provider_type": "openai", "api_key_id": key["id"]},
        )  # fmt: skip
        assert status == 404, body
        for method in ("GET", "PATCH", "DELETE"):
            status, body, _ = await stranger.call(
                method, f"/api/ai/provider-configs/{config['id']}",
                {"is_active": False} if method == "PATCH" else None,
            )  # fmt: skip
            assert status == 404, (method, body)
        status, _, headers = await stranger.chat()
        assert headers["x-relaygate-key-owner"] == "server"

    status, listed, _ = await alice_again.call("GET", "/api/ai/api-keys")
    assert [k["id"] for k in listed] == [key["id"]]
    status, body, _ = await alice.call("DELETE", "/api/ai/api-keys/not-a-number")
    assert status == 404 and body["error"]["type"]


async def test_a_tenant_admins_shared_key(
    gateway: RunningGateway, fakes: tuple[FakeOpenAI, FakeGemini]
) -> None:
    openai_fake, _ = fakes
    admin = await user(gateway, "carol", role="admin")
    bob = await user(gateway, "bob")
    outsider = await user(gateway, "dave", tenant="other")
    status, body, _ = await bob.call(
        "POST", "/api/ai/api-keys",
        {"provider": "openai", "key_name": "x", "api_key": BOB_OPENAI, "shared": True},
    )  # fmt: skip
    assert status == 403, body
    shared = await admin.add_key("openai", TENANT_OPENAI, shared=True)
    assert shared["shared"] is True
    status, listed, _ = await bob.call("GET", "/api/ai/api-keys")
    assert [k["id"] for k in listed] == [shared["id"]]
    await bob.configure("openai", api_key_id=shared["id"], config={"model": "m"})
    status, _, headers = await bob.chat()
    assert status == 200 and headers["x-relaygate-key-owner"] == "tenant"
    assert openai_fake.requests[-1].headers["authorization"] == f"Bearer {TENANT_OPENAI}"
    status, _, _ = await bob.call("DELETE", f"/api/ai/api-keys/{shared['id']}")
    assert status == 404  # a user cannot delete the tenant's key
    status, listed, _ = await outsider.call("GET", "/api/ai/api-keys")
    assert listed == []
    status, _, _ = await admin.call("DELETE", f"/api/ai/api-keys/{shared['id']}")
    assert status == 200
    status, _, headers = await bob.chat()  # its key is gone: the server's default
    assert headers["x-relaygate-key-owner"] == "server"


# expiry


async def test_an_expired_key_is_no_longer_used(
    gateway: RunningGateway, fakes: tuple[FakeOpenAI, FakeGemini]
) -> None:
    openai_fake, _ = fakes
    alice = await user(gateway, "alice")
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    key = await alice.add_key("openai", ALICE_OPENAI, expires_at=later)
    assert key["expired"] is False and key["expires_at"]
    await alice.configure("openai", api_key_id=key["id"], config={"model": "m"}, is_default=True)
    status, _, headers = await alice.chat()
    assert headers["x-relaygate-key-owner"] == "user"
    # time passes: the key's expiry is now behind us
    async with gateway.state.engine.begin() as conn:
        await conn.execute(
            sa.update(provider_secrets).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    await gateway.state.vault.reload()
    before = len(openai_fake.requests)
    status, _, headers = await alice.chat()
    assert status == 200 and headers["x-relaygate-key-owner"] == "server"
    assert len(openai_fake.requests) == before
    status, listed, _ = await alice.call("GET", "/api/ai/api-keys")
    assert listed[0]["expired"] is True
    status, body, _ = await alice.call(
        "POST", "/api/ai/api-keys",
        {"provider": "openai", "key_name": "k", "api_key": ALICE_OPENAI,
         "expires_at": "2001-01-01T00:00:00Z"},
    )  # fmt: skip
    assert status == 400 and body["error"]["param"] == "expires_at"


# billing


async def test_usage_says_who_paid_and_budgets_ignore_own_keys(
    fakes: tuple[FakeOpenAI, FakeGemini],
) -> None:
    openai_fake, _ = fakes
    # gpt-4o through the operator's key is priced: a one-cent budget refuses it at once
    models = [
        *MOCK,
        {"name": "gpt-4o", "deployments": [
            {"provider": "openai", "base_url": openai_fake.base_url, "api_key": "sk-operator-key1"}
        ]},
    ]  # fmt: skip
    tiers = {"tight": {"requests_per_hour": 3, "budget_per_month": 0.000001}}
    settings = make_settings(
        models, secret_key=SECRET_KEY, tiers=tiers,
        byok={"base_urls": {"openai": openai_fake.base_url}},
    )  # fmt: skip
    async with running_gateway(settings) as gateway:
        _, secret = await new_api_key(gateway, tenant="cafe", user="alice", tier="tight")
        alice = Client(gateway, secret)
        status, body, _ = await alice.call(
            "POST", "/v1/chat/completions",
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        )  # fmt: skip
        assert status == 429 and "budget" in body["error"]["message"].lower()
        key = await alice.add_key("openai", ALICE_OPENAI)
        await alice.configure("openai", api_key_id=key["id"], config={"model": "gpt-4o"})
        status, body, headers = await alice.chat()
        assert status == 200, body  # the same model on her own key: the budget does not apply
        assert headers["x-relaygate-key-owner"] == "user"
        for _ in range(2):
            status, body, _ = await alice.chat()
            assert status == 200
        status, body, _ = await alice.chat()  # the 4th request this hour: request limits apply
        assert status == 429 and "requests_per_hour" in body["error"]["message"]
        found = await usage_rows(gateway, "/ai/chat", 4)
        assert len(found) == 4
        served = [r for r in found if r.http_status == 200]
        assert len(served) == 3
        assert all(r.billed_to == "user" and r.cost == 0.0 for r in served)
        assert all(r.deployment == "byok:openai" for r in served)


# secrets never leak


@pytest.mark.parametrize("status", [400, 401, 500])
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_errors_echoing_the_key_never_leak_it(
    gateway: RunningGateway,
    fakes: tuple[FakeOpenAI, FakeGemini],
    status: int,
    stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    openai_fake, _ = fakes
    alice = await user(gateway, "alice")
    key = await alice.add_key("openai", ALICE_OPENAI)
    await alice.configure("openai", api_key_id=key["id"], config={"model": "m"})
    echo = f"Incorrect API key provided: {ALICE_OPENAI} (Bearer {ALICE_OPENAI})"
    openai_fake.push(Script(status=status, error_message=echo))
    caplog.set_level(logging.DEBUG, logger="relaygate")
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gateway.url + "/v1/chat/completions",
            json={
                "model": "auto",
                "stream": stream,
                "messages": [{"role": "user", "content": "x"}],
            },
            headers=alice.headers,
        ) as response:
            raw = await response.read()
            shown = raw.decode() + json.dumps(dict(response.headers))
    assert response.status >= 400
    assert "Incorrect API key" in shown  # the upstream's message reaches the user ...
    assert ALICE_OPENAI not in shown  # ... without the key
    assert ALICE_OPENAI[:12] not in shown
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/metrics") as metrics:
            assert ALICE_OPENAI not in await metrics.text()
        async with session.get(gateway.url + "/admin/deployments", headers=gateway.headers) as r:
            assert ALICE_OPENAI not in await r.text()
    assert ALICE_OPENAI not in caplog.text


@pytest.mark.parametrize("answered", [400, 401, 500])
async def test_the_check_on_add_reports_a_failure_without_the_key(
    answered: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The provider answers the model list with an error that echoes the key it was sent."""
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        sent = request.headers.get("Authorization", "")
        return web.json_response({"error": {"message": f"rejected {sent}"}}, status=answered)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    caplog.set_level(logging.DEBUG, logger="relaygate")
    try:
        async with running_gateway(byok_settings(url)) as gateway:
            alice = await user(gateway, "alice")
            checked = await alice.add_key("openai", ALICE_OPENAI, check=True)
            assert checked["check"]["ok"] is False
            assert str(answered) in checked["check"]["error"]
            assert ALICE_OPENAI not in json.dumps(checked)
            assert ALICE_OPENAI not in caplog.text
            status, listed, _ = await alice.call("GET", "/api/ai/api-keys")
            assert status == 200 and len(listed) == 1  # stored all the same: the check is advice
    finally:
        await runner.cleanup()


async def test_the_check_on_add_reports_success(
    gateway: RunningGateway, fakes: tuple[FakeOpenAI, FakeGemini]
) -> None:
    alice = await user(gateway, "alice")
    checked = await alice.add_key("openai", ALICE_OPENAI, check=True)
    assert checked["check"] == {"ok": True, "models": 1}
    assert fakes[0].requests[-1].headers["authorization"] == f"Bearer {ALICE_OPENAI}"


# a user's own base URL and the SSRF policy


async def test_a_users_base_url_must_pass_the_ssrf_policy(database_url: str) -> None:
    async with FakeOllama(models=["llama3.2:1b"]) as ollama_fake, FakeOpenAI() as openai_fake:
        refused = byok_settings(openai_fake.base_url, database_url=database_url)
        async with running_gateway(refused) as gateway:
            alice = await user(gateway, "alice")
            for url in (ollama_fake.base_url, "http://169.254.169.254/", "http://0x7f000001:11434",
                        "http://[::ffff:127.0.0.1]:11434", "http://localhost:11434",
                        "file:///etc/passwd", "http://user:pw@example.com/"):  # fmt: skip
                status, body, _ = await alice.call(
                    "POST", "/api/ai/provider-configs",
                    {"provider_type": "ollama", "base_url": url, "config": {"model": "x"}},
                )  # fmt: skip
                assert status == 400 and body["error"]["param"] == "base_url", (url, body)
        allowed = byok_settings(
            openai_fake.base_url, byok={"allow_networks": ["127.0.0.0/8"]},
            database_url=database_url,
        )  # fmt: skip
        async with running_gateway(allowed) as gateway:
            alice = await user(gateway, "alice")
            await alice.configure(
                "ollama", base_url=ollama_fake.base_url, config={"model": "llama3.2:1b"},
                is_default=True,
            )  # fmt: skip
            status, body, headers = await alice.chat("home ollama")
            assert status == 200, body
            assert headers["x-relaygate-provider"] == "ollama"
            assert ollama_fake.requests[-1].json["model"] == "llama3.2:1b"


async def test_a_redirect_to_a_refused_address_is_not_followed(
    fakes: tuple[FakeOpenAI, FakeGemini],
) -> None:
    """The user's server (allowed: 127.0.0.2 only) redirects to 127.0.0.1: the connection
    to the redirect's target is refused where the socket is made."""
    from aiohttp import web

    openai_fake, _ = fakes
    target = openai_fake.base_url

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(target + request.path.removeprefix("/v1"))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.2", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        settings = byok_settings(openai_fake.base_url, byok={"allow_networks": ["127.0.0.2/32"]})
        async with running_gateway(settings) as gateway:
            alice = await user(gateway, "alice")
            await alice.configure(
                "openai-compatible", base_url=f"http://127.0.0.2:{port}/v1",
                config={"model": "m"}, is_default=True,
            )  # fmt: skip
            status, body, _ = await alice.chat()
            assert status in (502, 503), body
            assert "SSRF" in body["error"]["message"] or "not allowed" in body["error"]["message"]
            assert not openai_fake.requests
    finally:
        await runner.cleanup()


async def test_a_cookie_one_users_upstream_set_never_reaches_another_user(
    fakes: tuple[FakeOpenAI, FakeGemini],
) -> None:
    """Alice and Bob use the same host through the one shared BYOK session. It answers
    Alice with a session cookie; Bob's request carries no Cookie (net/session.py)."""
    openai_fake, _ = fakes
    allowed = {"allow_networks": ["127.0.0.0/8", "::1/128"]}
    settings = byok_settings(openai_fake.base_url, byok=allowed)
    plan: list[tuple[str, str, dict[str, Any]]] = [("session", "alices", {"httponly": True})]
    async with CookieServer(plan) as upstream, running_gateway(settings) as gateway:
        alice, bob = await user(gateway, "alice"), await user(gateway, "bob")
        for caller in (alice, bob):
            await caller.configure(
                "openai-compatible", base_url=upstream.host_url + "/v1",
                config={"model": "m"}, is_default=True,
            )  # fmt: skip
        for caller in (alice, bob, alice):
            status, body, _ = await caller.chat()
            assert status == 200, body
    assert upstream.cookies == [None, None, None]  # not Bob's, nor Alice's own next one


# the master key: required when secrets exist, rotated while serving


async def test_no_secret_key_while_secrets_exist_refuses_to_start(
    fakes: tuple[FakeOpenAI, FakeGemini], tmp_path: Any
) -> None:
    openai_fake, _ = fakes
    settings = byok_settings(openai_fake.base_url)
    async with running_gateway(settings) as gateway:
        alice = await user(gateway, "alice")
        await alice.add_key("openai", ALICE_OPENAI)
    from relaygate.app import create_app

    for key, words in ((None, "RELAYGATE_SECRET_KEY is not set"), (new_key(), "does not list")):
        app = create_app(msgspec_replace(settings, secret_key=key))
        with pytest.raises(ConfigError, match=words):
            await app.startup()
    # and without a key no key can be stored (never as plaintext)
    async with running_gateway(byok_settings(openai_fake.base_url, secret_key=None)) as gateway:
        bob = await user(gateway, "bob")
        status, body, _ = await bob.call(
            "POST",
            "/api/ai/api-keys",
            {"provider": "openai", "key_name": "k", "api_key": BOB_OPENAI},
        )
        assert status == 503 and "RELAYGATE_SECRET_KEY" in body["error"]["message"]


def msgspec_replace(settings: Any, **changes: Any) -> Any:
    import msgspec

    return msgspec.structs.replace(settings, **changes)


# JWT callers: the subject is the user


async def test_jwt_subjects_own_their_keys(fakes: tuple[FakeOpenAI, FakeGemini]) -> None:
    import jwt

    openai_fake, _ = fakes
    shared_secret = "j" * 40

    def token(sub: str, org: str) -> str:
        exp = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
        claims = {"sub": sub, "org": org, "exp": exp, "jti": f"{sub}-{org}-{datetime.now()}"}
        return jwt.encode(claims, shared_secret, algorithm="HS256")

    settings = byok_settings(
        openai_fake.base_url, auth={"jwt": {"secret": shared_secret, "tenant_claim": "org"}}
    )
    async with running_gateway(settings) as gateway:
        alice = Client(gateway, token("alice", "acme"))
        alice_later = Client(gateway, token("alice", "acme"))  # another token, same user
        bob = Client(gateway, token("bob", "acme"))
        alice_elsewhere = Client(gateway, token("alice", "globex"))
        key = await alice.add_key("openai", ALICE_OPENAI)
        await alice.configure("openai", api_key_id=key["id"], config={"model": "m"})
        status, listed, _ = await alice_later.call("GET", "/api/ai/api-keys")
        assert status == 200 and [k["id"] for k in listed] == [key["id"]]
        status, _, headers = await alice_later.chat()
        assert status == 200 and headers["x-relaygate-key-owner"] == "user"
        assert openai_fake.requests[-1].headers["authorization"] == f"Bearer {ALICE_OPENAI}"
        for stranger in (bob, alice_elsewhere):
            status, body, _ = await stranger.call("DELETE", f"/api/ai/api-keys/{key['id']}")
            assert status == 404, body
            status, _, headers = await stranger.chat()
            assert headers["x-relaygate-key-owner"] == "server"


async def test_doctor_reports_secrets_it_could_not_read(
    fakes: tuple[FakeOpenAI, FakeGemini],
) -> None:
    from relaygate.doctor import diagnose

    openai_fake, _ = fakes
    settings = byok_settings(openai_fake.base_url)
    async with running_gateway(settings) as gateway:
        await (await user(gateway, "alice")).add_key("openai", ALICE_OPENAI)

    def secrets_line(findings: list[Any]) -> Any:
        return next(f for f in findings if f.what.startswith("provider secrets"))

    found = secrets_line(await diagnose(settings, 5))
    assert found.status == "OK" and "1 stored, all under the newest key" in found.what
    rotated = msgspec_replace(settings, secret_key=f"{new_key()},{SECRET_KEY}")
    found = secrets_line(await diagnose(rotated, 5))
    assert found.status == "WARN" and "relaygate secrets rotate" in found.fix
    for key in (None, new_key()):
        found = secrets_line(await diagnose(msgspec_replace(settings, secret_key=key), 5))
        assert found.status == "FAIL", found
        assert SECRET_KEY not in found.line()


async def test_a_key_made_for_a_user_over_the_admin_api_shares_that_users_keys(
    gateway: RunningGateway,
) -> None:
    alice = await user(gateway, "alice")
    stored = await alice.add_key("openai", ALICE_OPENAI)
    admin = Client(gateway, gateway.admin_key)
    tenant = await gateway.state.identity.tenant_by_name("cafe")
    assert tenant is not None
    status, made, _ = await admin.call(
        "POST", "/admin/keys", {"tenant_id": tenant.id, "user": "alice", "tier": "unlimited"}
    )
    assert status == 201 and made["key"]["user"] == "alice", made
    status, listed, _ = await Client(gateway, made["api_key"]).call("GET", "/api/ai/api-keys")
    assert [k["id"] for k in listed] == [stored["id"]]
    status, changed, _ = await admin.call(
        "PATCH", f"/admin/keys/{made['key']['id']}", {"user": "bob"}
    )
    assert status == 200 and changed["user"] == "bob"
    status, listed, _ = await Client(gateway, made["api_key"]).call("GET", "/api/ai/api-keys")
    assert listed == []  # now bob's key: alice's provider keys are not his


async def test_a_change_reaches_another_replica_through_redis(
    fakes: tuple[FakeOpenAI, FakeGemini], redis_server: Any
) -> None:
    """Two gateways on one database and one Redis; their poll is off (an hour): a key and a
    configuration added on one serve on the other as soon as the message arrives."""
    import time

    openai_fake, _ = fakes
    common = {"redis_url": redis_server.url, "redis_prefix": f"byok{time.time_ns()}:"}
    one = byok_settings(openai_fake.base_url, byok={"poll_interval": 3600}, **common)
    two = byok_settings(
        openai_fake.base_url, byok={"poll_interval": 3600}, database_url=one.database_url,
        **common,
    )  # fmt: skip
    async with running_gateway(one) as first, running_gateway(two) as second:
        alice = await user(first, "alice")
        status, _, headers = await Client(second, alice.secret).chat()
        assert status == 200 and headers["x-relaygate-key-owner"] == "server"
        key = await alice.add_key("openai", ALICE_OPENAI)
        await alice.configure("openai", api_key_id=key["id"], config={"model": "m"})
        owner = "server"
        for _ in range(100):  # the message is on its way (bounded: 5 s)
            _, _, headers = await Client(second, alice.secret).chat()
            owner = headers["x-relaygate-key-owner"]
            if owner == "user":
                break
            await asyncio.sleep(0.05)
        assert owner == "user"
        assert openai_fake.requests[-1].headers["authorization"] == f"Bearer {ALICE_OPENAI}"
