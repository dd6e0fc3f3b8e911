"""Credentials in the URL are refused; a key id (``GET /admin/usage?key=key_...``) is not one."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.auth.credentials import read_credential
from relaygate.auth.keys import generate_secret, new_id
from relaygate.errors import AuthenticationError

NAMES = ["api_key", "apikey", "key", "access_token", "token", "x-api-key", "KEY", "Api_Key"]


def scope(query: bytes) -> dict[str, object]:
    return {"headers": [], "query_string": query}


@settings(max_examples=100)
@given(name=st.sampled_from(NAMES), prefix=st.sampled_from(["rg_", "vpn_", "key_", "sk-"]))
def test_a_secret_in_the_url_is_refused(name: str, prefix: str) -> None:
    secret = generate_secret(prefix)
    for query in (f"{name}={secret}", f"model=x&{quote(name)}={quote(secret)}"):
        with pytest.raises(AuthenticationError, match="in the URL"):
            read_credential(scope(query.encode()))


@settings(max_examples=200)
@given(name=st.sampled_from(NAMES), value=st.text(max_size=80))
def test_anything_under_a_credential_name_but_a_key_id_is_refused(name: str, value: str) -> None:
    query = f"{quote(name)}={quote(value)}".encode()
    if value.startswith("key_") and len(value) == 20 and set(value[4:]) <= set("0123456789abcdef"):
        assert read_credential(scope(query)) is None
    else:
        with pytest.raises(AuthenticationError):
            read_credential(scope(query))


def test_a_key_id_is_not_a_credential() -> None:
    key_id = new_id("key")
    for name in ("key", "key_id", "api_key"):
        assert read_credential(scope(f"{name}={key_id}&group_by=day".encode())) is None


def test_an_encoded_name_is_still_refused() -> None:
    with pytest.raises(AuthenticationError):
        read_credential(scope(b"%6Bey=" + generate_secret("rg_").encode()))
