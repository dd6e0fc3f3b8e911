"""Asking nodes what they have, on an interval and after failures; sharing the answers.

:class:`HttpMember` is a pool member reached at a base URL: an Ollama server
(``/api/tags`` for its models, ``/api/ps`` for those loaded) or an
OpenAI-compatible one (``/v1/models``; it reports nothing loaded). The
:class:`Prober` of each pool probes every node every ``probe_interval``
seconds, at once after a failed call, and when an ejection's cool-down ends.

With Redis, a :class:`NodeStore` shares each node's state across replicas: a
replica probes a node only when it wins that node's claim for the interval
(``SET NX PX``), publishes what it found, and every other replica adopts it on
its next tick; a passive ejection is published at once. One replica's knowledge
serves all; without Redis each process keeps its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import msgspec

from relaygate.errors import UpstreamError
from relaygate.routing.pools import Inventory, Node, Pool

if TYPE_CHECKING:
    import redis.asyncio as redis

    from relaygate.providers.base import Provider

__all__ = ["HttpMember", "MemoryNodeStore", "NodeStore", "Prober", "RedisNodeStore"]


class _Link(Protocol):
    models: list[str]
    loaded: list[str]
    closed: bool


LinkFinder = Callable[[str], "_Link | None"]
_PROBE_ERRORS = (UpstreamError, aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError)


class HttpMember:
    """A node at a base URL, called through its provider's adapter."""

    def __init__(self, name: str, kind: str, base_url: str, provider: Provider) -> None:
        self._name = name
        self.kind = kind
        self.base_url = base_url.rstrip("/")
        self._provider = provider
        parts = urlsplit(base_url)
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        port = f":{parts.port}" if parts.port else ""
        self._address = f"{parts.scheme}://{host}{port}"  # never a user name or password

    @property
    def name(self) -> str:
        return self._name

    @property
    def provider(self) -> Provider:
        return self._provider

    @property
    def address(self) -> str:
        return self._address

    async def discover(self) -> Inventory:
        models = frozenset(await self._provider.list_models())
        loaded: frozenset[str] = frozenset()
        running = getattr(self._provider, "running_models", None)
        if self.kind == "ollama" and running is not None:
            loaded = frozenset(await running())
        return Inventory(models, loaded & models)

    async def aclose(self) -> None:
        await self._provider.aclose()


class DialOutMember:
    """A node that dials out to the gateway (``relaygate node``), called through its link.

    Its inventory is what the node registered and last reported in a heartbeat; it is
    this worker's alone (the link lives in one process), so it is never shared with or
    adopted from other replicas."""

    shared = False

    def __init__(self, name: str, node: str, provider: Provider, links: LinkFinder) -> None:
        self._name = name
        self.node = node
        self._provider = provider
        self._links = links

    @property
    def name(self) -> str:
        return self._name

    @property
    def provider(self) -> Provider:
        return self._provider

    @property
    def address(self) -> str:
        return f"dial-out:{self.node}"

    async def discover(self) -> Inventory:
        return self.inventory()

    def inventory(self) -> Inventory:
        """What the node registered and last reported; raises when it is not connected."""
        link = self._links(self.node)
        if link is None or link.closed:
            raise UpstreamError(f"node {self.node!r} is not connected to this worker")
        models = frozenset(m for m in link.models if m)
        return Inventory(models, frozenset(link.loaded) & models)

    async def aclose(self) -> None:
        return None  # the provider is the node's, shared by every deployment on it


class NodeStore(Protocol):
    """Node state shared by replicas: one backend in memory, one in Redis."""

    async def claim(self, pool: str, node: str, seconds: float) -> bool:
        """Whether this replica probes the node for the next ``seconds``."""

    async def save(self, pool: str, node: str, snapshot: dict[str, Any], ttl: float) -> None:
        """Publish what this replica knows of the node."""

    async def load(self, pool: str, nodes: list[str]) -> dict[str, dict[str, Any]]:
        """What replicas last published of these nodes (missing: never, or expired)."""


class MemoryNodeStore:
    """One process: every claim is won; snapshots kept in a dict."""

    def __init__(self) -> None:
        self.snapshots: dict[tuple[str, str], dict[str, Any]] = {}

    async def claim(self, pool: str, node: str, seconds: float) -> bool:
        return True

    async def save(self, pool: str, node: str, snapshot: dict[str, Any], ttl: float) -> None:
        self.snapshots[(pool, node)] = snapshot

    async def load(self, pool: str, nodes: list[str]) -> dict[str, dict[str, Any]]:
        return {n: s for n in nodes if (s := self.snapshots.get((pool, n))) is not None}


class RedisNodeStore:
    """Redis keys ``<prefix>nodes:<pool>:<node>`` (a JSON snapshot, expiring) and
    ``...:claim`` (who probes it this interval). A Redis failure leaves each replica
    on its own knowledge; it is logged, never raised into a request."""

    def __init__(
        self, client: redis.Redis, prefix: str, log: logging.Logger, timeout: float = 0.5
    ) -> None:
        self.client = client
        self.prefix = prefix + "nodes:"
        self.log = log
        self.timeout = timeout
        self.token = secrets.token_hex(16)  # this replica, as the holder of a claim

    def _key(self, pool: str, node: str) -> str:
        return f"{self.prefix}{pool}:{node}"

    async def claim(self, pool: str, node: str, seconds: float) -> bool:
        key = self._key(pool, node) + ":claim"
        try:
            async with asyncio.timeout(self.timeout):
                won = await self.client.set(
                    key, self.token, nx=True, px=max(1, int(seconds * 1000))
                )
                if won:
                    return True
                holder = await self.client.get(key)
        except Exception as exc:
            self.log.info("node store unreachable (%s): probing locally", type(exc).__name__)
            return True
        return bool(holder is not None and _text(holder) == self.token)

    async def save(self, pool: str, node: str, snapshot: dict[str, Any], ttl: float) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.set(
                    self._key(pool, node), msgspec.json.encode(snapshot), px=int(ttl * 1000)
                )
        except Exception as exc:
            self.log.info("node store unreachable (%s): not shared", type(exc).__name__)

    async def load(self, pool: str, nodes: list[str]) -> dict[str, dict[str, Any]]:
        if not nodes:
            return {}
        try:
            async with asyncio.timeout(self.timeout):
                values = await self.client.mget([self._key(pool, n) for n in nodes])
        except Exception as exc:
            self.log.info("node store unreachable (%s): local view only", type(exc).__name__)
            return {}
        found: dict[str, dict[str, Any]] = {}
        for name, raw in zip(nodes, values, strict=True):
            if raw is None:
                continue
            with contextlib.suppress(msgspec.DecodeError):
                value = msgspec.json.decode(raw)
                if isinstance(value, dict):
                    found[name] = value
        return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Prober:
    """Keeps one pool's view of its nodes fresh; one background task per pool."""

    def __init__(self, pool: Pool, store: NodeStore, log: logging.Logger) -> None:
        self.pool = pool
        self.store = store
        self.log = log
        self._task: asyncio.Task[None] | None = None
        pool.on_eject.append(self._ejected)
        self._pending: set[asyncio.Task[None]] = set()
        self.after_tick: list[Callable[[Pool], None]] = []  # e.g. the metrics

    @property
    def interval(self) -> float:
        return self.pool.config.probe_interval

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"relaygate-prober-{self.pool.name}")

    async def aclose(self) -> None:
        tasks = [t for t in (self._task, *self._pending) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def tick(self) -> None:
        """Adopt what replicas know, then probe every node this replica claims."""
        pool, now = self.pool, time.monotonic()
        known = [n.name for n in pool.nodes if _shared(n)]
        shared = await self.store.load(pool.name, known) if known else {}
        for node in pool.nodes:
            if node.name in shared:
                pool.adopt(node, shared[node.name], now)
        await asyncio.gather(*(self._probe(node) for node in pool.nodes))
        for hook in self.after_tick:
            hook(pool)

    async def _probe(self, node: Node) -> None:
        pool = self.pool
        if _shared(node) and not await self.store.claim(pool.name, node.name, self.interval * 0.9):
            return
        try:
            async with asyncio.timeout(pool.config.probe_timeout):
                inventory = await node.member.discover()
        except _PROBE_ERRORS as exc:
            reason = _reason(exc)
            pool.probed(node, None, f"probe failed: {reason}", time.monotonic())
            self.log.info("node %s/%s: probe failed (%s)", pool.name, node.name, reason)
        else:
            pool.probed(node, inventory, "", time.monotonic())
        await self._publish(node)

    async def _publish(self, node: Node) -> None:
        if not _shared(node):
            return
        snapshot = self.pool.snapshot(node, time.monotonic())
        await self.store.save(self.pool.name, node.name, snapshot, max(30.0, self.interval * 5))

    def _ejected(self, node: Node) -> None:
        task = asyncio.get_running_loop().create_task(self._publish(node))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _next_wait(self) -> float:
        """Until the next interval, or sooner when an ejection's cool-down ends."""
        now, wait = time.monotonic(), self.interval
        for node in self.pool.nodes:
            if node.state == "ejected":
                wait = min(wait, max(0.01, node.health.cooldown_until - now))
        return wait

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bug here must not stop the probing
                self.log.exception("prober of pool %s failed", self.pool.name)
            self.pool.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_wait()):
                    await self.pool.wake.wait()
                # woken by a failure: let a burst of failures settle into one probe
                await asyncio.sleep(min(0.05, self.interval))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UpstreamError):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"status {exc.status}"
    return type(exc).__name__


def dial_out_changed(pools: Iterable[Pool]) -> None:
    """A dial-out node connected, left or reported new models: its pools see it at once
    (a hub listener; the probe interval would otherwise be the delay)."""
    now = time.monotonic()
    for pool in pools:
        for node in pool.nodes:
            member = node.member
            if not isinstance(member, DialOutMember):
                continue
            try:
                pool.probed(node, member.inventory(), "", now)
            except UpstreamError as exc:
                pool.probed(node, None, exc.message, now)


def dial_out_nodes(pools: Iterable[Pool]) -> set[str]:
    """The names of the dial-out nodes that are members of a pool."""
    return {n.member.node for p in pools for n in p.nodes if isinstance(n.member, DialOutMember)}


def _shared(node: Node) -> bool:
    """Whether replicas share this node's state (not a dial-out node's: its link is local)."""
    return bool(getattr(node.member, "shared", True))
