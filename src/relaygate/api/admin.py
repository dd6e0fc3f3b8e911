"""The admin API: tenants and keys, plus the seeds' key routes.

* ``/admin/keys`` and ``/admin/tenants``: full management, admin keys only.
* ``POST /auth/create-key`` (seed 001): a key for a tenant named by id or name,
  creating the tenant when the name is new. Admin only.
* ``/api/keys`` (seed 003): list, create and revoke keys in that seed's shapes.
  An admin sees every key; a user sees only its own, and cannot create or revoke.
* ``/admin/usage*`` and ``/usage/requests/{request_id}``: see api/admin_usage.py.

This is Starlette, not the plain-ASGI hot path: these routes are rare and a
router with path parameters is clearer here. Every error is rendered in
OpenAI's error shape, as under /v1. Secrets are returned once, at creation or
rotation; hashes never. Every change is followed by ``state.keys_changed`` so
each worker's key cache drops the key at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import msgspec
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from relaygate.api.admin_deployments import DeploymentsAdminAPI
from relaygate.api.admin_nodes import NodesAdminAPI
from relaygate.api.admin_tunnel import NodeTokensAdminAPI
from relaygate.api.admin_usage import UsageAdminAPI
from relaygate.api.http import decode_json_object
from relaygate.api.shapes import internal_error
from relaygate.api.subapp import error_response as _error
from relaygate.api.subapp import json_app
from relaygate.asgi import ClientGone, new_request_id, read_body
from relaygate.auth.bootstrap import ADMIN_TENANT
from relaygate.auth.keys import check_imported
from relaygate.auth.principal import Principal
from relaygate.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RelaygateError,
    StoreUnavailable,
)
from relaygate.settings import Count, KeyCache, LimitSet, Seconds, Settings
from relaygate.store.identity import KeyRecord, Tenant, resolve_tenant, utcnow

if TYPE_CHECKING:
    from relaygate.state import AppState

__all__ = [
    "build_admin_app",
    "check_tier",
    "default_tier",
    "expiry",
]

_UNSET = msgspec.UNSET
Unset = msgspec.UnsetType
Role = Literal["admin", "user"]
TenantRef = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Name = Annotated[str, msgspec.Meta(max_length=200)]
Description = Annotated[str, msgspec.Meta(max_length=4000)]
Days = Annotated[int, msgspec.Meta(ge=1, le=36_500)]
PerHour = Count  # bounded as every limit is (settings.MAX_COUNT)
Metadata = dict[str, Any]
UserName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
S = TypeVar("S", bound="_Body")


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: unknown fields are errors that name the field."""


class KeyCreate(_Body):
    tenant_id: TenantRef
    name: Name = ""
    description: Description = ""
    role: Role = "user"
    tier: str | None = None
    limits: LimitSet | None = None
    expires_at: datetime | None = None
    expires_in_days: Days | None = None
    metadata: Metadata | None = None
    cache: KeyCache | None = None
    user: UserName | None = None  # the user the key belongs to (BYOK ownership)


class KeyImport(KeyCreate):
    """``POST /admin/keys/import``: a key whose secret was made elsewhere (a migration).
    Only this route takes a secret: ``POST /admin/keys`` always makes its own."""

    secret: str = ""  # required in effect: an empty secret is refused as too weak


class KeyCachePatch(_Body):
    """A change to a key's cache settings: fields left out keep their value, ``null``
    returns a field to the default (the model's, then the gateway's)."""

    enabled: bool | Unset | None = _UNSET
    ttl: Seconds | Unset | None = _UNSET


class KeyPatch(_Body):
    enabled: bool | Unset = _UNSET
    tier: str | Unset = _UNSET
    limits: LimitSet | Unset | None = _UNSET
    expires_at: datetime | Unset | None = _UNSET
    name: Name | Unset = _UNSET
    description: Description | Unset = _UNSET
    role: Role | Unset = _UNSET
    metadata: Metadata | Unset | None = _UNSET
    cache: KeyCachePatch | Unset | None = _UNSET
    user: UserName | Unset | None = _UNSET


class TenantCreate(_Body):
    name: TenantRef
    tier: str | None = None


class TenantPatch(_Body):
    name: TenantRef | Unset = _UNSET
    tier: str | Unset | None = _UNSET


class SeedCreateKey(_Body):
    """Seed 001's ``POST /auth/create-key``."""

    tenant_id: TenantRef
    tier: str | None = None
    description: Description = ""
    expires_in_days: Days | None = None
    name: Name = ""


class SeedApiKeyCreate(_Body):
    """Seed 003's ``POST /api/keys``: ``rate_limit`` is requests per hour."""

    name: Name
    role: Role = "user"
    rate_limit: PerHour | None = None
    tier: str | None = None
    tenant_id: TenantRef | None = None
    description: Description = ""
    expires_in_days: Days | None = None


# shared with the CLI


def check_tier(settings: Settings, tier: str, param: str = "tier") -> str:
    if tier not in settings.tiers:
        known = ", ".join(sorted(settings.tiers)) or "(none)"
        raise InvalidRequest(
            f"Unknown tier {tier!r}; the configured tiers are: {known}.", param=param
        )
    return tier


def default_tier(settings: Settings, tenant: Tenant) -> str:
    """A new key's tier when none is given: its tenant's, else ``free``."""
    for tier in (tenant.tier, "free"):
        if tier and tier in settings.tiers:
            return tier
    raise InvalidRequest("tier is required: no 'free' tier is configured.", param="tier")


def expiry(
    at: datetime | None, in_days: int | None, *, now: datetime | None = None
) -> datetime | None:
    """A new key's expiry from ``expires_at`` or ``expires_in_days`` (not both, not past)."""
    now = now or utcnow()
    if at is not None and in_days is not None:
        raise InvalidRequest(
            "Give expires_at or expires_in_days, not both.", param="expires_in_days"
        )
    if in_days is not None:
        return now + timedelta(days=in_days)
    if at is None:
        return None
    at = _utc(at)
    if at <= now:
        raise InvalidRequest(
            f"expires_at {at.isoformat()} is in the past; a new key must expire in the future.",
            param="expires_at",
        )
    return at


def _utc(value: datetime, param: str = "expires_at") -> datetime:
    """Times without a zone are UTC; one whose UTC time falls outside years 1-9999 is refused."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidRequest(
            f"{param} {value.isoformat()} is outside the years 1 to 9999 in UTC.", param=param
        ) from None


def limits_dict(limits: LimitSet | None) -> dict[str, int] | None:
    """A key's overrides as stored: only the numbers given; none at all is None."""
    if limits is None:
        return None
    values = {k: v for k, v in msgspec.structs.asdict(limits).items() if v is not None}
    return values or None


# request plumbing


def _cache_dict(cache: KeyCache | None) -> dict[str, Any] | None:
    return msgspec.to_builtins(cache) or None if cache is not None else None


def merged_cache(
    current: dict[str, Any] | None, patch: KeyCachePatch | None
) -> dict[str, Any] | None:
    """A key's cache settings after a PATCH: only the fields given change (``null`` resets
    one); ``"cache": null`` resets them all."""
    if patch is None:
        return None
    values = dict(current or {})
    for field in patch.__struct_fields__:
        value = getattr(patch, field)
        if value is None:
            values.pop(field, None)
        elif value is not _UNSET:
            values[field] = value
    return _cache_dict(msgspec.convert(values, KeyCache))


def _parse(body: bytes, schema: type[S]) -> S:
    data = decode_json_object(body)
    try:
        value = msgspec.convert(data, schema)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from None
    _refuse_nul(value)
    return value


def _invalid(message: str) -> InvalidRequest:
    """msgspec's ``... - at `$.limits``` as a 400 that names the field."""
    text, _, where = message.partition(" - at `")
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    named = text.split("`")[1] if text.count("`") >= 2 else ""
    if "unknown field" in text:
        param = f"{path}.{named}" if path else named
        return InvalidRequest(f"Unknown field {param!r}.", param=param)
    if "missing required field" in text:
        param = f"{path}.{named}" if path else named
        return InvalidRequest(f"Missing required field {param!r}.", param=param)
    if path:
        return InvalidRequest(f"Invalid value for {path!r}: {text}.", param=path)
    return InvalidRequest(f"Invalid request: {text}.")


def _refuse_nul(value: _Body) -> None:
    """PostgreSQL text cannot hold NUL; say so instead of failing in the database."""
    for field in value.__struct_fields__:
        item = getattr(value, field)
        if isinstance(item, str) and "\x00" in item:
            raise InvalidRequest(f"{field} must not contain NUL characters.", param=field)


def _refuse_nul_in_query(request: Request) -> None:
    """PostgreSQL text cannot hold NUL: a query parameter with one is refused up front."""
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise InvalidRequest(f"{name!r} must not contain NUL characters.", param=name)


def _json(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status, media_type="application/json")


def _path_id(request: Request, name: str) -> str:
    """An id from the path; one the database could not even compare is simply not found."""
    value: str = request.path_params[name]
    if "\x00" in value:
        raise NotFound(f"No {name.removesuffix('_id')} {value!r}.")
    return value


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").strip().lower()
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("", "0", "false", "no"):
        return False
    raise InvalidRequest(f"{name} must be true or false, not {raw[:40]!r}.", param=name)


def _zulu(value: datetime | None) -> str | None:
    """Seed 001's time format: ``2026-01-20T10:30:00Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def _public(record: KeyRecord) -> dict[str, Any]:
    return {**record.public(), "tenant_name": record.tenant_name}


Endpoint = Callable[[Request, Principal], Awaitable[Response]]


class AdminAPI:
    """The routes; each gets the caller's Principal, already checked for its role."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.store = state.identity
        self.settings = state.settings

    def wrap(self, handler: Endpoint, admin: bool) -> Callable[[Request], Awaitable[Response]]:
        """The handler with authentication, the role check and errors rendered."""

        async def endpoint(request: Request) -> Response:
            request_id, path = new_request_id(), request.url.path
            try:
                principal = await self.state.auth.authenticate(request.scope)
                if admin and not principal.is_admin:
                    raise PermissionDenied("This endpoint needs an admin key.")
                _refuse_nul_in_query(request)
                response = await handler(request, principal)
            except RelaygateError as error:
                return _error(error, request_id, path)
            except ClientGone:
                closed = InvalidRequest("The client closed the connection.")
                return _error(closed, request_id, path)
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                self.state.log.warning("admin %s: key store failed: %r", request_id, exc)
                unavailable = StoreUnavailable("The key store could not answer; retry shortly.")
                return _error(unavailable, request_id, path)
            except Exception:
                self.state.log.exception("admin request %s failed", request_id)
                return _error(internal_error(request_id), request_id, path)
            response.headers["x-request-id"] = request_id
            return response

        return endpoint

    async def _body(self, request: Request, schema: type[S]) -> S:
        body = await read_body(request.scope, request.receive, self.state.max_body)
        return _parse(body, schema)

    def _audit(self, principal: Principal, action: str, target: str) -> None:
        self.state.log.info("admin: %s %s %s", principal.subject, action, target)

    # /admin/keys

    async def create_key(self, request: Request, principal: Principal) -> Response:
        body = await self._body(request, KeyCreate)
        tier = None if body.tier is None else check_tier(self.settings, body.tier)
        expires_at = expiry(body.expires_at, body.expires_in_days)
        tenant = await resolve_tenant(self.store, body.tenant_id)
        record, secret = await self._issue(
            principal, tenant, tier, role=body.role, name=body.name,
            description=body.description, limits=limits_dict(body.limits),
            expires_at=expires_at, metadata=body.metadata, cache=_cache_dict(body.cache),
            user=body.user,
        )  # fmt: skip
        return _json({"key": _public(record), "api_key": secret}, 201)

    async def import_key(self, request: Request, principal: Principal) -> Response:
        """An existing secret (seed 000/001's ``vpn_...``, seed 003's demo keys) as a key,
        stored hashed; the answer never repeats the secret."""
        body = await self._body(request, KeyImport)
        secret = check_imported(body.secret)
        tier = None if body.tier is None else check_tier(self.settings, body.tier)
        expires_at = expiry(body.expires_at, body.expires_in_days)
        tenant = await resolve_tenant(self.store, body.tenant_id)
        record, _ = await self._issue(
            principal, tenant, tier, role=body.role, name=body.name,
            description=body.description, limits=limits_dict(body.limits),
            expires_at=expires_at, metadata=body.metadata, cache=_cache_dict(body.cache),
            secret=secret, imported=True, user=body.user,
        )  # fmt: skip
        return _json({"key": _public(record), "imported": True}, 201)

    async def _issue(
        self, principal: Principal, tenant: Tenant, tier: str | None, **fields: Any
    ) -> tuple[KeyRecord, str]:
        """Every route that issues a key: create it, tell every cache, audit it."""
        record, secret = await self.store.create_key(
            tenant.id,
            prefix=self.settings.auth.key_prefix,
            tier=tier or default_tier(self.settings, tenant),
            **fields,
        )
        await self.state.keys_changed([record.id])
        self._audit(
            principal, "imported key" if fields.get("imported") else "created key", record.id
        )
        return record, secret

    async def list_keys(self, request: Request, principal: Principal) -> Response:
        ref = request.query_params.get("tenant_id")
        tenant_id = (await resolve_tenant(self.store, ref)).id if ref else None
        include_revoked = _flag(request, "include_revoked")
        records = await self.store.list_keys(tenant_id, include_revoked=include_revoked)
        return _json({"data": [_public(r) for r in records]})

    async def get_key(self, request: Request, principal: Principal) -> Response:
        return _json(_public(await self.store.get_key(_path_id(request, "key_id"))))

    async def patch_key(self, request: Request, principal: Principal) -> Response:
        key_id = _path_id(request, "key_id")
        body = await self._body(request, KeyPatch)
        current = await self.store.get_key(key_id)
        if current.revoked_at is not None:
            raise Conflict(f"Key {key_id!r} is revoked; create a new key instead.")
        changes = self._key_changes(body, current)
        if not changes:
            return _json(_public(current))
        record = await self.store.update_key(key_id, changes)
        await self.state.keys_changed([key_id])
        self._audit(principal, f"changed {', '.join(sorted(changes))} of key", key_id)
        return _json(_public(record))

    def _key_changes(self, body: KeyPatch, current: KeyRecord) -> dict[str, Any]:
        changes: dict[str, Any] = {
            field: getattr(body, field)
            for field in body.__struct_fields__
            if getattr(body, field) is not _UNSET
        }
        if "tier" in changes:
            check_tier(self.settings, changes["tier"])
        if "limits" in changes:
            changes["limits"] = limits_dict(changes["limits"])
        if "cache" in changes:
            changes["cache"] = merged_cache(current.cache, changes["cache"])
        if changes.get("expires_at") is not None:
            changes["expires_at"] = _utc(changes["expires_at"])  # may be past: expires it now
        return changes

    async def revoke_key(self, request: Request, principal: Principal) -> Response:
        key_id = _path_id(request, "key_id")
        record = await self.store.get_key(key_id)
        if record.revoked_at is None:
            record = await self.store.revoke_key(key_id)
            self._audit(principal, "revoked key", key_id)
        await self.state.keys_changed([key_id])
        return _json(_public(record))

    async def rotate_key(self, request: Request, principal: Principal) -> Response:
        key_id = _path_id(request, "key_id")
        if (await self.store.get_key(key_id)).revoked_at is not None:
            raise Conflict(f"Key {key_id!r} is revoked and cannot be rotated.")
        record, secret = await self.store.rotate_key(key_id, self.settings.auth.key_prefix)
        await self.state.keys_changed([key_id])
        self._audit(principal, "rotated key", key_id)
        return _json({"key": _public(record), "api_key": secret})

    # /admin/tenants

    async def create_tenant(self, request: Request, principal: Principal) -> Response:
        body = await self._body(request, TenantCreate)
        tier = check_tier(self.settings, body.tier) if body.tier is not None else None
        tenant = await self.store.create_tenant(body.name, tier)
        self._audit(principal, "created tenant", tenant.id)
        return _json(tenant.public(), 201)

    async def list_tenants(self, request: Request, principal: Principal) -> Response:
        return _json({"data": [t.public() for t in await self.store.list_tenants()]})

    async def get_tenant(self, request: Request, principal: Principal) -> Response:
        return _json((await self.store.get_tenant(_path_id(request, "tenant_id"))).public())

    async def patch_tenant(self, request: Request, principal: Principal) -> Response:
        tenant_id = _path_id(request, "tenant_id")
        body = await self._body(request, TenantPatch)
        changes: dict[str, Any] = {}
        if body.name is not _UNSET:
            changes["name"] = body.name
        if body.tier is not _UNSET:
            changes["tier"] = None if body.tier is None else check_tier(self.settings, body.tier)
        tenant = await self.store.update_tenant(tenant_id, changes)
        if changes:
            await self.state.keys_changed(await self._tenant_key_ids(tenant_id))
            self._audit(principal, f"changed {', '.join(sorted(changes))} of tenant", tenant_id)
        return _json(tenant.public())

    async def delete_tenant(self, request: Request, principal: Principal) -> Response:
        tenant_id = _path_id(request, "tenant_id")
        key_ids = await self._tenant_key_ids(tenant_id)
        await self.store.delete_tenant(tenant_id)
        await self.state.keys_changed(key_ids)
        self._audit(principal, "deleted tenant", tenant_id)
        return _json({"id": tenant_id, "deleted": True})

    async def _tenant_key_ids(self, tenant_id: str) -> list[str]:
        return [k.id for k in await self.store.list_keys(tenant_id, include_revoked=True)]

    # seed 001: POST /auth/create-key

    async def seed_create_key(self, request: Request, principal: Principal) -> Response:
        body = await self._body(request, SeedCreateKey)
        tier = None if body.tier is None else check_tier(self.settings, body.tier)
        tenant = await resolve_tenant(self.store, body.tenant_id, create=True)
        record, secret = await self._issue(
            principal, tenant, tier, name=body.name, description=body.description,
            expires_at=expiry(None, body.expires_in_days),
        )  # fmt: skip
        return _json({
            "api_key": secret,
            "key_id": record.id,
            "tenant_id": record.tenant_id,
            "tier": record.tier,
            "rate_limit": {"requests": self._per_hour(record), "window": 3600},
            "expires_at": _zulu(record.expires_at),
            "created_at": _zulu(record.created_at),
        })  # fmt: skip

    def _per_hour(self, record: KeyRecord) -> int | None:
        """The key's requests per hour: its own override, else its tier's."""
        own = (record.limits or {}).get("requests_per_hour")
        if own is not None:
            return own
        tier = self.settings.tiers.get(record.tier)
        return tier.requests_per_hour if tier else None

    # seed 003: /api/keys

    def _seed_key(self, record: KeyRecord) -> dict[str, Any]:
        return {
            "id": record.id,
            "key_preview": record.prefix + "...",
            "name": record.name,
            "role": record.role,
            "rate_limit": self._per_hour(record),
            "is_active": record.usable(utcnow()),
            "tier": record.tier,
            "tenant_id": record.tenant_id,
            "created_at": _zulu(record.created_at),
            "expires_at": _zulu(record.expires_at),
            "last_used_at": _zulu(record.last_used_at),
        }

    async def seed_list_keys(self, request: Request, principal: Principal) -> Response:
        if principal.is_admin:
            records = await self.store.list_keys()
        else:
            records = [r for r in [await self._own_key(principal)] if r is not None]
        keys = [self._seed_key(r) for r in records]
        return _json({"api_keys": keys, "total": len(keys)})

    async def _own_key(self, principal: Principal) -> KeyRecord | None:
        if principal.key_id is None:
            return None
        try:
            return await self.store.get_key(principal.key_id)
        except NotFound:
            return None

    async def seed_get_key(self, request: Request, principal: Principal) -> Response:
        """A user may read only its own key; any other id is 'not found', existing or not."""
        key_id = _path_id(request, "key_id")
        if not principal.is_admin and key_id != principal.key_id:
            raise NotFound(f"No key {key_id!r}.")
        record = await self.store.get_key(key_id)
        if record.revoked_at is not None:
            raise NotFound(f"No key {key_id!r}.")
        return _json(self._seed_key(record))

    async def seed_create_api_key(self, request: Request, principal: Principal) -> Response:
        body = await self._body(request, SeedApiKeyCreate)
        tier = None if body.tier is None else check_tier(self.settings, body.tier)
        tenant = await self._seed_tenant(body.tenant_id, principal)
        limits = None if body.rate_limit is None else {"requests_per_hour": body.rate_limit}
        record, secret = await self._issue(
            principal, tenant, tier, role=body.role, name=body.name,
            description=body.description, limits=limits,
            expires_at=expiry(None, body.expires_in_days),
        )  # fmt: skip
        return _json({**self._seed_key(record), "api_key": secret, "key_id": record.id})

    async def _seed_tenant(self, ref: str | None, principal: Principal) -> Tenant:
        """The named tenant (by id or name, created if new), else the caller's own."""
        if ref is not None:
            return await resolve_tenant(self.store, ref, create=True)
        if principal.tenant_id is not None:
            try:
                return await self.store.get_tenant(principal.tenant_id)
            except NotFound:
                pass  # a JWT's tenant claim need not be a stored tenant
        return await resolve_tenant(self.store, ADMIN_TENANT, create=True)

    async def seed_delete_key(self, request: Request, principal: Principal) -> Response:
        """Admin only (seed 003); a user gets 403 whatever the id, so nothing is revealed."""
        key_id = _path_id(request, "key_id")
        record = await self.store.get_key(key_id)
        if record.revoked_at is not None:
            raise NotFound(f"No key {key_id!r}.")
        await self.store.revoke_key(key_id)
        await self.state.keys_changed([key_id])
        self._audit(principal, "revoked key", key_id)
        return _json({"message": "API key revoked successfully", "id": key_id})


def build_admin_app(state: AppState) -> Starlette:
    """The Starlette app serving /admin/*, /auth/create-key and /api/keys*."""
    api, usage, nodes = AdminAPI(state), UsageAdminAPI(state), NodeTokensAdminAPI(state)
    table: dict[str, dict[str, tuple[Endpoint, bool]]] = {
        "/admin/keys": {"POST": (api.create_key, True), "GET": (api.list_keys, True)},
        # Before /admin/keys/{key_id}: "import" is no key id.
        "/admin/keys/import": {"POST": (api.import_key, True)},
        "/admin/keys/{key_id}": {
            "GET": (api.get_key, True),
            "PATCH": (api.patch_key, True),
            "DELETE": (api.revoke_key, True),
        },
        "/admin/keys/{key_id}/rotate": {"POST": (api.rotate_key, True)},
        "/admin/tenants": {"POST": (api.create_tenant, True), "GET": (api.list_tenants, True)},
        "/admin/tenants/{tenant_id}": {
            "GET": (api.get_tenant, True),
            "PATCH": (api.patch_tenant, True),
            "DELETE": (api.delete_tenant, True),
        },
        "/admin/usage": {"GET": (usage.usage, True)},
        "/admin/usage/export.csv": {"GET": (usage.export, True)},
        "/admin/usage/latency": {"GET": (usage.latency, True)},
        "/usage/requests/{request_id}": {"GET": (usage.request_record, False)},
        "/admin/cache": {"GET": (usage.cache_stats, True), "DELETE": (usage.cache_clear, True)},
        "/admin/deployments": {"GET": (DeploymentsAdminAPI(state).deployments, True)},
        "/admin/nodes": {"GET": (NodesAdminAPI(state).nodes, True)},
        "/admin/node-tokens": {"POST": (nodes.create, True), "GET": (nodes.list, True)},
        "/admin/node-tokens/{token_id}": {"DELETE": (nodes.revoke, True)},
        "/auth/create-key": {"POST": (api.seed_create_key, True)},
        "/api/keys": {"GET": (api.seed_list_keys, False), "POST": (api.seed_create_api_key, True)},
        "/api/keys/{key_id}": {
            "GET": (api.seed_get_key, False),
            "DELETE": (api.seed_delete_key, True),
        },
    }
    wrapped = {
        path: {m: api.wrap(h, admin) for m, (h, admin) in methods.items()}
        for path, methods in table.items()
    }
    return json_app(
        "admin",
        wrapped,
        "The admin API is /admin/keys, /admin/tenants, /admin/usage and /admin/cache; the "
        "seed routes are /auth/create-key and /api/keys.",
    )
