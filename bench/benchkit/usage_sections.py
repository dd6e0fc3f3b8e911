"""Section 8: usage accounting (issue 4): recording cost, writer rate, kill -9 loss."""

from __future__ import annotations

import asyncio

from .common import Options, Section, Target
from .usage_bench import measure, table

INTRO = [
    "In process (benchkit/usage_bench.py): the request path's share of recording (build the",
    "UsageRecord from what the request did, append it to the outbox) over 5 rounds of 20,000;",
    "the writer draining 20,000 spooled records into a fresh PostgreSQL database, and into a",
    "fresh SQLite file; and a child",
    "process appending a record every ~1 ms, killed with SIGKILL after 1,500, then its spool",
    "file adopted by a new outbox and counted (fsync window 0.2 s, the default).",
    "",
]


def usage_cost(sec: Section, opts: Options) -> None:
    figures = asyncio.run(measure())
    sec.details += [*INTRO, *table(figures), ""]
    sec.targets.append(Target(
        "Usage recording per request, hot path", "≤ 50 µs",
        f"{figures.recording_us:.2f} µs", figures.recording_us <= 50,
    ))  # fmt: skip
    best = max(figures.rates.values())
    sec.targets.append(Target(
        "Usage writer into PostgreSQL", "≥ 5,000 rows/s",
        ", ".join(f"{r:,.0f} rows/s ({b}-row batches)" for b, r in figures.rates.items()),
        min(figures.rates.values()) >= 5000 and best >= 5000,
    ))  # fmt: skip
    worst = max(lost for _, lost in figures.losses)
    allowed = int(figures.window * 1000 * 1.2)  # one window of ~1 ms appends, with slack
    sec.targets.append(Target(
        "kill -9: records lost", f"≤ one fsync window (~{int(figures.window * 1000)})",
        ", ".join(str(lost) for _, lost in figures.losses), worst <= allowed,
    ))  # fmt: skip
