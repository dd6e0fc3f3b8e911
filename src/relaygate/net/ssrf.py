"""The SSRF policy: which addresses a URL that a user supplied may reach.

A user's own base URL (a home Ollama, an OpenAI-compatible server) is called from
inside the operator's network, so by default it may reach only public addresses:
no loopback, private, link-local (the cloud metadata service 169.254.169.254
included), unique-local, shared (CGNAT), multicast, reserved or unspecified ones,
whatever form the address takes (``0x7f000001``, ``2130706433``, ``127.1``,
``[::ffff:127.0.0.1]``, 6to4 and NAT64 wrappings of such an IPv4 address).
An operator allows listed networks anyway (``byok.allow_networks``).

The check is made three times:

* when the URL is stored (:meth:`SsrfPolicy.check_url`): a clear 400 early;
* when a name is resolved (:class:`GuardedResolver`): a name with any refused
  address is refused whole;
* when a socket is opened (:meth:`SsrfPolicy.socket_factory`): on the very address
  connected to, for every connection, redirects included. This is what defeats DNS
  rebinding: whatever a name resolved to when it was checked, the address the
  socket connects to is checked again at that moment.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from relaygate.net.session import upstream_session

__all__ = [
    "AddressNotAllowed",
    "GuardedResolver",
    "SsrfPolicy",
    "UrlNotAllowed",
    "guarded_session",
    "refusal",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_METADATA = ipaddress.ip_address("169.254.169.254")
_INET_ATON = re.compile(r"[0-9a-fA-FxX.]+")


class AddressNotAllowed(OSError):
    """A connection to an address the policy refuses (raised where the socket is made)."""


class UrlNotAllowed(ValueError):
    """A URL refused before anything is called; the message says why."""


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: mapped, 6to4, NAT64, Teredo's client."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def refusal(ip: IPAddress) -> str | None:
    """Why the default policy refuses ``ip`` (None: a public address)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            why = refusal(inner)
            return f"it wraps {inner}, {why}" if why else None
    if ip == _METADATA:
        return "the cloud metadata address"
    checks = (
        (ip.is_loopback, "a loopback address"),
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED, "a shared (CGNAT) address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.ip_network("fc00::/7"),
         "a unique-local address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (not ip.is_global, "not a public address"),
    )  # fmt: skip
    for refused, why in checks:
        if refused:
            return why
    return None


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an address when it is one in any form a resolver accepts: dotted,
    bracketed IPv6, and inet_aton's integer, hex, octal and short forms."""
    bare = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if _INET_ATON.fullmatch(bare):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


class SsrfPolicy:
    """Public addresses, plus the operator's allowed networks."""

    def __init__(self, allow_networks: Iterable[str] = ()) -> None:
        self.allowed = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)

    def why_refused(self, ip: IPAddress) -> str | None:
        """Why ``ip`` may not be reached; None when it may."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address):
            inner = _embedded_v4(ip)
            if inner is not None:
                candidates.append(inner)
        for address in candidates:
            if any(address.version == n.version and address in n for n in self.allowed):
                return None
        return refusal(ip)

    def check_address(self, ip: IPAddress, host: str | None = None) -> None:
        why = self.why_refused(ip)
        if why is not None:
            shown = f"{host} resolves to {ip}" if host and host != str(ip) else str(ip)
            raise AddressNotAllowed(
                f"{shown} is {why}; the gateway does not call it (SSRF policy; an operator "
                "may allow the network in byok.allow_networks)"
            )

    async def check_url(self, url: str, *, resolve: bool = True) -> str:
        """A user's base URL, normalised, or :class:`UrlNotAllowed` saying why."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise UrlNotAllowed("base_url is not a valid URL") from None
        if parts.scheme not in ("http", "https"):
            raise UrlNotAllowed("base_url must start with http:// or https://")
        if not parts.hostname:
            raise UrlNotAllowed("base_url has no host")
        if parts.username is not None or parts.password is not None:
            raise UrlNotAllowed(
                "base_url must not carry credentials; store the key with POST /api/ai/api-keys"
            )
        if parts.query or parts.fragment:
            raise UrlNotAllowed("base_url must not have a query or a fragment")
        host = parts.hostname
        literal = literal_address(host)
        try:
            if literal is not None:
                self.check_address(literal, host)
            elif resolve:
                for ip in await _resolve(host, port or (443 if parts.scheme == "https" else 80)):
                    self.check_address(ip, host)
        except AddressNotAllowed as exc:
            raise UrlNotAllowed(f"base_url: {exc}") from None
        return url.rstrip("/")

    def socket_factory(self, addr_info: Any) -> socket.socket:
        """Makes the socket of every connection, after checking the address it will
        connect to: the one place no resolution can slip past."""
        family, type_, proto, _canon, sockaddr = addr_info
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        self.check_address(ip)
        return socket.socket(family=family, type=type_, proto=proto)


async def _resolve(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UrlNotAllowed(f"base_url: the host {host!r} does not resolve") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


class GuardedResolver(AbstractResolver):
    """A resolver that refuses a name when any of its addresses is refused."""

    def __init__(self, policy: SsrfPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        for result in found:
            self.policy.check_address(ipaddress.ip_address(result["host"]), host)
        return found

    async def close(self) -> None:
        await self.inner.close()


def guarded_session(
    policy: SsrfPolicy,
    max_connections: int = 256,
    resolver: AbstractResolver | None = None,
    hooks: Sequence[aiohttp.TraceConfig] = (),
) -> aiohttp.ClientSession:
    """A pooled client whose every connection, redirects included, obeys ``policy``;
    ``hooks`` see each request (trace propagation)."""
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        limit_per_host=0,
        keepalive_timeout=30,
        ttl_dns_cache=10,
        resolver=GuardedResolver(policy, resolver),
        socket_factory=policy.socket_factory,
    )
    return upstream_session(connector, hooks=hooks)  # no proxy: the check is made here


def networks_text(networks: Sequence[str]) -> str:
    return ", ".join(networks) or "(none)"
