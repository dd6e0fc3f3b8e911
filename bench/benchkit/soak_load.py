"""The soak's load: paced wrk runs that count responses by HTTP status, and a sampler of
each replica's RSS, file descriptors and /metrics while they run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from . import procs
from .common import WORK_DIR, BenchError, cmdline
from .loadgen import WRK_PACE, lua_quote

# Every response's status, counted per wrk thread and summed in done(); the usual summary
# besides. Defining response() makes wrk hand each response to Lua: a small cost per
# request, the same in every phase.
WRK_COUNT = """
local threads = {}
setup = function(thread) table.insert(threads, thread) end
statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
done = function(summary, latency, requests)
  local all = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do all[status] = (all[status] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(all) do table.insert(parts, string.format('"%d":%d', status, n)) end
  local e = summary.errors
  io.write(string.format(
    'SOAK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"statuses":{%s}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, table.concat(parts, ",")))
end
"""


def paced_script(name: str, body: str, headers: dict[str, str], rate: float) -> Path:
    """A wrk script POSTing ``body`` at ``rate`` req/s (open loop while connections are
    free) and counting statuses."""
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_quote(body)}"]
    lines.append(WRK_PACE.replace("@@RATE@@", f"{rate:.3f}"))
    lines += [f"wrk.headers[ {lua_quote(k)} ] = {lua_quote(v)}" for k, v in headers.items()]
    path = WORK_DIR / "soak" / f"{name}.lua"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + WRK_COUNT)
    return path


@dataclass
class Stream:
    """One load stream: a kind of request to one replica at a rate."""

    replica: int
    kind: str  # "chat" | "stream"
    url: str
    body: str
    rate: float  # req/s offered in the steady phase


@dataclass
class Chunk:
    """One wrk run of one stream (``seconds`` long) and what it saw."""

    phase: str
    start_s: float  # since the soak began
    seconds: float
    replica: int
    kind: str
    offered_rps: float
    conns: int
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    statuses: dict[str, int] = field(default_factory=dict)
    socket_errors: int = 0
    command: str = ""

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.startswith("2"))

    @property
    def shed(self) -> int:
        return self.statuses.get("429", 0) + self.statuses.get("503", 0)


def run_chunk(
    streams: list[Stream],
    headers: dict[str, str],
    *,
    phase: str,
    t0: float,
    seconds: float,
    factor: float,
    conns: int,
) -> list[Chunk]:
    """Every stream at ``factor`` x its rate for ``seconds``, all at once (one wrk each)."""
    running = []
    start = time.monotonic() - t0
    for s in streams:
        rate = s.rate * factor
        script = paced_script(f"{s.kind}-r{s.replica}-x{factor:g}", s.body, headers, rate)
        argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "10s"]
        argv += ["-s", str(script), s.url]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        chunk = Chunk(phase, start, seconds, s.replica, s.kind, rate, conns, command=cmdline(argv))
        running.append((proc, chunk))
    for proc, chunk in running:
        try:
            out, _ = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            raise BenchError(f"wrk did not finish: {chunk.command}") from exc
        _parse(chunk, out)
    return [chunk for _, chunk in running]


def _parse(chunk: Chunk, out: str) -> None:
    match = re.search(r"^SOAK_JSON (\{.*\})$", out, re.MULTILINE)
    if not match:
        raise BenchError(f"could not parse wrk output of {chunk.command}:\n{out[-2000:]}")
    raw = json.loads(match.group(1))
    chunk.requests = int(raw["requests"])
    chunk.rps = raw["requests"] / max(raw["duration_us"] / 1e6, 1e-9)
    chunk.p50_ms, chunk.p99_ms = raw["p50_us"] / 1000, raw["p99_us"] / 1000
    chunk.max_ms = raw["max_us"] / 1000
    chunk.statuses = {str(k): int(v) for k, v in raw["statuses"].items()}
    chunk.socket_errors = sum(int(raw[k]) for k in ("connect", "read", "write", "timeout"))


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def scrape(base: str) -> dict[str, float]:
    """The sum of each metric's samples at ``base``/metrics (labels summed away), or {}
    when the replica did not answer within 2 s (itself a finding under a burst)."""
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            name, value = match.group(1), float(match.group(3))
            totals[name] = totals.get(name, 0.0) + value
    return totals


def answers(url: str) -> bool:
    """Whether ``url`` answered 200 within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def open_fds(root: int) -> int:
    """File descriptors open in ``root`` and its descendants now."""
    total = 0
    for pid in procs.process_tree(root):
        with contextlib.suppress(OSError):  # gone meanwhile
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


class Sampler(threading.Thread):
    """Every ``interval`` s: each replica's RSS (its process tree), open fds, and from its
    /metrics (on its operations listener) the loop lag, outbox backlog, requests in flight
    and requests answered; and, at the same moment, whether its main port's /health
    answered (it waits behind the requests in the event loop)."""

    METRICS: ClassVar[dict[str, str]] = {
        "loop_lag_s": "relaygate_event_loop_lag_seconds",
        "outbox_backlog": "relaygate_usage_outbox_backlog",
        "in_flight": "relaygate_in_flight_requests",
        "answered_total": "relaygate_requests_total",
    }

    def __init__(self, replicas: list[tuple[int, str, str]], t0: float, interval: float) -> None:
        super().__init__(daemon=True, name="soak-sampler")
        self.replicas = replicas  # (pid, metrics base URL, main base URL)
        self.t0 = t0
        self.interval = interval
        self.phase = "warm-up"
        self.samples: list[dict[str, Any]] = []
        self._halt = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soak-health")

    def run(self) -> None:
        while not self._halt.is_set():
            now = time.monotonic() - self.t0
            for index, (pid, base, main) in enumerate(self.replicas):
                health = self._pool.submit(answers, main + "/health")  # concurrently
                metrics = scrape(base)
                row: dict[str, Any] = {
                    "t_s": round(now, 2),
                    "phase": self.phase,
                    "replica": index,
                    "rss_mib": procs.tree_rss_kib(pid) / 1024,
                    "fds": open_fds(pid),
                    "scraped": bool(metrics),
                    "main_health": health.result(),
                }
                row["alive"] = row["rss_mib"] > 0  # an exited process (or zombie) has none
                row.update({k: metrics.get(m) for k, m in self.METRICS.items()})
                self.samples.append(row)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        self._pool.shutdown(wait=False)
