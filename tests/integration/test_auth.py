"""Authentication on /v1: one clear 401 for every bad credential, never a hint of which keys exist."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import MOCK
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key

USER = [{"role": "user", "content": "hi"}]
BODY = {"model": "mock", "messages": USER}
DENIED = "Missing or invalid credentials"


async def call(
    gateway: RunningGateway, headers: dict[str, str] | list[tuple[str, str]], query: str = ""
) -> tuple[int, dict[str, Any], Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gateway.url + "/v1/chat/completions" + query, json=BODY, headers=headers
        ) as response:
            return response.status, await response.json(), response.headers


async def test_user_key_works_by_bearer_and_x_api_key(mock_gateway: RunningGateway) -> None:
    _, secret = await new_key(mock_gateway)
    assert secret.startswith("rg_") and len(secret) >= 3 + 43
    async with mock_gateway.client(api_key=secret) as client:
        reply = await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    status, _, _ = await call(mock_gateway, {"X-API-Key": secret})
    assert status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer rg_doesnotexist000000000000000000000000000000000"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer a b"},
        {"Authorization": "rg_nobearer"},
        {"Authorization": "Bearer ' OR 1=1 --"},
        {"X-API-Key": "' OR '1'='1"},
        {"Authorization": "Bearer " + "A" * 8000},
        {"X-API-Key": "rg_" + "é" * 10},
    ],
)
async def test_bad_credentials_are_one_401(
    mock_gateway: RunningGateway, headers: dict[str, str]
) -> None:
    status, body, response_headers = await call(mock_gateway, headers)
    assert status == 401
    assert body["error"]["type"] == "authentication_error"
    assert response_headers["WWW-Authenticate"].startswith("Bearer")


async def test_unknown_disabled_expired_keys_look_the_same(mock_gateway: RunningGateway) -> None:
    store = mock_gateway.state.identity
    disabled_id, disabled = await new_key(mock_gateway)
    await store.update_key(disabled_id, {"enabled": False})
    _, expired = await new_key(mock_gateway, expires_at=datetime.now(UTC) - timedelta(minutes=1))
    messages = set()
    for secret in (disabled, expired, "rg_" + "x" * 43):
        status, body, _ = await call(mock_gateway, {"Authorization": f"Bearer {secret}"})
        assert status == 401
        messages.add(body["error"]["message"])
    assert len(messages) == 1 and DENIED in messages.pop()


async def test_two_different_credentials_refused(mock_gateway: RunningGateway) -> None:
    _, a = await new_key(mock_gateway)
    _, b = await new_key(mock_gateway)
    status, body, _ = await call(mock_gateway, [("Authorization", f"Bearer {a}"), ("X-API-Key", b)])
    assert status == 401 and "one credential" in body["error"]["message"]
    status, _, _ = await call(
        mock_gateway, [("Authorization", f"Bearer {a}"), ("Authorization", f"Bearer {b}")]
    )
    assert status == 401
    status, _, _ = await call(mock_gateway, [("Authorization", f"Bearer {a}"), ("X-API-Key", a)])
    assert status == 200  # the same key twice is not ambiguous


async def test_key_in_query_string_refused(mock_gateway: RunningGateway) -> None:
    _, secret = await new_key(mock_gateway)
    for name in ("api_key", "key", "token"):
        status, body, _ = await call(mock_gateway, {}, f"?{name}={secret}")
        assert status == 401 and "in the URL are refused" in body["error"]["message"]


async def test_revoked_key_stops_after_the_change_poll(mock_gateway: RunningGateway) -> None:
    """Refused once the gateway's poll (every POLL_FAST, 0.5 s) sees the change; how soon is
    the poll interval's business, so the loop below bounds tries, generously, not time."""
    from relaygate.auth.authenticator import POLL_FAST

    assert POLL_FAST <= 1.0
    key_id, secret = await new_key(mock_gateway)
    assert (await call(mock_gateway, {"X-API-Key": secret}))[0] == 200
    # Changed in the database behind the gateway's back (as another replica or the CLI
    # would): the gateway's poll must notice.
    await mock_gateway.state.identity.revoke_key(key_id)
    for _ in range(500):
        if (await call(mock_gateway, {"X-API-Key": secret}))[0] == 401:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("revoked key still accepted after 500 tries")


async def test_models_need_a_key_too(mock_gateway: RunningGateway) -> None:
    async with mock_gateway.client(api_key="rg_wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()


async def test_anonymous_when_enabled_is_free_tier_by_ip() -> None:
    settings = make_settings(
        MOCK,
        auth={"anonymous": True, "anonymous_tier": "tiny", "trusted_proxies": ["127.0.0.1/32"]},
        tiers={"tiny": {"requests_per_hour": 2}},
    )
    async with running_gateway(settings) as gateway:
        results = [(await call(gateway, {"X-Forwarded-For": "203.0.113.7"}))[0] for _ in range(3)]
        assert results == [200, 200, 429]
        # another client address (as told by the trusted proxy) has its own window
        assert (await call(gateway, {"X-Forwarded-For": "203.0.113.8"}))[0] == 200
        # a forged left-hand entry does not buy a new window
        forged = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
        assert (await call(gateway, forged))[0] == 429


async def test_forwarded_for_ignored_from_untrusted_peer() -> None:
    settings = make_settings(
        MOCK,
        auth={"anonymous": True, "anonymous_tier": "tiny"},
        tiers={"tiny": {"requests_per_hour": 1}},
    )
    async with running_gateway(settings) as gateway:
        assert (await call(gateway, {"X-Forwarded-For": "203.0.113.1"}))[0] == 200
        assert (await call(gateway, {"X-Forwarded-For": "203.0.113.2"}))[0] == 429


async def test_revocation_reaches_other_gateways_through_redis(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gateways, one database, one Redis: revoked on one, refused by the other at once."""
    import uuid

    # The safety-net poll never comes: a refusal can only be the published message.
    monkeypatch.setattr("relaygate.auth.authenticator.POLL_WITH_PUBSUB", 3600.0)

    from tests.gateway import make_settings as settings_for

    shared = settings_for(
        MOCK, redis_url="redis://127.0.0.1:6379/0", redis_prefix=f"rgtest:{uuid.uuid4().hex}:"
    )
    async with running_gateway(shared) as a, running_gateway(shared) as b:
        key_id, secret = await new_key(a)
        assert (await call(b, {"X-API-Key": secret}))[0] == 200  # b has it cached now
        await a.state.identity.revoke_key(key_id)
        await a.state.keys_changed([key_id])  # what the admin API and CLI do
        for _ in range(500):
            if (await call(b, {"X-API-Key": secret}))[0] == 401:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("gateway b still accepts the revoked key after 500 tries")


async def test_cached_key_is_not_read_again_and_first_reads_are_shared(
    mock_gateway: RunningGateway,
) -> None:
    """The database sees one lookup per key: not one per poll, not one per concurrent request."""
    from sqlalchemy import event

    lookups: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "key_hash" in statement and statement.lstrip().upper().startswith("SELECT"):
            lookups.append(statement)

    engine = mock_gateway.state.engine.sync_engine
    _, secret = await new_key(mock_gateway)
    event.listen(engine, "before_cursor_execute", count)
    try:
        statuses = await asyncio.gather(
            *(call(mock_gateway, {"X-API-Key": secret}) for _ in range(20))
        )
        assert [s for s, _, _ in statuses] == [200] * 20
        assert len(lookups) == 1  # twenty first requests, one read
        await asyncio.sleep(1.3)  # two change polls
        for _ in range(5):
            assert (await call(mock_gateway, {"X-API-Key": secret}))[0] == 200
        assert len(lookups) == 1  # unchanged key: never read again
    finally:
        event.remove(engine, "before_cursor_execute", count)
