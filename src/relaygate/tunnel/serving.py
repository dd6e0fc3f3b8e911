"""Models that connected nodes register, served and listed while their node is connected.

With ``nodes.serve_registered`` (the default), every model a connected node
registers (at Hello, and in each heartbeat, so a model pulled on the node
appears without a restart) becomes a routable model of its own name, with one
deployment per node that has it (named ``<model>@<node>``); a configured model
of that name keeps its configuration instead. When a node leaves, or drops the
model, its deployment goes, and a registered model with no node left goes from
every listing. A node that is a member of a pool (``pools: ... nodes: [{node: NAME}]``)
is served through its pool only (balancing, queues, ejection). Deployments of
configured ``provider: node`` models stay; their health is reset when their node
connects, so a node that was away is tried at once when it is back.
"""

from __future__ import annotations

from relaygate.providers.tunnel import TunnelProvider
from relaygate.routing.health import Health
from relaygate.routing.router import Deployment, Model, Router
from relaygate.settings import DeploymentConfig, NodesConfig
from relaygate.tunnel.hub import Hub

__all__ = ["RegisteredModels"]


class RegisteredModels:
    """Keeps the router's table in step with the hub's nodes (a hub listener)."""

    def __init__(
        self, hub: Hub, router: Router, config: NodesConfig, pooled: frozenset[str] = frozenset()
    ) -> None:
        self.hub = hub
        self.router = router
        self.config = config
        self.pooled = pooled  # members of a pool: served through it, never on their own
        self.configured = set(router.models)
        self._providers: dict[str, TunnelProvider] = {}
        self._deployments: dict[tuple[str, str], Deployment] = {}  # (model, node)
        self._connected: set[str] = set()
        secrets = {
            k for m in router.models.values() for d in m.deployments for k in d.known_secrets
        }
        self._secrets = tuple(sorted(secrets))

    def __call__(self) -> None:
        connected = {name for name, link in self.hub.links.items() if not link.closed}
        for name in connected - self._connected:
            self._reset_health(name)
        self._connected = connected
        if self.config.serve_registered:
            self._sync()

    def _reset_health(self, node: str) -> None:
        for model in self.router.models.values():
            for deployment in model.deployments:
                provider = deployment.provider
                if isinstance(provider, TunnelProvider) and provider.node == node:
                    deployment.health = Health(self.router.policy)

    def _sync(self) -> None:
        wanted: dict[tuple[str, str], None] = {}
        for node, link in self.hub.links.items():
            if link.closed or node in self.pooled:
                continue
            for model in link.models:
                if model and model not in self.configured:
                    wanted[(model, node)] = None
        for key in [k for k in self._deployments if k not in wanted]:
            self._remove(*key)
        for model, node in wanted:
            if (model, node) not in self._deployments:
                self._add(model, node)

    def _add(self, model: str, node: str) -> None:
        deployment = Deployment(
            name=f"{model}@{node}",
            model=model,
            provider=self._provider(node),
            provider_name="node",
            upstream_model=model,
            weight=1.0,
            timeouts=self.config.timeouts,
            health=Health(self.router.policy),
            chunk_delay=DeploymentConfig(provider="node").chunk_delay,
            known_secrets=self._secrets,
        )
        self._deployments[(model, node)] = deployment
        entry = self.router.models.get(model)
        if entry is None:
            self.router.models[model] = Model(model, [deployment], owned_by=f"node:{node}")
        else:
            entry.deployments = [*entry.deployments, deployment]

    def _remove(self, model: str, node: str) -> None:
        deployment = self._deployments.pop((model, node))
        entry = self.router.models.get(model)
        if entry is None:
            return
        # A new list, not an edit in place: a request planning over the old one keeps it.
        entry.deployments = [d for d in entry.deployments if d is not deployment]
        if not entry.deployments:
            del self.router.models[model]

    def _provider(self, node: str) -> TunnelProvider:
        provider = self._providers.get(node)
        if provider is None:
            provider = self._providers[node] = TunnelProvider(node, self.hub.link)
        return provider
