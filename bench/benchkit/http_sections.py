"""Sections 1-3: non-streaming latency, throughput and open-loop latency (wrk, hey)."""

from __future__ import annotations

from pathlib import Path

from . import loadgen, procs
from .common import (
    CHAT,
    CHAT_BODY,
    DIRECT,
    MESSAGES,
    MESSAGES_BODY,
    VIA,
    Options,
    Section,
    Target,
    added,
    added_relative,
    fmt_ms,
)
from .gateway import Gateway, check_gateway
from .loadgen import LoadResult


def _chat_script(opts: Options) -> Path:
    headers = {"Content-Type": "application/json", **opts.headers}
    return loadgen.wrk_script(CHAT_BODY, headers, "chat")


def _wrk(opts: Options, base: str, conns: int) -> LoadResult:
    script = _chat_script(opts)
    loadgen.warm_up(base + CHAT, script, 1, min(conns, 8), opts.warmup_s)
    return loadgen.wrk(base + CHAT, script, 1, conns, opts.seconds)


def _errors(result: LoadResult) -> str:
    return ", ".join(f"{k} {v}" for k, v in result.errors.items()) or "0"


def load_table(rows: list[tuple[str, LoadResult]]) -> list[str]:
    """Markdown table of load runs, plus their command lines."""
    lines = ["| Run | Requests | Req/s | p50 | p90 | p99 | max | Errors |", "|---" * 8 + "|"]
    for label, r in rows:
        lines.append(
            f"| {label} | {r.requests} | {r.rps:,.0f} | {fmt_ms(r.p50_ms)} | {fmt_ms(r.p90_ms)}"
            f" | {fmt_ms(r.p99_ms)} | {fmt_ms(r.max_ms)} | {_errors(r)} |"
        )
    lines += ["", "Commands:", "", "```"]
    unique = dict.fromkeys((label.split(": ", 1)[-1], r.command) for label, r in rows)
    lines += [f"# {label}\n{command}" for label, command in unique]
    return [*lines, "```"]


def _messages_script(opts: Options) -> Path:
    """The Anthropic Messages request, with the key as Anthropic's clients send it."""
    headers = {"Content-Type": "application/json", "x-api-key": opts.api_key}
    headers["anthropic-version"] = "2023-06-01"
    return loadgen.wrk_script(MESSAGES_BODY, headers, "messages")


def _latency_rounds(
    opts: Options, runs: list[tuple[str, str, Path]]
) -> list[tuple[str, LoadResult]]:
    """wrk -c1 against each (label, url, script) in turn, ``opts.rounds`` times, after one
    warm-up each."""
    rows = []
    for _, url, script in runs:
        loadgen.warm_up(url, script, 1, 1, opts.warmup_s)
    for i in range(1, opts.rounds + 1):
        for label, url, script in runs:
            rows.append((f"round {i}: {label}", loadgen.wrk(url, script, 1, 1, opts.seconds)))
    return rows


def latency(sec: Section, opts: Options) -> None:
    """1. Added latency at concurrency 1, non-streaming, 1 worker (wrk, closed loop); the
    same through the Anthropic Messages API (/v1/messages), against the same upstream."""
    sec.details += [
        f"wrk -t1 -c1, {opts.rounds} rounds of {opts.seconds} s direct then {opts.seconds} s via",
        f"the gateway, after a {opts.warmup_s} s warm-up of each. Targets: the median round.",
        "/v1/messages (Anthropic's API, `x-api-key`) is translated to the same upstream call:",
        "its added latency is its p50 minus the direct p50 of the same round.",
        "",
    ]
    lines: list[str] = []
    direct = ("direct → nginx", DIRECT + CHAT, _chat_script(opts))
    if opts.direct_only:
        rows = _latency_rounds(opts, [direct])
    else:
        runs = [
            direct,
            ("via relaygate, 1 worker", VIA + CHAT, _chat_script(opts)),
            ("via relaygate, 1 worker, /v1/messages", VIA + MESSAGES, _messages_script(opts)),
        ]
        with Gateway(opts, 1) as gw:
            check_gateway(opts, gw)
            rows, lines = _latency_rounds(opts, runs), ["", gw.line()]
    sec.details += [*load_table(rows), *lines]
    sec.data = {label: vars(r) for label, r in rows}
    if not opts.direct_only:
        rounds = [(d, v, m) for (_, d), (_, v), (_, m) in zip(*[iter(rows)] * 3, strict=True)]
        sec.targets += [
            added(
                "Added p50 latency, c=1, 1 worker",
                0.3,  # issue 15 (it was 0.5)
                [(d.p50_ms, v.p50_ms) for d, v, _ in rounds],
            ),
            added(
                "Added p99 latency, c=1, 1 worker",
                1.0,  # issue 15 (it was 1.5)
                [(d.p99_ms, v.p99_ms) for d, v, _ in rounds],
            ),
            added_relative(
                "Added p50, c=1: /v1/messages vs /v1/chat/completions",
                1.1,
                [(d.p50_ms, v.p50_ms, m.p50_ms) for d, v, m in rounds],
            ),
        ]


def throughput(sec: Section, opts: Options) -> None:
    """2. Closed-loop throughput at concurrency 32; 2 workers (target) and 1 worker (reference)."""
    sec.details += [
        f"wrk -t1 -c32 for {opts.seconds} s after a {opts.warmup_s} s warm-up. 1 worker keeps",
        "its limits in process (memory backend). 2 workers share theirs through Redis (the",
        "gateway refuses several workers without it), with a redis_prefix of their own.",
        "",
    ]
    lines: list[str] = []
    per_request: dict[str, float] = {}
    rows = [("direct → nginx", _wrk(opts, DIRECT, 32))]
    for workers in () if opts.direct_only else (1, 2):
        with Gateway(opts, workers, redis=workers > 1) as gw:
            check_gateway(opts, gw)
            label = f"via relaygate, {workers} worker{'s' if workers > 1 else ''}"
            label += ", Redis limits" if workers > 1 else ", memory limits"
            script = _chat_script(opts)
            loadgen.warm_up(VIA + CHAT, script, 1, 8, opts.warmup_s)
            before = procs.tree_cpu_seconds(gw.pid)
            result = loadgen.wrk(VIA + CHAT, script, 1, 32, opts.seconds)
            used = procs.tree_cpu_seconds(gw.pid) - before
            rows.append((label, result))
            per_request[label] = used / max(1, result.requests) * 1e6
            lines += ["", gw.line()]
    sec.details += [*load_table(rows), *lines]
    if per_request:
        # CPU time per request barely moves with what else the machine runs (unlike req/s):
        # it shows what a worker pays per request, and what grows with the worker count.
        sec.details += ["", "Gateway CPU time (all its processes) per request served:", ""]
        sec.details += [f"- {label}: {us:,.0f} µs" for label, us in per_request.items()]
    sec.data = {label: vars(r) for label, r in rows}
    sec.data["cpu_us_per_request"] = per_request
    if len(rows) == 3:
        one, via = rows[1][1], rows[2][1]
        sec.targets += [
            Target("One worker at saturation (c=32): p99 / p50", "≤ 3",
                   f"{one.p99_ms / one.p50_ms:.2f} ({fmt_ms(one.p50_ms)} / "
                   f"{fmt_ms(one.p99_ms)})", one.p99_ms <= 3 * one.p50_ms),
            Target("Throughput, c=32, 2 workers", "≥ 3,000 req/s", f"{via.rps:,.0f} req/s",
                   via.rps >= 3000),
            Target("Errors, c=32, 2 workers", "0", _errors(via), via.error_count == 0),
        ]  # fmt: skip


def _open_loop_runs(opts: Options, base: str) -> list[LoadResult]:
    """Paced wrk at 1,000 req/s, then hey -c 50 -q 20 (same offered rate, but bursty)."""
    loadgen.warm_up(base + CHAT, _chat_script(opts), 1, 8, opts.warmup_s)
    headers = {"Content-Type": "application/json", **opts.headers}
    paced = loadgen.wrk_script(CHAT_BODY, headers, "paced", rate=1000)
    return [
        loadgen.wrk(base + CHAT, paced, 1, 50, opts.seconds),
        loadgen.hey(base + CHAT, CHAT_BODY, opts.headers, (50, 20), opts.seconds),
    ]


OPEN_LOOP_NOTES = [
    "Offered 1,000 req/s for {seconds} s, two ways:",
    "",
    "- **wrk, paced** (the target figure): bench/.work/paced.lua gives wrk a `delay()` so the",
    "  k-th request is due at start + k ms whatever happened to earlier ones (up to 50",
    "  connections in flight): evenly spaced, open-loop arrivals. wrk times each request",
    "  from its actual send.",
    "- **hey -c 50 -q 20** (reference): hey's 50 workers tick in lockstep, so the 1,000 req/s",
    "  arrive as a burst of 50 every 50 ms; p99 there is mostly queueing inside each burst.",
    "  hey reports latencies to 0.1 ms.",
    "",
]


def open_loop(sec: Section, opts: Options) -> None:
    """3. Offered 1,000 req/s, 1 worker: paced wrk (target) and hey (bursty reference)."""
    sec.details += [line.format(seconds=opts.seconds) for line in OPEN_LOOP_NOTES]
    direct = _open_loop_runs(opts, DIRECT)
    rows = [("direct → nginx, wrk paced", direct[0]), ("direct → nginx, hey", direct[1])]
    lines: list[str] = []
    if not opts.direct_only:
        with Gateway(opts, 1) as gw:
            check_gateway(opts, gw)
            via = _open_loop_runs(opts, VIA)
        rows += [("via relaygate 1 worker, wrk paced", via[0])]
        rows += [("via relaygate 1 worker, hey", via[1])]
        lines = ["", gw.line()]
    sec.details += [*load_table(rows), *lines]
    sec.data = {label: vars(r) for label, r in rows}
    if len(rows) == 4:
        d, v = rows[0][1], rows[2][1]
        target = added("Added p99 at 1,000 req/s offered, 1 worker", 5, [(d.p99_ms, v.p99_ms)])
        target.measured += f"; {v.rps:,.0f} req/s achieved, errors {_errors(v)}"
        target.passed = bool(target.passed) and v.error_count == 0 and v.rps >= 950
        sec.targets.append(target)
