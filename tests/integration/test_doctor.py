"""`relaygate doctor` against healthy and broken set-ups: real databases, Redis, upstreams."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from blockbuster import BlockBuster

from relaygate.store.migrate import upgrade
from tests.conftest import PG_SERVER, closed_port_url
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.openwebui_server import FakeOpenWebUI
from tests.integration.test_cli_keys import _clean_env

KEY = "sk-right-key-0123456789abcdef"
WRONG_KEY = "sk-wrong-key-9876543210fedcba"


class Doctor:
    """Runs `relaygate doctor` as a user would, in a folder of its own."""

    def __init__(self, tmp_path: Path, sqlite_template: Path) -> None:
        self.folder = tmp_path
        database = tmp_path / "relaygate.db"
        shutil.copyfile(sqlite_template, database)
        self.base: dict[str, Any] = {
            "database_url": f"sqlite+aiosqlite:///{database}",
            "discover_ollama": [],
            "usage": {"outbox_dir": str(tmp_path / "outbox")},
        }

    async def __call__(self, **config: Any) -> tuple[int, list[str], str]:
        """Exit status, the finding lines, and the whole output."""
        path = self.folder / "relaygate.yaml"
        path.write_text(yaml.safe_dump({**self.base, **config}))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relaygate", "doctor", "--config", str(path),
            cwd=self.folder, env=_clean_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), 30)
        text = output.decode()
        lines = [line for line in text.splitlines() if line.split(" ")[0] in ("OK", "WARN", "FAIL")]
        assert process.returncode is not None
        return process.returncode, lines, text


@pytest.fixture
def doctor(tmp_path: Path, sqlite_template: Path) -> Doctor:
    return Doctor(tmp_path, sqlite_template)


def openai_model(
    name: str, base_url: str, api_key: str | None = KEY, **extra: Any
) -> dict[str, Any]:
    deployment = {"provider": "openai", "base_url": base_url, "api_key": api_key, **extra}
    return {"name": name, "deployments": [deployment]}


def only(lines: list[str], start: str) -> str:
    """The one finding about ``start`` (what follows the status)."""
    found = [line for line in lines if line.split(None, 1)[1].startswith(start)]
    assert len(found) == 1, lines
    return found[0]


async def test_a_healthy_set_up_exits_0(doctor: Doctor, postgres_database: str) -> None:
    async with (
        FakeOpenAI(models=["gpt-x"], api_key=KEY) as openai,
        FakeOllama(models=["llama3.2:1b"]) as ollama,
    ):
        code, lines, text = await doctor(
            database_url=f"{PG_SERVER}/{postgres_database}",
            redis_url="redis://127.0.0.1:6379/0",
            models=[
                openai_model("gpt-x", openai.base_url),
                {"name": "llama", "deployments": [
                    {"provider": "ollama", "base_url": ollama.base_url, "model": "llama3.2:1b"}]},
            ],
            discover_ollama=[ollama.base_url],
        )  # fmt: skip
    assert code == 0, text
    # Everything OK; Redis's PING time depends on the machine's load, so it may warn.
    assert all(line.startswith("OK") or "PING took" in line for line in lines), text
    assert "migrations: at head" in text and "PING" in text
    assert only(lines, f"upstream openai {openai.base_url}").endswith("reachable, 1 models present")
    assert "clock: within 5 s of" in text and "PostgreSQL" in text and "Redis" in text
    assert KEY not in text


async def test_database_down_names_it_without_its_password(doctor: Doctor) -> None:
    port = closed_port_url("").rsplit(":", 1)[1]
    code, lines, text = await doctor(
        database_url=f"postgresql+asyncpg://postgres:hunter2secret@127.0.0.1:{port}/relaygate"
    )
    assert code == 1
    line = only(lines, "database ")
    assert line.startswith("FAIL") and "cannot connect" in line and "correct database_url" in line
    assert "hunter2secret" not in text


async def test_redis_down(doctor: Doctor) -> None:
    port = closed_port_url("").rsplit(":", 1)[1]
    code, lines, text = await doctor(redis_url=f"redis://:redispass99@127.0.0.1:{port}/0")
    assert code == 1
    line = only(lines, "redis ")
    assert line.startswith("FAIL") and "correct redis_url" in line
    assert "redispass99" not in text


async def test_wrong_provider_key(doctor: Doctor) -> None:
    async with FakeOpenAI(models=["gpt-x"], api_key=KEY) as openai:
        code, lines, text = await doctor(models=[openai_model("gpt-x", openai.base_url, WRONG_KEY)])
    assert code == 1
    line = only(lines, "upstream openai")
    assert line.startswith("FAIL") and "credentials refused (401, the key was refused)" in line
    assert "models[0].deployments[0].api_key" in line
    assert WRONG_KEY not in text and WRONG_KEY[-8:] not in text


async def test_unreachable_upstream(doctor: Doctor) -> None:
    url = closed_port_url()
    code, lines, _ = await doctor(models=[openai_model("gpt-x", url)])
    assert code == 1
    line = only(lines, f"upstream openai {url}")
    assert line.startswith("FAIL") and "unreachable" in line
    assert "models[0].deployments[0].base_url" in line


async def test_models_missing_on_the_upstreams(doctor: Doctor) -> None:
    async with (
        FakeOpenAI(models=["other"], api_key=KEY) as openai,
        FakeOllama(models=["llama3.2:1b"]) as ollama,
    ):
        code, lines, _ = await doctor(
            models=[
                openai_model("gpt-x", openai.base_url),
                {"name": "llama", "deployments": [
                    {"provider": "ollama", "base_url": ollama.base_url, "model": "llama3.2"}]},
            ]
        )  # fmt: skip
    assert code == 1
    line = only(lines, "upstream openai")
    assert line.startswith("FAIL") and "model 'gpt-x' is not served there" in line
    assert "models[0].deployments[0].model" in line
    line = only(lines, "upstream ollama")
    assert line.startswith("FAIL") and "'llama3.2'" in line and "ollama pull llama3.2" in line


async def test_each_pool_node_is_checked(doctor: Doctor) -> None:
    down = closed_port_url("")
    async with FakeOllama(models=["llama3.2:1b", "phi3:mini"]) as up:
        nodes = [{"name": "mac", "base_url": up.base_url}, {"name": "pc", "base_url": down}]
        code, lines, _ = await doctor(pools={"home": {"nodes": nodes}})
    assert code == 1
    line = only(lines, f"node mac of pool home {up.base_url}")
    assert line.startswith("OK") and "2 models present" in line
    line = only(lines, f"node pc of pool home {down}")
    assert line.startswith("FAIL") and "unreachable" in line
    assert "pools.home.nodes[1].base_url" in line


async def test_outbox_that_cannot_be_created(doctor: Doctor) -> None:
    # Tests run as root, which ignores permission bits: nothing can be created under a file.
    blocker = doctor.folder / "a-file"
    blocker.write_text("")
    code, lines, _ = await doctor(usage={"outbox_dir": str(blocker / "outbox")})
    assert code == 1
    line = only(lines, "usage outbox")
    assert line.startswith("FAIL") and "cannot be created" in line and "usage.outbox_dir" in line


@pytest.fixture
def behind(tmp_path: Path, blockbuster: BlockBuster) -> str:
    """A database migrated to 0002 only (migrating blocks, as `relaygate db upgrade` may)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    blockbuster.deactivate()
    try:
        upgrade(url, "0002")
    finally:
        blockbuster.activate()
    return url


async def test_migrations_behind_warn_and_a_broken_configuration_fails(
    doctor: Doctor, behind: str
) -> None:
    code, lines, _ = await doctor(database_url=behind)
    assert code == 0
    line = only(lines, "migrations")
    assert line.startswith("WARN") and "at 0002, head is" in line and "relaygate db upgrade" in line

    code, lines, _ = await doctor(port="eighty")
    assert code == 1
    assert lines[0].startswith("FAIL  configuration: ") and "port" in lines[0]


@pytest.fixture
async def slow_clock_upstream() -> AsyncIterator[str]:
    """An OpenAI-compatible upstream whose clock is an hour behind."""

    async def models(request: web.Request) -> web.Response:
        body = {"object": "list", "data": [{"id": "gpt-x", "object": "model"}]}
        late = web.json_response(body)
        late.headers["Date"] = "Thu, 01 Jan 2015 00:00:00 GMT"
        return late

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


async def test_clock_skew_warns(doctor: Doctor, slow_clock_upstream: str) -> None:
    code, lines, text = await doctor(models=[openai_model("gpt-x", slow_clock_upstream)])
    assert code == 0, text
    line = only(lines, "clock:")
    assert line.startswith("WARN") and "ahead of upstream openai" in line and "NTP" in line


async def test_anthropic_upstream_is_checked_with_its_own_headers(doctor: Doctor) -> None:
    async with FakeAnthropic(api_key=KEY) as fake:
        deployment = {"provider": "anthropic", "base_url": fake.base_url, "api_key": KEY}
        code, lines, text = await doctor(
            models=[
                {"name": "claude-sonnet-4-5", "deployments": [deployment]},
                {"name": "claude-x", "deployments": [{**deployment, "model": "claude-9"}]},
            ]
        )
    line = only(lines, "upstream anthropic")
    assert code == 1 and line.startswith("FAIL") and "model 'claude-9' is not served there" in line
    assert fake.problems == [] and fake.requests[0].headers["x-api-key"] == KEY
    assert KEY not in text


async def test_open_webui_upstream_is_checked_under_api(doctor: Doctor) -> None:
    async with FakeOpenWebUI(models=["llama3.2:1b"], api_key=KEY) as fake:
        deployment = {"provider": "openwebui", "base_url": fake.base_url, "api_key": KEY}
        _, lines, _ = await doctor(models=[{"name": "llama3.2:1b", "deployments": [deployment]}])
    line = only(lines, "upstream openwebui")
    assert line.startswith("OK") and "reachable, 1 models present" in line
    assert [r.path for r in fake.requests] == ["/api/models"]
