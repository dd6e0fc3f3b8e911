"""`relaygate usage` prints readable rows, including requests that never named a model."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from relaygate.store.engine import create_engine
from relaygate.store.tables import usage_daily
from tests.integration.test_cli_keys import _clean_env


async def _insert(url: str, rows: list[dict[str, object]]) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.insert(usage_daily), rows)
    finally:
        await engine.dispose()


def _row(model: str, requests: int, errors: int) -> dict[str, object]:
    return {
        "day": dt.datetime.now(dt.UTC).date(), "tenant_id": "", "key_id": "",
        "endpoint": "/v1/chat/completions", "model": model, "request_count": requests,
        "prompt_tokens": 3 * requests, "completion_tokens": 5 * requests,
        "duration_ms_sum": 2.0 * requests, "cached_requests": 0, "error_requests": errors,
        "cost": 0.0,
    }  # fmt: skip


def test_usage_labels_requests_without_a_model(tmp_path: Path, sqlite_template: Path) -> None:
    path = tmp_path / "relaygate.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite+aiosqlite:///{path}"
    asyncio.run(_insert(url, [_row("mock", 4, 0), _row("", 2, 2)]))
    result = subprocess.run(
        [sys.executable, "-m", "relaygate", "usage", "--since", "2d"],
        capture_output=True, text=True, timeout=30,
        env={**_clean_env(), "RELAYGATE_DATABASE_URL": url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    by_model = result.stdout.split("by model:")[1].splitlines()
    # MODEL, then REQUESTS TOKENS AVG_MS CACHED ERRORS COST
    rows = {line.split("  ")[0]: line.split("  ", 1)[1].split() for line in by_model if line}
    assert "None" not in result.stdout
    assert rows["(no model)"][:2] == ["2", "16"] and rows["(no model)"][4] == "2"
    assert rows["mock"][:2] == ["4", "32"]
