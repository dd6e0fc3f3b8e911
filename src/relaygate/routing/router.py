"""Model names to deployments, and the order in which one request tries them.

A request for a model tries its healthy deployments in weighted random order,
then the deployments of each model named in ``fallbacks``, at most
``max_attempts`` calls in all.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp

from relaygate.errors import ModelNotFound, NoHealthyDeployment
from relaygate.providers.base import Provider
from relaygate.routing.health import Health
from relaygate.settings import RoutingConfig, Timeouts

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


class Router:
    """Chooses deployments for each request; shared by every request in the process."""

    def __init__(self, models: list[Model], policy: RoutingConfig) -> None:
        self.models = {m.name: m for m in models}
        self.policy = policy
        self._random = random.Random()

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
        chain = self._chain(self.get(name))
        attempts = 0
        for model in chain:
            for deployment in self._weighted_order(model.deployments, now):
                if attempts >= self.policy.max_attempts:
                    return
                attempts += 1
                yield deployment
        if attempts == 0:
            soonest = min(d.health.cooldown_until for m in chain for d in m.deployments)
            raise NoHealthyDeployment(name, soonest - now)

    def _chain(self, model: Model) -> list[Model]:
        chain, seen = [model], {model.name}
        for fallback in model.fallbacks:
            if fallback not in seen and fallback in self.models:
                seen.add(fallback)
                chain.append(self.models[fallback])
        return chain

    def _weighted_order(self, deployments: list[Deployment], now: float) -> list[Deployment]:
        healthy = [d for d in deployments if d.health.available(now)]
        if len(healthy) < 2:
            return healthy
        order: list[Deployment] = []
        weights = [d.weight for d in healthy]
        while healthy:
            pick = self._random.choices(range(len(healthy)), weights)[0]
            order.append(healthy.pop(pick))
            weights.pop(pick)
        return order
