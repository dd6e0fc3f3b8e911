"""The usage writer in a process of its own, serving no requests (by default with SQLite).

With ``usage.elect_writer`` (by default with SQLite) one process writes every worker's
usage records (election.py). When that process is also a worker, its writer shares one
GIL with an event loop serving requests: at saturation it fell behind from two workers
up on a 16-core machine (bench/RESULTS.md, section 14, "On 16 cores": the outbox grew at
2, 4 and 8 workers), and with one worker on two cores its thread's turns at the GIL cost
the event loop ~15% of its requests a second and stretched its p99 by half (section 13).
``relaygate serve`` therefore starts this process first, with one worker or several: it
takes the writer lock before any worker can, adopts the spool files the workers hand
over, and writes them with a GIL of its own. ``usage.elect_writer: false`` keeps the
writing in the worker (every worker writes its own records; one process fewer).

It is the same :class:`UsageWriter` as a worker's; only the process differs. If it dies,
the kernel drops its lock and a worker is elected as before, so records never wait on it.

Stopping: the supervisor stops the workers first (each hands its last file over and waits
for it to be written, ``graceful_shutdown_seconds`` at most), then closes this process's
pipe: the writer takes what was handed over last, writes it (the same time at most) and
exits. It ignores SIGINT, which a terminal sends to the whole process group, so that the
workers' last files still find it; a pipe closed by a supervisor that died stops it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection

from relaygate.observability.logging import configure_logging
from relaygate.observability.metrics import Metrics
from relaygate.settings import Settings, load_settings
from relaygate.store.engine import create_engine
from relaygate.usage.election import WriterLock
from relaygate.usage.outbox import Outbox
from relaygate.usage.writer import UsageWriter

__all__ = ["DedicatedWriter"]

_READY_TIMEOUT = 30.0  # seconds to wait for the process to hold the lock
_EXTRA_STOP = 5.0  # beyond the drain time, before the process is killed

log = logging.getLogger("relaygate")


class DedicatedWriter:
    """The writer process, seen from the supervisor (``relaygate serve``)."""

    def __init__(self, settings: Settings) -> None:
        self.drain_timeout = float(settings.graceful_shutdown_seconds)
        self.outbox_dir = settings.usage.outbox_dir
        context = multiprocessing.get_context("spawn")  # as uvicorn starts its workers
        self._pipe, child = context.Pipe()
        self.process = context.Process(
            target=_main, args=(child, self.drain_timeout), name="relaygate-usage-writer"
        )
        self._child = child

    def start(self, timeout: float = _READY_TIMEOUT) -> bool:
        """Start the process and wait until it holds the writer lock; False (it is stopped,
        and the workers elect one of their own) when it could not."""
        self.process.start()
        self._child.close()  # the child's end lives in the child now
        elected: bool | None = None  # None: no answer (it failed, or took too long)
        with contextlib.suppress(EOFError, OSError):
            if self._pipe.poll(timeout):
                elected = bool(self._pipe.recv())
        if elected is None:
            log.warning("the usage writer process did not start; a worker writes usage instead")
        elif not elected:  # another gateway sharing usage.outbox_dir holds writer.lock
            log.info("another process writes usage records for %s: left to it", self.outbox_dir)
        if not elected:
            self.stop()
        return bool(elected)

    def stop(self) -> None:
        """Let it write what the workers left, then wait for it to exit."""
        with contextlib.suppress(OSError):
            self._pipe.close()  # end of file in the child: it drains and exits
        if self.process.pid is None:
            return
        self.process.join(self.drain_timeout + _EXTRA_STOP)
        if self.process.is_alive():  # its records stay in the spool files for the next start
            log.warning("the usage writer process did not stop in time; killing it")
            self.process.kill()
            self.process.join()


def _main(pipe: Connection, drain_timeout: float) -> None:
    """The process: the settings from the environment that ``relaygate serve`` left (as
    its workers read them), then the writer until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor says when (module doc)
    settings = load_settings()
    configure_logging(settings)
    import uvloop

    try:
        uvloop.run(_write(settings, pipe, drain_timeout))
    finally:
        if settings.prometheus_multiproc_dir:  # its live gauges (the backlog) go with it
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid(), settings.prometheus_multiproc_dir)  # type: ignore[no-untyped-call]


async def _write(settings: Settings, pipe: Connection, drain_timeout: float) -> None:
    usage = settings.usage
    engine = create_engine(settings.database_url)
    # the workers' /metrics read its figures (outbox backlog, rows written) from the
    # multiprocess directory, as they read one another's
    metrics = Metrics(settings.prometheus_multiproc_dir)
    outbox = Outbox(
        usage.outbox_dir, fsync_window=usage.fsync_window, max_bytes=usage.max_outbox_bytes,
        log=log, metrics=metrics,
    )  # fmt: skip
    lock = WriterLock(usage.outbox_dir)
    writer: UsageWriter | None = None
    try:
        await outbox.start()
        writer = UsageWriter(
            outbox, engine, batch_size=usage.batch_size, interval=usage.write_interval,
            log=log, metrics=metrics, retention_days=usage.retention_days, lock=lock,
        )  # fmt: skip
        await writer.start()
        if writer.elected:
            log.info("usage writer process %d: the workers hand their records to it", os.getpid())
        pipe.send(writer.elected)
        if writer.elected:
            await _closed(pipe)
    finally:
        if writer is not None:
            await writer.aclose(drain_timeout)
        await outbox.aclose()
        await engine.dispose()
        pipe.close()


async def _closed(pipe: Connection) -> None:
    """Wait until the other end closes the pipe (or the supervisor dies)."""
    loop = asyncio.get_running_loop()
    closed = loop.create_future()

    def readable() -> None:
        with contextlib.suppress(EOFError, OSError):
            pipe.recv()  # nothing is ever sent: readable means closed
        if not closed.done():
            closed.set_result(None)

    loop.add_reader(pipe.fileno(), readable)
    try:
        await closed
    finally:
        loop.remove_reader(pipe.fileno())
