"""``relaygate serve`` on SQLite, one worker or two: usage written by a process of its own
(usage/dedicated.py), every record once, whichever way the gateway stops.

Real processes on a real port: ``relaygate serve`` starts the writer process before the
workers (or its one worker), so no worker is elected; after Ctrl-C (SIGINT to the whole
process group) or SIGTERM to the supervisor, every answered request is in
``usage_records`` exactly once, counted once in the daily rollups, and no spool file
(nor the metrics folder the processes shared) is left. When the writer
process is killed, a worker is elected and writes on.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from relaygate.usage.election import WriterLock
from tests.integration.test_cli import AUTH, SLOW_MOCK, serving

pytestmark = pytest.mark.slow

BODY = {"model": "mock", "messages": [{"role": "user", "content": "x"}]}
WRITER_LINE = re.compile(rb"usage writer process (\d+):")


@asynccontextmanager
async def gateway(
    tmp_path: Path, workers: int = 2
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``workers`` workers on SQLite, limits in Redis (a prefix of their own)."""
    config = tmp_path / "c.yaml"
    config.write_text(
        SLOW_MOCK.format(delay=0)
        + f"redis_url: redis://127.0.0.1:6379/0\nredis_prefix: 'rgtest:{uuid.uuid4().hex}:'\n"
    )
    (tmp_path / "tmp").mkdir()  # the gateway's temporary files (its metrics folder)
    env = {"RELAYGATE_USAGE__OUTBOX_DIR": str(tmp_path / "outbox"), "TMPDIR": str(tmp_path / "tmp")}
    async with serving(config, "--workers", str(workers), env=env) as (process, url):
        yield process, url


async def send(url: str, n: int) -> None:
    """``n`` requests, eight at a time, each answered 200."""
    gate = asyncio.Semaphore(8)

    async def one(session: aiohttp.ClientSession) -> None:
        async with gate, session.post(f"{url}/v1/chat/completions", json=BODY, headers=AUTH) as r:
            assert r.status == 200, await r.text()

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session) for _ in range(n)))


def recorded(database: Path) -> tuple[int, int, int]:
    """Rows in usage_records, distinct request ids, and requests counted by the rollups."""
    with sqlite3.connect(database) as db:
        rows, distinct = db.execute(
            "SELECT count(*), count(DISTINCT request_id) FROM usage_records "
            "WHERE endpoint = '/v1/chat/completions'"
        ).fetchone()
        counted = db.execute(
            "SELECT coalesce(sum(request_count), 0) FROM usage_daily "
            "WHERE endpoint = '/v1/chat/completions'"
        ).fetchone()[0]
    return rows, distinct, counted


async def written(url: str, want: int = 120) -> float:
    """``relaygate_usage_records_written_total`` in /metrics, once it reaches ``want``
    (or what it is after five seconds)."""
    pattern = re.compile(r"^relaygate_usage_records_written_total (\S+)$", re.M)
    value = 0.0
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(f"{url}/metrics") as response:
                found = pattern.search(await response.text())
            value = float(found.group(1)) if found else 0.0
            if value >= want:
                break
            await asyncio.sleep(0.05)
    return value


def spools_left(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "outbox").glob("outbox-*"))


async def output_until(process: asyncio.subprocess.Process, pattern: re.Pattern[bytes]) -> bytes:
    """What the gateway printed up to the first line matching ``pattern``."""
    assert process.stdout is not None
    seen = b""
    while not pattern.search(seen):
        line = await asyncio.wait_for(process.stdout.readline(), 15)
        assert line, seen.decode()
        seen += line
    return seen


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_writer_process_writes_every_record_once_after_ctrl_c(
    tmp_path: Path, workers: int
) -> None:
    async with gateway(tmp_path, workers) as (process, url):
        printed = await output_until(process, WRITER_LINE)
        match = WRITER_LINE.search(printed)
        assert match is not None
        writer = int(match.group(1))
        assert writer != process.pid
        await send(url, 120)
        # the writer process's figures are in /metrics (prometheus-client's multiprocess
        # files, in a folder of the gateway's), one worker or several
        assert await written(url) == 120
        assert [p.name[:18] for p in (tmp_path / "tmp").iterdir()] == ["relaygate-metrics-"]
        # Ctrl-C: the terminal signals the whole group, the writer process included; it
        # stays to write what the workers hand over as they stop
        os.killpg(process.pid, signal.SIGINT)
        await asyncio.wait_for(process.wait(), 30)
        rest = await process.stdout.read() if process.stdout else b""
    output = (printed + rest).decode()
    assert "Traceback" not in output and "ERROR" not in output, output
    # only the writer process was elected: no worker ever wrote
    assert output.count("this process writes usage records") == 1, output
    assert recorded(tmp_path / "relaygate.db") == (120, 120, 120)
    assert spools_left(tmp_path) == []
    assert list((tmp_path / "tmp").iterdir()) == []  # the metrics folder went with it
    with pytest.raises(ProcessLookupError):
        os.kill(writer, 0)


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_worker_writes_when_the_writer_process_dies(tmp_path: Path, workers: int) -> None:
    async with gateway(tmp_path, workers) as (process, url):
        printed = await output_until(process, WRITER_LINE)
        match = WRITER_LINE.search(printed)
        assert match is not None
        await send(url, 50)
        os.kill(int(match.group(1)), signal.SIGKILL)
        await send(url, 50)
        # a worker is elected (within its next turn) and writes both halves
        for _ in range(200):
            if recorded(tmp_path / "relaygate.db")[0] == 100:
                break
            await asyncio.sleep(0.05)
        assert recorded(tmp_path / "relaygate.db") == (100, 100, 100)
        await send(url, 20)
    # SIGTERM to the supervisor alone (stop()), as a service manager sends it
    assert recorded(tmp_path / "relaygate.db") == (120, 120, 120)
    assert spools_left(tmp_path) == []


async def test_another_gateways_writer_is_left_to_write(tmp_path: Path) -> None:
    """Another process already holds the writer lock of this outbox folder (a second
    gateway sharing it): the writer process says so and stops, the workers hand their
    records over, and once that lock is free a worker is elected and writes them."""
    other = WriterLock(tmp_path / "outbox")
    assert await asyncio.to_thread(other.try_acquire)
    try:
        async with gateway(tmp_path) as (process, url):
            left = re.compile(rb"another process writes usage records for .*: left to it")
            printed = await output_until(process, left)
            assert not WRITER_LINE.search(printed)
            await send(url, 30)
            await asyncio.sleep(1.5)  # a hand-over or more: nobody here may write them
            assert recorded(tmp_path / "relaygate.db") == (0, 0, 0)
            await asyncio.to_thread(other.release)
            for _ in range(200):
                if recorded(tmp_path / "relaygate.db")[0] == 30:
                    break
                await asyncio.sleep(0.05)
            assert recorded(tmp_path / "relaygate.db") == (30, 30, 30)
    finally:
        await asyncio.to_thread(other.release)
    assert spools_left(tmp_path) == []
