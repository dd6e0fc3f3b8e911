"""Section 7: what authentication and limits cost per request (issue 3).

a. In process, no HTTP (benchkit/limitbench.py): authenticate + admit + settle with the
   gateway's own objects, memory and Redis backends, and Redis round trips per request.
b. End to end, 1 worker: the same key through gateways with memory and with Redis limits,
   and a key whose tier has no limits (authentication only) for reference.
"""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import gateway, keys, limitbench, loadgen, redis_store, report
from .common import CHAT, CHAT_BODY, GATEWAY_PORT, Options, Section, Target, fmt_ms
from .http_sections import load_table
from .limitbench import AT_ONCE, STAGES, MicroRun
from .loadgen import LoadResult

MICRO_ROUNDS = 5
# (label, tier of the key it sends, Redis limits?) for each gateway of part b
E2E = (
    ("auth only (tier bench_open, no limits)", keys.OPEN_TIER, False),
    ("auth + memory limits (tier bench, 5 rules)", keys.BENCH_TIER, False),
    ("auth + Redis limits (tier bench, 5 rules)", keys.BENCH_TIER, True),
)

INTRO = [
    "**a. In process** (no HTTP): `benchkit/limitbench.py` builds the gateway's own objects",
    "from bench/relaygate.yaml (load_settings, a migrated SQLite database with the admin key,",
    "open_state) and times what every request runs: `auth.authenticate(scope)`, then",
    "`admission.admit(...)` (model bench-model, 100-byte body, max_tokens 16), then",
    "`admission.settle(admitted, usage)` (12 + 9 tokens). After 500 warm-up requests (the first",
    "reads the database) it runs {rounds} rounds; µs/request is the median round's mean. Two",
    "keys: the admin key (tier unlimited: 1 rule, requests_per_hour) and a key of tier bench",
    "(5 rules: requests per minute/hour/month, tokens per minute, max_concurrent). Redis:",
    "{redis}, a fresh redis_prefix per run. Round trips = connections the gateway's Redis client",
    "took from its pool (one per command sent alone, or per batch), per timed request; by",
    "stage: over 100 more requests; in brackets: 20 rounds of 32 requests at once, whose",
    "commands share batches (limits/redis.py, GatewayRedis.batched).",
    "Commands in scripts: what those scripts ran (GET, SET, TIME...), from INFO commandstats",
    "(Redis-wide: another client of that Redis at the same time would add to it).",
    "",
]


def _micro_row(run: MicroRun) -> str:
    spread = f"{min(run.totals_us):.1f} … {max(run.totals_us):.1f}"
    stages = " | ".join(f"{run.stage_us(stage):.1f}" for stage in STAGES)
    trips = "—" if run.round_trips is None else f"{run.round_trips:.2f}"
    if run.round_trips_at_once is not None:
        trips += f" ({run.round_trips_at_once:.2f} at {AT_ONCE})"
    inner = "—" if run.redis_commands is None else f"{run.redis_commands:.1f}"
    return (
        f"| {run.backend} | {run.key} ({_rules(run.rules)}) | **{run.median_us:.1f}** ({spread})"
        f" | {stages} | {run.p50_us:.1f} | {run.p99_us:.1f} | {trips} | {inner} |"
    )


def micro_table(runs: list[MicroRun]) -> list[str]:
    lines = [
        "| Backend | Key | µs/request (rounds: min … max) | authenticate | admit | settle"
        " | p50 | p99 | Redis round trips / request | Redis commands in scripts / request |",
        "|---" * 10 + "|",
    ]
    lines += [_micro_row(run) for run in runs]
    lines += ["", "Stages: µs, median round. p50/p99: over every timed request, µs."]
    for run in runs:
        if run.warnings:
            lines.append(f"\n{run.backend} warnings: {'; '.join(sorted(set(run.warnings)))}")
    return lines


def micro_targets(runs: list[MicroRun]) -> list[Target]:
    memory = [r for r in runs if r.backend == "memory"]
    redis = [r for r in runs if r.backend == "redis"]
    worst = max(r.median_us for r in memory)
    measured = ", ".join(f"{r.median_us:.1f} µs ({_rules(r.rules)})" for r in memory)
    targets = [
        Target("Auth + memory limits per request, in process", "≤ 100 µs", measured, worst <= 100)
    ]
    for r in redis:
        trips = r.round_trips or 0.0
        name = f"Redis round trips per request, {r.key} ({_rules(r.rules)})"
        measured = f"{trips:.2f} ({_by_stage(r)})"
        if r.round_trips_at_once is not None:  # a busy worker's commands share batches
            measured += f"; {r.round_trips_at_once:.2f} with {AT_ONCE} requests at once"
        targets.append(Target(name, "= 1", measured, trips <= 1.01))
    return targets


def _rules(count: int) -> str:
    return f"{count} rule{'' if count == 1 else 's'}"


def _by_stage(run: MicroRun) -> str:
    return ", ".join(f"{stage} {n:.2f}" for stage, n in run.stage_trips.items())


@dataclass
class _Gateway:
    """One gateway of part b, the key it is sent, and its runs."""

    label: str
    url: str
    script: Path
    line: str
    c1: list[LoadResult] = field(default_factory=list)
    c32: LoadResult | None = None


def _user_keys() -> dict[str, str]:
    """Per-run keys of the two bench tiers (secret -> tier), redacted in the report."""
    secrets = {keys.new_secret(): keys.BENCH_TIER, keys.new_secret(): keys.OPEN_TIER}
    for secret, tier in secrets.items():
        report.SECRETS[secret] = f"<{tier} key>"
    return secrets


def _start(opts: Options, stack: contextlib.ExitStack) -> list[_Gateway]:
    """The three gateways of part b, up at once on consecutive ports."""
    user_keys = _user_keys()
    by_tier = {tier: secret for secret, tier in user_keys.items()}
    started = []
    for i, (label, tier, redis) in enumerate(E2E):
        gw = stack.enter_context(
            gateway.Gateway(opts, 1, port=GATEWAY_PORT + i, redis=redis, user_keys=user_keys)
        )
        headers = keys.bearer(by_tier[tier])
        gateway.check(gw.base, headers)
        headers = {"Content-Type": "application/json", **headers}
        script = loadgen.wrk_script(CHAT_BODY, headers, f"chat-{tier}")
        started.append(_Gateway(label, gw.base + CHAT, script, gw.line()))
    return started


def _measure(opts: Options, gateways: list[_Gateway]) -> None:
    """c=1 in rounds alternating between the gateways, then c=32 on each."""
    for gw in gateways:
        loadgen.warm_up(gw.url, gw.script, 1, 1, opts.warmup_s)
    for _ in range(opts.rounds):
        for gw in gateways:
            gw.c1.append(loadgen.wrk(gw.url, gw.script, 1, 1, opts.seconds))
    for gw in gateways:
        loadgen.warm_up(gw.url, gw.script, 1, 8, opts.warmup_s)
        gw.c32 = loadgen.wrk(gw.url, gw.script, 1, 32, opts.seconds)


def _median(results: list[LoadResult], attr: str) -> float:
    return statistics.median(float(getattr(r, attr)) for r in results)


def e2e_table(gateways: list[_Gateway]) -> list[str]:
    lines = [
        "| Gateway, 1 worker | c=1 p50 | c=1 p99 | c=32 req/s | c=32 p50 | c=32 p99 | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for gw in gateways:
        c32 = gw.c32
        assert c32 is not None
        errors = sum(r.error_count for r in gw.c1) + c32.error_count
        p50, p99 = fmt_ms(_median(gw.c1, "p50_ms")), fmt_ms(_median(gw.c1, "p99_ms"))
        lines.append(
            f"| {gw.label} | {p50} | {p99} | {c32.rps:,.0f} | {fmt_ms(c32.p50_ms)}"
            f" | {fmt_ms(c32.p99_ms)} | {errors} |"
        )
    return lines


def _difference(more: _Gateway, less: _Gateway) -> str:
    assert more.c32 is not None and less.c32 is not None
    p50 = _median(more.c1, "p50_ms") - _median(less.c1, "p50_ms")
    p99 = _median(more.c1, "p99_ms") - _median(less.c1, "p99_ms")
    rps = more.c32.rps - less.c32.rps
    return (
        f"c=1 p50 {p50 * 1000:+.0f} µs, c=1 p99 {p99 * 1000:+.0f} µs; c=32 {rps:+,.0f} req/s"
        f" ({rps / less.c32.rps:+.0%})"
    )


def e2e_details(gateways: list[_Gateway]) -> list[str]:
    auth_only, memory, redis = gateways
    rows = [(f"round {i + 1}: c=1, {gw.label}", r) for gw in gateways for i, r in enumerate(gw.c1)]
    rows += [(f"c=32, {gw.label}", gw.c32) for gw in gateways if gw.c32 is not None]
    return [
        *e2e_table(gateways),
        "",
        f"- Memory limits − auth only: {_difference(memory, auth_only)}.",
        f"- Redis limits − memory limits: {_difference(redis, memory)}.",
        "",
        *load_table(rows),
        *[f"\n{gw.line}" for gw in gateways],
    ]


E2E_INTRO = [
    "**b. End to end**, 1 worker each: three gateways run at once (ports 18000-18002), each",
    "with its own database holding the same two keys. wrk -t1 -c1 in {rounds} rounds of",
    "{seconds} s that alternate between the gateways (c=1 figures: the median round), then",
    "wrk -t1 -c32 for {seconds} s on each, after a {warmup} s warm-up.",
    "",
]


def auth_cost(sec: Section, opts: Options) -> None:
    """7. Authentication + limits per request: in process, then end to end."""
    if opts.direct_only:
        sec.details.append("Skipped with --direct-only: this section measures the gateway.")
        return
    redis_url = redis_store.url()
    sec.details += [line.format(rounds=MICRO_ROUNDS, redis=redis_url) for line in INTRO]
    runs = limitbench.measure(None, MICRO_ROUNDS) + limitbench.measure(redis_url, MICRO_ROUNDS)
    sec.details += [*micro_table(runs), ""]
    sec.data["in_process"] = [asdict(run) for run in runs]
    sec.targets += micro_targets(runs)
    fill = {"rounds": opts.rounds, "seconds": opts.seconds, "warmup": opts.warmup_s}
    sec.details += [line.format(**fill) for line in E2E_INTRO]
    with contextlib.ExitStack() as stack:
        gateways = _start(opts, stack)
        _measure(opts, gateways)
    sec.details += e2e_details(gateways)
    sec.data["end_to_end"] = {gw.label: asdict(gw) for gw in gateways}
