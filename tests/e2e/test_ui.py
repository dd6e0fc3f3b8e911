"""The web UI end to end, in real Chromium (Debian's package), against a real relaygate
with the development model: sign in, create a key, chat with streaming, stop a reply,
watch usage reach the dashboard, revoke the key and see the page say so; keyboard use,
phone width, API calls per page. The browser is driven by web/e2e/run.mjs (Playwright's
library); screenshots go to build/screenshots.

Needs Node 20, web/node_modules (npm ci) and /usr/bin/chromium: `make test` installs
them and sets REQUIRE_E2E=1, which turns a missing one into a failure, not a skip.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

import jwt
import pytest
from aiohttp import web
from cryptography.fernet import Fernet

from tests.gateway import make_settings, running_gateway

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
SHOTS = ROOT / "build" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
MODELS = [
    {"name": "mock", "deployments": [{"provider": "mock", "chunk_delay": 0.01}]},
    {"name": "mock-slow", "deployments": [{"provider": "mock", "chunk_delay": 0.5}]},
]


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (WEB / "node_modules" / "playwright-core").is_dir():
        return "web/node_modules is missing (cd web && npm ci)"
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


@pytest.mark.timeout(240)
async def test_the_ui_end_to_end_in_chromium() -> None:
    missing = _missing()
    if missing:
        if os.environ.get("REQUIRE_E2E") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    settings = make_settings(
        MODELS,
        usage={"fsync_window": 0.05, "write_interval": 0.05},
        secret_key=Fernet.generate_key().decode(),  # users' provider keys (BYOK) are on
    )
    async with running_gateway(settings) as gateway:
        process = await asyncio.create_subprocess_exec(
            "node", "e2e/run.mjs", gateway.url, gateway.admin_key, str(SHOTS),
            cwd=WEB, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), 220)
    text = output.decode(errors="replace")
    print(text)
    assert process.returncode == 0, text
    shots = sorted(p.name for p in SHOTS.glob("*.png"))
    for page in (
        "sign-in",
        "keys",
        "playground",
        "account",
        "overview",
        "models",
        "usage",
        "revoked",
    ):
        assert {f"{page}-desktop.png", f"{page}-phone.png"} <= set(shots), page


SSO_SECRET = "an-identity-provider-secret-of-32-bytes!"
CLIENT_ID = "relaygate-ui"


@asynccontextmanager
async def identity_provider() -> AsyncIterator[str]:
    """A fake OpenID Connect provider: /authorize sends the user straight back with a
    code, /token checks the PKCE verifier and answers an HS256 id_token (role admin)."""
    challenges: dict[str, tuple[str, str]] = {}

    async def authorize(request: web.Request) -> web.Response:
        q = request.query
        assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID
        assert q["code_challenge_method"] == "S256"
        code = secrets.token_urlsafe(8)
        challenges[code] = (q["code_challenge"], q["redirect_uri"])
        location = f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}"
        raise web.HTTPFound(location)

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        cors = {"Access-Control-Allow-Origin": "*"}
        challenge, redirect = challenges.pop(str(form["code"]), ("", ""))
        verifier = str(form["code_verifier"]).encode()
        expected = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
        if not challenge or expected.decode() != challenge or form["redirect_uri"] != redirect:
            return web.json_response({"error": "invalid_grant"}, status=400, headers=cors)
        claims = {"sub": "alice", "role": "admin", "tenant": "sso", "aud": CLIENT_ID,
                  "iss": "fake-idp", "exp": int(time.time()) + 600}  # fmt: skip
        id_token = jwt.encode(claims, SSO_SECRET, algorithm="HS256")
        return web.json_response({"id_token": id_token, "token_type": "Bearer"}, headers=cors)

    app = web.Application()
    app.router.add_get("/authorize", authorize)
    app.router.add_post("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.timeout(120)
async def test_oidc_sign_in_in_chromium() -> None:
    missing = _missing()
    if missing:
        if os.environ.get("REQUIRE_E2E") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    async with identity_provider() as idp:
        auth = {"jwt": {"secret": SSO_SECRET, "issuer": "fake-idp", "audience": CLIENT_ID}}
        oidc = {"authorization_endpoint": f"{idp}/authorize", "token_endpoint": f"{idp}/token",
                "client_id": CLIENT_ID}  # fmt: skip
        settings = make_settings(MODELS, auth=auth, ui={"oidc": oidc})
        async with running_gateway(settings) as gateway:
            process = await asyncio.create_subprocess_exec(
                "node", "e2e/run.mjs", gateway.url, "", str(SHOTS), "oidc",
                cwd=WEB, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            output, _ = await asyncio.wait_for(process.communicate(), 100)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert (SHOTS / "sign-in-sso-desktop.png").exists()
