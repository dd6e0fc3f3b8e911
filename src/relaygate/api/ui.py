"""The web UI: the built single-page app (``web/``) served at ``/ui`` from the package.

The files were built by Vite into ``relaygate/ui/site`` and ship in the wheel, so an
installed relaygate serves the UI without Node. Hashed assets (``/ui/assets/*``) are
cached for a year; ``index.html`` is revalidated each time, and answers every client
route (``/ui/keys``, ``/ui/playground``...) so a reload or a shared link works. A path
that names a missing file (it has a dot in its last segment) is a 404, not the page.

``GET /`` is Ollama's liveness probe ("Ollama is running"); a browser (an Accept
header naming text/html) is sent to the UI instead.

The page needs no key to load: it holds nothing privileged, and talks to the public
and admin APIs with the key the user types, as any client does. ``/ui/config.json`` tells
it what it cannot know: whether an OpenID Connect provider signs users in (``ui.oidc``:
public values only, a public client has no secret).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from importlib import resources
from importlib.resources.abc import Traversable
from urllib.parse import urlsplit

import msgspec

from relaygate.asgi import Receive, Scope, Send, new_request_id, send_bytes
from relaygate.settings import OIDCConfig

__all__ = ["MEDIA_TYPES", "UI_PATH", "WebUI", "wants_html"]

UI_PATH = "/ui"
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

_TYPES = {
    "html": b"text/html; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "mjs": b"text/javascript; charset=utf-8",
    "css": b"text/css; charset=utf-8",
    "svg": b"image/svg+xml",
    "png": b"image/png",
    "ico": b"image/x-icon",
    "json": b"application/json",
    "txt": b"text/plain; charset=utf-8",
    "woff2": b"font/woff2",
    "map": b"application/json",
}
# What the UI's files are served as, for the OpenAPI document.
MEDIA_TYPES = tuple(
    sorted({t.decode().split(";")[0] for t in (*_TYPES.values(), b"application/octet-stream")})
)
_IMMUTABLE = (b"cache-control", b"public, max-age=31536000, immutable")
_REVALIDATE = (b"cache-control", b"no-cache")
CONFIG_FILE = "config.json"


def security_headers(oidc: OIDCConfig | None) -> list[tuple[bytes, bytes]]:
    """The page runs only its own code and talks only to this gateway (and to the
    identity provider's token endpoint, when one is configured): a script injected
    through a model's answer could read the key in local storage, so none may run."""
    connect = "'self'"
    if oidc is not None:
        parts = urlsplit(oidc.token_endpoint)
        connect += f" {parts.scheme}://{parts.netloc}"
    policy = (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        f"img-src 'self' data:; connect-src {connect}; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'none'"
    )
    return [
        (b"content-security-policy", policy.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
    ]


PREVIEW_FILE = "preview.html"


def preview_headers() -> list[tuple[bytes, bytes]]:
    """The builder's preview frame runs generated code: inline scripts and styles, in a
    sandboxed frame of this page only (an opaque origin), reaching nothing on the network."""
    policy = (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src data: blob:; font-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'self'; sandbox allow-scripts"
    )
    return [
        (b"content-security-policy", policy.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]


def public_config(oidc: OIDCConfig | None) -> bytes:
    """``/ui/config.json``: what the page needs to offer a sign-in through ``ui.oidc``."""
    if oidc is None:
        return msgspec.json.encode({"oidc": None})
    fields = ("authorization_endpoint", "token_endpoint", "client_id", "scopes", "token", "label")
    return msgspec.json.encode({"oidc": {name: getattr(oidc, name) for name in fields}})


_MISSING = (
    b"<!doctype html><meta charset=utf-8><title>relaygate UI not built</title>"
    b"<p>This relaygate has no built web UI. Build it from a source checkout with "
    b"<code>make ui</code> (needs Node 20), or install a released package.</p>"
)


def site_root() -> Traversable:
    """Where the built UI lies inside the package."""
    return resources.files("relaygate").joinpath("ui", "site")


def wants_html(scope: Scope) -> bool:
    """A browser asking for a page (its Accept header names text/html)."""
    for name, value in scope.get("headers", ()):
        if name == b"accept":
            return b"text/html" in value.lower()
    return False


def _content_type(name: str) -> bytes:
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return _TYPES.get(suffix, b"application/octet-stream")


def _list_files(root: Traversable, prefix: str = "") -> set[str]:
    names: set[str] = set()
    if not root.is_dir():
        return names
    for entry in root.iterdir():
        name = prefix + entry.name
        if entry.is_dir():
            names |= _list_files(entry, name + "/")
        else:
            names.add(name)
    return names


class WebUI:
    """Serves ``/ui`` (the page) and ``/ui/<file or client route>``.

    ``mount`` is the path prefix a deployment serves relaygate under
    (``settings.paths.prefix``): the page's absolute ``/ui/`` URLs are rewritten to it.
    """

    def __init__(
        self, root: Traversable | None = None, mount: str = "", oidc: OIDCConfig | None = None
    ) -> None:
        self.root = root if root is not None else site_root()
        self.mount = mount.rstrip("/")
        self.security = security_headers(oidc)
        self.config = public_config(oidc)
        self._files: set[str] | None = None  # listed on first use, off the event loop
        self._cache: dict[str, bytes] = {}

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {UI_PATH: {"GET": self.serve}, UI_PATH + "/": {"GET": self.serve}}

    def root_handler(self, ollama_root: Handler) -> Handler:
        """``GET /``: Ollama's answer, or a redirect to the UI for a browser."""

        async def root(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["method"] == "GET" and wants_html(scope):
                location = (self.mount + UI_PATH + "/").encode()
                headers = [(b"location", location), _REVALIDATE]
                await send_bytes(send, 302, b"", new_request_id(), b"text/plain", headers)
                return
            await ollama_root(scope, receive, send)

        return root

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope["path"][len(UI_PATH) :].lstrip("/")
        request_id = new_request_id()
        if self._files is None:
            self._files = await asyncio.to_thread(_list_files, self.root)
        files = self._files
        if name == CONFIG_FILE:
            extra = [_REVALIDATE, *self.security]
            await send_bytes(send, 200, self.config, request_id, _TYPES["json"], extra)
            return
        if name in files and name != "index.html":
            body = await self._read(name)
            cache = _IMMUTABLE if name.startswith("assets/") else _REVALIDATE
            security = preview_headers() if name == PREVIEW_FILE else self.security
            extra = [cache, *security]
            await send_bytes(send, 200, body, request_id, _content_type(name), extra)
            return
        last = name.rsplit("/", 1)[-1]
        if ("." in last and name != "index.html") or ".." in name.split("/"):
            body = b"Not found: no such file in the web UI."
            await send_bytes(send, 404, body, request_id, _TYPES["txt"], [_REVALIDATE])
            return
        if "index.html" not in files:
            await send_bytes(send, 503, _MISSING, request_id, _TYPES["html"], [_REVALIDATE])
            return
        page = await self._read("index.html")
        extra = [_REVALIDATE, *self.security]
        await send_bytes(send, 200, page, request_id, _TYPES["html"], extra)

    async def _read(self, name: str) -> bytes:
        body = self._cache.get(name)
        if body is None:  # read once, off the event loop
            body = await asyncio.to_thread(self._load, name)
            self._cache[name] = body
        return body

    def _load(self, name: str) -> bytes:
        node = self.root
        for part in name.split("/"):
            node = node.joinpath(part)
        body = node.read_bytes()
        if self.mount and name == "index.html":
            body = body.replace(b'"/ui/', b'"' + self.mount.encode() + b"/ui/")
        return body
