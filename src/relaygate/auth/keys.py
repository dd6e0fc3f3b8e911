"""API key secrets: how they are made, stored and compared.

A key is a fixed prefix (``rg_`` by default; the seeds use ``vpn_``) and 32
random bytes, URL-safe. The secret is shown once; only its SHA-256 is stored.
A fast hash is right here: the secret carries 256 bits of entropy, so there is
nothing to brute-force, and a lookup by hash needs no per-key salt.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["display_prefix", "generate_secret", "hash_secret", "matches", "new_id"]

SECRET_BYTES = 32
MAX_KEY_LENGTH = 256


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
