"""API key secrets: shape, stored hash, comparison."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.auth.credentials import looks_like_jwt, read_credential
from relaygate.auth.keys import (
    MAX_KEY_LENGTH,
    check_imported,
    display_prefix,
    generate_secret,
    hash_secret,
    imported_display,
    matches,
    new_id,
)
from relaygate.errors import InvalidRequest


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


# imported secrets

IMPORTABLE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=16,
                     max_size=MAX_KEY_LENGTH)  # fmt: skip


@settings(max_examples=200)
@given(secret=IMPORTABLE | st.text(max_size=600))
def test_an_accepted_import_is_read_back_as_this_key_from_either_header(secret: str) -> None:
    """What check_imported accepts, the request side reads as exactly this API key (not a
    JWT); what it refuses is an InvalidRequest that never repeats the secret."""
    try:
        check_imported(secret)
    except InvalidRequest as error:
        assert error.status == 400 and (len(secret) < 8 or secret not in error.message)
        return
    assert not looks_like_jwt(secret)
    for header in (
        (b"x-api-key", secret.encode()),
        (b"authorization", b"Bearer " + secret.encode()),
    ):
        assert read_credential({"headers": [header], "query_string": b""}) == secret
    shown = imported_display(secret)
    assert secret.startswith(shown) and len(shown) <= min(10, len(secret) // 4)


def test_import_rules_at_their_edges() -> None:
    check_imported("a" * 16)
    check_imported("~" * MAX_KEY_LENGTH)
    check_imported("vpn_2hrUOubvcBqlrysKkGOe4CBv5_sTi7QEgNLhp7S2WrI")
    check_imported("demo-user-key-67890")
    for refused in ("a" * 15, "a" * (MAX_KEY_LENGTH + 1), "a" * 15 + " ", "abcdefgh.ijk.lmnop",
                    "key_0123456789abcdef", "x" * 20 + "\x7f"):  # fmt: skip
        with pytest.raises(InvalidRequest):
            check_imported(refused)
