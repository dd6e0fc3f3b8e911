"""The gateway under test, started as `relaygate serve` and stopped with SIGTERM."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from . import procs
from .common import (
    BENCH_DIR,
    CHAT,
    CHAT_BODY,
    GATEWAY_PORT,
    HOST,
    REPO_DIR,
    VENV_BIN,
    VIA,
    WORK_DIR,
    BenchError,
    GatewayDown,
    Options,
    cmdline,
    port_is_free,
    wait_for,
)

CONFIG = BENCH_DIR / "relaygate.yaml"
# RELAYGATE_BENCH_EXE points the bench at another build of the gateway (same CLI).
EXE = Path(os.environ.get("RELAYGATE_BENCH_EXE") or VENV_BIN / "relaygate")
START_TIMEOUT_S = 30.0
SUSPECT = re.compile(r"ERROR|CRITICAL|WARNING|Traceback|Exception")
# Suspicious gateway log lines seen since run.py last took them (see take_log_problems).
_PROBLEMS: list[str] = []
_STARTS = itertools.count(1)


def version() -> str | None:
    """`relaygate --version` output, or None when the gateway is not installed/usable yet."""
    try:
        out = subprocess.run(
            [str(EXE), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text if out.returncode == 0 and text else None


def serve_argv(workers: int, port: int = GATEWAY_PORT) -> list[str]:
    """The exact command line the bench starts the gateway with."""
    return [
        str(EXE), "serve", "--config", str(CONFIG.relative_to(BENCH_DIR.parent)),
        "--host", HOST, "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip


class Gateway:
    """`relaygate serve` with N workers; ready once GET /health answers 200."""

    def __init__(self, workers: int, port: int = GATEWAY_PORT) -> None:
        self.workers = workers
        self.port = port
        self.log_path: Path = WORK_DIR / f"gateway-{next(_STARTS):02d}-w{workers}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("gateway is not running")
        return self.proc.pid

    def healthy(self) -> bool:
        try:
            url = f"http://{HOST}:{self.port}/health"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> Gateway:
        if not EXE.exists():
            raise BenchError(f"{EXE} not found: install the gateway (make install) first")
        if not port_is_free(self.port):
            raise BenchError(f"port {self.port} is already in use; stop whatever listens there")
        proc = self.proc = procs.spawn(
            serve_argv(self.workers, self.port), self.log_path, cwd=REPO_DIR
        )
        up = wait_for(lambda: proc.poll() is not None or self.healthy(), START_TIMEOUT_S, 0.1)
        if proc.poll() is not None or not up:
            why = (
                f"it exited with code {proc.returncode}"
                if proc.poll() is not None
                else f"GET /health gave no 200 within {START_TIMEOUT_S:.0f} s"
            )
            self.__exit__()
            raise GatewayDown(
                f"the gateway did not come up: {why}"
                f"\ncommand: {' '.join(serve_argv(self.workers, self.port))}"
                f"\nlog {self.log_path}:\n{self._log_tail()}"
            )
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            procs.stop(self.proc, sig=signal.SIGTERM, grace=15)
            self.proc = None
            self._collect_problems()

    def _collect_problems(self) -> None:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return
        bad = [line for line in lines if SUSPECT.search(line)]
        if bad:
            _PROBLEMS.append(f"{self.log_path.name}: {len(bad)} suspicious line(s), first:")
            _PROBLEMS.extend(f"    {line[:300]}" for line in bad[:5])


def take_log_problems() -> list[str]:
    """Suspicious gateway log lines gathered since the last call (and forget them)."""
    taken = list(_PROBLEMS)
    _PROBLEMS.clear()
    return taken


def gateway_line(workers: int) -> str:
    return f"Gateway: `{cmdline(serve_argv(workers))}`"


def check_gateway(opts: Options) -> None:
    """One request through the gateway must give a chat.completion; else stop with its answer."""
    headers = {"Content-Type": "application/json", **opts.headers}
    req = urllib.request.Request(VIA + CHAT, CHAT_BODY.encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        raise BenchError(f"POST {VIA + CHAT} failed: {exc}") from exc
    if status != 200 or b'"choices"' not in body:
        raise BenchError(f"POST {VIA + CHAT} gave {status}: {body[:500]!r}")
    json.loads(body)
