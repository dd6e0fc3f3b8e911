"""The admin API through a running gateway: keys and tenants, the seeds' key routes, BOLA."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import openai
import pytest
import sqlalchemy as sa

from relaygate.auth.keys import hash_secret
from tests.conftest import MOCK
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key

USER = [{"role": "user", "content": "hi"}]
PUBLIC_FIELDS = {
    "id", "tenant_id", "tenant_name", "prefix", "name", "description", "role", "tier", "limits",
    "enabled", "expires_at", "last_used_at", "metadata", "created_at", "revoked", "cache", "user",
}  # fmt: skip
ADMIN_ROUTES = [
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("GET", "/admin/keys/key_x"),
    ("PATCH", "/admin/keys/key_x"),
    ("DELETE", "/admin/keys/key_x"),
    ("POST", "/admin/keys/key_x/rotate"),
    ("GET", "/admin/tenants"),
    ("POST", "/admin/tenants"),
    ("GET", "/admin/tenants/ten_x"),
    ("PATCH", "/admin/tenants/ten_x"),
    ("DELETE", "/admin/tenants/ten_x"),
    ("POST", "/auth/create-key"),
    ("POST", "/api/keys"),
    ("DELETE", "/api/keys/key_x"),
]


class Client:
    """aiohttp against one gateway; every answer is (status, JSON body, headers)."""

    def __init__(self, gateway: RunningGateway, session: aiohttp.ClientSession) -> None:
        self.gateway = gateway
        self.session = session
        self.seen: list[str] = []  # every response body, to check nothing ever leaks

    async def call(
        self, method: str, path: str, key: str | None = None, **kwargs: Any
    ) -> tuple[int, Any, Any]:
        headers = dict(kwargs.pop("headers", {}))
        secret = self.gateway.admin_key if key is None else key
        if secret:
            headers.setdefault("Authorization", f"Bearer {secret}")
        async with self.session.request(
            method, self.gateway.url + path, headers=headers, **kwargs
        ) as response:
            text = await response.text()
            self.seen.append(text)
            body = await response.json(content_type=None) if text else None
            return response.status, body, response.headers

    async def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        got, body, _ = await self.call(method, path, **kwargs)
        assert got == status, (method, path, got, body)
        return body

    async def chat(self, secret: str) -> int:
        """The status of one chat completion with this key."""
        status, _, _ = await self.call(
            "POST", "/v1/chat/completions", key=secret, json={"model": "mock", "messages": USER}
        )
        return status


@pytest.fixture
async def admin(mock_gateway: RunningGateway) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session:
        yield Client(mock_gateway, session)


async def create(admin: Client, **fields: Any) -> tuple[dict[str, Any], str]:
    body = await admin.ok("POST", "/admin/keys", 201, json={"tenant_id": "acme", **fields})
    return body["key"], body["api_key"]


def assert_error(body: Any, param: str | None = None, type_: str | None = None) -> None:
    """OpenAI's error shape, naming the field when one was wrong."""
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
        assert param.split(".")[-1] in body["error"]["message"], body
    if type_ is not None:
        assert body["error"]["type"] == type_, body


# keys


async def test_created_user_key_works_with_the_openai_client(admin: Client) -> None:
    await admin.ok("POST", "/admin/tenants", 201, json={"name": "acme", "tier": "pro"})
    key, secret = await create(
        admin, name="ci", description="the CI", metadata={"team": "infra"},
        limits={"requests_per_minute": 50}, expires_in_days=30,
    )  # fmt: skip
    assert set(key) == PUBLIC_FIELDS
    assert secret.startswith("rg_") and secret.startswith(key["prefix"])
    assert key["role"] == "user" and key["tier"] == "pro"  # the tenant's tier by default
    assert key["tenant_name"] == "acme" and key["enabled"] and not key["revoked"]
    assert key["limits"] == {"requests_per_minute": 50}
    assert key["metadata"] == {"team": "infra"}
    expires = datetime.fromisoformat(key["expires_at"])
    assert timedelta(days=29, hours=23) < expires - datetime.now(UTC) <= timedelta(days=30)

    async with admin.gateway.client(api_key=secret) as client:
        reply = await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
    assert reply.choices[0].message.content

    shown = await admin.ok("GET", f"/admin/keys/{key['id']}")
    assert shown["id"] == key["id"] and set(shown) == PUBLIC_FIELDS
    listed = await admin.ok("GET", "/admin/keys?tenant_id=acme")
    assert [k["id"] for k in listed["data"]] == [key["id"]]


async def test_user_key_is_403_on_admin_routes_and_no_key_is_401(admin: Client) -> None:
    _, user = await new_key(admin.gateway)
    for method, path in ADMIN_ROUTES:
        status, body, headers = await admin.call(method, path, key=user, json={})
        assert status == 403, (method, path, body)
        assert_error(body, type_="permission_error")
        assert headers["x-request-id"]
        status, body, headers = await admin.call(method, path, key="", json={})
        assert status == 401, (method, path, body)
        assert_error(body, type_="authentication_error")
        assert "Bearer" in headers["www-authenticate"]
        status, _, _ = await admin.call(method, path, key="rg_not-a-real-key-000000000000000")
        assert status == 401
    status, body, _ = await admin.call("GET", "/api/keys", key="")
    assert status == 401


async def test_disable_is_refused_on_the_next_request(admin: Client) -> None:
    key, secret = await create(admin, tenant_id=(await _tenant(admin, "acme"))["id"])
    assert await admin.chat(secret) == 200  # now cached in the gateway
    body = await admin.ok("PATCH", f"/admin/keys/{key['id']}", json={"enabled": False})
    assert body["enabled"] is False
    assert await admin.chat(secret) == 401  # the very next request: no poll to wait for
    await admin.ok("PATCH", f"/admin/keys/{key['id']}", json={"enabled": True})
    assert await admin.chat(secret) == 200


async def test_patch_changes_fields_and_null_clears(admin: Client) -> None:
    key, _ = await create(admin, tenant_id=(await _tenant(admin, "acme"))["id"],
                          limits={"requests_per_hour": 9}, metadata={"a": 1})  # fmt: skip
    path = f"/admin/keys/{key['id']}"
    changed = await admin.ok(
        "PATCH", path,
        json={"name": "renamed", "description": "d", "role": "admin", "tier": "enterprise",
              "expires_at": "2031-02-03T04:05:06Z", "metadata": {"b": 2}},
    )  # fmt: skip
    assert (changed["name"], changed["description"], changed["role"], changed["tier"]) == (
        "renamed", "d", "admin", "enterprise",
    )  # fmt: skip
    assert datetime.fromisoformat(changed["expires_at"]) == datetime(
        2031, 2, 3, 4, 5, 6, tzinfo=UTC
    )
    assert changed["limits"] == {"requests_per_hour": 9} and changed["metadata"] == {"b": 2}
    cleared = await admin.ok("PATCH", path, json={"limits": None, "expires_at": None})
    assert cleared["limits"] is None and cleared["expires_at"] is None
    assert cleared["name"] == "renamed"
    assert await admin.ok("PATCH", path, json={}) == cleared


async def test_promoted_key_becomes_admin_at_once(admin: Client) -> None:
    key, secret = await create(admin, tenant_id=(await _tenant(admin, "acme"))["id"])
    assert (await admin.call("GET", "/admin/keys", key=secret))[0] == 403
    await admin.ok("PATCH", f"/admin/keys/{key['id']}", json={"role": "admin"})
    assert (await admin.call("GET", "/admin/keys", key=secret))[0] == 200


async def test_rotate_old_secret_401_new_works(admin: Client) -> None:
    key, old = await create(admin, tenant_id=(await _tenant(admin, "acme"))["id"])
    assert await admin.chat(old) == 200
    body = await admin.ok("POST", f"/admin/keys/{key['id']}/rotate")
    new = body["api_key"]
    assert set(body) == {"key", "api_key"} and body["key"]["id"] == key["id"]
    assert new != old and new.startswith(body["key"]["prefix"])
    assert await admin.chat(old) == 401
    async with admin.gateway.client(api_key=new) as client:
        reply = await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    async with admin.gateway.client(api_key=old) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]


async def test_revoke(admin: Client) -> None:
    key, secret = await create(admin, tenant_id=(await _tenant(admin, "acme"))["id"])
    assert await admin.chat(secret) == 200
    path = f"/admin/keys/{key['id']}"
    revoked = await admin.ok("DELETE", path)
    assert revoked["id"] == key["id"] and revoked["revoked"] is True and not revoked["enabled"]
    assert await admin.chat(secret) == 401
    assert (await admin.ok("DELETE", path))["revoked"] is True  # idempotent
    assert (await admin.ok("GET", path))["revoked"] is True
    listed = await admin.ok("GET", "/admin/keys")
    assert key["id"] not in [k["id"] for k in listed["data"]]
    listed = await admin.ok("GET", "/admin/keys?include_revoked=true")
    assert key["id"] in [k["id"] for k in listed["data"]]
    for method, suffix, body in (("PATCH", "", {"enabled": True}), ("POST", "/rotate", None)):
        status, answer, _ = await admin.call(method, path + suffix, json=body)
        assert status == 409, answer
        assert_error(answer)
    assert await admin.chat(secret) == 401


async def test_expired_key_is_401(admin: Client) -> None:
    tenant = (await _tenant(admin, "acme"))["id"]
    soon = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    _, short_lived = await create(admin, tenant_id=tenant, expires_at=soon)
    key, secret = await create(admin, tenant_id=tenant, expires_in_days=1)
    assert await admin.chat(short_lived) == 200
    assert await admin.chat(secret) == 200
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    await admin.ok("PATCH", f"/admin/keys/{key['id']}", json={"expires_at": past})
    assert await admin.chat(secret) == 401
    await asyncio.sleep(1.6)
    assert await admin.chat(short_lived) == 401


async def test_unknown_ids_are_404(admin: Client) -> None:
    for method, path, body in (
        ("GET", "/admin/keys/key_nope", None),
        ("PATCH", "/admin/keys/key_nope", {"enabled": False}),
        ("DELETE", "/admin/keys/key_nope", None),
        ("POST", "/admin/keys/key_nope/rotate", None),
        ("GET", "/admin/tenants/ten_nope", None),
        ("PATCH", "/admin/tenants/ten_nope", {"tier": "pro"}),
        ("DELETE", "/admin/tenants/ten_nope", None),
        ("GET", "/admin/keys?tenant_id=nobody", None),
        ("POST", "/admin/keys", {"tenant_id": "nobody"}),
    ):
        status, answer, _ = await admin.call(method, path, json=body)
        assert status == 404, (method, path, answer)
        assert_error(answer)


async def test_unknown_routes_and_methods_in_error_shape(admin: Client) -> None:
    status, body, _ = await admin.call("GET", "/admin/nothing")
    assert status == 404
    assert_error(body)
    status, body, headers = await admin.call("PUT", "/admin/keys")
    assert status == 405 and "POST" in body["error"]["message"]
    assert_error(body)
    assert headers["x-request-id"]


# tenants


async def test_tenants_crud(admin: Client) -> None:
    tenant = await admin.ok("POST", "/admin/tenants", 201, json={"name": "beta", "tier": "pro"})
    assert set(tenant) == {"id", "name", "tier", "created_at"} and tenant["tier"] == "pro"
    status, body, _ = await admin.call("POST", "/admin/tenants", json={"name": "beta"})
    assert status == 409
    assert_error(body, param="name")
    path = f"/admin/tenants/{tenant['id']}"
    assert await admin.ok("GET", path) == tenant
    names = [t["name"] for t in (await admin.ok("GET", "/admin/tenants"))["data"]]
    assert "beta" in names and "default" in names

    key, secret = await create(admin, tenant_id="beta")
    assert key["tier"] == "pro"
    patched = await admin.ok("PATCH", path, json={"name": "beta-2", "tier": None})
    assert (patched["name"], patched["tier"]) == ("beta-2", None)
    assert await admin.chat(secret) == 200
    status, body, _ = await admin.call("DELETE", path)
    assert status == 409, body  # still has a live key
    await admin.ok("DELETE", f"/admin/keys/{key['id']}")
    assert await admin.ok("DELETE", path) == {"id": tenant["id"], "deleted": True}
    assert (await admin.call("GET", path))[0] == 404
    assert await admin.chat(secret) == 401


async def test_tenant_name_taken_on_rename_is_409(admin: Client) -> None:
    await admin.ok("POST", "/admin/tenants", 201, json={"name": "one"})
    two = await admin.ok("POST", "/admin/tenants", 201, json={"name": "two"})
    status, body, _ = await admin.call("PATCH", f"/admin/tenants/{two['id']}", json={"name": "one"})
    assert status == 409
    assert_error(body)


# seed 001


async def test_seed_001_create_key(admin: Client) -> None:
    request = {"tenant_id": "nexusai", "tier": "pro", "description": "Production API key",
               "expires_in_days": 365}  # fmt: skip
    body = await admin.ok("POST", "/auth/create-key", json=request)
    assert set(body) >= {"api_key", "key_id", "tier", "rate_limit", "expires_at", "created_at"}
    assert body["tier"] == "pro"
    assert body["rate_limit"] == {"requests": 1000, "window": 3600}
    assert body["expires_at"].endswith("Z") and body["created_at"].endswith("Z")
    created = datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert expires - created == timedelta(days=365)
    assert await admin.chat(body["api_key"]) == 200

    key = await admin.ok("GET", f"/admin/keys/{body['key_id']}")
    assert key["tenant_name"] == "nexusai" and key["description"] == "Production API key"
    again = await admin.ok("POST", "/auth/create-key", json={"tenant_id": key["tenant_id"]})
    assert again["tier"] == "free" and again["rate_limit"] == {"requests": 100, "window": 3600}
    assert again["expires_at"] is None
    by_name = await admin.ok("POST", "/auth/create-key", json={"tenant_id": "nexusai"})
    tenants = (await admin.ok("GET", "/admin/tenants"))["data"]
    assert [t["name"] for t in tenants].count("nexusai") == 1
    assert (await admin.ok("GET", f"/admin/keys/{by_name['key_id']}"))["tenant_id"] == key[
        "tenant_id"
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tier": "pro"}, "tenant_id"),
        ({"tenant_id": "x", "tier": "gold"}, "tier"),
        ({"tenant_id": "x", "expires_in_days": 0}, "expires_in_days"),
        ({"tenant_id": "x", "expires_in_days": "365"}, "expires_in_days"),
        ({"tenant_id": "x", "role": "admin"}, "role"),
    ],
)
async def test_seed_001_bad_input(admin: Client, body: dict[str, Any], param: str) -> None:
    status, answer, _ = await admin.call("POST", "/auth/create-key", json=body)
    assert status == 400, answer
    assert_error(answer, param=param)
    tenants = (await admin.ok("GET", "/admin/tenants"))["data"]
    assert [t["name"] for t in tenants] == ["default"]  # nothing was created


# seed 003


async def test_seed_003_api_keys(admin: Client) -> None:
    created = await admin.ok(
        "POST", "/api/keys", json={"name": "Demo User Key", "role": "user", "rate_limit": 50}
    )
    assert {"api_key", "name", "role", "rate_limit", "created_at"} <= set(created)
    assert (created["name"], created["role"], created["rate_limit"]) == (
        "Demo User Key",
        "user",
        50,
    )
    assert created["is_active"] is True and created["api_key"].startswith("rg_")
    secret, key_id = created["api_key"], created["id"]
    stored = await admin.ok("GET", f"/admin/keys/{key_id}")
    assert stored["limits"] == {"requests_per_hour": 50}
    assert await admin.chat(secret) == 200

    listed = await admin.ok("GET", "/api/keys")
    assert listed["total"] == len(listed["api_keys"]) == 2  # the admin key and this one
    entry = next(k for k in listed["api_keys"] if k["id"] == key_id)
    assert entry["key_preview"].startswith(secret[:9]) and entry["key_preview"].endswith("...")
    assert "api_key" not in entry
    assert {"name", "role", "rate_limit", "created_at"} <= set(entry)

    mine = await admin.ok("GET", "/api/keys", key=secret)
    assert [k["id"] for k in mine["api_keys"]] == [key_id] and mine["total"] == 1
    assert (await admin.ok("GET", f"/api/keys/{key_id}", key=secret))["id"] == key_id

    defaults = await admin.ok("POST", "/api/keys", json={"name": "n"})
    assert (defaults["role"], defaults["rate_limit"], defaults["tier"]) == ("user", 100, "free")

    deleted = await admin.ok("DELETE", f"/api/keys/{key_id}")
    assert deleted["message"] == "API key revoked successfully"
    assert await admin.chat(secret) == 401
    assert (await admin.call("DELETE", f"/api/keys/{key_id}"))[0] == 404
    assert key_id not in [k["id"] for k in (await admin.ok("GET", "/api/keys"))["api_keys"]]


async def test_seed_003_delete_is_admin_only(admin: Client) -> None:
    own_id, own = await new_key(admin.gateway)
    other_id, _ = await new_key(admin.gateway, tenant="other")
    for target in (own_id, other_id, "key_nope"):
        status, body, _ = await admin.call("DELETE", f"/api/keys/{target}", key=own)
        assert status == 403, body
        assert_error(body, type_="permission_error")
    assert await admin.chat(own) == 200
    status, body, _ = await admin.call("POST", "/api/keys", key=own, json={"name": "x"})
    assert status == 403


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "name"),
        ({"name": "x", "rate_limit": -1}, "rate_limit"),
        ({"name": "x", "rate_limit": "many"}, "rate_limit"),
        ({"name": "x", "role": "root"}, "role"),
        ({"name": "x", "is_active": True}, "is_active"),
    ],
)
async def test_seed_003_bad_input(admin: Client, body: dict[str, Any], param: str) -> None:
    status, answer, _ = await admin.call("POST", "/api/keys", json=body)
    assert status == 400, answer
    assert_error(answer, param=param)


# BOLA


async def test_user_sees_only_its_own_key(admin: Client) -> None:
    mine_id, mine = await new_key(admin.gateway, tenant="acme")
    theirs_id, theirs = await new_key(admin.gateway, tenant="globex")
    same_tenant_id, _ = await new_key(admin.gateway, tenant="acme")

    listed = await admin.ok("GET", "/api/keys", key=mine)
    assert [k["id"] for k in listed["api_keys"]] == [mine_id]
    assert theirs_id not in str(listed) and same_tenant_id not in str(listed)

    status_other, other, _ = await admin.call("GET", f"/api/keys/{theirs_id}", key=mine)
    status_none, none, _ = await admin.call("GET", "/api/keys/key_0000000000000000", key=mine)
    status_peer, _, _ = await admin.call("GET", f"/api/keys/{same_tenant_id}", key=mine)
    assert status_other == status_none == status_peer == 404
    assert other["error"]["message"].replace(theirs_id, "ID") == none["error"]["message"].replace(
        "key_0000000000000000", "ID"
    )
    for method, path in (
        ("GET", f"/admin/keys/{theirs_id}"),
        ("GET", f"/admin/keys?tenant_id={(await _tenant(admin, 'globex'))['id']}"),
        ("POST", f"/admin/keys/{theirs_id}/rotate"),
        ("PATCH", f"/admin/keys/{theirs_id}"),
    ):
        assert (await admin.call(method, path, key=mine, json={"enabled": False}))[0] == 403
    assert await admin.chat(theirs) == 200  # untouched


# bad input


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tenant_id": "acme", "colour": "red"}, "colour"),
        ({"tenant_id": 5}, "tenant_id"),
        ({"tenant_id": ""}, "tenant_id"),
        ({"tenant_id": "acme", "role": "owner"}, "role"),
        ({"tenant_id": "acme", "tier": "gold"}, "tier"),
        ({"tenant_id": "acme", "tier": 3}, "tier"),
        ({"tenant_id": "acme", "limits": {"requests_per_hour": -5}}, "limits.requests_per_hour"),
        ({"tenant_id": "acme", "limits": {"per_fortnight": 5}}, "limits.per_fortnight"),
        ({"tenant_id": "acme", "limits": [1]}, "limits"),
        ({"tenant_id": "acme", "expires_at": "next tuesday"}, "expires_at"),
        ({"tenant_id": "acme", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"tenant_id": "acme", "expires_in_days": -1}, "expires_in_days"),
        ({"tenant_id": "acme", "expires_in_days": 1.5}, "expires_in_days"),
        (
            {"tenant_id": "acme", "expires_in_days": 1, "expires_at": "2099-01-01T00:00:00Z"},
            "expires_in_days",
        ),
        ({"tenant_id": "acme", "metadata": "x"}, "metadata"),
        ({"tenant_id": "acme", "name": "a\u0000b"}, "name"),
        ({"tenant_id": "acme", "name": "n" * 201}, "name"),
        ({"tenant_id": "acme", "enabled": False}, "enabled"),
    ],
)
async def test_bad_create_input_names_the_field(
    admin: Client, body: dict[str, Any], param: str
) -> None:
    await admin.ok("POST", "/admin/tenants", 201, json={"name": "acme"})
    status, answer, _ = await admin.call("POST", "/admin/keys", json=body)
    assert status == 400, answer
    assert_error(answer, param=param, type_="invalid_request_error")
    listed = await admin.ok("GET", "/admin/keys?tenant_id=acme")
    assert listed["data"] == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"enabled": "yes"}, "enabled"),
        ({"tier": "gold"}, "tier"),
        ({"tier": None}, "tier"),
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"role": "root"}, "role"),
        ({"key_hash": "0" * 64}, "key_hash"),
        ({"tenant_id": "ten_other"}, "tenant_id"),
        ({"limits": {"tokens_per_minute": "lots"}}, "limits.tokens_per_minute"),
    ],
)
async def test_bad_patch_input_names_the_field(
    admin: Client, body: dict[str, Any], param: str
) -> None:
    key, secret = await create(admin, tenant_id=(await _tenant(admin, "acme"))["id"])
    status, answer, _ = await admin.call("PATCH", f"/admin/keys/{key['id']}", json=body)
    assert status == 400, answer
    assert_error(answer, param=param)
    assert await admin.ok("GET", f"/admin/keys/{key['id']}") == key
    assert await admin.chat(secret) == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "tier": "gold"}, "tier"),
        ({"name": ["x"]}, "name"),
        ({"name": "x", "id": "ten_mine"}, "id"),
    ],
)
async def test_bad_tenant_input_names_the_field(
    admin: Client, body: dict[str, Any], param: str
) -> None:
    status, answer, _ = await admin.call("POST", "/admin/tenants", json=body)
    assert status == 400, answer
    assert_error(answer, param=param)


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"", "application/json", 400),
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'"text"', "application/json", 400),
        (b'{"tenant_id": "acme"}', "text/plain", 415),
    ],
)
async def test_unreadable_bodies(
    admin: Client, data: bytes, content_type: str, status: int
) -> None:
    got, body, _ = await admin.call(
        "POST", "/admin/keys", data=data, headers={"Content-Type": content_type}
    )
    assert got == status, body
    assert_error(body)


async def test_body_over_the_limit_is_413() -> None:
    async with running_gateway(make_settings(MOCK, max_body_bytes=4096)) as gateway:
        async with aiohttp.ClientSession() as session:
            admin = Client(gateway, session)
            status, body, _ = await admin.call(
                "POST", "/admin/keys", json={"tenant_id": "acme", "description": "a" * 5000}
            )
    assert status == 413
    assert_error(body)
    assert "4096 bytes" in body["error"]["message"]


async def test_query_flags_are_checked(admin: Client) -> None:
    status, body, _ = await admin.call("GET", "/admin/keys?include_revoked=perhaps")
    assert status == 400
    assert_error(body, param="include_revoked")


async def test_secrets_and_hashes_never_leak(admin: Client) -> None:
    await admin.ok("POST", "/admin/tenants", 201, json={"name": "acme"})
    key, first = await create(admin)
    second = (await admin.ok("POST", f"/admin/keys/{key['id']}/rotate"))["api_key"]
    seed = await admin.ok("POST", "/auth/create-key", json={"tenant_id": "acme"})
    api = await admin.ok("POST", "/api/keys", json={"name": "x"})
    secrets = [first, second, seed["api_key"], api["api_key"], admin.gateway.admin_key]
    creations = len(admin.seen)
    await admin.ok("GET", "/admin/keys?include_revoked=true")
    await admin.ok("GET", f"/admin/keys/{key['id']}")
    await admin.ok("GET", "/api/keys")
    await admin.ok("GET", f"/api/keys/{key['id']}")
    await admin.ok("PATCH", f"/admin/keys/{key['id']}", json={"name": "n"})
    await admin.ok("DELETE", f"/admin/keys/{key['id']}")
    await admin.ok("GET", "/admin/tenants")
    everything = "\n".join(admin.seen)
    assert "key_hash" not in everything
    for secret in secrets:
        assert hash_secret(secret) not in everything
    after_creation = "\n".join(admin.seen[creations:])
    for secret in secrets:
        assert secret not in after_creation  # shown once, at creation or rotation only
        assert secret[:12] not in after_creation


async def test_admin_api_on_postgresql(database_url: str) -> None:
    async with running_gateway(make_settings(MOCK, database_url=database_url)) as gateway:
        async with aiohttp.ClientSession() as session:
            admin = Client(gateway, session)
            await admin.ok("POST", "/admin/tenants", 201, json={"name": "Société 東京"})
            key, secret = await create(admin, tenant_id="Société 東京", name="x'); DROP TABLE t;--")
            assert key["name"] == "x'); DROP TABLE t;--"
            assert await admin.chat(secret) == 200
            await admin.ok("PATCH", f"/admin/keys/{key['id']}", json={"enabled": False})
            assert await admin.chat(secret) == 401
            rotated = await admin.ok("POST", f"/admin/keys/{key['id']}/rotate")
            await admin.ok("PATCH", f"/admin/keys/{key['id']}", json={"enabled": True})
            assert await admin.chat(rotated["api_key"]) == 200
            assert await admin.chat(secret) == 401
            await admin.ok("DELETE", f"/admin/keys/{key['id']}")
            assert await admin.chat(rotated["api_key"]) == 401
            # Values PostgreSQL text cannot hold are refused or not found, never a 5xx.
            for path in ("/admin/keys/key%00x", "/admin/tenants/ten%00x", "/api/keys/k%00"):
                status, body, _ = await admin.call("GET", path)
                assert status == 404, (path, body)
            assert (await admin.call("GET", "/admin/keys?tenant_id=a%00b"))[0] == 400
            assert (await admin.call("POST", "/admin/tenants", json={"name": "a\u0000"}))[0] == 400
            meta = {"note\u0000": "nul \u0000 inside", "deep": [{"x": "\u0000"}]}
            with_meta, _ = await create(admin, tenant_id="Société 東京", metadata=meta)
            assert (await admin.ok("GET", f"/admin/keys/{with_meta['id']}"))["metadata"] == meta


async def test_store_failure_is_a_503_in_error_shape(admin: Client) -> None:
    assert (await admin.ok("GET", "/admin/keys"))["data"]  # the admin key is now cached
    async with admin.gateway.state.engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE api_keys"))
    status, body, _ = await admin.call("GET", "/admin/keys")
    assert status == 503, body
    assert_error(body, type_="service_unavailable")
    assert "api_keys" not in body["error"]["message"]  # no database internals


async def _tenant(admin: Client, name: str) -> dict[str, Any]:
    """The tenant of that name, created when missing."""
    for tenant in (await admin.ok("GET", "/admin/tenants"))["data"]:
        if tenant["name"] == name:
            return dict(tenant)
    return dict(await admin.ok("POST", "/admin/tenants", 201, json={"name": name}))
