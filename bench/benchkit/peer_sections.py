"""Section 13: relaygate side by side with LiteLLM (PyPI) and Portkey's open-source gateway
(npm), on the same nginx fake upstream, one worker each, in the same run.

LiteLLM is installed into its own venv (bench/.work/litellm-venv) and Portkey into
bench/.work/portkey the first time the section runs (pip and npm, a few minutes once);
later runs reuse them. LiteLLM runs without a database (no keys, no usage store);
relaygate runs with keys, limits and usage on, cache off, as in every other section.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import loadgen, procs, report, sse_client
from .common import (
    CHAT,
    CHAT_BODY,
    DIRECT,
    DIRECT_STREAM,
    HOST,
    STREAM_BODY,
    UPSTREAM_PORT,
    WORK_DIR,
    BenchError,
    Options,
    Section,
    Target,
    cmdline,
    fmt_ms,
    percentile,
    port_is_free,
    wait_for,
)
from .gateway import Gateway, check, check_gateway
from .loadgen import LoadResult

LITELLM_VENV = WORK_DIR / "litellm-venv"
LITELLM_SPEC = "litellm[proxy]"
PORTKEY_DIR = WORK_DIR / "portkey"
PORTKEY_SPEC = "@portkey-ai/gateway"
LITELLM_PORT, PORTKEY_PORT = 18010, 18020
START_TIMEOUT_S = 120.0  # LiteLLM imports a great deal before it listens
STREAMS = 300  # sequential streams for time to first token, after 30 warm-up
TARGET_LITELLM, TARGET_PORTKEY = 40.0, 3.0  # issue 15: relaygate req/s over theirs
# Not passed on to the peers: relaygate's settings, and a DATABASE_URL (LiteLLM runs without one)
DROPPED_ENV = ("RELAYGATE_", "DATABASE_URL")


def _install_litellm() -> Path:
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"   installing {LITELLM_SPEC} into {LITELLM_VENV} (first run only)", flush=True)
    steps = [
        [sys.executable, "-m", "venv", str(LITELLM_VENV)],
        [str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", LITELLM_SPEC],
    ]
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode:
            raise BenchError(f"{cmdline(argv)} failed:\n{(done.stderr or done.stdout)[-2000:]}")
    return exe


def _install_portkey() -> Path:
    script = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if script.exists():
        return script
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise BenchError(
            "node and npm are needed for Portkey's gateway (apt-get install nodejs npm)"
        )
    print(f"   installing {PORTKEY_SPEC} into {PORTKEY_DIR} (first run only)", flush=True)
    PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
    argv = ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"]
    argv += [str(PORTKEY_DIR), PORTKEY_SPEC]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode or not script.exists():
        raise BenchError(f"{cmdline(argv)} failed:\n{(done.stderr or done.stdout)[-2000:]}")
    return script


def litellm_version() -> str:
    out = subprocess.run(
        [str(LITELLM_VENV / "bin" / "python"), "-c",
         "from importlib.metadata import version; print(version('litellm'))"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return out.stdout.strip() or "?"


def portkey_version() -> str:
    import json

    manifest = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "package.json"
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    return f"{json.loads(manifest.read_text())['version']} on Node {node.stdout.strip()}"


LITELLM_CONFIG = f"""\
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-model
      api_base: {DIRECT}/v1
      api_key: bench-not-checked
  - model_name: bench-stream
    litellm_params:
      model: openai/bench-stream
      api_base: {DIRECT}/stream/v1
      api_key: bench-not-checked
"""


@dataclass
class Peer:
    """A gateway under comparison: how to start it and how to call it."""

    name: str
    port: int
    argv: list[str]
    env: dict[str, str]
    headers: dict[str, str]
    health: str
    version: str
    stream_headers: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)

    def up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}{self.health}", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def __enter__(self) -> Peer:
        if not port_is_free(self.port):
            raise BenchError(f"port {self.port} is already in use; stop whatever listens there")
        self.log = WORK_DIR / f"peer-{self.name.split()[0].lower()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV)}
        self.proc = procs.spawn(self.argv, self.log, env={**env, **self.env})
        proc = self.proc
        if not wait_for(lambda: proc.poll() is not None or self.up(), START_TIMEOUT_S, 0.25):
            raise BenchError(f"{self.name} did not answer {self.health} in {START_TIMEOUT_S:.0f} s")
        if proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise BenchError(f"{self.name} exited with {proc.returncode}:\n{tail}")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            procs.stop(self.proc, grace=10)
            self.proc = None


def litellm_peer() -> Peer:
    exe = _install_litellm()
    config = WORK_DIR / "litellm.yaml"
    config.write_text(LITELLM_CONFIG)
    argv = [str(exe), "--config", str(config), "--host", HOST, "--port", str(LITELLM_PORT)]
    argv += ["--num_workers", "1"]
    # No DATABASE_URL: LiteLLM with no database at all (issue 15). It refuses to start
    # without a master key; with one and no database, it checks that one key per request.
    master = "sk-" + secrets.token_hex(32)
    report.SECRETS[master] = "<LiteLLM master key>"
    env = {"LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": master}
    headers = {"Authorization": f"Bearer {master}"}
    return Peer(
        "LiteLLM proxy", LITELLM_PORT, argv, env, headers, "/health/liveliness",
        litellm_version(),
    )  # fmt: skip


def portkey_peer() -> Peer:
    script = _install_portkey()
    argv = ["node", str(script), f"--port={PORTKEY_PORT}", "--headless"]
    # The fake upstream is on 127.0.0.1, which Portkey refuses as a custom host unless trusted.
    env = {"NODE_ENV": "production", "TRUSTED_CUSTOM_HOSTS": HOST}
    headers = {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": f"{DIRECT}/v1",
        "Authorization": "Bearer bench-not-checked",
    }
    # Its upstream is per request, not per model: streams go to nginx's streaming route.
    streaming = {**headers, "x-portkey-custom-host": f"{DIRECT}/stream/v1"}
    return Peer(
        "Portkey gateway", PORTKEY_PORT, argv, env, headers, "/", portkey_version(), streaming
    )


@dataclass
class Figures:
    c1: LoadResult
    c32: LoadResult
    ttft_p50_ms: float
    ttft_p99_ms: float
    streams_ok: int
    rss_mib: float  # largest tree RSS seen during the c=32 run
    command_lines: list[str]


def measure(
    opts: Options,
    base: str,
    port: int,
    stream_path: str,
    headers: dict[str, str],
    pid: int | None,
    stream_headers: dict[str, str] | None = None,
) -> Figures:
    """c=1 latency, c=32 throughput (RSS sampled), sequential streams' time to first token."""
    script = loadgen.wrk_script(
        CHAT_BODY, {"Content-Type": "application/json", **headers}, f"peer-{port}"
    )
    loadgen.warm_up(base + CHAT, script, 1, 8, opts.warmup_s)
    c1 = loadgen.wrk(base + CHAT, script, 1, 1, opts.seconds)
    rss = [0]

    def sample() -> None:
        if pid:
            rss.append(procs.tree_rss_kib(pid))

    c32_run = asyncio.to_thread(loadgen.wrk, base + CHAT, script, 1, 32, opts.seconds)
    c32 = sse_client.run_async(sse_client.with_sampler(c32_run, sample, 0.5))
    streaming = stream_headers or headers
    warm = sse_client.sequential(port, stream_path, STREAM_BODY, 30, headers=streaming)
    sse_client.run_async(warm)
    job = sse_client.sequential(port, stream_path, STREAM_BODY, STREAMS, headers=streaming)
    samples = sse_client.run_async(job)
    ttft = [s.ttfc_s * 1000 for s in samples if s.ok]
    return Figures(
        c1, c32, percentile(ttft, 50), percentile(ttft, 99), len(ttft),
        max(rss) / 1024, [c1.command, c32.command],
    )  # fmt: skip


def peers(sec: Section, opts: Options) -> None:
    """13. relaygate, LiteLLM and Portkey, one worker each, same upstream, same loads."""
    sec.details += [
        "Same nginx fake upstream, one worker (process) each, measured one after the other in",
        f"this run: `wrk -c1` and `wrk -c32` for {opts.seconds} s each (after a "
        f"{opts.warmup_s} s warm-up), then {STREAMS} sequential streams (after 30 warm-up) with",
        "benchkit/sse_client.py (time to first token = request written → first `data:`), RSS",
        "= the largest RSS of the process tree sampled every 0.5 s during the c=32 run.",
        "relaygate: keys, limits (memory backend, 1 worker) and usage on, cache off. LiteLLM:",
        "`litellm --num_workers 1`, no database, a master key (it refuses to start without",
        "one; without a database that one key is all it checks).",
        "Portkey: `start-server.js --headless` (one Node process), provider `openai` with",
        "`x-portkey-custom-host` pointing at nginx. Added = through the gateway minus direct.",
        "",
    ]
    results: dict[str, tuple[Figures, str]] = {}
    direct = measure(opts, DIRECT, UPSTREAM_PORT, DIRECT_STREAM, opts.headers, None)
    results["direct → nginx"] = (direct, "nginx (bench/.work/nginx/nginx.conf)")
    with Gateway(opts, 1) as gw:
        check_gateway(opts, gw)
        figs = measure(opts, gw.base, gw.port, CHAT, opts.headers, gw.pid)
        results["relaygate, 1 worker"] = (figs, gw.line().removeprefix("Gateway: ").strip("`"))
    for make in (litellm_peer, portkey_peer):
        try:
            peer = make()
            with peer:
                check(f"http://{HOST}:{peer.port}", peer.headers)
                assert peer.proc is not None
                figs = measure(
                    opts, f"http://{HOST}:{peer.port}", peer.port, CHAT, peer.headers,
                    peer.proc.pid, peer.stream_headers,
                )  # fmt: skip
            label = f"{peer.name} {peer.version}"
            results[label] = (figs, cmdline(peer.argv))
            if figs.streams_ok < STREAMS or figs.c32.error_count:
                sec.details += [f"{peer.name} failed requests; its log says:", "", "```"]
                sec.details += [*log_errors(peer.log), "```", ""]
        except BenchError as exc:
            sec.details += [f"**{make.__name__[:-5]} not measured:** {exc}", ""]
    sec.details += table(results)
    sec.data = {
        label: {
            "c1": vars(f.c1), "c32": vars(f.c32), "ttft_p50_ms": f.ttft_p50_ms,
            "ttft_p99_ms": f.ttft_p99_ms, "streams_ok": f.streams_ok, "rss_mib": f.rss_mib,
        }
        for label, (f, _) in results.items()
    }  # fmt: skip
    sec.targets += ratio_targets(results)


def log_errors(path: Path, most: int = 5) -> list[str]:
    """The first distinct lines of a peer's log that name an error (no stack frames)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ["(no log)"]
    found = dict.fromkeys(
        line.strip()[:300]
        for line in lines
        if "error" in line.lower() and not line.lstrip().startswith("at ")
    )
    return list(found)[:most] or ["(no error line)"]


def _added(value: float, base: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f} ({value - base:+.3f})"


def table(results: dict[str, tuple[Figures, str]]) -> list[str]:
    direct = results["direct → nginx"][0]
    lines = [
        "| Run | req/s c=32 | p50 c=1 (added) | p99 c=1 (added) | p50 c=32 (added) "
        "| p99 c=32 (added) | TTFT p50 (added) | TTFT p99 (added) | streams ok | RSS |",
        "|---" * 10 + "|",
    ]
    for label, (f, _) in results.items():
        errors = f.c32.error_count + f.c1.error_count
        rps = f"{f.c32.rps:,.0f}" + (f" ({errors} errors)" if errors else "")
        lines.append(
            f"| {label} | {rps} | {_added(f.c1.p50_ms, direct.c1.p50_ms)} "
            f"| {_added(f.c1.p99_ms, direct.c1.p99_ms)} "
            f"| {_added(f.c32.p50_ms, direct.c32.p50_ms)} "
            f"| {_added(f.c32.p99_ms, direct.c32.p99_ms)} "
            f"| {_added(f.ttft_p50_ms, direct.ttft_p50_ms)} "
            f"| {_added(f.ttft_p99_ms, direct.ttft_p99_ms)} | {f.streams_ok}/{STREAMS} "
            f"| {f.rss_mib:,.0f} MiB |"
            if label != "direct → nginx"
            else f"| {label} | {rps} | {fmt_ms(f.c1.p50_ms)} | {fmt_ms(f.c1.p99_ms)} "
            f"| {fmt_ms(f.c32.p50_ms)} | {fmt_ms(f.c32.p99_ms)} | {fmt_ms(f.ttft_p50_ms)} "
            f"| {fmt_ms(f.ttft_p99_ms)} | {f.streams_ok}/{STREAMS} | — |"
        )
    lines += ["", "Latencies in ms. Commands:", "", "```"]
    for label, (f, line) in results.items():
        lines += [f"# {label}", line, *f.command_lines]
    return [*lines, "```"]


def ratio_targets(results: dict[str, tuple[Figures, str]]) -> list[Target]:
    ours = results.get("relaygate, 1 worker")
    targets = []
    for prefix, goal in (("LiteLLM", TARGET_LITELLM), ("Portkey", TARGET_PORTKEY)):
        theirs = next((f for label, (f, _) in results.items() if label.startswith(prefix)), None)
        name = f"Throughput c=32, 1 worker: relaygate ÷ {prefix}"
        if ours is None or theirs is None or theirs.c32.rps <= 0:
            targets.append(Target(name, f"≥ {goal:g}×", "n/a", None))
            continue
        ratio = ours[0].c32.rps / theirs.c32.rps
        measured = f"{ratio:.1f}× ({ours[0].c32.rps:,.0f} vs {theirs.c32.rps:,.0f} req/s)"
        targets.append(Target(name, f"≥ {goal:g}×", measured, ratio >= goal))
    return targets
