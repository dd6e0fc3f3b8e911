"""Builds the model table at start: configured models, pools of nodes and the models
their nodes have, virtual models (``model_router``), discovered Ollama models, ``mock``.

Each upstream (provider and base URL) gets one pooled keep-alive aiohttp
session, shared by every model it serves, created here and closed at shutdown.
A pool's models change while the gateway runs: its prober (routing/discovery.py)
tells the router, which adds and removes them (``_Exposer``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from relaygate.net.session import upstream_session
from relaygate.providers.anthropic import AnthropicProvider
from relaygate.providers.base import Provider
from relaygate.providers.gemini import GeminiProvider
from relaygate.providers.mock import MockProvider
from relaygate.providers.ollama import OllamaProvider
from relaygate.providers.openai import OpenAIProvider
from relaygate.providers.openwebui import OpenWebUIProvider
from relaygate.providers.tunnel import TunnelProvider
from relaygate.routing.discovery import (
    DialOutMember,
    HttpMember,
    MemoryNodeStore,
    NodeStore,
    Prober,
)
from relaygate.routing.health import Health
from relaygate.routing.pools import Member, Pool, PoolProvider
from relaygate.routing.router import Deployment, Model, Router
from relaygate.settings import (
    DeploymentConfig,
    ModelConfig,
    PoolConfig,
    RoutingConfig,
    Settings,
    Timeouts,
)
from relaygate.tunnel.client import Finder
from relaygate.usage.accounting import LOCAL_PROVIDERS, Pricing

if TYPE_CHECKING:
    import redis.asyncio as redis

    from relaygate.tunnel.hub import NodeLink

__all__ = ["build_router", "close_providers", "deployment_name"]

_ADAPTERS: dict[str, Callable[..., Provider]] = {
    "openai": OpenAIProvider,
    "ollama": OllamaProvider,
    "gemini": GeminiProvider,
    "anthropic": AnthropicProvider,
    "openwebui": OpenWebUIProvider,
}
Options = tuple[tuple[str, Any], ...]


def _options(config: DeploymentConfig | None) -> Options:
    """A deployment's settings its adapter takes at construction (keyword, value).

    They are part of the pool key: deployments that differ in them get their own adapter.
    """
    if config is None:
        return ()
    found: dict[str, Any] = {}
    if config.provider == "anthropic":
        found = {
            "version": config.anthropic_version,
            "default_max_tokens": config.default_max_tokens,
        }
    elif config.provider == "openai":
        found = {"organization": config.organization, "project": config.project}
    return tuple((k, v) for k, v in found.items() if v is not None)


MOCK_DESCRIPTION = (
    "Development model: deterministic replies derived from the prompt, not a real language model."
)


class _Pools:
    """One provider (and its session) per upstream, created on first use."""

    def __init__(
        self,
        policy: RoutingConfig,
        nodes: Finder | None = None,
        hooks: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        self.policy = policy
        self.hooks = hooks  # every upstream session's aiohttp hooks (trace propagation)
        self.providers: dict[tuple[str, str, Options], Provider] = {}
        self.mock = MockProvider()
        self.pools: dict[str, Pool] = {}
        self.pool_providers: dict[str, PoolProvider] = {}
        self.nodes = nodes

    def links(self, name: str) -> NodeLink | None:
        """A connected dial-out node's link, or None."""
        return self.nodes(name) if self.nodes is not None else None

    def node(self, name: str) -> Provider:
        """The provider of dial-out node ``name`` (one per node, shared by its models)."""
        key = ("node", name, ())
        existing = self.providers.get(key)
        if existing is None:
            existing = TunnelProvider(name, self.nodes or _no_nodes)
            self.providers[key] = existing
        return existing

    def get(
        self,
        provider: str,
        base_url: str | None,
        max_connections: int,
        config: DeploymentConfig | None = None,
    ) -> Provider:
        if provider == "node" and config is not None and config.node is not None:
            return self.node(config.node)
        if provider == "mock" or base_url is None:
            return self.mock
        options = _options(config)
        key = (provider, base_url.rstrip("/"), options)
        existing = self.providers.get(key)
        if existing is None:
            existing = _ADAPTERS[provider](
                key[1], new_session(max_connections, hooks=self.hooks), **dict(options)
            )
            self.providers[key] = existing
        return existing


def new_session(
    max_connections: int,
    api_key: str | None = None,
    hooks: Sequence[aiohttp.TraceConfig] = (),
) -> aiohttp.ClientSession:
    """A pooled keep-alive client for one upstream (a node's key, when it has one, is
    sent by its model listing too); ``hooks`` see each request (tracing propagation)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=300
    )
    return upstream_session(connector, headers, hooks)


def _no_nodes(_name: str) -> None:
    return None


async def build_router(
    settings: Settings,
    log: logging.Logger,
    client: redis.Redis | None = None,
    nodes: Finder | None = None,
    hooks: Sequence[aiohttp.TraceConfig] = (),
) -> Router:
    """The model table; pools are probed once (each node within its probe_timeout)
    before the gateway serves, then in the background. ``nodes`` finds a connected
    dial-out node by name (tunnel/hub.py); ``hooks`` go on every upstream session."""
    pools = _Pools(settings.routing, nodes, hooks)
    for name, config in settings.pools.items():
        pools.pools[name] = _pool(name, config, settings.routing, pools)
    models = [_model(config, pools) for config in settings.models]
    known = {m.name for m in models}
    for url in settings.ollama_discovery_urls:
        for model in await _discover(url, pools, known, settings, log):
            models.append(model)
            known.add(model.name)
    if settings.serves_mock and "mock" not in known:
        models.append(_mock_model(pools))
    models += [_virtual(entry.name, entry.policy, entry.models) for entry in settings.model_router]
    deployments = [d for m in models for d in m.deployments]
    node_keys = {n.api_key for p in pools.pools.values() for n in p.nodes if n.api_key}
    keys = tuple(sorted({d.api_key for d in deployments if d.api_key} | node_keys))
    for deployment in deployments:
        deployment.known_secrets = keys
    router = Router(models, settings.routing, pools.pools, _prices(settings))
    store: NodeStore = MemoryNodeStore()
    if client is not None:
        from relaygate.routing.discovery import RedisNodeStore

        store = RedisNodeStore(client, settings.redis_prefix, log)
    for pool in pools.pools.values():
        exposer = _Exposer(router, pools, keys, settings.pools[pool.name])
        pool.on_change.append(exposer)
        prober = Prober(pool, store, log)
        await prober.tick()
        exposer(pool)
        prober.start()
        router.probers.append(prober)
    return router


def _pool(name: str, config: PoolConfig, routing: RoutingConfig, pools: _Pools) -> Pool:
    pool = Pool(name, config, routing)
    adapter = _ADAPTERS[config.provider]
    for node in config.nodes:
        assert node.name is not None  # named by load_settings
        member: Member
        if node.node is not None:  # it dials out: called through its link, when connected
            member = DialOutMember(node.name, node.node, pools.node(node.node), pools.links)
        else:
            assert node.base_url is not None  # one of the two, checked by load_settings
            max_connections = DeploymentConfig(provider="ollama").max_connections
            session = new_session(max_connections, node.api_key, pools.hooks)
            provider = adapter(node.base_url.rstrip("/"), session)
            member = HttpMember(node.name, config.provider, node.base_url, provider)
        pool.add(
            member,
            weight=node.weight,
            max_concurrency=node.max_concurrency,
            max_queue=node.max_queue,
            api_key=node.api_key,
        )
    return pool


class _Exposer:
    """Makes a pool's models public as nodes gain them, and drops those no node has."""

    def __init__(
        self, router: Router, pools: _Pools, keys: tuple[str, ...], config: PoolConfig
    ) -> None:
        self.router, self.pools, self.keys, self.config = router, pools, keys, config

    def __call__(self, pool: Pool) -> None:
        self.router.prune(pool)
        if not self.config.expose_models:
            return
        have = pool.models()
        router = self.router
        for name in sorted(have - set(router.models)):
            deployment = _pooled(
                name,
                0,
                DeploymentConfig(
                    provider=self.config.provider, pool=pool.name, timeouts=self.config.timeouts
                ),
                self.pools,
                1,
            )
            deployment.known_secrets = self.keys
            router.add(Model(name, [deployment], owned_by=pool.name, discovered_in=pool.name))
        for model in list(router.models.values()):
            if model.discovered_in == pool.name and model.name not in have:
                router.remove(model.name)


def _virtual(name: str, policy: str, members: list[str]) -> Model:
    return Model(
        name,
        [],
        list(members),
        owned_by="relaygate-router",
        policy=policy,
        description=f"Chooses among {', '.join(members)}: {policy.replace('_', ' ')}.",
    )


def _prices(settings: Settings) -> dict[str, float]:
    """Each configured model's cheapest deployment, input plus output per million tokens
    (local ones 0): what the ``cheapest`` policy compares."""
    pricing = Pricing(settings.usage, settings.models)
    found: dict[str, float] = {}
    for model in settings.models:
        count = len(model.deployments)
        costs = []
        for index, dep in enumerate(model.deployments):
            name = model.name if count == 1 else f"{model.name}#{index + 1}"
            price = (
                None
                if dep.provider in LOCAL_PROVIDERS
                else pricing.price(model.name, dep.provider, name)
            )
            costs.append(0.0 if price is None else price.input + price.output)
        found[model.name] = min(costs)
    return found


def _model(config: ModelConfig, pools: _Pools) -> Model:
    deployments = [
        _deployment(config.name, index, dep, pools, len(config.deployments))
        for index, dep in enumerate(config.deployments)
    ]
    if all(d.provider == "mock" for d in config.deployments):
        return Model(
            config.name,
            deployments,
            list(config.fallbacks),
            owned_by="relaygate-development",
            description=MOCK_DESCRIPTION,
            order=config.order,
        )
    return Model(config.name, deployments, list(config.fallbacks), order=config.order)


def _deployment(
    model: str, index: int, config: DeploymentConfig, pools: _Pools, count: int
) -> Deployment:
    if config.pool is not None:
        return _pooled(model, index, config, pools, count)
    name = deployment_name(model, index, count, config)
    return Deployment(
        name=name,
        model=model,
        provider=pools.get(config.provider, config.base_url, config.max_connections, config),
        provider_name=config.provider,
        upstream_model=config.model or model,
        weight=config.weight,
        timeouts=config.timeouts,
        health=Health(pools.policy),
        api_key=config.api_key,
        chunk_delay=config.chunk_delay,
    )


def _pooled(
    model: str, index: int, config: DeploymentConfig, pools: _Pools, count: int
) -> Deployment:
    """A deployment on a pool: the router turns it into one per node that has the model."""
    assert config.pool is not None
    pool = pools.pools[config.pool]
    provider = pools.pool_providers.get(pool.name)
    if provider is None:
        provider = pools.pool_providers[pool.name] = PoolProvider(pool)
    return Deployment(
        name=model if count == 1 else f"{model}#{index + 1}",
        model=model,
        provider=provider,
        provider_name=config.provider,
        upstream_model=config.model or model,
        weight=config.weight,
        timeouts=config.timeouts,
        health=Health(pools.policy),
        chunk_delay=config.chunk_delay,
        pool=pool,
    )


def deployment_name(model: str, index: int, count: int, config: DeploymentConfig) -> str:
    """The router's name of a deployment; a node's says which node (``llama3@mac``), which
    the usage record keeps (its ``deployment`` field)."""
    name = model if count == 1 else f"{model}#{index + 1}"
    return f"{name}@{config.node}" if config.provider == "node" else name


def _mock_model(pools: _Pools) -> Model:
    config = DeploymentConfig(provider="mock")
    deployment = _deployment("mock", 0, config, pools, 1)
    return Model(
        "mock", [deployment], owned_by="relaygate-development", description=MOCK_DESCRIPTION
    )


async def _discover(
    url: str, pools: _Pools, known: set[str], settings: Settings, log: logging.Logger
) -> list[Model]:
    """Every model of the Ollama server at ``url``, if it answers within two seconds."""
    provider = pools.get("ollama", url, DeploymentConfig(provider="ollama").max_connections)
    try:
        async with asyncio.timeout(2):
            names = await provider.list_models()
    except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError, AttributeError):
        pools.providers.pop(("ollama", url.rstrip("/"), ()), None)
        await provider.aclose()
        log.info("no Ollama server answered at %s; not adding its models", _safe(url))
        return []
    log.info("Ollama at %s serves %d models", _safe(url), len(names))
    config = DeploymentConfig(provider="ollama", base_url=url, timeouts=Timeouts())
    return [
        Model(name, [_deployment(name, 0, config, pools, 1)], owned_by="ollama")
        for name in names
        if name and name not in known
    ]


def _safe(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}"


async def close_providers(router: Router) -> None:
    for prober in router.probers:
        await prober.aclose()
    for pool in router.pools.values():
        for node in pool.nodes:
            await node.member.aclose()
    seen: set[int] = set()
    for model in router.models.values():
        for deployment in model.deployments:
            if id(deployment.provider) not in seen:
                seen.add(id(deployment.provider))
                await deployment.provider.aclose()
