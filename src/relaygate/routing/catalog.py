"""Builds the model table at start: configured models, discovered Ollama models, ``mock``.

Each upstream (provider and base URL) gets one pooled keep-alive aiohttp
session, shared by every model it serves, created here and closed at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from relaygate import __version__
from relaygate.providers.anthropic import AnthropicProvider
from relaygate.providers.base import Provider
from relaygate.providers.gemini import GeminiProvider
from relaygate.providers.mock import MockProvider
from relaygate.providers.ollama import OllamaProvider
from relaygate.providers.openai import OpenAIProvider
from relaygate.providers.openwebui import OpenWebUIProvider
from relaygate.providers.tunnel import TunnelProvider
from relaygate.routing.health import Health
from relaygate.routing.router import Deployment, Model, Router
from relaygate.settings import DeploymentConfig, ModelConfig, RoutingConfig, Settings, Timeouts
from relaygate.tunnel.client import Finder

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

    def __init__(self, policy: RoutingConfig, nodes: Finder | None = None) -> None:
        self.policy = policy
        self.providers: dict[tuple[str, str, Options], Provider] = {}
        self.mock = MockProvider()
        self.nodes = nodes

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
            existing = _ADAPTERS[provider](key[1], new_session(max_connections), **dict(options))
            self.providers[key] = existing
        return existing


def new_session(max_connections: int) -> aiohttp.ClientSession:
    """A pooled keep-alive client for one upstream."""
    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=300
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        read_bufsize=256 * 1024,
        headers={"User-Agent": f"relaygate/{__version__}"},
        trust_env=False,
    )


def _no_nodes(_name: str) -> None:
    return None


async def build_router(
    settings: Settings, log: logging.Logger, nodes: Finder | None = None
) -> Router:
    """The model table; ``nodes`` finds a connected dial-out node by name (tunnel/hub.py)."""
    pools = _Pools(settings.routing, nodes)
    models = [_model(config, pools) for config in settings.models]
    known = {m.name for m in models}
    for url in settings.ollama_discovery_urls:
        for model in await _discover(url, pools, known, settings, log):
            models.append(model)
            known.add(model.name)
    if settings.serves_mock and "mock" not in known:
        models.append(_mock_model(pools))
    deployments = [d for m in models for d in m.deployments]
    keys = tuple(sorted({d.api_key for d in deployments if d.api_key}))
    for deployment in deployments:
        deployment.known_secrets = keys
    return Router(models, settings.routing)


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
        )
    return Model(config.name, deployments, list(config.fallbacks))


def _deployment(
    model: str, index: int, config: DeploymentConfig, pools: _Pools, count: int
) -> Deployment:
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
    seen: set[int] = set()
    for model in router.models.values():
        for deployment in model.deployments:
            if id(deployment.provider) not in seen:
                seen.add(id(deployment.provider))
                await deployment.provider.aclose()
