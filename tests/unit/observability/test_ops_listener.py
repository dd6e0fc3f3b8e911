"""The operations listener's verdicts (liveness and readiness from heartbeats) and its
HTTP answers, without a gateway."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from relaygate.observability.ops_listener import (
    Beat,
    Heartbeat,
    InProcess,
    Judge,
    OpsListener,
)

STALL = 30.0
NOW = 1_000_000.0

beats = st.lists(
    st.builds(
        Beat,
        pid=st.integers(1, 50),
        tick=st.none() | st.floats(NOW - 3 * STALL, NOW + 1),  # + 1: a clock a little ahead
        ready=st.booleans(),
        models_ready=st.integers(0, 5),
    ),
    max_size=4,
    unique_by=lambda b: b.pid,
)


@settings(max_examples=300, deadline=None)
@given(beats, st.integers(1, 4), st.floats(0, 3 * STALL))
def test_liveness_is_every_worker_ticking_or_starting(
    workers: list[Beat], expected: int, seen_for: float
) -> None:
    """Alive iff all expected workers are there and none has gone ``STALL`` seconds
    without a tick (a worker that never ticked: since it was first seen)."""
    judge = Judge(STALL, expected)
    judge.workers(workers, NOW - seen_for)  # first seen seen_for ago
    status, body, _ = judge.health(workers, NOW)

    def stalled(beat: Beat) -> bool:
        since = seen_for if beat.tick is None else NOW - beat.tick
        return since >= STALL

    alive = len(workers) == expected and not any(stalled(b) for b in workers)
    assert status == (200 if alive else 503)
    report = json.loads(body)
    assert report["status"] == ("ok" if alive else "unhealthy")
    assert sorted(w["pid"] for w in report["workers"]) == sorted(b.pid for b in workers)

    status, _, _ = judge.ready(workers, NOW)
    ready = alive and all(b.ready and b.tick is not None for b in workers)
    assert status == (200 if ready else 503)


def test_a_worker_that_never_ticks_is_starting_then_stalled() -> None:
    judge = Judge(STALL, 1)
    silent = [Beat(7, None, False, 0)]
    assert judge.health(silent, NOW)[0] == 200
    assert judge.ready(silent, NOW)[0] == 503  # starting is alive, not ready
    assert judge.health(silent, NOW + STALL)[0] == 503
    # a new pid (the supervisor restarted it) starts its own grace period
    assert judge.health([Beat(8, None, False, 0)], NOW + STALL)[0] == 200


@pytest.fixture
def listener() -> Iterator[tuple[str, Heartbeat]]:
    registry = CollectorRegistry()
    heartbeat = Heartbeat(registry, lambda: (True, 2))
    verdicts = InProcess(STALL, lambda: heartbeat, lambda: b"relaygate_x 1\n", 1234)
    ops = OpsListener(("127.0.0.1", 0), verdicts)
    ops.start()
    try:
        yield f"http://127.0.0.1:{ops.port}", heartbeat
    finally:
        ops.close()


def fetch(url: str, method: str = "GET") -> tuple[int, bytes, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def test_the_listener_serves_the_three_routes_and_nothing_else(
    listener: tuple[str, Heartbeat],
) -> None:
    url, heartbeat = listener
    status, body, _ = fetch(url + "/ready")
    assert status == 503 and json.loads(body)["workers"][0]["state"] == "starting"
    heartbeat.tick()
    status, body, _ = fetch(url + "/ready?verbose=1")
    assert status == 200
    assert json.loads(body)["workers"] == [
        {
            "pid": 1234,
            "state": "ticking",
            "ready": True,
            "models_ready": 2,
            "last_tick_age_seconds": json.loads(body)["workers"][0]["last_tick_age_seconds"],
        }
    ]
    assert fetch(url + "/metrics")[:2] == (200, b"relaygate_x 1\n")
    assert fetch(url + "/metrics")[2].startswith("text/plain")
    assert fetch(url + "/health", "HEAD")[:2] == (200, b"")
    assert fetch(url + "/v1/models")[0] == 404
    assert fetch(url + "/health", "POST")[0] == 501
    heartbeat.stop()  # shutting down: alive, not ready
    assert fetch(url + "/health")[0] == 200 and fetch(url + "/ready")[0] == 503
