"""Adapter for a node that dials out to the gateway (``provider: node``).

The node's local server is Ollama or OpenAI-compatible, as the node registered
when it connected; requests are translated by that server's own adapter
(providers/ollama.py or openai.py), whose HTTP goes through the node's
connection instead of a socket of the gateway's (tunnel/client.py). A node that
is not connected fails at once with a retryable error, so the router moves on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import aiohttp

from relaygate.providers.base import JSON
from relaygate.providers.ollama import OllamaProvider
from relaygate.providers.openai import OpenAIProvider
from relaygate.tunnel.client import Finder, TunnelSession

if TYPE_CHECKING:
    from relaygate.providers.base import Relayed, Upstream
    from relaygate.schema.requests import Call

__all__ = ["TunnelProvider"]


class TunnelProvider:
    """One dial-out node, by name; it may come and go while the gateway runs."""

    def __init__(self, node: str, find: Finder) -> None:
        self.node = node
        self.base_url = f"node://{node}"
        self._find = find
        # The adapters need only what TunnelSession has of aiohttp's session.
        session = cast(aiohttp.ClientSession, TunnelSession(node, find))
        self._ollama = OllamaProvider("", session)
        self._openai = OpenAIProvider("", session)

    def _adapter(self) -> OllamaProvider | OpenAIProvider:
        link = self._find(self.node)
        if link is not None and link.kind == "openai":
            return self._openai
        return self._ollama  # not connected: its session fails at once either way

    async def complete(self, deployment: Upstream, call: Call) -> JSON | Relayed:
        return await self._adapter().complete(deployment, call)

    def stream(self, deployment: Upstream, call: Call) -> AsyncIterator[JSON]:
        return self._adapter().stream(deployment, call)

    async def embed(self, deployment: Upstream, call: Call) -> JSON | Relayed:
        return await self._adapter().embed(deployment, call)

    async def list_models(self) -> list[str]:
        """What the node registered (its last heartbeat's list); none while disconnected."""
        link = self._find(self.node)
        return list(link.models) if link is not None else []

    async def aclose(self) -> None:
        """The node's connection belongs to the hub, which closes it."""
