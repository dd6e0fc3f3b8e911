"""The official ``anthropic`` client, unchanged, talking to a canned in-process answer.

Its HTTP layer (httpx2) is given a ``MockTransport``: the SDK builds real requests
(kept in ``sent``) and parses our bytes exactly as it parses Anthropic's.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2


class CannedAnthropic:
    """An ``anthropic.Anthropic`` whose every request is answered with ``answer``."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.status = 200
        self.body = b""
        self.content_type = "application/json"
        transport = httpx2.MockTransport(self._answer)
        self.client = anthropic.Anthropic(
            api_key="sk-test",
            base_url="http://relaygate.test",
            http_client=httpx2.Client(transport=transport),
            max_retries=0,
        )

    def answer(self, body: bytes, *, status: int = 200, stream: bool = False) -> None:
        self.status, self.body = status, body
        self.content_type = "text/event-stream" if stream else "application/json"

    def _answer(self, request: httpx2.Request) -> httpx2.Response:
        self.sent.append(json.loads(request.content))
        headers = {"content-type": self.content_type}
        return httpx2.Response(self.status, content=self.body, headers=headers)
