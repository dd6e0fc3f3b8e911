"""Seed 004's provider-key routes: users' own provider keys and provider configurations.

* ``POST /api/ai/api-keys`` ``{provider, key_name, api_key}`` (optional ``expires_at`` /
  ``expires_in_days``, ``shared`` for a tenant admin, ``check`` for one cheap call to
  the provider); ``GET /api/ai/api-keys`` (masked: ``sk-...xyz123``, never the secret,
  not even to admins); ``DELETE /api/ai/api-keys/{api_key_id}``.
* ``POST /api/ai/provider-config`` (seed 004's web client) and
  ``POST /api/ai/provider-configs`` (its iOS client) ``{provider_type, api_key_id,
  config: {model, temperature, max_tokens}, is_default}``; ``GET``, ``PATCH`` and
  ``DELETE /api/ai/provider-configs[/{config_id}]``.

Every route acts for the caller's owner (its user, else its key; see
``Principal.owner``) within its tenant: another owner's id answers 404, exactly as
an id that does not exist. Errors are in OpenAI's shape, as for seed 003's /api/keys.
Each change reloads this worker's vault index at once; other workers hear of it through
Redis when configured, else within ``byok.poll_interval``.
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

from relaygate.api.http import decode_json_object
from relaygate.api.shapes import internal_error
from relaygate.api.subapp import error_response as _error
from relaygate.api.subapp import json_app
from relaygate.asgi import ClientGone, new_request_id, read_body
from relaygate.auth.principal import Principal
from relaygate.digits import whole_number
from relaygate.errors import (
    AuthenticationError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RelaygateError,
    StoreUnavailable,
)
from relaygate.net.ssrf import UrlNotAllowed
from relaygate.vault.crypto import mask
from relaygate.vault.selection import KEYLESS_TYPES, URL_TYPES
from relaygate.vault.service import owner_of
from relaygate.vault.store import ConfigRow, Owner, utcnow

if TYPE_CHECKING:
    from relaygate.state import AppState

__all__ = [
    "ApiKeyCreate",
    "ProviderConfigCreate",
    "ProviderConfigPatch",
    "ProviderSettings",
    "build_byok_app",
]

PREFIX = "/api/ai/"
_UNSET = msgspec.UNSET
Unset = msgspec.UnsetType
ProviderType = Literal["openai", "gemini", "anthropic", "openwebui", "ollama", "openai-compatible"]
KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
# What a provider key can be: visible ASCII (it travels in a header), long enough to be
# scrubbed from any text an upstream echoes it in.
ProviderSecret = Annotated[
    str, msgspec.Meta(min_length=8, max_length=512, pattern=r"^[\x21-\x7e]+$")
]
Days = Annotated[int, msgspec.Meta(ge=1, le=36_500)]
ModelId = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f]+$")]
Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
MaxTokens = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
BaseUrl = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
SecretId = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
S = TypeVar("S", bound="_Body")


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: unknown fields are errors that name the field."""


class ApiKeyCreate(_Body):
    """``POST /api/ai/api-keys``: a provider key, stored encrypted, shown masked."""

    provider: ProviderType
    key_name: KeyName
    api_key: ProviderSecret
    expires_at: datetime | None = None
    expires_in_days: Days | None = None
    shared: bool = False  # a tenant admin's key every user of the tenant may use
    check: bool = False  # one cheap call to the provider (its model list), reported


class ProviderSettings(_Body):
    """A configuration's ``config``: the model and the defaults a request may override."""

    model: ModelId | None = None
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None


class ProviderConfigCreate(_Body):
    """``POST /api/ai/provider-config(s)``."""

    provider_type: ProviderType
    api_key_id: SecretId | None = None
    base_url: BaseUrl | None = None  # ollama, openwebui, openai-compatible only
    config: ProviderSettings = msgspec.field(default_factory=ProviderSettings)
    is_default: bool = False
    is_active: bool = True


class ProviderConfigPatch(_Body):
    """``PATCH /api/ai/provider-configs/{id}``: fields left out keep their value."""

    api_key_id: SecretId | Unset | None = _UNSET
    base_url: BaseUrl | Unset | None = _UNSET
    config: ProviderSettings | Unset = _UNSET
    is_default: bool | Unset = _UNSET
    is_active: bool | Unset = _UNSET


def _invalid(message: str) -> InvalidRequest:
    """msgspec's ``... - at `$.config.model``` as a 400 that names the field."""
    text, _, where = message.partition(" - at `")
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    named = text.split("`")[1] if text.count("`") >= 2 else ""
    if "unknown field" in text or "missing required field" in text:
        param = f"{path}.{named}" if path else named
        what = "Unknown" if "unknown" in text else "Missing required"
        return InvalidRequest(f"{what} field {param!r}.", param=param)
    if path:
        return InvalidRequest(f"Invalid value for {path!r}: {text}.", param=path)
    return InvalidRequest(f"Invalid request: {text}.")


def _parse(body: bytes, schema: type[S]) -> S:
    data = decode_json_object(body)
    try:
        value = msgspec.convert(data, schema)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from None
    for field in value.__struct_fields__:
        item = getattr(value, field)
        if isinstance(item, str) and "\x00" in item:
            raise InvalidRequest(f"{field} must not contain NUL characters.", param=field)
    return value


def _json(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status, media_type="application/json")


def _path_id(request: Request, name: str, what: str) -> int:
    """An id from the path; anything but a plain number is simply not found."""
    raw: str = request.path_params[name]
    found = whole_number(raw, max_digits=10)
    if found is None or found > 2**31 - 1:
        raise NotFound(f"No {what} {raw[:40]!r}.")
    return found


def _expiry(at: datetime | None, in_days: int | None) -> datetime | None:
    now = utcnow()
    if at is not None and in_days is not None:
        raise InvalidRequest(
            "Give expires_at or expires_in_days, not both.", param="expires_in_days"
        )
    if in_days is not None:
        return now + timedelta(days=in_days)
    if at is None:
        return None
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    if at <= now:
        raise InvalidRequest(f"expires_at {at.isoformat()} is in the past.", param="expires_at")
    return at


Endpoint = Callable[[Request, Principal, Owner], Awaitable[Response]]


class ByokAPI:
    """The routes; each gets the caller's Principal and the owner it acts as."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.vault = state.vault
        self.store = state.vault.store

    def wrap(self, handler: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            request_id, path = new_request_id(), request.url.path
            try:
                principal = await self.state.auth.authenticate(request.scope)
                who = owner_of(principal)
                if who is None:
                    raise AuthenticationError(
                        "Provider keys belong to a user: send an API key or a JWT."
                    )
                response = await handler(request, principal, who)
            except RelaygateError as error:
                return _error(error, request_id, path)
            except ClientGone:
                return _error(InvalidRequest("The client closed the connection."), request_id, path)
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                self.state.log.warning("byok %s: store failed: %s", request_id, type(exc).__name__)
                unavailable = StoreUnavailable("The key store could not answer; retry shortly.")
                return _error(unavailable, request_id, path)
            except Exception:
                self.state.log.exception("byok request %s failed", request_id)
                return _error(internal_error(request_id), request_id, path)
            response.headers["x-request-id"] = request_id
            return response

        return endpoint

    async def _body(self, request: Request, schema: type[S]) -> S:
        body = await read_body(request.scope, request.receive, self.state.max_body)
        return _parse(body, schema)

    # /api/ai/api-keys

    async def add_key(self, request: Request, principal: Principal, who: Owner) -> Response:
        body = await self._body(request, ApiKeyCreate)
        box = self.vault.box
        if box is None:
            raise StoreUnavailable(
                "This gateway has no secret key (RELAYGATE_SECRET_KEY), so it does not "
                "store provider keys; ask its operator (docs/byok.md)."
            )
        if body.shared and not principal.is_admin:
            raise PermissionDenied("Only a tenant admin may store a key shared by the tenant.")
        expires_at = _expiry(body.expires_at, body.expires_in_days)
        check = None
        if body.check and body.provider in URL_TYPES:  # its server is not known yet
            check = {"ok": None, "skipped": "a self-hosted provider's key is not checked here"}
        elif body.check:
            check = await self.vault.check(body.provider, None, body.api_key)
        row = await self.store.add_secret(
            who, shared=body.shared, provider=body.provider, key_name=body.key_name,
            masked=mask(body.api_key), ciphertext=box.encrypt(body.api_key),
            key_fingerprint=box.newest, expires_at=expires_at,
        )  # fmt: skip
        await self.vault.changed()
        self.state.log.info("byok: %s stored provider key %d", principal.subject, row.id)
        answer = row.public(utcnow())
        if check is not None:
            answer["check"] = check
        return _json(answer, 201)

    async def list_keys(self, request: Request, principal: Principal, who: Owner) -> Response:
        now = utcnow()
        return _json([row.public(now) for row in await self.store.list_secrets(who)])

    async def delete_key(self, request: Request, principal: Principal, who: Owner) -> Response:
        key_id = _path_id(request, "api_key_id", "API key")
        await self.store.delete_secret(who, key_id, tenant_admin=principal.is_admin)
        await self.vault.changed()
        self.state.log.info("byok: %s deleted provider key %d", principal.subject, key_id)
        return _json({"id": key_id, "deleted": True})

    # /api/ai/provider-configs

    async def add_config(self, request: Request, principal: Principal, who: Owner) -> Response:
        body = await self._body(request, ProviderConfigCreate)
        base_url = await self._checked(
            body.provider_type, body.api_key_id, body.base_url, body.config, who
        )
        row = await self.store.add_config(
            who, provider_type=body.provider_type, api_key_id=body.api_key_id,
            base_url=base_url, config=_settings(body.config), is_default=body.is_default,
            is_active=body.is_active,
        )  # fmt: skip
        await self.vault.changed()
        return _json(row.public(), 201)

    async def list_configs(self, request: Request, principal: Principal, who: Owner) -> Response:
        return _json([row.public() for row in await self.store.list_configs(who)])

    async def get_config(self, request: Request, principal: Principal, who: Owner) -> Response:
        config_id = _path_id(request, "config_id", "provider configuration")
        return _json((await self.store.get_config(who, config_id)).public())

    async def patch_config(self, request: Request, principal: Principal, who: Owner) -> Response:
        config_id = _path_id(request, "config_id", "provider configuration")
        body = await self._body(request, ProviderConfigPatch)
        current = await self.store.get_config(who, config_id)
        changes: dict[str, Any] = {
            f: getattr(body, f) for f in body.__struct_fields__ if getattr(body, f) is not _UNSET
        }
        if not changes:
            return _json(current.public())
        merged = _merged(current, changes)
        changes["base_url"] = await self._checked(
            current.provider_type, merged["api_key_id"], merged["base_url"], merged["config"], who
        )
        if "config" in changes:
            changes["config"] = _settings(changes["config"])
        row = await self.store.update_config(who, config_id, changes)
        await self.vault.changed()
        return _json(row.public())

    async def delete_config(self, request: Request, principal: Principal, who: Owner) -> Response:
        config_id = _path_id(request, "config_id", "provider configuration")
        await self.store.delete_config(who, config_id)
        await self.vault.changed()
        return _json({"id": config_id, "deleted": True})

    async def _checked(
        self,
        provider_type: str,
        api_key_id: int | None,
        base_url: str | None,
        settings: ProviderSettings,
        who: Owner,
    ) -> str | None:
        """A configuration's key and base URL, checked: the key is the caller's (or its
        tenant's) and for this provider; a user's base URL passes the SSRF policy."""
        if api_key_id is not None:
            secret = await self.store.get_secret(who, api_key_id)  # another's: 404
            if secret.provider != provider_type:
                raise InvalidRequest(
                    f"API key {api_key_id} is a {secret.provider} key, not a {provider_type} one.",
                    param="api_key_id",
                )
        elif provider_type not in KEYLESS_TYPES:
            raise InvalidRequest(
                f"A {provider_type} configuration needs api_key_id: add the key with "
                "POST /api/ai/api-keys first.",
                param="api_key_id",
            )
        if provider_type not in URL_TYPES:
            if base_url is not None:
                raise InvalidRequest(
                    f"base_url is not taken for {provider_type}: the gateway's operator sets "
                    "where cloud providers are called.",
                    param="base_url",
                )
            return None
        if base_url is None:
            raise InvalidRequest(
                f"A {provider_type} configuration needs base_url (your server's URL).",
                param="base_url",
            )
        if settings.model is None:
            raise InvalidRequest(
                f"A {provider_type} configuration needs config.model (a model your server serves).",
                param="config.model",
            )
        try:
            return await self.vault.policy.check_url(base_url)
        except UrlNotAllowed as exc:
            raise InvalidRequest(str(exc), param="base_url") from None


def _settings(settings: ProviderSettings) -> dict[str, Any]:
    return {k: v for k, v in msgspec.structs.asdict(settings).items() if v is not None}


def _merged(current: ConfigRow, changes: dict[str, Any]) -> dict[str, Any]:
    config = changes.get("config")
    return {
        "api_key_id": changes.get("api_key_id", current.api_key_id),
        "base_url": changes.get("base_url", current.base_url),
        "config": config if config is not None else msgspec.convert(
            current.config, ProviderSettings
        ),
    }  # fmt: skip


def build_byok_app(state: AppState) -> Starlette:
    """The Starlette app serving /api/ai/*."""
    api = ByokAPI(state)
    table: dict[str, dict[str, Endpoint]] = {
        "/api/ai/api-keys": {"POST": api.add_key, "GET": api.list_keys},
        "/api/ai/api-keys/{api_key_id}": {"DELETE": api.delete_key},
        "/api/ai/provider-config": {"POST": api.add_config},  # seed 004's web client
        "/api/ai/provider-configs": {"POST": api.add_config, "GET": api.list_configs},
        "/api/ai/provider-configs/{config_id}": {
            "GET": api.get_config, "PATCH": api.patch_config, "DELETE": api.delete_config,
        },
    }  # fmt: skip
    wrapped = {
        path: {m: api.wrap(h) for m, h in methods.items()} for path, methods in table.items()
    }
    return json_app(
        "byok",
        wrapped,
        "Provider keys are /api/ai/api-keys; provider configurations /api/ai/provider-configs.",
    )
