"""The metrics added for operations (tokens, cost, time to first token, outbox age, Redis
and database latency): their exposition names, and their sums across worker processes
in prometheus-client's multiprocess mode, each worker a real process."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from relaygate.observability import metrics as metrics_module
from relaygate.observability.metrics import Metrics

WORKER = """
import sys
from relaygate.observability.metrics import Metrics
m = Metrics(sys.argv[1])
m.used("m", int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
m.used("m", 0, 0, 0.0)
m.first_token("m", "openai", 0.2)
m.redis_command("EVALSHA", True, 0.001)
m.usage_write(False, 0.05)
m.outbox_age.set(float(sys.argv[5]))
m.flush()  # as a worker does when it stops (state.close_state)
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def run_worker(directory: Path, *args: object) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    command = [sys.executable, "-c", WORKER, str(directory), *map(str, args)]
    subprocess.run(command, env=env, check=True, timeout=60)


def test_two_workers_figures_are_summed_or_maxed(tmp_path: Path) -> None:
    run_worker(tmp_path, 10, 3, 0.25, 7)
    run_worker(tmp_path, 5, 4, 0.5, 42)
    s = samples(Metrics(str(tmp_path)).render().decode())
    model = (("model", "m"),)
    assert s[("relaygate_tokens_total", (("kind", "input"), *model))] == 15
    assert s[("relaygate_tokens_total", (("kind", "output"), *model))] == 7
    assert s[("relaygate_cost_usd_total", model)] == 0.75
    assert s[("relaygate_time_to_first_token_seconds_count", (("api", "openai"), *model))] == 2
    redis = (("command", "EVALSHA"), ("result", "ok"))
    assert s[("relaygate_redis_command_duration_seconds_count", redis)] == 2
    write = (("result", "error"),)
    assert s[("relaygate_usage_write_duration_seconds_count", write)] == 2
    assert s[("relaygate_usage_outbox_oldest_age_seconds", ())] == 42  # the oldest anywhere


def test_one_process_exposes_the_conventional_names() -> None:
    metrics = Metrics()
    metrics.used("m", 1, 2, 0.001)
    text = metrics.render().decode()
    assert 'relaygate_tokens_total{kind="input",model="m"} 1.0' in text
    assert 'relaygate_cost_usd_total{model="m"} 0.001' in text
    assert "relaygate_usage_outbox_oldest_age_seconds 0.0" in text


_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("started"), st.sampled_from(["openai", "ollama"])),
        st.tuples(
            st.just("finished"),
            st.sampled_from(["m", "n"]),
            st.sampled_from(["openai", "ollama"]),
            st.sampled_from([200, 429, 502]),
            st.floats(0, 400, allow_nan=False),
            st.one_of(st.none(), st.floats(0, 400, allow_nan=False)),
        ),
        st.tuples(
            st.just("first_token"),
            st.sampled_from(["m", "n"]),
            st.just("openai"),
            st.sampled_from([0.001, 0.0025, 2.5, 300.0, 301.0]) | st.floats(0, 1e4),
        ),
        st.tuples(
            st.just("used"),
            st.sampled_from(["m", "n"]),
            st.integers(0, 10**6),
            st.integers(0, 10**6),
            st.floats(0, 10, allow_nan=False),
        ),
        st.tuples(
            st.just("redis_command"),
            st.sampled_from(["EVALSHA", "GET"]),
            st.booleans(),
            st.sampled_from([0.0001, 0.00025, 2.5, 2.6]) | st.floats(0, 10, allow_nan=False),
        ),
        st.tuples(
            st.just("cache_result"),
            st.sampled_from(["m", "n"]),
            st.sampled_from(["hit", "miss"]),
            st.sampled_from(["", "memory", "redis"]),
        ),
        st.just(("flush",)),
    ),
    max_size=40,
)


def _reference(events: list[tuple[Any, ...]], reference: Metrics) -> None:
    """The same events through prometheus-client's own calls, one at a time."""
    for name, *args in events:
        if name == "started":
            reference.in_flight.labels(args[0]).inc()
        elif name == "finished":
            model, api, status, duration, ttfb = args
            reference.in_flight.labels(api).dec()
            reference.requests.labels(model, api, str(status)).inc()
            reference.latency.labels(model, api).observe(duration)
            if ttfb is not None:
                reference.ttfb.labels(model, api).observe(ttfb)
        elif name == "first_token":
            reference.ttft.labels(*args[:2]).observe(args[2])
        elif name == "cache_result":
            reference.cache_requests.labels(*args).inc()
        elif name == "redis_command":
            command, ok, seconds = args
            reference.redis_duration.labels(command, "ok" if ok else "error").observe(seconds)
        elif name == "used":
            model, prompt, completion, cost = args
            for kind, tokens in (("input", prompt), ("output", completion)):
                if tokens:
                    reference.tokens.labels(model, kind).inc(tokens)
            if cost:
                reference.cost.labels(model).inc(cost)


def _close_enough(a: dict[Any, float], b: dict[Any, float]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], abs_tol=1e-6) for k in a)


def _paired(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The events, without a request finishing that had not started (as in the pipeline)."""
    live: dict[str, int] = {}
    kept = []
    for event in events:
        if event[0] == "started":
            live[event[1]] = live.get(event[1], 0) + 1
        elif event[0] == "finished":
            if not live.get(event[2]):
                continue
            live[event[2]] -= 1
        kept.append(event)
    return kept


@settings(max_examples=80, deadline=None)
@given(events=_EVENTS.map(_paired))
def test_tallies_flushed_at_any_moments_expose_what_direct_calls_do(
    events: list[tuple[Any, ...]],
) -> None:
    """Tallied, then flushed whenever (here between any two events, and by render), the
    request metrics read exactly as if every event had gone to prometheus-client at
    once: every bucket (bounds included), sum, count, counter and gauge."""
    tallied, reference = Metrics(), Metrics()
    for name, *args in events:
        if name == "flush":
            tallied.flush()
        else:
            getattr(tallied, name)(*args)
    _reference(events, reference)
    assert _close_enough(samples(tallied.render().decode()), samples(reference.render().decode()))


def test_flushing_from_another_thread_meanwhile_loses_nothing() -> None:
    """The operations listener flushes from its own thread while the loop tallies: every
    request is still counted once, in its bucket, with its tokens."""
    metrics = Metrics()
    stop = threading.Event()

    def flush_often() -> None:
        while not stop.is_set():
            metrics.flush()

    flusher = threading.Thread(target=flush_often)
    flusher.start()
    try:
        for n in range(20_000):
            metrics.started("openai")
            metrics.finished("m", "openai", 200, (n % 7) / 100, None)
            metrics.used("m", 3, 2, 0.5)
    finally:
        stop.set()
        flusher.join()
    s = samples(metrics.render().decode())
    labels = (("api", "openai"), ("model", "m"))
    assert s[("relaygate_requests_total", (*labels, ("status", "200")))] == 20_000
    assert s[("relaygate_request_duration_seconds_count", labels)] == 20_000
    bucket = (("api", "openai"), ("le", "0.05"), ("model", "m"))
    assert s[("relaygate_request_duration_seconds_bucket", bucket)] == (
        sum(1 for n in range(20_000) if (n % 7) / 100 <= 0.05)
    )
    assert s[("relaygate_tokens_total", (("kind", "input"), ("model", "m")))] == 60_000
    assert s[("relaygate_in_flight_requests", (("api", "openai"),))] == 0


async def test_the_flushes_go_on_after_one_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush that raises is logged; the next one, FLUSH_EVERY later, pushes the tallies."""
    monkeypatch.setattr(metrics_module, "FLUSH_EVERY", 0.01)
    metrics = Metrics()
    real, calls = metrics.flush, []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("once")
        real()

    monkeypatch.setattr(metrics, "flush", flaky)
    metrics.started("openai")
    metrics.finished("m", "openai", 200, 0.01, None)
    metrics.start()
    for _ in range(200):
        if len(calls) >= 2:
            break
        await asyncio.sleep(0.01)
    await metrics.aclose()
    labels = {"model": "m", "api": "openai", "status": "200"}
    assert len(calls) >= 2
    assert metrics.registry.get_sample_value("relaygate_requests_total", labels) == 1
