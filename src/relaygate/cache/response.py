"""The response cache: which requests use it, the tiers in order, single flight.

For each request the API asks for a :class:`Plan` (after admission: a hit
still counts against request limits). The plan says whether to look up
(not with ``Cache-Control: no-cache``), whether to store (not with
``no-store``), which TTL applies (the key's, else the model's, else the
default) and the oldest entry the caller accepts (``max-age``). The request
field ``use_cache: false`` (seed 000) turns both off.

Lookups go memory -> Redis -> database, and a hit in a lower tier is copied
into the tiers above. With single flight, identical requests arriving while
one of them is upstream wait for its answer instead of calling upstream too
(within one process: N replicas make at most N calls). Writes to Redis and the
database happen in the background, after the client has its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from relaygate.auth.principal import Principal
from relaygate.cache.database import DatabaseTier
from relaygate.cache.entry import FORMAT, Entry, decode_entry, encode_entry
from relaygate.cache.keys import cache_key
from relaygate.cache.memory import MemoryTier
from relaygate.digits import whole_number
from relaygate.errors import InvalidRequest
from relaygate.observability.metrics import Metrics
from relaygate.settings import CacheConfig, ModelCacheConfig

if TYPE_CHECKING:
    from relaygate.cache.redis import RedisTier  # redis-py is loaded only when Redis is used

__all__ = ["Hit", "Plan", "ResponseCache", "parse_cache_control"]

JSON = dict[str, Any]
_HIT_COUNTS = 10_000  # keys whose hits are counted, for promotion to the database tier


@dataclass(slots=True)
class Plan:
    """What the cache does for one request, and (in ``status``/``tier``) what it did."""

    kind: str
    model: str
    scope: str
    key: str
    lookup: bool
    store: bool
    ttl: int
    max_age: float | None = None
    leader: bool = False  # this request's answer is awaited by identical ones
    status: str = "BYPASS"  # HIT | MISS | BYPASS
    tier: str | None = None
    age: float = 0.0

    @property
    def used(self) -> bool:
        return self.lookup or self.store

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"x-cache", self.status.encode())]
        if self.tier is not None:
            headers.append((b"x-cache-tier", self.tier.encode()))
            headers.append((b"age", str(int(self.age)).encode()))
        return headers


BYPASS = Plan("", "", "", "", lookup=False, store=False, ttl=0)


@dataclass(slots=True)
class Hit:
    entry: Entry
    tier: str  # memory | redis | database | flight


def parse_cache_control(value: str) -> tuple[bool, bool, float | None]:
    """``(no_cache, no_store, max_age)`` from a request's Cache-Control header."""
    no_cache = no_store = False
    max_age: float | None = None
    for part in value.split(","):
        name, _, arg = part.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            no_cache = True
        elif name == "no-store":
            no_store = True
        elif name == "max-age":
            arg = arg.strip().strip('"')
            seconds = whole_number(arg)
            if seconds is None:
                raise InvalidRequest(
                    f"Cache-Control max-age must be a whole number of seconds, not {arg[:40]!r}.",
                    param="Cache-Control",
                )
            max_age = float(seconds)
    return no_cache, no_store, max_age


class ResponseCache:
    """Every tier, the policy, and single flight; one per process."""

    def __init__(
        self,
        config: CacheConfig,
        models: dict[str, ModelCacheConfig],
        *,
        memory: MemoryTier | None,
        redis: RedisTier | None,
        database: DatabaseTier | None,
        metrics: Metrics,
        log: logging.Logger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.models = models
        self.memory = memory
        self.redis = redis
        self.database = database
        self.metrics = metrics
        self.log = log
        self.clock = clock
        self.publish: Callable[[str], Any] | None = None  # set when Redis pub/sub is on
        self._flights: dict[str, asyncio.Future[Entry | None]] = {}
        self._hits: OrderedDict[str, int] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.counts: dict[str, int] = {}

    # -- policy --------------------------------------------------------------

    def plan(
        self,
        kind: str,
        model: str,
        body: JSON,
        principal: Principal,
        cache_control: str | None,
    ) -> Plan:
        """What to do for this request. Removes ``use_cache`` from ``body`` (no upstream
        knows it); raises InvalidRequest when it or Cache-Control is malformed."""
        use_cache = body.pop("use_cache", None)
        if use_cache is not None and not isinstance(use_cache, bool):
            raise InvalidRequest("use_cache must be true or false.", param="use_cache")
        model_config = self.models.get(model)
        enabled = self.config.enabled
        if model_config is not None and model_config.enabled is not None:
            enabled = model_config.enabled
        key_config = principal.cache
        if key_config is not None and key_config.enabled is False:
            enabled = False
        if not enabled or use_cache is False:
            return BYPASS  # the common case when the cache is off: nothing more to read
        no_cache, no_store, max_age = (
            parse_cache_control(cache_control) if cache_control else (False, False, None)
        )
        lookup, store = not no_cache, not no_store
        if not (lookup or store):
            return BYPASS
        ttl = (
            (key_config.ttl if key_config is not None else None)
            or (model_config.ttl if model_config is not None else None)
            or self.config.ttl
        )
        shared = model_config is not None and model_config.shared
        scope = "shared" if shared else (principal.tenant_id or principal.subject)
        return Plan(
            kind, model, scope, cache_key(kind, model, scope, body),
            lookup=lookup, store=store, ttl=ttl, max_age=max_age,
        )  # fmt: skip

    # -- lookup --------------------------------------------------------------

    async def fetch(self, plan: Plan) -> Hit | None:
        """A fresh enough entry for ``plan``, from a tier or an identical request in
        flight; None means: call upstream (and, if ``plan.leader``, ``release`` after)."""
        if not plan.lookup:
            plan.status = "BYPASS"
            return None
        single = self.config.single_flight and plan.store
        hit = await self._wait_for_flight(plan) if single else None
        if hit is None:
            hit = await self._lookup(plan)
        if hit is None and single:
            hit = await self._wait_for_flight(plan)  # another became leader meanwhile
            if hit is None and plan.key not in self._flights:
                plan.leader = True
                self._flights[plan.key] = asyncio.get_running_loop().create_future()
        if hit is None:
            plan.status = "MISS"
            self._count("miss")
            self.metrics.cache_result(plan.model, "miss")
            return None
        plan.status, plan.tier, plan.age = "HIT", hit.tier, hit.entry.age(self.clock())
        self._count(f"hit_{hit.tier}")
        self.metrics.cache_result(plan.model, "hit", hit.tier)
        self._count_hit(plan, hit.entry)
        return hit

    async def _wait_for_flight(self, plan: Plan) -> Hit | None:
        pending = self._flights.get(plan.key)
        if pending is None:
            return None
        try:
            async with asyncio.timeout(self.config.single_flight_timeout):
                entry = await asyncio.shield(pending)
        except TimeoutError:
            return None
        if entry is None or not self._fresh(plan, entry, self.clock()):
            return None
        return Hit(entry, "flight")

    async def _lookup(self, plan: Plan) -> Hit | None:
        now = self.clock()
        if self.memory is not None:
            entry = self.memory.get(plan.key, now)
            if entry is not None and self._fresh(plan, entry, now):
                return Hit(entry, "memory")
        if self.redis is not None:
            name = self.redis.name_of(plan.key, plan.scope, plan.model)
            data = await self.redis.get(name)
            entry = await self._decoded(plan, data, self.redis.drop, name)
            if entry is not None and self._fresh(plan, entry, self.clock()):
                if self.memory is not None:
                    self.memory.put(plan.key, entry, len(data or b""))
                return Hit(entry, "redis")
        if self.database is not None:
            data = await self.database.get(plan.key, self.clock())
            entry = await self._decoded(plan, data, self.database.drop, plan.key)
            if entry is not None and self._fresh(plan, entry, self.clock()):
                self._promote(plan, entry)
                return Hit(entry, "database")
        return None

    async def _decoded(
        self, plan: Plan, data: bytes | None, drop: Callable[[str], Any], name: str
    ) -> Entry | None:
        if data is None:
            return None
        entry = decode_entry(data)
        if entry is None or (entry.kind, entry.model, entry.scope) != (
            plan.kind,
            plan.model,
            plan.scope,
        ):
            self.log.warning("dropped an undecodable cache entry (%d bytes)", len(data))
            self.metrics.cache_error("entry", "corrupt")
            await drop(name)
            return None
        return entry

    def _fresh(self, plan: Plan, entry: Entry, now: float) -> bool:
        if entry.expires <= now:
            return False
        return plan.max_age is None or entry.age(now) <= plan.max_age

    # -- storing -------------------------------------------------------------

    def entry(
        self,
        plan: Plan,
        provider: str | None,
        usage: JSON | None,
        *,
        body: JSON | None = None,
        chunks: list[JSON] | None = None,
    ) -> Entry:
        now = self.clock()
        return Entry(
            FORMAT, plan.kind, plan.model, plan.scope, now, now + plan.ttl, provider, usage,
            body, chunks,
        )  # fmt: skip

    def release(self, plan: Plan, entry: Entry | None) -> None:
        """Store a complete answer (None: there is none) and wake identical requests."""
        if plan.leader:
            plan.leader = False
            pending = self._flights.pop(plan.key, None)
            if pending is not None and not pending.done():
                pending.set_result(entry)
        if entry is None or not plan.store:
            return
        data = encode_entry(entry)
        if len(data) > self.config.max_entry_bytes:
            self._count("too_large")
            self.metrics.cache_skipped("too_large")
            return
        self._count("stores")
        if self.memory is not None:
            self.memory.put(plan.key, entry, len(data))
            self.metrics.cache_memory(self.memory.bytes, len(self.memory))
        if self.redis is not None:
            name = self.redis.name_of(plan.key, plan.scope, plan.model)
            self._spawn(self.redis.put(name, data, entry.expires - entry.created))
        if self.database is not None and self.config.database.min_hits == 0:
            self._spawn(self._to_database(plan, entry))

    def _promote(self, plan: Plan, entry: Entry) -> None:
        """An entry found in the database: into the faster tiers, for the usual TTL."""
        now = self.clock()
        copy = msgspec.structs.replace(entry, expires=min(entry.expires, now + plan.ttl))
        data = encode_entry(copy)
        if self.memory is not None:
            self.memory.put(plan.key, copy, len(data))
        if self.redis is not None:
            name = self.redis.name_of(plan.key, plan.scope, plan.model)
            self._spawn(self.redis.put(name, data, copy.expires - now))

    def _count_hit(self, plan: Plan, entry: Entry) -> None:
        """Popular answers (``database.min_hits`` hits here) are copied to the database."""
        if self.database is None or self.config.database.min_hits == 0:
            return
        hits = self._hits.pop(plan.key, 0) + 1
        self._hits[plan.key] = hits
        if len(self._hits) > _HIT_COUNTS:
            self._hits.popitem(last=False)
        if hits == self.config.database.min_hits:
            self._spawn(self._to_database(plan, entry))

    async def _to_database(self, plan: Plan, entry: Entry) -> None:
        assert self.database is not None
        now = self.clock()
        copy = msgspec.structs.replace(entry, expires=now + self.config.database.ttl)
        await self.database.put(
            plan.key, encode_entry(copy), scope=plan.scope, model=plan.model,
            expires=copy.expires, now=now,
        )  # fmt: skip

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- administration ------------------------------------------------------

    async def invalidate(self, *, model: str | None = None, tenant: str | None = None) -> JSON:
        """Drop every entry, or one model's and/or one tenant's, in every tier and worker."""
        removed: JSON = {}
        if self.memory is not None:
            removed["memory"] = self.memory.invalidate(model, tenant)
            self.metrics.cache_memory(self.memory.bytes, len(self.memory))
        if self.publish is not None:
            await self.publish(msgspec.json.encode({"model": model, "tenant": tenant}).decode())
        if self.redis is not None:
            removed["redis"] = await self.redis.invalidate(model, tenant)
        if self.database is not None:
            removed["database"] = await self.database.invalidate(model, tenant)
        self._hits.clear()
        return removed

    def on_invalidation(self, message: str) -> None:
        """Another worker's invalidation: drop the same entries from this one's memory."""
        try:
            what = msgspec.json.decode(message, type=dict[str, str | None])
        except msgspec.DecodeError:
            return
        if self.memory is not None:
            self.memory.invalidate(what.get("model"), what.get("tenant"))
            self.metrics.cache_memory(self.memory.bytes, len(self.memory))

    def stats(self) -> JSON:
        """This process's figures since it started (the metrics add every worker's)."""
        tiers = [t.name for t in self._tiers()]
        stats: JSON = {"enabled": self.config.enabled, "tiers": tiers, **self.counts}
        if self.memory is not None:
            stats["memory_bytes"], stats["memory_entries"] = self.memory.bytes, len(self.memory)
        return stats

    def _tiers(self) -> Iterable[MemoryTier | RedisTier | DatabaseTier]:
        return [t for t in (self.memory, self.redis, self.database) if t is not None]

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    async def aclose(self) -> None:
        """Let background writes finish (briefly); wake anyone still waiting."""
        for pending in self._flights.values():
            if not pending.done():
                pending.set_result(None)
        self._flights.clear()
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await asyncio.gather(*self._tasks, return_exceptions=True)
