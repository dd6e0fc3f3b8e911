"""The usage outbox: a durable local spool between the request path and the database.

``append()`` only buffers an encoded record (no I/O). A flusher commits the buffer to
this process's own SQLite file every ``fsync_window`` seconds, in one fsynced
transaction run in the outbox's single worker thread, so ``kill -9`` loses at most
the records of the window being written. The writer ``take()``s the oldest durable
records and ``ack()``s them once the database has them.

Each process owns one file, ``outbox-<random>.db``, held with an exclusive
``fcntl.flock`` for its whole life. When a process dies the kernel drops the lock,
and another process can adopt the file (``adopt_orphans()``) and drain it; the lock
keeps two processes from ever draining one file. A drained file is deleted. A process
that is not the elected usage writer (``election.py``) hands its file over instead
(``hand_off()``): it closes it, which unlocks it, and carries on in a new one; the
writer adopts the closed file as it would a dead process's.

The file uses WAL with ``locking_mode=EXCLUSIVE`` and ``synchronous=FULL``: a commit
is one sequential append to the WAL and one fsync (a rollback journal needs at least
two), and exclusive locking keeps the WAL index in memory, so there is no ``-shm``
file. Nothing else reads the file while its owner lives: the flock says so anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from relaygate import slices
from relaygate.observability.metrics import Metrics
from relaygate.usage.record import UsageRecord

__all__ = ["Outbox"]

T = TypeVar("T")

_CREATE_ATTEMPTS = 5  # names tried when another process's scan deletes ours first
_PREFIX = "outbox-"
_SUFFIX = ".db"
_SIDE_FILES = ("-wal", "-shm", "-journal")
_WARN_EVERY = 60.0  # seconds between "spool too big" warnings
_ERROR_EVERY = 10.0  # seconds between "cannot write the spool" errors
_FINAL_TRIES = 5  # flushes attempted by aclose() before records are given up
# Records a statement of the spool's thread handles before it yields (slices.py): ~0.3 ms
# of inserting, reading or deleting on the bench machine
_SLICE_ROWS = 64
# Records decoded between two pauses: decoding holds the GIL, ~4 µs a record on the bench
# machine, and a whole part's 250 µs in one hold showed in the c=1 p99 (slices.py)
_DECODE_ROWS = 16
# Each statement takes or gives a whole part in one value, so that it steps once: sqlite3
# releases the GIL around every step, and while the event loop is busy each release costs
# this thread a switch interval (5 ms) to get it back (slices.py). Row by row, appending,
# taking and deleting a record cost three, and one worker at saturation wrote 16-64 rows a
# second. The blobs travel concatenated, cut by (start, length) pairs; they come back in hex.
_INSERT = (
    "INSERT INTO spool (data) SELECT coalesce(substr(?1, json_extract(value, '$[0]'),"
    " json_extract(value, '$[1]')), x'') FROM json_each(?2)"  # substr() of nothing: NULL
)
_TAKE = (
    "SELECT group_concat(id), group_concat(hex(data), ' ')"
    " FROM (SELECT id, data FROM spool WHERE id > ? ORDER BY id LIMIT ?)"
)
_DELETE = "DELETE FROM spool WHERE id IN (SELECT value FROM json_each(?))"
_JSON_ENCODE = msgspec.json.Encoder().encode
_LIVE_BYTES = (
    "SELECT (page_count - freelist_count) * page_size"
    " FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()"
)
_PRAGMAS = (
    "PRAGMA auto_vacuum=INCREMENTAL",  # only takes effect on a new file
    "PRAGMA locking_mode=EXCLUSIVE",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA journal_size_limit=16777216",
)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dead ("
    " id INTEGER PRIMARY KEY, data BLOB NOT NULL, reason TEXT NOT NULL)",
)


class Outbox:
    """A per-process durable spool of usage records; ``append()`` is the hot path.

    ``append()`` must be called from the event loop's thread. ``take()`` returns the
    same rows until they are ``ack()``ed: one consumer (the writer) drains an outbox.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        fsync_window: float,
        max_bytes: int,
        log: logging.Logger,
        metrics: Metrics | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.fsync_window = fsync_window
        self.max_bytes = max_bytes
        self._log = log
        self._metrics = metrics
        self._encode = msgspec.msgpack.Encoder().encode
        self._decoder = msgspec.msgpack.Decoder(UsageRecord)
        self._buffer: list[bytes] = []
        self._flushing = 0  # records in the batch being committed now
        self._spool: _Spool | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relaygate-outbox")
        self._flush_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._reported = 0  # what this outbox has added to the backlog gauge
        # When the oldest buffered record was appended, and the oldest durable one not yet
        # acknowledged as far as it is known (exact after each take(); after an ack that
        # leaves records, the acked batch's until the next take(): never too young)
        self._buffer_since: float | None = None
        self._head: float | None = None
        self._size_warned_at = -_WARN_EVERY
        self._error_logged_at = -_ERROR_EVERY
        self._closed = False

    @property
    def path(self) -> Path | None:
        """The spool file, once started (or adopted)."""
        return self._spool.path if self._spool else None

    @property
    def backlog(self) -> int:
        """Records not yet acknowledged: durable in the file, being written, or buffered."""
        durable = self._spool.count if self._spool else 0
        return durable + self._flushing + len(self._buffer)

    @property
    def durable(self) -> int:
        """Records committed to the spool file and not yet acknowledged."""
        return self._spool.count if self._spool else 0

    def oldest_age(self, now: float) -> float:
        """Seconds the oldest record not yet in the database has waited since it was
        appended (0: none waits). ``now`` is ``time.time()``."""
        known = [t for t in (self._head, self._buffer_since) if t is not None]
        return max(0.0, now - min(known)) if known else 0.0

    async def start(self) -> None:
        """Create and lock this process's spool file, then flush every ``fsync_window``."""
        self._spool = await self._run(_Spool.create, self.directory)
        self._log.debug("usage outbox at %s", self._spool.path)
        self._flusher = asyncio.create_task(self._flush_loop(), name="relaygate-outbox-flush")
        self._report_backlog()

    def append(self, record: UsageRecord) -> None:
        """Buffer one record; the flusher makes it durable within ``fsync_window``.

        No I/O and no await: safe on the request path. Never raises.
        """
        try:
            self._buffer.append(self._encode(record))
        except Exception:  # an unencodable field: say so loudly, never fail the request
            self._log.exception("usage record %s could not be encoded", record.request_id)
            return
        if self._buffer_since is None:
            self._buffer_since = appended_at(record)
        if self._closed:
            self._log.error("usage record %s appended after the outbox closed", record.request_id)

    async def flush(self) -> None:
        """Commit the buffer now, in one fsynced transaction. Errors are logged, not raised:
        the records stay buffered and the next flush tries again."""
        async with self._flush_lock:
            if not self._buffer or self._spool is None:
                return
            batch, self._buffer = self._buffer, []
            since, self._buffer_since = self._buffer_since, None
            self._flushing = len(batch)
            try:
                live_bytes = await self._run(self._spool.append, batch)
            except Exception as exc:  # disk full, I/O error...: keep the batch, retry
                self._buffer[:0] = batch
                self._buffer_since = since
                self._write_failed(exc)
                return
            finally:
                self._flushing = 0
            if self._head is None:
                self._head = since
            self._check_size(live_bytes)
            self._report_backlog()

    async def hand_off(self) -> Path | None:
        """Close the spool file if it holds durable records, and go on in a new one.

        The closed file is unlocked and kept: the elected writer adopts and drains it
        (``adopt_orphans()``). Buffered records go to the new file at the next flush.
        Its records leave this outbox's backlog here and join the adopter's when it
        adopts them. Returns the file handed over, if any.
        """
        async with self._flush_lock:
            spool = self._spool
            if spool is None or spool.count == 0 or self._closed:
                return None
            self._spool = await self._run(_Spool.create, self.directory)
            # Closing unlocks the file even when it fails midway: its records stay on disk.
            kept = await self._run(spool.close)
        self._report_backlog()
        return kept

    async def take(self, limit: int) -> list[tuple[int, UsageRecord]]:
        """Up to ``limit`` of the oldest durable records, with their spool row ids.

        Rows that no longer decode (a record schema changed incompatibly) are moved to
        the file's ``dead`` table and logged, so one bad row cannot stall the drain.
        """
        if self._spool is None or self._spool.count == 0:
            return []
        taken, buried = await self._run(self._spool.take, limit, self._decoder.decode)
        if buried:
            self._log.error(
                "%d usage records in %s could not be decoded; kept in its 'dead' table",
                buried, self._spool.path,
            )  # fmt: skip
            self._report_backlog()
        if taken:
            self._head = appended_at(taken[0][1])
        return taken

    async def ack(self, ids: list[int]) -> None:
        """Delete records the database has committed."""
        if self._spool is None or not ids:
            return
        await self._run(self._spool.delete, ids)
        if self._spool.count == 0:
            self._head = None
        self._report_backlog()

    async def quarantine(self, ids: list[int], reason: str) -> None:
        """Move records the database can never accept to the ``dead`` table (kept, not sent)."""
        if self._spool is None or not ids:
            return
        await self._run(self._spool.bury, ids, reason)
        if self._spool.count == 0:
            self._head = None
        self._report_backlog()

    async def adopt_orphans(
        self, held: Collection[Path] = (), *, announce: bool = True
    ) -> list[Outbox]:
        """Lock and open the spool files in this directory whose owner is gone.

        Each is returned as an outbox of its own, to drain and then ``aclose()``
        (which deletes the file once it is empty). A file another live process
        holds, or has already adopted, is skipped. Pass the files this process has
        already adopted as ``held``: they are not even opened (closing any descriptor
        of a file drops this process's SQLite locks on it). ``announce``: log each
        adoption at INFO (else DEBUG: the elected writer adopts handed-over files all
        the time).
        """
        skip = {*held, *([self._spool.path] if self._spool else [])}
        paths = await asyncio.to_thread(_spool_files, self.directory)
        adopted: list[Outbox] = []
        for path in (p for p in paths if p not in skip):
            orphan = Outbox(
                self.directory, fsync_window=self.fsync_window, max_bytes=self.max_bytes,
                log=self._log, metrics=self._metrics,
            )  # fmt: skip
            try:
                orphan._spool = await orphan._run(_Spool.adopt, path, self._log)
            except OSError as exc:
                self._log.error("cannot adopt usage outbox %s: %s", path, exc)
            if orphan._spool is None:
                orphan._thread.shutdown(wait=False)
                continue
            self._log.log(
                logging.INFO if announce else logging.DEBUG,
                "adopted usage outbox %s with %d records", path.name, orphan._spool.count,
            )  # fmt: skip
            orphan._report_backlog()
            adopted.append(orphan)
        return adopted

    async def aclose(self) -> None:
        """Stop the flusher, commit the buffer (fsynced) and close the file.

        The file is deleted if it holds nothing; otherwise it stays, and the next
        process to start adopts it.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._flusher is not None:
            await self._flusher
        for attempt in range(_FINAL_TRIES):  # the last chance for these records
            await self.flush()
            if not self._buffer:
                break
            await asyncio.sleep(0.1 * (attempt + 1))
        if self._buffer:
            self._log.critical(
                "%d usage records could not be written to the outbox and are lost",
                len(self._buffer),
            )
            self._buffer.clear()
        if self._spool is not None:
            kept = await self._run(self._spool.close)
            if kept:
                self._log.warning(
                    "usage outbox %s keeps %d records for the next start", kept.name,
                    self._spool.count,
                )  # fmt: skip
        self._thread.shutdown(wait=False)
        self._report_backlog(closing=True)

    async def _flush_loop(self) -> None:
        next_at = time.monotonic() + self.fsync_window
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - time.monotonic()))
            next_at = time.monotonic() + self.fsync_window
            try:
                await self.flush()
            except Exception:  # never let the flusher die: records would pile up unwritten
                self._log.exception("usage outbox flush failed")

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking file work on this outbox's own thread (one at a time, in order)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    def _write_failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._error_logged_at >= _ERROR_EVERY:
            self._error_logged_at = now
            self._log.error(
                "cannot write the usage outbox %s (%s: %s); %d records held in memory, retrying",
                self.path, type(exc).__name__, exc, len(self._buffer),
            )  # fmt: skip

    def _check_size(self, live_bytes: int) -> None:
        if live_bytes <= self.max_bytes:
            return
        now = time.monotonic()
        if now - self._size_warned_at >= _WARN_EVERY:
            self._size_warned_at = now
            self._log.warning(
                "usage outbox %s holds %d bytes, over max_outbox_bytes %d: is the database "
                "down? Records are still accepted.", self.path, live_bytes, self.max_bytes,
            )  # fmt: skip

    def _report_backlog(self, *, closing: bool = False) -> None:
        if self._metrics is None:
            return
        value = 0 if closing else self.backlog
        self._metrics.outbox_backlog.inc(value - self._reported)
        self._reported = value


def appended_at(record: UsageRecord) -> float:
    """When a record was appended: its request's end (records are appended in that order,
    whereas a long stream's ``created_at`` may be older than records before it)."""
    return record.created_at + record.duration_ms / 1000


class _Spool:
    """One locked spool file. Blocking: used only from its outbox's worker thread."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            for statement in (*_PRAGMAS, *_SCHEMA):
                self._db.execute(statement)
            self.count: int = self._scalar("SELECT count(*) FROM spool")
            self.dead: int = self._scalar("SELECT count(*) FROM dead")
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def create(cls, directory: Path) -> _Spool:
        """A new, locked file. It is locked under a name orphan scans skip, then renamed.

        Between creating the file and locking it, another process's scan may take it for
        one abandoned by a dead process and delete it (the rename then finds nothing):
        that name is given up and another one made."""
        directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(_CREATE_ATTEMPTS):
            name = f"{_PREFIX}{secrets.token_hex(8)}{_SUFFIX}"
            temporary, path = directory / f".{name}.new", directory / name
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(temporary, path)
            except FileNotFoundError:
                os.close(fd)
                if attempt == _CREATE_ATTEMPTS - 1:
                    raise
                continue
            except BaseException:
                os.close(fd)
                raise
            try:
                _fsync_directory(directory)
                return cls(path, fd)
            except BaseException:
                os.close(fd)
                raise
        raise AssertionError("unreachable")

    @classmethod
    def adopt(cls, path: Path, log: logging.Logger) -> _Spool | None:
        """Lock ``path`` if its owner is gone; None if someone holds it or it vanished."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if not _same_file(path, fd):  # drained and deleted by its adopter meanwhile
            os.close(fd)
            return None
        try:
            return cls(path, fd)
        except sqlite3.OperationalError as exc:  # I/O or locking trouble: try again later
            os.close(fd)
            log.warning("cannot open usage outbox %s yet: %s", path, exc)
            return None
        except sqlite3.DatabaseError as exc:  # not a database, or corrupt
            damaged = path.with_name(path.name + ".damaged")
            log.error("usage outbox %s cannot be read (%s); renamed to %s", path, exc, damaged)
            os.rename(path, damaged)
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise

    def append(self, blobs: list[bytes]) -> int:
        """Commit ``blobs`` in one transaction (fsynced); return the live size in bytes."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for part in slices.parts(blobs, _SLICE_ROWS):
                self._db.execute(_INSERT, _framed(part))
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.count += len(blobs)
        return self._live_bytes()

    def take(
        self, limit: int, decode: Callable[[bytes], UsageRecord]
    ) -> tuple[list[tuple[int, UsageRecord]], int]:
        taken: list[tuple[int, UsageRecord]] = []
        bad: list[int] = []
        pacer, after = slices.Pacer(), 0
        while len(taken) + len(bad) < limit:
            if after:
                pacer.pause()
            room = limit - len(taken) - len(bad)
            part = _SLICE_ROWS * (slices.CONTENDED_SCALE if pacer.contended else 1)
            asked = min(room, part)
            ids, hexed = self._db.execute(_TAKE, (after, asked)).fetchone()
            if ids is None:
                break
            # the two lists come from one pass over the rows: the same order, sorted here
            rows = sorted(zip(map(int, ids.split(",")), hexed.split(" "), strict=True))
            for n, (row_id, data) in enumerate(rows):
                if n and n % _DECODE_ROWS == 0:  # the GIL held ~60 µs at most
                    pacer.pause()
                try:
                    taken.append((row_id, decode(bytes.fromhex(data))))
                except msgspec.MsgspecError:
                    bad.append(row_id)
            after = rows[-1][0]
            if len(rows) < asked:
                break
        if bad:
            self.bury(bad, "undecodable")
        return taken, len(bad)

    def delete(self, ids: list[int]) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            deleted = 0
            for part in slices.parts(ids, _SLICE_ROWS):
                deleted += self._db.execute(_DELETE, (_json_ints(part),)).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.count -= deleted
        if self.count == 0:  # give pages back to the disk, a bounded step (16 MB) at a time;
            # executescript() steps the pragma to completion (execute() frees one page)
            self._db.executescript("PRAGMA incremental_vacuum(4096);")
        return deleted

    def bury(self, ids: list[int], reason: str) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for row_id in ids:
                self._db.execute(
                    "INSERT OR IGNORE INTO dead (id, data, reason)"
                    " SELECT id, data, ? FROM spool WHERE id = ?",
                    (reason, row_id),
                )
                self._db.execute("DELETE FROM spool WHERE id = ?", (row_id,))
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.count = self._scalar("SELECT count(*) FROM spool")
        self.dead = self._scalar("SELECT count(*) FROM dead")

    def close(self) -> Path | None:
        """Close and unlock; delete the file if empty. Returns the path if it was kept."""
        self._db.close()
        try:
            if self.count == 0 and self.dead == 0:
                for suffix in ("", *_SIDE_FILES):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{self.path}{suffix}")
                return None
            if self.count == 0:  # only dead rows: keep them for an operator, out of the scan
                os.rename(self.path, self.path.with_name(self.path.name + ".dead"))
                return None
            return self.path
        finally:
            os.close(self._lock_fd)  # unlock only after the unlink: see _same_file()

    def _live_bytes(self) -> int:
        return self._scalar(_LIVE_BYTES)

    def _scalar(self, sql: str) -> int:
        value = self._db.execute(sql).fetchone()[0]
        return int(value)

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")


def _framed(blobs: Sequence[bytes]) -> tuple[bytes, str]:
    """The parameters of ``_INSERT``: the blobs end to end, and where each one is."""
    cuts, start = [], 1  # SQLite's substr() counts from 1
    for blob in blobs:
        cuts.append((start, len(blob)))
        start += len(blob)
    return b"".join(blobs), _JSON_ENCODE(cuts).decode()


def _json_ints(ids: Sequence[int]) -> str:
    return _JSON_ENCODE(ids).decode()


def _spool_files(directory: Path) -> list[Path]:
    """Candidate spool files, oldest first (blocking). Removes abandoned half-created ones."""
    try:
        paths = [p for p in directory.glob(f"{_PREFIX}*{_SUFFIX}") if p.is_file()]
        stale = list(directory.glob(f".{_PREFIX}*{_SUFFIX}.new"))
    except FileNotFoundError:
        return []
    for path in stale:  # a process died between creating and renaming its file: empty
        _remove_if_unlocked(path)
    return sorted(paths, key=_mtime)


def _remove_if_unlocked(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _same_file(path, fd):
            os.unlink(path)
    except BlockingIOError:
        pass  # being created right now
    finally:
        os.close(fd)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (an adopter unlinks a drained
    file before it unlocks it, so a late locker sees the name gone or reused)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
