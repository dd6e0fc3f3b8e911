"""The fake upstream: nginx (+ echo module) serving fixed OpenAI-shaped answers."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from . import procs
from .common import BENCH_DIR, HOST, UPSTREAM_PORT, WORK_DIR, BenchError, port_is_free, wait_for

TEMPLATE = BENCH_DIR / "nginx.conf.in"
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
STREAM_EVENTS = 64  # chat.completion.chunk events per stream, before "data: [DONE]"
SLOW_PACE_S = 0.1  # echo_sleep between events on /slow: 64 events last about 6.4 s
CREATED = 1700000000

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": CREATED,
    "model": "bench-model",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
}
# Large answers (section 15): a long chat answer, and a 1,536-dimension embedding (the
# size of OpenAI's text-embedding-3-small), fixed so every run sends the same bytes.
BIG_COMPLETION: dict[str, Any] = {
    **COMPLETION,
    "model": "bench-big",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The gateway relays this answer. " * 200},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 1000, "total_tokens": 1012},
}
EMBEDDING: dict[str, Any] = {
    "object": "list",
    "model": "bench-embed",
    "data": [
        {
            "object": "embedding",
            "index": 0,
            "embedding": [round(random.Random(i).uniform(-0.1, 0.1), 9) for i in range(1536)],
        }
    ],
    "usage": {"prompt_tokens": 3, "total_tokens": 3},
}
MODELS = {
    "object": "list",
    "data": [{"id": "bench-model", "object": "model", "created": CREATED, "owned_by": "bench"}],
}


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def chunk_event(index: int, total: int = STREAM_EVENTS) -> str:
    """The JSON of chunk ``index`` (0-based) of a ``total``-event stream."""
    if index == 0:
        delta: dict[str, str] = {"role": "assistant", "content": ""}
    elif index < total - 1:
        delta = {"content": f"tok{index} "}
    else:
        delta = {}
    chunk: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "bench-stream",
        "choices": [
            {"index": 0, "delta": delta, "finish_reason": "stop" if index == total - 1 else None}
        ],
    }
    if index == total - 1:
        chunk["usage"] = {"prompt_tokens": 12, "completion_tokens": total - 2, "total_tokens": 74}
    return _compact(chunk)


def stream_directives(pace_s: float, indent: str = " " * 12) -> str:
    """echo-module directives writing STREAM_EVENTS SSE events, each flushed on its own."""
    lines = []
    for i in range(STREAM_EVENTS):
        lines.append(f"echo -n 'data: {chunk_event(i)}\\n\\n';")
        lines.append("echo_flush;")
        if pace_s > 0:
            lines.append(f"echo_sleep {pace_s};")
    lines += ["echo -n 'data: [DONE]\\n\\n';", "echo_flush;"]
    return "\n".join(indent + line for line in lines)


def write_answers(prefix: Path) -> None:
    """The large answers as the files nginx serves (under ``prefix``/answers)."""
    for path, answer in (
        ("big/v1/chat/completions", BIG_COMPLETION),
        ("v1/embeddings", EMBEDDING),
    ):
        target = prefix / "answers" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_compact(answer))


def render_conf(prefix: Path, port: int = UPSTREAM_PORT) -> str:
    """nginx.conf for a server rooted at ``prefix``."""
    values = {
        "ECHO_MODULE": str(ECHO_MODULE),
        "PREFIX": str(prefix),
        "PORT": str(port),
        "COMPLETION_JSON": _compact(COMPLETION),
        "MODELS_JSON": _compact(MODELS),
        "EVENTS": str(STREAM_EVENTS),
        "SLOW_PACE": str(SLOW_PACE_S),
        "FAST_STREAM": stream_directives(0),
        "SLOW_STREAM": stream_directives(SLOW_PACE_S),
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    return text


def nginx_version() -> str:
    """'nginx/1.x.y' or 'not installed'."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    try:
        out = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "not installed"
    return out.stderr.strip().removeprefix("nginx version: ")


class Nginx:
    """nginx in the foreground under bench/.work/nginx, stopped on exit."""

    def __init__(self, port: int = UPSTREAM_PORT) -> None:
        self.port = port
        self.prefix = WORK_DIR / "nginx"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = self.prefix / "nginx.conf"
        return [exe, "-p", f"{self.prefix}/", "-c", str(conf), "-e", str(self.prefix / "error.log")]

    def _prepare(self) -> None:
        if not ECHO_MODULE.exists():
            raise BenchError(f"{ECHO_MODULE} missing: apt-get install -y libnginx-mod-http-echo")
        if not port_is_free(self.port):
            raise BenchError(f"port {self.port} is already in use; stop whatever listens there")
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        (self.prefix / "nginx.conf").write_text(render_conf(self.prefix, self.port))
        write_answers(self.prefix)

    def _ready(self) -> bool:
        try:
            url = f"http://{HOST}:{self.port}/v1/models"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def __enter__(self) -> Nginx:
        self._prepare()
        proc = self.proc = procs.spawn(self.argv(), self.prefix / "nginx.out")
        if not wait_for(lambda: self._ready() or proc.poll() is not None, 10):
            raise BenchError("nginx did not answer on /v1/models within 10 s")
        if proc.poll() is not None:
            log = (self.prefix / "error.log").read_text(errors="replace")[-2000:]
            raise BenchError(f"nginx exited with {proc.returncode}:\n{log}")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            procs.stop(self.proc, sig=15, grace=5)
            self.proc = None
