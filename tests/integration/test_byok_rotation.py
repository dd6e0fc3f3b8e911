"""Rotating the master key of stored provider keys while the gateway serves (BYOK).

Old ciphertext still decrypts once a new key is put first; ``relaygate secrets rotate``
(the real command, in its own process) re-encrypts every secret while requests keep
being served with each user's own key; then the old key is dropped and every secret
still decrypts. A gateway given only the old key refuses to start.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa

from relaygate.app import create_app
from relaygate.errors import ConfigError
from relaygate.store.tables import provider_secrets
from relaygate.vault.crypto import fingerprint, new_key
from tests.fakes.openai_server import FakeOpenAI
from tests.gateway import RunningGateway, running_gateway
from tests.integration.test_byok import Client, byok_settings, user

USERS = {
    "alice": "sk-alice-rotation-0123456789abcdef",
    "bob": "sk-bob-rotation-fedcba9876543210",
    "carol": "sk-carol-rotation-aaaabbbbccccdddd",
}


async def served_with_own_key(client: Client, secret: str, fake: FakeOpenAI) -> None:
    status, body, headers = await client.chat()
    assert status == 200, body
    assert headers["x-relaygate-key-owner"] == "user"
    assert fake.requests[-1].headers["authorization"] == f"Bearer {secret}"


async def fingerprints(gateway: RunningGateway) -> set[str]:
    async with gateway.state.engine.connect() as conn:
        found = await conn.execute(sa.select(provider_secrets.c.key_fingerprint))
        return {row[0] for row in found}


async def test_rotation_while_serving(fake_openai: FakeOpenAI, database_url: str) -> None:
    old, new = new_key(), new_key()
    settings = byok_settings(fake_openai.base_url, secret_key=old, database_url=database_url)
    secrets: dict[str, str] = {}  # relaygate key of each user
    async with running_gateway(settings) as gateway:
        for name, provider_key in USERS.items():
            client = await user(gateway, name)
            secrets[name] = client.secret
            key = await client.add_key("openai", provider_key)
            await client.configure("openai", api_key_id=key["id"], config={"model": "m"})
        assert await fingerprints(gateway) == {fingerprint(old)}

    both = msgspec.structs.replace(settings, secret_key=f"{new},{old}")
    async with running_gateway(both) as gateway:
        clients = {name: Client(gateway, secret) for name, secret in secrets.items()}
        for name, client in clients.items():  # the old ciphertexts decrypt
            await served_with_own_key(client, USERS[name], fake_openai)

        done = asyncio.Event()
        served: list[int] = []

        async def keep_serving() -> None:
            while not done.is_set():
                for name, client in clients.items():
                    await served_with_own_key(client, USERS[name], fake_openai)
                    served.append(1)

        serving = asyncio.ensure_future(keep_serving())
        rotate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relaygate", "secrets", "rotate",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "RELAYGATE_SECRET_KEY": f"{new},{old}",
                 "RELAYGATE_DATABASE_URL": database_url},
        )  # fmt: skip
        output, _ = await rotate.communicate()
        during = len(served)
        done.set()
        await serving  # raises if any request during the rotation failed
        await gateway.state.vault.reload()  # what the poll does within poll_interval
        for _ in range(2):
            for name, client in clients.items():
                await served_with_own_key(client, USERS[name], fake_openai)
        assert rotate.returncode == 0, output.decode()
        assert "Re-encrypted 3 provider key(s)" in output.decode()
        assert during > 0  # requests were served while the command ran
        assert await fingerprints(gateway) == {fingerprint(new)}

    new_only = msgspec.structs.replace(settings, secret_key=new)  # the old key dropped
    async with running_gateway(new_only) as gateway:
        for name, secret in secrets.items():
            await served_with_own_key(Client(gateway, secret), USERS[name], fake_openai)

    app = create_app(msgspec.structs.replace(settings, secret_key=old))
    with pytest.raises(ConfigError, match="does not list"):
        await app.startup()


async def test_rotate_without_a_key_or_with_a_malformed_one_says_so(database_url: str) -> None:
    def run(env: dict[str, Any]) -> Any:
        return asyncio.create_subprocess_exec(
            sys.executable, "-m", "relaygate", "secrets", "rotate",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**{k: v for k, v in os.environ.items() if k != "RELAYGATE_SECRET_KEY"},
                 "RELAYGATE_DATABASE_URL": database_url, **env},
        )  # fmt: skip

    for env, words in (({}, "not set"), ({"RELAYGATE_SECRET_KEY": "short"}, "not a Fernet key")):
        process = await run(env)
        output, _ = await process.communicate()
        assert process.returncode == 2, output.decode()
        assert words in output.decode()
        assert "short" not in output.decode().replace("not a Fernet", "")


async def test_new_key_prints_a_usable_key() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relaygate", "secrets", "new-key",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, _ = await process.communicate()
    key = output.decode().strip()
    assert process.returncode == 0 and len(key) == 44
    from relaygate.vault.crypto import SecretBox

    box = SecretBox([key])
    assert box.decrypt(box.encrypt("sk-x")) == "sk-x"


async def test_serve_without_the_key_stops_with_a_clear_error(
    fake_openai: FakeOpenAI, tmp_path: Any
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    settings = byok_settings(fake_openai.base_url, database_url=database)
    async with running_gateway(settings) as gateway:
        await (await user(gateway, "alice")).add_key("openai", USERS["alice"])
    config = tmp_path / "relaygate.yaml"
    config.write_text(f"discover_ollama: []\nmock_model: true\ndatabase_url: {database}\nport: 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGATE_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relaygate", "serve", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2, output.decode()
    assert "1 provider secret(s)" in output.decode()
    assert "RELAYGATE_SECRET_KEY is not set" in output.decode()
    assert USERS["alice"] not in output.decode()
