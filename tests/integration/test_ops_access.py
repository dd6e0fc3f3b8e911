"""Who may read /metrics and /ready (ops.access, ops.listen), and the admin usage
filter by key id in the URL."""

from __future__ import annotations

import aiohttp

from tests.conftest import MOCK
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.integration.test_usage import rows
from tests.keys import new_key

USER = [{"role": "user", "content": "hi"}]


async def get(url: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        await response.read()
        return response.status


async def test_open_by_default(mock_gateway: RunningGateway) -> None:
    for path in ("/metrics", "/ready", "/health"):
        assert await get(mock_gateway.url + path) == 200


async def test_admin_access_needs_an_admin_key() -> None:
    async with running_gateway(make_settings(MOCK, ops={"access": "admin"})) as gateway:
        _, user = await new_key(gateway)
        for path in ("/metrics", "/ready"):
            assert await get(gateway.url + path) == 401
            assert await get(gateway.url + path, user) == 403
            assert await get(gateway.url + path, gateway.admin_key) == 200
        assert await get(gateway.url + "/health") == 200  # load balancers need no key


async def test_a_separate_ops_address_serves_them_alone() -> None:
    async with running_gateway(make_settings(MOCK, ops={"listen": "127.0.0.1:0"})) as gateway:
        assert gateway.ops_url is not None and gateway.ops_port != gateway.port
        for path in ("/metrics", "/ready"):
            assert await get(gateway.url + path, gateway.admin_key) == 404
            assert await get(gateway.ops_url + path) == 200
        assert await get(gateway.url + "/health") == 200
        assert await get(gateway.ops_url + "/health") == 200
        assert await get(gateway.url + "/v1/models", gateway.admin_key) == 200
        for path in ("/v1/models", "/admin/keys", "/api/tags"):
            assert await get(gateway.ops_url + path, gateway.admin_key) == 404


async def test_admin_usage_filters_by_key_id_in_the_url(mock_gateway: RunningGateway) -> None:
    gateway = mock_gateway
    first_id, first = await new_key(gateway, tier="unlimited")
    _, second = await new_key(gateway, tier="unlimited")
    async with gateway.client(api_key=first) as client:
        await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
    async with gateway.client(api_key=second) as client:
        for _ in range(2):
            await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
    await rows(gateway, 3)
    async with aiohttp.ClientSession(headers=gateway.headers) as session:
        url = f"{gateway.url}/admin/usage?key={first_id}&group_by=key"
        async with session.get(url) as response:
            assert response.status == 200
            report = await response.json()
        async with session.get(f"{gateway.url}/admin/usage?key={first}") as refused:
            assert refused.status == 401
            assert "in the URL" in (await refused.json())["error"]["message"]
    assert report["totals"]["requests"] == 1
    assert [row["key"] for row in report["data"]] == [first_id]
