"""The provider seam: a small Protocol every adapter implements.

Adapters translate between the canonical (OpenAI) format and one upstream's
wire format. They do not authenticate, limit, cache, count, retry or time out
calls: the pipeline does that around them. Every adapter yields responses as
OpenAI-shaped dicts; a stream ends with a usage chunk (``choices: []``) when
the upstream reported usage.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import msgspec

from relaygate.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from relaygate.schema.requests import Call

__all__ = [
    "Provider",
    "Upstream",
    "ndjson_lines",
    "post",
    "raise_for_status",
    "redact",
    "translate_errors",
    "upstream_json",
]

JSON = dict[str, Any]
_decode = msgspec.json.decode


class Upstream(Protocol):
    """What an adapter knows of the deployment it calls (routing's ``Deployment``)."""

    @property
    def name(self) -> str:
        """Safe to show: never holds a URL's credentials or an API key."""

    @property
    def upstream_model(self) -> str: ...

    @property
    def api_key(self) -> str | None: ...

    @property
    def chunk_delay(self) -> float: ...

    @property
    def client_timeout(self) -> aiohttp.ClientTimeout: ...


class Provider(Protocol):
    """One upstream server (one base URL) and the pooled connection to it."""

    base_url: str

    async def complete(self, deployment: Upstream, call: Call) -> JSON:
        """A whole chat or text completion, OpenAI-shaped."""

    def stream(self, deployment: Upstream, call: Call) -> AsyncIterator[JSON]:
        """Chat or text completion chunks, OpenAI-shaped, as they arrive."""

    async def embed(self, deployment: Upstream, call: Call) -> JSON:
        """Embeddings, OpenAI-shaped."""

    async def list_models(self) -> list[str]:
        """Names of the models the upstream serves."""

    async def aclose(self) -> None:
        """Close the pooled connections."""


_SECRET_PATTERNS = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|(?<=key=)[^&\s\"']+|Bearer\s+[^\s\"']+)"
)


def redact(text: str, *secrets: str | None) -> str:
    """Remove known secrets and anything shaped like an API key from upstream text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SECRET_PATTERNS.sub("***", text)[:2000]


@contextmanager
def translate_errors(deployment: Upstream) -> Iterator[None]:
    """Map aiohttp and socket errors to relaygate's upstream errors, in one place."""
    name = deployment.name
    try:
        yield
    except UpstreamError:
        raise
    except aiohttp.ConnectionTimeoutError:
        raise UpstreamTimeout(
            f"Timed out connecting to deployment {name!r}.", deployment=name, phase="connect"
        ) from None
    except aiohttp.ClientConnectorError as exc:
        reason = _os_reason(exc.os_error)
        raise UpstreamConnectError(
            f"Deployment {name!r} is unreachable ({reason}).", deployment=name
        ) from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, ConnectionError) as exc:
        raise UpstreamProtocolError(
            f"Deployment {name!r} closed the connection mid-response ({type(exc).__name__}).",
            deployment=name,
        ) from None
    except aiohttp.ClientError as exc:
        raise UpstreamProtocolError(
            f"Deployment {name!r} failed: {redact(str(exc), deployment.api_key)}", deployment=name
        ) from None


def _os_reason(error: OSError) -> str:
    """A socket error's plain description, without the address it was connecting to."""
    if error.errno:
        return os.strerror(error.errno).lower()
    return type(error).__name__


@asynccontextmanager
async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    deployment: Upstream,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """POST to an upstream; yields a successful response, raises relaygate's errors otherwise.

    Errors while the caller reads the body are translated too.
    """
    with translate_errors(deployment):
        async with session.post(
            url, data=body, headers=headers, timeout=deployment.client_timeout
        ) as response:
            await raise_for_status(response, deployment)
            yield response


async def raise_for_status(response: aiohttp.ClientResponse, deployment: Upstream) -> None:
    """Raise UpstreamStatusError with the upstream's own message when it answered an error."""
    if response.status < 400:
        return
    raw = await response.content.read(64 * 1024)
    message = _error_message(raw) or response.reason or "error"
    retry_after = _retry_after(response.headers.get("Retry-After"))
    raise UpstreamStatusError(
        f"Deployment {deployment.name!r} answered {response.status}: "
        f"{redact(message, deployment.api_key)}",
        upstream_status=response.status,
        deployment=deployment.name,
        retry_after=retry_after,
    )


def _error_message(raw: bytes) -> str:
    try:
        body = _decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return raw.decode("utf-8", "replace").strip()[:500]
    if isinstance(body, dict):
        error = body.get("error", body.get("message", body.get("detail")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return str(error)
    return str(body)[:500]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def upstream_json(raw: bytes, deployment: Upstream) -> JSON:
    """Decode an upstream's JSON body; anything else is the upstream's fault (502)."""
    try:
        body = _decode(raw)
    except (msgspec.DecodeError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise UpstreamProtocolError(
            f"Deployment {deployment.name!r} sent a response that is not a JSON object.",
            deployment=deployment.name,
        )
    return body


async def ndjson_lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Non-empty lines of a streamed body, as they arrive (NDJSON and SSE alike)."""
    async for line in response.content:
        line = line.strip()
        if line:
            yield line
