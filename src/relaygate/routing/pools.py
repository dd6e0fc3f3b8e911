"""Pools of model nodes: which node has which model, how busy it is, whether it is up.

A :class:`Pool` holds :class:`Node` s. Each node wraps a :class:`Member`, the seam
between the pool and how a machine is reached: an HTTP base URL today
(``routing/discovery.py: HttpMember``), a node that dials out to the gateway
later. A member has a name, a :class:`Provider` to call it, and ``discover()``
(its models and loaded models). Everything else here (balancing, concurrency
caps with a bounded queue, passive ejection, the time-to-first-token EWMA) is
the same for every kind of member.

Node states: ``unknown`` (not probed yet), ``healthy``, ``down`` (the last probe
failed), ``ejected`` (passive outlier detection, for a cool-down). Only healthy
nodes are routed to, and only for models they have.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from relaygate.errors import NodeBusy
from relaygate.routing.health import Health
from relaygate.schema.requests import ollama_tagged
from relaygate.settings import PoolConfig, RoutingConfig

if TYPE_CHECKING:
    from relaygate.providers.base import JSON, Provider, Relayed, Upstream
    from relaygate.schema.requests import Call

__all__ = [
    "Inventory",
    "Member",
    "Node",
    "NodeHealth",
    "NodeProvider",
    "Pool",
    "PoolProvider",
    "ejection_cap",
    "order_nodes",
]

EWMA_ALPHA = 0.3


@dataclass(frozen=True, slots=True)
class Inventory:
    """What a node has: the models it can serve, and those loaded in memory now."""

    models: frozenset[str]
    loaded: frozenset[str] = frozenset()


class Member(Protocol):
    """How a pool reaches one machine: an HTTP base URL, or (later) a dial-out link."""

    @property
    def name(self) -> str:
        """Safe to show and to use as a metric label: never a URL or a token."""

    @property
    def provider(self) -> Provider:
        """The adapter that calls the machine's model server."""

    @property
    def address(self) -> str:
        """Where it is, safe to show (scheme, host and port; no credentials)."""

    async def discover(self) -> Inventory:
        """Its models and loaded models now; raises on failure (an unreachable node)."""

    async def aclose(self) -> None:
        """Close its connections."""


@dataclass(slots=True, eq=False)
class Node:
    """One member of a pool and what the gateway knows of it."""

    pool: str
    member: Member
    weight: float
    max_concurrency: int
    max_queue: int
    models: frozenset[str] = frozenset()
    loaded: frozenset[str] = frozenset()
    state: str = "unknown"
    reason: str = "not probed yet"
    in_flight: int = 0
    ewma_ttft: float | None = None
    probed_at: float | None = None  # wall clock of the last probe (ours or a replica's)
    changed_at: float = 0.0  # wall clock of the last change worth sharing
    api_key: str | None = field(default=None, repr=False)
    health: NodeHealth = field(init=False)
    gate: NodeProvider = field(init=False)  # its provider behind the node's slots
    rr_current: float = 0.0  # smooth weighted round robin
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    @property
    def name(self) -> str:
        return self.member.name

    @property
    def queued(self) -> int:
        return len(self.waiters)

    def routable(self, model: str) -> bool:
        return self.state == "healthy" and model in self.models

    def observe_ttft(self, seconds: float) -> None:
        if self.ewma_ttft is None:
            self.ewma_ttft = seconds
        else:
            self.ewma_ttft += EWMA_ALPHA * (seconds - self.ewma_ttft)


@dataclass(slots=True)
class NodeHealth(Health):
    """A node's passive health, in the shape the pipeline records into (``Health``).

    Every model a node serves shares it: failures count per node. Ejection goes
    through the pool, which keeps the share of ejected nodes under the cap.
    """

    node: Node | None = None
    owner: Pool | None = None

    def available(self, now: float) -> bool:
        return self.node is not None and self.node.state == "healthy"

    def record_success(self) -> None:
        self.failures = 0

    def record_failure(
        self,
        now: float,
        reason: str,
        retry_after: float | None = None,
        *,
        kind: str = "error",
        at: float | None = None,
    ) -> None:
        self.failures += 1
        self.last_error, self.last_error_kind = reason, kind
        self.last_error_at = time.time() if at is None else at
        if self.owner is not None and self.node is not None:
            self.owner.failed(self.node, now)

    def state(self, now: float) -> str:
        return self.node.state if self.node is not None else "unknown"


def ejection_cap(size: int, percent: int) -> int:
    """How many of ``size`` nodes may be ejected at once: ``percent`` of them, rounded
    down, but at least one (as Envoy does) unless the percent is 0."""
    if percent <= 0 or size <= 0:
        return 0
    return max(1, size * percent // 100)


def order_nodes(nodes: Iterable[Node], model: str, balance: str) -> list[Node]:
    """The nodes to try for ``model``, best first: only healthy nodes that have it.

    ``least_loaded``: nodes with a free slot first; among them one with the model
    loaded; then the fewest requests in flight and queued, weighted by the node's
    time to first token (an unmeasured node counts as the fastest measured one) and
    its weight. ``round_robin``: smooth weighted round robin among nodes with a free
    slot, the rest after it by load.
    """
    eligible = [n for n in nodes if n.routable(model)]
    if not eligible:
        return []
    measured = [n.ewma_ttft for n in eligible if n.ewma_ttft is not None]
    default = min(measured) if measured else 1.0

    def load(n: Node) -> tuple[bool, bool, float]:
        speed = n.ewma_ttft if n.ewma_ttft is not None else default
        cost = (n.in_flight + n.queued + 1) * max(speed, 1e-6) / n.weight
        return (n.in_flight >= n.max_concurrency, model not in n.loaded, cost)

    ordered = sorted(eligible, key=load)
    if balance != "round_robin":
        return ordered
    free = [n for n in eligible if n.in_flight < n.max_concurrency] or eligible
    total = sum(n.weight for n in free)
    for n in free:
        n.rr_current += n.weight
    pick = max(free, key=lambda n: n.rr_current)
    pick.rr_current -= total
    return [pick, *(n for n in ordered if n is not pick)]


class Pool:
    """Nodes that share work; their state, ejections and slots."""

    def __init__(self, name: str, config: PoolConfig, routing: RoutingConfig) -> None:
        self.name = name
        self.config = config
        self.routing = routing
        self.nodes: list[Node] = []
        self.on_change: list[Callable[[Pool], None]] = []  # inventory or state changed
        self.on_eject: list[Callable[[Node], None]] = []
        self.wake = asyncio.Event()  # ask the prober for a probe now

    def add(
        self,
        member: Member,
        *,
        weight: float = 1.0,
        max_concurrency: int | None = None,
        max_queue: int | None = None,
        api_key: str | None = None,
    ) -> Node:
        """A member joins: configured at start, or (for a dial-out node) when it connects.
        It serves nothing until a probe (or its registration) says what it has."""
        cap = max_concurrency if max_concurrency is not None else self.config.max_concurrency
        queue = max_queue if max_queue is not None else self.config.max_queue
        node = Node(self.name, member, weight, cap, queue, api_key=api_key)
        node.health = NodeHealth(self.routing, node=node, owner=self)
        node.gate = NodeProvider(self, node)
        self.nodes.append(node)
        return node

    def remove(self, name: str, reason: str = "left the pool") -> Node | None:
        """A member leaves (a dial-out node whose connection dropped): nothing is routed
        to it any more, and requests waiting for its slots try another node at once."""
        node = self.node(name)
        if node is None:
            return None
        self.nodes.remove(node)
        node.state, node.reason = "down", reason
        while node.waiters:
            waiter = node.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(
                    NodeBusy(f"Node {name!r} of pool {self.name!r} {reason}.", deployment=name)
                )
        self._changed()
        return node

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)

    def models(self) -> set[str]:
        """Every model some node of the pool has (down nodes included: last known)."""
        return {m for n in self.nodes for m in n.models}

    def has(self, model: str) -> bool:
        """Whether some node can serve ``model`` now."""
        model = self.listed_as(model)
        return any(n.routable(model) for n in self.nodes)

    def order(self, model: str) -> list[Node]:
        return order_nodes(self.nodes, self.listed_as(model), self.config.balance)

    def listed_as(self, model: str) -> str:
        """``model`` as the nodes list it: Ollama lists ``mistral`` as ``mistral:latest``
        (and answers to both), so a deployment may name either."""
        if self.config.provider != "ollama":
            return model
        tagged = ollama_tagged(model)
        if tagged == model or not any(tagged in n.models for n in self.nodes):
            return model
        return tagged

    def ejected(self) -> int:
        return sum(1 for n in self.nodes if n.state == "ejected")

    # -- health -------------------------------------------------------------------------

    def failed(self, node: Node, now: float) -> None:
        """A call to ``node`` failed: eject it after enough failures in a row, within the cap."""
        policy = self.config.ejection
        self.wake.set()  # probe soon: a failure may mean the node or its models changed
        if node.state != "healthy" or node.health.failures < policy.consecutive_failures:
            return
        if self.ejected() >= ejection_cap(len(self.nodes), policy.max_ejection_percent):
            node.reason = (
                f"{node.health.failures} failures in a row, not ejected: "
                f"max_ejection_percent ({policy.max_ejection_percent}%) reached"
            )
            return
        node.health.ejections += 1
        seconds = min(policy.base_ejection_time * node.health.ejections, policy.max_ejection_time)
        node.health.cooldown_until = now + seconds
        node.state = "ejected"
        node.reason = (
            f"ejected for {seconds:g} s after {node.health.failures} failures in a row "
            f"({node.health.last_error_kind})"
        )
        node.changed_at = time.time()
        for hook in self.on_eject:
            hook(node)
        self._changed()

    def probed(self, node: Node, inventory: Inventory | None, reason: str, now: float) -> None:
        """A probe's result: its inventory, or why it failed. An ejected node stays out
        until its cool-down is over; then a good probe re-admits it."""
        node.probed_at = time.time()
        before = (node.state, node.models, node.loaded)
        if inventory is None:
            if node.state != "ejected" or now >= node.health.cooldown_until:
                node.state, node.reason = "down", reason
        else:
            node.models, node.loaded = inventory.models, inventory.loaded
            if node.state != "ejected" or now >= node.health.cooldown_until:
                if node.state != "healthy":
                    node.health.failures = 0
                node.state, node.reason = "healthy", ""
                settled = node.health.cooldown_until + self.config.ejection.base_ejection_time
                if node.health.ejections and now >= settled:
                    node.health.ejections -= 1  # the multiplier decays, as Envoy's does
        if (node.state, node.models, node.loaded) != before:
            node.changed_at = node.probed_at
            self._changed()

    def adopt(self, node: Node, shared: dict[str, Any], now: float) -> bool:
        """Another replica's newer knowledge of ``node`` (see routing/discovery.py)."""
        changed_at = float(shared.get("changed_at") or 0.0)
        probed_at = shared.get("probed_at")
        newer_probe = probed_at is not None and float(probed_at) > (node.probed_at or 0.0)
        if changed_at <= node.changed_at and not newer_probe:
            return False
        node.models = frozenset(shared.get("models") or ())
        node.loaded = frozenset(shared.get("loaded") or ())
        node.state = str(shared.get("state") or "unknown")
        node.reason = str(shared.get("reason") or "")
        node.health.ejections = int(shared.get("ejections") or 0)
        until = float(shared.get("ejected_until") or 0.0)
        node.health.cooldown_until = now + max(0.0, until - time.time())
        node.changed_at = max(changed_at, node.changed_at)
        node.probed_at = float(probed_at) if probed_at is not None else node.probed_at
        self._changed()
        return True

    def snapshot(self, node: Node, now: float) -> dict[str, Any]:
        """What replicas share of ``node`` (wall-clock times)."""
        left = max(0.0, node.health.cooldown_until - now)
        return {
            "models": sorted(node.models),
            "loaded": sorted(node.loaded),
            "state": node.state,
            "reason": node.reason,
            "ejections": node.health.ejections,
            "ejected_until": time.time() + left if node.state == "ejected" else 0.0,
            "changed_at": node.changed_at,
            "probed_at": node.probed_at,
        }

    def _changed(self) -> None:
        for hook in self.on_change:
            hook(self)

    # -- slots ----------------------------------------------------------------------------

    async def acquire(self, node: Node) -> None:
        """A slot on ``node``, waiting in its bounded queue when every slot is taken.

        A full queue, or a wait longer than ``queue_timeout``, raises NodeBusy at once:
        the caller tries another node, and the client never hangs.
        """
        if node.in_flight < node.max_concurrency and not node.waiters:
            node.in_flight += 1
            return
        if node.queued >= node.max_queue:
            raise NodeBusy(
                f"Node {node.name!r} of pool {self.name!r} is busy: {node.in_flight} requests "
                f"in flight and its queue of {node.max_queue} is full.",
                deployment=node.name,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        node.waiters.append(waiter)
        try:
            async with asyncio.timeout(self.config.queue_timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(node)  # the slot was handed over as we gave up: pass it on
            else:
                waiter.cancel()
                if waiter in node.waiters:
                    node.waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise NodeBusy(
                    f"Node {node.name!r} of pool {self.name!r} stayed busy for "
                    f"{self.config.queue_timeout:g} s.",
                    deployment=node.name,
                ) from None
            raise

    def release(self, node: Node) -> None:
        """Give the slot to the next waiter, or free it."""
        while node.waiters:
            waiter = node.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        node.in_flight -= 1


class NodeProvider:
    """A node's adapter behind its pool's slot: the concurrency cap, the bounded queue
    and the time-to-first-token EWMA apply to every call, whichever API it came in."""

    def __init__(self, pool: Pool, node: Node) -> None:
        self.pool = pool
        self.node = node
        self.base_url = node.member.address

    @property
    def inner(self) -> Provider:
        return self.node.member.provider

    async def complete(self, deployment: Upstream, call: Call) -> JSON | Relayed:
        await self.pool.acquire(self.node)
        try:
            started = time.monotonic()
            body = await self.inner.complete(deployment, call)
            self.node.observe_ttft(time.monotonic() - started)
            return body
        finally:
            self.pool.release(self.node)

    async def stream(self, deployment: Upstream, call: Call) -> AsyncIterator[JSON]:
        await self.pool.acquire(self.node)
        try:
            started = time.monotonic()
            first = True
            async for chunk in self.inner.stream(deployment, call):
                if first:
                    self.node.observe_ttft(time.monotonic() - started)
                    first = False
                yield chunk
        finally:
            self.pool.release(self.node)

    async def embed(self, deployment: Upstream, call: Call) -> JSON | Relayed:
        await self.pool.acquire(self.node)
        try:
            return await self.inner.embed(deployment, call)
        finally:
            self.pool.release(self.node)

    async def list_models(self) -> list[str]:
        return sorted(self.node.models)

    async def aclose(self) -> None:
        await self.node.member.aclose()


class PoolProvider:
    """A whole pool as one provider: what a pooled deployment holds. The router expands
    such a deployment into one per node (so that a failed node is retried on another);
    called directly, it uses the best node for the model."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.base_url = f"pool:{pool.name}"

    def _best(self, deployment: Upstream) -> NodeProvider:
        nodes = self.pool.order(deployment.upstream_model)
        if not nodes:
            raise NodeBusy(
                f"No node of pool {self.pool.name!r} can serve {deployment.upstream_model!r} now.",
                deployment=deployment.name,
            )
        return nodes[0].gate

    async def complete(self, deployment: Upstream, call: Call) -> JSON | Relayed:
        return await self._best(deployment).complete(deployment, call)

    def stream(self, deployment: Upstream, call: Call) -> AsyncIterator[JSON]:
        return self._best(deployment).stream(deployment, call)

    async def embed(self, deployment: Upstream, call: Call) -> JSON | Relayed:
        return await self._best(deployment).embed(deployment, call)

    async def list_models(self) -> list[str]:
        return sorted(self.pool.models())

    async def aclose(self) -> None:
        for node in self.pool.nodes:
            await node.member.aclose()
