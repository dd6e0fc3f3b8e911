"""Provider secrets at rest: authenticated, rotatable, masked for display."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaygate.errors import ConfigError
from relaygate.vault.crypto import SecretBox, fingerprint, mask, new_key, parse_keys

SECRETS = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8)


@given(SECRETS)
def test_a_secret_round_trips_and_never_appears_in_its_ciphertext(secret: str) -> None:
    box = SecretBox([new_key()])
    token = box.encrypt(secret)
    assert secret.encode() not in token
    assert box.decrypt(token) == secret


def test_old_ciphertext_decrypts_under_a_newer_key_list_and_rotates_to_the_newest() -> None:
    old, new = new_key(), new_key()
    token = SecretBox([old]).encrypt("sk-secret-1234567890")
    both = SecretBox([new, old])
    assert both.decrypt(token) == "sk-secret-1234567890"  # the old key still opens it
    rotated = both.rotate(token)
    assert SecretBox([new]).decrypt(rotated) == "sk-secret-1234567890"  # old key dropped
    with pytest.raises(ValueError, match="does not decrypt"):
        SecretBox([new]).decrypt(token)
    assert both.newest == fingerprint(new) and both.readable(fingerprint(old))


def test_a_tampered_token_does_not_decrypt() -> None:
    box = SecretBox([new_key()])
    token = bytearray(box.encrypt("sk-secret-1234567890"))
    token[-5] ^= 1
    with pytest.raises(ValueError) as caught:
        box.decrypt(bytes(token))
    assert "sk-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "holds no key"),
        (" , ", "holds no key"),
        ("not-a-key", "key 1 of RELAYGATE_SECRET_KEY is not a Fernet key"),
        (f"{'A' * 44},oops", "key 1"),
    ],
)
def test_malformed_keys_are_named_by_position_never_by_value(value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        parse_keys(value)
    assert "oops" not in str(caught.value) and "not-a-key" not in str(caught.value)


def test_the_same_key_twice_is_refused() -> None:
    key = new_key()
    with pytest.raises(ConfigError, match="twice"):
        parse_keys(f"{key}, {key}")
    assert parse_keys(f" {key} ,{new_key()}")[0] == key


@pytest.mark.parametrize(
    ("secret", "shown"),
    [
        ("sk-proj-abcdefghijklmnopqrstuvwxyz123", "sk-...xyz123"),
        ("AIzaSyabcdefghijklmn", "AI...klmn"),
        ("12345678", "1...8"),
    ],
)
def test_mask_shows_a_few_characters_at_each_end(secret: str, shown: str) -> None:
    assert mask(secret) == shown


@given(SECRETS)
def test_mask_never_shows_enough_to_use_the_key(secret: str) -> None:
    shown = mask(secret).replace("...", "")
    assert len(shown) <= max(2, len(secret) * 2 // 5)
