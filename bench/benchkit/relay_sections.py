"""Section 15: added latency at concurrency 1 for large answers.

A complete answer from an OpenAI-compatible upstream to an OpenAI client is relayed
as the bytes it came as, only ``model`` replaced (providers/base.py ``relayed``): the
gateway no longer decodes the whole body and encodes it again, a cost that grows with
the answer. The canned answer of sections 1-2 is 285 bytes, where that cost is a
microsecond or two; here the answers are a ~6.7 kB chat answer and a 1,536-dimension
embedding (~19 kB). Run with ``--ref <commit>`` to measure another version of the
gateway the same way.
"""

from __future__ import annotations

import statistics
import time

from . import procs
from .common import CHAT, DIRECT, VIA, Options, Section
from .gateway import Gateway, check_gateway
from .http_sections import load_table
from .loadgen import SETTLE_S, LoadResult, wrk, wrk_script

EMBEDDINGS = "/v1/embeddings"
# (label, direct URL, gateway path, request body)
ANSWERS = [
    (
        "chat, 285 B answer (sections 1-2's)",
        DIRECT + CHAT,
        CHAT,
        '{"model":"bench-model","messages":[{"role":"user","content":"Say hello."}]}',
    ),
    (
        "chat, 6.7 kB answer",
        DIRECT + "/big" + CHAT,
        CHAT,
        '{"model":"bench-big","messages":[{"role":"user","content":"Say hello."}]}',
    ),
    (
        "embedding, 1,536 dimensions (19 kB)",
        DIRECT + EMBEDDINGS,
        EMBEDDINGS,
        '{"model":"bench-embed","input":"Say hello."}',
    ),
]


def large_answers(sec: Section, opts: Options) -> None:
    """15. Added p50/p99 at c=1, 1 worker, for large answers (no target: a figure to follow)."""
    sec.details += [
        f"wrk -t1 -c1, {opts.rounds} rounds; in each, for each answer, {opts.seconds} s direct",
        f"then {opts.seconds} s via the gateway (1 worker, keys, limits and usage on, cache off),",
        f"after a {opts.warmup_s} s warm-up of each. Added = via minus direct of the same round;",
        "figures: the median round. CPU = the gateway's CPU time (all its threads) per request",
        "served, which moves less than latency with what else runs on the machine.",
        "",
    ]
    headers = {"Content-Type": "application/json", **opts.headers}
    runs = [
        (label, direct, path, wrk_script(body, headers, f"large-{n}"))
        for n, (label, direct, path, body) in enumerate(ANSWERS)
    ]
    rows: list[tuple[str, LoadResult]] = []
    pairs: dict[str, list[tuple[LoadResult, LoadResult]]] = {label: [] for label, *_ in runs}
    cpu: dict[str, list[float]] = {label: [] for label, *_ in runs}  # µs per request
    lines: list[str] = []

    def rounds(gw: Gateway | None) -> None:
        for _, direct, path, script in runs:  # warm-ups, not reported
            wrk(direct, script, 1, 1, opts.warmup_s)
            if gw is not None:
                wrk(VIA + path, script, 1, 1, opts.warmup_s)
        if gw is not None:
            time.sleep(SETTLE_S)  # what the warm-ups' ends started (loadgen.py)
        for i in range(1, opts.rounds + 1):
            for label, direct, path, script in runs:
                plain = wrk(direct, script, 1, 1, opts.seconds)
                rows.append((f"round {i}: {label}: direct → nginx", plain))
                if gw is not None:
                    before = procs.tree_cpu_seconds(gw.pid)
                    via = wrk(VIA + path, script, 1, 1, opts.seconds)
                    used = procs.tree_cpu_seconds(gw.pid) - before
                    rows.append((f"round {i}: {label}: via relaygate", via))
                    pairs[label].append((plain, via))
                    cpu[label].append(used / max(1, via.requests) * 1e6)

    if opts.direct_only:
        rounds(None)
    else:
        with Gateway(opts, 1) as gw:
            check_gateway(opts, gw)
            rounds(gw)
            lines = ["", gw.line()]
    sec.details += [*load_table(rows), *lines]
    sec.data = {label: vars(r) for label, r in rows}
    if not opts.direct_only:
        sec.details += ["", "Added by the gateway (median round):", ""]
        for label, measured in pairs.items():
            p50 = statistics.median(v.p50_ms - d.p50_ms for d, v in measured)
            p99 = statistics.median(v.p99_ms - d.p99_ms for d, v in measured)
            used = statistics.median(cpu[label])
            sec.details.append(
                f"- {label}: p50 {p50:+.3f} ms, p99 {p99:+.3f} ms, CPU {used:,.0f} µs per request"
            )
        sec.data["cpu_us_per_request"] = cpu
