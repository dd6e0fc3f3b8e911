"""JSON Web Tokens as credentials: verified locally, mapped to a :class:`JWTIdentity`.

Two modes, chosen by :class:`~relaygate.settings.JWTConfig`:

* ``secret``: HMAC (HS256 by default) with a shared secret of at least the hash's size.
* ``jwks_url``: RSA or EC signatures (RS256 and ES256 by default) checked against the
  issuer's JSON Web Key Set, fetched with aiohttp (never blocking the event loop),
  cached for ``jwks_cache_seconds``, fetched again early when a token names an unknown
  ``kid`` but at most once per ``min_refresh_interval`` (10 s), so tokens with made-up
  key ids cannot make the gateway hammer the issuer. Concurrent verifications share
  one fetch. When a fetch fails the last good keys stay in use.

The token's header never chooses the algorithm: it must be in the configured list, a
mode accepts only its own family (HMAC or public-key, never both, never ``none``), and
each JWKS key is bound to one algorithm. ``exp`` is required; ``nbf`` and ``iat`` are
checked when present; ``iss`` and ``aud`` when configured. Verified tokens are kept in
a bounded LRU until their ``exp`` so a busy client does not pay a signature check per
request. Tokens are secrets: they are never logged nor put in error messages.

Claims become an identity: the subject claim is required; a missing tenant claim makes
the subject its own (personal) tenant; role and tier fall back to the configured
defaults, and a role other than ``admin`` or ``user`` is refused.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import jwt

from relaygate.auth.credentials import looks_like_jwt
from relaygate.errors import AuthenticationError, ConfigError
from relaygate.settings import PUBLIC_KEY_ALGORITHMS, JWTConfig, jwt_config_problem

__all__ = ["JWTIdentity", "JWTVerifier", "jwt_config_problem"]

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1024 * 1024
TOKEN_CACHE_SIZE = 10_000
MIN_REFRESH_INTERVAL = 10.0
JWKS_TIMEOUT = 5.0


# PyJWT's errors, most specific first, and what the client is told about each.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidIssuerError, "issuer mismatch"),
    (jwt.InvalidAudienceError, "audience mismatch"),
    (jwt.InvalidSignatureError, "signature invalid"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidKeyError, "signing key refused"),
    (jwt.InvalidIssuedAtError, "bad iat claim"),
    (jwt.DecodeError, "malformed"),
)


@dataclass(frozen=True, slots=True)
class JWTIdentity:
    """Who a verified token speaks for.

    ``tenant`` is the tenant claim, or the subject itself when the token has none: a
    user without an organisation is a tenant of one, so per-tenant limits still apply.
    """

    subject: str
    tenant: str
    role: Literal["admin", "user"]
    tier: str
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class _KeySet:
    """The usable keys of one JWKS document."""

    by_kid: Mapping[str, jwt.PyJWK]
    keys: tuple[jwt.PyJWK, ...]

    def find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        """The key a token names; without a ``kid``, the only key for its algorithm."""
        if kid is not None:
            return self.by_kid.get(kid)
        matching = [key for key in self.keys if key.algorithm_name == alg]
        return matching[0] if len(matching) == 1 else None


class JWTVerifier:
    """Verifies bearer JWTs and maps their claims to a :class:`JWTIdentity`.

    ``session`` is used for JWKS fetches and left open by :meth:`aclose`; without one
    the verifier opens (and closes) its own. ``min_refresh_interval``, ``jwks_timeout``,
    ``clock`` (a monotonic clock for JWKS timing) and ``token_cache_size`` (0 disables
    the cache) exist for tests and benchmarks.
    """

    def __init__(
        self,
        config: JWTConfig,
        session: aiohttp.ClientSession | None = None,
        *,
        min_refresh_interval: float = MIN_REFRESH_INTERVAL,
        jwks_timeout: float = JWKS_TIMEOUT,
        token_cache_size: int = TOKEN_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        problem = jwt_config_problem(config)
        if problem is not None:
            raise ConfigError(problem)
        self._config = config
        self._algorithms = config.accepted_algorithms
        self._secret = config.secret.encode() if config.secret is not None else None
        self._jwt = jwt.PyJWT(
            {
                "require": ["exp"],
                "verify_aud": config.audience is not None,
                "enforce_minimum_key_length": True,
            }
        )
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=jwks_timeout)
        self._min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._keys: _KeySet | None = None
        self._fetched_at = 0.0
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._cache_size = token_cache_size
        self._cache: OrderedDict[bytes, JWTIdentity] = OrderedDict()

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        """Whether ``token`` has a JWT's shape (three base64url segments); nothing is verified."""
        return looks_like_jwt(token)

    async def verify(self, token: str) -> JWTIdentity:
        """The identity ``token`` carries, or :class:`AuthenticationError` saying why not."""
        if not self.looks_like_jwt(token):
            raise AuthenticationError("Invalid token: malformed")
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cached(digest)
        if cached is not None:
            return cached
        key = self._secret if self._secret is not None else await self._public_key(token)
        try:
            claims = self._jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._config.audience,
                issuer=self._config.issuer,
                leeway=self._config.leeway,
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(_reason(exc)) from None
        identity = self._identity(claims)
        self._remember(digest, identity)
        return identity

    async def aclose(self) -> None:
        """Stop any JWKS fetch and close the session the verifier opened."""
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.gather(self._inflight, return_exceptions=True)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- claims -------------------------------------------------------------------------

    def _identity(self, claims: Mapping[str, Any]) -> JWTIdentity:
        config = self._config
        subject = _text_claim(claims, config.subject_claim)
        if subject is None:
            raise AuthenticationError(f"Invalid token: missing claim {config.subject_claim!r}")
        role = claims.get(config.role_claim)
        if role is None:
            role = config.default_role
        if role == "admin" or role == "user":
            checked_role: Literal["admin", "user"] = role
        else:
            raise AuthenticationError(
                f"Invalid token: claim {config.role_claim!r} must be 'admin' or 'user'"
            )
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthenticationError("Invalid token: claim 'exp' must be a number")
        return JWTIdentity(
            subject=subject,
            tenant=_text_claim(claims, config.tenant_claim) or subject,
            role=checked_role,
            tier=_text_claim(claims, config.tier_claim) or config.default_tier,
            expires_at=float(exp),
        )

    # -- verified-token cache -----------------------------------------------------------

    def _cached(self, digest: bytes) -> JWTIdentity | None:
        identity = self._cache.get(digest)
        if identity is None:
            return None
        if identity.expires_at is not None and identity.expires_at <= time.time():
            del self._cache[digest]
            return None
        self._cache.move_to_end(digest)
        return identity

    def _remember(self, digest: bytes, identity: JWTIdentity) -> None:
        if self._cache_size <= 0 or identity.expires_at is None:
            return
        if identity.expires_at <= time.time():
            return  # accepted only thanks to the leeway: not worth keeping
        self._cache[digest] = identity
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    # -- JWKS ---------------------------------------------------------------------------

    async def _public_key(self, token: str) -> jwt.PyJWK:
        """The JWKS key that must have signed ``token``, fetching the set when needed."""
        alg, kid = _unverified_alg_and_kid(token)
        if alg not in self._algorithms:
            raise AuthenticationError("Invalid token: algorithm not allowed")
        if (
            self._keys is None
            or self._clock() - self._fetched_at >= self._config.jwks_cache_seconds
        ):
            await self._refresh()
        if self._keys is None:
            raise AuthenticationError("Invalid token: the issuer's signing keys are unavailable")
        key = self._keys.find(kid, alg)
        if key is None:
            await self._refresh()  # a rotated key, perhaps; rate limited
            key = self._keys.find(kid, alg)
        if key is None:
            raise AuthenticationError("Invalid token: unknown signing key")
        return key

    async def _refresh(self) -> None:
        """Fetch the JWKS, unless one was fetched too recently; callers share one fetch."""
        if self._inflight is None:
            now = self._clock()
            if self._last_attempt is not None and (
                now - self._last_attempt < self._min_refresh_interval
            ):
                return
            self._last_attempt = now
            self._inflight = asyncio.create_task(self._fetch_keys())
            self._inflight.add_done_callback(self._fetch_done)
        try:
            await asyncio.shield(self._inflight)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is None or current.cancelling():
                raise  # this caller was cancelled; the shared fetch goes on
            # the fetch itself was cancelled (aclose): the caller sees missing keys

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch_keys(self) -> None:
        url = self._config.jwks_url or ""
        try:
            document = await self._download(url)
            keys = _parse_jwks(document, self._algorithms)
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
            log.warning(
                "JWKS fetch from %s failed (%s); %s",
                _safe(url),
                _describe(exc),
                "keeping the previous keys" if self._keys else "no keys yet",
            )
            return
        if not keys.keys:
            log.warning("JWKS at %s has no usable keys for %s", _safe(url), self._algorithms)
        self._keys = keys
        self._fetched_at = self._clock()

    async def _download(self, url: str) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.get(
            url, timeout=self._timeout, headers={"Accept": "application/json"}
        ) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
        return json.loads(body)


def _unverified_alg_and_kid(token: str) -> tuple[str, str | None]:
    """The header's ``alg`` and ``kid``, read only to pick a key: PyJWT checks it all again."""
    segment = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):
        raise AuthenticationError("Invalid token: malformed") from None
    alg = header.get("alg") if isinstance(header, dict) else None
    kid = header.get("kid") if isinstance(header, dict) else None
    if not isinstance(alg, str) or not isinstance(kid, str | None):
        raise AuthenticationError("Invalid token: malformed")
    return alg, kid


def _parse_jwks(document: Any, algorithms: tuple[str, ...]) -> _KeySet:
    """The keys of a JWKS document usable for ``algorithms``; others are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JSON Web Key Set")
    keys: list[jwt.PyJWK] = []
    for entry in document["keys"]:
        key = _parse_jwk(entry, algorithms)
        if key is not None:
            keys.append(key)
    by_kid: dict[str, jwt.PyJWK] = {}
    for key in keys:
        if key.key_id is not None:
            by_kid.setdefault(key.key_id, key)
    return _KeySet(by_kid=by_kid, keys=tuple(keys))


def _parse_jwk(entry: Any, algorithms: tuple[str, ...]) -> jwt.PyJWK | None:
    """One signing key bound to an allowed public-key algorithm, or None."""
    if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
        return None
    alg = entry.get("alg")  # when absent, PyJWK infers it from the key type
    if entry.get("kty") == "oct" or (alg is not None and alg not in algorithms):
        return None
    try:
        key = jwt.PyJWK.from_dict(entry)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, NotImplementedError):
        return None
    if key.algorithm_name not in algorithms or key.algorithm_name not in PUBLIC_KEY_ALGORITHMS:
        return None
    if key.Algorithm.check_key_length(key.key) is not None:
        return None  # e.g. RSA under 2048 bits
    return key


def _text_claim(claims: Mapping[str, Any], name: str) -> str | None:
    """A claim as text: absent or null is None; anything but a non-empty string or int fails."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise AuthenticationError(f"Invalid token: claim {name!r} must be a non-empty string")


def _reason(exc: Exception) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"Invalid token: missing claim {exc.claim!r}"
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return f"Invalid token: {reason}"
    return "Invalid token"


def _safe(url: str) -> str:
    """A URL without its path, query or credentials, fit for logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


def _describe(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
