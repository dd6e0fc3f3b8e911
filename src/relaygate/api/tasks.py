"""The seeds' own endpoints, kept working: GET /usage and GET /ai/models (seed 001),
GET /api/stats (seed 003)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from relaygate.api.http import send_error
from relaygate.api.shapes import error_renderer_for, internal_error
from relaygate.asgi import Receive, Scope, Send, new_request_id, send_bytes
from relaygate.errors import InvalidRequest, RelaygateError, StoreUnavailable
from relaygate.usage.analytics import key_stats

if TYPE_CHECKING:
    from relaygate.state import AppState

__all__ = ["TasksAPI"]


class TasksAPI:
    """Seed-compatible routes."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def usage(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The caller's limits: seed 001's hourly figures, then every limit by name.

        ``{"requests_used", "requests_limit", "requests_remaining", "window_reset",
        "tier", "requests_per_month": {...}, "tokens_per_minute": {...}, ...}``
        """
        request_id = new_request_id()
        try:
            principal = await self.state.auth.authenticate(scope)
            report = await self.state.admission.report(principal)
            body = msgspec.json.encode(report)
        except RelaygateError as exc:
            await self._error(scope, send, exc, request_id)
            return
        except Exception:
            self.state.log.exception("GET /usage failed (%s)", request_id)
            await self._error(scope, send, internal_error(request_id), request_id)
            return
        await send_bytes(send, 200, body, request_id)

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /ai/models (seed 001): the models the caller's key may use,
        ``{"models": [{"name", "size", "family", "modified_at"}]}``. The gateway does
        not know a model's size or family: both are null."""
        request_id = new_request_id()
        try:
            principal = await self.state.auth.authenticate(scope)
        except RelaygateError as exc:
            await self._error(scope, send, exc, request_id)
            return
        models = [
            {
                "name": model.name,
                "size": None,
                "family": None,
                "modified_at": datetime.fromtimestamp(model.created, UTC).isoformat(),
            }
            for model in self.state.models_for(principal)
        ]
        await send_bytes(send, 200, msgspec.json.encode({"models": models}), request_id)

    async def stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /api/stats (seed 003): the calling key's requests, tokens and average
        response time, in total and by model."""
        request_id = new_request_id()
        try:
            principal = await self.state.auth.authenticate(scope)
            if principal.key_id is None:
                raise InvalidRequest("Statistics are kept per API key; send one.")
            stats = await key_stats(self.state.engine, principal.key_id)
            body = msgspec.json.encode(stats)
        except RelaygateError as exc:
            await self._error(scope, send, exc, request_id)
            return
        except (SQLAlchemyError, OSError, TimeoutError):
            error = StoreUnavailable("Usage statistics are unavailable now; retry shortly.")
            await self._error(scope, send, error, request_id)
            return
        except Exception:
            self.state.log.exception("GET /api/stats failed (%s)", request_id)
            await self._error(scope, send, internal_error(request_id), request_id)
            return
        await send_bytes(send, 200, body, request_id)

    @staticmethod
    async def _error(scope: Scope, send: Send, error: RelaygateError, request_id: str) -> None:
        await send_error(send, error, request_id, error_renderer_for(scope["path"]))
