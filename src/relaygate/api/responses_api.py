"""The OpenAI Responses API's routes: POST /v1/responses, GET and DELETE /v1/responses/{id}.

:class:`ResponsesFormat` is the wire format the pipeline is given for
``POST /v1/responses`` (the translation is in ``responses.py`` and
``responses_stream.py``). It uses the pipeline's optional hooks: ``prepare``
puts the stored conversation of ``previous_response_id`` before the input
(before the cache key and admission, since it changes the prompt),
``completed`` stores the answer in the background once it has been sent, and
``stream_error`` ends a failed stream with ``error`` and ``response.failed``
events numbered after those already sent. :class:`StoredResponses` answers
``GET`` and ``DELETE /v1/responses/{id}``. Everything is scoped to the
caller's owner (``responses.owner``: its tenant): another tenant's response is
a 404, exactly as one that does not exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from relaygate.api import responses
from relaygate.api.http import send_error
from relaygate.api.responses_stream import ResponsesStream
from relaygate.asgi import Receive, Scope, Send, new_request_id, send_bytes
from relaygate.errors import RelaygateError, StoreUnavailable
from relaygate.schema.requests import Call, Kind

if TYPE_CHECKING:
    from relaygate.auth.principal import Principal
    from relaygate.state import AppState

__all__ = ["RESPONSE_PREFIX", "ResponsesFormat", "StoredResponses"]

JSON = dict[str, Any]
RESPONSE_PREFIX = "/v1/responses/"
_UNAVAILABLE = "The response store could not answer; retry shortly."


class ResponsesFormat:
    """The Responses API's wire format: Response objects, typed stream events, OpenAI's errors."""

    name = "responses"
    json_type_required = True
    stream_headers = responses.STREAM_HEADERS

    def __init__(self, state: AppState) -> None:
        self.keeper = state.responses
        self.config = state.settings.responses

    def parse(self, kind: Kind, body: bytes, request_id: str) -> Call:
        return responses.parse(body, request_id)

    def render(self, call: Call, body: JSON, provider: str | None, cached: bool) -> bytes:
        return responses.render(call, body)

    def event(self, call: Call, chunk: JSON) -> bytes | None:
        return ResponsesStream.of(call).event(chunk) or None  # reads the chunk, never changes it

    def replayed(self, call: Call, chunk: JSON) -> bytes | None:
        return ResponsesStream.of(call).event(chunk) or None

    def end(self, call: Call, provider: str | None, cached: bool) -> bytes:
        return ResponsesStream.of(call).end()

    def error(self, error: RelaygateError) -> bytes:
        return responses.error_body(error)

    def error_event(self, error: RelaygateError) -> bytes:
        """Unused while ``stream_error`` exists (the pipeline prefers it); kept for the Protocol."""
        event = {"type": "error", "code": error.code or error.type, "message": error.message}
        return responses.sse({**event, "param": error.param})

    # -- the pipeline's optional hooks ----------------------------------------

    async def prepare(self, call: Call, principal: Principal) -> None:
        """The stored conversation this request continues, before its input."""
        previous = responses.previous_response_id(call)
        if previous is None:
            return
        owner = responses.owner(principal)
        try:
            await self.keeper.saved(previous, owner)  # this worker may still be saving it
            history = await self.keeper.store.chain(previous, owner)
            if history is None:  # another worker may be saving it right now: look once more
                await self.keeper.settle()
                history = await self.keeper.store.chain(previous, owner)
        except (SQLAlchemyError, OSError, TimeoutError):
            raise StoreUnavailable(_UNAVAILABLE) from None
        if history is None:
            raise responses.previous_not_found(previous)
        responses.with_history(call, history)

    def completed(self, call: Call, principal: Principal) -> None:
        """Store the answer just sent (unless ``store: false`` or storage is off)."""
        record = responses.record(
            call,
            principal,
            retention_days=self.config.retention_days,
            enabled=self.config.store,
        )
        if record is not None:
            self.keeper.save(record)

    def stream_error(self, call: Call, error: RelaygateError) -> bytes:
        return ResponsesStream.of(call).error_event(error)


class StoredResponses:
    """GET and DELETE /v1/responses/{id}: the caller's tenant's stored responses."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def get(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._answer(scope, send, delete=False)

    async def delete(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._answer(scope, send, delete=True)

    async def _answer(self, scope: Scope, send: Send, *, delete: bool) -> None:
        request_id = new_request_id()
        response_id = scope["path"][len(RESPONSE_PREFIX) :]
        try:
            principal = await self.state.auth.authenticate(scope)
            body = await self._find(response_id, responses.owner(principal), delete)
        except RelaygateError as exc:
            await send_error(send, exc, request_id)
            return
        await send_bytes(send, 200, body, request_id)

    async def _find(self, response_id: str, owner: str, delete: bool) -> bytes:
        keeper = self.state.responses
        try:
            await keeper.saved(response_id, owner)  # this worker may still be saving it
            found = await self._look(response_id, owner, delete)
            if found is None:  # another worker may be saving it right now: look once more
                await keeper.settle()
                found = await self._look(response_id, owner, delete)
        except (SQLAlchemyError, OSError, TimeoutError):
            raise StoreUnavailable(_UNAVAILABLE) from None
        if found is None:
            raise responses.not_found(response_id)
        return found

    async def _look(self, response_id: str, owner: str, delete: bool) -> bytes | None:
        """The answer's body, or None when the owner has no such response."""
        store = self.state.responses.store
        if delete:
            deleted = await store.delete(response_id, owner)
            return responses.deleted_body(response_id) if deleted else None
        record = await store.get(response_id, owner)
        return None if record is None else responses.stored_body(record)
