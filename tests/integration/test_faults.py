"""Faults: the database or Redis taken away mid-run, and limits shared by two processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relaygate.store.engine import create_engine
from relaygate.store.identity import IdentityStore
from tests.conftest import MOCK
from tests.fakes.redis_server import RedisServer
from tests.fakes.tcp_proxy import TcpProxy
from tests.gateway import RunningGateway, Templates, make_settings, running_gateway
from tests.keys import new_key
from tests.processes import free_port, wait_ready
from tests.usage_rows import usage_rows

BODY = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


async def chat(gateway_url: str, secret: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gateway_url + "/v1/chat/completions",
            json=BODY,
            headers={"Authorization": f"Bearer {secret}"},
        ) as response:
            return response.status, await response.json()


async def test_database_outage_keeps_cached_keys_working(postgres_database: str) -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{postgres_database}"
    try:
        async with running_gateway(make_settings(MOCK, database_url=url)) as gateway:
            _, used = await new_key(gateway)
            _, unused = await new_key(gateway)
            assert (await chat(gateway.url, used))[0] == 200

            await proxy.cut()
            for _ in range(3):  # cached: no database needed
                assert (await chat(gateway.url, used))[0] == 200
            status, body = await chat(gateway.url, unused)
            assert status == 503
            assert "key store is unreachable" in body["error"]["message"]

            await proxy.restore()  # no restart: the next request reconnects
            assert (await chat(gateway.url, unused))[0] == 200
    finally:
        await proxy.close()


@pytest.mark.parametrize("fail_closed", [False, True])
async def test_redis_outage_policy(redis_server: RedisServer, fail_closed: bool) -> None:
    settings = make_settings(
        MOCK,
        redis_url=redis_server.url,
        tiers={"five": {"requests_per_hour": 5}},
        limits={"fail_closed": fail_closed, "redis_timeout": 0.2},
    )
    async with running_gateway(settings) as gateway:
        _, secret = await new_key(gateway, tier="five")
        assert [(await chat(gateway.url, secret))[0] for _ in range(2)] == [200, 200]
        await redis_server.kill()
        statuses = [(await chat(gateway.url, secret))[0] for _ in range(7)]
        metrics = await _metrics(gateway)
        recorded = await usage_rows(gateway.state.engine, 9)
    # Nothing lost with Redis gone: every request has its usage record.
    assert len(recorded) == 9
    assert [r.status for r in recorded].count("ok") == statuses.count(200) + 2
    if fail_closed:  # refused by the gateway itself: rejected, not an upstream error
        assert [r.status for r in recorded].count("rejected") == 7
    if fail_closed:
        assert statuses == [503] * 7
    else:
        # Per-process fallback: this process enforces the whole limit on its own —
        # looser than shared (it forgets the 2 used), never unlimited.
        assert statuses == [200] * 5 + [429] * 2
        assert "relaygate_ratelimit_degraded 1.0" in metrics


async def _metrics(gateway: RunningGateway) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/metrics") as response:
            return await response.text()


async def test_two_processes_sharing_redis_admit_exactly_the_limit(tmp_path: Path) -> None:
    """Two gateway processes, one Redis, one key with 10 requests an hour: exactly 10 pass."""
    database = tmp_path / "relaygate.db"
    assert Templates.sqlite is not None
    await asyncio.to_thread(shutil.copyfile, Templates.sqlite, database)
    url = f"sqlite+aiosqlite:///{database}"
    secret = await _limited_key(url)
    config = tmp_path / "relaygate.yaml"
    config.write_text(
        "discover_ollama: []\nmodels:\n  - name: mock\n    deployments:\n"
        "      - {provider: mock, chunk_delay: 0}\n"
        "redis_url: redis://127.0.0.1:6379/0\n"
        f"redis_prefix: 'rgtest:{uuid.uuid4().hex}:'\n"
        "tiers: {ten: {requests_per_hour: 10}}\n"
    )
    env = {**os.environ, "RELAYGATE_DATABASE_URL": url, "RELAYGATE_ADMIN_KEY": "rg_" + "a" * 43}
    ports = [free_port(), free_port()]
    processes = [await _serve(config, port, env) for port in ports]
    try:
        await asyncio.gather(*(wait_ready(f"http://127.0.0.1:{port}") for port in ports))
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        results = await asyncio.gather(*(chat(urls[i % 2], secret) for i in range(40)))
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            await asyncio.wait_for(process.wait(), 15)
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 10 and statuses.count(429) == 30


async def _limited_key(url: str) -> str:
    engine = create_engine(url)
    try:
        store = IdentityStore(engine)
        tenant = await store.create_tenant("acme")
        _, secret = await store.create_key(tenant.id, prefix="rg_", tier="ten")
        return secret
    finally:
        await engine.dispose()


async def _serve(config: Path, port: int, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relaygate", "serve", "--config", str(config), "--port", str(port),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
