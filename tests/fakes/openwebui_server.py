"""A scriptable Open WebUI server: its OpenAI-compatible API under ``/api`` of its URL.

``POST /api/chat/completions``, ``POST /api/embeddings`` and ``GET /api/models`` answer
as the OpenAI fake does (same scripts, same Bearer key check); there is no ``/v1`` and no
legacy completions endpoint, as on a real Open WebUI.
"""

from __future__ import annotations

from aiohttp import web

from tests.fakes.openai_server import FakeOpenAI


class FakeOpenWebUI(FakeOpenAI):
    """``base_url`` is the server's root, as a deployment names it."""

    api_prefix = ""

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/chat/completions", self._chat)
        app.router.add_post("/api/embeddings", self._embeddings)
        app.router.add_get("/api/models", self._list_models)
