"""The SSRF policy: the table of refused addresses, in every form, and the checks at
resolution and at the socket (DNS rebinding, redirects)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import example, given
from hypothesis import strategies as st

from relaygate.net.ssrf import (
    AddressNotAllowed,
    GuardedResolver,
    SsrfPolicy,
    UrlNotAllowed,
    guarded_session,
    literal_address,
    refusal,
)

REFUSED = [
    ("http://127.0.0.1:11434", "loopback"),
    ("http://localhost:11434", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://[::1]:8080/v1", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "wraps 127.0.0.1"),
    ("http://[::ffff:7f00:1]/", "wraps 127.0.0.1"),
    ("http://[2002:7f00:1::]/", "wraps 127.0.0.1"),  # 6to4
    ("http://[64:ff9b::a00:1]/", "wraps 10.0.0.1"),  # NAT64
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fc00::1]/", "unique-local"),
    ("http://[fd12:3456::1]/", "unique-local"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.10:11434/", "private"),
    ("http://100.64.0.1/", "shared"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("ftp://93.184.216.34/", "http:// or https://"),
    ("file:///etc/passwd", "http:// or https://"),
    ("http://user:secret@93.184.216.34/", "credentials"),
    ("http:///v1", "no host"),
    ("http://93.184.216.34/?key=1", "query"),
]
ALLOWED = ["http://93.184.216.34:11434", "https://[2606:4700:4700::1111]/v1", "http://8.8.8.8"]


@pytest.mark.parametrize(("url", "why"), REFUSED)
async def test_refused_urls(url: str, why: str) -> None:
    with pytest.raises(UrlNotAllowed, match=why.replace("?", r"\?")) as caught:
        await SsrfPolicy().check_url(url)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("url", ALLOWED)
async def test_public_urls_pass(url: str) -> None:
    assert await SsrfPolicy().check_url(url) == url.rstrip("/")


async def test_the_operators_allowed_networks() -> None:
    policy = SsrfPolicy(["192.168.1.0/24", "fd00::/8"])
    assert await policy.check_url("http://192.168.1.10:11434")
    assert await policy.check_url("http://[::ffff:192.168.1.10]:11434")
    assert await policy.check_url("http://[fd00::5]/")
    for url in ("http://192.168.2.1/", "http://127.0.0.1/", "http://169.254.169.254/"):
        with pytest.raises(UrlNotAllowed):
            await policy.check_url(url)


# generated: every private range, in every form a resolver takes

PRIVATE_V4 = [
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/8",
    )
]
PRIVATE_V6 = [ipaddress.ip_network(n) for n in ("::1/128", "fc00::/7", "fe80::/10")]


def _member(networks: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(networks).flatmap(
        lambda n: st.integers(0, n.num_addresses - 1).map(lambda i: n[i])
    )


def _forms(ip: ipaddress.IPv4Address) -> list[str]:
    n = int(ip)
    return [
        str(ip),
        str(n),  # integer
        hex(n),  # hex
        "0" + ".0".join(oct(int(b))[2:] for b in str(ip).split(".")),  # octal parts
        f"[::ffff:{ip}]",  # IPv4-mapped IPv6
        f"[::ffff:{n >> 16:x}:{n & 0xFFFF:x}]",
        f"[2002:{n >> 16:x}:{n & 0xFFFF:x}::]",  # 6to4
        f"[64:ff9b::{n >> 16:x}:{n & 0xFFFF:x}]",  # NAT64
    ]


@given(_member(PRIVATE_V4))
async def test_generated_private_ipv4_in_every_form_is_refused(ip: ipaddress.IPv4Address) -> None:
    policy = SsrfPolicy()
    for form in _forms(ip):
        host = form.strip("[]")
        found = literal_address(host)
        assert found is not None, form
        assert policy.why_refused(found) is not None, form
        with pytest.raises(UrlNotAllowed):
            await policy.check_url(f"http://{form}:11434/v1")


@given(_member(PRIVATE_V6))
async def test_generated_private_ipv6_is_refused(ip: ipaddress.IPv6Address) -> None:
    with pytest.raises(UrlNotAllowed):
        await SsrfPolicy().check_url(f"http://[{ip}]:8080/")
    with pytest.raises(AddressNotAllowed):
        SsrfPolicy().socket_factory((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (str(ip), 80)))


@given(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address))
@example(ipaddress.IPv4Address("224.0.0.0"))  # multicast Python calls global
@example(ipaddress.IPv4Address("100.64.0.0"))  # shared (CGNAT)
@example(ipaddress.IPv4Address("192.0.0.9"))  # a global one inside a special block
def test_refusal_agrees_with_is_global(ip: ipaddress.IPv4Address) -> None:
    """Public unicast only: Python counts some multicast as global; the policy does not."""
    public = ip.is_global and not ip.is_multicast
    assert (refusal(ip) is None) == public
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
    assert (refusal(mapped) is None) == public


# at the socket: whatever a name resolved to earlier, the address connected to


class Lying(AbstractResolver):
    """A resolver that answers every name with one address (a rebinding DNS server's
    second answer), and checks nothing."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.calls = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls += 1
        return [{"hostname": host, "host": self.address, "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]  # fmt: skip

    async def close(self) -> None:
        return None


@pytest.fixture
async def local_server() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="inside")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _get(connector: aiohttp.BaseConnector, url: str) -> str:
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url) as response:
            return await response.text()


async def test_a_rebound_name_is_refused_at_the_socket(local_server: int) -> None:
    """The resolver does not check (it lies, as DNS rebinding does): the socket does."""
    url = f"http://rebind.example:{local_server}/"
    policy = SsrfPolicy()
    refused = aiohttp.TCPConnector(
        resolver=Lying("127.0.0.1"), socket_factory=policy.socket_factory
    )
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await _get(refused, url)
    assert isinstance(caught.value.os_error, AddressNotAllowed)
    allowed = SsrfPolicy(["127.0.0.0/8"])
    connector = aiohttp.TCPConnector(
        resolver=Lying("127.0.0.1"), socket_factory=allowed.socket_factory
    )
    assert await _get(connector, url) == "inside"  # the same request, allowed: it connects


async def test_the_guarded_resolver_refuses_a_name_with_a_private_address(
    local_server: int,
) -> None:
    lying = Lying("127.0.0.1")
    with pytest.raises(AddressNotAllowed, match=r"rebind\.example resolves to 127\.0\.0\.1"):
        await GuardedResolver(SsrfPolicy(), lying).resolve("rebind.example", 80)
    session = guarded_session(SsrfPolicy(), resolver=Lying("10.1.2.3"))
    async with session:
        with pytest.raises(aiohttp.ClientConnectorError):
            async with session.get(f"http://rebind.example:{local_server}/"):
                pass


async def test_a_redirect_to_a_refused_address_is_refused(local_server: int) -> None:
    """A public-looking server (allowed here: 127.0.0.2) redirects inside: refused."""

    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://0x7f000001:{local_server}/")

    app = web.Application()
    app.router.add_get("/", bounce)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.2", 0).start()
    try:
        port = runner.addresses[0][1]
        async with guarded_session(SsrfPolicy(["127.0.0.2/32"])) as session:
            with pytest.raises(aiohttp.ClientConnectorError):
                async with session.get(f"http://127.0.0.2:{port}/"):
                    pass
        async with guarded_session(SsrfPolicy(["127.0.0.0/8"])) as session:
            async with session.get(f"http://127.0.0.2:{port}/") as response:
                assert await response.text() == "inside"  # allowed, the redirect is followed
    finally:
        await runner.cleanup()
