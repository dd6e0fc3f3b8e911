"""The Redis that shared limits use: 127.0.0.1:6379 when it answers, else one the bench starts.

Every gateway run gets its own ``redis_prefix`` ("rgbench:<uuid>:"), so runs never share
counters, and its keys are deleted when that gateway stops. RELAYGATE_BENCH_REDIS_URL
points the bench at another Redis.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from typing import Any

from . import procs
from .common import WORK_DIR, BenchError, wait_for

DEFAULT_URL = "redis://127.0.0.1:6379/0"
OWN_PORT = 16379  # where the bench starts its own redis-server when none answers
SCRIPT_COMMANDS = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_evalsha_ro", "cmdstat_eval_ro")
NOT_COUNTED = ("cmdstat_info",)  # the bench's own INFO calls


def _client(url: str) -> Any:
    import redis  # the gateway's dependency, in the same venv

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def answers(url: str = DEFAULT_URL) -> bool:
    """Whether a Redis at ``url`` answers PING."""
    try:
        with _client(url) as client:
            return bool(client.ping())
    except Exception:  # not installed, refused, auth required: not usable either way
        return False


def _start_own() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        raise BenchError(
            f"no Redis answers at {DEFAULT_URL} and redis-server is not installed "
            "(apt-get install -y redis-server, or `make services`)"
        )
    home = WORK_DIR / "redis"
    home.mkdir(parents=True, exist_ok=True)
    argv = [exe, "--bind", "127.0.0.1", "--port", str(OWN_PORT), "--save", "", "--appendonly"]
    procs.spawn([*argv, "no", "--dir", str(home)], home / "redis.log")
    url = f"redis://127.0.0.1:{OWN_PORT}/0"
    if not wait_for(lambda: answers(url), 10, 0.1):
        raise BenchError(f"redis-server did not answer on {url} within 10 s: see {home}")
    return url


@functools.cache
def url() -> str:
    """The Redis URL gateway runs use (started on first use when needed)."""
    wanted = os.environ.get("RELAYGATE_BENCH_REDIS_URL") or DEFAULT_URL
    if answers(wanted):
        with _client(wanted) as client:
            procs.HELPERS.add(int(client.info("server")["process_id"]))
        return wanted
    if wanted != DEFAULT_URL:
        raise BenchError(f"RELAYGATE_BENCH_REDIS_URL={wanted} does not answer PING")
    return _start_own()


def used() -> str | None:
    """'7.0.15 at redis://...' once a gateway run used Redis, else None (for the report)."""
    if not url.cache_info().currsize:
        return None
    try:
        with _client(url()) as client:
            return f"{client.info('server')['redis_version']} at {url()}"
    except Exception:
        return f"? at {url()}"


def new_prefix() -> str:
    """A redis_prefix no other run uses."""
    return f"rgbench:{uuid.uuid4().hex}:"


def forget(prefix: str) -> int:
    """Delete every key under ``prefix``; how many there were."""
    with _client(url()) as client:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    return len(keys)


def command_calls(redis_url: str) -> dict[str, int]:
    """Calls per command since Redis started (INFO commandstats), e.g. {"cmdstat_get": 12}."""
    with _client(redis_url) as client:
        stats = client.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


def calls_between(before: dict[str, int], after: dict[str, int]) -> tuple[int, int]:
    """(scripts run, other commands) between two command_calls() snapshots, for every client
    of that Redis. Redis counts the commands a script runs (GET, SET, TIME, ...) as well:
    server-side work, not round trips."""
    delta = {k: v - before.get(k, 0) for k, v in after.items() if k not in NOT_COUNTED}
    scripts = sum(delta.get(k, 0) for k in SCRIPT_COMMANDS)
    return scripts, sum(delta.values()) - scripts
