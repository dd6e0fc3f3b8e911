"""Admin routes for dial-out node tokens (admin keys only; mounted in api/admin.py).

* ``POST /admin/node-tokens`` ``{"name": "mac"}``: a token for node ``mac``; its secret
  is in this answer only (``token``), stored as a hash.
* ``GET /admin/node-tokens`` (``?all=true`` with revoked ones): never a secret; each
  with ``connected``: whether its node is connected to the answering worker now.
* ``DELETE /admin/node-tokens/{token_id}``: revoke; the node is cut off at once, here
  and (through Redis, else the database check) in every other gateway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from relaygate.api.http import decode_json_object
from relaygate.asgi import read_body
from relaygate.auth.principal import Principal
from relaygate.errors import InvalidRequest
from relaygate.settings import NODE_NAME
from relaygate.store.nodes import NodeToken, NodeTokenStore

if TYPE_CHECKING:
    from relaygate.state import AppState

__all__ = ["NodeTokenCreate", "NodeTokensAdminAPI"]


class NodeTokenCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A node token for the node of this name (1-63 letters, digits, ``.``, ``_``, ``-``)."""

    name: Annotated[str, msgspec.Meta(pattern=NODE_NAME)]


class NodeTokensAdminAPI:
    """Handlers for /admin/node-tokens (the admin app checks the admin role)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.store = NodeTokenStore(state.engine)

    async def create(self, request: Request, principal: Principal) -> Response:
        raw = await read_body(request.scope, request.receive, self.state.max_body)
        try:
            body = msgspec.convert(decode_json_object(raw), NodeTokenCreate)
        except msgspec.ValidationError as exc:
            raise _invalid(str(exc)) from None
        record, secret = await self.store.create(body.name)
        self.state.log.info("admin: %s created node token %s", principal.subject, record.id)
        return _json({**self._public(record), "token": secret}, 201)

    async def list(self, request: Request, principal: Principal) -> Response:
        everything = request.query_params.get("all", "").lower() in ("1", "true", "yes")
        records = await self.store.list(include_revoked=everything)
        return _json({"object": "list", "data": [self._public(r) for r in records]})

    async def revoke(self, request: Request, principal: Principal) -> Response:
        token_id = str(request.path_params["token_id"])
        record = await self.store.revoke(token_id)
        await self.state.hub.revoked(record.id)
        self.state.log.info("admin: %s revoked node token %s", principal.subject, record.id)
        return _json(self._public(record))

    def _public(self, record: NodeToken) -> dict[str, Any]:
        link = self.state.hub.link(record.name)
        connected = link is not None and link.token_id == record.id
        return {**record.public(), "connected": connected}


def _json(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status, media_type="application/json")


def _invalid(message: str) -> InvalidRequest:
    text, _, where = message.partition(" - at `")
    field = where.rstrip("`").removeprefix("$").removeprefix(".")
    if "unknown field" in text:
        return InvalidRequest(f"Unknown field in the body: {text.split('`')[1]!r}.")
    if "missing required field" in text:
        return InvalidRequest("Missing required field 'name'.", param="name")
    if field == "name":
        return InvalidRequest(
            "A node name is 1 to 63 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit.",
            param="name",
        )
    return InvalidRequest(f"Invalid request: {text}.", param=field or None)
