"""CPU time per request of the pipeline, in process: tracing off, and on (exporting over
OTLP/HTTP to a receiver in another process, so that its CPU is not counted here).

    PYTHONPATH=src .venv/bin/python bench/tracing_cost.py [--requests 3000] [--stream]

The ASGI app is called directly (no HTTP server, no load tool): what is measured is the
pipeline and everything it runs, its background threads included (usage outbox, span
export), with the development model ``mock`` as the upstream. Each mode runs in a fresh
process, alternating, ``--rounds`` times; the figure is CPU seconds (``time.process_time``)
per request after a warm-up. Pointing PYTHONPATH at another commit's src/ measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RECEIVER = """
import asyncio, sys
from aiohttp import web

async def traces(request):
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")

async def main():
    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1])).start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def measure(
    tracing: bool, requests: int, stream: bool, endpoint: str, ratio: float = 1.0
) -> dict[str, Any]:
    from relaygate.app import create_app
    from relaygate.auth.bootstrap import ensure_admin_key
    from relaygate.settings import load_settings
    from relaygate.store.migrate import upgrade

    work = Path(tempfile.mkdtemp(prefix="relaygate-tracing-cost-"))
    url = f"sqlite+aiosqlite:///{work / 'db.sqlite'}"
    await asyncio.to_thread(upgrade, url)
    key = "rg_" + "b" * 40
    overrides: dict[str, Any] = {
        "database_url": url,
        "admin_key": key,
        "discover_ollama": [],
        "usage": {"outbox_dir": str(work / "outbox")},
        "cache": {"enabled": False},
    }
    if tracing:
        overrides["tracing"] = {"enabled": True, "endpoint": endpoint, "sample_ratio": ratio}
    settings = load_settings(environ={}, overrides=overrides)
    await ensure_admin_key(settings)
    app = create_app(settings)
    await app.startup()
    body = {"model": "mock", "messages": [{"role": "user", "content": "hello there"}]}
    if stream:
        body["stream"] = True
        app.state.router.get("mock").deployments[0].chunk_delay = 0.0  # type: ignore[union-attr]
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
        ],
    }

    async def one() -> int:
        sent = False
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await asyncio.Event().wait()  # the client stays
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(dict(scope), receive, send)
        return status

    for _ in range(max(200, requests // 10)):  # warm-up
        status = await one()
        assert status == 200, status
    started_cpu, started = time.process_time(), time.perf_counter()
    for _ in range(requests):
        await one()
    cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
    await app.shutdown()  # flushes what the outbox and the span exporter hold
    return {"cpu_us": cpu / requests * 1e6, "wall_us": wall / requests * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--modes", default="off,on", help="comma list of: off, on")
    parser.add_argument("--sample-ratio", type=float, default=1.0, help="tracing.sample_ratio")
    parser.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        on = args.child == "on"
        result = asyncio.run(
            measure(on, args.requests, args.stream, args.endpoint, args.sample_ratio)
        )
        print(json.dumps(result))
        return
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    try:
        time.sleep(1.0)
        results: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for mode in args.modes.split(","):
                argv = [sys.executable, __file__, "--child", mode, "--requests", str(args.requests)]
                argv += ["--endpoint", f"http://127.0.0.1:{port}"]
                argv += ["--stream"] if args.stream else []
                argv += ["--sample-ratio", str(args.sample_ratio)]
                out = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy())
                if out.returncode:
                    raise SystemExit(out.stderr)
                figure = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault(mode, []).append(figure["cpu_us"])
                print(f"tracing {mode}: {figure['cpu_us']:,.0f} µs CPU/request", flush=True)
        for mode, figures in results.items():
            ordered = sorted(figures)
            print(f"tracing {mode}: median {ordered[len(ordered) // 2]:,.0f} µs CPU/request")
    finally:
        receiver.terminate()
        receiver.wait()


if __name__ == "__main__":
    main()
