"""Drive wrk (closed loop) and hey (rate-limited, ~open loop) and parse what they report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import WORK_DIR, BenchError, cmdline, run

WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


# Open-loop pacing for wrk: the k-th request (over all connections of the thread) is due at
# start + k/rate, whatever happened to earlier ones. wrk calls delay() before each request and
# waits that many (whole) milliseconds; a late slot is sent at once.
WRK_PACE = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval_ms = 1000 / @@RATE@@
local start, slot = nil, 0
delay = function()
  local t = now_ms()
  start = start or t
  local wait = start + slot * interval_ms - t
  slot = slot + 1
  if wait < 0.5 then return 0 end
  return math.floor(wait + 0.5)
end
"""


@dataclass
class LoadResult:
    """One load-generator run, latencies in milliseconds."""

    command: str
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def lua_quote(text: str) -> str:
    """A Lua long-bracket string literal holding ``text`` verbatim."""
    return f"[==[{text}]==]"


def wrk_script(body: str, headers: dict[str, str], name: str, rate: int = 0) -> Path:
    """Write a wrk Lua script POSTing ``body`` (paced at ``rate`` req/s per wrk thread when
    given) and printing a JSON summary; return its path."""
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_quote(body)}"]
    if rate:
        lines.append(WRK_PACE.replace("@@RATE@@", str(rate)))
    lines += [f"wrk.headers[ {lua_quote(k)} ] = {lua_quote(v)}" for k, v in headers.items()]
    path = WORK_DIR / f"{name}.lua"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + WRK_DONE)
    return path


def wrk(url: str, script: Path, threads: int, conns: int, seconds: float) -> LoadResult:
    """Closed-loop run: ``conns`` keep-alive connections, each sending its next request on reply."""
    argv = [
        "wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--latency",
        "--timeout", "5s", "-s", str(script), url,
    ]  # fmt: skip
    out = run(argv, timeout=seconds + 60).stdout
    match = re.search(r"^BENCH_JSON (\{.*\})$", out, re.MULTILINE)
    if not match:
        raise BenchError(f"could not parse wrk output:\n{out[-2000:]}")
    raw = json.loads(match.group(1))
    errors = {k: int(raw[k]) for k in ("connect", "read", "write", "timeout", "status") if raw[k]}
    return LoadResult(
        command=cmdline(argv),
        requests=int(raw["requests"]),
        rps=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=errors,
    )


# After a warm-up, before the measurement: wrk's end cuts its requests in flight, the
# gateway records them (499) with estimated tokens, and a worker's first estimate loads
# tiktoken's o200k_base (0.4-0.5 s, one ~0.24 s piece of it with the GIL held inside
# tiktoken's constructor: docs/usage.md, "token-estimates"). Once per worker; a
# measurement that started at once caught it as a p99 of 0.27-0.43 s at one worker.
SETTLE_S = 1.5


def warm_up(url: str, script: Path, threads: int, conns: int, seconds: float) -> None:
    """:func:`wrk` for ``seconds``, not reported, then ``SETTLE_S`` for what it started."""
    wrk(url, script, threads, conns, seconds)
    time.sleep(SETTLE_S)


def _hey_seconds(out: str, label: str) -> float:
    match = re.search(rf"^\s*{re.escape(label)}\s+([0-9.]+) secs", out, re.MULTILINE)
    return float(match.group(1)) * 1000 if match else float("nan")


def _hey_errors(out: str) -> dict[str, int]:
    errors: dict[str, int] = {}
    for code, count in re.findall(r"^\s*\[(\d+)\]\s+(\d+) responses", out, re.MULTILINE):
        if not code.startswith("2"):
            errors[f"http_{code}"] = int(count)
    if "Error distribution:" in out:
        tail = out.split("Error distribution:", 1)[1]
        socket_errors = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]", tail, re.MULTILINE))
        errors["socket"] = socket_errors
    return errors


def hey(
    url: str, body: str, headers: dict[str, str], rate: tuple[int, int], seconds: int
) -> LoadResult:
    """Rate-limited run: ``rate`` = (workers, requests/s per worker); offered = product."""
    workers, qps = rate
    argv = ["hey", "-c", str(workers), "-q", str(qps), "-z", f"{seconds}s", "-m", "POST"]
    argv += ["-T", "application/json", "-d", body, "-t", "5"]
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    out = run([*argv, url], timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    total = sum(int(n) for n in re.findall(r"^\s*\[\d+\]\s+(\d+) responses", out, re.MULTILINE))
    return LoadResult(
        command=cmdline([*argv, url]),
        requests=total,
        rps=float(rps.group(1)) if rps else float("nan"),
        p50_ms=_hey_seconds(out, "50% in"),
        p90_ms=_hey_seconds(out, "90% in"),
        p99_ms=_hey_seconds(out, "99% in"),
        max_ms=_hey_seconds(out, "Slowest:"),
        errors=_hey_errors(out),
    )


def tool_version(name: str) -> str:
    """Version of a load tool via dpkg (wrk/hey have no reliable --version)."""
    if shutil.which(name) is None:
        return "not installed"
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True, check=False
    )
    return f"{name} {out.stdout.strip()} (Debian package)" if out.returncode == 0 else name
