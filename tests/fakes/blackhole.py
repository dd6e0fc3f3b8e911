"""A loopback port where connections hang: a connect timeout, produced for real.

A socket listens with a backlog of 0 and never accepts; its accept queue is filled by
a few connections made here. The kernel then drops every further SYN, so a client's
connect() neither succeeds nor is refused until its own timeout, as with a host that is
down behind a firewall that drops packets.
"""

from __future__ import annotations

import contextlib
import socket
from types import TracebackType
from typing import Self

__all__ = ["Blackhole"]

_FILLERS = 3  # more than the queue holds: the surplus themselves wait in SYN_SENT


class Blackhole:
    """Use as a context manager; ``url()`` points at the port while it is open."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._fillers: list[socket.socket] = []

    def __enter__(self) -> Self:
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        for _ in range(_FILLERS):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(self._listener.getsockname())
            self._fillers.append(filler)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for filler in self._fillers:
            filler.close()
        self._listener.close()

    def url(self, path: str = "/v1") -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}{path}"
