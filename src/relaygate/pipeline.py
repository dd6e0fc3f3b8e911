"""The request pipeline, top to bottom, for every inbound API.

    parse -> authenticate -> admit -> cache -> route -> call -> relay -> settle

Parsing happens in the inbound API module (``api/``); authentication, admission,
caching and settlement slot in here as later stages. This module routes and
calls: it tries deployments in the router's order, retrying on another one only
while nothing has reached the client, and applies each deployment's timeouts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relaygate.errors import UpstreamError, UpstreamStatusError, UpstreamTimeout
from relaygate.redact import scrub

if TYPE_CHECKING:
    from relaygate.routing.router import Deployment
    from relaygate.schema.requests import Call
    from relaygate.state import AppState

__all__ = ["UpstreamStream", "complete", "open_stream"]

JSON = dict[str, Any]


async def complete(state: AppState, call: Call) -> tuple[JSON, Deployment]:
    """Call the first deployment that answers; return its (OpenAI-shaped) body."""
    last: UpstreamError | None = None
    for deployment in state.router.plan(call.model):
        provider = deployment.provider
        call.served_by = (deployment.provider_name, deployment.name)
        method = provider.embed if call.kind == "embedding" else provider.complete
        started = time.monotonic()
        try:
            async with asyncio.timeout(deployment.timeouts.total):
                body = await method(deployment, call)
        except TimeoutError:
            last = _timed_out(deployment, "total", time.monotonic() - started)
        except UpstreamError as exc:
            last = exc
        else:
            deployment.health.record_success()
            body["model"] = call.model
            return body, deployment
        _record_failure(state, deployment, last, call)
        if not last.retryable:
            break
    assert last is not None
    raise last


async def open_stream(state: AppState, call: Call) -> UpstreamStream:
    """Start a stream on the first deployment that yields a first chunk.

    Until that chunk exists nothing has been sent to the client, so a failed
    deployment is replaced by the next one in the plan.
    """
    last: UpstreamError | None = None
    for deployment in state.router.plan(call.model):
        call.served_by = (deployment.provider_name, deployment.name)
        stream = UpstreamStream(deployment, deployment.provider.stream(deployment, call))
        try:
            first = await stream.next()
        except UpstreamError as exc:
            await stream.aclose()
            last = exc
            _record_failure(state, deployment, exc, call)
            if not exc.retryable:
                break
            continue
        deployment.health.record_success()
        stream.first = first
        return stream
    assert last is not None
    raise last


@dataclass(slots=True, eq=False)
class UpstreamStream:
    """An upstream stream with its deadlines: first byte, idle between chunks, total."""

    deployment: Deployment
    chunks: AsyncIterator[JSON]
    first: JSON | None = None
    started: float = field(default_factory=time.monotonic)
    received: int = 0

    async def next(self) -> JSON | None:
        """The next chunk, None at the end; raises UpstreamError on failure or expiry."""
        t = self.deployment.timeouts
        now = time.monotonic()
        total_deadline = self.started + t.total
        wait = t.idle if self.received else t.first_byte
        phase = "idle" if self.received else "first_byte"
        if now + wait >= total_deadline:
            wait, phase = total_deadline - now, "total"
        try:
            async with asyncio.timeout(wait):
                chunk = await anext(self.chunks)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise _timed_out(self.deployment, phase, wait) from None
        self.received += 1
        return chunk

    async def aclose(self) -> None:
        """Release the upstream connection (cancels the upstream request if unfinished)."""
        close = getattr(self.chunks, "aclose", None)
        if close is not None:
            await close()


def _timed_out(deployment: Deployment, phase: str, seconds: float) -> UpstreamTimeout:
    what = {
        "first_byte": "waiting for the first chunk",
        "idle": "waiting for the next chunk",
        "total": "for the whole call",
        "connect": "connecting",
    }[phase]
    return UpstreamTimeout(
        f"Deployment {deployment.name!r} timed out {what} (after {seconds:.3g} s).",
        deployment=deployment.name,
        phase=phase,
    )


def _record_failure(
    state: AppState, deployment: Deployment, error: UpstreamError, call: Call
) -> None:
    """Health, metric and log of one failure: a bounded class, and text scrubbed again here
    (providers scrub what they quote; this is the last gate before health state and the log)."""
    retry_after = error.retry_after if isinstance(error, UpstreamStatusError) else None
    text = scrub(error.message, *deployment.known_secrets, call.credential)
    if error.retryable:
        deployment.health.record_failure(time.monotonic(), text, retry_after, kind=error.kind)
    state.metrics.upstream_error(deployment.name, error.kind)
    state.log.warning("upstream failure (%s): %s", error.kind, text)
