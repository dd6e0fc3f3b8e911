"""The web UI end to end, in real Chromium (Debian's package), against a real relaygate
with the development model: sign in, create a key, chat with streaming, stop a reply,
watch usage reach the dashboard, revoke the key and see the page say so; keyboard use,
phone width, API calls per page. The browser is driven by web/e2e/run.mjs (Playwright's
library); screenshots go to build/screenshots.

Needs Node 20, web/node_modules (npm ci) and /usr/bin/chromium: `make test` installs
them and sets RELAYGATE_E2E=1, which turns a missing one into a failure, not a skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

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
        if os.environ.get("RELAYGATE_E2E") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    settings = make_settings(MODELS, usage={"fsync_window": 0.05, "write_interval": 0.05})
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
