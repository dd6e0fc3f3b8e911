"""Adapter for an Open WebUI server as an upstream (seed 004).

Open WebUI serves an OpenAI-compatible API under ``/api`` of its own URL:
``POST /api/chat/completions``, ``POST /api/embeddings`` and ``GET /api/models``,
with an API key (Settings > Account in Open WebUI) as a Bearer token. The
deployment's ``base_url`` is the server's URL (``http://openwebui:8080``), without
``/api``. It has no legacy text completions API: those are refused with a 400.
"""

from __future__ import annotations

from typing import ClassVar

from relaygate.providers.openai import OpenAIProvider

__all__ = ["OpenWebUIProvider"]


class OpenWebUIProvider(OpenAIProvider):
    """The OpenAI adapter with Open WebUI's paths."""

    paths: ClassVar[dict[str, str]] = {
        "chat": "/api/chat/completions",
        "embedding": "/api/embeddings",
    }
    models_path: ClassVar[str] = "/api/models"
    server: ClassVar[str] = "Open WebUI"
