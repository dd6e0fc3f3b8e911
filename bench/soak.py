"""relaygate soak: two replicas behind one PostgreSQL + Redis, mixed load for a while, then
a burst at ten times that rate, then the same load again.

    .venv/bin/python bench/soak.py                 # 30 minutes (make soak)
    .venv/bin/python bench/soak.py --minutes 3     # a short proof run

It samples each replica's RSS, open file descriptors, event-loop lag and usage outbox
backlog, counts responses by status on the client side, and judges: RSS, fds and loop
lag flat (see benchkit/soak_report.py), load shed with 429/503 during the burst with no
replica lost, rate and latency back afterwards. Writes bench/soak/ (plot, summary,
samples) and the soak section of bench/RESULTS.md. See bench/README.md, "make soak".
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchkit import gateway, keys, procs, redis_store, report, upstream
from benchkit.common import (
    BENCH_DIR,
    CHAT,
    CHAT_BODY,
    GATEWAY_PORT,
    STREAM_BODY,
    WORK_DIR,
    BenchError,
    Options,
    cmdline,
    port_is_free,
)
from benchkit.gateway import Gateway
from benchkit.soak_load import Chunk, Sampler, Stream, run_chunk
from benchkit.soak_report import burst_and_recovery, flatness, phase_table, plot, table
from run import ensure_tools, raise_nofile

PG_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
PG_DSN = "postgresql://postgres@127.0.0.1:5432"
OUT_DIR = BENCH_DIR / "soak"
MARK_BEGIN, MARK_END = report.SOAK_BEGIN, report.SOAK_END
# Each replica's operations listener (ops.listen): /metrics is scraped there, from a thread
# of the replica that answers while its event loop is saturated by the burst.
OPS_PORT = 19100
STREAM_SHARE = 0.2  # of the requests offered: streaming (64 chunks each), the rest plain


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30, help="steady phase (default 30)")
    p.add_argument("--rate", type=float, default=0, help="total req/s (default: calibrated)")
    p.add_argument("--load", type=float, default=0.4, help="share of capacity to offer")
    p.add_argument("--burst-factor", type=float, default=10)
    p.add_argument("--burst-seconds", type=float, default=60)
    p.add_argument("--recovery-seconds", type=float, default=60)
    p.add_argument("--chunk-seconds", type=int, default=10, help="length of each wrk run")
    p.add_argument("--sample-seconds", type=float, default=2)
    p.add_argument("--max-in-flight", type=int, default=64, help="http.max_in_flight a replica")
    p.add_argument("--burst-conns", type=int, default=256, help="connections per wrk in burst")
    p.add_argument("--out", type=Path, default=OUT_DIR)
    p.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    p.add_argument(
        "--rerender",
        type=Path,
        metavar="SAMPLES_JSON",
        help="judge and plot an earlier run's samples.json again, without running anything",
    )
    return p.parse_args(argv)


async def _admin_sql(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(f"{PG_DSN}/postgres")
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _usage_rows(db: str) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(f"{PG_DSN}/{db}")
    try:
        rows = await conn.fetch("SELECT http_status, count(*) FROM usage_records GROUP BY 1")
    finally:
        await conn.close()
    return {str(r[0]): int(r[1]) for r in rows}


class Replica(Gateway):
    """One `relaygate serve --workers 1` on the soak's shared PostgreSQL database and Redis
    prefix, with its own usage outbox and the in-flight cap."""

    def __init__(self, opts: Options, index: int, db_url: str, prefix: str, cap: int) -> None:
        super().__init__(opts, 1, port=GATEWAY_PORT + index, redis=True)
        self.index = index
        self.name = f"soak-replica-{index}"
        self.log_path = WORK_DIR / f"{self.name}.log"
        self.redis_prefix = prefix
        self.db_url = db_url
        self.cap = cap

    @property
    def ops_base(self) -> str:
        return f"http://127.0.0.1:{OPS_PORT + self.index}"

    def _prepare(self) -> None:
        self.env["RELAYGATE_OPS__LISTEN"] = self.ops_base.removeprefix("http://")
        self.env["RELAYGATE_DATABASE_URL"] = self.db_url
        if outbox := keys.fresh_outbox(self.name):
            self.env["RELAYGATE_USAGE__OUTBOX_DIR"] = outbox
        self.env["RELAYGATE_REDIS_URL"] = redis_store.url()
        self.env["RELAYGATE_REDIS_PREFIX"] = self.redis_prefix
        self.env["RELAYGATE_HTTP__MAX_IN_FLIGHT"] = str(self.cap)


def calibrate(
    streams: list[Stream], headers: dict[str, str], t0: float
) -> tuple[float, list[Chunk]]:
    """Closed-loop capacity of both replicas under the mix, in req/s: after 5 s of warm-up,
    wrk -c16 on every stream for 10 s at once (paced far beyond reach: it never waits)."""
    for s in streams:
        s.rate = 100_000.0
    # Warm-up first: the first requests pay for imports, pools and the key lookup.
    warm = run_chunk(streams, headers, phase="warm-up", t0=t0, seconds=5, factor=1, conns=4)
    chunks = run_chunk(streams, headers, phase="calibrate", t0=t0, seconds=10, factor=1, conns=16)
    return sum(c.rps for c in chunks), warm + chunks


def set_rates(streams: list[Stream], total: float) -> None:
    replicas = len({s.replica for s in streams})
    for s in streams:
        share = STREAM_SHARE if s.kind == "stream" else 1 - STREAM_SHARE
        s.rate = total * share / replicas


def phase(
    name: str,
    seconds: float,
    streams: list[Stream],
    headers: dict[str, str],
    t0: float,
    args: argparse.Namespace,
    sampler: Sampler,
    factor: float = 1,
    conns: int = 32,
) -> list[Chunk]:
    sampler.phase = name
    chunks: list[Chunk] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) >= 1:
        length = int(min(args.chunk_seconds, left))  # wrk takes whole seconds
        batch = run_chunk(
            streams, headers, phase=name, t0=t0, seconds=length, factor=factor, conns=conns
        )
        chunks += batch
        ok = sum(c.ok for c in batch) / length
        shed = sum(c.shed for c in batch) / length
        p99 = max(c.p99_ms for c in batch)
        print(f"   {name} t={batch[0].start_s:5.0f}s: {ok:7,.0f} 2xx/s, {shed:7,.0f} shed/s, "
              f"worst p99 {p99:8.2f} ms", flush=True)  # fmt: skip
    return chunks


def run(args: argparse.Namespace) -> dict[str, Any]:
    procs.install_cleanup()
    raise_nofile()
    ensure_tools(redis=True)
    for port in (GATEWAY_PORT, GATEWAY_PORT + 1, OPS_PORT, OPS_PORT + 1):
        if not port_is_free(port):
            raise BenchError(f"127.0.0.1:{port} is already in use")
    key = keys.new_secret()
    tier_key = keys.new_secret()  # tier "bench": limits checked, none reachable
    report.SECRETS.update({key: "<admin key>", tier_key: "<bench key>"})
    opts = Options(api_key=key, headers=keys.bearer(key))
    db = f"rgsoak_{uuid.uuid4().hex[:12]}"
    db_url = f"{PG_SERVER}/{db}"
    asyncio.run(_admin_sql(f'CREATE DATABASE "{db}"'))
    prefix = redis_store.new_prefix()
    info: dict[str, Any] = {"database": db, "redis_prefix": prefix, "args": vars(args)}
    try:
        from relaygate.store.migrate import upgrade

        upgrade(db_url)  # once, before either replica starts
        with upstream.Nginx():
            a = Replica(opts, 0, db_url, prefix, args.max_in_flight)
            b = Replica(opts, 1, db_url, prefix, args.max_in_flight)
            with a, b:
                keys.add_keys(db_url, {tier_key: keys.BENCH_TIER})
                headers = {"Content-Type": "application/json", **keys.bearer(tier_key)}
                for replica in (a, b):
                    gateway.check(replica.base, keys.bearer(tier_key))
                info["replicas"] = [a.line(), b.line()]
                info.update(soak(args, [a, b], headers))
            # Stopped with SIGTERM: each drained its outbox into the database.
            info["usage_rows"] = asyncio.run(_usage_rows(db))
    finally:
        asyncio.run(_admin_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    return info


def soak(
    args: argparse.Namespace, replicas: list[Replica], headers: dict[str, str]
) -> dict[str, Any]:
    t0 = time.monotonic()
    streams = [
        Stream(i, kind, r.base + CHAT, body, 0.0)
        for i, r in enumerate(replicas)
        for kind, body in (("chat", CHAT_BODY), ("stream", STREAM_BODY))
    ]
    sampler = Sampler([(r.pid, r.ops_base, r.base) for r in replicas], t0, args.sample_seconds)
    sampler.start()
    try:
        capacity, setup = calibrate(streams, headers, t0)
        total = args.rate or capacity * args.load
        set_rates(streams, total)
        print(f"   capacity {capacity:,.0f} req/s (closed loop, c=16 per stream); offering "
              f"{total:,.0f} req/s ({STREAM_SHARE:.0%} streaming)", flush=True)  # fmt: skip
        steady_start = time.monotonic() - t0
        chunks = phase("steady", args.minutes * 60, streams, headers, t0, args, sampler)
        steady_end = time.monotonic() - t0
        conns = args.burst_conns
        chunks += phase(
            "burst", args.burst_seconds, streams, headers, t0, args, sampler,
            factor=args.burst_factor, conns=conns,
        )  # fmt: skip
        chunks += phase("recovery", args.recovery_seconds, streams, headers, t0, args, sampler)
        sampler.phase = "end"
        time.sleep(args.sample_seconds * 2)
    finally:
        sampler.stop()
    return {
        "capacity_rps": capacity,
        "offered_rps": total,
        "steady": (steady_start, steady_end),
        "chunks": chunks,
        "setup_chunks": setup,  # warm-up and calibration: not judged, but they made records
        "samples": sampler.samples,
        "rates": {f"{s.kind} replica {s.replica}": s.rate for s in streams},
    }


def outbox_line(samples: list[dict[str, Any]]) -> str:
    """The usage outbox backlog of each replica: its largest, and its last sample."""
    parts = []
    for r in range(2):
        seen = [s["outbox_backlog"] for s in samples if s["replica"] == r]
        seen = [v for v in seen if v is not None]
        top, last = (max(seen), seen[-1]) if seen else (math.nan, math.nan)
        parts.append(f"replica {r}: max {top:,.0f}, last sample {last:,.0f}")
    return "Usage outbox backlog (records): " + "; ".join(parts) + "."


def commands(info: dict[str, Any]) -> list[str]:
    """The replicas' command lines and one wrk run of each kind, steady and burst."""
    lines = ["Commands (replica 0's wrk runs; replica 1's differ only in the port):", "", "```"]
    lines += [line.removeprefix("Gateway: ").strip("`") for line in info.get("replicas", [])]
    seen = set()
    for c in info["chunks"]:
        if c.replica == 0 and c.phase in ("steady", "burst") and (c.phase, c.kind) not in seen:
            seen.add((c.phase, c.kind))
            lines.append(f"# {c.phase}, {c.kind}\n{c.command}")
    return [*lines, "```"]


def write(args: argparse.Namespace, info: dict[str, Any]) -> bool:
    started = dt.datetime.fromisoformat(info["started"])
    wall = float(info["wall_s"])
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    chunks: list[Chunk] = info["chunks"]
    samples: list[dict[str, Any]] = info["samples"]
    flat = flatness(samples, info["steady"], 2)
    judged, figures = burst_and_recovery(chunks, samples, pre_burst_s=60)
    verdicts = flat + judged
    ok2xx = sum(c.ok for c in [*chunks, *info["setup_chunks"]])
    rows = info.get("usage_rows", {})
    usage_ok = sum(n for s, n in rows.items() if s.startswith("2"))
    minutes = args.minutes
    title = (
        f"relaygate soak {started:%Y-%m-%d %H:%M} UTC: 2 replicas, {minutes:g} min steady at "
        f"{info['offered_rps']:,.0f} req/s, burst x{args.burst_factor:g} for "
        f"{args.burst_seconds:g} s (shaded), {args.recovery_seconds:g} s recovery"
    )
    plot(samples, chunks, 2, out / "soak.png", title)
    quiet = "" if minutes >= 30 else (
        f" **This was a short run ({minutes:g} minutes steady, not the 30 of `make soak`):**"
        " it shows the harness works; a slope over so few minutes says little about leaks."
    )  # fmt: skip
    lines = [
        MARK_BEGIN,
        "## Soak: two replicas, steady load, a burst at ten times it, recovery (`make soak`)",
        "",
        f"Ran {started:%Y-%m-%d %H:%M} UTC, {wall / 60:.1f} minutes in all, with "
        f"`{info['command']}`.{quiet}",
        "The machine is shared (2 CPUs with other work, and load generator, nginx, both",
        "replicas, PostgreSQL and Redis on them): absolute rates are this machine's, not the",
        "gateway's; the judgements compare the run with itself.",
        "",
        f"Two `relaygate serve --workers 1` replicas (ports {GATEWAY_PORT}-{GATEWAY_PORT + 1})"
        " on one fresh PostgreSQL database and one Redis prefix, `http.max_in_flight` "
        f"{args.max_in_flight} each; key of tier `bench` (5 limits, none reachable), usage "
        "on, cache off. Load: one paced wrk per replica and kind (plain chat completions, and"
        f" {STREAM_SHARE:.0%} of requests streaming 64 chunks), in {args.chunk_seconds:g} s "
        f"runs. Closed-loop capacity measured first: {info['capacity_rps']:,.0f} req/s; "
        f"offered {info['offered_rps']:,.0f} req/s ({args.load:.0%} of it) for "
        f"{minutes:g} min, then {args.burst_factor:g}x for {args.burst_seconds:g} s "
        f"({args.burst_conns} connections per wrk), then {args.recovery_seconds:g} s at the "
        "steady rate. Samples every "
        f"{args.sample_seconds:g} s: RSS (VmRSS), open fds (/proc), and from /metrics "
        "`relaygate_event_loop_lag_seconds` and `relaygate_usage_outbox_backlog`, scraped "
        f"on each replica's operations listener (`ops.listen`, ports {OPS_PORT}-{OPS_PORT + 1}),"
        " with the main port's /health probed at the same moment.",
        "",
        "![soak](soak/soak.png)",
        "",
        *table(verdicts),
        "",
        *phase_table(figures),
        "",
        f"Flat: Theil-Sen slope over the last 2/3 of the steady phase, per hour. Recovery:"
        f" the recovery phase after its first {args.chunk_seconds:g} s, against the last 60 s"
        " before the burst.",
        f"Usage records in PostgreSQL after both replicas stopped: {sum(rows.values()):,} "
        f"({usage_ok:,} with a 2xx status) for {ok2xx:,} 2xx responses counted by the clients"
        f" (warm-up and calibration included); by status: {json.dumps(rows, sort_keys=True)}."
        " A 499 is a request whose client left before the answer ended: wrk closes its"
        " connections at the end of each run, cutting the requests still in flight (most in"
        " the burst); a request answered 200 just as its run ended has a record but was not"
        " counted by wrk.",
        outbox_line(samples),
        "",
        *commands(info),
        MARK_END,
    ]
    text = report._rel("\n".join(lines))
    (out / "summary.md").write_text(text.replace("](soak/", "](") + "\n")
    raw = {k: v for k, v in info.items() if k not in ("chunks", "setup_chunks", "verdicts")}
    raw["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    raw["chunks"] = [asdict(c) for c in chunks]
    raw["setup_chunks"] = [asdict(c) for c in info["setup_chunks"]]
    raw["verdicts"] = [asdict(v) for v in verdicts]
    (out / "samples.json").write_text(report._rel(json.dumps(raw, indent=1, default=str)))
    results: Path = args.results
    old = results.read_text() if results.exists() else ""
    if MARK_BEGIN in old and MARK_END in old:
        head, rest = old.split(MARK_BEGIN, 1)
        new = head + text + rest.split(MARK_END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    results.write_text(new)
    print("\n".join(table(verdicts)), flush=True)
    print(f"wrote {out}/soak.png, {out}/summary.md, {out}/samples.json and {results}", flush=True)
    return all(v.passed is not False for v in verdicts)


def load(args: argparse.Namespace) -> dict[str, Any]:
    """An earlier run (its samples.json) as run() returned it; its settings into ``args``."""
    info: dict[str, Any] = json.loads(args.rerender.read_text())
    for key, value in info["args"].items():
        if key not in ("out", "results", "rerender"):
            setattr(args, key, value)
    info["chunks"] = [Chunk(**c) for c in info["chunks"]]
    info["setup_chunks"] = [Chunk(**c) for c in info.get("setup_chunks", [])]
    info["steady"] = tuple(info["steady"])
    return info


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.rerender:
        return 0 if write(args, load(args)) else 1
    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    try:
        info = run(args)
    except BenchError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop_all()
    info["started"] = started.isoformat()
    info["wall_s"] = round(time.monotonic() - t0, 1)
    info["command"] = cmdline([".venv/bin/python", "bench/soak.py", *argv])
    return 0 if write(args, info) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
