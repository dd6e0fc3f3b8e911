"""Reading credentials and client addresses at their boundaries."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from relaygate.auth.credentials import MAX_TOKEN, client_ip, looks_like_jwt, read_credential
from relaygate.errors import AuthenticationError

TRUSTED = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8")]


def scope(peer: tuple[str, int] | None, forwarded: str | None = None) -> dict[str, Any]:
    headers = [] if forwarded is None else [(b"x-forwarded-for", forwarded.encode())]
    return {"type": "http", "client": peer, "headers": headers}


def test_a_jwt_shape_up_to_the_size_limit() -> None:
    def token(length: int) -> str:
        head = "eyJhbGciOiJIUzI1NiJ9."
        return head + "a" * (length - len(head) - 4) + ".sig"

    assert len(token(MAX_TOKEN)) == MAX_TOKEN
    assert looks_like_jwt(token(MAX_TOKEN))
    assert not looks_like_jwt(token(MAX_TOKEN + 1))
    assert not looks_like_jwt("rg_" + "a" * 43)


def test_forwarded_for_is_read_only_from_a_trusted_peer() -> None:
    assert client_ip(scope(("127.0.0.1", 5), "203.0.113.5"), TRUSTED) == "203.0.113.5"
    assert client_ip(scope(("192.0.2.1", 5), "203.0.113.5"), TRUSTED) == "192.0.2.1"
    assert client_ip(scope(("127.0.0.1", 5), "203.0.113.5"), []) == "127.0.0.1"


def test_a_peer_without_an_address_is_never_trusted() -> None:
    # A unix socket or a server that gives no client address: its X-Forwarded-For is anyone's.
    assert client_ip(scope(None, "203.0.113.5"), TRUSTED) == "unknown"


def test_the_chain_is_read_from_the_right_and_garbage_is_not_a_proxy() -> None:
    chain = "198.51.100.1, 203.0.113.9, 10.1.2.3"
    assert client_ip(scope(("127.0.0.1", 5), chain), TRUSTED) == "203.0.113.9"
    # an entry that is no address at all is not a trusted proxy: it stops the walk
    assert client_ip(scope(("127.0.0.1", 5), "198.51.100.1, not-an-ip"), TRUSTED) == "not-an-ip"
    assert client_ip(scope(("127.0.0.1", 5), "10.9.9.9"), TRUSTED) == "10.9.9.9"  # all trusted


def test_a_trusted_peer_without_forwarded_for_is_the_client() -> None:
    assert client_ip(scope(("127.0.0.1", 5)), TRUSTED) == "127.0.0.1"


def test_every_forwarded_for_header_is_part_of_the_chain() -> None:
    # two proxies, each adding its own header: the chain is their concatenation
    two = scope(("127.0.0.1", 5), "203.0.113.1")
    two["headers"].append((b"x-forwarded-for", b"10.0.0.5"))
    assert client_ip(two, TRUSTED) == "203.0.113.1"


DENIED = "Missing or invalid credentials"


def request(headers: list[tuple[bytes, bytes]], query: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "headers": headers, "query_string": query}


def refusal(headers: list[tuple[bytes, bytes]], query: bytes = b"") -> str:
    with pytest.raises(AuthenticationError) as caught:
        read_credential(request(headers, query))
    return caught.value.message


def test_only_the_bearer_scheme_is_read() -> None:
    assert read_credential(request([(b"authorization", b"Bearer rg_abc")])) == "rg_abc"
    assert read_credential(request([(b"authorization", b"bearer  rg_abc ")])) == "rg_abc"
    must = "The Authorization header must be 'Bearer <key>'."
    for value in (b"Basic rg_abc", b"Token rg_abc", b"rg_abc", b"Bearer", b"Bearer   "):
        assert refusal([(b"authorization", value)]) == must, value
    # a space inside the token: the scheme is right, the token is not
    assert DENIED in refusal([(b"authorization", b"Bearer rg_a rg_b")])


def test_credentials_anywhere_in_the_query_string_are_refused() -> None:
    refused = (
        "Credentials in the URL are refused (URLs end up in logs). "
        "Send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
    )
    for query in (b"key=rg_abc", b"a=1&api_key=rg_abc", b"a=1&b=2&TOKEN=x", b"token=ab=="):
        assert refusal([], query) == refused, query
    assert read_credential(request([], b"a=1&keys=2")) is None


def test_one_credential_of_at_most_max_token_printable_ascii_bytes() -> None:
    def read(value: bytes) -> str | None:
        return read_credential(request([(b"x-api-key", value)]))

    assert read(b"k" * MAX_TOKEN) == "k" * MAX_TOKEN
    for bad in (b"", b"   ", b"k" * (MAX_TOKEN + 1), b"rg_a\x01b", b"rg_a b", "rg_é".encode()):
        assert refusal([(b"x-api-key", bad)]).startswith(DENIED), bad
    several = [(b"authorization", b"Bearer rg_a"), (b"x-api-key", b"rg_b")]
    assert refusal(several) == (
        "Send one credential: the request has several Authorization/X-API-Key headers."
    )
    assert read_credential(request([])) is None
