"""Reading credentials and client addresses at their boundaries."""

from __future__ import annotations

import ipaddress
from typing import Any

from relaygate.auth.credentials import MAX_TOKEN, client_ip, looks_like_jwt

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
