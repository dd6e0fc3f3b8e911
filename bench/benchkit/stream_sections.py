"""Sections 4-6: time to first chunk, 1,000 held streams, idle memory."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

from . import procs, sse_client
from .common import (
    CHAT,
    DIRECT_SLOW,
    DIRECT_STREAM,
    GATEWAY_PORT,
    MIB,
    SLOW_STREAM_BODY,
    STREAM_BODY,
    UPSTREAM_PORT,
    Options,
    Section,
    Target,
    added,
    cmdline,
    fmt_ms,
    percentile,
)
from .gateway import Gateway, check_gateway
from .procs import pss_kib, rss_kib, tree_rss_kib


def _stream_stats(samples: list[sse_client.StreamSample]) -> dict[str, float]:
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


def _first_error(samples: list[sse_client.StreamSample]) -> str:
    bad = [s for s in samples if not s.ok]
    if not bad:
        return ""
    s = bad[0]
    return f"{len(bad)} failed; first: status {s.status}, done={s.done}, error={s.error}"


Samples = list[sse_client.StreamSample]
TARGETS = {"direct": (UPSTREAM_PORT, DIRECT_STREAM), "via": (GATEWAY_PORT, CHAT)}
LABELS = {"direct": "direct → nginx /stream/v1", "via": "via relaygate, 1 worker"}


def _sequential(opts: Options, which: str, count: int) -> Samples:
    port, path = TARGETS[which]
    job = sse_client.sequential(port, path, STREAM_BODY, count, headers=opts.headers)
    return sse_client.run_async(job)


def _stream_rounds(opts: Options, which: list[str]) -> list[tuple[str, Samples]]:
    """``opts.streams`` sequential streams per target per round, after 100 warm-up each."""
    for target in which:
        _sequential(opts, target, 100)
    runs = []
    for i in range(1, opts.rounds + 1):
        runs += [(f"round {i}: {LABELS[t]}", _sequential(opts, t, opts.streams)) for t in which]
    return runs


def client_commands(
    opts: Options, body: str, paths: tuple[str, str], concurrent: bool
) -> list[str]:
    """The same runs by hand with the standalone client (from bench/)."""
    count = opts.held if concurrent else opts.streams
    base = ["../.venv/bin/python", "-m", "benchkit.sse_client", "-n", str(count)]
    base += ["--concurrent"] if concurrent else []
    base += ["--body", body]
    for name, value in opts.headers.items():
        base += ["-H", f"{name}: {value}"]
    direct = cmdline([*base, "--port", str(UPSTREAM_PORT), "--path", paths[0]])
    via = cmdline([*base, "--port", str(GATEWAY_PORT), "--path", paths[1]])
    return ["", "By hand, from bench/:", "", "```", direct, via, "```"]


def stream_table(rows: list[tuple[str, dict[str, float]]]) -> list[str]:
    lines = [
        "| Run | OK / streams | TTFC p50 | TTFC p90 | TTFC p99 | total p50 | total p99 | events |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, st in rows:
        lines.append(
            f"| {label} | {st['ok']:.0f} / {st['streams']:.0f} | {fmt_ms(st['ttfc_p50_ms'])}"
            f" | {fmt_ms(st['ttfc_p90_ms'])} | {fmt_ms(st['ttfc_p99_ms'])}"
            f" | {fmt_ms(st['total_p50_ms'])} | {fmt_ms(st['total_p99_ms'])}"
            f" | {st['events_min']:.0f}–{st['events_max']:.0f} |"
        )
    return lines


def streaming(sec: Section, opts: Options) -> None:
    """4. Time to first chunk, sequential streams at concurrency 1, 1 worker."""
    sec.details += [
        f"{opts.rounds} rounds of {opts.streams} sequential streams direct, then {opts.streams}"
        " via the gateway",
        "(after 100 warm-up each; targets: the median round) with bench/benchkit/sse_client.py",
        "(raw asyncio socket client on uvloop, keep-alive). The upstream sends 64",
        "chat.completion.chunk events + `data: [DONE]`, each flushed separately, no pacing.",
        "TTFC = request written → first body bytes holding `data:`; total = → end of body.",
        "",
    ]
    lines: list[str] = []
    if opts.direct_only:
        runs = _stream_rounds(opts, ["direct"])
    else:
        with Gateway(opts, 1) as gw:
            check_gateway(opts, gw)
            runs = _stream_rounds(opts, ["direct", "via"])
        lines = ["", gw.line()]
    rows = [(label, _stream_stats(samples)) for label, samples in runs]
    sec.details += [*stream_table(rows), *lines]
    sec.details += client_commands(opts, STREAM_BODY, (DIRECT_STREAM, CHAT), False)
    sec.details += [f"\n{label}: {e}" for label, s in runs if (e := _first_error(s))]
    sec.data = dict(rows)
    if not opts.direct_only:
        pairs = [(d, v) for (_, d), (_, v) in zip(rows[0::2], rows[1::2], strict=True)]
        ttfc = [(d["ttfc_p99_ms"], v["ttfc_p99_ms"]) for d, v in pairs]
        target = added("Added TTFC p99, streaming c=1", 2, ttfc)
        ok, total = sum(v["ok"] for _, v in pairs), sum(v["streams"] for _, v in pairs)
        target.passed = bool(target.passed) and ok == total
        target.measured += f"; {ok:.0f}/{total:.0f} streams OK"
        sec.targets.append(target)


@dataclass
class RssTrace:
    """Gateway RSS over time while the held streams run."""

    pid: int
    gauge: sse_client.OpenGauge
    peak_kib: int = 0
    at_full_kib: int = 0  # RSS sampled while all streams were open
    samples: list[tuple[float, int, int]] = field(default_factory=list)

    def sample(self) -> None:
        kib = tree_rss_kib(self.pid)
        self.samples.append((time.monotonic(), self.gauge.now, kib))
        self.peak_kib = max(self.peak_kib, kib)
        if self.gauge.now == self.gauge.peak:
            self.at_full_kib = max(self.at_full_kib, kib)


def _hold(opts: Options, port: int, path: str, trace: RssTrace | None) -> dict[str, float]:
    gauge = trace.gauge if trace else sse_client.OpenGauge()
    job = sse_client.concurrent(
        port, path, SLOW_STREAM_BODY, opts.held, headers=opts.headers, gauge=gauge
    )
    start = time.monotonic()
    if trace is None:
        samples = sse_client.run_async(job)
    else:
        samples = sse_client.run_async(sse_client.with_sampler(job, trace.sample, 0.25))
    stats = _stream_stats(samples)
    stats.update(wall_s=time.monotonic() - start, peak_open=gauge.peak)
    return stats


def held_table(rows: list[tuple[str, dict[str, float]]]) -> list[str]:
    lines = [
        "| Run | OK / streams | Peak open at once | TTFC p50 | TTFC p99 | total p50 | total p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, st in rows:
        lines.append(
            f"| {label} | {st['ok']:.0f} / {st['streams']:.0f} | {st['peak_open']:.0f}"
            f" | {fmt_ms(st['ttfc_p50_ms'], 1)} | {fmt_ms(st['ttfc_p99_ms'], 1)}"
            f" | {fmt_ms(st['total_p50_ms'], 0)} | {fmt_ms(st['total_p99_ms'], 0)} |"
        )
    return lines


def _held_via(opts: Options) -> tuple[dict[str, float], dict[str, float], str]:
    with Gateway(opts, 1) as gw:
        check_gateway(opts, gw)
        sse_client.run_async(
            sse_client.sequential(GATEWAY_PORT, CHAT, STREAM_BODY, 50, headers=opts.headers)
        )
        before = procs.settled_rss_kib(gw.pid)
        trace = RssTrace(gw.pid, sse_client.OpenGauge())
        stats = _hold(opts, GATEWAY_PORT, CHAT, trace)
        after = procs.settled_rss_kib(gw.pid, 5)
    rss = {"before_mib": before / MIB, "peak_mib": trace.peak_kib / MIB}
    rss.update(all_open_mib=trace.at_full_kib / MIB, after_mib=after / MIB)
    rss["growth_mib"] = rss["peak_mib"] - rss["before_mib"]
    return stats, rss, gw.line()


RSS_LABELS = {
    "before_mib": "before (warmed up, settled)",
    "peak_mib": "peak",
    "all_open_mib": "while all streams were open",
    "after_mib": "after the streams ended",
    "growth_mib": "growth (peak − before)",
}


def held_streams(sec: Section, opts: Options) -> None:
    """5. 1,000 streams open at once; gateway RSS before and at peak, 1 worker."""
    sec.details += [
        f"{opts.held} streams started at once, one connection each, against the paced route",
        "(echo_sleep 0.1 s between the 64 events: ~6.4 s per stream). RSS = sum of VmRSS over",
        "the gateway process and its children, sampled every 0.25 s. RLIMIT_NOFILE is raised",
        "by run.py (inherited by the gateway); nginx has worker_connections 8192.",
        "",
    ]
    rows = [("direct → nginx /slow/v1", _hold(opts, UPSTREAM_PORT, DIRECT_SLOW, None))]
    if not opts.direct_only:
        stats, rss, line = _held_via(opts)
        rows.append(("via relaygate, 1 worker", stats))
        sec.details += [*held_table(rows), "", line]
        sec.details += client_commands(opts, SLOW_STREAM_BODY, (DIRECT_SLOW, CHAT), True)
        sec.details.append("")
        sec.details += [f"- Gateway RSS {RSS_LABELS[k]}: {v:.1f} MiB" for k, v in rss.items()]
        sec.data = {"rss": rss}
        ok = stats["ok"] == opts.held and stats["peak_open"] == opts.held
        sec.targets += [
            Target(f"RSS growth, {opts.held} open streams", "≤ 150 MiB",
                   f"{rss['growth_mib']:.1f} MiB", rss["growth_mib"] <= 150),
            Target(f"{opts.held} open streams complete", f"{opts.held} OK, all open at once",
                   f"{stats['ok']:.0f} OK, peak {stats['peak_open']:.0f} open", ok),
        ]  # fmt: skip
    else:
        sec.details += held_table(rows)
    sec.data.update(dict(rows))


_WRITER_LINE = re.compile(r"usage writer process (\d+):")


def _wait_workers(gw: Gateway, workers: int, timeout: float = 15.0) -> tuple[list[int], int]:
    """The gateway's processes once `workers` of them (plus a supervisor, if any, and the
    usage writer's) exist, and the writer's pid (0: none). The gateway starts the writer,
    and logs its pid, before it answers /health."""
    found = _WRITER_LINE.search(gw.log_path.read_text(errors="replace"))
    writer = int(found.group(1)) if found else 0
    want = (1 if workers == 1 else workers + 1) + bool(writer)
    deadline = time.monotonic() + timeout
    while len(procs.process_tree(gw.pid)) < want and time.monotonic() < deadline:
        time.sleep(0.2)
    procs.settled_rss_kib(gw.pid)
    return procs.process_tree(gw.pid), writer


def _idle_rows(opts: Options, workers: int) -> list[tuple[str, int, str, int, int]]:
    """(role, pid, cmdline, rss KiB, pss KiB) for each gateway process, right after start.
    Several workers share limits through Redis (the gateway requires it)."""
    with Gateway(opts, workers, redis=workers > 1) as gw:
        pids, writer = _wait_workers(gw, workers)
        rows = []
        for pid in pids:
            cmd = procs.cmdline_of(pid)
            role = "worker" if workers == 1 or pid != gw.pid else "supervisor"
            role = "usage writer" if pid == writer else role
            role = "helper" if "resource_tracker" in cmd else role
            rows.append((role, pid, cmd, rss_kib(pid), pss_kib(pid)))
    return rows


def idle_rss(sec: Section, opts: Options) -> None:
    """6. Idle RSS per process right after start (health answered, RSS settled)."""
    nginx = tree_rss_kib(opts.nginx_pid) / MIB if opts.nginx_pid else math.nan
    sec.details += [f"For scale: the nginx fake (master + 1 worker) uses {nginx:.1f} MiB RSS.", ""]
    if opts.direct_only:
        return
    lines = ["| Workers | Role | PID | RSS | PSS | Command |", "|---|---|---|---|---|---|"]
    worst = 0.0
    for workers in (1, 2):
        for role, pid, cmd, rss, pss in _idle_rows(opts, workers):
            sizes = f"{rss / MIB:.1f} MiB | {pss / MIB:.1f} MiB"
            lines.append(f"| {workers} | {role} | {pid} | {sizes} | `{cmd}` |")
            worst = max(worst, rss / MIB) if role == "worker" else worst
            sec.data[f"w{workers}-{role}-{pid}"] = {"rss_mib": rss / MIB, "pss_mib": pss / MIB}
    sec.details += [
        *lines,
        "",
        "RSS counts shared pages (libraries) in each process; PSS splits them. With 2",
        "workers the gateway keeps its limits in Redis (it requires it); 1 worker keeps them",
        "in process.",
    ]
    sec.targets.append(
        Target("Idle RSS per worker", "≤ 80 MiB", f"{worst:.1f} MiB (largest worker)", worst <= 80)
    )
