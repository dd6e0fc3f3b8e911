"""AppState: everything requests share, opened at start and closed at shutdown.

Nothing here is a module global: the lifespan builds one AppState and hands it
to every route.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate.auth.authenticator import Authenticator
from relaygate.auth.principal import Principal
from relaygate.cache.database import DatabaseTier
from relaygate.cache.memory import MemoryTier
from relaygate.cache.response import ResponseCache
from relaygate.errors import ConfigError
from relaygate.limits.admission import Admission
from relaygate.limits.base import Limiter
from relaygate.limits.memory import MemoryLimiter
from relaygate.limits.quotas import QuotaPrimer
from relaygate.observability.logging import AccessLog
from relaygate.observability.looplag import LoopLag
from relaygate.observability.metrics import Metrics
from relaygate.redact import install_log_scrubber
from relaygate.routing.catalog import build_router, close_providers
from relaygate.routing.discovery import dial_out_changed, dial_out_nodes
from relaygate.routing.router import Model, Router
from relaygate.settings import Settings
from relaygate.store.engine import create_engine, safe_url
from relaygate.store.identity import IdentityStore
from relaygate.store.nodes import NodeTokenStore
from relaygate.store.responses import ResponseStore
from relaygate.store.responses_keeper import ResponseKeeper
from relaygate.store.schema import SCHEMA_REVISION, current_revision
from relaygate.tunnel.hub import Hub
from relaygate.tunnel.serving import RegisteredModels
from relaygate.usage.accounting import Recorder
from relaygate.usage.election import WriterLock, elects_writer
from relaygate.usage.outbox import Outbox
from relaygate.usage.tokens import LazyTokenizer
from relaygate.usage.writer import UsageWriter
from relaygate.vault.service import Vault

if TYPE_CHECKING:
    from relaygate.auth.invalidation import Events, KeyEvents
    from relaygate.auth.jwt import JWTVerifier
    from relaygate.limits.redis import GatewayRedis
    from relaygate.observability.tracing import Tracing

__all__ = ["AppState", "close_state", "open_state"]


@dataclass(slots=True, eq=False)
class AppState:
    """What every request shares, built once in the lifespan."""

    settings: Settings
    router: Router
    metrics: Metrics
    log: logging.Logger
    engine: AsyncEngine
    identity: IdentityStore
    auth: Authenticator
    admission: Admission
    recorder: Recorder
    outbox: Outbox
    writer: UsageWriter
    cache: ResponseCache
    responses: ResponseKeeper  # the Responses API's stored answers
    vault: Vault  # users' own provider keys and configurations (BYOK)
    hub: Hub  # dial-out nodes connected to this worker (tunnel/)
    redis: GatewayRedis | None = None
    key_events: KeyEvents | None = None
    cache_events: Events | None = None
    vault_events: Events | None = None
    node_events: Events | None = None  # node token revocations, to every replica
    jwt: JWTVerifier | None = None
    access_log: AccessLog | None = None  # None: off, and no work per request
    loop_lag: LoopLag | None = None  # relaygate_event_loop_lag_seconds
    tracing: Tracing | None = None  # None: off, and no span per request
    draining: bool = False

    @property
    def max_body(self) -> int:
        return self.settings.max_body_bytes

    def models_for(self, principal: Principal) -> list[Model]:
        """The models ``principal`` may use, in configuration order: what every model
        listing (/v1/models, /api/tags, /api/models, /ai/models) shows.

        Keys and tiers do not restrict models, so this is every configured model; a
        restriction, when one exists, goes here and every listing follows it.
        """
        return list(self.router.models.values())

    def observe_nodes(self, *_: object) -> None:
        """Every pool node's figures into the metrics: after each probe, and at a scrape."""
        for pool in self.router.pools.values():
            for node in pool.nodes:
                self.metrics.node(
                    pool.name,
                    node.name,
                    up=node.state == "healthy",
                    in_flight=node.in_flight,
                    queued=node.queued,
                    ttft=node.ewma_ttft,
                    models=len(node.models),
                    loaded=len(node.loaded),
                )

    async def keys_changed(self, key_ids: list[str]) -> None:
        """After a key or tenant changed: drop it here, and tell every other worker."""
        self.auth.invalidate(key_ids)
        if self.key_events is not None:
            await self.key_events.publish(key_ids)


async def open_state(settings: Settings, log: logging.Logger) -> AppState:
    engine = create_engine(settings.database_url)
    await _check_schema(settings.database_url)
    identity = IdentityStore(engine)
    metrics = Metrics(settings.prometheus_multiproc_dir)
    client = _redis(settings, metrics)
    jwt = None
    if settings.auth.jwt is not None:  # PyJWT and cryptography only when JWTs are used
        from relaygate.auth.jwt import JWTVerifier

        jwt = JWTVerifier(settings.auth.jwt)
    auth = Authenticator(
        settings.auth, identity, log, jwt=_jwt_check(jwt) if jwt else None, pubsub=bool(client)
    )
    hub = Hub(NodeTokenStore(engine), settings.nodes, log)
    tracing = _tracing(settings)  # its hooks put traceparent on upstream requests
    hooks = tracing.session_hooks() if tracing is not None else ()
    router = await build_router(settings, log, client, nodes=hub.link, hooks=hooks)
    pooled = frozenset(dial_out_nodes(router.pools.values()))
    hub.listeners.append(RegisteredModels(hub, router, settings.nodes, pooled))
    if pooled:
        hub.listeners.append(partial(dial_out_changed, router.pools.values()))
    keys = {key for m in router.models.values() for d in m.deployments for key in d.known_secrets}
    vault = Vault(settings, engine, log, known_secrets=tuple(sorted(keys)), hooks=hooks)
    try:  # stored provider secrets and no key to read them: refuse to start
        await vault.open()
    except BaseException:
        await close_providers(router)
        if jwt is not None:
            await jwt.aclose()
        if client is not None:
            await client.aclose()
        await engine.dispose()
        if tracing is not None:
            await tracing.aclose()
        raise
    # Provider keys and the task webhook's shared secret, scrubbed from every log line.
    install_log_scrubber(log, [*keys, settings.tasks.webhook.secret])
    usage = settings.usage
    outbox = Outbox(
        usage.outbox_dir,
        fsync_window=usage.fsync_window,
        max_bytes=usage.max_outbox_bytes,
        log=log,
        metrics=metrics,
    )
    await outbox.start()
    writer = UsageWriter(
        outbox, engine, batch_size=usage.batch_size, interval=usage.write_interval,
        log=log, metrics=metrics, retention_days=usage.retention_days,
        lock=WriterLock(usage.outbox_dir) if elects_writer(settings) else None,
    )  # fmt: skip
    await writer.start()
    tokenizer = LazyTokenizer(Path(usage.outbox_dir).parent / "tiktoken", log)
    admission = _admission(settings, client, metrics, log, engine)
    loop_lag = LoopLag(metrics.registry)
    state = AppState(
        settings=settings,
        router=router,
        metrics=metrics,
        log=log,
        engine=engine,
        identity=identity,
        auth=auth,
        admission=admission,
        recorder=Recorder(usage, outbox.append, tokenizer, admission.pricing),
        outbox=outbox,
        writer=writer,
        cache=_cache(settings, client, engine, metrics, log),
        responses=ResponseKeeper(
            ResponseStore(engine), log, batch_window=settings.responses.save_window
        ),
        vault=vault,
        redis=client,
        jwt=jwt,
        access_log=AccessLog.from_settings(settings),
        tracing=tracing,
        hub=hub,
        loop_lag=loop_lag,
    )
    if client is not None:
        _listen(state, client)
    _watch_nodes(state)
    _start_background(state)
    return state


def _start_background(state: AppState) -> None:
    """The tasks that run beside the requests: dial-out links, key changes, stored
    responses, the vault, the loop's lag and the metrics' flushes."""
    state.hub.start()
    state.auth.start()
    state.responses.start()
    state.vault.start()
    if state.loop_lag is not None:
        state.loop_lag.start()
    state.metrics.start()


def _redis(settings: Settings, metrics: Metrics) -> GatewayRedis | None:
    """redis-py only when Redis is used (it costs ~6 MiB a worker); every command timed."""
    if not settings.redis_url:
        return None
    from relaygate.limits.redis import connect

    return connect(settings.redis_url, observe=metrics.redis_command)


def _tracing(settings: Settings) -> Tracing | None:
    """OpenTelemetry, imported only when tracing is on (load_settings checked it is there)."""
    if not settings.tracing.enabled:
        return None
    from relaygate.observability.tracing import Tracing

    return Tracing(settings.tracing)


def _listen(state: AppState, client: GatewayRedis) -> None:
    """Other workers' and replicas' changes, heard through Redis: keys, cache entries,
    users' provider keys and configurations."""
    from relaygate.auth.invalidation import Events, KeyEvents

    state.key_events = KeyEvents(
        client, state.settings.redis_prefix, state.auth.invalidate, state.log
    )
    state.key_events.start()
    if state.cache.memory is not None:  # other workers' memory tiers hear invalidations
        state.cache_events = Events(
            client, state.settings.redis_prefix, "cache", state.cache.on_invalidation, state.log
        )
        state.cache.publish = state.cache_events.publish_text
        state.cache_events.start()
    # users' provider keys and configurations changed on another worker or replica
    state.vault_events = Events(
        client, state.settings.redis_prefix, "vault", state.vault.on_remote_change, state.log
    )
    state.vault.publish = state.vault_events.publish_text
    state.vault_events.start()
    # node tokens revoked on another replica: their nodes are cut off here too
    state.node_events = Events(
        client, state.settings.redis_prefix, "nodes", state.hub.on_revoked, state.log
    )
    state.hub.publish = state.node_events.publish_text
    state.node_events.start()


def _watch_nodes(state: AppState) -> None:
    """Pool nodes in /metrics: after every probe round, and each ejection as it happens."""
    for prober in state.router.probers:
        prober.after_tick.append(state.observe_nodes)
    for pool in state.router.pools.values():
        pool.on_eject.append(lambda node: state.metrics.node_ejected(node.pool, node.name))
    state.observe_nodes()


async def close_state(state: AppState) -> None:
    state.draining = True
    if state.loop_lag is not None:
        await state.loop_lag.aclose()
    await state.auth.aclose()
    await state.hub.aclose()
    if state.node_events is not None:
        await state.node_events.aclose()
    await state.admission.limiter.aclose()
    if state.key_events is not None:
        await state.key_events.aclose()
    if state.cache_events is not None:
        await state.cache_events.aclose()
    if state.vault_events is not None:
        await state.vault_events.aclose()
    await state.cache.aclose()
    if state.jwt is not None:
        await state.jwt.aclose()
    await close_providers(state.router)
    await state.vault.aclose()
    await state.responses.aclose(drain_timeout=state.settings.graceful_shutdown_seconds)
    # Every record appended so far is flushed to the outbox and written if the
    # database takes it within the drain time; what remains stays durable on disk.
    await state.writer.aclose(drain_timeout=state.settings.graceful_shutdown_seconds)
    await state.outbox.aclose()
    await state.metrics.aclose()  # the last requests' figures, to this process's files
    if state.redis is not None:
        await state.redis.aclose()
    await state.engine.dispose()
    if state.tracing is not None:  # last: spans of requests answered while closing
        await state.tracing.aclose()


def _cache(
    settings: Settings,
    client: GatewayRedis | None,
    engine: AsyncEngine,
    metrics: Metrics,
    log: logging.Logger,
) -> ResponseCache:
    """The tiers the configuration switches on: memory, Redis (with redis_url), database."""
    config = settings.cache
    memory = MemoryTier(config.memory.max_bytes) if config.memory.enabled else None
    shared = None
    if client is not None and config.redis.enabled:
        from relaygate.cache.redis import RedisTier

        shared = RedisTier(
            client, settings.redis_prefix, timeout=config.redis.timeout,
            retry_after=config.redis.retry_after,
            on_error=lambda kind: metrics.cache_error("redis", kind),
        )  # fmt: skip
    database = None
    if config.database.enabled:
        database = DatabaseTier(
            engine, timeout=config.database.timeout,
            on_error=lambda kind: metrics.cache_error("database", kind),
        )  # fmt: skip
    models = {m.name: m.cache for m in settings.models if m.cache is not None}
    return ResponseCache(
        config, models, memory=memory, redis=shared, database=database, metrics=metrics, log=log
    )


def _admission(
    settings: Settings,
    client: GatewayRedis | None,
    metrics: Metrics,
    log: logging.Logger,
    engine: AsyncEngine,
) -> Admission:
    limiter = _limiter(settings, client, metrics, log)
    # A memory limiter starts empty: monthly quotas are primed from the usage records.
    primer = QuotaPrimer(engine, limiter, log) if isinstance(limiter, MemoryLimiter) else None
    return Admission(settings, limiter, primer)


def _limiter(
    settings: Settings, client: GatewayRedis | None, metrics: Metrics, log: logging.Logger
) -> Limiter:
    """Redis (shared by every worker and replica) when configured, else in-process memory.

    If Redis fails, limits fall back to a bounded in-process limiter and the
    ``relaygate_ratelimit_degraded`` gauge says so; ``limits.fail_closed`` answers
    503 instead. Limits are never switched off.
    """
    backend = settings.limits.backend
    if backend == "memory" or (backend == "auto" and client is None):
        return MemoryLimiter()
    if client is None:
        raise ConfigError("limits.backend: 'redis' needs redis_url")
    from relaygate.limits.fallback import FallbackLimiter
    from relaygate.limits.redis import RedisLimiter

    def degraded(on: bool) -> None:
        metrics.ratelimit_degraded.set(1 if on else 0)
        if on:
            log.warning("Redis unreachable: limits are now enforced per process")
        else:
            log.warning("Redis is back: limits are shared again")

    return FallbackLimiter(
        RedisLimiter(client, settings.redis_prefix + "limits:", close_client=False),
        MemoryLimiter(),
        fail_closed=settings.limits.fail_closed,
        timeout=settings.limits.redis_timeout,
        on_degraded=degraded,
    )


async def _check_schema(url: str) -> None:
    """Refuse to serve on a database whose schema is not this version's."""
    have, want = await current_revision(url), SCHEMA_REVISION
    if have != want:
        raise ConfigError(
            f"the database at {safe_url(url)} is at schema {have or 'none'}, this version "
            f"needs {want}: run 'relaygate db upgrade' (serve does this at start)."
        )


def _jwt_check(verifier: JWTVerifier):  # type: ignore[no-untyped-def]
    async def check(token: str) -> Principal:
        identity = await verifier.verify(token)
        return Principal(
            subject=f"jwt:{identity.subject}",
            kind="jwt",
            role=identity.role,
            tier=identity.tier,
            tenant_id=identity.tenant,
            expires_at=identity.expires_at,
            user=identity.subject,
        )

    return check
