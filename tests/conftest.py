"""Shared fixtures: the real gateway on a free port, real fake upstreams, real clients."""

from __future__ import annotations

import asyncio
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from hypothesis import HealthCheck, settings

# Modules the gateway imports only when configured (Redis, JWT) are imported once
# at start-up, inside the event loop; import them here, outside any loop, so that
# blockbuster keeps flagging what matters: blocking calls while requests are served.
import relaygate.auth.invalidation
import relaygate.auth.jwt
import relaygate.limits.fallback
import relaygate.limits.redis  # noqa: F401
from relaygate.store.migrate import upgrade
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.redis_server import RedisServer
from tests.gateway import RunningGateway, Templates, make_settings, running_gateway

# Generated-input tests bound what they check, never how long an example takes: the
# CI machine has two cores shared with real servers, so no per-example deadline.
settings.register_profile(
    "relaygate", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("relaygate")

PG_DSN = "postgresql://postgres@127.0.0.1:5432"
PG_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
MOCK = [{"name": "mock", "deployments": [{"provider": "mock", "chunk_delay": 0}]}]


@pytest.fixture(scope="session", autouse=True)
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite database; every gateway in the tests starts from a copy."""
    path = tmp_path_factory.mktemp("template") / "relaygate.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    Templates.sqlite = path
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated PostgreSQL database, cloned for each test that wants PostgreSQL."""
    name = f"rg_template_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{name}"')
    try:
        upgrade(f"{PG_SERVER}/{name}")
        yield name
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path, postgres_template: str
) -> Iterator[str]:
    """A fresh, migrated database of each kind: storage tests run on both."""
    if request.param == "sqlite":
        path = tmp_path / "relaygate.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    name = f"rg_test_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_database(postgres_template: str) -> Iterator[str]:
    """The name of a fresh, migrated PostgreSQL database (on 127.0.0.1:5432)."""
    name = f"rg_test_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    try:
        yield name
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def admin_sql(statement: str) -> None:
    """Run one statement on the server's maintenance database (outside any event loop)."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(f"{PG_DSN}/postgres")
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which relaygate's code blocks the event loop.

    Only relaygate's own frames are scanned: client libraries used by the tests
    (the openai SDK loads certificates when constructed) are not the product.
    """
    with blockbuster_ctx("relaygate") as bb:
        # Building the engine resolves the SQLite path once, at start; not per request.
        bb.functions["os.path.abspath"].can_block_in("relaygate/store/engine.py", "create_engine")
        # asyncpg reads ~/.pgpass and ~/.postgresql while it opens a connection: once per
        # new pooled connection, not per request.
        for function in bb.functions.values():
            function.can_block_in("asyncpg/connect_utils.py", "_parse_connect_dsn_and_args")
        yield bb


@pytest.fixture
async def mock_gateway() -> AsyncIterator[RunningGateway]:
    """A gateway serving only the development model ``mock`` (no delay)."""
    async with running_gateway(make_settings(MOCK)) as gateway:
        yield gateway


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A real OpenAI-compatible server on a free port, scripted per test."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def fake_ollama() -> AsyncIterator[FakeOllama]:
    """A real Ollama-native server on a free port, scripted per test."""
    async with FakeOllama(models=["llama3.2:1b", "qwen2.5:0.5b"]) as fake:
        yield fake


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A private redis-server on a free port, which the test may kill (or count on)."""
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


def closed_port_url(path: str = "/v1") -> str:
    """A loopback URL where nothing listens: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
