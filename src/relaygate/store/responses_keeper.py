"""Stored responses off the request path: saved in batches in the background, purged on a timer.

A response is saved after its answer has been sent, so a slow or failing
database never delays or fails an answer. Saves are gathered for
``batch_window`` seconds and written in one transaction: one insert per batch
rather than a transaction per answer, which is most of what storing costs.

A request that continues a response still waiting in this worker (an agent's
tool loop answers within milliseconds) does not wait out the window: asking
for it writes the batch at once.

A save that fails (the database is down) is logged as a warning with the
responses' ids, and they are not stored: ``previous_response_id`` and ``GET``
then answer 404 for them, as for any response that is not stored. A request
that reads a response still waiting to be saved in this worker waits for that
save; one saved by another worker becomes visible once that worker's batch is
written (``batch_window`` and a write later), so a continuation that finds
nothing waits that long once and looks again (``settle``).

Expired responses (``responses.retention_days``) are never read; the purge
deletes their rows every ``purge_every`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy.exc import SQLAlchemyError

from relaygate.store.responses import ResponseRecord, ResponseStore

__all__ = ["BATCH_WINDOW", "MAX_PENDING", "PURGE_EVERY", "ResponseKeeper"]

BATCH_WINDOW = 0.05  # seconds saves are gathered before they are written together
MAX_PENDING = 10_000  # saves waiting at most (beyond: dropped, with a warning)
PURGE_EVERY = 3600.0  # seconds between purges of expired responses

_Key = tuple[str, str]  # (owner, response id)


class ResponseKeeper:
    """The :class:`ResponseStore` with batched background saves and a periodic purge."""

    def __init__(
        self,
        store: ResponseStore,
        log: logging.Logger,
        *,
        batch_window: float = BATCH_WINDOW,
        purge_every: float = PURGE_EVERY,
    ) -> None:
        self.store = store
        self.log = log
        self.batch_window = batch_window
        self.purge_every = purge_every
        self._queue: list[ResponseRecord] = []
        self._batch: asyncio.Future[None] | None = None  # done once the queue is written
        # saves queued or being written: each key's batch (one future a batch, not a save)
        self._waiting: dict[_Key, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._now = asyncio.Event()  # a reader waits for a queued save: write without waiting
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._purger: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_forever(), name="relaygate-responses-save")
        self._purger = asyncio.create_task(self._purge_forever(), name="relaygate-responses-purge")

    def save(self, record: ResponseRecord) -> None:
        """Store ``record`` in the background (``start`` first); a failure is logged, never
        raised."""
        if self._writer is None or self._writer.done() or len(self._queue) >= MAX_PENDING:
            why = "too many saves waiting" if self._writer else "the keeper is not running"
            self.log.warning("response %s was not stored: %s", record.id, why)
            return
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        self._waiting[(record.owner, record.id)] = self._batch  # a save again: the later one
        self._queue.append(record)
        self._wake.set()

    async def saved(self, response_id: str, owner: str) -> None:
        """Wait for this worker's save of that response, if one is waiting or running."""
        found = self._waiting.get((owner, response_id))
        if found is not None:
            self._now.set()
            await asyncio.shield(found)

    async def settle(self) -> None:
        """Wait long enough for another worker's save, started just now, to be visible."""
        await asyncio.sleep(self.batch_window * 2 + 0.05)

    async def aclose(self, drain_timeout: float) -> None:
        """Stop purging; write what is waiting, giving it up to ``drain_timeout`` seconds."""
        deadline = time.monotonic() + drain_timeout
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        self._closing = True
        self._wake.set()
        self._now.set()
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer, drain_timeout)
            except TimeoutError:
                lost = len(self._queue) + len(self._waiting)
                self.log.warning("shutdown: up to %d stored responses were not saved in time", lost)
        await self.store.aclose(max(0.0, deadline - time.monotonic()))

    async def _write_forever(self) -> None:
        """Gather saves for ``batch_window``, write them in one transaction, again."""
        loop = asyncio.get_running_loop()
        while not (self._closing and not self._queue):
            await self._wake.wait()
            if not self._closing and not self._now.is_set():
                # the window's end, or a reader asking, whichever comes first (a timer, not
                # wait_for: that costs a task, a cancellation and an exception a batch)
                timer = loop.call_later(self.batch_window, self._now.set)
                await self._now.wait()
                timer.cancel()
            self._wake.clear()
            self._now.clear()
            batch, self._queue = self._queue, []
            done, self._batch = self._batch, None
            if batch and done is not None:
                await self._write(batch, done)

    async def _write(self, batch: list[ResponseRecord], done: asyncio.Future[None]) -> None:
        try:
            await self.store.save_many(batch)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            self._failed(batch, type(exc).__name__)
        except Exception:
            self.log.exception("stored responses were not saved")
            self._failed(batch, "unexpected error")
        finally:
            waiting = self._waiting
            for record in batch:
                key = (record.owner, record.id)
                if waiting.get(key) is done:  # not saved again since, in a later batch
                    del waiting[key]
            if not done.done():
                done.set_result(None)

    def _failed(self, batch: list[ResponseRecord], why: str) -> None:
        ids = ", ".join(r.id for r in batch[:20]) + (" ..." if len(batch) > 20 else "")
        self.log.warning(
            "%d responses were not stored (%s): previous_response_id and GET will not find "
            "them: %s",
            len(batch),
            why,
            ids,
        )

    async def _purge_forever(self) -> None:
        """Purge now and then forever; a failure is logged and retried at the next turn."""
        while True:
            try:
                removed = await self.store.purge_expired()
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                self.log.warning("purging expired responses failed (%s)", type(exc).__name__)
            except Exception:
                self.log.exception("purging expired responses failed")
            else:
                if removed:
                    self.log.info("purged %d expired stored responses", removed)
            await asyncio.sleep(self.purge_every)
