"""Credential -> Principal, without touching the database per request.

Key records are cached in process. The database is read only on a key's first
use in this worker, and again after the key changed. Changes reach every
worker and replica within a second:

* without Redis, each worker asks the database every ``POLL_FAST`` seconds for
  keys changed since its last look (one small indexed query, whatever the
  number of keys);
* with Redis, a change is also published on a channel and every worker drops
  the key at once; polling continues more slowly as a safety net.

When the database is down, keys already cached keep working; a key not yet
seen gets a 503 that says so (not a 401, which would wrongly tell the client
its key is bad). ``last_used_at`` is written in batches, never per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from relaygate.asgi import Scope
from relaygate.auth.credentials import client_ip, looks_like_jwt, read_credential
from relaygate.auth.keys import MAX_KEY_LENGTH, hash_secret
from relaygate.auth.principal import Principal
from relaygate.errors import AuthenticationError, StoreUnavailable
from relaygate.settings import AuthConfig, KeyCache, LimitSet
from relaygate.store.identity import IdentityStore, KeyRecord

__all__ = ["Authenticator", "JWTCheck"]

POLL_FAST = 0.5
POLL_WITH_PUBSUB = 5.0
FLUSH_LAST_USED = 10.0
NEGATIVE_TTL = 5.0
NEGATIVE_MAX = 10_000
LOOKUPS_AT_ONCE = 16

JWTCheck = Callable[[str], Awaitable[Principal]]


@dataclass(slots=True)
class _Entry:
    key_id: str
    principal: Principal | None  # None: known, but not usable (disabled, revoked)
    expires_at: float | None
    updated_at: datetime  # the record's change time when it was loaded


class Authenticator:
    """Resolves each request's credential to a Principal."""

    def __init__(
        self,
        config: AuthConfig,
        store: IdentityStore,
        log: logging.Logger,
        jwt: JWTCheck | None = None,
        pubsub: bool = False,
    ) -> None:
        self.config = config
        self.store = store
        self.log = log
        self.jwt = jwt
        self._poll_every = POLL_WITH_PUBSUB if pubsub else POLL_FAST
        self._by_hash: dict[str, _Entry] = {}
        self._hash_by_id: dict[str, str] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._used: dict[str, float] = {}
        self._lookups = asyncio.Semaphore(LOOKUPS_AT_ONCE)
        self._tasks: list[asyncio.Task[None]] = []
        self._since = datetime.now(UTC) - timedelta(seconds=5)
        self._loading: dict[str, asyncio.Future[_Entry]] = {}
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies]

    # the hot path

    async def authenticate(self, scope: Scope) -> Principal:
        token = read_credential(scope)
        if token is None:
            return self._anonymous(scope)
        if self.jwt is not None and looks_like_jwt(token):
            return await self.jwt(token)
        return await self._api_key(token)

    async def _api_key(self, token: str) -> Principal:
        if len(token) > MAX_KEY_LENGTH:
            raise AuthenticationError()
        key_hash = hash_secret(token)
        entry = self._by_hash.get(key_hash)
        if entry is None:
            entry = await self._load(key_hash)
        principal = entry.principal
        now = time.time()
        if principal is None or (entry.expires_at is not None and entry.expires_at <= now):
            raise AuthenticationError()
        self._used[entry.key_id] = now
        return principal

    def client_ip(self, scope: Scope) -> str:
        """The client's address, X-Forwarded-For believed only from trusted proxies."""
        return client_ip(scope, self._trusted)

    def _anonymous(self, scope: Scope) -> Principal:
        if not self.config.anonymous:
            raise AuthenticationError()
        ip = client_ip(scope, self._trusted)
        return Principal(
            subject=f"ip:{ip}", kind="anonymous", role="user", tier=self.config.anonymous_tier
        )

    async def _load(self, key_hash: str) -> _Entry:
        """First use of a key in this worker: one database read, shared by every request
        that arrives for the same key meanwhile, and bounded in concurrency overall."""
        expiry = self._unknown.get(key_hash)
        if expiry is not None and expiry > time.monotonic():
            raise AuthenticationError()
        pending = self._loading.get(key_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._loading[key_hash] = future
        try:
            entry = await self._read(key_hash)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        else:
            future.set_result(entry)
            return entry
        finally:
            del self._loading[key_hash]

    async def _read(self, key_hash: str) -> _Entry:
        async with self._lookups:
            entry = self._by_hash.get(key_hash)  # another request may have loaded it
            if entry is not None:
                return entry
            try:
                record = await self.store.find_by_hash(key_hash)
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                self.log.warning("key lookup failed, database unreachable: %s", type(exc).__name__)
                raise StoreUnavailable(
                    "Cannot check this API key now: the key store is unreachable. "
                    "Keys used recently keep working; retry shortly."
                ) from None
        if record is None:
            self._remember_unknown(key_hash)
            raise AuthenticationError()
        entry = _entry(record)
        self._by_hash[key_hash] = entry
        self._hash_by_id[record.id] = key_hash
        return entry

    def _remember_unknown(self, key_hash: str) -> None:
        self._unknown[key_hash] = time.monotonic() + NEGATIVE_TTL
        self._unknown.move_to_end(key_hash)
        while len(self._unknown) > NEGATIVE_MAX:
            self._unknown.popitem(last=False)

    # keeping the cache true

    def invalidate(self, key_ids: list[str]) -> None:
        """Forget these keys; their next use reads the database again. Unknown secrets are
        forgotten too: the change may be a key imported with a secret that a client was
        already sending (a migration), which must work at once, not after NEGATIVE_TTL."""
        if key_ids:
            self._unknown.clear()
        for key_id in key_ids:
            key_hash = self._hash_by_id.pop(key_id, None)
            if key_hash is not None:
                self._by_hash.pop(key_hash, None)

    def start(self) -> None:
        """Background work: change polling and last_used_at batches."""
        self._tasks = [
            asyncio.ensure_future(self._every(self._poll_every, self._poll_changes)),
            asyncio.ensure_future(self._every(FLUSH_LAST_USED, self.flush_last_used)),
        ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(SQLAlchemyError, OSError):
            await self.flush_last_used()

    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` forever; a failure is logged and retried, never the end of the loop
        (a dead change poll would mean revoked keys are never noticed again)."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                self.log.debug("background auth job failed: %s", type(exc).__name__)
            except Exception:
                self.log.exception("background auth job failed")

    async def _poll_changes(self) -> None:
        """Drop cached keys changed since they were loaded. The look reaches back 2 s
        (another replica's clock may lag ours), so a change already acted on comes back;
        a key is dropped only when its change time differs from the one it was loaded with."""
        changed = await self.store.changed_since(self._since - timedelta(seconds=2))
        if changed:
            self._since = max(self._since, max(changed.values()))
        stale = []
        if any(key_id not in self._hash_by_id for key_id in changed):
            self._unknown.clear()  # a new key (perhaps an imported secret) may be among them
        for key_id, at in changed.items():
            key_hash = self._hash_by_id.get(key_id)
            entry = self._by_hash.get(key_hash) if key_hash else None
            if entry is not None and entry.updated_at != at:
                stale.append(key_id)
        self.invalidate(stale)

    async def flush_last_used(self) -> None:
        used, self._used = self._used, {}
        if not used:
            return
        try:
            await self.store.record_last_used(
                {k: datetime.fromtimestamp(t, UTC) for k, t in used.items()}
            )
        except (SQLAlchemyError, OSError, TimeoutError):
            for key_id, at in used.items():  # keep them for the next batch
                self._used.setdefault(key_id, at)
            raise


def _entry(record: KeyRecord) -> _Entry:
    expires = record.expires_at.timestamp() if record.expires_at else None
    usable = record.enabled and record.revoked_at is None
    principal = None
    if usable:
        role: Literal["admin", "user"] = "admin" if record.role == "admin" else "user"
        principal = Principal(
            subject=f"key:{record.id}",
            kind="key",
            role=role,
            tier=record.tier,
            key_id=record.id,
            tenant_id=record.tenant_id,
            tenant_tier=record.tenant_tier,
            limits=msgspec.convert(record.limits, LimitSet) if record.limits else None,
            cache=msgspec.convert(record.cache, KeyCache) if record.cache else None,
            expires_at=expires,
            user=record.user,
        )
    return _Entry(record.id, principal, expires, record.updated_at)
