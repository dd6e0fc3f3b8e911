"""Provider secrets at rest: authenticated encryption with rotatable master keys.

``RELAYGATE_SECRET_KEY`` holds one or several Fernet keys, comma-separated, newest
first. New secrets are encrypted under the newest; every listed key decrypts
(cryptography's :class:`MultiFernet`), so an operator rotates by putting a new key
first, running ``relaygate secrets rotate`` (which re-encrypts every stored secret
under it) and then dropping the old key. Fernet is AES-128-CBC with HMAC-SHA256:
a token that was altered, or made under a key not listed, never decrypts.

Each ciphertext is stored with its key's *fingerprint* (the first 16 hex digits of
the key's SHA-256), so the gateway can tell at start whether every stored secret is
readable, and rotation can tell which rows still need it, without decrypting.

``cryptography`` is imported when a key is first used, not with this module: it adds
~8.7 MiB to a process's RSS, and a gateway without ``RELAYGATE_SECRET_KEY`` never needs it
(bench/RESULTS.md, section 6).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from relaygate.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

__all__ = ["SecretBox", "fingerprint", "mask", "new_key", "parse_keys"]

FINGERPRINT_CHARS = 16


def new_key() -> str:
    """A fresh master key, as ``RELAYGATE_SECRET_KEY`` takes it."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


def fingerprint(key: str) -> str:
    """A stable, non-secret name of a master key (it reveals nothing usable)."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()[:FINGERPRINT_CHARS]


def parse_keys(value: str) -> list[str]:
    """The keys of ``RELAYGATE_SECRET_KEY``, newest first; a malformed one is a ConfigError
    that says which (by position, never by value)."""
    keys = [part.strip() for part in value.split(",") if part.strip()]
    if not keys:
        raise ConfigError("secret_key: RELAYGATE_SECRET_KEY is set but holds no key")
    for position, key in enumerate(keys, 1):
        try:
            _fernet(key)
        except (ValueError, UnicodeEncodeError):
            raise ConfigError(
                f"secret_key: key {position} of RELAYGATE_SECRET_KEY is not a Fernet key "
                "(32 url-safe base64-encoded bytes); make one with 'relaygate secrets new-key'"
            ) from None
    if len(set(keys)) != len(keys):
        raise ConfigError("secret_key: RELAYGATE_SECRET_KEY lists the same key twice")
    return keys


class SecretBox:
    """Encrypts under the newest key, decrypts under any listed one."""

    __slots__ = ("_fernet", "fingerprints", "newest")

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ConfigError("secret_key: no key given")
        from cryptography.fernet import MultiFernet

        self._fernet = MultiFernet([_fernet(k) for k in keys])
        self.fingerprints = tuple(fingerprint(k) for k in keys)
        self.newest = self.fingerprints[0]

    @classmethod
    def from_setting(cls, value: str | None) -> SecretBox | None:
        """The box of the ``secret_key`` setting; None when it is not set."""
        if not value:
            return None
        return cls(parse_keys(value))

    def encrypt(self, plaintext: str) -> bytes:
        """A token under the newest key (its fingerprint is :attr:`newest`)."""
        return self._fernet.encrypt(plaintext.encode("utf-8"))

    def decrypt(self, token: bytes) -> str:
        """The plaintext; raises ValueError (never the token) when no key opens it."""
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(token).decode("utf-8")
        except InvalidToken:
            raise ValueError("a stored provider secret does not decrypt under any key") from None

    def rotate(self, token: bytes) -> bytes:
        """The same secret, re-encrypted under the newest key."""
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.rotate(token)
        except InvalidToken:
            raise ValueError("a stored provider secret does not decrypt under any key") from None

    def readable(self, key_fingerprint: str) -> bool:
        return key_fingerprint in self.fingerprints


def _fernet(key: str) -> Fernet:
    from cryptography.fernet import Fernet

    return Fernet(key.encode("ascii"))


def mask(secret: str) -> str:
    """What a list shows of a provider key, as seed 004 does (``sk-...xyz123``): a few
    characters at each end, never enough to use it; short secrets show less."""
    n = len(secret)
    head = min(3, n // 8)
    tail = min(6, n // 5)
    return f"{secret[:head]}...{secret[n - tail :] if tail else ''}"
