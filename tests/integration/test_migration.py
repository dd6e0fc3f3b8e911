"""Moving from the seeds' systems: their keys imported as they are (CLI and admin API), the
prefix of issued keys configured, and their URLs kept by aliases and a mount prefix."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.app import create_app
from relaygate.errors import ConfigError
from relaygate.redact import MASK, scrub
from tests.conftest import MOCK
from tests.fuzz import FUZZ
from tests.gateway import RunningGateway, make_settings, prepare_database, running_gateway
from tests.integration.test_cli_keys import KEY_ID, RELAYGATE, _clean_env

# Seed 000's documented key (docs/integration guide), as its front end sends it.
SEED_KEY = "vpn_2hrUOubvcBqlrysKkGOe4CBv5_sTi7QEgNLhp7S2WrI"
SEED_003_DEMO = "demo-user-key-67890"
GENERATE = {"prompt": "Explain machine learning", "model": "mock", "use_cache": False}


async def call(
    gateway: RunningGateway,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = None,
    header: str = "X-API-Key",
) -> tuple[int, Any]:
    headers = {}
    if key is not None:
        headers = {header: key if header == "X-API-Key" else f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, gateway.url + path, json=body, headers=headers) as response,
    ):
        raw = await response.read()
        text = raw.decode()
    try:
        return response.status, msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return response.status, text


async def admin(gateway: RunningGateway, method: str, path: str, body: Any = None) -> Any:
    return await call(gateway, method, path, body, gateway.admin_key, header="Authorization")


# importing through the admin API


async def test_admin_import_then_the_seed_key_works_as_it_is() -> None:
    async with running_gateway(make_settings(MOCK)) as gateway:
        body = {"secret": SEED_KEY, "tenant_id": "nexus", "tier": "pro", "name": "browser"}
        assert (await call(gateway, "POST", "/ai/generate", GENERATE, SEED_KEY))[0] == 401
        await admin(gateway, "POST", "/admin/tenants", {"name": "nexus"})
        status, created = await admin(gateway, "POST", "/admin/keys/import", body)
        assert status == 201, created
        assert SEED_KEY not in msgspec.json.encode(created).decode()
        assert created["imported"] is True and created["key"]["tier"] == "pro"
        shown = created["key"]["prefix"]
        assert SEED_KEY.startswith(shown) and len(shown) <= 10

        status, reply = await call(gateway, "POST", "/ai/generate", GENERATE, SEED_KEY)
        assert status == 200, reply
        assert reply["response"] and reply["cached"] is False
        bearer = await call(gateway, "POST", "/ai/generate", GENERATE, SEED_KEY, "Authorization")
        assert bearer[0] == 200

        again = await admin(gateway, "POST", "/admin/keys/import", body)
        assert again[0] == 409 and SEED_KEY not in str(again[1])
        # the bootstrap admin key cannot be imported a second time either
        admin_again = await admin(gateway, "POST", "/admin/keys/import",
                                  {**body, "secret": gateway.admin_key})  # fmt: skip
        assert admin_again[0] == 409

        for weak in ("", "short", "x" * 15):
            status, error = await admin(gateway, "POST", "/admin/keys/import",
                                        {**body, "secret": weak})  # fmt: skip
            assert status == 400, error
            assert "at least 16" in error["error"]["message"]
        for bad in ("a" * 513, "has a space in it!!", "tab\tinside-the-secret", "ünïcödé-secret-xx",
                    "aaaa.bbbbbbbbbb.cccc", "key_0123456789abcdef"):  # fmt: skip
            status, error = await admin(gateway, "POST", "/admin/keys/import",
                                        {**body, "secret": bad})  # fmt: skip
            assert status == 400, (bad, error)
            assert bad not in error["error"]["message"]

        # a user key cannot import
        status, _ = await call(gateway, "POST", "/admin/keys/import",
                               {**body, "secret": SEED_003_DEMO}, SEED_KEY)  # fmt: skip
        assert status == 403
        # POST /admin/keys makes its own secret: it takes none
        status, error = await admin(gateway, "POST", "/admin/keys", body)
        assert status == 400 and "secret" in error["error"]["message"]


async def test_revoking_an_imported_key_stops_it() -> None:
    async with running_gateway(make_settings(MOCK)) as gateway:
        body = {"secret": SEED_003_DEMO, "tenant_id": "demo", "tier": "pro"}
        await admin(gateway, "POST", "/admin/tenants", {"name": "demo"})
        status, created = await admin(gateway, "POST", "/admin/keys/import", body)
        assert status == 201
        assert (await call(gateway, "GET", "/v1/models", key=SEED_003_DEMO))[0] == 200
        await admin(gateway, "DELETE", f"/admin/keys/{created['key']['id']}")
        assert (await call(gateway, "GET", "/v1/models", key=SEED_003_DEMO))[0] == 401


# importing with the CLI


@pytest.fixture
def database(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "relaygate.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


def cli(database: str, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [*RELAYGATE, "keys", "import", *args], capture_output=True, text=True, timeout=30,
        input=stdin, env={**_clean_env(), "RELAYGATE_DATABASE_URL": database, **(env or {})},
    )  # fmt: skip


async def test_cli_import_from_stdin_and_from_the_environment(database: str) -> None:
    tenant = ["--tenant", "nexus", "--create-tenant", "--tier", "pro", "--name", "browser"]
    from_stdin = cli(database, *tenant, stdin=SEED_KEY + "\n")
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert SEED_KEY not in from_stdin.stdout and KEY_ID.search(from_stdin.stdout)
    from_env = cli(database, *tenant, "--secret-env", "DEMO_USER_KEY",
                   env={"DEMO_USER_KEY": SEED_003_DEMO})  # fmt: skip
    assert from_env.returncode == 0, from_env.stderr

    again = cli(database, *tenant, stdin=SEED_KEY)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert SEED_KEY not in again.stderr
    weak = cli(database, *tenant, stdin="tooshort\n")
    assert weak.returncode == 1 and "at least 16" in weak.stderr
    unset = cli(database, *tenant, "--secret-env", "NOT_SET_ANYWHERE")
    assert unset.returncode == 1 and "not set" in unset.stderr
    assert "NOT_SET_ANYWHERE" not in unset.stderr  # it might be a secret, given by mistake
    # the secret is never an argument (nor is --secret taken for --secret-env)
    as_argument = cli(database, *tenant, "--secret", SEED_KEY)
    assert as_argument.returncode == 2 and "unrecognized arguments" in as_argument.stderr

    async with running_gateway(make_settings(MOCK, database_url=database)) as gateway:
        for secret in (SEED_KEY, SEED_003_DEMO):
            status, reply = await call(gateway, "POST", "/ai/generate", GENERATE, secret)
            assert status == 200, reply


# the prefix of issued keys


async def test_a_configured_prefix_makes_keys_that_work_and_are_scrubbed() -> None:
    settings = make_settings(MOCK, auth={"key_prefix": "vpn_"})
    async with running_gateway(settings) as gateway:
        assert gateway.admin_key.startswith("vpn_")
        await admin(gateway, "POST", "/admin/tenants", {"name": "acme"})
        issued = [
            (await admin(gateway, "POST", "/admin/keys", {"tenant_id": "acme"}))[1]["api_key"],
            (await admin(gateway, "POST", "/auth/create-key", {"tenant_id": "acme"}))[1]["api_key"],
        ]
        for secret in issued:
            assert re.fullmatch(r"vpn_[A-Za-z0-9_-]{43}", secret), secret
            status, reply = await call(gateway, "POST", "/ai/generate", GENERATE, secret)
            assert status == 200, reply


@pytest.mark.parametrize("prefix", ["vpn_", "acme_", "x_", "a1b2c3d4e5f6g7h8_"])
def test_any_configured_prefix_is_a_secret_shape(prefix: str) -> None:
    secret = prefix + "Q" * 10 + "-_" + "z9" * 15 + "k"  # 43 characters after the prefix
    assert len(secret) == len(prefix) + 43
    assert scrub(f"upstream said: bad key {secret}.") == f"upstream said: bad key {MASK}."


def test_a_bad_prefix_is_a_configuration_error() -> None:
    for bad in ("", "rg", "has space_", "toolongtoolongtoo_", "a-b_"):
        with pytest.raises(ConfigError, match="key_prefix"):
            make_settings(MOCK, auth={"key_prefix": bad})


# path aliases and a mount prefix


PATHS = {"aliases": {"/api/ai/generate": "/ai/generate", "/api/ai/models": "/ai/models"},
         "prefix": "/gateway"}  # fmt: skip


@pytest_asyncio.fixture
async def aliased() -> AsyncIterator[RunningGateway]:
    async with running_gateway(make_settings(MOCK, paths=PATHS)) as gateway:
        yield gateway


def _without_ids(body: Any) -> Any:
    text = msgspec.json.encode(body).decode()
    return re.sub(r'"(req|chatcmpl|id)[^"]*"', '""', re.sub(r"\d+", "0", text))


async def test_an_alias_answers_like_its_target(aliased: RunningGateway) -> None:
    key = aliased.admin_key
    for old, new in (
        ("/api/ai/generate", "/ai/generate"),
        ("/gateway/ai/generate", "/ai/generate"),
    ):
        status, reply = await call(aliased, "POST", old, GENERATE, key)
        target = await call(aliased, "POST", new, GENERATE, key)
        assert (status, target[0]) == (200, 200), reply
        assert sorted(reply) == sorted(target[1]) and reply["response"]
        # errors too, in the target's own shape
        for body, who in (
            ({"model": "mock"}, key),
            (GENERATE, None),
            (GENERATE, "wrong-key-00000000"),
        ):
            old_error = await call(aliased, "POST", old, body, who)
            new_error = await call(aliased, "POST", new, body, who)
            assert old_error[0] == new_error[0] and old_error[0] in (400, 401, 422)
            assert _without_ids(old_error[1]) == _without_ids(new_error[1])
        assert (await call(aliased, "GET", old, key=key))[0] == 405
    assert (await call(aliased, "GET", "/api/ai/models", key=key))[0] == 200


async def test_the_mount_prefix_serves_every_route(aliased: RunningGateway) -> None:
    key = aliased.admin_key
    chat = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
    status, reply = await call(aliased, "POST", "/gateway/v1/chat/completions", chat, key)
    assert status == 200 and reply["choices"]
    status, tags = await call(aliased, "GET", "/gateway/api/tags", key=key)
    assert status == 200 and "models" in tags
    status, keys = await admin(aliased, "GET", "/gateway/admin/keys")
    assert status == 200 and keys["data"]
    # the bare paths keep working; the prefix alone and unknown paths under it are 404s
    assert (await call(aliased, "POST", "/v1/chat/completions", chat, key))[0] == 200
    assert (await call(aliased, "GET", "/gateway", key=key))[0] == 404
    status, error = await call(aliased, "POST", "/gateway/api/nothing", {}, key)
    assert status == 404 and "error" in error  # Ollama's shape for /api/*: {"error": "..."}
    assert isinstance(error["error"], str)
    # the OpenAPI document lists the served routes, not this deployment's copies
    status, document = await call(aliased, "GET", "/openapi.json")
    assert "/ai/generate" in document["paths"] and "/api/ai/generate" not in document["paths"]
    assert "/admin/keys/import" in document["paths"]


def test_bad_aliases_are_configuration_errors() -> None:
    for aliases, problem in (
        ({"/a": "/a"}, "alias of itself"),
        ({"/a": "/b", "/b": "/ai/generate"}, "itself an alias"),
        ({"no-slash": "/ai/generate"}, "paths.aliases"),
        ({"/a b": "/ai/generate"}, "paths.aliases"),
    ):
        with pytest.raises(ConfigError, match=problem):
            make_settings(MOCK, paths={"aliases": aliases})
    with pytest.raises(ConfigError, match=r"paths\.prefix"):
        make_settings(MOCK, paths={"prefix": "/gateway/"})


@pytest.mark.parametrize(
    ("aliases", "problem"),
    [({"/old": "/nowhere"}, "not a route"), ({"/v1/models": "/ai/models"}, "would hide it")],
)
async def test_an_alias_must_point_at_a_served_route(aliases: dict[str, str], problem: str) -> None:
    """Checked at start, once the routes exist: the gateway refuses to start, and what it
    had opened is closed again."""
    settings = make_settings(MOCK, paths={"aliases": aliases})
    await prepare_database(settings)
    app = create_app(settings)
    with pytest.raises(ConfigError, match=problem):
        await app.startup()
    assert app.state is None


# generated secrets


def _usable(secret: str) -> bool:
    """The rule, written out independently of relaygate's own check."""
    return (
        16 <= len(secret) <= 512
        and all(0x21 <= ord(c) <= 0x7E for c in secret)
        and not re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", secret)
        and not re.fullmatch(r"key_[0-9a-f]{16}", secret)
    )


VISIBLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


class Importer:
    def __init__(self, gateway: RunningGateway) -> None:
        self.gateway = gateway
        self.imported: set[str] = set()

    async def attempt(self, secret: str) -> None:
        body = {"secret": secret, "tenant_id": "gen", "tier": "unlimited"}
        status, answer = await admin(self.gateway, "POST", "/admin/keys/import", body)
        if not _usable(secret):
            assert status == 400, (secret, answer)
            assert answer["error"]["type"] == "invalid_request_error"
            return
        if secret in self.imported:
            assert status == 409, answer
            return
        assert status == 201, (secret, answer)
        self.imported.add(secret)
        status, models = await call(self.gateway, "GET", "/v1/models", key=secret)
        assert status == 200, models
        status, models = await call(self.gateway, "GET", "/v1/models", key=secret,
                                    header="Authorization")  # fmt: skip
        assert status == 200, models


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def importer() -> AsyncIterator[Importer]:
    async with running_gateway(make_settings(MOCK)) as gateway:
        await admin(gateway, "POST", "/admin/tenants", {"name": "gen"})
        yield Importer(gateway)


@pytest.mark.asyncio(loop_scope="module")
@settings(FUZZ, max_examples=60)
@given(secret=st.text(VISIBLE, min_size=16, max_size=512))
async def test_generated_visible_secrets_import_and_authenticate(
    importer: Importer, secret: str
) -> None:
    await importer.attempt(secret)


@pytest.mark.asyncio(loop_scope="module")
@settings(FUZZ, max_examples=60)
@given(
    secret=st.one_of(
        st.text(VISIBLE, max_size=15),
        st.text(VISIBLE, min_size=513, max_size=700),
        st.text(min_size=16, max_size=64).filter(lambda s: not _usable(s)),
        st.from_regex(
            r"[A-Za-z0-9_-]{5,20}\.[A-Za-z0-9_-]{5,20}\.[A-Za-z0-9_-]{0,20}", fullmatch=True
        ),
    )
)
async def test_other_secrets_are_refused_with_a_400(importer: Importer, secret: str) -> None:
    await importer.attempt(secret)
