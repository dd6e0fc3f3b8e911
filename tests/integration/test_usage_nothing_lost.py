""" "Nothing lost": 500 concurrent requests through two gateway processes -> exactly 500 rows.

Mixed streaming and not, some clients aborting slow streams after their first chunk,
PostgreSQL cut mid-run and restored, then SIGTERM while the outboxes still hold records.
Every request has its row, and each row the status of what happened to it: ``ok`` for
the requests that completed, ``client_aborted`` for exactly those that were abandoned.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest

from tests.fakes.tcp_proxy import TcpProxy
from tests.processes import free_port, wait_ready

ADMIN = "rg_" + "n" * 43
TOTAL = 500
MESSAGES = [{"role": "user", "content": "please count these tokens"}]
# The mock's reply repeats up to 200 characters of the prompt, one word a chunk: with the
# ``slow`` model's delay this stream lasts seconds, so the client leaves it mid-way.
LONG = [{"role": "user", "content": " ".join(["word"] * 40)}]


async def _gateway(config: Path, port: int, env: dict[str, str]) -> asyncio.subprocess.Process:
    log = (config.parent / f"gateway-{port}.log").open("wb")  # read on failure
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relaygate", "serve", "--config", str(config),
            "--port", str(port), env=env, stdout=log, stderr=log,
        )  # fmt: skip
    finally:
        log.close()


async def _one(session: aiohttp.ClientSession, url: str, mode: str) -> tuple[str, int]:
    """One request; returns the total tokens the client was told about (0 when aborted)."""
    body: dict[str, Any] = {"model": "mock", "messages": MESSAGES}
    if mode == "abort":
        body = {"model": "slow", "messages": LONG}
    if mode != "plain":
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    async with session.post(
        url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as response:
        assert response.status == 200, await response.text()
        request_id = response.headers["x-request-id"]
        if mode == "plain":
            return request_id, (await response.json())["usage"]["total_tokens"]
        if mode == "abort":
            first = await response.content.readline()
            assert first.startswith(b"data: {"), first  # a chunk, not the end
            response.close()  # closes the connection mid-stream
            return request_id, 0
        total = 0
        async for line in response.content:
            if line.startswith(b"data: {") and b'"usage"' in line:
                usage = msgspec.json.decode(line[6:])["usage"]
                total = usage["total_tokens"] if usage else total
        return request_id, total


async def _write_errors(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    lines = [ln for ln in text.splitlines() if ln.startswith("relaygate_usage_write_errors_total")]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


@pytest.mark.slow
async def test_500_requests_two_processes_database_cut_and_sigterm(
    tmp_path: Path, postgres_database: str
) -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    database = f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{postgres_database}"
    config = tmp_path / "relaygate.yaml"
    config.write_text(
        "discover_ollama: []\nmodels:\n  - name: mock\n    deployments:\n"
        "      - {provider: mock, chunk_delay: 0.005}\n"
        "  - name: slow\n    deployments:\n"
        "      - {provider: mock, chunk_delay: 0.1}\n"
        f"redis_url: redis://127.0.0.1:6379/0\nredis_prefix: 'rgtest:{uuid.uuid4().hex}:'\n"
        "usage: {fsync_window: 0.1}\n"
    )
    ports = [free_port(), free_port()]
    processes = []
    for index, port in enumerate(ports):
        env = {
            **os.environ, "RELAYGATE_DATABASE_URL": database, "RELAYGATE_ADMIN_KEY": ADMIN,
            "RELAYGATE_USAGE__OUTBOX_DIR": str(tmp_path / f"outbox{index}"),
        }  # fmt: skip
        processes.append(await _gateway(config, port, env))
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    modes = ["plain"] * 250 + ["stream"] * 200 + ["abort"] * 50
    random.Random(7).shuffle(modes)
    try:
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(wait_ready(url) for url in urls))
            warm = [await _one(session, url, "plain") for url in urls]  # keys cached before the cut
            tasks = [
                asyncio.ensure_future(_one(session, urls[i % 2], mode))
                for i, mode in enumerate(modes[:-2])
            ]
            await asyncio.sleep(0.3)
            await proxy.cut()  # the database goes away mid-run
            await asyncio.sleep(1.0)
            await proxy.restore()
            results = warm + await asyncio.gather(*tasks)
            failed_writes = sum([await _write_errors(session, url) for url in urls])
        assert failed_writes > 0, "the cut did not reach the usage writers: the test proves nothing"
        for process in processes:  # SIGTERM: the writers drain what they hold
            process.send_signal(signal.SIGTERM)
        for process in processes:
            await asyncio.wait_for(process.wait(), 30)
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await proxy.close()

    assert len(results) == TOTAL
    request_ids = [request_id for request_id, _ in results]
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{postgres_database}")
    try:
        rows = await conn.fetch(
            "SELECT request_id, status, prompt_tokens + completion_tokens AS tokens "
            "FROM usage_records"
        )
    finally:
        await conn.close()
    recorded = {r["request_id"]: r for r in rows}
    assert len(rows) == TOTAL, f"{len(rows)} rows for {TOTAL} requests"
    assert set(recorded) == {request_id for request_id, _ in results}
    told = {request_id: tokens for request_id, tokens in results if tokens}
    assert sum(recorded[rid]["tokens"] for rid in told) == sum(told.values())
    _assert_statuses(rows, request_ids, ["plain", "plain", *modes[:-2]])


def _assert_statuses(rows: list[Any], request_ids: list[str], modes: list[str]) -> None:
    """``client_aborted`` for exactly the abandoned streams, ``ok`` for all the others."""
    aborted = {
        request_id for request_id, mode in zip(request_ids, modes, strict=True) if mode == "abort"
    }
    assert len(aborted) == modes.count("abort") > 40
    by_status: dict[str, set[str]] = {}
    for row in rows:
        by_status.setdefault(row["status"], set()).add(row["request_id"])
    assert {status: len(ids) for status, ids in by_status.items()} == {
        "ok": TOTAL - len(aborted),
        "client_aborted": len(aborted),
    }
    assert by_status["client_aborted"] == aborted
