"""The app builder's preview frame (/ui/preview.html): served with its own CSP, which lets
generated code run inline only inside a sandbox (an opaque origin) framed by this page,
and reach nothing on the network; every other UI file keeps the page's policy."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import MOCK
from tests.gateway import RunningGateway, make_settings, running_gateway


@pytest.fixture
async def gateway() -> AsyncIterator[RunningGateway]:
    async with running_gateway(make_settings(MOCK)) as running:
        yield running


async def test_the_preview_frame_has_its_own_narrow_policy(gateway: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/ui/preview.html") as r:
            assert r.status == 200
            frame = dict(r.headers)
            body = await r.text()
        async with session.get(gateway.url + "/ui/builder") as r:
            page = dict(r.headers)
    policy = {
        d.split(" ", 1)[0]: d.split(" ", 1)[1] if " " in d else ""
        for d in (part.strip() for part in frame["Content-Security-Policy"].split(";"))
    }
    assert policy["sandbox"] == "allow-scripts"  # opaque origin even when opened directly
    assert policy["default-src"] == "'none'"  # no fetch, no frames, no fonts from anywhere
    assert policy["script-src"] == "'unsafe-inline'"
    assert policy["frame-ancestors"] == "'self'"
    assert "X-Frame-Options" not in frame
    assert "relaygate-preview-load" in body
    # the page itself still runs only its own files and may not be framed
    assert "script-src 'self';" in page["Content-Security-Policy"]
    assert "'unsafe-inline'" not in page["Content-Security-Policy"].split("style-src")[0]
    assert page["X-Frame-Options"] == "DENY"
