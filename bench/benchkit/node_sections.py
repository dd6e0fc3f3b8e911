"""Section 11: a pool of equal model nodes; does throughput scale with the node count?"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import urllib.request
from pathlib import Path

from . import loadgen, procs
from .common import (
    CHAT,
    GATEWAY_PORT,
    HOST,
    REPO_DIR,
    WORK_DIR,
    BenchError,
    Options,
    Section,
    Target,
    cmdline,
    port_is_free,
    wait_for,
)
from .gateway import Gateway, check

NODE_PORTS = [18101, 18102, 18103, 18104]
SERVICE_S = 0.2  # each fake node answers in 200 ms ...
NODE_CAP = 2  # ... two at a time: 10 requests/s a node at most
GATEWAY_CAP = NODE_CAP + 1  # one more waits at the node itself: no idle gap between answers
CONNS = 16  # enough to keep 4 nodes' slots busy with some queued in the gateway
BODY = json.dumps(
    {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
)


def _config(count: int) -> Path:
    """A gateway config with one pool of ``count`` nodes (bench/.work/nodes-<count>.yaml)."""
    nodes = "\n".join(
        f"      - {{name: node-{i + 1}, base_url: 'http://{HOST}:{port}'}}"
        for i, port in enumerate(NODE_PORTS[:count])
    )
    text = (
        "# written by bench/run.py (section nodes)\n"
        "cache: {enabled: false}\n"
        "pools:\n"
        "  bench:\n"
        f"    max_concurrency: {GATEWAY_CAP}\n"
        "    max_queue: 64\n"
        "    probe_interval: 5\n"
        "    nodes:\n"
        f"{nodes}\n"
    )
    path = WORK_DIR / f"nodes-{count}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _node_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/api/version", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _start_nodes() -> tuple[object, str]:
    for port in NODE_PORTS:
        if not port_is_free(port):
            raise BenchError(f"127.0.0.1:{port} is already in use; stop whatever listens there")
    argv = [
        sys.executable, "bench/benchkit/fake_nodes.py",
        "--ports", ",".join(map(str, NODE_PORTS)),
        "--service-time", str(SERVICE_S), "--max-concurrency", str(NODE_CAP),
    ]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_DIR)}
    proc = procs.spawn(argv, WORK_DIR / "fake-nodes.log", cwd=REPO_DIR, env=env)
    if not wait_for(lambda: all(_node_answers(p) for p in NODE_PORTS), 20):
        procs.stop(proc)
        raise BenchError(f"the fake nodes did not come up; see {WORK_DIR / 'fake-nodes.log'}")
    return proc, f"PYTHONPATH=. {cmdline(argv)}"


def nodes_scaling(sec: Section, opts: Options) -> None:
    """11. Throughput through a pool of 4 equal nodes vs one node, same load."""
    sec.details += [
        f"Fake Ollama nodes (tests/fakes/ollama_server.py) answer in {SERVICE_S * 1000:.0f} ms,",
        f"{NODE_CAP} at a time (at most {NODE_CAP / SERVICE_S:.0f} requests/s a node); the",
        f"pool's max_concurrency is {GATEWAY_CAP} a node (one waits at the node, as Ollama queues",
        "beyond OLLAMA_NUM_PARALLEL, so the node never idles between answers); the rest wait",
        f"in the gateway's queues. wrk -t1 -c{CONNS} for {opts.seconds} s after a",
        f"{opts.warmup_s} s warm-up, through a 1-worker gateway whose pool has 1 node, then",
        f"another whose pool has 4, alternated for {opts.rounds} rounds.",
        "",
    ]
    if opts.direct_only:
        sec.details.append("Skipped: --direct-only (this section has no direct run).")
        return
    proc, nodes_line = _start_nodes()
    rounds: list[dict[int, loadgen.LoadResult]] = []
    lines = [f"Nodes: `{nodes_line}`"]
    try:
        with contextlib.ExitStack() as stack:
            targets = {}
            for port, count in ((GATEWAY_PORT, 1), (GATEWAY_PORT + 1, 4)):
                gw = stack.enter_context(Gateway(opts, 1, port=port, config=_config(count)))
                check(gw.base, opts.headers, BODY)
                script = loadgen.wrk_script(
                    BODY, {"Content-Type": "application/json", **opts.headers}, f"nodes-{count}"
                )
                loadgen.wrk(gw.base + CHAT, script, 1, CONNS, opts.warmup_s)
                targets[count] = (gw.base + CHAT, script)
                lines.append(gw.line())
            for _ in range(opts.rounds):  # alternated, so that a busy moment hits both
                rounds.append(
                    {n: loadgen.wrk(url, script, 1, CONNS, opts.seconds)
                     for n, (url, script) in targets.items()}
                )  # fmt: skip
    finally:
        procs.stop(proc)  # type: ignore[arg-type]
    ratios = sorted(r[4].rps / (4 * r[1].rps) if r[1].rps else 0.0 for r in rounds)
    ratio = statistics.median(ratios)
    errors = sum(r.error_count for found in rounds for r in found.values())
    ceiling = NODE_CAP / SERVICE_S
    sec.details += [
        "| round | 1 node req/s | 4 nodes req/s | 4 nodes ÷ (4 × 1 node) | p50 1 / 4 | errors |",
        "|---|---|---|---|---|---|",
        *(
            f"| {i + 1} | {r[1].rps:.1f} | {r[4].rps:.1f} | {r[4].rps / (4 * r[1].rps):.2f} | "
            f"{r[1].p50_ms:.0f} / {r[4].p50_ms:.0f} ms | {r[1].error_count + r[4].error_count} |"
            for i, r in enumerate(rounds)
            if r[1].rps
        ),
        "",
        f"The fakes' ceiling: {ceiling:.0f} req/s a node, {4 * ceiling:.0f} for four.",
        "",
        *lines,
    ]
    sec.data = {f"round_{i + 1}": {f"{n}_nodes": vars(x) for n, x in r.items()}
                for i, r in enumerate(rounds)}  # fmt: skip
    measured = ", ".join(f"×{x:.2f}" for x in ratios)
    sec.targets.append(
        Target(
            "4 equal nodes: throughput vs 4 × one node",
            "≥ 0.90, no errors",
            f"×{ratio:.2f} (median of {len(ratios)} rounds: {measured}), {errors} errors",
            ratio >= 0.9 and errors == 0,
        )
    )
