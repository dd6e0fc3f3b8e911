"""Stored responses off the request path: saved in the background, purged on a timer.

A response is saved after its answer has been sent, so a slow or failing
database never delays or fails an answer. The cost: a save that fails (the
database is down) is logged as a warning with the response's id and the
response is not stored: ``previous_response_id`` and ``GET`` then answer 404
for it, as for any response that is not stored. A request that reads a
response whose save is still running in this worker waits for that save
first, so a client that continues a conversation at once finds it; another
worker may not see it for the few milliseconds the save takes.

Expired responses (``responses.retention_days``) are never read; the purge
deletes their rows every ``purge_every`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.exc import SQLAlchemyError

from relaygate.store.responses import ResponseRecord, ResponseStore

__all__ = ["PURGE_EVERY", "ResponseKeeper"]

PURGE_EVERY = 3600.0  # seconds between purges of expired responses


class ResponseKeeper:
    """The :class:`ResponseStore` with background saves and a periodic purge."""

    def __init__(
        self, store: ResponseStore, log: logging.Logger, purge_every: float = PURGE_EVERY
    ) -> None:
        self.store = store
        self.log = log
        self.purge_every = purge_every
        self._saving: dict[tuple[str, str], asyncio.Task[None]] = {}  # by (owner, id)
        self._purger: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._purger = asyncio.create_task(self._purge_forever(), name="relaygate-responses-purge")

    def save(self, record: ResponseRecord) -> None:
        """Store ``record`` in the background; a failure is logged, never raised."""
        key = (record.owner, record.id)
        task = asyncio.create_task(self._save(record), name="relaygate-response-save")
        self._saving[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))

    async def saved(self, response_id: str, owner: str) -> None:
        """Wait for this worker's save of that response, if one is running."""
        task = self._saving.get((owner, response_id))
        if task is not None:
            await asyncio.shield(task)

    async def aclose(self, drain_timeout: float) -> None:
        """Stop purging; give running saves up to ``drain_timeout`` seconds to finish."""
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        pending = list(self._saving.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=drain_timeout)
            for task in late:
                task.cancel()
            if late:
                self.log.warning("shutdown: %d stored responses were not saved in time", len(late))

    def _forget(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._saving.get(key) is task:
            del self._saving[key]

    async def _save(self, record: ResponseRecord) -> None:
        try:
            await self.store.save(record)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            self.log.warning(
                "response %s was not stored (%s): previous_response_id and GET will not find it",
                record.id,
                type(exc).__name__,
            )
        except Exception:
            self.log.exception("response %s was not stored", record.id)

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
