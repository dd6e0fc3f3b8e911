"""The vault on the request path: who has which provider configuration, and the
provider that serves it, with no database read per request.

:class:`Vault` keeps every configuration and secret *row* in memory (ciphertexts
only), indexed by owner; it is reloaded at start, after each change made through
this worker, and when a cheap poll sees the tables changed (another worker or
replica). A request whose caller has no configuration costs one dict lookup.
When one is chosen (:func:`relaygate.vault.selection.choose`), its secret is
decrypted once and its :class:`~relaygate.routing.router.Deployment` built and
kept in a bounded LRU keyed by (configuration, its change time, secret, its
version): a changed or rotated key builds a new one.

Cloud types share one pooled session per base URL (the operator's
``byok.base_urls``); the self-hosted types, whose base URL a user gave, share one
session whose every connection passes the SSRF policy (:mod:`relaygate.net.ssrf`).
``last_used_at`` is written in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import msgspec
from sqlalchemy.exc import SQLAlchemyError

from relaygate.digits import whole_number
from relaygate.errors import ConfigError, NotFound, StoreUnavailable, UpstreamError
from relaygate.net.ssrf import SsrfPolicy, guarded_session
from relaygate.providers.anthropic import AnthropicProvider
from relaygate.providers.base import Provider
from relaygate.providers.gemini import GeminiProvider
from relaygate.providers.ollama import OllamaProvider
from relaygate.providers.openai import OpenAIProvider
from relaygate.providers.openwebui import OpenWebUIProvider
from relaygate.redact import scrub
from relaygate.routing.catalog import new_session
from relaygate.routing.health import Health
from relaygate.routing.router import Deployment
from relaygate.settings import BYOK_TYPES, Settings
from relaygate.vault.crypto import SecretBox
from relaygate.vault.selection import URL_TYPES, choose
from relaygate.vault.store import ConfigRow, Owner, SecretRow, VaultStore, utcnow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from relaygate.auth.principal import Principal

__all__ = ["KeyOwner", "Picked", "Vault", "check_readable", "owner_of"]

KeyOwner = Literal["user", "tenant"]
# X-Relaygate-Provider values that mean "the usual choice" rather than a type or an id
CHOICE_WORDS = frozenset(("auto", "default", "user"))
_ADAPTERS: dict[str, tuple[str, Callable[..., Provider]]] = {
    "openai": ("openai", OpenAIProvider),
    "openai-compatible": ("openai", OpenAIProvider),
    "openwebui": ("openwebui", OpenWebUIProvider),
    "ollama": ("ollama", OllamaProvider),
    "gemini": ("gemini", GeminiProvider),
    "anthropic": ("anthropic", AnthropicProvider),
}


async def check_readable(store: VaultStore, box: SecretBox | None) -> None:
    """A ConfigError when stored provider secrets exist that ``box`` cannot open (no key
    at all, or none of the keys they are under): the gateway must not start so."""
    counts = await store.fingerprints()
    stored = sum(counts.values())
    if stored and box is None:
        raise ConfigError(
            f"secret_key: the database holds {stored} provider secret(s), encrypted, "
            "and RELAYGATE_SECRET_KEY is not set; set it to the key they were stored "
            "with (see docs/byok.md). The gateway never reads them as plaintext."
        )
    if box is not None:
        unreadable = {fp: n for fp, n in counts.items() if not box.readable(fp)}
        if unreadable:
            names = ", ".join(f"{fp} ({n})" for fp, n in sorted(unreadable.items()))
            raise ConfigError(
                f"secret_key: {sum(unreadable.values())} provider secret(s) are encrypted "
                f"under a key RELAYGATE_SECRET_KEY does not list (fingerprints: {names}); "
                "add that key back (after the newest), then run 'relaygate secrets rotate'"
            )


def owner_of(principal: Principal) -> Owner | None:
    """The vault owner a caller acts as; None for an anonymous caller."""
    owner = principal.owner
    if owner is None:
        return None
    return Owner(principal.tenant_id or "", owner)


@dataclass(frozen=True, slots=True)
class Picked:
    """The user's provider that serves one request."""

    deployment: Deployment
    config: ConfigRow
    key_owner: KeyOwner
    secret_id: int | None

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-relaygate-provider", self.config.provider_type.encode()),
            (b"x-relaygate-key-owner", self.key_owner.encode()),
        ]


SERVER_HEADERS = [(b"x-relaygate-key-owner", b"server")]


class Vault:
    """Provider secrets and configurations, as requests use them."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        log: logging.Logger,
        known_secrets: tuple[str, ...] = (),
        hooks: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        self.settings = settings
        self.hooks = hooks  # its sessions' aiohttp hooks (trace propagation)
        self.config = settings.byok
        self.log = log
        self.store = VaultStore(engine)
        self.box = SecretBox.from_setting(settings.secret_key)
        self.policy = SsrfPolicy(self.config.allow_networks)
        self.known_secrets = known_secrets  # the operator's provider keys, scrubbed too
        self._configs: dict[Owner, list[ConfigRow]] = {}
        self._secrets: dict[int, SecretRow] = {}
        self._built: OrderedDict[tuple[Any, ...], Deployment] = OrderedDict()
        self._cloud: dict[tuple[str, str], Provider] = {}
        self._guarded: aiohttp.ClientSession | None = None
        self._signature: tuple[Any, ...] | None = None
        self._used: dict[int, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._reloading: asyncio.Task[None] | None = None
        # set when Redis is configured: tells every worker and replica at once
        self.publish: Callable[[str], Awaitable[None]] | None = None

    @property
    def active(self) -> bool:
        """Whether users' keys can be used at all (a secret key is configured)."""
        return self.box is not None

    # start and stop

    async def open(self) -> None:
        """Refuse to start when stored secrets could not be read; load the index."""
        await check_readable(self.store, self.box)
        await self.reload()

    def start(self) -> None:
        self._tasks = [
            asyncio.ensure_future(self._every(self.config.poll_interval, self._poll)),
            asyncio.ensure_future(
                self._every(self.config.last_used_interval, self.flush_last_used)
            ),
        ]

    async def aclose(self) -> None:
        if self._reloading is not None:
            self._tasks.append(self._reloading)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(SQLAlchemyError, OSError, TimeoutError):
            await self.flush_last_used()
        for provider in self._cloud.values():
            await provider.aclose()
        self._cloud.clear()
        if self._guarded is not None:
            await self._guarded.close()
        self._built.clear()

    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                self.log.debug("background vault job failed: %s", type(exc).__name__)
            except Exception:
                self.log.exception("background vault job failed")

    async def _poll(self) -> None:
        if await self.store.signature() != self._signature:
            await self.reload()

    async def changed(self) -> None:
        """After a change made here: reload now, and tell the other workers (Redis);
        without Redis they see it at their next poll."""
        await self.reload()
        if self.publish is not None:
            await self.publish("changed")

    def on_remote_change(self, _message: str) -> None:
        """Another worker changed something: reload soon (one reload at a time)."""
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.ensure_future(self._reload_quietly())

    async def _reload_quietly(self) -> None:
        try:
            await self.reload()
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            self.log.warning("vault reload failed (%s); the poll retries", type(exc).__name__)

    async def reload(self) -> None:
        """Read every configuration and secret row again (ciphertexts only)."""
        signature = await self.store.signature()
        secrets, configs = await self.store.load_all()
        by_owner: dict[Owner, list[ConfigRow]] = {}
        for config in configs:
            by_owner.setdefault(Owner(config.tenant_id, config.owner), []).append(config)
        self._secrets = {s.id: s for s in secrets}
        self._configs = by_owner
        self._signature = signature

    # the request path

    def pick(self, principal: Principal, wanted: str | None) -> Picked | None:
        """The caller's provider for this request, or None for the server's default.

        ``wanted``: the X-Relaygate-Provider header (a type, a configuration id, or a
        word meaning the usual choice). Naming one the caller does not have is a 404.
        """
        who = owner_of(principal)
        configs = self._configs.get(who) if who is not None else None
        narrowed = None if wanted is None or wanted in CHOICE_WORDS else wanted
        if (
            narrowed is not None
            and narrowed not in BYOK_TYPES
            and whole_number(narrowed, max_digits=10) is None
        ):
            raise NotFound(
                f"X-Relaygate-Provider: {narrowed[:40]!r} is not a provider type "
                f"({', '.join(BYOK_TYPES)}), a configuration id, 'auto' or 'server'."
            )
        config = None
        if configs and who is not None:
            config = choose(configs, self._secrets, who, utcnow(), narrowed)
        if config is None:
            if narrowed is not None:
                raise NotFound(
                    f"You have no usable provider configuration matching "
                    f"X-Relaygate-Provider: {narrowed}."
                )
            return None
        secret = self._secrets.get(config.api_key_id) if config.api_key_id is not None else None
        deployment = self._deployment(config, secret)
        if secret is not None:
            self._used[secret.id] = time.time()
        key_owner: KeyOwner = "tenant" if secret is not None and secret.shared else "user"
        return Picked(deployment, config, key_owner, secret.id if secret else None)

    def _deployment(self, config: ConfigRow, secret: SecretRow | None) -> Deployment:
        key = (
            config.id, config.updated_at,
            secret.id if secret else None, secret.version if secret else 0,
        )  # fmt: skip
        found = self._built.get(key)
        if found is not None:
            self._built.move_to_end(key)
            return found
        api_key = self._decrypt(secret) if secret is not None else None
        model = config.config.get("model") or self.config.default_models.get(
            config.provider_type, ""
        )
        deployment = self.build(config.provider_type, config.base_url, api_key, str(model))
        self._built[key] = deployment
        while len(self._built) > self.config.max_cached_providers:
            self._built.popitem(last=False)
        return deployment

    def _decrypt(self, secret: SecretRow) -> str:
        if self.box is None:
            raise StoreUnavailable("Provider keys cannot be used: no secret key is configured.")
        try:
            return self.box.decrypt(secret.ciphertext)
        except ValueError:
            self.log.error(
                "provider secret %d does not decrypt under any configured key", secret.id
            )
            raise StoreUnavailable(
                "Your stored provider key cannot be read; ask the operator to check "
                "RELAYGATE_SECRET_KEY."
            ) from None

    def build(
        self, provider_type: str, base_url: str | None, api_key: str | None, model: str
    ) -> Deployment:
        """A deployment of one user's provider: the pooled adapter, with the user's key."""
        adapter_name, _ = _ADAPTERS[provider_type]
        return Deployment(
            name=f"byok:{provider_type}",  # bounded: fit for a metric label
            model="byok",
            provider=self._provider(provider_type, base_url),
            provider_name=adapter_name,
            upstream_model=model,
            weight=1.0,
            timeouts=self.config.timeouts,
            health=Health(self.settings.routing),
            api_key=api_key,
            known_secrets=(*((api_key,) if api_key else ()), *self.known_secrets),
            chunk_delay=0.0,
        )

    def _provider(self, provider_type: str, base_url: str | None) -> Provider:
        _, adapter = _ADAPTERS[provider_type]
        if provider_type in URL_TYPES:
            if base_url is None:
                raise NotFound("This provider configuration has no base_url.")
            if self._guarded is None:
                self._guarded = guarded_session(self.policy, hooks=self.hooks)
            return adapter(base_url, self._guarded)  # a thin wrapper; the session is shared
        url = self.config.base_urls.get(provider_type) or ""
        provider = self._cloud.get((provider_type, url))
        if provider is None:
            provider = adapter(url, new_session(256, hooks=self.hooks))
            self._cloud[(provider_type, url)] = provider
        return provider

    # last_used_at

    async def flush_last_used(self) -> None:
        used, self._used = self._used, {}
        if not used:
            return
        try:
            await self.store.record_last_used(
                {k: datetime.fromtimestamp(t, UTC) for k, t in used.items()}
            )
        except (SQLAlchemyError, OSError, TimeoutError):
            for key, at in used.items():
                self._used.setdefault(key, at)
            raise

    # the optional check on add

    async def check(self, provider_type: str, base_url: str | None, api_key: str | None) -> Any:
        """One cheap call (the model list) with a new key: ``{"ok": true, "models": n}``
        or ``{"ok": false, "error": ...}`` with every secret scrubbed from the error."""
        deployment = self.build(provider_type, base_url, api_key, "")
        provider: Any = deployment.provider
        try:
            async with asyncio.timeout(self.config.check_timeout):
                if provider_type == "ollama":
                    names = await provider.list_models()
                else:
                    names = await provider.list_models(api_key)
        except TimeoutError:
            return {"ok": False, "error": "the provider did not answer in time"}
        except aiohttp.ClientResponseError as exc:
            return {"ok": False, "error": f"the provider answered {exc.status} {exc.message}"}
        except (
            UpstreamError,
            aiohttp.ClientError,
            OSError,
            ValueError,
            msgspec.DecodeError,
        ) as exc:
            text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
            return {"ok": False, "error": scrub(text, api_key, *self.known_secrets)}
        return {"ok": True, "models": len(names)}
