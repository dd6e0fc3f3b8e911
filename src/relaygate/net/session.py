"""The one way an aiohttp session to upstreams is made: for calls on behalf of many callers.

A session is shared: every caller of an upstream (and, for users' own keys, every user of
a host) goes through the same one. So it keeps nothing between calls that one caller's
answer could hand to the next. aiohttp's default cookie jar would: a ``Set-Cookie`` in
the answer to one user's request (a login session, a load balancer's or a proxy's
cookie) would go out with every later request to that host, whoever made it. Upstream
sessions keep no cookies at all (``DummyCookieJar``; each call's own headers are all
that is sent), read no proxy from the environment, and have no timeout of their own (the
pipeline bounds each call: ``connect`` per request, ``first_byte``, ``idle``, ``total``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import aiohttp

from relaygate import __version__

__all__ = ["USER_AGENT", "upstream_session"]

USER_AGENT = f"relaygate/{__version__}"
READ_BUFFER = 256 * 1024  # a large answer in few reads


def upstream_session(
    connector: aiohttp.BaseConnector,
    headers: Mapping[str, str] | None = None,
    hooks: Sequence[aiohttp.TraceConfig] = (),
    timeout: aiohttp.ClientTimeout | None = None,
) -> aiohttp.ClientSession:
    """A session over ``connector`` that keeps no cookies; ``hooks`` see each request
    (trace propagation), ``headers`` go on each after the User-Agent."""
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout or aiohttp.ClientTimeout(total=None),
        read_bufsize=READ_BUFFER,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,  # a proxy would make the connection (and the SSRF check) elsewhere
        trace_configs=list(hooks) or None,
    )
