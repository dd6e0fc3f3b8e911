"""Model names to deployments, and the order in which one request tries them.

A request for a model tries its healthy deployments in weighted random order
(or, with ``order: preference``, in the order configured), then the
deployments of each model named in ``fallbacks``, at most ``max_attempts``
calls in all. A deployment on a pool stands for the pool's nodes that have the
model, best first (routing/pools.py). A virtual model (``model_router``) tries
its member models in the order its policy gives (routing/virtual.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from relaygate.errors import ModelNotFound, NoHealthyDeployment
from relaygate.providers.base import Provider
from relaygate.routing.health import Health
from relaygate.routing.pools import Node, Pool
from relaygate.routing.virtual import order_members
from relaygate.settings import RoutingConfig, Timeouts

if TYPE_CHECKING:
    from relaygate.routing.discovery import Prober

__all__ = ["Deployment", "Model", "Router"]


@dataclass(slots=True, eq=False)
class Deployment:
    """One upstream serving one model: where, under which name, with which limits.

    ``name`` is safe to show and to use as a metric label: it never holds a URL's
    credentials or an API key.
    """

    name: str
    model: str
    provider: Provider
    provider_name: str
    upstream_model: str
    weight: float
    timeouts: Timeouts
    health: Health
    api_key: str | None = field(default=None, repr=False)
    # every provider key the gateway holds: scrubbed from this deployment's errors too
    # (an upstream may echo any of them), see relaygate/redact.py
    known_secrets: tuple[str, ...] = field(default=(), repr=False)
    chunk_delay: float = 0.0
    pool: Pool | None = None  # stands for the pool's nodes that have upstream_model
    latency: float | None = None  # EWMA of time to first byte (seconds), when measured
    client_timeout: aiohttp.ClientTimeout = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # aiohttp enforces the connect timeout; the pipeline enforces the others.
        self.client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect)


@dataclass(slots=True, eq=False)
class Model:
    """A public model name, what serves it, and what to try when all of that fails."""

    name: str
    deployments: list[Deployment]
    fallbacks: list[str] = field(default_factory=list)
    owned_by: str = "relaygate"
    description: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    order: str = "weighted"  # or "preference": deployments in the order configured
    policy: str | None = None  # a virtual model's policy; its members are ``fallbacks``
    discovered_in: str | None = None  # the pool whose nodes made it public, if any

    @property
    def local(self) -> bool:
        """Served on the operator's own machines (Ollama, a pool, the mock)."""
        return any(d.pool is not None or d.provider_name in _LOCAL for d in self.deployments)


_LOCAL = frozenset({"ollama", "mock"})


class Router:
    """Chooses deployments for each request; shared by every request in the process."""

    def __init__(
        self,
        models: list[Model],
        policy: RoutingConfig,
        pools: dict[str, Pool] | None = None,
        prices: dict[str, float] | None = None,
    ) -> None:
        self.models = {m.name: m for m in models}
        self.policy = policy
        self.pools = pools or {}
        self.prices = prices or {}  # model -> a price to compare (USD per million tokens)
        self._random = random.Random()
        # (pooled deployment, node) -> that deployment on that node; keyed by the objects
        # (identity), so an entry can never be mistaken for a later object's
        self._on_nodes: dict[tuple[Deployment, Node], Deployment] = {}
        self.probers: list[Prober] = []  # one per pool, closed with the providers

    def get(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(name)
        return model

    def plan(self, name: str) -> Iterator[Deployment]:
        """Yield the deployments to try for one request, best first.

        Raises NoHealthyDeployment when nothing at all can be tried.
        """
        now = time.monotonic()
        chain = self._chain(self.get(name), now)
        attempts = 0
        for model in chain:
            for deployment in self.candidates(model, now):
                if attempts >= self.policy.max_attempts:
                    return
                attempts += 1
                yield deployment
        if attempts == 0:
            deployments = [d for m in chain for d in m.deployments]
            pools = {d.pool.name: d.pool for d in deployments if d.pool is not None}
            soonest = min(
                [d.health.cooldown_until for d in deployments if d.pool is None]
                + [now + p.config.probe_interval for p in pools.values()],
                default=now,
            )
            why = None
            if pools:
                names = ", ".join(repr(p) for p in pools)
                why = f"no healthy node of pool {names} has it now, and nothing else can answer"
            raise NoHealthyDeployment(name, soonest - now, why)

    def candidates(self, model: Model, now: float) -> list[Deployment]:
        """The deployments one request may try for ``model`` itself, best first."""
        found: list[Deployment] = []
        for deployment in self._ordered(model, now):
            if deployment.pool is None:
                found.append(deployment)
            else:
                pool = deployment.pool
                found += [
                    self._on_node(deployment, n) for n in pool.order(deployment.upstream_model)
                ]
        return found

    def reachable(self, model: Model, now: float) -> list[Deployment]:
        """The deployments ``model`` could be tried on now, in no order (a balancer's
        round robin is not advanced)."""
        found: list[Deployment] = []
        for deployment in model.deployments:
            pool = deployment.pool
            if pool is None:
                if deployment.health.available(now):
                    found.append(deployment)
            else:
                model_name = deployment.upstream_model
                found += [
                    self._on_node(deployment, n) for n in pool.nodes if n.routable(model_name)
                ]
        return found

    def servable(self, model: Model, now: float) -> bool:
        """Whether a request for ``model`` (a virtual one: any member) has something to try."""
        if model.policy is not None:
            members = [self.models[m] for m in model.fallbacks if m in self.models]
            return any(self.reachable(m, now) for m in members)
        return bool(self.reachable(model, now))

    def latency(self, model: Model, now: float) -> float:
        """The lowest time-to-first-byte EWMA of what ``model`` could be tried on (0 for
        one never measured, so that it gets measured; infinity when nothing is up)."""
        return min(
            (d.latency if d.latency is not None else 0.0 for d in self.reachable(model, now)),
            default=float("inf"),
        )

    @staticmethod
    def state_of(deployment: Deployment, now: float) -> str:
        """A deployment's health state; a pooled one is ``healthy`` while some node that
        has the model is, else ``no_node``."""
        pool = deployment.pool
        if pool is not None:
            return "healthy" if pool.has(deployment.upstream_model) else "no_node"
        return deployment.health.state(now)

    def _on_node(self, pooled: Deployment, node: Node) -> Deployment:
        """The deployment of ``pooled``'s model on one node (made once, then reused)."""
        key = (pooled, node)
        found = self._on_nodes.get(key)
        if found is None:
            found = self._on_nodes[key] = Deployment(
                name=f"{pooled.model}@{node.name}",
                model=pooled.model,
                provider=node.gate,
                provider_name=pooled.provider_name,
                upstream_model=pooled.upstream_model,
                weight=node.weight,
                timeouts=pooled.timeouts,
                health=node.health,
                api_key=node.api_key,
                known_secrets=pooled.known_secrets,
                chunk_delay=pooled.chunk_delay,
            )
        return found

    def _chain(self, model: Model, now: float) -> list[Model]:
        if model.policy is not None:
            members = [self.models[m] for m in model.fallbacks if m in self.models]
            return order_members(model.policy, members, self, now)
        chain, seen = [model], {model.name}
        for fallback in model.fallbacks:
            if fallback not in seen and fallback in self.models:
                seen.add(fallback)
                chain.append(self.models[fallback])
        return chain

    def add(self, model: Model) -> None:
        """A model that became servable (a node gained it)."""
        self.models.setdefault(model.name, model)

    def remove(self, name: str) -> None:
        """A model no node has any more; its per-node deployments go with it."""
        model = self.models.pop(name, None)
        if model is not None:
            gone = set(model.deployments)
            self._on_nodes = {k: v for k, v in self._on_nodes.items() if k[0] not in gone}

    def prune(self, pool: Pool) -> None:
        """Forget the per-node deployments of nodes that left ``pool``."""
        members = set(pool.nodes)
        self._on_nodes = {
            k: v for k, v in self._on_nodes.items() if k[1].pool != pool.name or k[1] in members
        }

    def _ordered(self, model: Model, now: float) -> list[Deployment]:
        healthy = [d for d in model.deployments if d.health.available(now)]
        if len(healthy) < 2 or model.order == "preference":
            return healthy
        order: list[Deployment] = []
        weights = [d.weight for d in healthy]
        while healthy:
            pick = self._random.choices(range(len(healthy)), weights)[0]
            order.append(healthy.pop(pick))
            weights.pop(pick)
        return order
