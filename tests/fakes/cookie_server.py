"""An upstream that sets cookies: every answer carries ``Set-Cookie`` for each cookie of
``plan`` (name, value, attributes), and the ``Cookie`` header of every request is kept.

It answers any method and path with a minimal OpenAI chat completion, so it serves both
sessions used directly and the gateway's ``/ai/chat`` over a user's own provider. Reach
it by a host name (``host_url``, ``localhost``): aiohttp's default jar ignores cookies of
IP addresses, so only a name shows whether a session sends cookies back.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes.local_app import LocalApp

ANSWER = {
    "id": "chatcmpl-cookies", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}  # fmt: skip


class CookieServer(LocalApp):
    def __init__(self, plan: list[tuple[str, str, dict[str, Any]]]) -> None:
        super().__init__()
        self.plan = plan
        self.cookies: list[str | None] = []  # each request's Cookie header, in order

    @property
    def host_url(self) -> str:
        return f"http://localhost:{self.port}"

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._answer)

    async def _answer(self, request: web.Request) -> web.Response:
        self.cookies.append(request.headers.get("Cookie"))
        response = web.json_response(ANSWER)
        for name, value, attributes in self.plan:
            response.set_cookie(name, value, **attributes)
        return response
