"""No admin body reaches a 500, and what the admin API accepts cannot break a key later.

Every route with a body gets generated bodies (a valid one with one value anywhere in it
replaced, added or removed; extremes, NaN/Infinity, unpaired surrogates, NUL, RTL). Each
key the API accepts, or changes, is then used: an inference request and GET /usage with
it must not fail either (a budget of 1e308 once made every request with its key a 500).
One gateway for the module, on PostgreSQL (whose text refuses NUL) and Redis limits
(whose Lua arithmetic is double precision).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from hypothesis import given

from tests.conftest import MOCK, PG_SERVER, admin_sql
from tests.fuzz import FUZZ, SWEEP, check_answer, mutated, request, sweep
from tests.gateway import RunningGateway, make_settings, running_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMITS = {
    "requests_per_minute": 1000,
    "requests_per_hour": 10_000,
    "requests_per_month": 100_000,
    "tokens_per_minute": 1_000_000,
    "tokens_per_month": 10**9,
    "max_concurrent": 10,
    "budget_per_month": 100.0,
}
KEY_CREATE: dict[str, Any] = {
    "tenant_id": "fuzz",
    "name": "fuzzed",
    "description": "a key made by a property test",
    "role": "user",
    "tier": "pro",
    "limits": LIMITS,
    "expires_in_days": 30,
    "metadata": {"team": "qa", "tags": ["a", {"b": 1}]},
    "cache": {"enabled": True, "ttl": 60},
}
KEY_PATCH: dict[str, Any] = {
    "enabled": True,
    "tier": "pro",
    "limits": LIMITS,
    "expires_at": "2099-01-01T00:00:00Z",
    "name": "patched",
    "description": "changed by a property test",
    "role": "user",
    "metadata": {"team": "qa"},
    "cache": {"ttl": 30},
}
# An imported secret: the first import succeeds, repeats are 409s, mutated secrets 400s
# or new keys; each key it makes is then used with the secret that was sent.
KEY_IMPORT: dict[str, Any] = {
    **KEY_CREATE,
    "secret": "vpn_2hrUOubvcBqlrysKkGOe4CBv5_sTi7QEgNLhp7S2WrI",
}
TENANT_CREATE = {"name": "fuzz-new", "tier": "pro"}
TENANT_PATCH = {"name": "fuzz-renamed", "tier": "pro"}
SEED_CREATE_KEY = {
    "tenant_id": "fuzz-seed",
    "tier": "free",
    "description": "seed 001",
    "expires_in_days": 30,
    "name": "seed",
}
SEED_API_KEY = {
    "name": "seed 003",
    "role": "user",
    "rate_limit": 100,
    "tier": "free",
    "tenant_id": "fuzz-seed",
    "description": "seed 003",
    "expires_in_days": 30,
}
CHAT = msgspec.json.encode({"model": "mock", "messages": [{"role": "user", "content": "hi"}]})


class Admin:
    """The running gateway, a client session, and a key and tenant the PATCH tests change."""

    def __init__(self, gateway: RunningGateway, session: aiohttp.ClientSession) -> None:
        self.gateway = gateway
        self.session = session
        self.key_id = ""
        self.secret = ""
        self.tenant_id = ""

    async def call(self, method: str, path: str, body: bytes | None = None) -> Any:
        """An admin call whose answer must pass; the body when it succeeded, else None."""
        status, headers, raw = await request(
            self.session, method, self.gateway.url + path, body=body, key=self.gateway.admin_key
        )
        check_answer(path, status, headers, raw)
        return msgspec.json.decode(raw) if status < 300 else None

    async def use(self, secret: str) -> None:
        """The key works, or is refused with a 4xx: never a 5xx, for inference or /usage."""
        url = self.gateway.url
        for method, path, body in (
            ("POST", "/v1/chat/completions", CHAT),
            ("POST", "/api/chat", CHAT),
            ("GET", "/usage", None),
        ):
            status, headers, raw = await request(
                self.session, method, url + path, body=body, key=secret
            )
            check_answer(path, status, headers, raw)


@pytest.fixture(scope="module")
def postgres_url(postgres_template: str) -> Iterator[str]:
    name = f"rg_test_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin(postgres_url: str) -> AsyncIterator[Admin]:
    settings = make_settings(
        MOCK,
        database_url=postgres_url,
        redis_url="redis://127.0.0.1:6379/0",
        redis_prefix=f"rgtest:{uuid.uuid4().hex}:",
    )
    async with running_gateway(settings) as gateway, aiohttp.ClientSession() as session:
        fixture = Admin(gateway, session)
        tenant = await fixture.call("POST", "/admin/tenants", b'{"name": "fuzz"}')
        created = await fixture.call("POST", "/admin/keys", msgspec.json.encode(KEY_CREATE))
        fixture.tenant_id = tenant["id"]
        fixture.key_id, fixture.secret = created["key"]["id"], created["api_key"]
        yield fixture


def _fuzz_creation(path: str, valid: dict[str, Any]) -> Any:
    """POST ``path`` with generated bodies; every key it issues is then used."""

    @FUZZ
    @given(raw=mutated(valid))
    async def test(admin: Admin, raw: bytes) -> None:
        created = await admin.call("POST", path, raw)
        if created is not None and "api_key" in created:
            await admin.use(created["api_key"])
        elif created is not None and created.get("imported"):
            await admin.use(msgspec.json.decode(raw)["secret"])

    return test


test_admin_create_key = _fuzz_creation("/admin/keys", KEY_CREATE)
test_admin_import_key = _fuzz_creation("/admin/keys/import", KEY_IMPORT)
test_seed_create_key = _fuzz_creation("/auth/create-key", SEED_CREATE_KEY)
test_seed_api_keys = _fuzz_creation("/api/keys", SEED_API_KEY)
test_admin_create_tenant = _fuzz_creation("/admin/tenants", TENANT_CREATE)


@FUZZ
@given(raw=mutated(KEY_PATCH))
async def test_admin_patch_key(admin: Admin, raw: bytes) -> None:
    if await admin.call("PATCH", f"/admin/keys/{admin.key_id}", raw) is not None:
        await admin.use(admin.secret)


@FUZZ
@given(raw=mutated(TENANT_PATCH))
async def test_admin_patch_tenant(admin: Admin, raw: bytes) -> None:
    """The tenant of the module's key: its tier's limits then apply to that key too."""
    if await admin.call("PATCH", f"/admin/tenants/{admin.tenant_id}", raw) is not None:
        await admin.use(admin.secret)


async def test_key_bodies_every_place_every_type(admin: Admin) -> None:
    """Each value of a key's body, at every depth, replaced in turn by one of each JSON type,
    the extremes and an unpaired surrogate; whatever is accepted is then used."""
    bodies = sweep(KEY_PATCH)
    assert len(bodies) >= 9 * len(SWEEP)
    for raw in bodies:
        try:
            if await admin.call("PATCH", f"/admin/keys/{admin.key_id}", raw) is not None:
                await admin.use(admin.secret)
        except AssertionError as exc:
            raise AssertionError(f"{raw.decode(errors='replace')}: {exc}") from None


@pytest.mark.parametrize(
    "query",
    [
        "from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z",
        "from=0001-01-01T00:00:00%2B01:00",
        "to=9999-12-31T23:59:59-01:00",
        "from=99999w",
        "key=%00&tenant=%F0%9F%98%80&model=%E2%80%AEx",
    ],
)
async def test_usage_filters_at_the_edges_of_time(admin: Admin, query: str) -> None:
    """The usage report on PostgreSQL: dates at the ends of the calendar, odd ids."""
    for path in ("/admin/usage", "/admin/usage/export.csv"):
        status, headers, raw = await request(
            admin.session, "GET", f"{admin.gateway.url}{path}?{query}", key=admin.gateway.admin_key
        )
        check_answer(path, status, headers, raw)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/admin/cache?model=%00"),
        ("DELETE", "/admin/cache?tenant=%00"),
        ("DELETE", "/admin/cache?model=%F0%9F%98%80%E2%80%AE"),
        ("GET", "/admin/keys?tenant_id=%00"),
        ("GET", "/admin/keys/%00"),
        ("GET", "/admin/tenants/%00"),
        ("GET", "/api/keys/%00"),
        ("GET", "/v1/models/%00"),
        ("GET", "/admin/usage?model=%00&endpoint=%00&tenant=%00&key=%00"),
        ("GET", "/admin/usage/export.csv?model=%00"),
    ],
)
async def test_nul_and_odd_text_in_paths_and_queries(admin: Admin, method: str, path: str) -> None:
    """PostgreSQL cannot compare text with NUL: such a name is simply not found, not a 5xx."""
    url = admin.gateway.url + path
    status, headers, raw = await request(admin.session, method, url, key=admin.gateway.admin_key)
    check_answer(path.split("?")[0], status, headers, raw)
