"""The provider seam: a small Protocol every adapter implements.

Adapters translate between the canonical (OpenAI) format and one upstream's
wire format. They do not authenticate, limit, cache, count, retry or time out
calls: the pipeline does that around them. Every adapter yields responses as
OpenAI-shaped dicts; a stream ends with a usage chunk (``choices: []``) when
the upstream reported usage.

One exception to decoding: when the client's API is OpenAI's own (``call.relay``),
an OpenAI-compatible adapter may answer a complete call with :class:`Relayed`, the
upstream's bytes with only ``model`` replaced (:func:`relayed`), which the pipeline
sends as they are rather than decoding the whole body and encoding it again.
"""

from __future__ import annotations

import math
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
from relaygate.net.ssrf import AddressNotAllowed
from relaygate.redact import scrub

if TYPE_CHECKING:
    from relaygate.schema.requests import Call

__all__ = [
    "Provider",
    "Relayed",
    "Upstream",
    "in_body_error",
    "ndjson_lines",
    "post",
    "raise_for_status",
    "rate_limit_wait",
    "relayed",
    "sse_data_batches",
    "translate_errors",
    "upstream_json",
    "upstream_text",
]

JSON = dict[str, Any]
_decode = msgspec.json.decode
_encode = msgspec.json.encode
# An answer's top level, each value kept as the bytes it came as (msgspec skips over
# them without building anything; encoding a Raw writes those bytes back unchanged).
_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])


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
    def known_secrets(self) -> tuple[str, ...]:
        """Every provider key the gateway holds, scrubbed from this deployment's errors."""

    @property
    def chunk_delay(self) -> float: ...

    @property
    def client_timeout(self) -> aiohttp.ClientTimeout: ...


class Relayed(msgspec.Struct, frozen=True):
    """A complete OpenAI-shaped answer as the upstream sent it, but for ``model``,
    which is already the client's name: for a client whose API is the same
    (``call.relay``), sent on as it is. (A Struct: one is made for every such answer.)"""

    raw: bytes
    usage: JSON | None  # as the upstream reported it
    upstream_model: Any  # the ``model`` the upstream named (traces show it)

    def body(self) -> JSON:
        """The answer decoded (what the cache stores)."""
        body: JSON = _decode(self.raw)
        return body

    def as_sent(self) -> JSON:
        """The answer decoded with the upstream's own ``model`` (what traces record)."""
        return {**self.body(), "model": self.upstream_model}


def relayed(raw: bytes, model: str) -> Relayed | None:
    """An upstream's complete answer with ``model`` set to the client's name, read for
    its usage, every other value left as the bytes it came as: not decoded and
    encoded again (on a 30 kB embedding, ~30 µs instead of ~140).

    None when the body must be decoded whole instead: not a JSON object (or invalid
    JSON anywhere in it, or text that is not UTF-8), or an answer carrying an
    ``error``. Those go through :func:`upstream_json` and its errors.
    """
    try:
        top = _TOP_LEVEL.decode(raw)
        if "error" in top:
            return None
        if not raw.isascii():
            raw.decode()  # skipped values' text is not checked as it is read: check it here
        usage = _decode(top["usage"]) if "usage" in top else None
        upstream_model = _decode(top["model"]) if "model" in top else None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None
    top["model"] = msgspec.Raw(_encode(model))
    return Relayed(_encode(top), usage if isinstance(usage, dict) else None, upstream_model)


class Provider(Protocol):
    """One upstream server (one base URL) and the pooled connection to it."""

    base_url: str

    async def complete(self, deployment: Upstream, call: Call) -> JSON | Relayed:
        """A whole chat or text completion, OpenAI-shaped (:class:`Relayed` only when
        ``call.relay`` allows it)."""

    def stream(self, deployment: Upstream, call: Call) -> AsyncIterator[JSON]:
        """Chat or text completion chunks, OpenAI-shaped, as they arrive."""

    async def embed(self, deployment: Upstream, call: Call) -> JSON | Relayed:
        """Embeddings, OpenAI-shaped (:class:`Relayed` as for ``complete``)."""

    async def list_models(self) -> list[str]:
        """Names of the models the upstream serves."""

    async def aclose(self) -> None:
        """Close the pooled connections."""


def upstream_text(text: str, deployment: Upstream, call: Call | None) -> str:
    """Upstream text as it may enter the gateway: every secret scrubbed, then cut.

    The only way text from an upstream reaches an error, and through it a client,
    the log, health state or the admin view. The known secrets are every
    provider key the gateway holds and the caller's own credential.
    """
    credential = call.credential if call is not None else None
    return scrub(text, deployment.api_key, *deployment.known_secrets, credential)


def in_body_error(
    deployment: Upstream, call: Call, error: object, *, mid_stream: bool = False
) -> UpstreamStatusError:
    """An error the upstream reported inside a 200 answer: a body, an SSE event, an NDJSON line."""
    message = error.get("message", error) if isinstance(error, dict) else error
    where = "failed mid-stream" if mid_stream else "failed"
    return UpstreamStatusError(
        f"Deployment {deployment.name!r} {where}: {upstream_text(str(message), deployment, call)}",
        upstream_status=502,
        deployment=deployment.name,
    )


@contextmanager
def translate_errors(deployment: Upstream, call: Call | None = None) -> Iterator[None]:
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
            f"Deployment {name!r} failed: {upstream_text(str(exc), deployment, call)}",
            deployment=name,
        ) from None


def _os_reason(error: OSError) -> str:
    """A socket error's plain description, without the address it was connecting to
    (the SSRF policy's refusal says which address, of the user's own URL, and why)."""
    if isinstance(error, AddressNotAllowed):
        return str(error)
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
    call: Call,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """POST to an upstream; yields a successful response, raises relaygate's errors otherwise.

    Errors while the caller reads the body are translated too.
    """
    with translate_errors(deployment, call):
        async with session.post(
            url, data=body, headers=headers, timeout=deployment.client_timeout
        ) as response:
            await raise_for_status(response, deployment, call)
            yield response


async def raise_for_status(
    response: aiohttp.ClientResponse, deployment: Upstream, call: Call | None = None
) -> None:
    """Raise UpstreamStatusError with the upstream's own message (scrubbed) when it answered
    an error."""
    if response.status < 400:
        return
    raw = await response.content.read(64 * 1024)
    message = _error_message(raw) or response.reason or "error"
    retry_after = _retry_after(response.headers.get("Retry-After"))
    if retry_after is None and response.status == 429:
        retry_after = rate_limit_wait(response.headers)
    raise UpstreamStatusError(
        f"Deployment {deployment.name!r} answered {response.status}: "
        f"{upstream_text(message, deployment, call)}",
        upstream_status=response.status,
        deployment=deployment.name,
        retry_after=retry_after,
    )


def _error_message(raw: bytes) -> str:
    """The message of an error body, whole: it is scrubbed before it is ever cut."""
    try:
        body = _decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return raw.decode("utf-8", "replace").strip()
    if isinstance(body, dict):
        error = body.get("error", body.get("message", body.get("detail")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return str(error)
    return str(body)


_MAX_WAIT = 86400.0  # an upstream's wait beyond a day is taken as a day


def _retry_after(value: str | None) -> float | None:
    """Seconds in a header, finite and within a day ("inf", "nan" and dates: None)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), _MAX_WAIT)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def rate_limit_wait(headers: Mapping[str, str]) -> float | None:
    """Seconds until a 429'd upstream takes requests again, when it says so without
    Retry-After: ``retry-after-ms``, or OpenAI's ``x-ratelimit-reset-requests`` /
    ``-tokens`` (durations such as ``1s``, ``6m0s``, ``20ms``), the one whose
    ``x-ratelimit-remaining-*`` is 0, else the longer."""
    millis = _retry_after(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    resets: dict[str, float] = {}
    for kind in ("requests", "tokens"):
        reset = _duration(headers.get(f"x-ratelimit-reset-{kind}"))
        if reset is not None:
            resets[kind] = reset
    spent = [v for k, v in resets.items() if headers.get(f"x-ratelimit-remaining-{k}") == "0"]
    found = spent or list(resets.values())
    return max(found) if found else None


def _duration(value: str | None) -> float | None:
    """A Go-style duration (``6m0s``, ``1.5s``, ``20ms``) or plain seconds, in seconds."""
    if not value:
        return None
    value = value.strip()
    plain = _retry_after(value)
    if plain is not None:
        return plain
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return min(sum(float(n) * _UNITS[u] for n, u in parts), _MAX_WAIT)


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


MAX_SSE_LINE = 8 * 1024 * 1024  # one event's line; beyond it the upstream is broken


async def sse_data_batches(
    response: aiohttp.ClientResponse, deployment: Upstream
) -> AsyncIterator[list[bytes]]:
    """The ``data:`` payloads of a server-sent event stream, as many as each network
    read completed (never an empty list): one read, one batch, however many events it
    held. Lines are those of :func:`ndjson_lines` (split on ``\\n``, stripped); other
    fields (comments, ``event:``, ``id:``) are skipped."""
    rest = b""
    async for block in response.content.iter_any():
        lines = (rest + block if rest else block).split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_SSE_LINE:
            raise UpstreamProtocolError(
                f"Deployment {deployment.name!r} sent a stream line longer than "
                f"{MAX_SSE_LINE} bytes.",
                deployment=deployment.name,
            )
        found = []
        for line in lines:
            line = line.strip()
            if line.startswith(b"data:"):
                found.append(line[5:].strip())
        if found:
            yield found
    last = rest.strip()
    if last.startswith(b"data:"):
        yield [last[5:].strip()]
