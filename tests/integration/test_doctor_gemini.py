"""`relaygate doctor` on a Gemini upstream: its key in x-goog-api-key, its model list read."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.gemini_server import FakeGemini
from tests.integration.test_doctor import Doctor, only

KEY = "zqg3mfa0q7xkd9t2"


@pytest.fixture
def doctor(tmp_path: Path, sqlite_template: Path) -> Doctor:
    return Doctor(tmp_path, sqlite_template)


def gemini(name: str, base_url: str, api_key: str, model: str | None = None) -> dict[str, object]:
    deployment = {"provider": "gemini", "base_url": base_url, "api_key": api_key}
    if model:
        deployment["model"] = model
    return {"name": name, "deployments": [deployment]}


async def test_gemini_upstream_checked_with_its_own_header(doctor: Doctor) -> None:
    async with FakeGemini(api_key=KEY) as fake:
        _, lines, text = await doctor(
            models=[
                gemini("gemini-1.5-flash", fake.base_url, KEY),
                gemini("pro", fake.base_url, KEY, "models/gemini-1.5-pro"),
            ]
        )
    line = only(lines, f"upstream gemini {fake.base_url}")
    assert line.startswith("OK") and line.endswith("reachable, 2 models present"), text
    (listing,) = fake.requests
    assert listing.headers["x-goog-api-key"] == KEY and "key" not in listing.query
    assert fake.violations == [] and KEY not in text


async def test_gemini_refusing_the_key_or_missing_a_model(doctor: Doctor) -> None:
    async with FakeGemini(api_key=KEY) as fake:
        _, refused, text = await doctor(
            models=[gemini("gemini-1.5-flash", fake.base_url, "wrong-key-123")]
        )
        _, missing, _ = await doctor(models=[gemini("gemini-9", fake.base_url, KEY)])
    line = only(refused, "upstream gemini")
    assert line.startswith("FAIL") and "credentials refused (401, the key was refused)" in line
    assert "wrong-key-123" not in text
    line = only(missing, "upstream gemini")
    assert line.startswith("FAIL") and "model 'gemini-9' is not served there" in line
