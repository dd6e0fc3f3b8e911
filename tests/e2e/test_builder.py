"""The app builder end to end, in real Chromium (Debian's package), against a real
relaygate whose development model answers the builder's system prompt with a two-file app:
describe, see the files, change one by a follow-up, run the preview and read what the
sandboxed frame renders, export the ZIP and read it, undo, see an error beside the preview.
Driven by web/e2e/builder.mjs; screenshots go to build/screenshots with the UI's own.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.e2e.test_ui import MODELS, SHOTS, WEB, _missing
from tests.gateway import make_settings, running_gateway
from tests.keys import new_key


@pytest.mark.timeout(180)
async def test_the_builder_end_to_end_in_chromium() -> None:
    missing = _missing()
    if missing:
        if os.environ.get("REQUIRE_E2E") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    async with running_gateway(make_settings(MODELS)) as gateway:
        _, secret = await new_key(gateway, tier="pro")
        process = await asyncio.create_subprocess_exec(
            "node", "e2e/builder.mjs", gateway.url, secret, str(SHOTS),
            cwd=WEB, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), 160)
    text = output.decode(errors="replace")
    print(text)
    assert process.returncode == 0, text
    shots = (
        "builder-models-loading",
        "builder",
        "builder-follow-up",
        "builder-error",
        "builder-react",
    )
    for name in shots:
        for width in ("desktop", "phone"):
            assert (SHOTS / f"{name}-{width}.png").exists(), name
