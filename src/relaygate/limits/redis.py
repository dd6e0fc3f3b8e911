"""The shared limiter: every worker and replica, one Redis round trip per call.

One Lua script checks every rule of a request and consumes all of them or none,
atomically (Redis runs one script at a time). It reads the clock from Redis
(``TIME``) so replicas with skewed clocks agree; tests pass ``now`` explicitly.

Keys (``prefix + rule.key``): a rate is a string holding its GCRA theoretical
arrival time; a quota is a hash {n: count, x: expiry time}, since the expiry is
compared with ``now`` rather than left to the key's TTL alone; concurrency is a
sorted set of request ids scored by lease expiry. Every key also carries a TTL,
so idle state leaves Redis by itself. All keys of one call must live on one
server (no Redis Cluster across slots).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.driver_info import resolve_driver_info
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

from relaygate.limits.base import Decision, Lease, Rule, RuleState

__all__ = ["GatewayRedis", "RedisLimiter", "connect", "hiredis_packing"]

# redis-py looks its own version up on disk for every new connection unless told; once,
# at import, keeps that file system call off the event loop.
_DRIVER_INFO = resolve_driver_info()

# Both scripts: the clock, and rates. A rate is a bucket of ``limit`` units that held
# ``level`` at ``at`` and drains limit / window a second (memory.py's _Rate, which says
# why), stored as '<level> <at>'. A number alone is the theoretical arrival time earlier
# versions stored: read as the level it stands for.
_PRELUDE = """
local SLACK, CONC_RETRY = 1e-6, 1.0
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local function ttl_ms(t) return math.max(math.ceil((t - now) * 1000), 1) end

local function rate_level(key, limit, window)
  local v = redis.call('GET', key)
  if not v then return 0, now end
  local l, t = string.match(v, '^(%S+) (%S+)$')
  if not l then return math.max((tonumber(v) or now) - now, 0) * limit / window, now end
  local level, at = tonumber(l), tonumber(t)
  return math.max(level - math.max(now - at, 0) * limit / window, 0), math.max(at, now)
end
local function rate_store(key, level, at, limit, window)
  if level <= 0 then
    redis.call('DEL', key)
  else
    redis.call('SET', key, string.format('%.17g %.17g', level, at), 'PX',
               ttl_ms(at + level * window / limit))
  end
end
"""

# KEYS: one per rule. ARGV: now ('' = Redis TIME), consume ('1' or '0'), request id,
# then kind, limit, window, cost per rule. Returns {allowed, denied index (0 = none),
# then remaining, reset_after, retry_after per rule}; times as strings (Lua numbers
# would be truncated to integers on the way out).
_CHECK = (
    _PRELUDE
    + """
local consume, rid, n = ARGV[2] == '1', ARGV[3], #KEYS
local function fmt(x) return string.format('%.6f', x) end
local function clamp(x, limit) return math.max(math.min(x, limit), 0) end

local function rate_read(key, limit, window)
  if limit <= 0 then return {level = 0, at = now, avail = 0} end
  local level, at = rate_level(key, limit, window)
  local slack = limit * (SLACK / window + 1e-12)
  return {level = level, at = at, avail = math.floor(limit - level + slack)}
end
local function rate_take(key, s, limit, window, cost)
  if limit <= 0 or cost == 0 then return end
  s.level = s.level + cost
  s.avail = s.avail - cost
  rate_store(key, s.level, s.at, limit, window)
end
local function rate_state(s, limit, window, cost, fits)
  if limit <= 0 then return 0, 0, fits and 0 or window end
  local per_unit = window / limit
  local reset, retry = s.at - now + s.level * per_unit, 0
  if not fits then retry = math.max(reset - (limit - cost) * per_unit, 0) end
  return clamp(s.avail, limit), reset, retry
end

local function quota_read(key, limit)
  local v = redis.call('HMGET', key, 'n', 'x')
  local x = tonumber(v[2])
  if not x or x <= now then return {count = 0, avail = limit} end
  local count = tonumber(v[1]) or 0
  return {count = count, x = x, avail = limit - count}
end
local function quota_take(key, s, window, cost)
  if not s.x then
    s.x = now + window
    redis.call('HSET', key, 'n', cost, 'x', fmt(s.x))
    redis.call('PEXPIRE', key, ttl_ms(s.x))
  else
    redis.call('HINCRBY', key, 'n', cost)
  end
  s.count, s.avail = s.count + cost, s.avail - cost
end
local function quota_state(s, limit, window, fits)
  local reset = 0
  if s.count > 0 then reset = s.x - now end
  local retry = 0
  if not fits then retry = (s.count > 0) and reset or window end
  return clamp(s.avail, limit), reset, retry
end

local function conc_read(key, limit)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return {avail = limit - redis.call('ZCARD', key)}
end
local function conc_take(key, s, window)
  redis.call('ZADD', key, now + window, rid)
  redis.call('PEXPIRE', key, ttl_ms(now + window))
  s.avail = s.avail - 1
end
local function conc_state(key, s, limit, window, fits)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]
  if not first then return clamp(s.avail, limit), 0, fits and 0 or window end
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]
  local retry = 0
  if not fits then retry = math.min(tonumber(first) - now, CONC_RETRY) end
  return clamp(s.avail, limit), tonumber(last) - now, retry
end

local rules, denied = {}, 0
for i = 1, n do
  local j = 4 * i
  local r = {kind = ARGV[j], limit = tonumber(ARGV[j + 1]), window = tonumber(ARGV[j + 2]),
             cost = tonumber(ARGV[j + 3])}
  local need = r.cost
  if r.kind == 'rate' then r.s = rate_read(KEYS[i], r.limit, r.window)
  elseif r.kind == 'quota' then r.s = quota_read(KEYS[i], r.limit)
  else r.s = conc_read(KEYS[i], r.limit); need = 1 end
  r.fits = need <= r.s.avail
  if not r.fits and denied == 0 then denied = i end
  rules[i] = r
end
if denied == 0 and consume then
  for i, r in ipairs(rules) do
    if r.kind == 'rate' then rate_take(KEYS[i], r.s, r.limit, r.window, r.cost)
    elseif r.kind == 'quota' then quota_take(KEYS[i], r.s, r.window, r.cost)
    else conc_take(KEYS[i], r.s, r.window) end
  end
end
local out = {denied == 0 and 1 or 0, denied}
for i, r in ipairs(rules) do
  local rem, reset, retry
  if r.kind == 'rate' then rem, reset, retry = rate_state(r.s, r.limit, r.window, r.cost, r.fits)
  elseif r.kind == 'quota' then rem, reset, retry = quota_state(r.s, r.limit, r.window, r.fits)
  else rem, reset, retry = conc_state(KEYS[i], r.s, r.limit, r.window, r.fits) end
  out[#out + 1] = rem
  out[#out + 1] = fmt(reset)
  out[#out + 1] = fmt(retry)
end
return out
"""
)

# KEYS: the lease's rule keys. ARGV: now ('' = Redis TIME), request id, then kind, limit,
# window and delta (actual - reserved; negative refunds) per rule. Missing keys are fine.
_SETTLE = (
    _PRELUDE
    + """
local rid = ARGV[2]
for i, key in ipairs(KEYS) do
  local j = 4 * i - 1
  local kind, limit, window, delta = ARGV[j], tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]),
                                     tonumber(ARGV[j + 3])
  if kind == 'concurrency' then
    redis.call('ZREM', key, rid)
  elseif delta ~= 0 and kind == 'rate' and limit > 0 then
    local level, at = rate_level(key, limit, window)
    rate_store(key, math.max(level + delta, 0), at, limit, window)
  elseif delta ~= 0 and kind == 'quota' then
    local v = redis.call('HMGET', key, 'n', 'x')
    local x = tonumber(v[2])
    if x and x > now then
      redis.call('HSET', key, 'n', math.max((tonumber(v[1]) or 0) + delta, 0))
    end
  end
end
return 0
"""
)


CommandObserver = Callable[[str, bool, float], None]  # (command, succeeded, seconds)

# Every command is bounded: callers on the request path bound theirs more tightly (the
# limiter's and the cache's timeouts); this is the bound of the rest (admin, events).
COMMAND_TIMEOUT = 5.0
# Connections beyond ``max_connections`` for the event channels' subscriptions, which
# hold one each for as long as they listen (auth/invalidation.py: keys, cache, vault).
SUBSCRIPTION_CONNECTIONS = 8
# Batches of the request path's commands in flight at once (GatewayRedis.batched): one
# being answered while the next gathers. At 32 callers a limit check and its settlement
# cost 56 µs of CPU with 2 (62 with 4, 51 with 1 but slower to answer) against 138
# sent one by one (bench/RESULTS.md, section 7).
BATCH_LANES = 2


def connect(
    url: str,
    *,
    max_connections: int = 64,
    wait: float = 1.0,
    observe: CommandObserver | None = None,
) -> GatewayRedis:
    """A client fit for limits: at most ``max_connections`` commands at once, a command
    waits up to ``wait`` s for a free connection (redis-py's plain pool fails past its
    size), each command ends within ``COMMAND_TIMEOUT``, and it never retries on its own
    (the caller bounds each call and has a fallback). ``observe`` is told every
    command's round trip (the Redis latency metric).

    The bounds are kept here rather than by redis-py's ``BlockingConnectionPool`` and
    ``socket_timeout``, which cost a command ~40 µs of CPU more (a lock and a timer to
    take a connection, a task for each socket read and write under Python 3.11's
    ``asyncio.wait_for``): 121 against 77 µs a command in a loop (bench/RESULTS.md,
    section 9).
    """
    pool = ConnectionPool.from_url(
        url,
        max_connections=max_connections + SUBSCRIPTION_CONNECTIONS,
        socket_timeout=None,
        socket_connect_timeout=wait,
        driver_info=_DRIVER_INFO,
    )
    # the class the URL chose (TCP, TLS or a Unix socket), packing commands in C
    pool.connection_class = hiredis_packing(pool.connection_class)
    client = GatewayRedis.from_pool(pool)
    assert isinstance(client, GatewayRedis)
    client.bound(max_connections, wait)
    client.observe = observe
    return client


class _HiredisPacking:
    """Commands packed by hiredis, in C, as redis-py's own synchronous client packs them:
    its asyncio connections pack in Python: 7.6 µs against 2.1 µs for a limit check's
    eleven arguments. The bytes, and the errors for values Redis cannot take (None, bool:
    ``DataError``), are the same (tests/unit/limits/test_redis_client.py)."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._packer.pack(*args)
        return packed


_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def hiredis_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` with :class:`_HiredisPacking`'s ``pack_command`` (one class per ``cls``);
    ``cls`` itself where hiredis is missing (a dependency: ``redis[hiredis]``)."""
    if not HIREDIS_AVAILABLE:
        return cls
    if cls not in _PACKING:
        _PACKING[cls] = type(f"Hiredis{cls.__name__}", (_HiredisPacking, cls), {})
    return _PACKING[cls]


_COMMAND_NAME = re.compile(r"[A-Za-z]{1,24}\Z")


def command_label(name: object) -> str:
    """A command's name as a bounded metric label (our code issues every command)."""
    text = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
    return text.upper() if _COMMAND_NAME.match(text) else "OTHER"


class _Queued:
    """A command waiting for the next batch: its arguments, when it was issued, and the
    future its caller awaits."""

    __slots__ = ("args", "future", "issued")

    def __init__(self, args: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        self.args = args
        self.future = future
        self.issued = time.perf_counter()


class GatewayRedis(Redis):
    """redis-py's client with the gateway's bounds on every command, wherever it is sent
    from (limit scripts, cache tier, events, node store): one place, so no caller can
    forget them. Subscriptions (``pubsub()``) take their own connections and are not
    counted.

    :meth:`batched` sends the commands of the request path (limit scripts, cache reads
    and writes) together: at most ``BATCH_LANES`` batches are in flight at once, and the
    commands issued while they are gather into the next one, sent in one write and
    answered in one read. Alone, a command goes at once; under load the syscalls and
    redis-py's per-command work are paid once per batch, by the gateway and by Redis."""

    observe: CommandObserver | None = None
    _slots: asyncio.Semaphore
    _wait: float
    _queue: list[_Queued]
    _lanes: int  # batches in flight
    _flights: set[asyncio.Task[None]]

    def bound(self, max_connections: int, wait: float) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._wait = wait
        self._queue, self._lanes, self._flights = [], 0, set()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        await self._take_slot()
        started = time.perf_counter()
        ok = False
        try:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    reply = await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
            except TimeoutError:
                raise RedisTimeoutError(f"No reply within {COMMAND_TIMEOUT:g} s.") from None
            ok = True
            return reply
        finally:
            self._slots.release()
            if self.observe is not None:
                name = command_label(args[0]) if args else "OTHER"
                self.observe(name, ok, time.perf_counter() - started)

    async def batched(self, *args: Any) -> Any:
        """The reply to one command sent in a batch (see the class). A command's error
        (``ResponseError``) is its own; a batch that fails (connection lost, no reply
        within ``COMMAND_TIMEOUT``) fails each of its commands. A caller that stops
        waiting before its batch is sent takes its command out of it."""
        if self._lanes < BATCH_LANES and not self._queue:
            # a lane is free: this command is a batch of one, sent by its own caller
            self._lanes += 1
            try:
                return await self.execute_command(*args)
            finally:
                self._lanes -= 1
                if self._queue:
                    self._open_lane()
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(args, future))
        if self._lanes < BATCH_LANES:
            self._open_lane()
        return await future

    def _open_lane(self) -> None:
        self._lanes += 1
        task = asyncio.create_task(self._fly())
        self._flights.add(task)
        task.add_done_callback(self._flights.discard)

    async def _fly(self) -> None:
        """One lane: send what is queued, then what queued meanwhile, until none is."""
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send([queued for queued in batch if not queued.future.done()])
        finally:
            self._lanes -= 1

    async def _send(self, batch: list[_Queued]) -> None:
        """One write and one read for ``batch``; every future gets its reply or error."""
        if not batch:
            return
        replies: list[Any] = []
        failure: BaseException | None = None
        try:
            await self._take_slot()
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    pipe = self.pipeline(transaction=False)
                    for queued in batch:
                        pipe.execute_command(*queued.args)
                    replies = await pipe.execute(raise_on_error=False)
            finally:
                self._slots.release()
        except TimeoutError:
            failure = RedisTimeoutError(f"No reply within {COMMAND_TIMEOUT:g} s.")
        except asyncio.CancelledError:
            failure = RedisConnectionError("The Redis client was closed.")
            raise
        except Exception as exc:  # a lost connection: every command of the batch failed
            failure = exc
        finally:
            self._settle_batch(batch, replies, failure)

    def _settle_batch(
        self, batch: list[_Queued], replies: list[Any], failure: BaseException | None
    ) -> None:
        ended = time.perf_counter()
        observe = self.observe
        for i, queued in enumerate(batch):
            reply = failure if failure is not None else replies[i]
            ok = not isinstance(reply, BaseException)
            if not queued.future.done():
                if ok:
                    queued.future.set_result(reply)
                else:
                    queued.future.set_exception(reply)
            if observe is not None:
                observe(command_label(queued.args[0]), ok, ended - queued.issued)

    async def _take_slot(self) -> None:
        """One of ``max_connections``, waiting up to ``wait`` s when none is free."""
        slots = self._slots
        if slots.locked():
            try:
                async with asyncio.timeout(self._wait):
                    await slots.acquire()
            except TimeoutError:
                raise RedisConnectionError("No connection available.") from None
        else:
            await slots.acquire()  # free: returns at once


class RedisLimiter:
    """Limits shared by every process that uses the same Redis and ``prefix``."""

    def __init__(self, client: GatewayRedis, prefix: str, *, close_client: bool = True) -> None:
        self._client = client
        self._prefix = prefix
        self._close_client = close_client
        self._check = client.register_script(_CHECK)
        self._settle = client.register_script(_SETTLE)

    async def acquire(
        self, rules: Sequence[Rule], request_id: str, now: float | None = None
    ) -> Decision:
        """Consume every rule's cost if all fit; otherwise consume nothing (one round trip)."""
        if not rules:
            return Decision(True, lease=Lease(request_id, ()))
        reply = await self._run(
            self._check, self._keys(rules), [_now(now), "1", request_id, *_rule_args(rules)]
        )
        allowed, denied, states = _parse(rules, reply)
        if allowed:
            return Decision(True, states, lease=Lease(request_id, tuple(rules)))
        return Decision(False, states, denied=states[denied - 1])

    async def settle(
        self, lease: Lease, actual: Mapping[str, int] | None = None, now: float | None = None
    ) -> None:
        """Release the lease and charge actual costs (one round trip). Idempotent; after a
        failure the lease stays unsettled, so the call can be retried."""
        if lease.settled or not lease.rules:
            lease.settled = True
            return
        lease.settled = True
        actual = actual or {}
        args: list[str | int | float] = [_now(now), lease.request_id]
        for rule in lease.rules:
            delta = actual[rule.key] - rule.cost if rule.key in actual else 0
            args += [rule.kind, rule.limit, rule.window, delta]
        try:
            await self._run(self._settle, self._keys(lease.rules), args)
        except BaseException:
            lease.settled = False
            raise

    async def peek(self, rules: Sequence[Rule], now: float | None = None) -> list[RuleState]:
        """Where each rule stands, consuming nothing (one round trip)."""
        if not rules:
            return []
        reply = await self._run(
            self._check, self._keys(rules), [_now(now), "0", "", *_rule_args(rules)]
        )
        return _parse(rules, reply)[2]

    async def aclose(self) -> None:
        """Close the client's connections (unless it was lent with ``close_client=False``)."""
        if self._close_client:
            await self._client.aclose()

    async def _run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """``script`` by its digest, batched with other requests' commands; loaded first
        (redis-py's ``Script``) when Redis does not know it: a restarted or flushed Redis."""
        try:
            return await self._client.batched("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await script(keys=keys, args=args)

    def _keys(self, rules: Sequence[Rule]) -> list[str]:
        return [self._prefix + rule.key for rule in rules]


def _now(now: float | None) -> str:
    return "" if now is None else f"{now:.6f}"


def _rule_args(rules: Sequence[Rule]) -> list[str | int | float]:
    args: list[str | int | float] = []
    for rule in rules:
        args += [rule.kind, rule.limit, rule.window, rule.cost]
    return args


def _parse(rules: Sequence[Rule], reply: Any) -> tuple[bool, int, list[RuleState]]:
    """Turn the script's flat reply into (allowed, denied index from 1, states)."""
    states = [
        RuleState(rule, int(reply[j]), float(reply[j + 1]), float(reply[j + 2]))
        for rule, j in zip(rules, range(2, len(reply), 3), strict=True)
    ]
    return bool(int(reply[0])), int(reply[1]), states
