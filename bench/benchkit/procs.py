"""Start and always stop the processes the bench owns; read their memory from /proc."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

_LIVE: list[subprocess.Popen[bytes]] = []
# Services the bench uses but did not start (a Redis already running): their CPU is part of
# the bench's own load, not "other programs".
HELPERS: set[int] = set()


def spawn(
    argv: Sequence[str],
    log_path: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session (its children die with it), output to ``log_path``,
    with the environment ``env`` (default: this process's)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
            env=dict(env) if env is not None else None,
        )
    _LIVE.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
    """Send ``sig`` to ``proc``, wait up to ``grace`` seconds, then SIGKILL its process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Leftover children (workers) share the process group we created at spawn time.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    if proc in _LIVE:
        _LIVE.remove(proc)


def stop_all() -> None:
    """Kill everything still running that this process started (atexit / signal path)."""
    for proc in list(_LIVE):
        stop(proc, signal.SIGTERM, grace=5.0)


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Make SIGINT/SIGTERM/SIGHUP unwind through ``finally`` blocks; stop children at exit."""
    atexit.register(stop_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with it ignored


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces; fields resume after ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _ppid(int(entry))
            if ppid is not None:
                parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return [pid for pid in found if Path(f"/proc/{pid}").exists()]


def _status_kib(pid: int, field: str, filename: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{filename}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) of one process, KiB; 0 if it is gone."""
    return _status_kib(pid, "VmRSS")


def pss_kib(pid: int) -> int:
    """Proportional set size of one process (shared pages split between sharers), KiB."""
    return _status_kib(pid, "Pss", "smaps_rollup")


def tree_rss_kib(root: int) -> int:
    """Sum of VmRSS over ``root`` and its descendants, KiB."""
    return sum(rss_kib(pid) for pid in process_tree(root))


def tree_pss_kib(root: int) -> int:
    """Sum of PSS over ``root`` and its descendants, KiB."""
    return sum(pss_kib(pid) for pid in process_tree(root))


def settled_rss_kib(pid: int, timeout: float = 10.0) -> int:
    """Wait until the gateway's RSS stops moving (2 reads 0.5 s apart within 256 KiB)."""
    deadline, last = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        now = tree_rss_kib(pid)
        if abs(now - last) < 256:
            return now
        last = now
        time.sleep(0.5)
    return tree_rss_kib(pid)


def cmdline_of(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:160]


def cpu_ticks() -> dict[int, int]:
    """utime + stime (clock ticks) of every live process."""
    ticks = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks[int(entry)] = int(fields[11]) + int(fields[12])
    return ticks


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by ``pid`` and its live descendants."""
    ticks = cpu_ticks()
    used = sum(ticks.get(p, 0) for p in process_tree(pid))
    return used / os.sysconf("SC_CLK_TCK")


def foreign_cpu_seconds(before: dict[int, int]) -> float:
    """CPU time used since ``before`` by live processes that are not ours (nor our children,
    nor HELPERS).

    Short-lived processes that came and went in between are missed: this is an indicator of
    a busy machine, not an account."""
    own = set(process_tree(os.getpid())) | HELPERS
    after = cpu_ticks()
    used = sum(t - before.get(pid, 0) for pid, t in after.items() if pid not in own)
    return max(0, used) / os.sysconf("SC_CLK_TCK")


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies over all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return values[3] + values[4], sum(values)


def cpu_busy(seconds: float) -> float:
    """Share (0..1) of all CPUs busy over the next ``seconds``."""
    idle0, total0 = _cpu_times()
    time.sleep(seconds)
    idle1, total1 = _cpu_times()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_for_quiet(max_wait: float, threshold: float = 0.10, window: float = 2.0) -> float:
    """Wait up to ``max_wait`` s for the CPUs to be under ``threshold`` busy over ``window`` s.

    Returns the last busy share seen (so the caller can say how quiet the machine was)."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy(window)
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy(window)
    return busy
