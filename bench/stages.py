"""What each pipeline stage costs a request, in instructions: the gateway with a stage
taken out, against the whole gateway, both counted by callgrind (noise-free).

The app runs in process (no HTTP server: the request path from the ASGI call on), under
valgrind's callgrind, and is sent the bench's chat request one at a time, to the bench's
nginx upstream. For each variant: warm up, zero the counters, send ``--requests``
requests, wait for the background batches, dump; then zero, stay idle for as long, dump.
Per request = (loaded - idle) / requests, for the event loop (the main thread) and for
every thread. A stage's cost is the whole gateway's figure minus the figure without it.

Variants (``--without``, repeatable; ``none`` is always counted):

* ``metrics``: the request metrics (Metrics.started / finished / used) do nothing;
* ``admission``: admit and settle do nothing (every request admitted, no limit checked);
* ``usage``: usage records are made but not appended to the outbox (so neither the
  outbox nor the usage writer has anything to do);
* ``timeout``: the upstream call runs without its total timeout (asyncio.timeout).

As in callgrind.py, the batch windows are stretched 50-fold (valgrind runs the gateway
~50 times slower): ``usage.write_interval``, ``usage.fsync_window`` (to its 1 s bound),
``responses.save_window`` and the metrics' flush period; and the client-disconnect
watch, which starts 5 ms into a call, is held off (at full speed no bench request lasts
that long). Taking a stage out patches the gateway's internals: this script is a
measuring tool, and fails loudly when those names change.

    .venv/bin/python bench/stages.py --without metrics --without admission
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/stages.py   # another commit's src

Needs valgrind (apt-get install -y valgrind). A variant takes about three minutes here;
two run at once (``--parallel``, default 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchkit.common import CHAT_BODY, REPO_DIR, VENV_BIN, WORK_DIR, callgrind_totals
from benchkit.upstream import Nginx

OUT_DIR = WORK_DIR / "stages"
DILATE = 50
ADMIN_KEY = "rg_stages_" + "x" * 32
BODY = CHAT_BODY.encode()  # the bench's chat request
VARIANTS = ("none", "metrics", "admission", "usage", "timeout")


def measure(variant: str, requests: int, warmup: int) -> dict[str, float]:
    """Instructions a request (event loop, every thread) for one variant, in a child
    process under callgrind."""
    out = OUT_DIR / variant
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [
        "valgrind", "--tool=callgrind", "--separate-threads=yes",
        f"--callgrind-out-file={out}/out", str(VENV_BIN / "python"), __file__, "--child",
        variant, "--requests", str(requests), "--warmup", str(warmup),
    ]  # fmt: skip
    with open(out / "child.log", "wb") as log:
        subprocess.run(command, cwd=REPO_DIR, stdout=log, stderr=subprocess.STDOUT, check=True)
    loaded, idle = callgrind_totals(out / "out.1"), callgrind_totals(out / "out.2")
    main = min(loaded, key=int)  # the first thread is the event loop's
    return {
        "main": (loaded[main] - idle.get(main, 0)) / requests,
        "all": (sum(loaded.values()) - sum(idle.values())) / requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--without", choices=VARIANTS[1:], action="append", default=[])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop  # as the gateway runs

        uvloop.run(_child(args.child, args.requests, args.warmup))
        return
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind missing: apt-get install -y valgrind")
    variants = ["none", *dict.fromkeys(args.without)]
    with Nginx(), ThreadPoolExecutor(args.parallel) as pool:
        counted = pool.map(lambda v: measure(v, args.requests, args.warmup), variants)
        results = dict(zip(variants, counted, strict=True))
    whole = results["none"]
    print(f"whole gateway: {whole['main']:,.0f} instructions a request on the event loop, "
          f"{whole['all']:,.0f} in all threads")  # fmt: skip
    for variant in variants[1:]:
        figures = results[variant]
        print(f"{variant}: {whole['main'] - figures['main']:,.0f} on the event loop "
              f"({(whole['main'] - figures['main']) / whole['main']:.1%}), "
              f"{whole['all'] - figures['all']:,.0f} in all threads")  # fmt: skip


# the child: one variant, in process, under callgrind


async def _child(variant: str, requests: int, warmup: int) -> None:
    work = Path(tempfile.mkdtemp(prefix=f"stages-{variant}-"))
    os.environ.update({
        "RELAYGATE_DATABASE_URL": f"sqlite+aiosqlite:///{work}/gateway.db",
        "RELAYGATE_ADMIN_KEY": ADMIN_KEY,
        "RELAYGATE_USAGE__OUTBOX_DIR": str(work / "outbox"),
        "RELAYGATE_USAGE__WRITE_INTERVAL": str(0.2 * DILATE),
        "RELAYGATE_USAGE__FSYNC_WINDOW": "1",
        "RELAYGATE_RESPONSES__SAVE_WINDOW": str(0.05 * DILATE),
    })  # fmt: skip
    try:
        await _serve(variant, requests, warmup)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _serve(variant: str, requests: int, warmup: int) -> None:
    import relaygate.asgi
    import relaygate.observability.metrics
    from relaygate.app import create_app
    from relaygate.cli import prepare_database
    from relaygate.settings import load_settings

    settings = load_settings(REPO_DIR / "bench" / "relaygate.yaml")
    await asyncio.to_thread(prepare_database, settings)
    relaygate.asgi.WATCH_AFTER = 3600.0  # see the module docstring
    with contextlib.suppress(AttributeError):  # code older than the metrics' tallies
        relaygate.observability.metrics.FLUSH_EVERY = 0.25 * DILATE  # type: ignore[attr-defined]
    app = create_app(settings)
    await app.startup()
    try:
        _take_out(variant, app.state)
        for _ in range(warmup):
            await _one(app)
        await asyncio.sleep(1)
        _control("-z")
        started = time.monotonic()
        for _ in range(requests):
            await _one(app)
        elapsed = time.monotonic() - started
        settle = 1.5 * 0.2 * DILATE + 1  # every window has closed, its batch written
        await asyncio.sleep(settle)
        _control("-d")
        _control("-z")
        await asyncio.sleep(elapsed + settle)
        _control("-d")
    finally:
        await app.shutdown()


def _control(flag: str) -> None:
    subprocess.run(["callgrind_control", flag, str(os.getpid())], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


async def _one(app: Any) -> None:
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.sleep(3600)  # the client stays: no disconnect
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [
        (b"host", b"127.0.0.1"), (b"authorization", b"Bearer " + ADMIN_KEY.encode()),
        (b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode()),
    ]  # fmt: skip
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 18000), "state": {},
    }  # fmt: skip
    await app(scope, receive, send)
    if sent[0]["status"] != 200:
        raise SystemExit(f"the request answered {sent[0]['status']}: {sent[1]['body'][:300]!r}")


def _take_out(variant: str, state: Any) -> None:
    import relaygate.pipeline

    if variant == "metrics":
        metrics = state.metrics
        metrics.started = metrics.finished = metrics.used = lambda *args: None
    elif variant == "admission":
        from relaygate.limits.admission import Admitted

        async def admit(principal: Any, request_id: str, *, model: str, **_: Any) -> Admitted:
            return Admitted(None, [], 0, model)

        async def settle(*args: Any, **kwargs: Any) -> None:
            return None

        state.admission.admit, state.admission.settle = admit, settle
    elif variant == "usage":
        state.recorder.append = lambda record: None
    elif variant == "timeout":

        class _Untimed:  # asyncio as the pipeline sees it, but timeout() a no-op
            def __getattr__(self, name: str) -> Any:
                return getattr(asyncio, name)

            @staticmethod
            def timeout(delay: float | None) -> contextlib.nullcontext[None]:
                return contextlib.nullcontext()

        relaygate.pipeline.asyncio = _Untimed()  # type: ignore[assignment]


if __name__ == "__main__":
    main()
