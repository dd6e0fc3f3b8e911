"""JWTs through the whole gateway: roles and tenants come from claims, bad tokens are one 401.

Tokens are minted with PyJWT, as an identity provider would; HS256 with a shared secret,
and RS256/ES256 from a JWKS served by a real local HTTP server.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import MOCK
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.integration.test_usage import rows

SECRET = "s" * 32 + "-a-shared-hs256-secret"
USER = [{"role": "user", "content": "hi"}]
BODY = {"model": "mock", "messages": USER}
ADMIN_ROUTES = [  # in this order: the key is made in the tenant made just before
    ("GET", "/admin/tenants"),
    ("POST", "/admin/tenants"),
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("GET", "/admin/usage"),
    ("GET", "/admin/cache"),
    ("DELETE", "/admin/cache"),
]
# Keys made once, outside any event loop (generating an RSA key is CPU work).
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def hs256(claims: dict[str, Any], secret: str = SECRET, **header: Any) -> str:
    return jwt.encode(_with_exp(claims), secret, algorithm="HS256", headers=header or None)


def _with_exp(claims: dict[str, Any]) -> dict[str, Any]:
    return {"exp": int(time.time()) + 600, **claims}


async def send(
    gateway: RunningGateway, method: str, path: str, token: str, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, gateway.url + path, json=body, headers=headers
        ) as response:
            return response.status, await response.json(content_type=None)


def admin_body(path: str) -> Any:
    if path == "/admin/keys":
        return {"tenant_id": "made-by-jwt", "name": "made-by-jwt"}
    if path == "/admin/tenants":
        return {"name": "made-by-jwt"}
    return None


@asynccontextmanager
async def hs256_gateway(**jwt_config: Any) -> AsyncIterator[RunningGateway]:
    config = {"secret": SECRET, "tenant_claim": "org", **jwt_config}
    async with running_gateway(make_settings(MOCK, auth={"jwt": config})) as gateway:
        yield gateway


async def test_roles_from_claims_guard_the_admin_routes() -> None:
    user = hs256({"sub": "alice", "org": "acme", "role": "user"})
    unstated = hs256({"sub": "bob", "org": "acme"})  # default_role: user
    admin = hs256({"sub": "root", "org": "ops", "role": "admin"})
    async with hs256_gateway() as gateway:
        keys_before = len(await gateway.state.identity.list_keys())
        for token in (user, unstated, admin):
            status, reply = await send(gateway, "POST", "/v1/chat/completions", token, BODY)
            assert status == 200, reply
            assert reply["choices"][0]["message"]["content"]
        for method, path in ADMIN_ROUTES:
            for token in (user, unstated):
                status, reply = await send(gateway, method, path, token, admin_body(path))
                assert status == 403, (method, path, status, reply)
                assert reply["error"]["type"] == "permission_error"
            status, reply = await send(gateway, method, path, admin, admin_body(path))
            assert status in (200, 201), (method, path, status, reply)
        # a user token sees no key but its own (none): the seeds' route is not admin-only
        status, reply = await send(gateway, "GET", "/api/keys", user)
        assert status == 200 and reply["api_keys"] == [], reply
        status, reply = await send(gateway, "GET", "/api/keys", admin)
        assert status == 200 and reply["total"] >= 2, reply
        keys = await gateway.state.identity.list_keys()
        assert len(keys) == keys_before + 1  # only the admin's POST made one
        assert keys[-1].name == "made-by-jwt"


async def test_default_role_admin_is_honoured_and_a_stated_user_stays_user() -> None:
    async with hs256_gateway(default_role="admin") as gateway:
        status, _ = await send(gateway, "GET", "/admin/keys", hs256({"sub": "x"}))
        assert status == 200
        status, _ = await send(gateway, "GET", "/admin/keys", hs256({"sub": "x", "role": "user"}))
        assert status == 403


async def test_tenant_and_subject_come_from_claims() -> None:
    async with hs256_gateway() as gateway:
        tokens = [
            hs256({"sub": "alice", "org": "acme"}),
            hs256({"sub": "bob"}),  # no tenant claim: a tenant of one, named after the subject
            hs256({"sub": "carol", "org": "globex", "tenant": "not-this-one"}),
        ]
        for token in tokens:
            status, _ = await send(gateway, "POST", "/v1/chat/completions", token, BODY)
            assert status == 200
        found = await rows(gateway, 3)
    assert sorted(row.tenant_id for row in found) == ["acme", "bob", "globex"]
    assert {row.key_id for row in found} == {None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None = None) -> str:
    """A token built by hand: unsigned, or HMAC-SHA256-signed with ``hmac_key``."""
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(_with_exp(claims)).encode())
    signing_input = f"{head}.{body}".encode()
    signature = b"" if hmac_key is None else hmac.new(hmac_key, signing_input, "sha256").digest()
    return f"{head}.{body}.{_b64(signature)}"


def bad_tokens() -> dict[str, str]:
    admin = {"sub": "mallory", "role": "admin"}
    valid = hs256(admin)
    head, _, signature = valid.split(".")
    tampered_claims = _b64(
        json.dumps(_with_exp({"sub": "mallory", "role": "admin", "x": 1})).encode()
    )
    return {
        "expired": hs256({**admin, "exp": int(time.time()) - 3600}),
        "wrong secret": hs256(admin, secret="w" * 48),
        "tampered claims": f"{head}.{tampered_claims}.{signature}",
        "alg none": _forged({"alg": "none", "typ": "JWT"}, admin),
        "alg HS512 (not configured)": jwt.encode(_with_exp(admin), SECRET * 2, algorithm="HS512"),
        "alg RS256 (other family)": jwt.encode(_with_exp(admin), RSA_KEY, algorithm="RS256"),
        "no exp": jwt.encode({"sub": "mallory", "role": "admin"}, SECRET, algorithm="HS256"),
        "not yet valid": hs256({**admin, "nbf": int(time.time()) + 3600}),
        "unknown role": hs256({"sub": "mallory", "role": "root"}),
        "no subject": hs256({"role": "admin"}),
    }


@pytest.mark.parametrize("kind", list(bad_tokens()))
async def test_bad_tokens_are_401_on_inference_and_admin(kind: str) -> None:
    token = bad_tokens()[kind]
    async with hs256_gateway() as gateway:
        for method, path, body in [
            ("POST", "/v1/chat/completions", BODY),
            ("GET", "/admin/keys", None),
            ("GET", "/v1/models", None),
        ]:
            status, reply = await send(gateway, method, path, token, body)
            assert status == 401, (kind, path, status, reply)
            assert reply["error"]["type"] == "authentication_error"
            assert token not in json.dumps(reply)


# -- JWKS (RS256 and ES256), served by a real HTTP server ---------------------------------


def _jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg)
    entry: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return {**entry, "kid": kid, "alg": alg, "use": "sig"}


@asynccontextmanager
async def jwks_server(document: dict[str, Any]) -> AsyncIterator[str]:
    async def handler(_request: web.Request) -> web.Response:
        return web.json_response(document)

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/.well-known/jwks.json"
    finally:
        await runner.cleanup()


async def test_jwks_rs256_and_es256_roles_and_confusion() -> None:
    document = {"keys": [_jwk(RSA_KEY, "rsa-1", "RS256"), _jwk(EC_KEY, "ec-1", "ES256")]}
    async with jwks_server(document) as url:
        config = {"jwks_url": url, "issuer": "https://idp.example/", "audience": "relaygate"}
        settings = make_settings(MOCK, auth={"jwt": config})
        async with running_gateway(settings) as gateway:
            base = {"iss": "https://idp.example/", "aud": "relaygate", "tenant": "acme"}

            def rs(claims: dict[str, Any], kid: str = "rsa-1") -> str:
                return jwt.encode(_with_exp({**base, **claims}), RSA_KEY, "RS256", {"kid": kid})

            def es(claims: dict[str, Any]) -> str:
                return jwt.encode(_with_exp({**base, **claims}), EC_KEY, "ES256", {"kid": "ec-1"})

            for token in (rs({"sub": "u"}), es({"sub": "u", "role": "user"})):
                assert (await send(gateway, "POST", "/v1/chat/completions", token, BODY))[0] == 200
                assert (await send(gateway, "GET", "/admin/keys", token))[0] == 403
            for token in (rs({"sub": "a", "role": "admin"}), es({"sub": "a", "role": "admin"})):
                assert (await send(gateway, "GET", "/admin/keys", token))[0] == 200

            admin = {"sub": "mallory", "role": "admin"}
            public_pem = RSA_KEY.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            refused = {
                # the public key used as an HMAC secret: the classic algorithm confusion
                "HS256 with the public key": _forged(
                    {"alg": "HS256", "kid": "rsa-1"}, {**base, **admin}, hmac_key=public_pem
                ),
                "signed by another key": jwt.encode(
                    _with_exp({**base, **admin}), other_rsa, "RS256", {"kid": "rsa-1"}
                ),
                "RS256 header on the EC key": rs(admin, kid="ec-1"),
                "wrong audience": rs({**admin, "aud": "someone-else"}),
                "wrong issuer": rs({**admin, "iss": "https://evil.example/"}),
                "expired": rs({**admin, "exp": int(time.time()) - 3600}),
                "alg none": _forged({"alg": "none", "kid": "rsa-1"}, {**base, **admin}),
            }
            for kind, token in refused.items():
                for path in ("/admin/keys", "/v1/models"):
                    status, reply = await send(gateway, "GET", path, token)
                    assert status == 401, (kind, path, status, reply)
