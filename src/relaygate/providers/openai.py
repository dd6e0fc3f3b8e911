"""Adapter for any OpenAI-compatible server: OpenAI, vLLM, llama.cpp, LM Studio.

The canonical format is this upstream's own, so the client's body is passed on
with only ``model`` replaced; fields the gateway does not know pass through.
A complete answer for a client of the same API (``call.relay``) goes back as the bytes
it came as, ``model`` replaced (``base.relayed``); any other is decoded.
Streams always ask for ``stream_options.include_usage`` so that usage is known;
the inbound API strips that chunk again if the client did not ask for it. A stream
is read in batches (:meth:`OpenAIProvider.stream_batches`): every chunk one network
read brought, so that the pipeline relays them in one write.
A deployment's ``organization`` and ``project`` are sent as OpenAI's
``OpenAI-Organization`` and ``OpenAI-Project`` headers. A 429's wait (Retry-After,
or OpenAI's x-ratelimit-reset-* headers) is read by ``base.raise_for_status``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp
import msgspec

from relaygate.errors import InvalidRequest, UpstreamError
from relaygate.providers.base import (
    JSON,
    in_body_error,
    post,
    relayed,
    sse_data_batches,
    upstream_json,
)

if TYPE_CHECKING:
    from relaygate.providers.base import Relayed, Upstream
    from relaygate.schema.requests import Call

__all__ = ["OpenAIProvider"]

_encode = msgspec.json.encode
_decode = msgspec.json.decode
_PATHS = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings"}
_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class OpenAIProvider:
    """One OpenAI-compatible upstream, with one pooled keep-alive session."""

    paths: ClassVar[dict[str, str]] = _PATHS  # call kind -> path under the base URL
    models_path: ClassVar[str] = "/models"
    server: ClassVar[str] = "OpenAI-compatible"

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        organization: str | None = None,
        project: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._urls = {kind: self.base_url + path for kind, path in self.paths.items()}
        self._base_headers = dict(_JSON_HEADERS)
        if organization:
            self._base_headers["OpenAI-Organization"] = organization
        if project:
            self._base_headers["OpenAI-Project"] = project

    def _headers(self, deployment: Upstream) -> dict[str, str]:
        if not deployment.api_key:
            return self._base_headers
        return {**self._base_headers, "Authorization": f"Bearer {deployment.api_key}"}

    def _url(self, call: Call) -> str:
        url = self._urls.get(call.kind)
        if url is None:
            raise InvalidRequest(
                f"The model {call.model!r} is served by an {self.server} server, which has "
                f"no {call.kind} API.",
                param="model",
            )
        return url

    def _body(self, deployment: Upstream, call: Call, stream: bool) -> bytes:
        body: dict[str, Any] = dict(call.body)
        body["model"] = deployment.upstream_model
        if stream:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        return _encode(body)

    async def complete(self, deployment: Upstream, call: Call) -> JSON | Relayed:
        return await self._post_json(deployment, call)

    async def embed(self, deployment: Upstream, call: Call) -> JSON | Relayed:
        return await self._post_json(deployment, call)

    async def _post_json(self, deployment: Upstream, call: Call) -> JSON | Relayed:
        url = self._url(call)
        body = self._body(deployment, call, stream=False)
        async with post(
            self._session, url, body, self._headers(deployment), deployment, call
        ) as response:
            raw = await response.read()
        if call.relay and (answer := relayed(raw, call.model)) is not None:
            return answer
        reply = upstream_json(raw, deployment)
        if "error" in reply and not reply.get("choices") and not reply.get("data"):
            raise in_body_error(deployment, call, reply["error"])  # a 200 carrying an error
        return reply

    async def stream(self, deployment: Upstream, call: Call) -> AsyncIterator[JSON]:
        async for batch in self.stream_batches(deployment, call):
            for chunk in batch:
                yield chunk

    async def stream_batches(self, deployment: Upstream, call: Call) -> AsyncIterator[list[JSON]]:
        """The stream's chunks, as many at a time as each network read brought (never an
        empty list). A chunk that is an error ends the stream after the chunks before it."""
        url = self._url(call)
        body = self._body(deployment, call, stream=True)
        headers = {**self._headers(deployment), "Accept": "text/event-stream"}
        async with post(self._session, url, body, headers, deployment, call) as response:
            async for batch in sse_data_batches(response, deployment):
                chunks: list[JSON] = []
                failed: UpstreamError | None = None
                done = False
                for data in batch:
                    if data == b"[DONE]":
                        done = True
                        break
                    try:
                        chunks.append(_chunk(data, deployment, call))
                    except UpstreamError as exc:
                        failed = exc
                        break
                if chunks:
                    yield chunks
                if failed is not None:
                    raise failed
                if done:
                    return

    async def list_models(self, api_key: str | None = None) -> list[str]:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        url = self.base_url + self.models_path
        async with self._session.get(url, headers=headers) as response:
            response.raise_for_status()
            body = _decode(await response.read())
        return [str(m["id"]) for m in body.get("data", []) if isinstance(m, dict) and "id" in m]

    async def aclose(self) -> None:
        await self._session.close()


def _chunk(data: bytes, deployment: Upstream, call: Call) -> JSON:
    chunk = upstream_json(data, deployment)
    error = chunk.get("error")
    if error is not None:
        raise in_body_error(deployment, call, error, mid_stream=True)
    return chunk
