"""The small Starlette apps that serve relaygate's JSON APIs (admin, BYOK): routes with
all their methods, and errors, Starlette's own included, in the path's error shape."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relaygate.api.shapes import error_renderer_for, internal_error
from relaygate.asgi import new_request_id
from relaygate.errors import InvalidRequest, MethodNotAllowed, NotFound, RelaygateError

__all__ = ["Handler", "error_response", "json_app"]

Handler = Callable[[Request], Awaitable[Response]]


def error_response(error: RelaygateError, request_id: str, path: str) -> Response:
    """An error in the shape of the API ``path`` belongs to (OpenAI's for these APIs)."""
    body, content_type = error_renderer_for(path)(error)
    response = Response(body, error.status, media_type=content_type.decode())
    for name, value in error.headers():
        response.headers[name.decode("latin-1")] = value.decode("latin-1")
    response.headers["x-request-id"] = request_id
    return response


def json_app(name: str, table: Mapping[str, Mapping[str, Handler]], unknown: str) -> Starlette:
    """One route per path with all its methods (a wrong method is a 405, not a 404);
    ``unknown`` follows "Unknown endpoint METHOD PATH." in a 404; ``name`` is the log's."""

    async def server_error(request: Request, exc: Exception) -> Response:
        """Anything that escaped a handler: a 500 in the path's shape, never plain text."""
        request_id = new_request_id()
        logging.getLogger("relaygate").error(
            "%s request %s failed", name, request_id, exc_info=(type(exc), exc, exc.__traceback__)
        )
        return error_response(internal_error(request_id), request_id, request.url.path)

    async def http_error(request: Request, exc: Exception) -> Response:
        """Starlette's own 404 and 405, in the path's shape."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        error: RelaygateError
        if status == 405:
            headers = exc.headers if isinstance(exc, HTTPException) and exc.headers else {}
            allow = headers.get("Allow", "")
            error = MethodNotAllowed(
                f"Method {request.method} is not allowed on {request.url.path}; "
                f"use {allow or 'another method'}.",
                allow=tuple(m.strip() for m in allow.split(",") if m.strip()),
            )
        elif status == 404:
            error = NotFound(f"Unknown endpoint {request.method} {request.url.path}. {unknown}")
        else:
            error = InvalidRequest(str(getattr(exc, "detail", "Bad request.")))
            error.status = status
        return error_response(error, new_request_id(), request.url.path)

    routes = [
        Route(path, _dispatch(dict(methods)), methods=list(methods))
        for path, methods in table.items()
    ]
    return Starlette(
        routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error}
    )


def _dispatch(methods: dict[str, Handler]) -> Handler:
    async def endpoint(request: Request) -> Response:
        handler = methods.get(request.method) or methods.get("GET")  # HEAD: GET, no body
        if handler is None:
            raise HTTPException(405, headers={"Allow": ", ".join(sorted(methods))})
        return await handler(request)

    return endpoint
