"""``relaygate keys`` and ``relaygate tenants``, run as real processes against real databases."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest

from relaygate.auth.keys import hash_secret
from tests.conftest import MOCK
from tests.gateway import RunningGateway, make_settings, running_gateway

RELAYGATE = [sys.executable, "-m", "relaygate"]
SECRET = re.compile(r"^    (rg_[A-Za-z0-9_-]{43})$", re.MULTILINE)
KEY_ID = re.compile(r"\bkey_[0-9a-f]{16}\b")
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def database(tmp_path: Path, sqlite_template: Path) -> str:
    """A fresh, migrated SQLite database."""
    path = tmp_path / "relaygate.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


def run(
    database: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RELAYGATE, *args], capture_output=True, text=True, timeout=30,
        env={**_clean_env(), "RELAYGATE_DATABASE_URL": database, **(env or {})},
    )  # fmt: skip


def ok(database: str, *args: str) -> str:
    result = run(database, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(database: str, *args: str, code: int = 1) -> str:
    """The command fails with ``code`` and one line on stderr, which is returned."""
    result = run(database, *args)
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RELAYGATE_")}


def created(stdout: str) -> tuple[str, str]:
    """(key id, secret) from the output of ``keys create`` or ``keys rotate``."""
    assert "shown only once" in stdout
    secrets = SECRET.findall(stdout)
    assert len(secrets) == 1, stdout
    key_id = KEY_ID.search(stdout)
    assert key_id is not None, stdout
    return key_id.group(0), secrets[0]


def test_keys_lifecycle(database: str) -> None:
    assert "Created tenant" in ok(database, "tenants", "create", "acme", "--tier", "pro")
    out = ok(
        database, "keys", "create", "--tenant", "acme", "--name", "ci", "--description",
        "the CI", "--expires-in-days", "30",
    )  # fmt: skip
    key_id, secret = created(out)
    assert "tenant acme" in out and "tier pro" in out and "role user" in out

    listing = ok(database, "keys", "list")
    header, *rows = listing.strip().splitlines()
    assert header.split()[:6] == ["ID", "PREFIX", "TENANT", "ROLE", "TIER", "ENABLED"]
    assert "EXPIRES" in header and "LAST USED" in header
    row = next(r for r in rows if key_id in r)
    assert row.split()[1:6] == [secret[:9] + "...", "acme", "user", "pro", "yes"]
    assert secret not in listing and secret[:12] not in listing
    assert hash_secret(secret) not in listing

    shown = ok(database, "keys", "show", key_id)
    assert "the CI" in shown and "acme" in shown and secret not in shown
    assert hash_secret(secret) not in shown and "hash" not in shown

    rotated = ok(database, "keys", "rotate", key_id)
    same_id, new_secret = created(rotated)
    assert same_id == key_id and new_secret != secret
    assert new_secret[:9] in ok(database, "keys", "list")

    assert "Revoked" in ok(database, "keys", "revoke", key_id)
    assert key_id not in ok(database, "keys", "list")
    revoked_row = next(r for r in ok(database, "keys", "list", "--all").splitlines() if key_id in r)
    assert "revoked" in revoked_row
    assert "revoked" in refused(database, "keys", "rotate", key_id)


def test_create_with_defaults_admin_role_and_quiet(database: str) -> None:
    refused_line = refused(database, "keys", "create", "--tenant", "newco")
    assert "newco" in refused_line and "--create-tenant" in refused_line
    secret = ok(database, "keys", "create", "--tenant", "newco", "--create-tenant", "--quiet")
    assert re.fullmatch(r"rg_[A-Za-z0-9_-]{43}\n", secret)
    out = ok(
        database, "keys", "create", "--tenant", "newco", "--role", "admin", "--tier", "unlimited"
    )
    assert "role admin" in out and "tier unlimited" in out and "expires never" in out
    listing = ok(database, "keys", "list", "--tenant", "newco")
    assert len(listing.strip().splitlines()) == 3  # header and two keys
    tenants = ok(database, "tenants", "list")
    newco = next(line for line in tenants.splitlines() if "newco" in line)
    assert newco.split()[2:4] == ["-", "2"]  # no tenant tier, two keys


def test_tenant_by_id_and_unicode_names(database: str) -> None:
    out = ok(database, "tenants", "create", "Société 東京")
    tenant_id = re.search(r"ten_[0-9a-f]{16}", out)
    assert tenant_id is not None
    key_id, _ = created(ok(database, "keys", "create", "--tenant", tenant_id.group(0)))
    assert "Société 東京" in ok(database, "keys", "show", key_id)
    assert "Société 東京" in ok(database, "tenants", "list")


def test_refusals_exit_1_with_one_line(database: str) -> None:
    ok(database, "tenants", "create", "acme")
    assert "already exists" in refused(database, "tenants", "create", "acme")
    assert "gold" in refused(database, "tenants", "create", "other", "--tier", "gold")
    assert "gold" in refused(database, "keys", "create", "--tenant", "acme", "--tier", "gold")
    for command in ("show", "revoke", "rotate"):
        assert "key_nope" in refused(database, "keys", command, "key_nope")
    assert "nobody" in refused(database, "keys", "list", "--tenant", "nobody")
    assert "other" not in ok(database, "tenants", "list")


def test_usage_and_config_errors_exit_2(tmp_path: Path, database: str) -> None:
    result = run(database, "keys", "create", "--tenant", "acme", "--role", "root")
    assert result.returncode == 2 and "--role" in result.stderr
    result = run(database, "keys", "create", "--tenant", "acme", "--expires-in-days", "0")
    assert result.returncode == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers:\n  free:\n    requests_per_fortnight: 3\n")
    line = refused(database, "keys", "list", "--config", str(bad), code=2)
    assert line.startswith("relaygate: configuration error:") and "requests_per_fortnight" in line
    empty = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    line = refused(empty, "keys", "list", code=2)
    assert "relaygate db upgrade" in line


def test_config_file_sets_the_key_prefix(tmp_path: Path, database: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("auth:\n  key_prefix: vpn_\n")
    out = ok(database, "keys", "create", "--config", str(config), "--tenant", "t",
             "--create-tenant", "--quiet")  # fmt: skip
    assert out.startswith("vpn_")


# against a running gateway


async def arun(database: str, *args: str, env: dict[str, str] | None = None) -> str:
    """The command, without blocking the event loop the gateway runs in."""
    process = await asyncio.create_subprocess_exec(
        *RELAYGATE, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**_clean_env(), "RELAYGATE_DATABASE_URL": database, **(env or {})},
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def chat(gateway: RunningGateway, secret: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {secret}"},
        ) as response:
            return response.status


async def refused_eventually(gateway: RunningGateway, secret: str) -> None:
    """Wait until the gateway refuses the key; fails if it never does (liveness only:
    how soon is the poll interval's business, and benchmarks', not the tests')."""
    for _ in range(500):
        if await chat(gateway, secret) == 401:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the key still works after 500 tries")


async def test_cli_keys_reach_a_running_gateway() -> None:
    settings = make_settings(MOCK)
    async with running_gateway(settings) as gateway:
        out = await arun(settings.database_url, "keys", "create", "--tenant", "acme",
                         "--create-tenant")  # fmt: skip
        key_id, secret = created(out)
        assert await chat(gateway, secret) == 200
        await arun(settings.database_url, "keys", "revoke", key_id)
        await refused_eventually(gateway, secret)  # the gateway polls the database


async def test_cli_change_is_published_through_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    # With Redis the database is polled only as a safety net: make that poll never come,
    # so the refusal below can only have come through the published message.
    monkeypatch.setattr("relaygate.auth.authenticator.POLL_WITH_PUBSUB", 3600.0)
    prefix = f"rgtest:{uuid.uuid4().hex}:"
    settings = make_settings(MOCK, redis_url=REDIS_URL, redis_prefix=prefix)
    env = {"RELAYGATE_REDIS_URL": REDIS_URL, "RELAYGATE_REDIS_PREFIX": prefix}
    async with running_gateway(settings) as gateway:
        key_id, old = created(
            await arun(settings.database_url, "keys", "create", "--tenant", "acme",
                       "--create-tenant", env=env)
        )  # fmt: skip
        assert await chat(gateway, old) == 200
        rotated = await arun(settings.database_url, "keys", "rotate", key_id, env=env)
        _, new = created(rotated)
        await refused_eventually(gateway, old)  # not by polling: it was published
        assert await chat(gateway, new) == 200
