"""Prometheus metrics: requests, latency, time to first byte and first token, tokens, cost,
upstream errors, in-flight, the usage outbox (backlog, age, write latency), Redis command
latency, and per pool node: up, in flight, queued, time to first token, models, ejections.

Labels are bounded: ``model`` is a configured model name or ``unknown`` (never
whatever a client typed), ``deployment`` is a deployment's safe name, never a
URL or a key; ``pool`` and ``node`` are configured names. With several processes
(workers, the usage writer's), prometheus-client's multiprocess mode is used: the CLI
points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before they start, and
/metrics aggregates every process's files.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import threading
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "FLUSH_EVERY", "Metrics"]

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip
_FAST_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
)  # fmt: skip
_INPUT, _OUTPUT = "input", "output"
# the histograms tallied on the event loop (Metrics._time), and the bounds of their buckets
_LATENCY, _TTFB, _TTFT, _REDIS = 0, 1, 2, 3
_BUCKETS = (_LATENCY_BUCKETS, _LATENCY_BUCKETS, _LATENCY_BUCKETS, _FAST_BUCKETS)
FLUSH_EVERY = 0.25  # seconds between two pushes of the request tallies


class Metrics:
    """The gateway's metrics, with label children cached for the hot path."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "relaygate_requests", "Requests answered, by model, API and HTTP status.",
            ["model", "api", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "relaygate_request_duration_seconds", "Time from request to the last byte sent.",
            ["model", "api"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttfb = Histogram(
            "relaygate_time_to_first_byte_seconds",
            "Time from request to the first response byte sent to the client.",
            ["model", "api"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "relaygate_time_to_first_token_seconds",
            "Streams only: time from request to the first streamed chunk sent to the client.",
            ["model", "api"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "relaygate_tokens", "Tokens used by answered requests, by model and kind "
            "(input, output), as the usage records count them (estimated when not reported).",
            ["model", "kind"], registry=r,
        )  # fmt: skip
        self.cost = Counter(
            "relaygate_cost_usd", "What requests cost, in US dollars, as their usage records "
            "price them (a user's own provider key: 0).",
            ["model"], registry=r,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "relaygate_upstream_errors", "Failed upstream calls, by deployment and kind.",
            ["deployment", "kind"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "relaygate_in_flight_requests", "Requests being served now.", ["api"],
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.ratelimit_degraded = Gauge(
            "relaygate_ratelimit_degraded",
            "1 while the shared limit store (Redis) is unreachable and limits are per process.",
            registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.ratelimited = Counter(
            "relaygate_ratelimited", "Requests refused by a limit (429).", ["api"], registry=r,
        )  # fmt: skip
        self.outbox_backlog = Gauge(
            "relaygate_usage_outbox_backlog",
            "Usage records durable in this process's outbox, not yet in the database.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.outbox_age = Gauge(
            "relaygate_usage_outbox_oldest_age_seconds",
            "Age of the oldest usage record not yet in the database (0: none waits).",
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.usage_write_duration = Histogram(
            "relaygate_usage_write_duration_seconds",
            "Database time of one usage batch (insert and commit), by result (ok, error).",
            ["result"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.redis_duration = Histogram(
            "relaygate_redis_command_duration_seconds",
            "Redis command round trips (limits, cache, events), by command and result.",
            ["command", "result"], buckets=_FAST_BUCKETS, registry=r,
        )  # fmt: skip
        self.usage_written = Counter(
            "relaygate_usage_records_written", "Usage records inserted into the database.",
            registry=r,
        )  # fmt: skip
        self.usage_write_errors = Counter(
            "relaygate_usage_write_errors", "Failed attempts to write usage batches.",
            registry=r,
        )  # fmt: skip
        self.cache_requests = Counter(
            "relaygate_cache_requests",
            "Cache lookups by model and result (hit, miss); tier says where a hit came from.",
            ["model", "result", "tier"], registry=r,
        )  # fmt: skip
        self.cache_errors = Counter(
            "relaygate_cache_errors",
            "Cache tier failures (timeout, error) and dropped corrupt entries (corrupt).",
            ["tier", "kind"], registry=r,
        )  # fmt: skip
        self.cache_not_stored = Counter(
            "relaygate_cache_not_stored", "Complete answers not stored, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.cache_memory_bytes = Gauge(
            "relaygate_cache_memory_bytes", "Bytes held by the in-process cache tier.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.cache_memory_entries = Gauge(
            "relaygate_cache_memory_entries", "Entries held by the in-process cache tier.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.node_up = Gauge(
            "relaygate_node_up",
            "1 while a pool node is healthy (routed to), 0 while down, ejected or unknown.",
            ["pool", "node"], registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.node_in_flight = Gauge(
            "relaygate_node_in_flight", "Requests a pool node is answering now.",
            ["pool", "node"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.node_queued = Gauge(
            "relaygate_node_queued", "Requests waiting for a slot on a pool node.",
            ["pool", "node"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.node_ttft = Gauge(
            "relaygate_node_ttft_seconds",
            "A pool node's time to first token, an exponentially weighted moving average.",
            ["pool", "node"], registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.node_models = Gauge(
            "relaygate_node_models", "Models a pool node has (loaded: in memory now).",
            ["pool", "node", "loaded"], registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.node_ejections = Counter(
            "relaygate_node_ejections", "Times a pool node was ejected by outlier detection.",
            ["pool", "node"], registry=r,
        )  # fmt: skip
        self._children: dict[tuple[Any, ...], Any] = {}
        # What every request adds is tallied here, in plain ints and floats, and handed to
        # prometheus-client by flush(): a Counter's inc() or a Histogram's observe() takes
        # a lock and a few calls each, 56k instructions a request in all (event loop,
        # bench's chat request) against ~17k for the tallies. Only the event loop writes
        # them; flush() may run in any thread (the operations listener renders from its
        # own): it reads copies, and pushes what was added since its last push.
        self._flowing: dict[str, int] = {}  # api -> requests being served now
        self._answered: dict[tuple[str, str, int], int] = {}  # (model, api, status) -> n
        self._timed: dict[tuple[int, str, str], list[float]] = {}  # see _time()
        self._tokens: dict[tuple[str, str], int] = {}  # (model, kind) -> tokens
        self._costs: dict[tuple[str], float] = {}  # (model,) -> dollars
        self._looked_up: dict[tuple[str, str, str], int] = {}  # (model, result, tier) -> n
        self._pushed: dict[tuple[Any, ...], Any] = {}  # tally key -> what flush() pushed
        self._flush_lock = threading.Lock()
        self._flusher: asyncio.Task[None] | None = None

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # the hot path: tallies only

    def started(self, api: str) -> None:
        flowing = self._flowing
        flowing[api] = flowing.get(api, 0) + 1

    def finished(
        self, model: str, api: str, status: int, duration: float, ttfb: float | None
    ) -> None:
        flowing = self._flowing
        flowing[api] = flowing.get(api, 0) - 1
        answered, key = self._answered, (model, api, status)
        answered[key] = answered.get(key, 0) + 1
        self._time(_LATENCY, model, api, duration)
        if ttfb is not None:
            self._time(_TTFB, model, api, ttfb)

    def first_token(self, model: str, api: str, seconds: float) -> None:
        """A stream's first chunk reached the client ``seconds`` after the request."""
        self._time(_TTFT, model, api, seconds)

    def used(self, model: str, input_tokens: int, output_tokens: int, cost: float) -> None:
        """One usage record's tokens and cost (zeros are not counted: no work)."""
        tokens = self._tokens
        if input_tokens:
            key = (model, _INPUT)
            tokens[key] = tokens.get(key, 0) + input_tokens
        if output_tokens:
            out = (model, _OUTPUT)
            tokens[out] = tokens.get(out, 0) + output_tokens
        if cost:
            costs, label = self._costs, (model,)
            costs[label] = costs.get(label, 0.0) + cost

    def cache_result(self, model: str, result: str, tier: str = "") -> None:
        """One cache lookup (every request the cache may answer): hit or miss."""
        looked_up, key = self._looked_up, (model, result, tier)
        looked_up[key] = looked_up.get(key, 0) + 1

    def redis_command(self, command: str, ok: bool, seconds: float) -> None:
        """One Redis round trip (limits/redis.py GatewayRedis: every command)."""
        self._time(_REDIS, command, "ok" if ok else "error", seconds)

    def _time(self, which: int, first: str, second: str, seconds: float) -> None:
        """One observation of a tallied histogram, labelled (first, second): its bucket's
        count (the first bound at or above it, as prometheus-client files it; the last
        one is +Inf), then the sum."""
        key = (which, first, second)
        bounds = _BUCKETS[which]
        tally = self._timed.get(key)
        if tally is None:
            tally = self._timed[key] = [0.0] * (len(bounds) + 2)
        tally[bisect.bisect_left(bounds, seconds)] += 1
        tally[-1] += seconds

    # handing the tallies over

    def flush(self) -> None:
        """Push what was tallied since the last flush to the prometheus metrics (with
        several workers: to this process's files, which /metrics reads). Safe in any
        thread, at any time."""
        with self._flush_lock:
            pushed = self._pushed
            for api, now in list(self._flowing.items()):
                key = (id(self.in_flight), api)
                if pushed.get(key) != now:
                    self._child(self.in_flight, api).set(now)
                    pushed[key] = now
            self._push_counts(self.requests, self._answered)
            self._push_counts(self.tokens, self._tokens)
            self._push_counts(self.cost, self._costs)
            self._push_counts(self.cache_requests, self._looked_up)
            self._push_timings()

    def _push_counts(self, counter: Counter, tally: Mapping[tuple[Any, ...], float]) -> None:
        pushed = self._pushed
        for labels, total in list(tally.items()):
            key = (id(counter), *labels)
            if (added := total - pushed.get(key, 0)) > 0:
                self._child(counter, *map(str, labels)).inc(added)
                pushed[key] = total

    def _push_timings(self) -> None:
        pushed = self._pushed
        histograms = (self.latency, self.ttfb, self.ttft, self.redis_duration)
        for key, tally in list(self._timed.items()):
            now = list(tally)  # a copy: the loop may add to it meanwhile
            before = pushed.get(key) or [0.0] * len(now)
            if now == before:
                continue
            which, first, second = key
            # prometheus-client files an observation with one inc() on its bucket and one
            # on its sum; these are the same two values, given what was added at once
            # (tests/unit/observability: the exposition is the same as observe()'s)
            child = self._child(histograms[which], first, second)
            for bucket, n, m in zip(child._buckets, now, before, strict=False):
                if n != m:
                    bucket.inc(n - m)
            child._sum.inc(now[-1] - before[-1])
            pushed[key] = now

    def start(self) -> None:
        """Flush every ``FLUSH_EVERY`` seconds from the running loop (for the other
        workers' /metrics and the operations listener; this one's /metrics flushes first)."""
        self._flusher = asyncio.get_running_loop().create_task(
            self._flush_often(), name="relaygate-metrics-flush"
        )

    async def _flush_often(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            try:
                self.flush()
            except Exception:  # never the end of the flushes: the next one tries again
                logging.getLogger("relaygate").exception("flushing the request metrics failed")

    async def aclose(self) -> None:
        """Stop flushing; push what is left."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self.flush()

    def usage_write(self, ok: bool, seconds: float) -> None:
        self._child(self.usage_write_duration, "ok" if ok else "error").observe(seconds)

    def upstream_error(self, deployment: str, kind: str) -> None:
        self._child(self.upstream_errors, deployment, kind).inc()

    def cache_error(self, tier: str, kind: str) -> None:
        self._child(self.cache_errors, tier, kind).inc()

    def cache_skipped(self, reason: str) -> None:
        self._child(self.cache_not_stored, reason).inc()

    def cache_memory(self, size: int, entries: int) -> None:
        self.cache_memory_bytes.set(size)
        self.cache_memory_entries.set(entries)

    def node(
        self,
        pool: str,
        node: str,
        *,
        up: bool,
        in_flight: int,
        queued: int,
        ttft: float | None,
        models: int,
        loaded: int,
    ) -> None:
        """One pool node's figures (names are configured ones: bounded labels)."""
        self._child(self.node_up, pool, node).set(1 if up else 0)
        self._child(self.node_in_flight, pool, node).set(in_flight)
        self._child(self.node_queued, pool, node).set(queued)
        if ttft is not None:
            self._child(self.node_ttft, pool, node).set(ttft)
        self._child(self.node_models, pool, node, "false").set(models)
        self._child(self.node_models, pool, node, "true").set(loaded)

    def node_ejected(self, pool: str, node: str) -> None:
        self._child(self.node_ejections, pool, node).inc()

    def render(self) -> bytes:
        """The exposition text, every worker's figures included (this process's tallies
        flushed first; another worker's are at most ``FLUSH_EVERY`` seconds old)."""
        self.flush()
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
