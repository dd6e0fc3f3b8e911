"""HTTP through a node's connection, in the shape the adapters already use.

The Ollama and OpenAI-compatible adapters (providers/ollama.py, openai.py) call
their upstream through an ``aiohttp.ClientSession``: ``post``/``get``/``request``
as async context managers, a response with ``status``, ``reason``, ``headers``,
``read()`` and a ``content`` read by size or by line. :class:`TunnelSession` is
that much of a session, sending each request as frames over the node's link, so
the adapters translate requests and answers for nodes exactly as for servers
the gateway reaches itself.

Failures are relaygate's upstream errors, all retryable: a node that is not
connected (UpstreamConnectError), a node that lost its connection or failed the
request before answering (UpstreamConnectError / UpstreamTimeout), and one lost
mid-answer (UpstreamProtocolError, which the pipeline turns into an error event
when bytes already reached the client).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from relaygate.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from relaygate.tunnel.hub import Answer, Exchange, Lost, NodeLink
from relaygate.tunnel.protocol import Body, End, Head

__all__ = ["TunnelBody", "TunnelResponse", "TunnelSession"]

Finder = Callable[[str], NodeLink | None]


class TunnelBody:
    """A response body arriving in frames: read whole, by size, line by line, or as it
    arrives (``iter_any``), as aiohttp's StreamReader is."""

    def __init__(self, exchange: Exchange, node: str) -> None:
        self._exchange = exchange
        self._node = node
        self._buffer = bytearray()
        self._eof = False

    async def _more(self) -> bool:
        """Append the next piece to the buffer; False at the end of the body."""
        if self._eof:
            return False
        answer = await self._exchange.next()
        if isinstance(answer, Body):
            self._buffer += answer.data
            return True
        if isinstance(answer, End):
            self._eof = True
            return False
        raise _failure(self._node, answer, started=True)

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all, with -1), as aiohttp's StreamReader.read does."""
        if n < 0:
            while await self._more():
                pass
        elif not self._buffer:
            await self._more()
        take = len(self._buffer) if n < 0 else min(n, len(self._buffer))
        data = bytes(self._buffer[:take])
        del self._buffer[:take]
        return data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._lines()

    async def iter_any(self) -> AsyncIterator[bytes]:
        """What has arrived, then each frame as it arrives, until the end of the body."""
        while self._buffer or await self._more():
            data = bytes(self._buffer)
            self._buffer.clear()
            if data:
                yield data

    async def _lines(self) -> AsyncIterator[bytes]:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                yield line
            elif not await self._more():
                if self._buffer:
                    line = bytes(self._buffer)
                    self._buffer.clear()
                    yield line
                return


class TunnelResponse:
    """The answer's status line and headers, and its body as it arrives."""

    def __init__(self, head: Head, exchange: Exchange, node: str) -> None:
        self.status = head.status
        self.reason = head.reason
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(head.headers))
        self.content = TunnelBody(exchange, node)
        self._node = node

    async def read(self) -> bytes:
        return await self.content.read()

    def raise_for_status(self) -> None:
        if self.status >= 400:
            raise UpstreamStatusError(
                f"Node {self._node!r} answered {self.status}.",
                upstream_status=self.status,
                deployment=self._node,
            )


class TunnelSession:
    """Enough of ``aiohttp.ClientSession`` for the adapters, over node ``node``'s link.

    URLs are paths under the node's local server (the adapter's base URL is empty):
    the node, not the gateway, knows where its server listens.
    """

    def __init__(self, node: str, find: Finder) -> None:
        self.node = node
        self._find = find

    def post(self, url: str, *, data: bytes | None = None, **options: Any) -> Any:
        return self.request("POST", url, data=data, **options)

    def get(self, url: str, **options: Any) -> Any:
        return self.request("GET", url, **options)

    @asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        **_options: Any,  # timeout: the pipeline bounds every call
    ) -> AsyncIterator[TunnelResponse]:
        link = self._find(self.node)
        if link is None:
            raise UpstreamConnectError(
                f"Node {self.node!r} is not connected.", deployment=self.node
            )
        path = urlsplit(url).path or "/"
        sent = [(k, v) for k, v in (headers or {}).items() if k.lower() != "authorization"]
        exchange = await link.open(method, path, sent, data or b"")
        try:
            answer = await exchange.next()
            if not isinstance(answer, Head):
                raise _failure(self.node, answer, started=False)
            yield TunnelResponse(answer, exchange, self.node)
        finally:
            await exchange.close()

    async def close(self) -> None:
        """Nothing to close: the link belongs to the hub."""


def _failure(node: str, answer: Answer, *, started: bool) -> UpstreamError:
    """What a lost connection or a node's failure is, as relaygate's error (retryable)."""
    if isinstance(answer, Head | Body | End):
        return UpstreamProtocolError(f"Node {node!r} answered out of order.", deployment=node)
    if isinstance(answer, Lost):
        reason = answer.reason
        if started:
            return UpstreamProtocolError(
                f"Node {node!r} was lost mid-response ({reason}).", deployment=node
            )
        return UpstreamConnectError(f"Node {node!r} was lost ({reason}).", deployment=node)
    message = f"Node {node!r}: {answer.message}"
    if answer.kind == "timeout":
        return UpstreamTimeout(message, deployment=node, phase="connect")
    if answer.kind in ("connect", "busy", "refused") and not started:
        return UpstreamConnectError(message, deployment=node)
    return UpstreamProtocolError(message, deployment=node)
