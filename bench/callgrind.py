"""Instructions per request through the whole gateway, counted by callgrind (noise-free).

Wall-clock figures on a shared 2-core machine move by ±25% from one hour to the next;
instruction counts do not. This runs one gateway worker (SQLite, the bench's config)
under valgrind's callgrind, sends it requests one at a time, and counts every
instruction of every thread of the gateway process: the event loop, the usage writer,
the stored-response writer, the outbox, aiosqlite.

For each API: warm up, zero the counters, send ``--requests`` requests, wait for the
background batches to be written, dump; then zero again, stay idle for as long, dump.
Per request = (loaded - idle) / requests. ``--threads`` also prints each thread's share.

Under valgrind the gateway runs ~50 times slower, so a batch window gathers ~50 times fewer
records than at full speed, and what a batch costs (a hand-over to a thread, a commit)
would weigh ~50 times more per request. ``--dilate`` (default 50) stretches the windows
by as much (``usage.write_interval``, ``responses.save_window``; ``usage.fsync_window``
up to its 1 s bound), so that batches hold about as many records as they do at c=1 at
full speed; ``--dilate 1`` keeps the defaults.

    .venv/bin/python bench/callgrind.py                      # every API of section 10
    .venv/bin/python bench/callgrind.py --api chat --requests 1000 --threads
    .venv/bin/python bench/callgrind.py --api chat --redis redis://127.0.0.1:6379/0
    mkdir -p /tmp/old && git archive HEAD~1 src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/callgrind.py   # that commit's src

Needs valgrind (apt-get install -y valgrind) and the bench's nginx upstream.
A 2,000-request API takes about two minutes here.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import signal
import subprocess
import time
import uuid

from benchkit import keys
from benchkit.api_sections import APIS
from benchkit.common import (
    HOST,
    REPO_DIR,
    VENV_BIN,
    WORK_DIR,
    BenchError,
    callgrind_totals,
    wait_for,
)
from benchkit.gateway import environ, serve_argv
from benchkit.upstream import Nginx

OUT_DIR = WORK_DIR / "callgrind"
PORT = 18000
ADMIN_KEY = "rg_callgrind_" + "x" * 32
WRITE_INTERVAL, SAVE_WINDOW, FSYNC_WINDOW = 0.2, 0.05, 0.2  # the defaults (settings.py)
SHORT = {"chat": 0, "responses": 1, "responses-nostore": 2, "ollama": 3}


class Counted:
    """One gateway worker under callgrind, with counters it zeroes and dumps on demand."""

    def __init__(self, name: str, dilate: float, redis_url: str | None = None) -> None:
        self.dir = OUT_DIR / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.dumps = 0
        env = environ(
            {
                "RELAYGATE_DATABASE_URL": keys.fresh_db(f"callgrind-{name}"),
                "RELAYGATE_ADMIN_KEY": ADMIN_KEY,
                "RELAYGATE_USAGE__OUTBOX_DIR": keys.fresh_outbox(f"callgrind-{name}") or "",
                "RELAYGATE_USAGE__WRITE_INTERVAL": str(WRITE_INTERVAL * dilate),
                "RELAYGATE_USAGE__FSYNC_WINDOW": str(min(1.0, FSYNC_WINDOW * dilate)),
                "RELAYGATE_RESPONSES__SAVE_WINDOW": str(SAVE_WINDOW * dilate),
            }
        )
        if redis_url:  # limits in Redis (as with several workers), under a prefix of its own
            env["RELAYGATE_REDIS_URL"] = redis_url
            env["RELAYGATE_REDIS_PREFIX"] = f"rgcallgrind:{uuid.uuid4().hex}:"
        # after the last request: every window has closed and its batch is written
        self.settle = 1.5 * max(WRITE_INTERVAL, SAVE_WINDOW, FSYNC_WINDOW) * dilate + 1
        argv = serve_argv(1, PORT)
        argv[0] = str(VENV_BIN / "python")
        argv[1:1] = ["-m", "relaygate"]
        valgrind = ["valgrind", "--tool=callgrind", "--separate-threads=yes",
                    f"--callgrind-out-file={self.dir}/out"]  # fmt: skip
        self.proc = subprocess.Popen(
            [*valgrind, *argv],
            cwd=REPO_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "gateway.log", "wb"),  # noqa: SIM115
        )
        if not wait_for(self._healthy, 300, interval=1):
            self.stop()
            raise BenchError(f"the gateway did not start; see {self.dir}/gateway.log")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise BenchError(f"the gateway exited; see {self.dir}/gateway.log")
        try:
            conn = http.client.HTTPConnection(HOST, PORT, timeout=5)
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def send(self, path: str, body: str, count: int) -> None:
        """``count`` requests, one at a time, on one connection (a new one each call: the
        gateway closes one idle past its keep-alive timeout while the batches settle)."""
        headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
        conn = http.client.HTTPConnection(HOST, PORT, timeout=120)
        try:
            for _ in range(count):
                conn.request("POST", path, body, headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise BenchError(f"{path} answered {resp.status}: {data[:300]!r}")
        finally:
            conn.close()

    def _control(self, flag: str) -> None:
        subprocess.run(["callgrind_control", flag, str(self.proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def zero(self) -> None:
        self._control("-z")

    def dump(self) -> dict[str, int]:
        self._control("-d")
        self.dumps += 1
        return callgrind_totals(self.dir / f"out.{self.dumps}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure(
    name: str,
    path: str,
    body: str,
    requests: int,
    warmup: int,
    dilate: float,
    redis_url: str | None = None,
) -> dict[str, float]:
    """Instructions per request in each thread (and "all") for one API."""
    gw = Counted(name, dilate, redis_url)
    try:
        gw.send(path, body, warmup)
        time.sleep(gw.settle)
        gw.zero()
        started = time.monotonic()
        gw.send(path, body, requests)
        sent = time.monotonic() - started
        time.sleep(gw.settle)
        loaded = gw.dump()
        elapsed = time.monotonic() - started
        gw.zero()
        time.sleep(elapsed)
        idle = gw.dump()
    finally:
        gw.stop()
    per = {t: (n - idle.get(t, 0)) / requests for t, n in loaded.items()}
    per["all"] = (sum(loaded.values()) - sum(idle.values())) / requests
    per["idle/s"] = sum(idle.values()) / elapsed
    per["req/s"] = requests / sent
    return per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", choices=sorted(SHORT), action="append",
                        help="the APIs to count (default: all of section 10's)")  # fmt: skip
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--dilate", type=float, default=50.0,
                        help="stretch the batch windows by this factor (see above)")  # fmt: skip
    parser.add_argument("--threads", action="store_true", help="each thread's share too")
    parser.add_argument("--redis", metavar="URL",
                        help="keep the limits in this Redis, as several workers do "
                             "(e.g. redis://127.0.0.1:6379/0)")  # fmt: skip
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind missing: apt-get install -y valgrind")
    with Nginx():
        for api in args.api or list(SHORT):
            label, path, body = APIS[SHORT[api]]
            per = measure(api, path, body, args.requests, args.warmup, args.dilate, args.redis)
            print(f"{label}: {per['all']:,.0f} instructions a request "
                  f"({per['req/s']:.0f} req/s under valgrind; idle {per['idle/s']:,.0f}/s)",
                  flush=True)  # fmt: skip
            if args.threads:
                for thread, count in per.items():
                    if thread not in ("all", "idle/s", "req/s"):
                        print(f"    thread {thread}: {count:,.0f}")


if __name__ == "__main__":
    main()
