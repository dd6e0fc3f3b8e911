"""One usage writer for all the processes that share an outbox directory (usage/election.py).

Real processes share one spool folder and one SQLite database: the first is elected and
writes everyone's records; the others never write, they hand their files over. When the
writer is killed with SIGKILL while the database is locked (its records, and those handed
to it, still in spool files), another process is elected and writes them. A process that
stops while the writer lives hands its last records over before it exits. Every record
is in the database exactly once, and the daily rollups count each once.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate.store.engine import create_engine

# A process with an outbox and a writer that stands for election, driven through stdin:
# "append N" appends N records (numbered on from the last) and flushes them to its spool
# file; "state" prints whether it is the writer; "exit" closes both as a gateway does.
CHILD = """
import asyncio, logging, sys, time
from relaygate.store.engine import create_engine
from relaygate.usage.election import WriterLock
from relaygate.usage.outbox import Outbox
from relaygate.usage.record import UsageRecord
from relaygate.usage.writer import UsageWriter

async def main(directory, url, prefix):
    log = logging.getLogger("child")
    engine = create_engine(url)
    outbox = Outbox(directory, fsync_window=0.05, max_bytes=1 << 30, log=log)
    writer = UsageWriter(outbox, engine, batch_size=50, interval=0.05, log=log,
                         lock=WriterLock(directory))
    await outbox.start()
    await writer.start()
    loop, sent = asyncio.get_running_loop(), 0
    print("elected", int(writer.elected), flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command, *args = line.split()
        if command == "append":
            for _ in range(int(args[0])):
                outbox.append(UsageRecord(
                    request_id=f"{prefix}_{sent:05d}", created_at=time.time(), key_id="k",
                    tenant_id="t", api="openai", endpoint="/v1/chat/completions",
                    model="mock", prompt_tokens=2, completion_tokens=3))
                sent += 1
            await outbox.flush()
            print("appended", sent, flush=True)
        elif command == "state":
            print("elected", int(writer.elected), flush=True)
        elif command == "exit":
            break
    await writer.aclose(drain_timeout=10)
    await outbox.aclose()
    await engine.dispose()
    print("closed", flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"""


class Child:
    """One process of the test, spoken to line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def say(self, command: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        return await self.reply()

    async def reply(self) -> str:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 15)
        return line.decode().strip()

    async def elected(self) -> bool:
        answer = await self.say("state")
        assert answer.startswith("elected "), answer
        return answer == "elected 1"


@asynccontextmanager
async def child(directory: Path, url: str, prefix: str) -> AsyncIterator[Child]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(directory), url, prefix,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield Child(process)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def counts(engine: AsyncEngine) -> tuple[int, int]:
    """(rows in usage_records, requests counted by usage_daily)."""
    async with engine.connect() as conn:
        rows = await conn.scalar(sa.text("SELECT count(*) FROM usage_records"))
        daily = await conn.scalar(sa.text("SELECT sum(request_count) FROM usage_daily"))
    return int(rows or 0), int(daily or 0)


async def rows_reach(engine: AsyncEngine, n: int) -> None:
    for _ in range(300):
        if (await counts(engine))[0] >= n:
            break
        await asyncio.sleep(0.05)
    assert await counts(engine) == (n, n)


def lock_database(path: Path) -> sqlite3.Connection:
    """Hold SQLite's write lock: no writer can commit until it is rolled back."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=15, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("outbox-*.db"))


async def test_one_writer_for_all_processes_and_failover_when_it_dies(
    tmp_path: Path, sqlite_template: Path
) -> None:
    database = tmp_path / "usage.db"
    await asyncio.to_thread(shutil.copyfile, sqlite_template, database)
    url = f"sqlite+aiosqlite:///{database}"
    spool = tmp_path / "outbox"
    engine = create_engine(url)
    try:
        async with child(spool, url, "a") as a:
            assert await a.reply() == "elected 1"  # first up: the writer
            async with child(spool, url, "b") as b:
                assert await b.reply() == "elected 0"
                await a.say("append 100")
                await b.say("append 150")
                await rows_reach(engine, 250)  # b's records, written by a
                assert not await b.elected()

                held = await asyncio.to_thread(lock_database, database)
                try:  # a cannot write now: records wait in spool files, b's handed to a
                    await a.say("append 70")
                    await b.say("append 60")
                    await asyncio.sleep(1.5)  # b hands its file over, a adopts it
                    assert await counts(engine) == (250, 250)
                    a.process.send_signal(signal.SIGKILL)
                    await a.process.wait()
                finally:
                    await asyncio.to_thread(held.rollback)
                    held.close()
                await rows_reach(engine, 380)  # b, elected, wrote what the dead writer held
                assert await b.elected()

                async with child(spool, url, "c") as c:  # joins b: c hands over, b writes
                    assert await c.reply() == "elected 0"
                    await c.say("append 30")
                    assert await c.say("exit") == "closed"
                    assert await c.process.wait() == 0
                # c waited, before it exited, for the writer to take its last records
                assert await counts(engine) == (410, 410)
                await b.say("append 40")
                await rows_reach(engine, 450)
                assert await b.say("exit") == "closed"
        async with engine.connect() as conn:
            ids = set(await conn.scalars(sa.text("SELECT request_id FROM usage_records")))
    finally:
        await engine.dispose()
    expected = {f"a_{i:05d}" for i in range(170)} | {f"b_{i:05d}" for i in range(250)}
    assert ids == expected | {f"c_{i:05d}" for i in range(30)}
    assert spool_files(spool) == []  # every file drained and deleted
