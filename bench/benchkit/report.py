"""Machine facts and the RESULTS.md renderer."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from . import gateway, loadgen, redis_store, source, upstream
from .common import REPO_DIR, Section

PACKAGES = ("relaygate", "uvicorn", "uvloop", "httptools", "aiohttp", "msgspec", "redis")


def _first_line_with(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1]
    except OSError:
        pass
    return "unknown"


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    """What the bench ran on."""
    mem_kib = int(_first_line_with("/proc/meminfo", "MemTotal").split()[0])
    info = {
        "CPU": _first_line_with("/proc/cpuinfo", "model name"),
        "Cores (logical CPUs)": str(os.cpu_count()),
        "RAM": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "OS": _first_line_with("/etc/os-release", "PRETTY_NAME").strip('"'),
        "Kernel": platform.release(),
        "Python": sys.version.split()[0] + f" ({_relative(sys.executable)})",
        "relaygate --version": gateway.version() or "not available",
        "relaygate source": source.describe(),
    }
    info.update({f"{name} (pip)": _package_version(name) for name in PACKAGES})
    info["nginx"] = upstream.nginx_version()
    info["Redis server"] = redis_store.used() or "not used"
    info.update({name: loadgen.tool_version(name) for name in ("wrk", "hey")})
    return info


def _rel(text: str) -> str:
    """Paths relative to the repository, and no secret (SECRETS) in the report."""
    for secret, placeholder in SECRETS.items():
        text = text.replace(secret, placeholder)
    return text.replace(str(REPO_DIR) + "/", "")


def _targets_table(sections: list[Section]) -> list[str]:
    lines = ["| Target | Goal | Measured | Result |", "|---|---|---|---|"]
    for section in sections:
        for t in section.targets:
            verdict = {True: "PASS", False: "**FAIL**", None: "not measured"}[t.passed]
            lines.append(f"| {t.name} | {t.target} | {t.measured} | {verdict} |")
        if section.error and not section.targets:
            lines.append(f"| {section.title} | — | error: see below | not measured |")
    return lines


def _section_block(section: Section) -> list[str]:
    lines = [f"## {section.title}", ""]
    if section.error:
        lines += ["**Error:**", "", "```", _rel(section.error.strip()), "```", ""]
    return lines + [_rel(line) for line in section.details] + [""]


def load_average() -> str:
    """The 1/5/15-minute load averages, as the kernel reports them."""
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def render(sections: list[Section], started: dt.datetime, elapsed_s: float, argv: str) -> str:
    """The whole RESULTS.md."""
    lines = [
        "# relaygate benchmark results",
        "",
        f"Ran {started:%Y-%m-%d %H:%M %Z} ({elapsed_s:.0f} s in all) with `{_rel(argv)}`.",
        "All traffic on 127.0.0.1: load generator, gateway and the nginx fake upstream share",
        "the same machine, so every figure includes CPU contention between them.",
        f"Load average at start (1/5/15 min): {LOAD_AT_IMPORT}.",
        *NOTES,
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in machine().items()]
    lines += ["", "## Targets", "", *_targets_table(sections), ""]
    for section in sections:
        lines += _section_block(section)
    lines += ["## Where the time goes", ""]  # filled in by hand, from py-spy profiles
    return "\n".join(lines)


LOAD_AT_IMPORT = load_average()  # run.py imports this module before starting anything
NOTES: list[str] = []  # lines for the header, added by run.py
SECRETS: dict[str, str] = {}  # API keys of this run -> what the report shows instead


def _relative(path: str) -> str:
    """A path inside the checkout, shown relative to it (no machine paths in the report)."""
    root = Path(__file__).resolve().parents[2]
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return Path(path).name


SOAK_BEGIN, SOAK_END = "<!-- soak:begin -->", "<!-- soak:end -->"


def kept_soak_section(path: Path) -> str:
    """The soak's section of the RESULTS.md being replaced (bench/soak.py writes it between
    these markers), to append to the new one: `make bench` does not rerun the soak."""
    try:
        old = path.read_text()
    except OSError:
        return ""
    if SOAK_BEGIN not in old or SOAK_END not in old:
        return ""
    block = old.split(SOAK_BEGIN, 1)[1].split(SOAK_END, 1)[0]
    return f"\n\n{SOAK_BEGIN}{block}{SOAK_END}\n"
