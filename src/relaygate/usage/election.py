"""Which process writes usage to the database: the one holding ``writer.lock``.

Every worker keeps its own outbox (appending stays local and lock-free), but only one
process per outbox directory writes to the database: the one that holds an exclusive
``fcntl.flock`` on ``<outbox_dir>/writer.lock``. The others hand their spool files over
(``Outbox.hand_off()``) and the elected writer adopts and drains them as it drains orphans.
When the writer dies the kernel drops its lock, the next process to try takes it, and
the dead writer's files, unlocked with it, are adopted like any orphan's.

One writer instead of one per worker: with SQLite, several writers queue on the
database's single write lock (each wait a retry, each commit its own fsync); one writer
makes fewer, fuller transactions. With PostgreSQL it is off by default: one writer
shares one event loop with requests, and at saturation fell behind where one writer
per worker kept the outbox flat (bench section 13).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

from relaygate.store.engine import is_sqlite

if TYPE_CHECKING:
    from relaygate.settings import Settings

__all__ = ["WriterLock", "elects_writer"]

LOCK_NAME = "writer.lock"


def elects_writer(settings: Settings) -> bool:
    """One usage writer per outbox folder (usage.elect_writer; by default with SQLite).
    ``relaygate serve`` then runs it as a process of its own (usage/dedicated.py)."""
    elect = settings.usage.elect_writer
    return is_sqlite(settings.database_url) if elect is None else elect


class WriterLock:
    """The exclusive lock that elects the usage writer of one outbox directory.

    Blocking but never waits (``LOCK_NB``): call it from a worker thread.
    """

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if no live process holds it; True while this process holds it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the lock up (the file stays: unlinking it could elect two writers)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
