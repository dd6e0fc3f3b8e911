"""Node tokens: ``relaygate nodes token ...`` as real processes, and revocation reaching
every replica (through Redis at once, else through each gateway's database check)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from relaygate.auth.keys import hash_secret
from relaygate.errors import NotFound
from relaygate.store.engine import create_engine
from relaygate.store.nodes import NodeTokenStore
from relaygate.store.tables import node_tokens
from relaygate.tunnel.agent import EXIT_REFUSED, AgentConfig, NodeAgent
from tests.conftest import MOCK
from tests.fakes.ollama_server import FakeOllama
from tests.gateway import make_settings, running_gateway

RELAYGATE = [sys.executable, "-m", "relaygate"]
TOKEN = re.compile(r"^    (rgn_[A-Za-z0-9_-]{43})$", re.MULTILINE)
TOKEN_ID = re.compile(r"\bnode_[0-9a-f]{16}\b")
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def database(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "relaygate.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


def run(database: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGATE_")}
    return subprocess.run(
        [*RELAYGATE, *args], capture_output=True, text=True, timeout=30,
        env={**clean, "RELAYGATE_DATABASE_URL": database, **env},
    )  # fmt: skip


async def wait_for(predicate: Any, what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still waiting for: {what}")


def test_token_commands_create_list_and_revoke(database: str) -> None:
    created = run(database, "nodes", "token", "create", "mac-studio")
    assert created.returncode == 0, created.stderr
    secret = TOKEN.search(created.stdout)
    token_id = TOKEN_ID.search(created.stdout)
    assert secret and token_id
    listed = run(database, "nodes", "token", "list")
    assert token_id.group(0) in listed.stdout and "mac-studio" in listed.stdout
    assert (
        secret.group(1) not in listed.stdout and hash_secret(secret.group(1)) not in listed.stdout
    )
    quiet = run(database, "nodes", "token", "create", "pc", "--quiet")
    assert quiet.stdout.startswith("rgn_") and len(quiet.stdout.strip().splitlines()) == 1
    revoked = run(database, "nodes", "token", "revoke", token_id.group(0))
    assert revoked.returncode == 0 and "cut off" in revoked.stdout
    assert token_id.group(0) not in run(database, "nodes", "token", "list").stdout
    assert token_id.group(0) in run(database, "nodes", "token", "list", "--all").stdout
    bad = run(database, "nodes", "token", "create", "no spaces")
    assert bad.returncode == 1 and "node name" in bad.stderr
    unknown = run(database, "nodes", "token", "revoke", "node_0000000000000000")
    assert unknown.returncode == 1 and "No node token" in unknown.stderr


async def test_tokens_are_stored_hashed(database: str) -> None:
    created = await asyncio.to_thread(run, database, "nodes", "token", "create", "box", "--quiet")
    secret = created.stdout.strip()
    settings = make_settings(MOCK, database_url=database)
    async with running_gateway(settings) as gateway:
        async with gateway.state.engine.connect() as conn:
            rows = (await conn.execute(sa.select(node_tokens))).all()
    assert [r.token_hash for r in rows] == [hash_secret(secret)]
    assert all(secret not in str(tuple(r)) for r in rows)


def test_node_help_is_clear() -> None:
    result = subprocess.run([*RELAYGATE, "node", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for words in ("--gateway", "--token-file", "--upstream", "no open", "exit status: 3"):
        assert words in result.stdout
    missing = subprocess.run([*RELAYGATE, "node"], capture_output=True, text=True)
    assert missing.returncode == 2 and "--gateway" in missing.stderr


@pytest.mark.parametrize("through", ["redis", "database"])
async def test_a_revocation_elsewhere_cuts_the_node_off_in_every_replica(
    tmp_path: Path, sqlite_template: Path, through: str
) -> None:
    """Two replicas share the database (and Redis); the node is connected to the first, its
    token is revoked by the second (as the admin API or CLI of any replica would)."""
    shutil.copyfile(sqlite_template, tmp_path / "shared.db")
    common: dict[str, Any] = {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"}
    if through == "redis":  # no database check for an hour: only Redis can tell it
        common |= {"redis_url": REDIS_URL, "redis_prefix": f"rgtest:{uuid.uuid4().hex}:"}
        common["nodes"] = {"revocation_poll": 3600}
    else:
        common["nodes"] = {"revocation_poll": 0.2}
    async with (
        FakeOllama(models=["m:1b"]) as fake,
        running_gateway(make_settings(MOCK, **common)) as first,
        running_gateway(make_settings(MOCK, **common)) as second,
    ):
        record, secret = await second.state.hub.tokens.create("box")
        node = NodeAgent(AgentConfig(gateway=first.url, token=secret, upstream=fake.base_url))
        task = asyncio.ensure_future(node.run())
        await wait_for(lambda: first.state.hub.link("box") is not None, "connected")
        assert "m:1b" in first.state.router.models
        await second.state.hub.tokens.revoke(record.id)
        if through == "redis":
            await second.state.hub.revoked(record.id)  # what DELETE /admin/node-tokens does
        assert await asyncio.wait_for(task, 10) == EXIT_REFUSED
        assert first.state.hub.link("box") is None
        assert "m:1b" not in first.state.router.models


async def test_the_token_store_on_each_database(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        store = NodeTokenStore(engine)
        first, secret = await store.create("mac")
        second, _ = await store.create("mac")  # a second token for the same node (rotation)
        assert (await store.check(secret)) == first
        assert await store.check(secret + "x") is None
        assert await store.revoked_among([first.id, second.id, "node_gone"]) == {"node_gone"}
        revoked = await store.revoke(first.id)
        assert revoked.revoked_at is not None and revoked.created_at.tzinfo is not None
        assert await store.check(secret) is None
        assert await store.revoked_among([first.id, second.id]) == {first.id}
        assert [t.id for t in await store.list()] == [second.id]
        assert {t.id for t in await store.list(include_revoked=True)} == {first.id, second.id}
        with pytest.raises(NotFound):
            await store.revoke("node_0000000000000000")
    finally:
        await engine.dispose()
