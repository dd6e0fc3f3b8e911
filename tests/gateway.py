"""Run the real gateway, in the test's event loop, on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import uvicorn

from relaygate.app import Gateway, create_app
from relaygate.settings import Settings, load_settings


def make_settings(models: list[dict[str, Any]] | None = None, **overrides: Any) -> Settings:
    """Settings as the file would give them; no Ollama discovery unless asked for."""
    values: dict[str, Any] = {"discover_ollama": [], "models": models or []}
    values.update(overrides)
    return load_settings(environ={}, overrides=values)


class RunningGateway:
    def __init__(self, app: Gateway, port: int) -> None:
        self.app = app
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 20)
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="unused", **kwargs)


@asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level="warning",
        access_log=False,
        http="httptools",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("gateway did not start")
            await asyncio.sleep(0.005)
        yield RunningGateway(app, port)
    finally:
        server.should_exit = True
        await task
        sock.close()
