"""JWT verification: HS256 with a secret, RS256/ES256 against a real local JWKS server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import socket
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from relaygate.auth.jwt import JWTIdentity, JWTVerifier
from relaygate.errors import AuthenticationError, ConfigError
from relaygate.settings import JWTConfig, jwt_config_problem

SECRET = "s3cr3t-0123456789-abcdefghijklmnopq"  # 36 bytes: long enough for HS256


# -- keys, tokens, a JWKS server, a clock --------------------------------------------------


@dataclass(frozen=True)
class Keys:
    rsa: rsa.RSAPrivateKey
    rsa2: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa2=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
    )


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str | None, alg: str | None = "RS256") -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "use": "sig", **({"kid": kid} if kid else {}), **({"alg": alg} if alg else {})}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "exp": now + 300, "iat": now}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def signed(payload: dict[str, Any], key: Any, alg: str, kid: str | None) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token built without PyJWT's guards (which refuse to sign these)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = (
        b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{b64(signature)}"


@dataclass
class JWKSServer:
    """A real JWKS endpoint on 127.0.0.1; tests change what it serves and count its hits."""

    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    hits: int = 0
    status: int = 200
    delay: float = 0.0
    body: bytes | None = None
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.delay:  # a slow answer, cut short when the test ends
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), self.delay)
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/json")
        return web.json_response({"keys": self.keys}, status=self.status)


@pytest.fixture
async def jwks() -> AsyncIterator[JWKSServer]:
    server = JWKSServer()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}/.well-known/jwks.json"
    try:
        yield server
    finally:
        server.closing.set()
        await runner.cleanup()


class Clock:
    """A monotonic clock the test moves by hand (instead of sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MakeVerifier = Callable[..., JWTVerifier]


@pytest.fixture
async def make_verifier() -> AsyncIterator[MakeVerifier]:
    made: list[JWTVerifier] = []

    def make(config: JWTConfig, **kwargs: Any) -> JWTVerifier:
        verifier = JWTVerifier(config, **kwargs)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.aclose()


@pytest.fixture
def hs(make_verifier: MakeVerifier) -> JWTVerifier:
    return make_verifier(JWTConfig(secret=SECRET))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jwks_verifier(
    make_verifier: MakeVerifier, jwks: JWKSServer, keys: Keys, clock: Clock
) -> JWTVerifier:
    jwks.keys = [rsa_jwk(keys.rsa, "rsa-1"), ec_jwk(keys.ec, "ec-1")]
    return make_verifier(JWTConfig(jwks_url=jwks.url), clock=clock)


async def refused(verifier: JWTVerifier, token: str) -> str:
    """The message of the AuthenticationError ``verify`` raises (which must not hold the token)."""
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify(token)
    message = caught.value.message
    assert token not in message
    assert caught.value.status == 401
    return message


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/jwks.json"


# -- shape ---------------------------------------------------------------------------------


def test_looks_like_jwt() -> None:
    assert JWTVerifier.looks_like_jwt(hs256(claims()))
    assert JWTVerifier.looks_like_jwt(
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0."
    )  # unsigned: still a JWT
    for not_jwt in (
        "rg_abcdef0123456789",
        "a.b",
        "a.b.c.d",
        "a b.c.d",
        "a.b+c.d",
        "",
        "..",
        "x" * 20,
    ):
        assert not JWTVerifier.looks_like_jwt(not_jwt)
    assert not JWTVerifier.looks_like_jwt("a" * 20_000 + ".b.c")


async def test_oversized_or_malformed_token_is_refused(hs: JWTVerifier) -> None:
    assert await refused(hs, "not-a-jwt") == "Invalid token: malformed"
    assert await refused(hs, "e30.e30." + "A" * 20_000) == "Invalid token: malformed"
    assert await refused(hs, "e30.!!!.abc") == "Invalid token: malformed"
    assert await refused(hs, "bm90IGpzb24.e30.abc") == "Invalid token: malformed"


# -- HS256 ---------------------------------------------------------------------------------


async def test_hs256_valid_token_maps_to_identity(hs: JWTVerifier) -> None:
    payload = claims()
    identity = await hs.verify(hs256(payload))
    assert identity == JWTIdentity(
        subject="alice", tenant="alice", role="user", tier="free", expires_at=float(payload["exp"])
    )


async def test_hs256_expired_refused_but_leeway_honoured(hs: JWTVerifier) -> None:
    now = int(time.time())
    assert await refused(hs, hs256(claims(exp=now - 120))) == "Invalid token: expired"
    assert (await hs.verify(hs256(claims(exp=now - 5)))).subject == "alice"  # within 30 s leeway


async def test_zero_leeway_refuses_just_expired(make_verifier: MakeVerifier) -> None:
    strict = make_verifier(JWTConfig(secret=SECRET, leeway=0))
    assert (
        await refused(strict, hs256(claims(exp=int(time.time()) - 2))) == "Invalid token: expired"
    )


async def test_exp_is_required(hs: JWTVerifier) -> None:
    assert await refused(hs, hs256(claims(exp=None))) == "Invalid token: missing claim 'exp'"
    far = str(int(time.time()) + 300)
    assert (
        await refused(hs, hs256(claims(exp=far))) == "Invalid token: claim 'exp' must be a number"
    )


async def test_hs256_wrong_secret(hs: JWTVerifier) -> None:
    token = hs256(claims(), secret="another-secret-that-is-long-enough-32")
    assert await refused(hs, token) == "Invalid token: signature invalid"


async def test_tampered_payload_is_refused(hs: JWTVerifier) -> None:
    header, _, signature = hs256(claims()).split(".")
    forged = f"{header}.{b64(json.dumps(claims(role='admin')).encode())}.{signature}"
    assert await refused(hs, forged) == "Invalid token: signature invalid"


async def test_nbf_and_iat_in_the_future_are_refused(hs: JWTVerifier) -> None:
    later = int(time.time()) + 600
    assert await refused(hs, hs256(claims(nbf=later))) == "Invalid token: not yet valid"
    assert await refused(hs, hs256(claims(iat=later))) == "Invalid token: not yet valid"
    assert (await hs.verify(hs256(claims(nbf=int(time.time()) + 10)))).subject == "alice"  # leeway


async def test_issuer_and_audience_checked_when_configured(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(JWTConfig(secret=SECRET, issuer="https://idp", audience="relaygate"))
    good = claims(iss="https://idp", aud="relaygate")
    assert (await verifier.verify(hs256(good))).subject == "alice"
    assert (
        await verifier.verify(hs256({**good, "aud": ["other", "relaygate"]}))
    ).subject == "alice"
    assert (
        await refused(verifier, hs256({**good, "iss": "https://evil"}))
        == "Invalid token: issuer mismatch"
    )
    assert (
        await refused(verifier, hs256({**good, "aud": "other"}))
        == "Invalid token: audience mismatch"
    )
    assert (
        await refused(verifier, hs256(claims(aud="relaygate")))
        == "Invalid token: missing claim 'iss'"
    )
    assert (
        await refused(verifier, hs256(claims(iss="https://idp")))
        == "Invalid token: missing claim 'aud'"
    )


async def test_audience_ignored_when_not_configured(hs: JWTVerifier) -> None:
    assert (await hs.verify(hs256(claims(aud="anything", iss="anyone")))).subject == "alice"


async def test_missing_subject_and_bad_claims(hs: JWTVerifier) -> None:
    assert await refused(hs, hs256(claims(sub=None))) == "Invalid token: missing claim 'sub'"
    assert (
        await refused(hs, hs256(claims(sub="")))
        == "Invalid token: claim 'sub' must be a non-empty string"
    )
    bad_role = await refused(hs, hs256(claims(role="superuser")))
    assert bad_role == "Invalid token: claim 'role' must be 'admin' or 'user'"
    assert await refused(hs, hs256(claims(role=["admin"]))) == bad_role
    tier = await refused(hs, hs256(claims(tier={"name": "pro"})))
    assert tier == "Invalid token: claim 'tier' must be a non-empty string"
    assert (
        await refused(hs, hs256(claims(tenant="")))
        == "Invalid token: claim 'tenant' must be a non-empty string"
    )


async def test_claims_mapping_with_defaults_and_custom_names(make_verifier: MakeVerifier) -> None:
    config = JWTConfig(
        secret=SECRET,
        subject_claim="uid",
        tenant_claim="org",
        role_claim="https://relaygate/role",
        tier_claim="plan",
        default_role="admin",
        default_tier="pro",
    )
    verifier = make_verifier(config)
    full = await verifier.verify(
        hs256(
            claims(
                sub=None,
                uid="u-1",
                org="acme",
                plan="enterprise",
                **{"https://relaygate/role": "user"},
            )
        )
    )
    assert (full.subject, full.tenant, full.role, full.tier) == (
        "u-1",
        "acme",
        "user",
        "enterprise",
    )
    bare = await verifier.verify(hs256(claims(sub="ignored", uid=42)))
    assert (bare.subject, bare.tenant, bare.role, bare.tier) == ("42", "42", "admin", "pro")
    assert await refused(verifier, hs256(claims())) == "Invalid token: missing claim 'uid'"


async def test_admin_role(hs: JWTVerifier) -> None:
    assert (await hs.verify(hs256(claims(role="admin")))).role == "admin"


async def test_alg_none_is_refused(hs: JWTVerifier, jwks_verifier: JWTVerifier) -> None:
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert await refused(hs, unsigned) == "Invalid token: algorithm not allowed"
    assert await refused(jwks_verifier, unsigned) == "Invalid token: algorithm not allowed"
    with_kid = hand_made({"alg": "none", "kid": "rsa-1"}, claims(), None)
    assert await refused(jwks_verifier, with_kid) == "Invalid token: algorithm not allowed"


async def test_hs_verifier_refuses_public_key_tokens(hs: JWTVerifier, keys: Keys) -> None:
    token = signed(claims(), keys.rsa, "RS256", "rsa-1")
    assert await refused(hs, token) == "Invalid token: algorithm not allowed"


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (JWTConfig(), "exactly one"),
        (JWTConfig(secret=SECRET, jwks_url="http://idp/jwks"), "exactly one"),
        (JWTConfig(secret="short"), "at least 32 bytes"),
        (JWTConfig(secret=SECRET, algorithms=["HS512"]), "at least 64 bytes"),
        (JWTConfig(secret=SECRET, algorithms=[]), "must not be empty"),
        (JWTConfig(secret=SECRET, algorithms=["none"]), "['none'] cannot be used"),
        (JWTConfig(secret=SECRET, algorithms=["HS256", "RS256"]), "['RS256'] cannot be used"),
        (JWTConfig(jwks_url="http://idp/jwks", algorithms=["RS256", "HS256"]), "['HS256']"),
        (JWTConfig(jwks_url="http://idp/jwks", algorithms=["none"]), "['none']"),
        (JWTConfig(jwks_url="file:///etc/jwks.json"), "http:// or https://"),
    ],
)
def test_bad_configuration_is_refused(config: JWTConfig, problem: str) -> None:
    assert problem in (jwt_config_problem(config) or "")
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        JWTVerifier(config)


def test_short_secret_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        JWTVerifier(JWTConfig(secret="hunter2"))
    assert "hunter2" not in str(caught.value)


def test_good_configuration() -> None:
    assert jwt_config_problem(JWTConfig(secret=SECRET)) is None
    assert jwt_config_problem(JWTConfig(jwks_url="https://idp/jwks", algorithms=["PS256"])) is None


# -- JWKS ----------------------------------------------------------------------------------


async def test_malformed_headers_are_refused_before_any_fetch(
    jwks_verifier: JWTVerifier, jwks: JWKSServer
) -> None:
    for header in ({"alg": "RS256", "kid": 5}, {"alg": ["RS256"]}, {"kid": "rsa-1"}, ["RS256"]):
        token = f"{b64(json.dumps(header).encode())}.{b64(b'{}')}.c2ln"
        assert await refused(jwks_verifier, token) == "Invalid token: malformed"
    assert await refused(jwks_verifier, "bm90IGpzb24.e30.c2ln") == "Invalid token: malformed"
    assert jwks.hits == 0


async def test_rs256_and_es256_via_jwks(
    jwks_verifier: JWTVerifier, jwks: JWKSServer, keys: Keys
) -> None:
    rs = await jwks_verifier.verify(signed(claims(sub="bob"), keys.rsa, "RS256", "rsa-1"))
    es = await jwks_verifier.verify(signed(claims(sub="carol"), keys.ec, "ES256", "ec-1"))
    assert (rs.subject, es.subject) == ("bob", "carol")
    assert jwks.hits == 1  # one fetch serves every key until the cache expires


async def test_jwks_cache_expires(
    jwks_verifier: JWTVerifier, jwks: JWKSServer, keys: Keys, clock: Clock
) -> None:
    await jwks_verifier.verify(signed(claims(sub="a"), keys.rsa, "RS256", "rsa-1"))
    clock.now += 299
    await jwks_verifier.verify(signed(claims(sub="b"), keys.rsa, "RS256", "rsa-1"))
    assert jwks.hits == 1
    clock.now += 2  # past jwks_cache_seconds (300)
    await jwks_verifier.verify(signed(claims(sub="c"), keys.rsa, "RS256", "rsa-1"))
    assert jwks.hits == 2


async def test_signature_by_another_key_with_a_known_kid(
    jwks_verifier: JWTVerifier, keys: Keys
) -> None:
    token = signed(claims(), keys.rsa2, "RS256", "rsa-1")
    assert await refused(jwks_verifier, token) == "Invalid token: signature invalid"


async def test_token_alg_must_match_the_keys_alg(jwks_verifier: JWTVerifier, keys: Keys) -> None:
    token = signed(claims(), keys.ec, "ES256", "rsa-1")  # names the RSA key
    assert await refused(jwks_verifier, token) == "Invalid token: algorithm not allowed"


async def test_unknown_kid_triggers_one_refresh_then_fails(
    jwks_verifier: JWTVerifier, jwks: JWKSServer, keys: Keys, clock: Clock
) -> None:
    await jwks_verifier.verify(signed(claims(), keys.rsa, "RS256", "rsa-1"))
    assert jwks.hits == 1
    clock.now += 11
    stranger = signed(claims(), keys.rsa2, "RS256", "nobody")
    assert await refused(jwks_verifier, stranger) == "Invalid token: unknown signing key"
    assert jwks.hits == 2
    assert await refused(jwks_verifier, stranger) == "Invalid token: unknown signing key"
    assert jwks.hits == 2


async def test_bad_kids_refresh_at_most_once_per_interval(
    jwks_verifier: JWTVerifier, jwks: JWKSServer, keys: Keys, clock: Clock
) -> None:
    jwks.delay = 0.02
    await jwks_verifier.verify(signed(claims(), keys.rsa, "RS256", "rsa-1"))
    garbage = [signed(claims(), keys.rsa2, "RS256", f"kid-{i}") for i in range(50)]
    for step in range(3):
        clock.now += 10
        results = await asyncio.gather(
            *(jwks_verifier.verify(t) for t in garbage), return_exceptions=True
        )
        assert all(isinstance(r, AuthenticationError) for r in results)
        for token in garbage[:10]:  # and one by one, within the same interval
            await refused(jwks_verifier, token)
        clock.now += 9.9
        await refused(jwks_verifier, garbage[0])
        assert jwks.hits == 1 + (step + 1)


async def test_injected_interval(
    make_verifier: MakeVerifier, jwks: JWKSServer, keys: Keys, clock: Clock
) -> None:
    jwks.keys = [rsa_jwk(keys.rsa, "rsa-1")]
    verifier = make_verifier(JWTConfig(jwks_url=jwks.url), clock=clock, min_refresh_interval=60)
    await verifier.verify(signed(claims(), keys.rsa, "RS256", "rsa-1"))
    stranger = signed(claims(), keys.rsa2, "RS256", "nobody")
    clock.now += 59
    await refused(verifier, stranger)
    assert jwks.hits == 1
    clock.now += 1
    await refused(verifier, stranger)
    assert jwks.hits == 2


async def test_concurrent_cold_verifications_share_one_fetch(
    jwks_verifier: JWTVerifier, jwks: JWKSServer, keys: Keys
) -> None:
    jwks.delay = 0.05
    tokens = [signed(claims(sub=f"user-{i}"), keys.rsa, "RS256", "rsa-1") for i in range(20)]
    identities = await asyncio.gather(*(jwks_verifier.verify(t) for t in tokens))
    assert [i.subject for i in identities] == [f"user-{i}" for i in range(20)]
    assert jwks.hits == 1


async def test_cancelled_waiter_does_not_break_the_shared_fetch(
    jwks_verifier: JWTVerifier, jwks: JWKSServer, keys: Keys
) -> None:
    jwks.delay = 0.05
    token = signed(claims(), keys.rsa, "RS256", "rsa-1")
    first = asyncio.create_task(jwks_verifier.verify(token))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(
        jwks_verifier.verify(signed(claims(sub="b"), keys.rsa, "RS256", "rsa-1"))
    )
    first.cancel()
    assert (await second).subject == "b"
    assert jwks.hits == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_key_rotation(
    jwks_verifier: JWTVerifier, jwks: JWKSServer, keys: Keys, clock: Clock
) -> None:
    await jwks_verifier.verify(signed(claims(), keys.rsa, "RS256", "rsa-1"))
    jwks.keys = [rsa_jwk(keys.rsa2, "rsa-2")]  # the issuer rotates: rsa-1 retired
    clock.now += 10
    rotated = await jwks_verifier.verify(signed(claims(sub="new"), keys.rsa2, "RS256", "rsa-2"))
    assert rotated.subject == "new"
    assert jwks.hits == 2
    retired = signed(claims(sub="old"), keys.rsa, "RS256", "rsa-1")
    assert await refused(jwks_verifier, retired) == "Invalid token: unknown signing key"


async def test_algorithm_confusion_is_refused(
    make_verifier: MakeVerifier, jwks: JWKSServer, keys: Keys
) -> None:
    """An HS256 token 'signed' with the RSA public key (which anyone can download) as secret."""
    jwks.keys = [rsa_jwk(keys.rsa, "rsa-1"), rsa_jwk(keys.rsa2, "rsa-2", alg=None)]
    pem = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for algorithms in (None, ["RS256"]):
        verifier = make_verifier(JWTConfig(jwks_url=jwks.url, algorithms=algorithms))
        for kid in ("rsa-1", "rsa-2", None):
            header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
            forged = hand_made(header, claims(role="admin"), pem)
            assert await refused(verifier, forged) == "Invalid token: algorithm not allowed"
        # the genuine article still works
        assert (
            await verifier.verify(signed(claims(), keys.rsa2, "RS256", "rsa-2"))
        ).subject == "alice"
    with pytest.raises(ConfigError):
        JWTVerifier(JWTConfig(jwks_url=jwks.url, algorithms=["RS256", "HS256"]))


async def test_unusable_jwks_entries_are_skipped(
    make_verifier: MakeVerifier, jwks: JWKSServer, keys: Keys
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwks.keys = [
        rsa_jwk(weak, "weak"),
        {"kty": "oct", "k": b64(SECRET.encode()), "kid": "oct", "alg": "HS256"},
        {**rsa_jwk(keys.rsa2, "enc"), "use": "enc"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
        "not a key",
        rsa_jwk(keys.rsa, "good"),
    ]
    verifier = make_verifier(JWTConfig(jwks_url=jwks.url))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        weak_token = signed(claims(), weak, "RS256", "weak")
    assert await refused(verifier, weak_token) == "Invalid token: unknown signing key"
    oct_token = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "oct"})
    assert await refused(verifier, oct_token) == "Invalid token: algorithm not allowed"
    assert (
        await refused(verifier, signed(claims(), keys.rsa2, "RS256", "enc"))
        == "Invalid token: unknown signing key"
    )
    assert (await verifier.verify(signed(claims(), keys.rsa, "RS256", "good"))).subject == "alice"


async def test_token_without_kid_uses_the_only_key_for_its_alg(
    jwks_verifier: JWTVerifier, jwks: JWKSServer, keys: Keys, clock: Clock
) -> None:
    assert (await jwks_verifier.verify(signed(claims(), keys.ec, "ES256", None))).subject == "alice"
    jwks.keys.append(rsa_jwk(keys.rsa2, "rsa-2"))
    clock.now += 301
    ambiguous = signed(claims(), keys.rsa, "RS256", None)
    assert await refused(jwks_verifier, ambiguous) == "Invalid token: unknown signing key"


async def test_jwks_server_down(
    make_verifier: MakeVerifier, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = make_verifier(JWTConfig(jwks_url=closed_port_url()))
    token = signed(claims(), keys.rsa, "RS256", "rsa-1")
    with caplog.at_level(logging.WARNING, logger="relaygate.auth.jwt"):
        message = await refused(verifier, token)
    assert message == "Invalid token: the issuer's signing keys are unavailable"
    assert "JWKS fetch" in caplog.text
    assert token not in caplog.text


@pytest.mark.parametrize("failure", ["status", "garbage", "not-a-jwks", "timeout"])
async def test_jwks_bad_answers(
    make_verifier: MakeVerifier, jwks: JWKSServer, keys: Keys, failure: str
) -> None:
    jwks.keys = [rsa_jwk(keys.rsa, "rsa-1")]
    if failure == "status":
        jwks.status = 500
    elif failure == "garbage":
        jwks.body = b'{"keys": ['
    elif failure == "not-a-jwks":
        jwks.body = b'["keys"]'
    else:
        jwks.delay = 1.0
    verifier = make_verifier(JWTConfig(jwks_url=jwks.url), jwks_timeout=0.1)
    token = signed(claims(), keys.rsa, "RS256", "rsa-1")
    assert (
        await refused(verifier, token) == "Invalid token: the issuer's signing keys are unavailable"
    )
    assert (
        await refused(verifier, token) == "Invalid token: the issuer's signing keys are unavailable"
    )
    assert jwks.hits == 1  # failures are rate limited too: a down JWKS server is not hammered


async def test_last_good_keys_survive_a_failed_refresh(
    jwks_verifier: JWTVerifier, jwks: JWKSServer, keys: Keys, clock: Clock
) -> None:
    await jwks_verifier.verify(signed(claims(sub="a"), keys.rsa, "RS256", "rsa-1"))
    jwks.status = 503
    clock.now += 301
    assert (
        await jwks_verifier.verify(signed(claims(sub="b"), keys.rsa, "RS256", "rsa-1"))
    ).subject == "b"
    assert jwks.hits == 2
    jwks.status = 200
    clock.now += 10
    await jwks_verifier.verify(signed(claims(sub="c"), keys.rsa, "RS256", "rsa-1"))
    assert jwks.hits == 3


async def test_given_session_is_used_and_left_open(jwks: JWKSServer, keys: Keys) -> None:
    jwks.keys = [rsa_jwk(keys.rsa, "rsa-1")]
    async with aiohttp.ClientSession() as session:
        verifier = JWTVerifier(JWTConfig(jwks_url=jwks.url), session)
        await verifier.verify(signed(claims(), keys.rsa, "RS256", "rsa-1"))
        await verifier.aclose()
        assert not session.closed
        assert jwks.hits == 1


async def test_aclose_cancels_an_inflight_fetch(
    make_verifier: MakeVerifier, jwks: JWKSServer, keys: Keys
) -> None:
    jwks.keys = [rsa_jwk(keys.rsa, "rsa-1")]
    jwks.delay = 5
    verifier = make_verifier(JWTConfig(jwks_url=jwks.url))
    pending = asyncio.create_task(verifier.verify(signed(claims(), keys.rsa, "RS256", "rsa-1")))
    await asyncio.sleep(0.05)
    await verifier.aclose()
    with pytest.raises(AuthenticationError):
        await pending


# -- verified-token cache ------------------------------------------------------------------


async def test_verified_tokens_are_cached_until_bounded(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(JWTConfig(secret=SECRET), token_cache_size=3)
    tokens = [hs256(claims(sub=f"u{i}")) for i in range(5)]
    first = await verifier.verify(tokens[0])
    assert await verifier.verify(tokens[0]) is first  # served from the cache
    for token in tokens[1:]:
        await verifier.verify(token)
    assert len(verifier._cache) == 3
    assert await verifier.verify(tokens[0]) is not first  # evicted, verified again
    assert (await verifier.verify(tokens[0])).subject == "u0"


async def test_cache_keeps_no_failures_nor_leeway_tokens(hs: JWTVerifier) -> None:
    await refused(hs, hs256(claims(), secret="wrong-secret-wrong-secret-wrong-secret"))
    await hs.verify(hs256(claims(exp=int(time.time()) - 5)))  # valid only thanks to leeway
    assert len(hs._cache) == 0


async def test_cache_does_not_outlive_exp(hs: JWTVerifier, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = int(time.time()) + 60
    token = hs256(claims(exp=exp))
    first = await hs.verify(token)

    import relaygate.auth.jwt as module

    later = SimpleNamespace(time=lambda: exp + 1.0, monotonic=time.monotonic)
    monkeypatch.setattr(module, "time", later)
    again = await hs.verify(token)  # the cache entry is stale: verified anew
    assert again is not first
    assert again == first


@pytest.fixture(autouse=True)
def _no_token_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    assert "eyJ" not in caplog.text
