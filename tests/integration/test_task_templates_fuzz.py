"""Garbage bodies on the shipped task templates: never a 5xx, every error in OpenAI's
shape (one gateway, the mock model, for the whole module)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from hypothesis import given

from tests.conftest import MOCK
from tests.fuzz import FUZZ, SWEEP, check_answer, mutated, request, sweep
from tests.gateway import RunningGateway, make_settings, running_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

BODIES: dict[str, dict[str, Any]] = {
    "/ai/sql/assist": {"query": "users last week", "schema": "users(id)", "action": "explain"},
    "/ai/code/complete": {"code": "def f(n):\n    ", "language": "python", "max_tokens": 20},
    "/ai/chat": {"prompt": "hi", "history": [{"role": "user", "content": "a"}]},
    "/ai/tasks/suggest": {"title": "Plan", "description": "Soon"},
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[RunningGateway]:
    async with running_gateway(make_settings(MOCK)) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.mark.parametrize("path", sorted(BODIES))
async def test_valid_bodies_are_served(
    gateway: RunningGateway, session: aiohttp.ClientSession, path: str
) -> None:
    raw = msgspec.json.encode(BODIES[path])
    status, _, body = await request(session, "POST", gateway.url + path, body=raw,
                                    key=gateway.admin_key)  # fmt: skip
    assert status == 200, body
    assert msgspec.json.decode(body)["cached"] is False


@pytest.mark.parametrize("path", sorted(BODIES))
async def test_every_place_every_type(
    gateway: RunningGateway, session: aiohttp.ClientSession, path: str
) -> None:
    bodies = sweep(BODIES[path])
    assert len(bodies) >= 2 * len(SWEEP)
    for raw in bodies:
        status, headers, body = await request(
            session, "POST", gateway.url + path, body=raw, key=gateway.admin_key
        )
        check_answer(path, status, headers, body)


def _fuzz(path: str) -> Callable[..., Coroutine[Any, Any, None]]:
    @FUZZ
    @given(raw=mutated(BODIES[path]))
    async def test(gateway: RunningGateway, session: aiohttp.ClientSession, raw: bytes) -> None:
        url = gateway.url + path
        status, headers, body = await request(session, "POST", url, body=raw, key=gateway.admin_key)
        check_answer(path, status, headers, body)

    return test


test_sql_assist = _fuzz("/ai/sql/assist")
test_code_complete = _fuzz("/ai/code/complete")
test_chat = _fuzz("/ai/chat")
test_tasks_suggest = _fuzz("/ai/tasks/suggest")
