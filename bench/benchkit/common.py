"""Shared constants, result types and small helpers for the relaygate benchmark."""

from __future__ import annotations

import math
import re
import shlex
import socket
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / ".work"
VENV_BIN = REPO_DIR / ".venv" / "bin"
HOST = "127.0.0.1"
UPSTREAM_PORT = 18080
GATEWAY_PORT = 18000

CHAT_BODY = (
    '{"model":"bench-model","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
)
# The same question through the Anthropic Messages API: the gateway translates it and calls
# the same upstream route (/v1/chat/completions), so its "direct" is CHAT's.
MESSAGES_BODY = (
    '{"model":"bench-model","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
)
STREAM_BODY = (
    '{"model":"bench-stream","messages":[{"role":"user","content":"Say hello."}],'
    '"max_tokens":64,"stream":true}'
)
SLOW_STREAM_BODY = STREAM_BODY.replace("bench-stream", "bench-slow")
DIRECT = f"http://{HOST}:{UPSTREAM_PORT}"
VIA = f"http://{HOST}:{GATEWAY_PORT}"
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
DIRECT_STREAM = "/stream/v1/chat/completions"
DIRECT_SLOW = "/slow/v1/chat/completions"
MIB = 1024.0


class BenchError(Exception):
    """A failure that stops a section, with a message meant for the person running the bench."""


class GatewayDown(BenchError):
    """The gateway did not start: the remaining sections are skipped."""


@dataclass
class Target:
    """One row of the targets table."""

    name: str
    target: str
    measured: str
    passed: bool | None  # None: could not be measured


@dataclass
class Section:
    """What one benchmark section produced."""

    key: str
    title: str
    targets: list[Target] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # markdown lines
    data: dict[str, Any] = field(default_factory=dict)  # raw figures, written to results.json
    error: str | None = None


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (``pct`` in 0..100); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def fmt_ms(value: float, digits: int = 3) -> str:
    """Milliseconds for tables; 'n/a' for NaN."""
    return "n/a" if math.isnan(value) else f"{value:.{digits}f} ms"


def cmdline(argv: Sequence[str]) -> str:
    """A copy-pasteable shell rendering of ``argv``, run from the repository: its paths
    relative to it (a report names the repository's files, not this machine's)."""
    root = f"{REPO_DIR}/"
    return shlex.join(str(a).removeprefix(root) for a in argv)


def run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a load generator to completion, capturing its output; raise BenchError on failure."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise BenchError(f"{argv[0]} is not installed: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"timed out after {timeout:.0f}s: {cmdline(argv)}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise BenchError(f"exit {proc.returncode}: {cmdline(argv)}\n{tail}")
    return proc


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) != 0


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until it is truthy or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@dataclass
class Options:
    """Knobs shared by all sections (defaults are the documented bench)."""

    seconds: int = 10  # each wrk / hey measurement
    warmup_s: int = 2  # wrk warm-up before each measurement
    streams: int = 2000  # sequential streams for time-to-first-chunk, per round
    rounds: int = 3  # latency and streaming alternate direct/gateway this many times
    held: int = 1000  # streams held open at once
    api_key: str = ""  # the run's admin key: RELAYGATE_ADMIN_KEY of every gateway start
    headers: dict[str, str] = field(default_factory=dict)  # Authorization: Bearer <api_key>
    direct_only: bool = False  # skip every gateway run (no gateway installed yet)
    quiet_wait: float = 120.0  # max seconds to wait for idle CPUs before each section
    gateway_down: str = ""  # set once the gateway failed to start
    nginx_pid: int = 0


def added_relative(
    name: str, factor: float, rounds: Sequence[tuple[float, float, float]]
) -> Target:
    """A 'route's added ms <= factor x the reference route's added ms' row from
    (direct, via reference, via route) per round; the median round's ratio."""
    pairs = sorted(((via - direct, route - direct) for direct, via, route in rounds), key=_ratio)
    if not pairs or any(math.isnan(x) for pair in pairs for x in pair):
        return Target(name, f"≤ {factor:g} × reference", "n/a", None)
    reference, route = pairs[len(pairs) // 2]
    measured = f"{route:+.3f} ms vs {reference:+.3f} ms (×{_ratio((reference, route)):.2f})"
    if len(pairs) > 1:
        measured += f", median of {len(pairs)} rounds"
    return Target(name, f"≤ {factor:g} × reference", measured, _ratio((reference, route)) <= factor)


def _ratio(pair: tuple[float, float]) -> float:
    reference, route = pair
    if reference <= 0:  # no measurable reference: only "no more than it" can be told
        return 1.0 if route <= max(reference, 0.0) else math.inf
    return route / reference


def added(name: str, goal: float, pairs: Sequence[tuple[float, float]]) -> Target:
    """A 'gateway minus direct <= goal' row (ms) from (direct, via) per round; median round."""
    diffs = sorted(via - direct for direct, via in pairs)
    if not diffs or any(math.isnan(d) for d in diffs):
        return Target(name, f"≤ {goal:g} ms", "n/a", None)
    mid = statistics.median(diffs)
    if len(diffs) == 1:
        measured = f"{mid:+.3f} ms ({pairs[0][0]:.3f} → {pairs[0][1]:.3f})"
    else:
        measured = (
            f"{mid:+.3f} ms (median of {len(diffs)} rounds: {diffs[0]:+.3f} … {diffs[-1]:+.3f})"
        )
    return Target(name, f"≤ {goal:g} ms", measured, mid <= goal)


def callgrind_totals(prefix: Path) -> dict[str, int]:
    """Instructions per thread in the files of one callgrind dump (``--separate-threads=
    yes``: ``<prefix>-01``, ``-02``...), keyed by thread number; the files are removed."""
    found: dict[str, int] = {}
    for path in sorted(prefix.parent.glob(prefix.name + "*")):
        text = path.read_text(errors="replace")
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        thread = re.search(r"^thread: (\d+)", text, re.M)
        if total:
            found[thread.group(1) if thread else path.name] = int(total.group(1))
        path.unlink()
    return found
