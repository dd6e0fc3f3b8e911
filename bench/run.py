"""relaygate benchmark: the gateway's added cost over a fast nginx fake upstream.

    .venv/bin/python bench/run.py                       # everything -> bench/RESULTS.md
    .venv/bin/python bench/run.py --only latency,held   # some sections -> bench/.work/
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchkit import gateway, keys, procs, redis_store, report, source, upstream
from benchkit.common import (
    BENCH_DIR,
    GATEWAY_PORT,
    UPSTREAM_PORT,
    WORK_DIR,
    BenchError,
    GatewayDown,
    Options,
    Section,
    cmdline,
    port_is_free,
)
from benchkit.sections import SECTIONS

# sections that start gateways with Redis
REDIS_SECTIONS = {"throughput", "idle", "auth", "cache", "scaling", "scaling-sqlite"}
APT_PACKAGES = ["nginx-light", "libnginx-mod-http-echo", "wrk", "hey", "redis-server"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma list of: {','.join(SECTIONS)}")
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk/hey run")
    parser.add_argument("--streams", type=int, default=2000, help="sequential streams (TTFC)")
    parser.add_argument("--held", type=int, default=1000, help="streams held open at once")
    parser.add_argument("--rounds", type=int, default=3, help="rounds for latency/streaming")
    parser.add_argument("--direct-only", action="store_true", help="skip all gateway runs")
    parser.add_argument("--out", type=Path, help="default: bench/RESULTS.md for a full run")
    parser.add_argument(
        "--ref", help="measure src/relaygate of this git commit, not the working tree"
    )
    parser.add_argument(
        "--install",
        action="store_true",
        help="install missing load tools with apt-get (as root); without it, say what to run",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120,
        help="max seconds to wait for idle CPUs, at start and before each section",
    )
    args = parser.parse_args(argv)
    args.keys = [k.strip() for k in args.only.split(",") if k.strip()] or list(SECTIONS)
    unknown = sorted(set(args.keys) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    return args


def raise_nofile() -> int:
    """Lift RLIMIT_NOFILE to the hard limit: 1,000 streams need ~2,000 sockets in the gateway."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _missing_tools(redis: bool) -> list[str]:
    missing = [tool for tool in ("wrk", "hey") if shutil.which(tool) is None]
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        missing.append("nginx")
    if not upstream.ECHO_MODULE.exists():
        missing.append("nginx echo module")
    if redis and shutil.which("redis-server") is None and not redis_store.answers():
        missing.append("redis-server (no Redis answers at 127.0.0.1:6379)")
    return missing


def ensure_tools(redis: bool, install: bool = False) -> None:
    """Stop, saying the exact apt-get command, when nginx/echo module/wrk/hey (or redis-server,
    when ``redis`` is needed and none answers) are missing. With ``install`` (``make bench
    INSTALL=1``), run that command here instead, as root: system packages change only when
    the user asked for it."""
    if not (missing := _missing_tools(redis)):
        return
    command = ["apt-get", "install", "-y", *APT_PACKAGES]
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing (asked for by --install): {cmdline(command)}", flush=True)
        if subprocess.run(command, capture_output=True, check=False, timeout=600).returncode:
            subprocess.run(["apt-get", "update"], capture_output=True, check=False, timeout=600)
            subprocess.run(command, capture_output=True, check=False, timeout=600)
        missing = _missing_tools(redis)
    if missing:
        sudo = "" if os.geteuid() == 0 else "sudo "
        raise BenchError(
            f"missing {', '.join(missing)}; install with: {sudo}{cmdline(command)} "
            "(or, as root, `make bench INSTALL=1` runs that itself)"
        )


def run_section(key: str, opts: Options) -> Section:
    title, func = SECTIONS[key]
    section = Section(key, title)
    print(f"== {title}", flush=True)
    if (busy := procs.wait_for_quiet(opts.quiet_wait)) > 0.10:
        print(f"   WARNING: CPUs still {busy:.0%} busy after {opts.quiet_wait:.0f} s", flush=True)
    started, ticks = time.monotonic(), procs.cpu_ticks()
    try:
        func(section, opts)
    except GatewayDown as exc:
        opts.gateway_down = str(exc)
        section.error = str(exc)
    except BenchError as exc:
        section.error = str(exc)
    except Exception:
        section.error = traceback.format_exc()
    if section.error:
        print(f"   ERROR: {section.error.strip()[:2000]}", flush=True)
    if problems := gateway.take_log_problems():
        section.details += ["", "Gateway log lines worth a look:", "", "```", *problems, "```"]
        print("   gateway log:\n   " + "\n   ".join(problems), flush=True)
    for t in section.targets:
        print(f"   {t.name}: {t.measured} (goal {t.target}) -> {t.passed}", flush=True)
    note_foreign_load(section, procs.foreign_cpu_seconds(ticks), time.monotonic() - started)
    return section


def note_foreign_load(section: Section, cpu_s: float, wall_s: float) -> None:
    """Record (and warn about) CPU used by other programs while the section ran."""
    share = cpu_s / wall_s if wall_s > 0 else 0.0
    section.data["foreign_cpu_s"] = round(cpu_s, 2)
    line = f"Other programs on the machine used {cpu_s:.1f} CPU-s in this section's {wall_s:.0f} s"
    section.details.append(f"\n{line} ({share:.0%} of one core).")
    print(f"   ({wall_s:.0f} s; other programs: {share:.0%} of a core)", flush=True)
    if share > 0.10:
        section.details.append("**The machine was not idle: treat these figures with care.**")
        print("   WARNING: other programs were busy during this section", flush=True)


def run_all(args: argparse.Namespace, opts: Options) -> list[Section]:
    with upstream.Nginx() as nginx:
        opts.nginx_pid = nginx.proc.pid if nginx.proc else 0
        print(f"nginx fake upstream up: {cmdline(nginx.argv())}", flush=True)
        sections = []
        for key in args.keys:
            if opts.gateway_down:  # no point waiting for it again in every section
                sections.append(Section(key, SECTIONS[key][0], error="skipped: gateway is down"))
            else:
                sections.append(run_section(key, opts))
        return sections


def output_path(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    full = args.keys == list(SECTIONS) and not args.direct_only
    return BENCH_DIR / "RESULTS.md" if full else WORK_DIR / "RESULTS-partial.md"


def write_results(path: Path, sections: list[Section], started: dt.datetime, t0: float) -> None:
    argv = cmdline([".venv/bin/python", "bench/run.py", *sys.argv[1:]])
    path.parent.mkdir(parents=True, exist_ok=True)
    text = report.render(sections, started, time.monotonic() - t0, argv)
    path.write_text(text + report.kept_soak_section(path))
    raw = {s.key: {"data": s.data, "error": s.error} for s in sections}
    (WORK_DIR / "results.json").write_text(json.dumps(raw, indent=2, default=str))
    print(f"wrote {path} and {WORK_DIR / 'results.json'}", flush=True)


def preflight(args: argparse.Namespace) -> Options:
    procs.install_cleanup()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(keys.DB_DIR, ignore_errors=True)  # databases, outboxes, logs of earlier runs
    shutil.rmtree(keys.OUTBOX_DIR, ignore_errors=True)
    for old in WORK_DIR.glob("gateway-*.log"):
        old.unlink()
    if args.ref:
        source.use_ref(args.ref)  # before anything starts or imports relaygate
    nofile = raise_nofile()
    redis = not args.direct_only and bool(set(args.keys) & REDIS_SECTIONS)
    ensure_tools(redis=redis, install=args.install)
    if not args.direct_only and gateway.version() is None:
        raise BenchError(
            f"the gateway is not usable: `{gateway.EXE} --version` failed. "
            "Install it (make install) or run with --direct-only."
        )
    for port in (UPSTREAM_PORT, GATEWAY_PORT):
        if not port_is_free(port):
            raise BenchError(f"127.0.0.1:{port} is already in use; stop whatever listens there")
    if args.held * 2 + 100 > nofile:
        raise BenchError(f"RLIMIT_NOFILE {nofile} is too low for {args.held} held streams")
    print("waiting for the CPUs to be idle (other programs skew the figures)...", flush=True)
    busy = procs.wait_for_quiet(args.quiet_wait)
    report.NOTES.append(f"CPU busy just before the first section: {busy:.0%} of all CPUs.")
    if busy > 0.10:
        print(f"WARNING: CPUs still {busy:.0%} busy after {args.quiet_wait:.0f} s", flush=True)
    key = keys.new_secret()  # the run's admin key; nginx ignores the header
    report.SECRETS[key] = "<admin key>"
    return Options(
        seconds=args.seconds,
        streams=args.streams,
        rounds=args.rounds,
        held=args.held,
        api_key=key,
        headers=keys.bearer(key),
        direct_only=args.direct_only,
        quiet_wait=args.quiet_wait,
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    try:
        opts = preflight(args)
        sections = run_all(args, opts)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop_all()
    write_results(output_path(args), sections, started, t0)
    return 1 if any(s.error for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
