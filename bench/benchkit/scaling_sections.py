"""Sections 14 and 16: throughput per worker with Redis and usage in PostgreSQL (14) or
SQLite (16), the usage outbox's depth over the run, and the tail at saturation (p99 / p50)
with one worker."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from . import loadgen, pgdb, procs
from .common import CHAT, CHAT_BODY, VIA, Options, Section, Target, fmt_ms
from .gateway import Gateway, check_gateway
from .loadgen import LoadResult

CONNS_PER_WORKER = 32  # wrk keeps this many requests in flight per worker: saturation
SAMPLE_EVERY_S = 0.5  # outbox depth sampling period
DRAIN_WAIT_S = 30.0  # after the load, how long the outbox may take to empty
EFFICIENCY = 0.9  # target: N workers >= 0.9 x N x one worker
TAIL_RATIO = 3.0  # target: one worker at saturation, p99 <= 3 x p50
WAIT_S = 3.0  # at most this many seconds of records may wait in the outbox while serving
_BACKLOG = re.compile(r"^relaygate_usage_outbox_backlog(?:\{[^}]*\})? (\S+)$", re.MULTILINE)
_REQUESTS = re.compile(r"^relaygate_requests_total\{[^}]*\} (\S+)$", re.MULTILINE)


def worker_counts(cores: int) -> list[int]:
    """1 and 2 workers always; 4 and 8 where the machine has that many cores."""
    return [n for n in (1, 2, 4, 8) if n <= 2 or n <= cores]


def _metrics(base: str) -> str:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def backlog(base: str) -> int:
    """Usage records not yet in the database, every worker's outbox together."""
    return int(sum(float(v) for v in _BACKLOG.findall(_metrics(base))))


def answered(base: str) -> int:
    """Requests the gateway finished, whatever their status (every worker's counter):
    each admitted one has a usage record, those wrk cut off at its end included."""
    return int(sum(float(v) for v in _REQUESTS.findall(_metrics(base))))


@dataclass
class DepthSampler:
    """Samples the outbox backlog every SAMPLE_EVERY_S in a thread while a load runs."""

    base: str
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> DepthSampler:
        started = time.monotonic()

        def sample() -> None:
            while not self._stop.wait(SAMPLE_EVERY_S):
                # a sample missed under load is left out; the series says how many it has
                with contextlib.suppress(OSError):
                    self.samples.append((time.monotonic() - started, backlog(self.base)))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def series(self) -> str:
        """The depth over the run, one value a second."""
        step = max(1, round(1 / SAMPLE_EVERY_S))
        return " ".join(str(depth) for _, depth in self.samples[step - 1 :: step])


@dataclass
class Run:
    """One worker count's measurement."""

    workers: int
    load: LoadResult
    cpu_us: float  # gateway CPU time (all processes) per request
    depth: DepthSampler
    drain_s: float  # after the load, until the backlog was 0 (inf: not within DRAIN_WAIT_S)
    rows: int  # usage rows in the database once drained
    answered: int  # requests the gateway finished, by its own counter
    command: str  # how the gateway was started (secrets left out)


def count_rows(database: str, table: str) -> int:
    """Rows in ``table`` of a PostgreSQL or SQLite database (SQLAlchemy URL)."""
    if not database.startswith("sqlite"):
        return pgdb.count_rows(database, table)
    path = database.split(":///", 1)[1]
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _drain(base: str, database: str) -> tuple[float, int, int]:
    """After the load: seconds until the outbox is empty and every request the gateway
    finished has its row (inf: not within DRAIN_WAIT_S); the rows and the requests."""
    started = time.monotonic()
    time.sleep(0.2)  # requests cut off by wrk's end finish
    served = answered(base)
    while True:
        rows = count_rows(database, "usage_records")
        if (rows >= served and backlog(base) == 0) or time.monotonic() - started > DRAIN_WAIT_S:
            break
        time.sleep(0.1)
    drained = time.monotonic() - started
    return (drained if rows >= served else float("inf")), rows, served


def _one(opts: Options, workers: int, database: str) -> Run:
    """One gateway of ``workers`` workers, usage in ``database`` ("": a fresh SQLite file)."""
    with Gateway(opts, workers, redis=True, database=database) as gw:
        check_gateway(opts, gw)
        database = gw.env["RELAYGATE_DATABASE_URL"]
        headers = {"Content-Type": "application/json", **opts.headers}
        script = loadgen.wrk_script(CHAT_BODY, headers, "chat")
        conns = CONNS_PER_WORKER * workers
        loadgen.warm_up(VIA + CHAT, script, 1, conns, opts.warmup_s)
        before = procs.tree_cpu_seconds(gw.pid)
        with DepthSampler(gw.base) as depth:
            result = loadgen.wrk(VIA + CHAT, script, 1, conns, opts.seconds)
        used = procs.tree_cpu_seconds(gw.pid) - before
        drain_s, rows, served = _drain(gw.base, database)
    cpu_us = used / max(1, result.requests) * 1e6
    return Run(workers, result, cpu_us, depth, drain_s, rows, served, gw.line())


def _drains(run: Run) -> tuple[bool, str]:
    """The writer keeps up while serving: the depth does not grow (its mean over the last
    third of the run is at most 1.5 x its mean over the first third, plus half a second
    of records), at most WAIT_S seconds of records wait at the end, and after the load
    every row is written within DRAIN_WAIT_S."""
    depths = [d for _, d in run.depth.samples]
    if len(depths) < 3:
        return False, "too few samples"
    third = len(depths) // 3
    first, last = depths[:third], depths[-third:]
    early, late = sum(first) / len(first), sum(last) / len(last)
    rate = run.load.rps
    steady = late <= 1.5 * early + rate / 2 and depths[-1] <= WAIT_S * rate
    drained = run.drain_s <= DRAIN_WAIT_S and run.rows == run.answered
    shown = (
        f"mean {early:,.0f} → {late:,.0f} (first → last third), peak {max(depths):,}, "
        f"{depths[-1] / rate if rate else 0:.1f} s of records at the end; all written "
        f"{run.drain_s:.1f} s after the load, {run.rows:,} rows / {run.answered:,} requests"
    )
    return steady and drained, shown


def scaling(sec: Section, opts: Options) -> None:
    """14. N workers on PostgreSQL + Redis against one; outbox depth; p99/p50 at saturation."""
    _scaling(sec, opts, postgres=True)


def scaling_sqlite(sec: Section, opts: Options) -> None:
    """16. The same with usage in SQLite (the default database): one elected usage writer
    per outbox folder for all the workers (usage.elect_writer)."""
    _scaling(sec, opts, postgres=False)


def _scaling(sec: Section, opts: Options, *, postgres: bool) -> None:
    cores = os.cpu_count() or 1
    counts = worker_counts(cores)
    store = (
        f"usage in a fresh PostgreSQL database ({pgdb.server_url()})"
        if postgres
        else "usage in a fresh SQLite file (bench/.work/db/)"
    )
    sec.details += [
        f"Every gateway: {store}, limits in",
        f"Redis. wrk -t1 -c(32 x workers) for {opts.seconds} s after a {opts.warmup_s} s warm-up,",
        f"workers {', '.join(map(str, counts))} ({cores} cores here). The usage outbox's depth",
        "(every worker's relaygate_usage_outbox_backlog, from GET /metrics) is sampled every",
        f"{SAMPLE_EVERY_S} s during the run; after it, the time until it is empty and the rows in",
        "usage_records match the requests the gateway finished (its own counter, any status).",
        "(With usage.elect_writer on, a file a worker hands to the writer is counted again",
        "once adopted, within 0.5 s: the depth may miss it in between.)",
        "",
        "With fewer cores than workers + the load generator + nginx + PostgreSQL, req/s cannot",
        "grow with the workers; the gateway's CPU time per request (all its processes) can",
        "still show whether one more worker costs more per request: efficiency = CPU per",
        "request at 1 worker / at N workers.",
        "",
    ]
    if opts.direct_only:
        return
    database_urls = []
    runs: list[Run] = []
    try:
        for workers in counts:
            database = pgdb.fresh(f"scaling_w{workers}") if postgres else ""
            if database:
                database_urls.append(database)
            runs.append(_one(opts, workers, database))
    finally:
        for database in database_urls:
            pgdb.drop(database)
    sec.details += [
        "| Workers | Req/s | Per worker | CPU/request | Efficiency | p50 | p99 | p99/p50 "
        "| Outbox depth (1/s) | Drained after | Rows / answered | Errors |",
        "|---" * 12 + "|",
    ]
    base = runs[0]
    for run in runs:
        r = run.load
        errors = ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "0"
        sec.details.append(
            f"| {run.workers} | {r.rps:,.0f} | {r.rps / run.workers:,.0f} | {run.cpu_us:,.0f} µs"
            f" | {base.cpu_us / run.cpu_us:.2f} | {fmt_ms(r.p50_ms)} | {fmt_ms(r.p99_ms)}"
            f" | {r.p99_ms / r.p50_ms:.1f} | {run.depth.series() or 'n/a'} | {run.drain_s:.1f} s"
            f" | {run.rows:,} / {run.answered:,} | {errors} |"
        )
    sec.details += ["", "Commands:", "", "```", *dict.fromkeys(r.load.command for r in runs)]
    sec.details += ["```", "", *(run.command for run in runs)]
    sec.data = {
        str(run.workers): vars(run.load)
        | {"cpu_us_per_request": run.cpu_us, "drain_s": run.drain_s, "rows": run.rows}
        | {"outbox_depth": run.depth.samples, "answered": run.answered}
        for run in runs
    }
    sec.targets += _targets(runs, cores, "PostgreSQL" if postgres else "SQLite")


def _targets(runs: list[Run], cores: int, store: str) -> list[Target]:
    """The issue's targets are for PostgreSQL; on SQLite the same figures are shown, and
    only the outbox's draining is judged (its one writer for all workers must keep up)."""
    base, judged = runs[0], store == "PostgreSQL"
    suffix = "" if judged else f" ({store}: shown, not a target)"
    targets = [
        Target(
            f"One worker at saturation ({store} + Redis): p99 / p50",
            f"≤ {TAIL_RATIO:g}",
            f"{base.load.p99_ms / base.load.p50_ms:.2f} "
            f"({fmt_ms(base.load.p50_ms)} / {fmt_ms(base.load.p99_ms)})",
            base.load.p99_ms <= TAIL_RATIO * base.load.p50_ms if judged else None,
        )
    ]
    for run in runs[1:]:
        n, ratio = run.workers, run.load.rps / (base.load.rps * run.workers)
        # N workers, wrk, nginx, PostgreSQL and Redis need more than N cores to show it.
        measurable = cores >= 2 * n
        targets.append(
            Target(
                f"Throughput, {n} workers ÷ ({n} × 1 worker)",
                f"≥ {EFFICIENCY:g}",
                f"{ratio:.2f}"
                + ("" if measurable else f" (only {cores} cores: not judged)")
                + suffix,
                ratio >= EFFICIENCY if measurable and judged else None,
            )
        )
        targets.append(
            Target(
                f"CPU per request, 1 worker ÷ {n} workers",
                f"≥ {EFFICIENCY:g}",
                f"{base.cpu_us / run.cpu_us:.2f} ({base.cpu_us:,.0f} → {run.cpu_us:,.0f} µs)"
                + suffix,
                base.cpu_us / run.cpu_us >= EFFICIENCY if judged else None,
            )
        )
    for run in runs:
        passed, shown = _drains(run)
        targets.append(
            Target(
                f"Usage outbox drains while serving, {run.workers} worker(s), {store}",
                f"depth not growing, ≤ {WAIT_S:g} s of records waiting, every row written",
                shown,
                passed,
            )
        )
    return targets
