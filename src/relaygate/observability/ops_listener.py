"""The operations listener: /health, /ready and /metrics answered outside the event loop.

A worker's event loop is also the queue of everything it serves: at ten times the
sustainable rate a probe sent to the main port waits behind the requests, times out,
and an orchestrator restarts a gateway that was busy, not dead. With ``ops.listen``
set, these three routes are served by a thread (the standard library's
``ThreadingHTTPServer``), which the interpreter's switch interval gives a slice
however busy the loop is; with several workers, by the supervising process, which
serves no requests at all.

What it answers comes from the workers' *heartbeats*: each worker's loop ticks every
half second (the loop-lag task, observability/looplag.py) and publishes the time of
its last tick and its readiness. In one process the listener reads them from memory;
with several workers, from prometheus-client's multiprocess files (gauges, one series
per worker pid), next to the metrics it aggregates for /metrics.

* ``/health`` (liveness): 200 while every worker is alive and its loop has ticked in
  the last ``ops.stall_seconds``; busy is not dead, so the default is generous (30 s).
  A worker that has not ticked yet counts as starting for that long too.
* ``/ready`` (readiness): 200 while every worker is ready (a model it can serve, not
  draining), else 503.
* ``/metrics``: the same exposition as the main port's.

Bodies carry pids, counts and ages, never a secret.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = [
    "OPS_PATHS",
    "Beat",
    "Heartbeat",
    "InProcess",
    "Judge",
    "OpsListener",
    "Supervised",
    "Verdicts",
]

TICK_METRIC = "relaygate_worker_last_tick_timestamp_seconds"
READY_METRIC = "relaygate_worker_ready"
MODELS_READY_METRIC = "relaygate_worker_models_ready"
OPS_PATHS = ("/health", "/ready", "/metrics")  # what the listener serves, nothing else
_JSON = "application/json"
_log = logging.getLogger("relaygate.ops")


@dataclass(frozen=True)
class Beat:
    """One worker as its heartbeat last said: ``tick`` is the wall-clock time of its
    loop's last tick (None before the first), ``ready`` and ``models_ready`` its readiness."""

    pid: int
    tick: float | None
    ready: bool
    models_ready: int


class Heartbeat:
    """A worker's side: ``tick()`` runs on its event loop (a loop-lag tick) and publishes
    the tick's time and the worker's readiness, in memory and as multiprocess gauges."""

    def __init__(
        self, registry: CollectorRegistry, readiness: Callable[[], tuple[bool, int]]
    ) -> None:
        self._readiness = readiness
        self.last: Beat | None = None
        self._tick = Gauge(
            TICK_METRIC, "When each worker's event loop last ticked (Unix time).",
            registry=registry, multiprocess_mode="liveall",
        )  # fmt: skip
        self._ready = Gauge(
            READY_METRIC, "1 while a worker is ready to serve (a model it can route to).",
            registry=registry, multiprocess_mode="liveall",
        )  # fmt: skip
        self._models = Gauge(
            MODELS_READY_METRIC, "Models a worker can route to now.",
            registry=registry, multiprocess_mode="liveall",
        )  # fmt: skip

    def tick(self) -> None:
        ready, models = self._readiness()
        now = time.time()
        self._ready.set(1 if ready else 0)
        self._models.set(models)
        self._tick.set(now)
        self.last = Beat(0, now, ready, models)

    def stop(self) -> None:
        """Shutting down: not ready any more (its last tick stays as it was)."""
        self._ready.set(0)
        if self.last is not None:
            self.last = Beat(0, self.last.tick, False, self.last.models_ready)


class Verdicts(Protocol):
    """What the listener serves: (status, body, content type) per route."""

    def health(self) -> tuple[int, bytes, str]: ...
    def ready(self) -> tuple[int, bytes, str]: ...
    def metrics(self) -> tuple[int, bytes, str]: ...


class _Worker(msgspec.Struct):
    pid: int
    state: str  # ticking, stalled, starting
    ready: bool
    models_ready: int
    last_tick_age_seconds: float | None


class _Report(msgspec.Struct):
    status: str
    workers_expected: int
    workers: list[_Worker]


class Judge:
    """Liveness and readiness from beats; remembers when each pid was first seen, so a
    worker that has not ticked yet is *starting* for ``stall_seconds``, then stalled."""

    def __init__(self, stall_seconds: float, expected: int) -> None:
        self.stall_seconds = stall_seconds
        self.expected = expected
        self._first_seen: dict[int, float] = {}
        self._lock = threading.Lock()

    def workers(self, beats: Iterable[Beat], now: float) -> list[_Worker]:
        out = []
        with self._lock:
            beats = list(beats)
            alive = {b.pid for b in beats}
            for pid in list(self._first_seen):
                if pid not in alive:
                    del self._first_seen[pid]
            for beat in beats:
                first = self._first_seen.setdefault(beat.pid, now)
                out.append(_state(beat, now - first, now, self.stall_seconds))
        return out

    def health(self, beats: Iterable[Beat], now: float) -> tuple[int, bytes, str]:
        workers = self.workers(beats, now)
        live = len(workers) == self.expected and all(w.state != "stalled" for w in workers)
        return self._answer(live, "ok" if live else "unhealthy", workers)

    def ready(self, beats: Iterable[Beat], now: float) -> tuple[int, bytes, str]:
        workers = self.workers(beats, now)
        ready = len(workers) == self.expected and all(
            w.ready and w.state == "ticking" for w in workers
        )
        return self._answer(ready, "ready" if ready else "unavailable", workers)

    def _answer(self, ok: bool, status: str, workers: list[_Worker]) -> tuple[int, bytes, str]:
        body = msgspec.json.encode(_Report(status, self.expected, workers))
        return (200 if ok else 503), body, _JSON


def _state(beat: Beat, seen_for: float, now: float, stall: float) -> _Worker:
    if beat.tick is None:
        state = "starting" if seen_for < stall else "stalled"
        age = None
    else:
        age = max(0.0, now - beat.tick)
        state = "ticking" if age < stall else "stalled"
    return _Worker(beat.pid, state, beat.ready, beat.models_ready, age)


class InProcess:
    """One worker, in this process: the listener reads its heartbeat from memory.

    ``heartbeat`` and ``render`` are looked up per request: the app builds its heartbeat
    and metrics at start, after the listener is already answering.
    """

    def __init__(
        self,
        stall_seconds: float,
        heartbeat: Callable[[], Heartbeat | None],
        render: Callable[[], bytes | None],
        pid: int,
    ) -> None:
        self._judge = Judge(stall_seconds, 1)
        self._heartbeat = heartbeat
        self._render = render
        self._pid = pid

    def _beats(self) -> list[Beat]:
        heartbeat = self._heartbeat()
        last = heartbeat.last if heartbeat is not None else None
        if last is None:
            return [Beat(self._pid, None, False, 0)]
        return [Beat(self._pid, last.tick, last.ready, last.models_ready)]

    def health(self) -> tuple[int, bytes, str]:
        return self._judge.health(self._beats(), time.time())

    def ready(self) -> tuple[int, bytes, str]:
        return self._judge.ready(self._beats(), time.time())

    def metrics(self) -> tuple[int, bytes, str]:
        body = self._render()
        if body is None:
            return 503, b'{"status":"starting"}', _JSON
        return 200, body, CONTENT_TYPE_LATEST


class Supervised:
    """Several workers, read by their supervisor: ``pids()`` are the workers alive now;
    their heartbeats and metrics are in prometheus-client's multiprocess directory."""

    def __init__(
        self,
        stall_seconds: float,
        expected: int,
        multiprocess_dir: str,
        pids: Callable[[], list[int]],
    ) -> None:
        self._judge = Judge(stall_seconds, expected)
        self._dir = multiprocess_dir
        self._pids = pids

    def _beats(self) -> list[Beat]:
        ticks: dict[int, float] = {}
        ready: dict[int, float] = {}
        models: dict[int, float] = {}
        wanted = {TICK_METRIC: ticks, READY_METRIC: ready, MODELS_READY_METRIC: models}
        collector = MultiProcessCollector(None, path=self._dir)  # type: ignore[no-untyped-call]
        alive = self._pids()  # before reading: a worker started later has no files yet
        for metric in collector.collect():  # type: ignore[no-untyped-call]
            into = wanted.get(metric.name)
            if into is None:
                continue
            for sample in metric.samples:
                into[int(sample.labels["pid"])] = sample.value
        for pid in ticks.keys() - set(alive):
            if not _running(pid):
                # A worker that died (the supervisor replaced it): its live gauges go, as
                # prometheus-client asks of whoever supervises the processes.
                mark_process_dead(pid, self._dir)  # type: ignore[no-untyped-call]
        return [
            Beat(pid, ticks.get(pid), ready.get(pid, 0) == 1, int(models.get(pid, 0)))
            for pid in alive
        ]

    def health(self) -> tuple[int, bytes, str]:
        return self._judge.health(self._beats(), time.time())

    def ready(self) -> tuple[int, bytes, str]:
        return self._judge.ready(self._beats(), time.time())

    def metrics(self) -> tuple[int, bytes, str]:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._dir)  # type: ignore[no-untyped-call]
        return 200, generate_latest(registry), CONTENT_TYPE_LATEST


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now has that pid
        return False
    return True


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a client that sends nothing does not hold a thread longer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, *, head: bool) -> None:
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            status, body, kind = 404, b'{"error":"not found: /health, /ready, /metrics"}', _JSON
        else:
            try:
                status, body, kind = route()
            except Exception:
                _log.exception("ops listener: %s failed", self.path.split("?", 1)[0])
                status, body, kind = 500, b'{"error":"internal error"}', _JSON
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def version_string(self) -> str:
        return "relaygate"

    def log_message(self, format: str, *args: object) -> None:
        pass  # probes every few seconds would drown the log; errors are logged above


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Callable[[], tuple[int, bytes, str]]]


class _Server6(_Server):
    address_family = socket.AF_INET6


class OpsListener:
    """``/health``, ``/ready`` and ``/metrics`` on ``address``, served by threads.

    Binds at construction (a busy port is an ``OSError`` before anything starts);
    ``start()`` serves in a daemon thread; ``close()`` stops and unbinds.
    """

    def __init__(self, address: tuple[str, int], verdicts: Verdicts) -> None:
        server = _Server6 if ":" in address[0] else _Server
        self._server = server(address, _Handler)
        routes = (verdicts.health, verdicts.ready, verdicts.metrics)
        self._server.routes = dict(zip(OPS_PATHS, routes, strict=True))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                name="relaygate-ops", daemon=True,
            )  # fmt: skip
            self._thread.start()

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._server.shutdown()
            thread.join()
        self._server.server_close()
