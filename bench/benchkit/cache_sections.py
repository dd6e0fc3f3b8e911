"""Section 9: the response cache: what a hit costs, and throughput with a warm cache.

bench/relaygate.yaml turns the cache off for every other section; the gateways here turn
it back on through RELAYGATE_CACHE__* variables. Every load sends the same body with the
same key, so once the first answer is stored every request is a hit. That is checked: a
probe must get ``X-Cache: HIT`` from the expected tier before the runs, and the gateway's
own counters (GET /metrics, relaygate_cache_requests_total) must count a hit of that tier
for every request wrk completed, and no miss, across each run.

a. c=1, 1 worker, in rounds that alternate: direct → nginx, the no-op path (cache off,
   every request upstream, as in section 1), and memory hits (memory tier only).
b. c=1, 1 worker, in the same rounds: Redis hits (redis_url set, memory tier off), and the
   same gateway with the cache bypassed (``Cache-Control: no-cache, no-store``). With
   redis_url set the gateway keeps its limits in Redis too, as a deployment would, so the
   bypassed run shows what the Redis hit adds to that.
c. c=32, memory hits: 1 worker (memory tier only), then 2 workers with Redis (memory and
   Redis tiers, limits in Redis), as section 2 runs them.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from relaygate.observability.metrics import FLUSH_EVERY

from . import loadgen
from .common import (
    CHAT,
    CHAT_BODY,
    DIRECT,
    GATEWAY_PORT,
    BenchError,
    Options,
    Section,
    Target,
    added,
    fmt_ms,
)
from .gateway import Gateway
from .http_sections import load_table
from .loadgen import LoadResult

CACHE_ON = {"RELAYGATE_CACHE__ENABLED": "true"}
REDIS_ONLY = {**CACHE_ON, "RELAYGATE_CACHE__MEMORY__ENABLED": "false"}
BYPASS = {"Cache-Control": "no-cache, no-store"}  # neither looked up nor stored
HIT_METRIC = re.compile(r"^relaygate_cache_requests_total\{([^}]*)\}\s+([0-9.e+]+)$", re.M)
LABEL = re.compile(r'(\w+)="([^"]*)"')
WARM_TRIES = 50  # probes (0.05 s apart) until the answer is stored; Redis stores in background

INTRO = [
    "bench/relaygate.yaml turns the cache off (`cache: {{enabled: false}}`) for every other",
    "section; these gateways turn it on with RELAYGATE_CACHE__* (see each command line).",
    "wrk sends one body with one key, so after the first answer every request is a hit.",
    "Checked: before the runs a probe must get `X-Cache: HIT` from the expected tier (or",
    "`BYPASS` for the runs without the cache), and across each run the gateway's counters",
    "(GET /metrics, relaygate_cache_requests_total) must count a hit of that tier for every",
    "request wrk completed, and no miss.",
    "",
    "**a, b. Concurrency 1**, 1 worker each; the three gateways run at once (ports",
    "18000-18002). wrk -t1 -c1 in {rounds} round(s) of {short} s that alternate between:",
    "",
    "- direct → nginx;",
    "- the no-op path: cache off, every request goes upstream (as in section 1);",
    "- memory hits: memory tier only;",
    "- Redis: a gateway with redis_url set, so its limits are in Redis too (as in a",
    "  deployment), and the memory tier off: once with `Cache-Control: no-cache, no-store`",
    "  (the cache bypassed: every request goes upstream), once warm (every request a Redis",
    "  hit).",
    "",
    "Each after a {warmup} s warm-up. Figures and targets: the median round.",
    "",
]
THROUGHPUT_INTRO = [
    "**c. Warm-cache throughput**: wrk -t1 -c32 for {short} s after a {warmup} s warm-up,",
    "every request a hit. 1 worker with the memory tier only (limits in process), then 2",
    "workers with Redis (memory and Redis tiers, limits in Redis), as section 2 runs them.",
    "Section 2 has the same loads with the cache off.",
    "",
]


@dataclass
class _Run:
    """One load target of this section (a gateway, or nginx), the headers it is sent, what
    its answers must say, and its results."""

    label: str
    base: str
    tier: str | None  # the X-Cache-Tier every answer must have; None: not cached (BYPASS)
    headers: dict[str, str]
    script: Path
    line: str = ""  # the gateway's command line, for the report
    c1: list[LoadResult] = field(default_factory=list)
    c32: LoadResult | None = None
    shortfall: list[str] = field(default_factory=list)  # runs that were not all hits

    @property
    def url(self) -> str:
        return self.base + CHAT


def _new_run(label: str, base: str, tier: str | None, headers: dict[str, str], name: str) -> _Run:
    """A _Run and its wrk script (bench/.work/<name>.lua)."""
    script = loadgen.wrk_script(CHAT_BODY, {"Content-Type": "application/json", **headers}, name)
    return _Run(label, base, tier, headers, script)


def _probe(base: str, headers: dict[str, str]) -> tuple[str, str]:
    """One chat completion: (X-Cache, X-Cache-Tier) of its answer; BenchError unless 200."""
    req = urllib.request.Request(
        base + CHAT, CHAT_BODY.encode(), {"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, body = resp.status, resp.read()
            found = resp.headers.get("X-Cache", ""), resp.headers.get("X-Cache-Tier", "")
    except urllib.error.HTTPError as exc:
        status, body, found = exc.code, exc.read(), ("", "")
    except OSError as exc:
        raise BenchError(f"POST {base + CHAT} failed: {exc}") from exc
    if status != 200 or b'"choices"' not in body:
        raise BenchError(f"POST {base + CHAT} gave {status}: {body[:500]!r}")
    return found


def _warm(run: _Run) -> None:
    """Store the answer and wait until it comes back as a hit of ``run.tier`` (or, for a
    run without the cache, check that it is bypassed)."""
    want = ("HIT", run.tier) if run.tier else ("BYPASS", "")
    seen = _probe(run.base, run.headers)
    for _ in range(WARM_TRIES):
        if seen == want:
            return
        time.sleep(0.05)
        seen = _probe(run.base, run.headers)
    raise BenchError(
        f"{run.label}: answers say X-Cache {seen[0] or '(none)'}, X-Cache-Tier "
        f"{seen[1] or '(none)'}; expected {want[0]} {want[1]}".rstrip()
    )


def hit_counts(base: str) -> dict[str, float]:
    """Cache lookups so far by result (``hit:<tier>`` or ``miss``), every worker's,
    from GET /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    counts: dict[str, float] = {}
    for labels, value in HIT_METRIC.findall(text):
        found = dict(LABEL.findall(labels))
        name = "miss" if found.get("result") == "miss" else f"hit:{found.get('tier', '')}"
        counts[name] = counts.get(name, 0.0) + float(value)
    return counts


def _measure(run: _Run, conns: int, seconds: float) -> LoadResult:
    """One wrk run; for a cached run, note it unless every request was a hit of its tier."""
    before = hit_counts(run.base) if run.tier else {}
    result = loadgen.wrk(run.url, run.script, 1, conns, seconds)
    if run.tier:
        # every worker pushes its tallies each FLUSH_EVERY s: at 6,700 req/s the last push
        # still missed 240-520 hits of two workers
        time.sleep(2 * FLUSH_EVERY + 0.1)
        after = hit_counts(run.base)
        delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        hits, misses = delta.get(f"hit:{run.tier}", 0.0), delta.get("miss", 0.0)
        if hits < result.requests or misses:
            others = {k: int(v) for k, v in delta.items() if v and k != f"hit:{run.tier}"}
            run.shortfall.append(
                f"c={conns}: {int(hits):,} {run.tier} hits for {result.requests:,} requests,"
                f" other lookups {others or 'none'}"
            )
    return result


def _start(opts: Options, stack: contextlib.ExitStack) -> list[_Run]:
    """Direct, and the runs of parts a and b on three 1-worker gateways, up at once."""
    runs = [_new_run("direct → nginx", DIRECT, None, opts.headers, "chat-direct")]
    gateways: tuple[tuple[str, bool, dict[str, str]], ...] = (
        ("no-op path (cache off)", False, {}),
        ("memory hits (memory tier only)", False, CACHE_ON),
        ("Redis", True, REDIS_ONLY),
    )
    for i, (label, redis, env) in enumerate(gateways):
        gw = Gateway(opts, 1, port=GATEWAY_PORT + i, redis=redis)
        gw.env.update(env)
        stack.enter_context(gw)
        if redis:
            bypass = {**opts.headers, **BYPASS}
            started = [
                _new_run("Redis limits, cache bypassed", gw.base, None, bypass, "chat-bypass"),
                _new_run("Redis hits (memory tier off)", gw.base, "redis", opts.headers,
                         "chat-redis"),
            ]  # fmt: skip
        else:
            tier = "memory" if env else None
            started = [_new_run(label, gw.base, tier, opts.headers, f"chat-{tier or 'off'}")]
        for run in started:
            run.line = gw.line()
            _warm(run)
        runs += started
    return runs


def _short(opts: Options) -> int:
    """The length of each run here: half of --seconds, to keep the section near 2 minutes."""
    return max(1, opts.seconds // 2)


def _latency_rounds(opts: Options, runs: list[_Run]) -> None:
    for run in runs:
        loadgen.warm_up(run.url, run.script, 1, 1, opts.warmup_s)
    for _ in range(opts.rounds):
        for run in runs:
            run.c1.append(_measure(run, 1, _short(opts)))


def _throughput(opts: Options, run: _Run) -> None:
    loadgen.warm_up(run.url, run.script, 1, 8, opts.warmup_s)
    run.c32 = _measure(run, 32, _short(opts))


def _median(results: list[LoadResult], attr: str) -> float:
    return statistics.median(float(getattr(r, attr)) for r in results)


def _all_hits(run: _Run, conns: int) -> bool:
    return not any(note.startswith(f"c={conns}:") for note in run.shortfall)


def _hits_note(run: _Run, conns: int) -> str:
    if run.tier is None:
        return "—" if run.base == DIRECT else "bypassed"
    ok = _all_hits(run, conns)
    return f"all {run.tier} hits" if ok else f"**not all {run.tier} hits**"


def c1_table(runs: list[_Run]) -> list[str]:
    lines = [
        "| c=1, 1 worker | p50 | p99 | p50 − no-op path | p50 − direct | errors | cache |",
        "|---" * 7 + "|",
    ]
    direct, noop = _median(runs[0].c1, "p50_ms"), _median(runs[1].c1, "p50_ms")
    for run in runs:
        p50, p99 = _median(run.c1, "p50_ms"), _median(run.c1, "p99_ms")
        errors = sum(r.error_count for r in run.c1)
        vs_noop = "—" if run in runs[:2] else f"{p50 - noop:+.3f} ms"
        vs_direct = "—" if run.base == DIRECT else f"{p50 - direct:+.3f} ms"
        lines.append(
            f"| {run.label} | {fmt_ms(p50)} | {fmt_ms(p99)} | {vs_noop} | {vs_direct}"
            f" | {errors} | {_hits_note(run, 1)} |"
        )
    return lines


def _diff(more: _Run, less: _Run, attr: str) -> float:
    """Median over rounds of ``more`` minus ``less`` (both c=1, same round)."""
    pairs = zip(more.c1, less.c1, strict=True)
    return statistics.median(float(getattr(m, attr) - getattr(n, attr)) for m, n in pairs)


def c1_notes(runs: list[_Run]) -> list[str]:
    direct, noop, memory, bypass, redis = runs
    return [
        "",
        "Differences, median over rounds of the same round's figures:",
        "",
        f"- Memory hit − no-op path: p50 {_diff(memory, noop, 'p50_ms'):+.3f} ms,"
        f" p99 {_diff(memory, noop, 'p99_ms'):+.3f} ms (negative: a hit is cheaper).",
        f"- Memory hit − direct (the hit's own cost): p50 {_diff(memory, direct, 'p50_ms'):+.3f}"
        f" ms, p99 {_diff(memory, direct, 'p99_ms'):+.3f} ms.",
        f"- Redis hit − same gateway, cache bypassed: p50 {_diff(redis, bypass, 'p50_ms'):+.3f}"
        f" ms, p99 {_diff(redis, bypass, 'p99_ms'):+.3f} ms.",
        f"- Redis hit − direct: p50 {_diff(redis, direct, 'p50_ms'):+.3f} ms,"
        f" p99 {_diff(redis, direct, 'p99_ms'):+.3f} ms.",
        "",
    ]


def c32_table(runs: list[_Run]) -> list[str]:
    lines = ["| c=32, warm | req/s | p50 | p99 | errors | cache |", "|---" * 6 + "|"]
    for run in runs:
        r = run.c32
        assert r is not None
        lines.append(
            f"| {run.label} | {r.rps:,.0f} | {fmt_ms(r.p50_ms)} | {fmt_ms(r.p99_ms)}"
            f" | {r.error_count} | {_hits_note(run, 32)} |"
        )
    return lines


def _shortfalls(runs: list[_Run]) -> list[str]:
    lines = [f"- {run.label}: {note}" for run in runs for note in run.shortfall]
    return ["", "Runs that were not all hits:", "", *lines] if lines else []


def latency_targets(runs: list[_Run]) -> list[Target]:
    direct, noop, memory, bypass, redis = runs
    hit = added(
        "Memory hit − no-op path, p50, c=1, 1 worker", 0.3,
        [(n.p50_ms, m.p50_ms) for n, m in zip(noop.c1, memory.c1, strict=True)],
    )  # fmt: skip
    hit.measured += f"; hit − direct {_diff(memory, direct, 'p50_ms'):+.3f} ms"
    if hit.passed is not None:
        errors = sum(r.error_count for r in memory.c1)
        hit.passed = hit.passed and _all_hits(memory, 1) and errors == 0
    p50, p99 = _median(redis.c1, "p50_ms"), _median(redis.c1, "p99_ms")
    errors = sum(r.error_count for r in redis.c1)
    return [
        hit,
        Target(
            "Redis hit p99, c=1, 1 worker (memory tier off)", "≤ 2 ms",
            f"p99 {fmt_ms(p99)}, p50 {fmt_ms(p50)} (median round); cache bypassed, same"
            f" gateway: p99 {fmt_ms(_median(bypass.c1, 'p99_ms'))}",
            p99 <= 2 and _all_hits(redis, 1) and errors == 0,
        ),
    ]  # fmt: skip


def throughput_target(runs: list[_Run]) -> Target:
    one, two = runs
    assert one.c32 is not None and two.c32 is not None
    errors = one.c32.error_count + two.c32.error_count
    return Target(
        "Warm-cache throughput, c=32 (every request a hit)", "0 errors, all hits",
        f"2 workers + Redis {two.c32.rps:,.0f} req/s, 1 worker {one.c32.rps:,.0f} req/s;"
        f" errors {errors}",
        errors == 0 and _all_hits(one, 32) and _all_hits(two, 32),
    )  # fmt: skip


def _two_workers(opts: Options) -> _Run:
    """Part c with 2 workers: memory and Redis tiers, limits in Redis."""
    gw = Gateway(opts, 2, redis=True)
    gw.env.update(CACHE_ON)
    with gw:
        label = "2 workers, memory + Redis tiers, Redis limits"
        run = _new_run(label, gw.base, "memory", opts.headers, "chat-memory")
        run.line = gw.line()
        _warm(run)
        _throughput(opts, run)
    return run


def cache_cost(sec: Section, opts: Options) -> None:
    """9. Response cache: hit latency (memory, Redis) at c=1, warm-cache throughput at c=32."""
    if opts.direct_only:
        sec.details.append("Skipped with --direct-only: this section measures the gateway.")
        return
    with contextlib.ExitStack() as stack:
        runs = _start(opts, stack)
        _latency_rounds(opts, runs)
        _throughput(opts, runs[2])
    c32 = [runs[2], _two_workers(opts)]
    sec.targets += [*latency_targets(runs), throughput_target(c32)]
    fill = {"rounds": opts.rounds, "short": _short(opts), "warmup": opts.warmup_s}
    rows = [(f"round {i + 1}: c=1, {run.label}", r) for run in runs for i, r in enumerate(run.c1)]
    rows += [(f"c=32, {run.label}", run.c32) for run in c32 if run.c32 is not None]
    sec.details += [line.format(**fill) for line in INTRO]
    sec.details += [*c1_table(runs), *c1_notes(runs)]
    sec.details += [line.format(**fill) for line in THROUGHPUT_INTRO]
    sec.details += [*c32_table(c32), *_shortfalls([*runs, c32[1]]), "", *load_table(rows)]
    lines = dict.fromkeys(run.line for run in [*runs, c32[1]] if run.line)
    sec.details += [f"\n{line}" for line in lines]
    sec.data = {
        "c1": {run.label: [vars(r) for r in run.c1] for run in runs},
        "c32": {run.label: vars(run.c32) for run in c32},
        "not_all_hits": {run.label: run.shortfall for run in [*runs, c32[1]] if run.shortfall},
    }
