"""Replicas starting together on one empty PostgreSQL database migrate it once: each
``relaygate serve`` (and ``relaygate db upgrade``) migrates at start, and deploy/'s
compose file and Kubernetes Deployment start several at the same moment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from relaygate.store.migrate import head_revision

PG = "postgresql://postgres@127.0.0.1:5432"
REPLICAS = 4


def admin_sql(statement: str, database: str = "postgres") -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(f"{PG}/{database}")
        try:
            return await conn.fetch(statement)
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"rg_replicas_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_replicas_migrating_one_empty_database_at_once_all_succeed(empty_database: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGATE_")}
    env["RELAYGATE_DATABASE_URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{empty_database}"
    replicas = [
        subprocess.Popen(
            [sys.executable, "-m", "relaygate", "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(REPLICAS)
    ]
    results = [(*p.communicate(timeout=120), p.returncode) for p in replicas]
    for out, err, code in results:
        assert code == 0, err[-2000:]
        assert "schema up to date" in out
    rows = admin_sql("SELECT version_num FROM alembic_version", empty_database)
    assert [r["version_num"] for r in rows] == [head_revision()]
