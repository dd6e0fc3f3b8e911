"""Which relaygate source the bench measures, and how the report names it.

By default: the package the venv imports (the working tree, with any uncommitted changes).
With `run.py --ref REF`: the src/relaygate of that git commit, extracted with `git archive`
to bench/.work/ref-<sha>/src and put first on PYTHONPATH, for the gateway processes and for
the in-process measurements alike (the venv's dependencies stay in use).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile

from .common import REPO_DIR, WORK_DIR, BenchError

_USED: list[str] = []  # the ref and commit given to use_ref(), for describe()
_REF_ENV = "RELAYGATE_BENCH_REF"  # the commit this process runs the source of


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_DIR), *args], capture_output=True, check=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"git {' '.join(args)} failed: {exc}") from exc
    return out.stdout.decode().strip()


def use_ref(ref: str) -> None:
    """Measure src/relaygate as of git ``ref`` instead of the working tree."""
    sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    target = WORK_DIR / f"ref-{sha[:12]}"
    if not (target / "src" / "relaygate" / "__init__.py").exists():
        archive = subprocess.run(
            ["git", "-C", str(REPO_DIR), "archive", "--format=tar", sha, "src/relaygate"],
            capture_output=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    src = str(target / "src")
    _USED[:] = [ref, sha]
    if os.environ.get(_REF_ENV) == sha:
        return  # this process was started with it first on its path
    # The bench has imported some of relaygate already (settings, usage records): the
    # in-process sections would measure those of the working tree. Start again, with the
    # ref's source first on the path of this process and of every gateway it starts.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    os.environ[_REF_ENV] = sha
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def describe() -> str:
    """One line for the report: which commit, and whether uncommitted changes were in it."""
    try:
        if _USED:
            ref, sha = _USED
            return f"git {sha[:10]} (`--ref {ref}`), uncommitted changes left out"
        head = _git("rev-parse", "--short=10", "HEAD")
        changed = _git("status", "--porcelain", "--", "src").splitlines()
    except BenchError:
        return "unknown (not a git checkout)"
    if not changed:
        return f"git {head}, no uncommitted changes under src/"
    return f"working tree at git {head} + uncommitted changes to {len(changed)} files under src/"
