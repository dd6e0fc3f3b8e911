"""The soak's judgements (flat, shed, recovered), its plots and its summary."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .soak_load import Chunk

# "Flat": the Theil-Sen slope over the last 2/3 of the steady phase, extrapolated to an
# hour, stays under these bounds. The first third is warm-up (pools filling, caches,
# allocator arenas); a leak shows as a steady slope after it.
FLAT_RSS_MIB_PER_H = 30.0  # or 10 % of the median, whichever is larger
FLAT_FDS_PER_H = 20.0  # connections come and go every chunk: a leak is a trend, not noise
FLAT_LAG_MS = 10.0  # loop lag: the trend may move it this much across the whole window
RECOVERY_RATE = 0.95  # of the offered rate
RECOVERY_P50 = (1.5, 1.0)  # <= 1.5 x pre-burst p50 + 1 ms
RECOVERY_P99 = (2.0, 5.0)  # <= 2 x pre-burst p99 + 5 ms


@dataclass
class Verdict:
    name: str
    goal: str
    measured: str
    passed: bool | None


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float:
    """Theil-Sen slope of (seconds, value) points, per hour; NaN under 3 points.

    The median of the slopes between every pair of points: a few spikes (the machine
    stalling the process for a moment) do not tilt it, a steady climb does."""
    if len(points) < 3:
        return math.nan
    slopes = [
        (y2 - y1) / (x2 - x1)
        for i, (x1, y1) in enumerate(points)
        for x2, y2 in points[i + 1 :]
        if x2 != x1
    ]
    return statistics.median(slopes) * 3600 if slopes else math.nan


def _steady_tail(
    samples: list[dict[str, Any]], steady: tuple[float, float]
) -> list[dict[str, Any]]:
    start, end = steady
    cut = start + (end - start) / 3
    return [s for s in samples if cut <= s["t_s"] <= end and s["phase"] == "steady"]


def flatness(
    samples: list[dict[str, Any]], steady: tuple[float, float], replicas: int
) -> list[Verdict]:
    """RSS, fds and loop lag flat over the last 2/3 of the steady phase, per replica."""
    tail = _steady_tail(samples, steady)
    verdicts = []
    series = (
        ("RSS", "rss_mib", 1.0, "MiB", FLAT_RSS_MIB_PER_H, 0.10),
        ("open fds", "fds", 1.0, "fds", FLAT_FDS_PER_H, 0.0),
        ("event-loop lag", "loop_lag_s", 1000.0, "ms", None, 0.0),
    )
    for label, key, scale, unit, bound, share in series:
        for r in range(replicas):
            pts = [
                (s["t_s"], s[key] * scale)
                for s in tail
                if s["replica"] == r and s.get(key) is not None
            ]
            name = f"{label} flat, replica {r}"
            slope = slope_per_hour(pts)
            if math.isnan(slope):
                verdicts.append(Verdict(name, "enough samples", "too few samples", None))
                continue
            values = [v for _, v in pts]
            median, window_s = statistics.median(values), pts[-1][0] - pts[0][0]
            spread = f"median {median:,.1f}, range {min(values):,.1f}–{max(values):,.1f} {unit}"
            if bound is None:  # loop lag: how far the trend moved it across the window
                moved = slope * window_s / 3600
                goal = f"trend moves it ≤ {FLAT_LAG_MS:g} {unit} across the window"
                measured = f"{moved:+,.1f} {unit} over {window_s:.0f} s; {spread}"
                verdicts.append(Verdict(name, goal, measured, moved <= FLAT_LAG_MS))
                continue
            limit = max(bound, share * median)
            goal = f"slope ≤ {limit:,.1f} {unit}/h"
            measured = f"{slope:+,.1f} {unit}/h over {window_s:.0f} s; {spread}"
            verdicts.append(Verdict(name, goal, measured, slope <= limit))
    return verdicts


def _sum(chunks: list[Chunk]) -> dict[str, float]:
    """Totals of a phase; rates over its length (chunks of all streams run side by side)."""
    streams = max(1, len({(c.replica, c.kind) for c in chunks}))
    span = sum(c.seconds for c in chunks) / streams
    ok, shed = sum(c.ok for c in chunks), sum(c.shed for c in chunks)
    total = sum(c.requests for c in chunks)
    return {
        "requests": total,
        "ok": ok,
        "shed": shed,
        "other": total - ok - shed,
        "socket_errors": sum(c.socket_errors for c in chunks),
        "offered_rps": sum(c.offered_rps * c.seconds for c in chunks) / span if span else 0.0,
        "rps": total / span if span else math.nan,
        "ok_rps": ok / span if span else math.nan,
    }


def _latency(chunks: list[Chunk], kind: str) -> tuple[float, float]:
    """Median over chunks of each chunk's p50 and p99 (ms) for one kind of request."""
    own = [c for c in chunks if c.kind == kind and c.requests]
    if not own:
        return math.nan, math.nan
    return statistics.median(c.p50_ms for c in own), statistics.median(c.p99_ms for c in own)


def burst_and_recovery(
    chunks: list[Chunk], samples: list[dict[str, Any]], pre_burst_s: float
) -> tuple[list[Verdict], dict[str, Any]]:
    steady = [c for c in chunks if c.phase == "steady"]
    last = max((c.start_s for c in steady), default=0.0)
    pre = [c for c in steady if c.start_s >= last - pre_burst_s + 1e-6]
    burst = [c for c in chunks if c.phase == "burst"]
    rec_all = [c for c in chunks if c.phase == "recovery"]
    first = min((c.start_s for c in rec_all), default=0.0)
    rec = [c for c in rec_all if c.start_s > first]  # the first chunk drains the burst
    figures = {"pre-burst": _sum(pre), "burst": _sum(burst), "recovery": _sum(rec)}
    verdicts = []
    b = figures["burst"]
    alive = all(s["alive"] for s in samples)
    peak = max((s["rss_mib"] for s in samples if s["phase"] == "burst"), default=math.nan)
    verdicts.append(
        Verdict(
            "Burst: load shed with 429/503",
            "> 0 shed, every other answer 2xx",
            f"{b['shed']:,} of {b['requests']:,} shed, {b['ok']:,} 2xx, {b['other']:,} other, "
            f"{b['socket_errors']:,} socket errors",
            b["shed"] > 0 and b["other"] == 0,
        )
    )
    verdicts.append(
        Verdict(
            "Burst: no replica died (no OOM)",
            "all alive",
            f"{'all alive' if alive else 'a replica exited'}; peak RSS in the burst "
            f"{peak:,.0f} MiB",
            alive,
        )
    )
    during = [s for s in samples if s["phase"] == "burst"]
    missed = sum(not s["scraped"] for s in during)
    verdicts.append(
        Verdict(
            "Burst: /metrics answered within 2 s (not judged)",
            "every sample",
            f"{len(during) - missed} of {len(during)} scrapes answered",
            None,
        )
    )
    if during and "main_health" in during[0]:  # runs since the operations listener
        main = sum(bool(s["main_health"]) for s in during)
        verdicts.append(
            Verdict(
                "Burst: the main port's /health answered within 2 s (not judged)",
                "for comparison",
                f"{main} of {len(during)} probes answered",
                None,
            )
        )
    p, r = figures["pre-burst"], figures["recovery"]
    rate_ok = r["ok_rps"] >= RECOVERY_RATE * r["offered_rps"] and r["other"] + r["shed"] == 0
    verdicts.append(
        Verdict(
            "Recovery: rate back",
            f"2xx ≥ {RECOVERY_RATE:.0%} of offered, no errors",
            f"{r['ok_rps']:,.0f} 2xx/s of {r['offered_rps']:,.0f} offered "
            f"(pre-burst {p['ok_rps']:,.0f}/s); {r['shed'] + r['other']:,} non-2xx",
            rate_ok,
        )
    )
    for kind in ("chat", "stream"):
        p50a, p99a = _latency(pre, kind)
        p50b, p99b = _latency(rec, kind)
        lim50 = RECOVERY_P50[0] * p50a + RECOVERY_P50[1]
        lim99 = RECOVERY_P99[0] * p99a + RECOVERY_P99[1]
        ok = p50b <= lim50 and p99b <= lim99
        verdicts.append(
            Verdict(
                f"Recovery: {kind} latency back",
                f"p50 ≤ {RECOVERY_P50[0]:g}×pre + {RECOVERY_P50[1]:g} ms, "
                f"p99 ≤ {RECOVERY_P99[0]:g}×pre + {RECOVERY_P99[1]:g} ms",
                f"p50 {p50b:.2f} ms (pre {p50a:.2f}), p99 {p99b:.2f} ms (pre {p99a:.2f})",
                ok if not math.isnan(p50b + p50a) else None,
            )
        )
    return verdicts, figures


def plot(
    samples: list[dict[str, Any]], chunks: list[Chunk], replicas: int, path: Path, title: str
) -> None:
    """Six panels over time: RSS, fds, loop lag, outbox backlog, responses/s by class,
    latency; the burst shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(13, 10), sharex=True)
    panels = [
        (axes[0][0], "rss_mib", 1.0, "RSS (MiB)"),
        (axes[0][1], "fds", 1.0, "open file descriptors"),
        (axes[1][0], "loop_lag_s", 1000.0, "event-loop lag, worst of 5 s (ms)"),
        (axes[1][1], "outbox_backlog", 1.0, "usage outbox backlog (records)"),
    ]
    for ax, key, scale, label in panels:
        for r in range(replicas):
            # a sample without the figure (a /metrics scrape that failed) breaks the line
            pts = [
                (s["t_s"], s[key] * scale if s.get(key) is not None else math.nan)
                for s in samples
                if s["replica"] == r
            ]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=f"replica {r}", linewidth=1)
        ax.set_ylabel(label)
        ax.legend(loc="upper left", fontsize=8)
    ax = axes[2][0]
    starts = sorted({c.start_s for c in chunks})
    end = max(c.start_s + c.seconds for c in chunks)
    for name, pick in (
        ("2xx", lambda c: c.ok),
        ("429+503 (shed)", lambda c: c.shed),
        ("other / socket errors", lambda c: c.requests - c.ok - c.shed + c.socket_errors),
    ):
        ys = [sum(pick(c) / c.seconds for c in chunks if c.start_s == t) for t in starts]
        ax.step([*starts, end], [*ys, ys[-1]], where="post", label=name)
    ax.set_ylabel("responses/s (client side, all replicas)")
    ax.set_xlabel("seconds since start")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[2][1]
    for kind in ("chat", "stream"):
        for pct in ("p50_ms", "p99_ms"):
            ys = [
                max((getattr(c, pct) for c in chunks if c.start_s == t and c.kind == kind),
                    default=math.nan)
                for t in starts
            ]  # fmt: skip
            ax.step([*starts, end], [*ys, ys[-1]], where="post", label=f"{kind} {pct[:3]}")
    ax.set_yscale("log")
    ax.set_ylabel("latency per chunk, worst replica (ms)")
    ax.set_xlabel("seconds since start")
    ax.legend(loc="upper left", fontsize=8)
    burst = [c for c in chunks if c.phase == "burst"]
    if burst:
        b0 = min(c.start_s for c in burst)
        b1 = max(c.start_s + c.seconds for c in burst)
        for row in axes:
            for ax in row:
                ax.axvspan(b0, b1, color="tab:red", alpha=0.08)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def table(verdicts: list[Verdict]) -> list[str]:
    lines = ["| Check | Goal | Measured | Result |", "|---|---|---|---|"]
    for v in verdicts:
        result = {True: "PASS", False: "**FAIL**", None: "info"}[v.passed]
        lines.append(f"| {v.name} | {v.goal} | {v.measured} | {result} |")
    return lines


def phase_table(figures: dict[str, dict[str, float]]) -> list[str]:
    lines = [
        "| Phase | Offered req/s | Answered req/s | 2xx/s | Shed (429+503) | Other "
        "| Socket errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in figures.items():
        lines.append(
            f"| {name} | {f['offered_rps']:,.0f} | {f['rps']:,.0f} | {f['ok_rps']:,.0f} | "
            f"{f['shed']:,} | {f['other']:,} | {f['socket_errors']:,} |"
        )
    return lines
