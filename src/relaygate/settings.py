"""Configuration, read once at start into typed settings.

Sources, later ones winning: built-in defaults, one YAML file (``--config`` or
``RELAYGATE_CONFIG``), then ``RELAYGATE_*`` environment variables (nested fields
with a double underscore: ``RELAYGATE_ROUTING__MAX_ATTEMPTS=2``). String values
may use ``${VAR}`` or ``${VAR:-default}`` to take secrets from the environment.

This module is the only one that reads ``os.environ``. Any mistake raises
:class:`ConfigError` naming the field and where it came from: the file and its
line, or the ``RELAYGATE_*`` variable that set it.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from string import Template
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import msgspec
import yaml

from relaygate.digits import whole_number
from relaygate.errors import ConfigError

__all__ = [
    "CacheConfig",
    "CorsConfig",
    "DeploymentConfig",
    "EjectionConfig",
    "HttpConfig",
    "KeyCache",
    "ModelConfig",
    "ModelRouterConfig",
    "NodeConfig",
    "OpsConfig",
    "PathsConfig",
    "PoolConfig",
    "ResponsesConfig",
    "RoutingConfig",
    "Settings",
    "TaskField",
    "TaskTemplate",
    "TasksConfig",
    "Timeouts",
    "TracingConfig",
    "WebhookConfig",
    "load_settings",
]

ENV_PREFIX = "RELAYGATE_"
_NOT_SETTINGS = {ENV_PREFIX + "CONFIG"}
DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
DEFAULT_BASE_URLS = {
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "anthropic": "https://api.anthropic.com",
}
Positive = Annotated[float, msgspec.Meta(gt=0)]
NODE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"  # a dial-out node's name (store/nodes.py)
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
# node and pool names: shown in /admin/nodes and used as metric labels
NodeName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
PoolName = NodeName


class _Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Base of every configuration block: unknown keys are errors, not ignored."""


class Timeouts(_Config, kw_only=True):
    """Per-deployment timeouts in seconds.

    ``connect``: opening the TCP/TLS connection. ``first_byte``: for streams, from
    sending the request to the first chunk. ``idle``: for streams, the longest
    silence between two chunks. ``total``: the whole call, streaming or not. A
    non-streaming upstream sends nothing until its answer is complete, so only
    ``connect`` and ``total`` bound non-streaming calls.
    """

    connect: Positive = 5.0
    first_byte: Positive = 60.0
    idle: Positive = 60.0
    total: Positive = 600.0


class NodeConfig(_Config, kw_only=True):
    """One machine of a pool: where it answers, and how much it takes at once.

    ``name`` is shown in ``/admin/nodes`` and used as a metric label (never the URL);
    unset, it is the dial-out node's name, else ``node-1``, ``node-2`` ... in the order
    listed. Exactly one of ``base_url`` and ``node`` is given.
    """

    base_url: str | None = None  # the node's URL; or
    node: NodeName | None = None  # the name of a node that dials out (``relaygate node``)
    name: NodeName | None = None
    weight: Positive = 1.0
    max_concurrency: Concurrency | None = None  # default: the pool's
    max_queue: Annotated[int, msgspec.Meta(ge=0, le=100_000)] | None = None  # default: the pool's
    api_key: str | None = None


class DeploymentConfig(_Config, kw_only=True):
    """One upstream that can serve a model."""

    provider: Literal["openai", "ollama", "gemini", "anthropic", "openwebui", "mock", "node"]
    # required, except for mock, node, gemini, anthropic and pools
    base_url: str | None = None
    pool: PoolName | None = None  # a pool of nodes (``pools``) in place of one base_url
    # or the nodes themselves: a pool of its own, serving this model only
    nodes: Annotated[list[NodeConfig], msgspec.Meta(min_length=1, max_length=1000)] | None = None
    # node only: the name of a node that dials out to the gateway (``relaygate node``);
    # its local server's kind (Ollama or OpenAI-compatible) is what the node registers
    node: Annotated[str, msgspec.Meta(pattern=NODE_NAME)] | None = None
    model: str | None = None
    api_key: str | None = None
    weight: Positive = 1.0
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1024
    chunk_delay: NonNegative = 0.01
    # anthropic only: the anthropic-version header, and the max_tokens sent when the
    # client sets none (Anthropic requires one)
    anthropic_version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    default_max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    # openai only: sent as the OpenAI-Organization and OpenAI-Project headers
    organization: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    project: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None


PROVIDERS: tuple[str, ...] = typing.get_args(
    typing.get_type_hints(DeploymentConfig, include_extras=True)["provider"]
)
Seconds = Annotated[int, msgspec.Meta(ge=1, le=10 * 365 * 86400)]


class ModelCacheConfig(_Config, kw_only=True):
    """A model's own cache settings; unset fields follow the ``cache`` section.

    ``shared``: one entry serves every tenant (for public, non-personal prompts);
    by default each tenant has its own entries.
    """

    enabled: bool | None = None
    ttl: Seconds | None = None
    shared: bool = False


class ModelConfig(_Config, kw_only=True):
    """A public model name and the deployments that serve it.

    ``order``: ``weighted`` tries healthy deployments in weighted random order;
    ``preference`` tries them in the order listed (local first, cloud when it is off;
    or the reverse), then the ``fallbacks`` models, in their order.
    """

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    deployments: Annotated[list[DeploymentConfig], msgspec.Meta(min_length=1)]
    fallbacks: list[str] = msgspec.field(default_factory=list)
    order: Literal["weighted", "preference"] = "weighted"
    cache: ModelCacheConfig | None = None
    price: Price | None = None  # this model's price, ahead of ``usage.prices``


class NodesConfig(_Config, kw_only=True):
    """Nodes that dial out to the gateway (``relaygate node``, docs/nodes-dial-out.md).

    ``serve_registered``: every model a connected node registers is served under its
    own name (unless a configured model has that name), and listed, while the node
    is connected. ``heartbeat_interval``: how often a node says it is alive (and
    sends its current models); ``heartbeat_timeout``: silence after which its
    connection is cut and its requests fail over. ``revocation_poll``: how often
    the database is asked whether a connected node's token was revoked (Redis,
    when configured, tells every replica at once). ``timeouts``: of the deployments
    of registered models.
    """

    serve_registered: bool = True
    heartbeat_interval: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0
    heartbeat_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 15.0
    revocation_poll: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 1.0
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)


class RoutingConfig(_Config, kw_only=True):
    """Retries and passive health checks."""

    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    failure_threshold: Annotated[int, msgspec.Meta(ge=1)] = 3
    cooldown: Positive = 5.0
    max_cooldown: Positive = 60.0


Concurrency = Annotated[int, msgspec.Meta(ge=1, le=10_000)]


class EjectionConfig(_Config, kw_only=True):
    """Passive outlier detection, as Envoy's: ``consecutive_failures`` failed calls in a
    row eject a node for ``base_ejection_time`` seconds times the number of times it was
    ejected (at most ``max_ejection_time``); at most ``max_ejection_percent`` of a pool is
    ejected at once (and at least one node may always be). An ejected node comes back
    when its time is over and a probe finds it answering."""

    consecutive_failures: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    base_ejection_time: Positive = 5.0
    max_ejection_time: Positive = 300.0
    max_ejection_percent: Annotated[int, msgspec.Meta(ge=0, le=100)] = 50


class PoolConfig(_Config, kw_only=True):
    """Model servers of one kind (Ollama, or OpenAI-compatible: vLLM, llama.cpp, LM Studio)
    that share work: asked which models they have, probed, balanced, ejected.

    ``balance``: ``least_loaded`` (a node with the model loaded first, then the fewest
    requests in flight weighted by its time to first token), or ``round_robin``
    (smooth weighted round robin). ``expose_models``: every model a node has is a
    public model, added and removed as nodes gain and lose them.
    """

    provider: Literal["ollama", "openai"] = "ollama"
    nodes: Annotated[list[NodeConfig], msgspec.Meta(min_length=1, max_length=1000)]
    balance: Literal["least_loaded", "round_robin"] = "least_loaded"
    max_concurrency: Concurrency = 4
    max_queue: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 16
    queue_timeout: Positive = 30.0
    probe_interval: Annotated[float, msgspec.Meta(ge=0.05, le=3600)] = 10.0
    probe_timeout: Positive = 2.0
    expose_models: bool = True
    ejection: EjectionConfig = msgspec.field(default_factory=EjectionConfig)
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)


class ModelRouterConfig(_Config, kw_only=True):
    """A virtual model name that picks one of ``models`` per request, by ``policy``:
    ``cheapest`` (the lowest configured price among those with a healthy deployment),
    ``fastest`` (the lowest measured time to first token), ``local_first`` (models
    served by Ollama or a pool before cloud ones, else in the order listed). The
    others follow as fallbacks, in the same order."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    policy: Literal["cheapest", "fastest", "local_first"]
    models: Annotated[list[str], msgspec.Meta(min_length=1, max_length=100)]


# Limits are counted exactly by both limiters: Redis runs them as Lua doubles (exact to
# 2**53) and int64 counters, so a count stays under 10**15 and a budget under $10**9
# (10**15 micro-dollars). No real key comes near either.
MAX_COUNT = 10**15
MAX_BUDGET_USD = 1e9
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Budget = Annotated[float, msgspec.Meta(ge=0, le=MAX_BUDGET_USD)]


class LimitSet(
    msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True, frozen=True
):
    """Numbers of one tier (or a key's overrides). None means no limit of that kind.

    Frozen (hashable): admission caches the effective limits per tier and overrides.
    """

    requests_per_minute: Count | None = None
    requests_per_hour: Count | None = None
    requests_per_month: Count | None = None
    tokens_per_minute: Count | None = None
    tokens_per_month: Count | None = None
    max_concurrent: Count | None = None
    budget_per_month: Budget | None = None  # US dollars


class KeyCache(
    msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True, frozen=True
):
    """A key's own cache settings (stored with the key): off for this key, or another TTL."""

    enabled: bool | None = None
    ttl: Seconds | None = None


class TierConfig(LimitSet, kw_only=True, frozen=True):
    """A tier: its limits, plus stricter limits for some models or endpoints."""

    models: dict[str, LimitSet] = msgspec.field(default_factory=dict)
    endpoints: dict[str, LimitSet] = msgspec.field(default_factory=dict)


def default_tiers() -> dict[str, TierConfig]:
    """The seeds' tiers: 100/1K/10K/1M requests an hour, 3K/30K/300K/no cap a month."""
    return {
        "free": TierConfig(requests_per_hour=100, requests_per_month=3_000),
        "pro": TierConfig(requests_per_hour=1_000, requests_per_month=30_000),
        "enterprise": TierConfig(requests_per_hour=10_000, requests_per_month=300_000),
        "unlimited": TierConfig(requests_per_hour=1_000_000),
    }


HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_SECRET_ALGORITHMS = ("HS256",)
DEFAULT_JWKS_ALGORITHMS = ("RS256", "ES256")
_HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # the hash's size (RFC 7518 §3.2)


class JWTConfig(_Config, kw_only=True):
    """JSON Web Tokens accepted as credentials: HS256 with a secret, or RS256/ES256 via JWKS."""

    secret: str | None = None
    jwks_url: str | None = None
    algorithms: list[str] | None = None
    issuer: str | None = None
    audience: str | None = None
    leeway: NonNegative = 30.0
    jwks_cache_seconds: Positive = 300.0
    subject_claim: str = "sub"
    tenant_claim: str = "tenant"
    role_claim: str = "role"
    tier_claim: str = "tier"
    default_role: Literal["admin", "user"] = "user"
    default_tier: str = "free"

    @property
    def accepted_algorithms(self) -> tuple[str, ...]:
        """The configured algorithms, else the mode's defaults."""
        if self.algorithms is not None:
            return tuple(dict.fromkeys(self.algorithms))
        return DEFAULT_SECRET_ALGORITHMS if self.secret is not None else DEFAULT_JWKS_ALGORITHMS


def jwt_config_problem(config: JWTConfig) -> str | None:
    """What is wrong with ``config`` (for settings validation), or None when it is usable."""
    if (config.secret is None) == (config.jwks_url is None):
        return "set exactly one of auth.jwt.secret and auth.jwt.jwks_url"
    algorithms = config.accepted_algorithms
    if not algorithms:
        return "auth.jwt.algorithms must not be empty"
    family, mode = (
        (HMAC_ALGORITHMS, "secret")
        if config.secret is not None
        else (PUBLIC_KEY_ALGORITHMS, "jwks_url")
    )
    wrong = sorted(set(algorithms) - family)
    if wrong:
        return (
            f"auth.jwt.algorithms {wrong} cannot be used with auth.jwt.{mode}; "
            f"allowed: {sorted(family)}"
        )
    if config.secret is not None:
        needed = max(_HMAC_KEY_BYTES[alg] for alg in algorithms)
        if len(config.secret.encode()) < needed:
            return f"auth.jwt.secret must be at least {needed} bytes long (RFC 7518 §3.2)"
    elif not _is_http_url(config.jwks_url or ""):
        return "auth.jwt.jwks_url must be an http:// or https:// URL"
    return None


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class AuthConfig(_Config, kw_only=True):
    """How clients authenticate."""

    key_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9]{1,16}_$")] = "rg_"
    anonymous: bool = False
    anonymous_tier: str = "free"
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    cache_seconds: Positive = 30.0
    jwt: JWTConfig | None = None


class LimitsConfig(_Config, kw_only=True):
    """Where limit counters live and what happens when that store fails."""

    backend: Literal["auto", "memory", "redis"] = "auto"
    fail_closed: bool = False
    redis_timeout: Positive = 0.25
    allow_per_worker_limits: bool = False
    month_reset_day: Annotated[int, msgspec.Meta(ge=1, le=28)] = 1


class Price(_Config, kw_only=True):
    """US dollars per million tokens.

    ``cached_input``: prompt tokens read from the provider's prompt cache (unset: at
    ``input``). ``cache_write``: prompt tokens written to it (Anthropic; unset: at
    ``input``).
    """

    input: NonNegative = 0.0
    output: NonNegative = 0.0
    cached_input: NonNegative | None = None
    cache_write: NonNegative | None = None


def default_prices() -> dict[str, Price]:
    """List prices of the cloud models relaygate speaks to (per million tokens, USD).

    Standard (not batch) tier, prompts under the long-context threshold. Checked
    2026-11-30 against the providers' pricing pages (openai.com/api/pricing,
    ai.google.dev/gemini-api/docs/pricing, claude.com/pricing); operators keep them
    current with ``usage.prices`` or a model's ``price``. A dated upstream name
    (``claude-sonnet-4-20250514``, ``gpt-4o-2024-08-06``, ``-latest``, ``-002``) takes
    the price of its undated name. Local models cost 0.
    """
    p = Price
    return {
        # OpenAI
        "gpt-4o": p(input=2.5, output=10.0, cached_input=1.25),
        "gpt-4o-mini": p(input=0.15, output=0.6, cached_input=0.075),
        "gpt-4.1": p(input=2.0, output=8.0, cached_input=0.5),
        "gpt-4.1-mini": p(input=0.4, output=1.6, cached_input=0.1),
        "gpt-4.1-nano": p(input=0.1, output=0.4, cached_input=0.025),
        "o3": p(input=2.0, output=8.0, cached_input=0.5),
        "o3-mini": p(input=1.1, output=4.4, cached_input=0.55),
        "o4-mini": p(input=1.1, output=4.4, cached_input=0.275),
        # Google Gemini
        "gemini-1.5-flash": p(input=0.075, output=0.3, cached_input=0.01875),
        "gemini-1.5-pro": p(input=1.25, output=5.0, cached_input=0.3125),
        "gemini-2.0-flash": p(input=0.1, output=0.4, cached_input=0.025),
        "gemini-2.0-flash-lite": p(input=0.075, output=0.3),
        "gemini-2.5-flash": p(input=0.3, output=2.5, cached_input=0.03),
        "gemini-2.5-flash-lite": p(input=0.1, output=0.4, cached_input=0.01),
        "gemini-2.5-pro": p(input=1.25, output=10.0, cached_input=0.125),
        # Anthropic (cache writes: the 5-minute rate)
        "claude-3-5-sonnet": p(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75),
        "claude-3-7-sonnet": p(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75),
        "claude-sonnet-4": p(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75),
        "claude-sonnet-4-5": p(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75),
        "claude-3-5-haiku": p(input=0.8, output=4.0, cached_input=0.08, cache_write=1.0),
        "claude-3-haiku": p(input=0.25, output=1.25, cached_input=0.03, cache_write=0.3),
        "claude-haiku-4-5": p(input=1.0, output=5.0, cached_input=0.1, cache_write=1.25),
        "claude-3-opus": p(input=15.0, output=75.0, cached_input=1.5, cache_write=18.75),
        "claude-opus-4": p(input=15.0, output=75.0, cached_input=1.5, cache_write=18.75),
        "claude-opus-4-1": p(input=15.0, output=75.0, cached_input=1.5, cache_write=18.75),
        "claude-opus-4-5": p(input=5.0, output=25.0, cached_input=0.5, cache_write=6.25),
    }


class UsageConfig(_Config, kw_only=True):
    """Usage accounting: the local outbox, the database writer, retention and prices."""

    outbox_dir: str = "./data/outbox"
    fsync_window: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2
    max_outbox_bytes: Annotated[int, msgspec.Meta(ge=1_000_000)] = 10 * 1024**3
    # Rows per write. The writer shares the event loop (and the GIL) with requests: a
    # 100-row batch pauses the loop under 1 ms, a 1,200-row one ~13 ms (bench/RESULTS.md).
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=50_000)] = 100
    write_interval: Positive = 0.2
    # One process per outbox_dir writes to the database (elected by a lock in that folder);
    # the others hand their spool files to it (usage/election.py). False: every process
    # writes its own records. None (default): elected with SQLite, whose single write
    # lock several writers queue on; each process its own with PostgreSQL, where writers
    # on several event loops keep up better (bench section 13). Under ``relaygate serve``
    # the elected writer is a process of its own, one worker or several (usage/dedicated.py).
    elect_writer: bool | None = None
    retention_days: Annotated[int, msgspec.Meta(ge=1)] | None = None
    charge_cached_tokens: bool = False
    prices: dict[str, Price] = msgspec.field(default_factory=default_prices)


class ResponsesConfig(_Config, kw_only=True):
    """The Responses API's stored answers (``previous_response_id``, ``GET /v1/responses/{id}``)."""

    store: bool = True  # False: never stored, whatever a request's ``store`` says
    retention_days: Annotated[int, msgspec.Meta(ge=1)] | None = 30  # None: until deleted
    # Seconds a worker gathers saves before writing them in one transaction: longer, fewer
    # and larger writes; another worker sees a response that much later (store/responses_keeper.py)
    save_window: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.05


class MemoryCacheConfig(_Config, kw_only=True):
    """Tier 1: each worker's own LRU, bounded by the bytes of its entries."""

    enabled: bool = True
    max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 64 * 1024**2


class RedisCacheConfig(_Config, kw_only=True):
    """Tier 2: Redis, shared by every worker and replica (used when ``redis_url`` is set).

    A lookup that takes longer than ``timeout`` is skipped (the request goes
    upstream); after a failure Redis is left alone for ``retry_after`` seconds.
    """

    enabled: bool = True
    timeout: Positive = 0.1
    retry_after: Positive = 1.0


class DatabaseCacheConfig(_Config, kw_only=True):
    """Tier 3 (off by default): popular answers kept long in the database.

    An entry is copied there once it has been served ``min_hits`` times from
    the tiers above, and lives ``ttl`` seconds there.
    """

    enabled: bool = False
    ttl: Seconds = 7 * 86400
    min_hits: Annotated[int, msgspec.Meta(ge=0)] = 2
    timeout: Positive = 0.25


class CacheConfig(_Config, kw_only=True):
    """The response cache: exact match on the request, scoped per tenant."""

    enabled: bool = True
    ttl: Seconds = 3600
    max_entry_bytes: Annotated[int, msgspec.Meta(ge=1)] = 1024**2
    single_flight: bool = True
    single_flight_timeout: Positive = 120.0
    memory: MemoryCacheConfig = msgspec.field(default_factory=MemoryCacheConfig)
    redis: RedisCacheConfig = msgspec.field(default_factory=RedisCacheConfig)
    database: DatabaseCacheConfig = msgspec.field(default_factory=DatabaseCacheConfig)


HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]


class CorsConfig(_Config, kw_only=True):
    """Browsers on other origins (CORS). Closed unless ``allow_origins`` lists some.

    ``allow_origins``: ``scheme://host[:port]`` of the web pages allowed to call the
    API, or ``*`` for any page (refused with ``allow_credentials``).
    ``allow_credentials``: let pages send cookies with ``credentials: "include"``
    (relaygate needs none: keys travel in Authorization / X-API-Key).
    ``allow_headers``: request headers allowed in addition to the built-in list.
    ``max_age``: how long a browser may cache a preflight's answer, in seconds.
    """

    allow_origins: list[str] = msgspec.field(default_factory=list)
    allow_credentials: bool = False
    allow_headers: list[HeaderName] = msgspec.field(default_factory=list)
    max_age: Annotated[int, msgspec.Meta(ge=0, le=86400)] = 600


ServerSeconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]


class HttpConfig(_Config, kw_only=True):
    """What one client connection may hold, enforced by the HTTP server (server.py).

    ``max_header_bytes``: the request line and headers, as received (431 beyond).
    ``max_headers``: header lines per request (431 beyond). ``header_timeout``: from
    the connection's start (or a request's first byte) to its last header line; a
    connection that sends nothing is closed after it too. ``body_timeout``: from the
    end of the headers to the last byte of the body. ``keep_alive_timeout``: the
    longest idle time between two requests. ``max_connections``: open connections per
    worker; one more is answered 503 with ``Retry-After: 1`` and closed at once.
    ``max_in_flight``: requests a worker serves at once (streams included); one more is
    answered 503 with ``Retry-After: 1`` as soon as its headers are in, and its connection
    closed (load shedding). ``/health``, ``/ready`` and ``/metrics`` are never refused.
    None (the default): no limit but ``max_connections``.
    """

    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024**2)] = 32 * 1024
    max_headers: Annotated[int, msgspec.Meta(ge=8, le=10_000)] = 100
    header_timeout: ServerSeconds = 10.0
    body_timeout: ServerSeconds = 30.0
    keep_alive_timeout: ServerSeconds = 5.0
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4096
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None


class OpsConfig(_Config, kw_only=True):
    """The operational routes: ``/health``, ``/ready``, ``/metrics``.

    ``access``: who may read ``/metrics`` and ``/ready`` on the main port: ``open``
    (anyone who reaches it) or ``admin`` (an admin key); ``/health`` is always open.
    ``listen``: ``host:port`` (or ``:port``, the main ``host``) of the operations
    listener, which serves the three routes from a thread (with several workers, from
    the supervising process) so they answer while the workers' event loops are busy;
    the main port then answers 404 for ``/metrics`` and ``/ready``. Off by default.
    ``stall_seconds``: the listener's ``/health`` fails once a worker's event loop has
    not ticked for this long (busy is not dead: keep it generous).
    """

    access: Literal["open", "admin"] = "open"
    listen: str | None = None
    stall_seconds: Annotated[float, msgspec.Meta(ge=1.0)] = 30.0

    @property
    def address(self) -> tuple[str, int] | None:
        """``listen`` as (host, port), host "" for the main one; None when it is off."""
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


TaskFieldType = Literal["string", "integer", "number", "boolean", "array", "object"]
TaskStep = Literal["trim", "strip_code_fences", "extract_json"]
_TEMPLATE_PATH = re.compile(r"^/[A-Za-z0-9._~/-]*$")
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESPONSE_SOURCE = re.compile(r"^(text|json|code|prose|model|json\.[^.]+|request\.[A-Za-z_]\w*)$")


class TaskField(_Config, kw_only=True):
    """One request field of a task template, checked before any model is called.

    ``source``: a dotted path into the body (``queryResult.queryText``); default: the
    field's own name at the top level.
    """

    type: TaskFieldType = "string"
    required: bool = False
    default: Any = None
    enum: list[Any] | None = None
    max_length: Annotated[int, msgspec.Meta(ge=1)] | None = None
    source: str | None = None


class TaskTemplate(_Config, kw_only=True):
    """A task endpoint declared in the configuration (docs/tasks.md).

    ``system``/``user``: prompts with ``$field`` placeholders (Python's
    ``string.Template``: text substitution only). ``response``: answer field ->
    source (``text``, ``code``, ``prose``, ``json``, ``json.<key>``,
    ``request.<field>``, ``model``); ``cached`` is always added.
    """

    path: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    fields: dict[str, TaskField] = msgspec.field(default_factory=dict)
    system: str = ""
    user: str
    history: str | None = None  # an array field of {role, content} turns before the prompt
    model: str | None = None  # default: the first configured model
    allow_model: bool = False  # a ``model`` field in the request may choose another
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_tokens_field: str | None = None  # a request field that may set max_tokens
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    output: list[TaskStep] = msgspec.field(default_factory=list)
    response: dict[str, str] = msgspec.field(default_factory=lambda: {"text": "text"})
    auth: Literal["key", "webhook"] = "key"


class WebhookConfig(_Config, kw_only=True):
    """How templates with ``auth: webhook`` are authenticated and attributed.

    Without ``secret`` they answer 404. Requests carrying it (in ``header``) are
    attributed to ``key_id``/``tenant`` with ``tier``'s limits.
    """

    secret: str | None = None
    header: str = "x-webhook-secret"
    key_id: Annotated[str, msgspec.Meta(min_length=1, max_length=40)] = "webhook"
    tenant: Annotated[str, msgspec.Meta(min_length=1, max_length=40)] | None = None
    tier: str = "free"


class TasksConfig(_Config, kw_only=True):
    """Declared task endpoints: ``templates`` add to (or replace) the shipped ones by
    name; ``disabled`` names shipped or declared templates that are not served."""

    templates: dict[str, TaskTemplate] = msgspec.field(default_factory=dict)
    disabled: list[str] = msgspec.field(default_factory=list)
    webhook: WebhookConfig = msgspec.field(default_factory=WebhookConfig)

    def served(self, defaults: Mapping[str, TaskTemplate]) -> dict[str, TaskTemplate]:
        """The templates to serve, by name: shipped, then declared, less the disabled."""
        merged = {**defaults, **self.templates}
        return {name: t for name, t in merged.items() if name not in self.disabled}


def _prompt_problem(template: TaskTemplate) -> tuple[str, str] | None:
    for key in ("system", "user"):
        tpl = Template(getattr(template, key))
        if not tpl.is_valid():
            return key, "has a malformed $placeholder (write $$ for a literal $)"
        unknown = sorted(set(tpl.get_identifiers()) - set(template.fields))
        if unknown:
            return key, f"uses undeclared field(s): {', '.join(unknown)}"
    return None


def task_template_problem(template: TaskTemplate) -> tuple[str, str] | None:
    """(setting, problem) for a template its types cannot check; None when sound."""
    if not _TEMPLATE_PATH.match(template.path) or "//" in template.path:
        return "path", f"{template.path!r} is not an absolute URL path"
    for name, spec in template.fields.items():
        if not _FIELD_NAME.match(name):
            return "fields", f"{name!r} is not a valid field name (letters, digits, _)"
        if spec.required and spec.default is not None:
            return f"fields.{name}", "a required field cannot have a default"
    problem = _prompt_problem(template)
    if problem is not None:
        return problem
    for key in ("history", "max_tokens_field"):
        named = getattr(template, key)
        if named is not None and named not in template.fields:
            return key, f"{named!r} is not a declared field"
    for out, source in template.response.items():
        if out == "cached" or not _RESPONSE_SOURCE.match(source):
            return f"response.{out}", f"invalid source {source!r} (or the reserved name 'cached')"
        if source.startswith("request.") and source[8:] not in template.fields:
            return f"response.{out}", f"{source[8:]!r} is not a declared field"
    return None


# A URL path as a front end sends it: absolute, no query, no spaces, bounded.
UrlPath = Annotated[
    str, msgspec.Meta(pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$", max_length=512)
]


class PathsConfig(_Config, kw_only=True):
    """Old URLs kept working (a migration): resolved before routing, in one place.

    ``aliases``: exact path -> a served path (``/api/ai/generate: /ai/generate`` for seed
    000's front end, whose nginx rewrote ``/api/ai/*`` to ``/ai/*``).
    ``prefix``: every route also answers under it (``/gateway/v1/chat/completions``).
    An alias is looked up first, as requested; otherwise the prefix is stripped. The
    answer, its errors included, is the target route's, in the target's error shape.
    """

    aliases: dict[UrlPath, UrlPath] = msgspec.field(default_factory=dict)
    prefix: (
        Annotated[str, msgspec.Meta(pattern=r"^(/[A-Za-z0-9._~-]+)+$", max_length=200)] | None
    ) = None


BYOK_TYPES: tuple[str, ...] = (
    "openai", "gemini", "anthropic", "openwebui", "ollama", "openai-compatible",
)  # fmt: skip


def _default_byok_urls() -> dict[str, str]:
    return {
        "openai": "https://api.openai.com/v1",
        "gemini": "https://generativelanguage.googleapis.com/v1beta",
        "anthropic": "https://api.anthropic.com",
    }


def _default_byok_models() -> dict[str, str]:
    return {
        "openai": "gpt-4o-mini",
        "gemini": "gemini-1.5-flash",
        "anthropic": "claude-3-5-haiku-latest",
    }


class ByokConfig(_Config, kw_only=True):
    """Users' own provider keys and configurations (docs/byok.md).

    ``allow_networks``: address ranges (CIDR) a user's own base URL (``ollama``,
    ``openwebui``, ``openai-compatible``) may reach although the SSRF policy refuses
    them otherwise, e.g. ``["192.168.1.0/24"]`` for a home Ollama on the LAN.
    ``base_urls``: where the cloud types are called (the operator's choice, never the
    user's). ``default_models``: the model of a configuration that names none.
    """

    allow_networks: list[str] = msgspec.field(default_factory=list)
    base_urls: dict[str, str] = msgspec.field(default_factory=_default_byok_urls)
    default_models: dict[str, str] = msgspec.field(default_factory=_default_byok_models)
    max_cached_providers: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1024
    poll_interval: ServerSeconds = 5.0
    last_used_interval: ServerSeconds = 10.0
    check_timeout: ServerSeconds = 10.0
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        for value in self.allow_networks:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(
                    f"allow_networks: {value!r} is not an address range such as 192.168.1.0/24"
                ) from None
        for name in (*self.base_urls, *self.default_models):
            if name not in ("openai", "gemini", "anthropic"):
                raise ValueError(
                    f"{name!r} is not a cloud provider type (openai, gemini, anthropic)"
                )


HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s\"'<>]+$", max_length=2000)]


class OIDCConfig(_Config, kw_only=True):
    """The web UI's sign-in through an OpenID Connect provider: the authorization code
    flow with PKCE, as a public client (no client secret; the page holds nothing
    privileged). The token the provider returns (``token``) is then sent to the gateway
    as a bearer credential, so ``auth.jwt`` must accept it: its keys, issuer, audience
    and claims (role, tenant, tier) decide what the user may do. Free at any number of
    users."""

    authorization_endpoint: HttpUrl
    token_endpoint: HttpUrl
    client_id: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    scopes: Annotated[str, msgspec.Meta(max_length=1000)] = "openid profile email"
    token: Literal["id_token", "access_token"] = "id_token"
    label: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "Sign in with SSO"


class UIConfig(_Config, kw_only=True):
    """The web UI at /ui (docs/ui.md)."""

    oidc: OIDCConfig | None = None


DEFAULT_OTLP_ENDPOINT = "http://127.0.0.1:4318"  # an OpenTelemetry Collector's OTLP/HTTP port


class TracingConfig(_Config, kw_only=True):
    """OpenTelemetry traces of each inference request's stages, sent over OTLP/HTTP
    (protobuf) to a collector (docs/observability.md). Off unless ``enabled``; the
    standard ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS`` and
    ``OTEL_SERVICE_NAME`` variables give the defaults of ``endpoint``, ``headers``
    and ``service_name``."""

    enabled: bool = False
    # the collector's base URL: spans go to <endpoint>/v1/traces
    endpoint: HttpUrl | None = None
    headers: dict[HeaderName, str] = msgspec.field(default_factory=dict)  # e.g. a collector's key
    service_name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    # of the traces that start here (a caller's sampled traceparent is always followed)
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0  # one export's deadline

    @property
    def traces_url(self) -> str:
        return (self.endpoint or DEFAULT_OTLP_ENDPOINT).rstrip("/") + "/v1/traces"


class Settings(_Config, kw_only=True):
    """Everything relaygate reads at start."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1024 * 1024
    graceful_shutdown_seconds: NonNegative = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # text: human-readable lines; json: one JSON object per line (log collectors)
    log_format: Literal["text", "json"] = "text"
    access_log: bool = False  # one line per inference request, at info (docs/deploy.md#logs)
    log_prompts: bool = False  # add the prompt (scrubbed, cut) to each access line
    models: list[ModelConfig] = msgspec.field(default_factory=list)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    pools: dict[PoolName, PoolConfig] = msgspec.field(default_factory=dict)
    model_router: list[ModelRouterConfig] = msgspec.field(default_factory=list)
    discover_ollama: list[str] | None = None
    mock_model: bool | None = None
    database_url: str = "sqlite+aiosqlite:///./data/relaygate.db"
    redis_url: str | None = None
    redis_prefix: str = "relaygate:"
    admin_key: str | None = None
    # Fernet keys for provider secrets at rest, comma-separated, newest first (docs/byok.md)
    secret_key: str | None = None
    byok: ByokConfig = msgspec.field(default_factory=ByokConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    tiers: dict[str, TierConfig] = msgspec.field(default_factory=default_tiers)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    usage: UsageConfig = msgspec.field(default_factory=UsageConfig)
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    cors: CorsConfig = msgspec.field(default_factory=CorsConfig)
    responses: ResponsesConfig = msgspec.field(default_factory=ResponsesConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    ops: OpsConfig = msgspec.field(default_factory=OpsConfig)
    tasks: TasksConfig = msgspec.field(default_factory=TasksConfig)
    paths: PathsConfig = msgspec.field(default_factory=PathsConfig)
    nodes: NodesConfig = msgspec.field(default_factory=NodesConfig)
    ui: UIConfig = msgspec.field(default_factory=UIConfig)
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)
    config_path: str | None = None
    prometheus_multiproc_dir: str | None = None

    @property
    def ollama_discovery_urls(self) -> list[str]:
        """Ollama servers whose models are added at start (default: local, when no models)."""
        if self.discover_ollama is not None:
            return self.discover_ollama
        return [] if self.models or self.pools else [DEFAULT_OLLAMA_URL]

    @property
    def serves_mock(self) -> bool:
        """Whether the development model ``mock`` is served (default: when no models)."""
        if self.mock_model is not None:
            return self.mock_model
        return not self.models and not self.pools


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build :class:`Settings` from the file, the environment and explicit overrides."""
    env = os.environ if environ is None else environ
    path = path or env.get(ENV_PREFIX + "CONFIG") or None
    source = str(path) if path else None
    data: dict[str, Any] = {}
    lines: dict[tuple[str | int, ...], int] = {}
    if path:
        data, lines = _read_yaml(Path(path))
    data = _interpolate(data, env, lines, source)
    from_env = _apply_env(data, env)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    data.update(given)
    from_env = {path: var for path, var in from_env.items() if path[0] not in given}
    if source:
        data["config_path"] = source
    if env.get("PROMETHEUS_MULTIPROC_DIR"):
        data["prometheus_multiproc_dir"] = env["PROMETHEUS_MULTIPROC_DIR"]
    from_env.update(_otel_defaults(data, env))
    try:
        try:
            settings = msgspec.convert(data, Settings, strict=False)
        except msgspec.ValidationError as exc:
            raise _located(str(exc), lines, source) from None
        # Configured tiers and prices add to the defaults (and replace those of the same name).
        settings.tiers = {**default_tiers(), **settings.tiers}
        settings.usage.prices = {**default_prices(), **settings.usage.prices}
        _check(settings, lines, source)
    except ConfigError as exc:
        raise _blame_environment(exc, from_env) from None
    return settings


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str | int, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        message = f"cannot read the configuration file: {exc.strerror}"
        raise ConfigError(message, source=str(path)) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"not valid YAML: {exc}", source=str(path), line=line) from None
    if data is None or node is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of settings", source=str(path), line=1)
    lines: dict[tuple[str | int, ...], int] = {}
    _record_lines(node, (), lines, str(path))
    return data, lines


def _record_lines(
    node: yaml.Node, path: tuple[str | int, ...], out: dict[tuple[str | int, ...], int], src: str
) -> None:
    """Map each setting's path to its line, and refuse duplicate keys (YAML silently keeps one)."""
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"{_dotted((*path, key))}: duplicate key", source=src, line=line)
            seen.add(key)
            _record_lines(value_node, (*path, key), out, src)
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*path, index), out, src)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(
    value: Any,
    env: Mapping[str, str],
    lines: dict[tuple[str | int, ...], int],
    source: str | None,
    path: tuple[str | int, ...] = (),
) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, env, lines, source, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, lines, source, (*path, i)) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{_dotted(path)}: missing secret: environment variable {name} is not set",
            source=source,
            line=_line_of(path, lines),
        )

    return _VAR.sub(substitute, value)


_SETTING_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Overlay ``RELAYGATE_*`` variables onto the file's settings.

    Returns which variable set each setting's path, so that an error in a value
    from the environment names its variable (:func:`_blame_environment`).
    """
    origins: dict[tuple[str, ...], str] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key in _NOT_SETTINGS:
            continue
        parts = key[len(ENV_PREFIX) :].lower().split("__")
        if not all(_SETTING_NAME.match(part) for part in parts):
            raise ConfigError(
                "not a setting name: RELAYGATE_ is followed by a setting's name, with __ "
                "between nested names (RELAYGATE_ROUTING__MAX_ATTEMPTS)",
                source=_variable(key),
            )
        target = data
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{part} is not a section of settings", source=_variable(key))
        name = parts[-1]
        if name in ("discover_ollama", "allow_origins", "allow_headers", "allow_networks"):
            target[name] = [u.strip() for u in raw.split(",") if u.strip()]
        elif name == "models":
            raise ConfigError(
                "models can only be set in the configuration file", source=_variable(key)
            )
        else:
            target[name] = raw
        origins[tuple(parts)] = key
    return origins


_OTEL_VARIABLES = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "endpoint",
    "OTEL_SERVICE_NAME": "service_name",
    "OTEL_EXPORTER_OTLP_HEADERS": "headers",
}


def _otel_defaults(data: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """The standard OpenTelemetry variables, where ``tracing`` does not set the same field."""
    origins: dict[tuple[str, ...], str] = {}
    for variable, name in _OTEL_VARIABLES.items():
        raw = env.get(variable, "").strip()
        if not raw:
            continue
        section = data.get("tracing", {})
        if not isinstance(section, dict):
            return origins  # a type error msgspec reports
        if name in section:
            continue
        section = data["tracing"] = dict(section)  # never the caller's overrides
        section[name] = _otel_headers(raw, variable) if name == "headers" else raw
        origins[("tracing", name)] = variable
    return origins


def _otel_headers(raw: str, variable: str) -> dict[str, str]:
    """``key1=value1,key2=value2`` (values percent-encoded), as the OTLP exporter spec says."""
    headers: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(
                "not a list of headers: write name=value pairs separated by commas",
                source=_variable(variable),
            )
        headers[unquote(name.strip())] = unquote(value.strip())
    return headers


def _variable(name: str) -> str:
    return f"environment variable {name}"


# "<field path>: <problem>", the shape of every message below; "[...]" is msgspec's
# name for one key of a dict (it does not say which).
_FIELD_MESSAGE = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\]|\[\.\.\.\])*): (.*)\Z", re.S)
_PATH_ITEM = re.compile(r"\.?([A-Za-z_]\w*)|\[(\d+)\]|\[(\.\.\.)\]")


def _blame_environment(exc: ConfigError, from_env: Mapping[tuple[str, ...], str]) -> ConfigError:
    """Re-address a settings error to the ``RELAYGATE_*`` variable that set the field.

    The field is the path the message starts with; the variable is the one that set
    that field, a section around it, or a field inside it (an unknown nested name).
    """
    match = _FIELD_MESSAGE.match(exc.message) if from_env else None
    if match is None:
        return exc
    path = tuple(
        m.group(1) or (int(m.group(2)) if m.group(2) else _ANY_KEY)
        for m in _PATH_ITEM.finditer(match.group(1))
    )
    best: tuple[int, tuple[str, ...], str] | None = None
    for origin, variable in from_env.items():
        common = min(len(origin), len(path))
        if all(p in (o, _ANY_KEY) for p, o in zip(path, origin, strict=False)) and (
            best is None or common > best[0]
        ):
            best = (common, origin, variable)
    if best is None:
        return exc
    _, origin, variable = best
    known = tuple(o if p == _ANY_KEY else p for p, o in zip(path, origin, strict=False))
    field = known + path[len(origin) :]
    text = match.group(2)
    if text == "unknown setting":
        text += _suggestion(field)
    return ConfigError(f"{_dotted(field)}: {text}", source=_variable(variable))


_ANY_KEY = "[...]"


def _suggestion(path: tuple[str | int, ...]) -> str:
    """'; did you mean RELAYGATE_PORT?' for a misspelt name, when one is close."""
    owner: Any = Settings
    for part in path[:-1]:
        hints = typing.get_type_hints(owner) if isinstance(owner, type) else {}
        owner = hints.get(str(part))
    if not (isinstance(owner, type) and issubclass(owner, msgspec.Struct)):
        return ""
    names = [f.name for f in msgspec.structs.fields(owner)]
    close = difflib.get_close_matches(str(path[-1]), names, n=1)
    if not close:
        return ""
    name = "__".join(str(part) for part in (*path[:-1], close[0])).upper()
    return f"; did you mean {ENV_PREFIX}{name}?"


Lines = dict[tuple[str | int, ...], int]


def _check(settings: Settings, lines: Lines, source: str | None) -> None:
    """Rules a type cannot express: URLs, required fields, unique names, known fallbacks."""
    names: dict[str, int] = {}
    for i, model in enumerate(settings.models):
        if model.name in names:
            first = names[model.name]
            msg = f"models[{i}].name: duplicate model {model.name!r} (first at models[{first}])"
            raise ConfigError(msg, source=source, line=_line_of(("models", i, "name"), lines))
        names[model.name] = i
        for j, dep in enumerate(model.deployments):
            where: tuple[str | int, ...] = ("models", i, "deployments", j)
            if dep.nodes is not None:
                _own_pool(settings, model.name, dep, where, lines, source)
            if dep.pool is not None:
                _check_pooled(settings, dep, where, lines, source)
            else:
                _check_deployment(dep, where, lines, source)
    for i, model in enumerate(settings.models):
        for k, fallback in enumerate(model.fallbacks):
            if fallback not in names or fallback == model.name:
                path: tuple[str | int, ...] = ("models", i, "fallbacks", k)
                msg = f"{_dotted(path)}: fallback {fallback!r} is not another configured model"
                raise ConfigError(msg, source=source, line=_line_of(path, lines))
    _check_pools(settings, lines, source)
    _check_model_router(settings, names, lines, source)
    _check_access(settings, lines, source)
    _check_cors(settings.cors, lines, source)
    _check_ops(settings, lines, source)
    _check_tasks(settings, lines, source)
    _check_paths(settings.paths, lines, source)
    _check_tracing(settings.tracing, lines, source)
    for k, url in enumerate(settings.discover_ollama or []):
        error = _url_problem(url)
        if error:
            path = ("discover_ollama", k)
            raise ConfigError(
                f"{_dotted(path)}: {error}", source=source, line=_line_of(path, lines)
            )


def _check_tracing(tracing: TracingConfig, lines: Lines, source: str | None) -> None:
    """Tracing switched on needs the OpenTelemetry SDK and exporter (the ``otel`` extra)."""
    if not tracing.enabled:
        return
    needed = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
    missing = [name for name in needed if _no_module(name)]
    if missing:
        path = ("tracing", "enabled")
        raise ConfigError(
            f"tracing.enabled: needs the OpenTelemetry packages ({', '.join(missing)} is not "
            "installed): pip install 'relaygate[otel]'",
            source=source,
            line=_line_of(path, lines),
        )


def _no_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is None
    except ModuleNotFoundError:
        return True


def _check_pooled(
    settings: Settings,
    dep: DeploymentConfig,
    path: tuple[str | int, ...],
    lines: Lines,
    source: str | None,
) -> None:
    """A deployment on a pool names a configured pool of its own provider, and no URL."""
    pool = settings.pools.get(dep.pool or "")
    problem = None
    if pool is None:
        known = ", ".join(sorted(settings.pools)) or "none configured"
        problem = f"pool: no pool named {dep.pool!r} (pools: {known})"
    elif pool.provider != dep.provider:
        problem = f"provider: pool {dep.pool!r} is of provider {pool.provider!r}"
    elif dep.base_url is not None:
        problem = "base_url: a deployment on a pool takes its nodes' URLs; remove base_url"
    if problem:
        raise ConfigError(f"{_dotted(path)}.{problem}", source=source, line=_line_of(path, lines))


def _own_pool(
    settings: Settings,
    model: str,
    dep: DeploymentConfig,
    path: tuple[str | int, ...],
    lines: Lines,
    source: str | None,
) -> None:
    """A deployment's ``nodes``: a pool of their own (named after the model), which
    serves this model only; the pool's other settings are the defaults."""
    problem = None
    if dep.pool is not None or dep.base_url is not None:
        problem = "nodes: give nodes, or a pool, or a base_url; not more than one"
    elif dep.provider not in ("ollama", "openai"):
        problem = f"nodes: provider {dep.provider!r} cannot have nodes (ollama or openai can)"
    for k, node in enumerate(dep.nodes or ()):
        if problem is None and (error := _node_problem(node)):
            problem = f"nodes[{k}]{'.base_url' if node.base_url else ''}: {error}"
    if problem:
        raise ConfigError(f"{_dotted(path)}.{problem}", source=source, line=_line_of(path, lines))
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-._")[:56] or "model"
    name, n = base, 1
    while name in settings.pools:
        n += 1
        name = f"{base}-{n}"
    settings.pools[name] = PoolConfig(
        provider=dep.provider,  # type: ignore[arg-type]  # checked just above
        nodes=list(dep.nodes or ()),
        expose_models=False,
        timeouts=dep.timeouts,
    )
    dep.pool = name


def _node_problem(node: NodeConfig) -> str | None:
    """A node has a base URL (a valid one) or a dial-out node's name: one, not both."""
    if (node.base_url is None) == (node.node is None):
        return "give base_url (a node the gateway calls) or node (one that dials out), one of them"
    if node.base_url is None:
        return None
    return _url_problem(node.base_url)


def _check_pools(settings: Settings, lines: Lines, source: str | None) -> None:
    """Node URLs, unique node names (they are metric labels), ejection times in order."""
    for name, pool in settings.pools.items():
        seen: set[str] = set()
        for k, node in enumerate(pool.nodes):
            path: tuple[str | int, ...] = ("pools", name, "nodes", k)
            if node.name is None:
                node.name = node.node or f"node-{k + 1}"
            error = _node_problem(node)
            if error is None and node.name in seen:
                error = f"duplicate node name {node.name!r}"
            if error:
                raise ConfigError(
                    f"pools.{name}.nodes[{k}]: {error}", source=source, line=_line_of(path, lines)
                )
            seen.add(node.name)
        ejection = pool.ejection
        if ejection.max_ejection_time < ejection.base_ejection_time:
            path = ("pools", name, "ejection", "max_ejection_time")
            msg = f"pools.{name}.ejection.max_ejection_time: less than base_ejection_time"
            raise ConfigError(msg, source=source, line=_line_of(path, lines))


def _check_model_router(
    settings: Settings, names: dict[str, int], lines: Lines, source: str | None
) -> None:
    """Virtual names are new names; their members are configured models, or, when a pool
    exposes its nodes' models, may be one of those (checked as they are discovered)."""
    exposed = any(pool.expose_models for pool in settings.pools.values())
    virtual: set[str] = set()
    for i, entry in enumerate(settings.model_router):
        path: tuple[str | int, ...] = ("model_router", i, "name")
        problem = None
        if entry.name in names or entry.name in virtual:
            problem = f"{entry.name!r} is already a model name"
        for k, member in enumerate(entry.models):
            if problem is None and member not in names and not exposed:
                path = ("model_router", i, "models", k)
                problem = f"{member!r} is not a configured model"
        if problem:
            raise ConfigError(
                f"{_dotted(path)}: {problem}", source=source, line=_line_of(path, lines)
            )
        virtual.add(entry.name)


def _check_tasks(settings: Settings, lines: Lines, source: str | None) -> None:
    """Declared templates: paths, placeholders, response sources; the webhook's tier."""
    tasks = settings.tasks
    for name, template in tasks.templates.items():
        problem = task_template_problem(template)
        if problem is not None:
            path: tuple[str | int, ...] = ("tasks", "templates", name, problem[0])
            raise ConfigError(
                f"{_dotted(path)}: {problem[1]}", source=source, line=_line_of(path, lines)
            )
    paths: dict[str, str] = {}
    for name, template in tasks.served({}).items():
        if template.path in paths:
            path = ("tasks", "templates", name, "path")
            msg = f"{_dotted(path)}: {template.path} is also template {paths[template.path]!r}'s"
            raise ConfigError(msg, source=source, line=_line_of(path, lines))
        paths[template.path] = name
    if tasks.webhook.tier not in settings.tiers:
        line = _line_of(("tasks", "webhook", "tier"), lines)
        msg = f"tasks.webhook.tier: no tier named {tasks.webhook.tier!r}"
        raise ConfigError(msg, source=source, line=line)


def _check_paths(paths: PathsConfig, lines: Lines, source: str | None) -> None:
    """Aliases that point somewhere else, never at another alias (one step of
    resolution, no loops); whether a target is served is checked at start."""
    for alias, target in paths.aliases.items():
        where: tuple[str | int, ...] = ("paths", "aliases", alias)
        problem = None
        if alias == target:
            problem = "an alias of itself"
        elif target in paths.aliases:
            problem = f"its target {target!r} is itself an alias; point it at the served path"
        if problem:
            raise ConfigError(
                f"paths.aliases[{alias!r}]: {problem}", source=source, line=_line_of(where, lines)
            )


def _check_access(settings: Settings, lines: Lines, source: str | None) -> None:
    """JWT settings, tier names, and workers that would not share limits."""
    if settings.auth.jwt is not None:
        problem = jwt_config_problem(settings.auth.jwt)
        if problem:
            line = _line_of(("auth", "jwt"), lines)
            raise ConfigError(f"auth.jwt: {problem}", source=source, line=line)
    if settings.ui.oidc is not None and settings.auth.jwt is None:
        line = _line_of(("ui", "oidc"), lines)
        raise ConfigError(
            "ui.oidc: the gateway must accept the provider's tokens; configure auth.jwt "
            "(its jwks_url, issuer and audience) too",
            source=source,
            line=line,
        )
    for name in {settings.auth.anonymous_tier} - set(settings.tiers):
        line = _line_of(("auth", "anonymous_tier"), lines)
        raise ConfigError(f"auth.anonymous_tier: no tier named {name!r}", source=source, line=line)
    if (
        settings.workers > 1
        and not settings.redis_url
        and not settings.limits.allow_per_worker_limits
    ):
        raise ConfigError(
            f"workers: {settings.workers} workers without redis_url would each keep their own "
            "limit counters (N workers, N times every limit). Set redis_url, or set "
            "limits.allow_per_worker_limits: true to accept per-worker limits.",
            source=source,
            line=_line_of(("workers",), lines),
        )


def _check_cors(cors: CorsConfig, lines: Lines, source: str | None) -> None:
    """Origins as browsers send them (``https://app.example.com``); ``*`` only without
    credentials, as browsers refuse a wildcard on credentialed requests."""
    origins: list[str] = []
    for k, origin in enumerate(cors.allow_origins):
        path: tuple[str | int, ...] = ("cors", "allow_origins", k)
        if origin == "*" and cors.allow_credentials:
            raise ConfigError(
                f"{_dotted(path)}: '*' (any origin) cannot be combined with "
                "cors.allow_credentials: true; list the origins, or turn credentials off.",
                source=source,
                line=_line_of(path, lines),
            )
        normal, problem = _origin(origin)
        if problem:
            raise ConfigError(
                f"{_dotted(path)}: {problem}", source=source, line=_line_of(path, lines)
            )
        if normal not in origins:
            origins.append(normal)
    cors.allow_origins = origins


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(origin: str) -> tuple[str, str | None]:
    """An origin as a browser serialises it (lower case, no default port), or a problem."""
    if origin == "*":
        return origin, None
    shape = "an origin is scheme://host[:port], such as https://app.example.com"
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError as exc:
        return "", f"not a valid origin ({exc}); {shape}"
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return "", f"not a valid origin: {origin!r}; {shape}"
    if parts.path not in ("", "/") or parts.query or parts.fragment or "*" in parts.netloc:
        return "", f"{origin!r} has more than an origin; {shape}"
    host = parts.hostname  # lower case, IPv6 without brackets
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}", None
    return f"{scheme}://{host}:{port}", None


def _check_ops(settings: Settings, lines: Lines, source: str | None) -> None:
    """``ops.listen`` is ``host:port`` or ``:port``, on another port than the main one,
    and without ``access: admin`` (its listener checks no keys)."""
    listen = settings.ops.listen
    if listen is None:
        return
    _, colon, text = listen.rpartition(":")
    port = whole_number(text, max_digits=5)
    problem = None
    if not colon or port is None or not 0 <= port <= 65535:
        problem = f"must be host:port or :port (e.g. 127.0.0.1:9100), not {listen!r}"
    elif port != 0 and port == settings.port:
        problem = f"port {port} is the main port; use another one"
    elif port == 0 and settings.workers > 1:
        problem = "with several workers, give a fixed port (not 0)"
    elif settings.ops.access == "admin":
        problem = (
            "cannot be combined with ops.access: admin: the operations listener answers "
            "outside the event loop and checks no keys; keep its address private instead"
        )
    if problem:
        line = _line_of(("ops", "listen"), lines)
        raise ConfigError(f"ops.listen: {problem}", source=source, line=line)


def _check_deployment(
    dep: DeploymentConfig,
    path: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    source: str | None,
) -> None:
    if dep.provider == "mock":
        return
    _check_provider_fields(dep, path, lines, source)
    if dep.provider == "node":
        problem = None
        if dep.node is None:
            problem = (path, "node: required for provider 'node' (the node's name)")
        elif dep.base_url is not None:
            problem = ((*path, "base_url"), "base_url: a node has none (it dials out)")
        if problem is not None:
            where, text = problem
            msg = f"{_dotted(path)}.{text}"
            raise ConfigError(msg, source=source, line=_line_of(where, lines))
        return
    if not dep.base_url and dep.provider in DEFAULT_BASE_URLS:
        dep.base_url = DEFAULT_BASE_URLS[dep.provider]
    if not dep.base_url:
        msg = f"{_dotted(path)}.base_url: required for provider {dep.provider!r}"
        raise ConfigError(msg, source=source, line=_line_of(path, lines))
    error = _url_problem(dep.base_url)
    if error:
        url_path = (*path, "base_url")
        raise ConfigError(
            f"{_dotted(url_path)}: {error}", source=source, line=_line_of(url_path, lines)
        )


# Deployment fields that only one provider reads: set on another, they are a mistake.
_PROVIDER_FIELDS = {
    "anthropic_version": "anthropic",
    "default_max_tokens": "anthropic",
    "organization": "openai",
    "project": "openai",
    "node": "node",
}


def _check_provider_fields(
    dep: DeploymentConfig,
    path: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    source: str | None,
) -> None:
    for name, provider in _PROVIDER_FIELDS.items():
        if getattr(dep, name) is not None and dep.provider != provider:
            field_path = (*path, name)
            raise ConfigError(
                f"{_dotted(field_path)}: only provider {provider!r} reads it, not {dep.provider!r}",
                source=source,
                line=_line_of(field_path, lines),
            )


def _url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"not a valid http(s) URL: {url!r}"
    if parts.query or parts.fragment:
        return "a base URL takes no query string or fragment"
    return None


_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[(\.\.\.)\]")


def _located(
    message: str, lines: dict[tuple[str | int, ...], int], source: str | None
) -> ConfigError:
    """Turn msgspec's ``... - at `$.models[0].port``` into a field name and file line."""
    text, _, where = message.partition(" - at `")
    path: tuple[str | int, ...] = tuple(
        m.group(1) or (int(m.group(2)) if m.group(2) else _ANY_KEY)
        for m in _PATH_PART.finditer(where)
    )
    unknown = re.search(r"unknown field `([^`]+)`", text)
    if unknown:
        path = (*path, unknown.group(1))
        text = "unknown setting"
    missing = re.search(r"missing required field `([^`]+)`", text)
    if missing:
        text = f"missing required setting {missing.group(1)!r}"
    enum = re.match(r"Invalid enum value (.*)\Z", text, re.S)
    if enum and path[-1:] == ("provider",):
        text = f"unknown provider {enum.group(1)}; valid: {', '.join(PROVIDERS)}"
    name = _dotted(path) or "settings"
    return ConfigError(f"{name}: {text}", source=source, line=_line_of(path, lines))


def _line_of(path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int) or part == _ANY_KEY:
            out += f"[{part}]" if isinstance(part, int) else part
        else:
            out += f".{part}" if out else part
    return out
