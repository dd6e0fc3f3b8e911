"""The gateway under test, started as `relaygate serve` and stopped with SIGTERM."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from . import keys, procs, redis_store
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


def environ(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment without any RELAYGATE_* variable (the gateway reads them
    all as settings, and refuses unknown ones such as RELAYGATE_BENCH_EXE), plus
    ``settings``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGATE_")}
    return {**inherited, **settings}


def serve_argv(workers: int, port: int = GATEWAY_PORT, config: Path = CONFIG) -> list[str]:
    """The exact command line the bench starts the gateway with."""
    return [
        str(EXE), "serve", "--config", str(config.relative_to(BENCH_DIR.parent)),
        "--host", HOST, "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip


class Gateway:
    """`relaygate serve` with N workers; ready once GET /health answers 200.

    Each start has its own fresh SQLite database (unless ``database`` names another) and
    the run's admin key (``opts.api_key``); ``redis`` shares limits through Redis under a
    prefix of its own;
    ``user_keys`` (secret -> tier) are stored in its database once it is up, so that, like
    the admin key, they are the newest keys there."""

    def __init__(
        self,
        opts: Options,
        workers: int = 1,
        *,
        port: int = GATEWAY_PORT,
        redis: bool = False,
        user_keys: dict[str, str] | None = None,
        config: Path = CONFIG,
        database: str = "",
    ) -> None:
        self.workers = workers
        self.database = database  # a database URL; default: a fresh SQLite file
        self.port = port
        self.config = config
        self.name = f"gateway-{next(_STARTS):02d}-w{workers}"
        self.log_path: Path = WORK_DIR / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.user_keys = user_keys or {}
        self.redis_prefix = redis_store.new_prefix() if redis else ""
        self.env = {"RELAYGATE_DATABASE_URL": "", "RELAYGATE_ADMIN_KEY": opts.api_key}

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("gateway is not running")
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/health", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def _prepare(self) -> None:
        """A fresh database and usage outbox, and Redis when asked for."""
        self.env["RELAYGATE_DATABASE_URL"] = self.database or keys.fresh_db(self.name)
        if outbox := keys.fresh_outbox(self.name):
            self.env["RELAYGATE_USAGE__OUTBOX_DIR"] = outbox
        if self.redis_prefix:
            self.env["RELAYGATE_REDIS_URL"] = redis_store.url()
            self.env["RELAYGATE_REDIS_PREFIX"] = self.redis_prefix

    def _environ(self) -> dict[str, str]:
        """This process's environment without any RELAYGATE_* variable (the gateway reads
        them all as settings, and refuses unknown ones such as RELAYGATE_BENCH_EXE), plus
        the bench's own settings for this start."""
        return environ(self.env)

    def line(self) -> str:
        """'Gateway: `ENV=... relaygate serve ...`' for the report, the admin key left out."""
        shown = {**self.env, "RELAYGATE_ADMIN_KEY": "<admin key>"}
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items())
        return f"Gateway: `{env} {cmdline(serve_argv(self.workers, self.port, self.config))}`"

    def __enter__(self) -> Gateway:
        if not EXE.exists():
            raise BenchError(f"{EXE} not found: install the gateway (make install) first")
        if not port_is_free(self.port):
            raise BenchError(f"port {self.port} is already in use; stop whatever listens there")
        self._prepare()
        try:
            self._start()
            if self.user_keys:
                keys.add_keys(self.env["RELAYGATE_DATABASE_URL"], self.user_keys)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        """Spawn `relaygate serve` and wait for GET /health; GatewayDown when it fails."""
        argv = serve_argv(self.workers, self.port, self.config)
        proc = self.proc = procs.spawn(argv, self.log_path, cwd=REPO_DIR, env=self._environ())
        up = wait_for(lambda: proc.poll() is not None or self.healthy(), START_TIMEOUT_S, 0.1)
        if proc.poll() is None and up:
            return
        why = (
            f"it exited with code {proc.returncode}"
            if proc.poll() is not None
            else f"GET /health gave no 200 within {START_TIMEOUT_S:.0f} s"
        )
        raise GatewayDown(
            f"the gateway did not come up: {why}\n{self.line()}"
            f"\nlog {self.log_path}:\n{self._log_tail()}"
        )

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            procs.stop(self.proc, sig=signal.SIGTERM, grace=15)
            self.proc = None
            self._collect_problems()
            if self.redis_prefix:
                redis_store.forget(self.redis_prefix)

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


def check(base: str, headers: dict[str, str], body: str = CHAT_BODY) -> None:
    """One request must give a chat.completion; else stop with the gateway's answer."""
    req = urllib.request.Request(
        base + CHAT, body.encode(), {"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        raise BenchError(f"POST {base + CHAT} failed: {exc}") from exc
    if status != 200 or b'"choices"' not in body:
        raise BenchError(f"POST {base + CHAT} gave {status}: {body[:500]!r}")
    json.loads(body)


def check_gateway(opts: Options, gw: Gateway | None = None) -> None:
    """The run's admin key works for a chat completion through ``gw`` (default port)."""
    check(gw.base if gw else VIA, opts.headers)
