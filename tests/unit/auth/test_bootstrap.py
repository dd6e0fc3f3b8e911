"""The first admin key: created once, even when replicas start at the same moment."""

from __future__ import annotations

import asyncio

from relaygate.auth.bootstrap import ensure_admin_key
from relaygate.auth.keys import hash_secret
from relaygate.settings import load_settings
from relaygate.store.engine import create_engine
from relaygate.store.identity import IdentityStore

GIVEN = "rg_" + "k" * 43


async def _keys(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        return [k.role for k in await IdentityStore(engine).list_keys()]
    finally:
        await engine.dispose()


async def test_concurrent_starts_with_a_given_key_create_it_once(database_url: str) -> None:
    settings = load_settings(
        environ={}, overrides={"database_url": database_url, "admin_key": GIVEN}
    )
    results = await asyncio.gather(*(ensure_admin_key(settings) for _ in range(4)))
    assert results == [None] * 4  # a given key is never printed
    assert await _keys(database_url) == ["admin"]
    engine = create_engine(database_url)
    try:
        record = await IdentityStore(engine).find_by_hash(hash_secret(GIVEN))
    finally:
        await engine.dispose()
    assert record is not None and record.tier == "unlimited"


async def test_empty_database_gets_one_printed_key(database_url: str) -> None:
    settings = load_settings(environ={}, overrides={"database_url": database_url})
    first = await ensure_admin_key(settings)
    assert first is not None and first.startswith("rg_")
    assert await ensure_admin_key(settings) is None  # never again
    assert await _keys(database_url) == ["admin"]
