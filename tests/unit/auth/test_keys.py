"""API key secrets: shape, stored hash, comparison."""

from __future__ import annotations

import hashlib

from relaygate.auth.keys import display_prefix, generate_secret, hash_secret, matches, new_id


def test_a_secret_is_the_prefix_and_32_random_bytes() -> None:
    secrets = {generate_secret("rg_") for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("rg_") and len(secret) == 3 + 43  # 32 bytes, base64url
        assert display_prefix(secret, "rg_") == secret[:9]
    assert generate_secret("vpn_").startswith("vpn_")


def test_the_stored_hash_is_the_secrets_sha256() -> None:
    assert hash_secret("rg_abc") == hashlib.sha256(b"rg_abc").hexdigest()
    # a lone surrogate (a client's broken text) hashes, it does not raise
    assert len(hash_secret("rg_\udc80")) == 64


def test_matches_compares_a_secret_with_a_stored_hash() -> None:
    stored = hash_secret("rg_right")
    assert matches("rg_right", stored)
    assert not matches("rg_wrong", stored)
    assert not matches("rg_right", stored.upper())


def test_ids_name_their_kind() -> None:
    ids = {new_id("key") for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("key_") and len(i) == 4 + 16 for i in ids)
