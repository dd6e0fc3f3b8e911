"""Run the real gateway, in the test's event loop, on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import openai
from sqlalchemy.engine import make_url

from relaygate.app import Gateway, create_app
from relaygate.auth.bootstrap import ensure_admin_key
from relaygate.server import build_server
from relaygate.settings import Settings, load_settings
from relaygate.state import AppState


def make_settings(models: list[dict[str, Any]] | None = None, **overrides: Any) -> Settings:
    """Settings as the file would give them; no Ollama discovery unless asked for.

    Each call gets its own SQLite database file unless ``database_url`` is given. The
    response cache is off unless ``cache`` is given: other tests count upstream calls.
    """
    database = Path(tempfile.mkdtemp(prefix="relaygate-test-")) / "relaygate.db"
    values: dict[str, Any] = {
        "discover_ollama": [],
        "models": models or [],
        "database_url": f"sqlite+aiosqlite:///{database}",
        "usage": {
            "outbox_dir": str(database.parent / "outbox"),
            "fsync_window": 0.05,
            "write_interval": 0.05,
        },
        "cache": {"enabled": False},
    }
    values.update(overrides)
    return load_settings(environ={}, overrides=values)


class RunningGateway:
    def __init__(
        self,
        app: Gateway,
        port: int,
        admin_key: str,
        ops_port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.app = app
        self.port = port
        self.url = f"http://{host}:{port}"
        self.ops_port = ops_port
        self.ops_url = f"http://127.0.0.1:{ops_port}" if ops_port else None
        self.admin_key = admin_key
        self.headers = {"Authorization": f"Bearer {admin_key}"}

    @property
    def state(self) -> AppState:
        assert self.app.state is not None
        return self.app.state

    def client(self, api_key: str | None = None, **kwargs: Any) -> openai.AsyncOpenAI:
        """The official client, with the bootstrap admin key unless another is given."""
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 20)
        return openai.AsyncOpenAI(
            base_url=self.url + "/v1", api_key=api_key or self.admin_key, **kwargs
        )


def _copy_template(database: str) -> None:
    if not os.path.exists(database):
        assert Templates.sqlite is not None, "the sqlite_template fixture did not run"
        shutil.copyfile(Templates.sqlite, database)


class Templates:
    """Databases migrated once per test session (see conftest.py), copied per test."""

    sqlite: Path | None = None


async def prepare_database(settings: Settings) -> str:
    """A migrated database with an admin key, as ``relaygate serve`` prepares it.

    SQLite files are copies of a template migrated once per session; other URLs
    must already be migrated (the PostgreSQL fixture clones a migrated template).
    """
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        await asyncio.to_thread(_copy_template, url.database)
    secret = await ensure_admin_key(settings)
    return secret or settings.admin_key or ""


@asynccontextmanager
async def running_gateway(
    settings: Settings, host: str = "127.0.0.1"
) -> AsyncIterator[RunningGateway]:
    """The gateway on a free port of ``host`` (loopback unless a test needs another
    local address, such as a network namespace bridge's)."""
    admin_key = await prepare_database(settings)
    app = create_app(settings)
    server, sockets = build_server(
        msgspec.structs.replace(settings, host=host, port=0),
        app,
        loop="auto",
        log_level="warning",
        timeout_graceful_shutdown=2,
    )
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.ensure_future(server.serve(sockets=sockets))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("gateway did not start")
            await asyncio.sleep(0.005)
        yield RunningGateway(app, sockets[0].getsockname()[1], admin_key, app.ops_port, host)
    finally:
        server.should_exit = True
        await task
        for sock in sockets:
            sock.close()
