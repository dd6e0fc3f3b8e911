"""Reading a credential out of a request, refusing every ambiguous or unsafe form.

Accepted: ``Authorization: Bearer <token>`` or ``X-API-Key: <token>`` (seed
000), once. Refused: two credentials that disagree, repeated headers, other
schemes, tokens over 8 KiB, control characters, and credentials in the query
string (URLs end up in logs). A key *id* (``key_<hex>``) in the query is no
credential: ``GET /admin/usage?key=key_...`` filters by it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

from relaygate.asgi import Scope
from relaygate.errors import AuthenticationError

__all__ = ["client_ip", "looks_like_jwt", "read_credential"]

MAX_TOKEN = 8192
_SCOPE_KEY = "relaygate.credential"  # the request's credential, once read
_QUERY_NAMES = (b"api_key", b"apikey", b"key", b"access_token", b"token", b"x-api-key")


_KEY_ID = re.compile(rb"key_[0-9a-f]{16}")  # keys.new_id("key"): an id, not a secret
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments: a JWT's shape (nothing verified). API keys never have dots."""
    return len(token) <= MAX_TOKEN and _JWT.fullmatch(token) is not None


def read_credential(scope: Scope) -> str | None:
    """The token the request presents, None when it presents none.

    Read once a request: authentication and the pipeline (which scrubs it from upstream
    error text) both ask, and the answer is kept in the scope."""
    try:
        return scope[_SCOPE_KEY]  # type: ignore[no-any-return]
    except KeyError:
        token = scope[_SCOPE_KEY] = _read_credential(scope)
        return token


def _read_credential(scope: Scope) -> str | None:
    found: list[bytes] = []
    for name, value in scope["headers"]:
        if name == b"authorization":
            found.append(_bearer(bytes(value)))
        elif name == b"x-api-key":
            found.append(bytes(value).strip())
    _refuse_query_credentials(scope.get("query_string", b""))
    if not found:
        return None
    if len(found) > 1 and any(token != found[0] for token in found[1:]):
        raise AuthenticationError(
            "Send one credential: the request has several Authorization/X-API-Key headers."
        )
    token = found[0]
    if not token or len(token) > MAX_TOKEN:
        raise AuthenticationError()
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError:
        raise AuthenticationError() from None
    if not text.isprintable() or " " in text:
        raise AuthenticationError()
    return text


def _bearer(value: bytes) -> bytes:
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        raise AuthenticationError("The Authorization header must be 'Bearer <key>'.")
    return token.strip()


def _refuse_query_credentials(query: bytes) -> None:
    """Refuse a credential-named parameter unless its value is a key id (``key_`` and
    hex digits, as ``GET /admin/usage?key=key_...`` filters by): an id, never a secret."""
    if not query:
        return
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        name = unquote_to_bytes(name.replace(b"+", b" ")).lower()
        if name in _QUERY_NAMES and not _KEY_ID.fullmatch(unquote_to_bytes(value)):
            raise AuthenticationError(
                "Credentials in the URL are refused (URLs end up in logs). "
                "Send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
            )


def client_ip(
    scope: Scope, trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> str:
    """The client's address; X-Forwarded-For is believed only from trusted proxies.

    The forwarded chain is read right to left, skipping trusted proxies: the
    first untrusted address is the client (entries left of it can be forged).
    """
    peer = (scope.get("client") or ("unknown", 0))[0]
    if not trusted or not _is_trusted(peer, trusted):
        return str(peer)
    chain: list[str] = []
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            chain += [p.strip() for p in bytes(value).decode("latin-1").split(",") if p.strip()]
    for address in reversed(chain):
        if not _is_trusted(address, trusted):
            return address
    return chain[0] if chain else str(peer)


def _is_trusted(
    address: str, trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
