"""Section 11: a dial-out node (`relaygate node`): added time to first chunk, 200 streams.

Two deployments of the same nginx stream, both through the gateway: `bench-stream` calls
nginx itself; `bench-node` goes through a `relaygate node` agent that dialed out to the
gateway over one WebSocket (kind openai, upstream nginx /stream/v1). The difference of
their TTFC percentiles is what the tunnel adds. Then 200 paced streams (`bench-node-slow`,
nginx /slow/v1, ~6.4 s each) at once through a second agent, all on its one connection.
"""

from __future__ import annotations

import json
import os
import urllib.request

from . import procs, sse_client
from .common import (
    CHAT,
    GATEWAY_PORT,
    STREAM_BODY,
    UPSTREAM_PORT,
    WORK_DIR,
    BenchError,
    Options,
    Section,
    Target,
    added,
    cmdline,
    percentile,
    wait_for,
)
from .gateway import EXE, Gateway, check_gateway
from .stream_sections import stream_table

NODE_BODY = STREAM_BODY.replace("bench-stream", "bench-node")
SLOW_NODE_BODY = STREAM_BODY.replace("bench-stream", "bench-node-slow")
CONCURRENT = 200
NODES = {"bench": "/stream/v1", "bench-slow": "/slow/v1"}


def _post_json(url: str, body: dict[str, str], headers: dict[str, str]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={**headers, "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as reply:
        found: dict[str, object] = json.loads(reply.read())
    return found


def _connected(base: str, headers: dict[str, str]) -> set[str]:
    request = urllib.request.Request(base + "/admin/node-tokens", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as reply:
        tokens = json.loads(reply.read())["data"]
    return {t["name"] for t in tokens if t["connected"]}


def agent_argv(gateway: str, token: str, node: str) -> list[str]:
    return [
        str(EXE), "node", "--gateway", gateway, "--token", token, "--kind", "openai",
        "--upstream", f"http://127.0.0.1:{UPSTREAM_PORT}{NODES[node]}", "--capacity", "256",
        "--log-level", "warning",
    ]  # fmt: skip


def _start_agents(gw: Gateway, opts: Options, sec: Section) -> dict[str, int]:
    """Start one agent per node; their pids by node."""
    pids = {}
    for node in NODES:
        token = _post_json(gw.base + "/admin/node-tokens", {"name": node}, opts.headers)
        argv = agent_argv(gw.base, str(token["token"]), node)
        pids[node] = procs.spawn(argv, WORK_DIR / f"node-{node}.log").pid
        shown = [("<node token>" if a == token["token"] else a) for a in argv]
        sec.details.append(f"Agent: `{cmdline(shown)}`")
    if not wait_for(lambda: _connected(gw.base, opts.headers) >= set(NODES), 20, 0.1):
        raise BenchError("the node agents did not connect within 20 s (see bench/.work/node-*.log)")
    return pids


def _cpu_ms(pid: int) -> float:
    """CPU time (user + system) a process has used, in ms."""
    ticks = procs.cpu_ticks().get(pid, 0)
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


def node_cost(sec: Section, opts: Options) -> None:
    """12. What a dial-out node adds to time to first chunk; 200 streams through one agent."""
    if opts.direct_only:
        raise BenchError("needs the gateway")
    rounds = max(1, opts.rounds)
    sec.details += [
        f"{rounds} round(s) of {opts.streams} sequential streams per deployment, in alternating",
        "batches of 50, through the gateway (1 worker), after 100 warm-up each: `bench-stream`",
        "(nginx direct) and",
        "`bench-node` (the same nginx stream through a `relaygate node` agent on this machine",
        "that dialed out to the gateway). Added = node minus direct, per percentile.",
        f"Then {CONCURRENT} paced streams at once (`bench-node-slow`, 64 events 0.1 s apart) "
        "through one agent.",
        "",
    ]
    with Gateway(opts, workers=1) as gw:
        sec.details.append(gw.line())
        check_gateway(opts, gw)
        agents = _start_agents(gw, opts, sec)
        pairs50: list[tuple[float, float]] = []
        pairs99: list[tuple[float, float]] = []
        rows = []
        for body in (STREAM_BODY, NODE_BODY):  # warm-up
            sse_client.run_async(
                sse_client.sequential(GATEWAY_PORT, CHAT, body, 100, headers=opts.headers)
            )
        cpu: list[float] = []  # the agent's CPU ms per stream, per round
        for i in range(1, rounds + 1):
            before = _cpu_ms(agents["bench"])
            samples = _interleaved(opts)
            cpu.append((_cpu_ms(agents["bench"]) - before) / opts.streams)
            stats = {}
            for label, got in samples.items():
                ok = [s.ttfc_s * 1000 for s in got if s.ok]
                if len(ok) != len(got):
                    raise BenchError(f"{len(got) - len(ok)} {label} streams failed")
                stats[label] = (percentile(ok, 50), percentile(ok, 99))
                rows.append((f"round {i}: {label}", _row(got)))
            pairs50.append((stats["direct deployment"][0], stats["via node"][0]))
            pairs99.append((stats["direct deployment"][1], stats["via node"][1]))
        sec.targets.append(added("dial-out node: added TTFC p99", 5.0, pairs99))
        sec.targets.append(added("dial-out node: added TTFC p50", 5.0, pairs50))
        sec.details.append(
            "The agent's own CPU per stream (64 events relayed), per round: "
            + ", ".join(f"{ms:.3f} ms" for ms in cpu)
            + " (CPU time: far less skewed by a busy machine than wall time)."
        )
        gauge = sse_client.OpenGauge()
        held = sse_client.run_async(
            sse_client.concurrent(
                GATEWAY_PORT, CHAT, SLOW_NODE_BODY, CONCURRENT, headers=opts.headers,
                gauge=gauge, timeout=60.0,
            )
        )  # fmt: skip
        good = sum(1 for s in held if s.ok)
        rows.append((f"{CONCURRENT} at once via one agent", _row(held)))
        sec.targets.append(
            Target(
                f"{CONCURRENT} concurrent streams through one agent",
                f"{CONCURRENT} complete",
                f"{good} complete, {gauge.peak} open at once at the peak",
                good == CONCURRENT and gauge.peak == CONCURRENT,
            )
        )
        sec.data.update(
            {"ttfc_pairs_p50": pairs50, "ttfc_pairs_p99": pairs99, "held_ok": good,
             "held_peak": gauge.peak, "agent_cpu_ms_per_stream": cpu}
        )  # fmt: skip
    sec.details += ["", *stream_table(rows)]


def _interleaved(opts: Options, batch: int = 50) -> dict[str, list[sse_client.StreamSample]]:
    """``opts.streams`` streams per deployment, in alternating batches: both see the same
    moments of a busy machine, so their difference is the tunnel's, not the load's."""
    found: dict[str, list[sse_client.StreamSample]] = {"direct deployment": [], "via node": []}
    bodies = {"direct deployment": STREAM_BODY, "via node": NODE_BODY}
    while len(found["via node"]) < opts.streams:
        for label, body in bodies.items():
            count = min(batch, opts.streams - len(found[label]))
            found[label] += sse_client.run_async(
                sse_client.sequential(GATEWAY_PORT, CHAT, body, count, headers=opts.headers)
            )
    return found


def _row(samples: list[sse_client.StreamSample]) -> dict[str, float]:
    ok = [s for s in samples if s.ok]
    ttfc = [s.ttfc_s * 1000 for s in ok]
    total = [s.total_s * 1000 for s in ok]
    return {
        "streams": len(samples),
        "ok": len(ok),
        "ttfc_p50_ms": percentile(ttfc, 50),
        "ttfc_p90_ms": percentile(ttfc, 90),
        "ttfc_p99_ms": percentile(ttfc, 99),
        "total_p50_ms": percentile(total, 50),
        "total_p99_ms": percentile(total, 99),
        "events_min": min((s.events for s in samples), default=0),
        "events_max": max((s.events for s in samples), default=0),
    }
