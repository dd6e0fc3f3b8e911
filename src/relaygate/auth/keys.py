"""API key secrets: how they are made, stored and compared.

A key is a fixed prefix (``rg_`` by default; the seeds use ``vpn_``) and 32
random bytes, URL-safe. The secret is shown once; only its SHA-256 is stored.
A fast hash is right here: the secret carries 256 bits of entropy, so there is
nothing to brute-force, and a lookup by hash needs no per-key salt.

A secret made elsewhere (seed 000/001's ``vpn_...`` keys, seed 003's demo keys)
can be imported as it is: :func:`check_imported` says which ones are usable as
credentials. Imported secrets are hashed the same way; nothing in the
authenticator depends on a key's prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from relaygate.errors import InvalidRequest

__all__ = [
    "check_imported",
    "display_prefix",
    "generate_secret",
    "hash_secret",
    "imported_display",
    "matches",
    "new_id",
]

SECRET_BYTES = 32
MIN_IMPORTED = 16
MAX_KEY_LENGTH = 512  # the longest secret that can be imported; longer tokens are refused unread
# What a credential header can carry (credentials.read_credential): visible ASCII, no spaces.
_VISIBLE = re.compile(r"[\x21-\x7e]+")
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_KEY_ID = re.compile(r"key_[0-9a-f]{16}")


def check_imported(secret: str, param: str = "secret") -> str:
    """An existing secret usable as a key, or an :class:`InvalidRequest` naming the rule.

    Usable: 16 to 512 visible ASCII characters (what a header carries; no spaces).
    Refused also: a JWT's shape (with JWTs enabled it would be checked as a JWT, never as
    a key) and a key id's (``key_`` + 16 hex digits: ids are allowed in URLs, secrets not).
    The message never repeats the secret.
    """
    if len(secret) < MIN_IMPORTED:
        raise InvalidRequest(
            f"The {param} is too weak: an imported key needs at least {MIN_IMPORTED} "
            f"characters (it has {len(secret)}).",
            param=param,
        )
    if len(secret) > MAX_KEY_LENGTH:
        raise InvalidRequest(
            f"The {param} is too long: at most {MAX_KEY_LENGTH} characters.", param=param
        )
    if not _VISIBLE.fullmatch(secret):
        raise InvalidRequest(
            f"The {param} must be visible ASCII characters only (no spaces or control "
            "characters): clients send it in a header.",
            param=param,
        )
    if _JWT.fullmatch(secret) or _KEY_ID.fullmatch(secret):
        raise InvalidRequest(
            f"The {param} has the shape of a JWT or of a key id and could not be told "
            "apart from one; choose another secret.",
            param=param,
        )
    return secret


def imported_display(secret: str) -> str:
    """The part of an imported secret shown in lists: at most a quarter of it, at most 10
    characters (an imported secret may be short; an issued one shows its prefix + 6)."""
    return secret[: min(10, len(secret) // 4)]


def generate_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def matches(secret: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with a stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def display_prefix(secret: str, prefix: str) -> str:
    """Enough of the key to recognise it in a list, never enough to use it."""
    return secret[: len(prefix) + 6]


def new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(8)}"
