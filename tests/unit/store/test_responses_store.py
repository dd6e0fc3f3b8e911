"""ResponseStore against real SQLite and PostgreSQL databases (the ``database_url`` fixture)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from relaygate.api.responses import parse, record, render
from relaygate.auth.principal import Principal
from relaygate.store.engine import create_engine
from relaygate.store.responses import ResponseRecord, ResponseStore

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ResponseStore]:
    engine = create_engine(database_url)
    try:
        yield ResponseStore(engine)
    finally:
        await engine.dispose()


def make(
    rid: str,
    owner: str = "ten_a",
    previous: str | None = None,
    *,
    said: str = "hi",
    answer: str = "hello",
    expires: datetime | None = NOW + timedelta(days=30),
) -> ResponseRecord:
    output = [
        {
            "id": f"msg_{rid}",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": answer, "annotations": []}],
        }
    ]
    return ResponseRecord(
        id=rid,
        owner=owner,
        tenant_id=owner if owner.startswith("ten_") else None,
        key_id="key_1",
        model="llama3",
        created_at=NOW,
        expires_at=expires,
        previous_response_id=previous,
        input_items=[{"type": "message", "role": "user", "content": said}],
        response={"id": rid, "object": "response", "output": output, "text": "é ✓"},
    )


def texts(items: list[dict[str, Any]]) -> list[str]:
    out = []
    for item in items:
        content = item["content"]
        out.append(content if isinstance(content, str) else content[0]["text"])
    return out


async def test_save_get_delete_round_trip(store: ResponseStore) -> None:
    saved = make("resp_1")
    await store.save(saved)
    got = await store.get("resp_1", "ten_a", NOW)
    assert got == saved
    assert got is not None and got.created_at.tzinfo is not None
    assert await store.delete("resp_1", "ten_a") is True
    assert await store.get("resp_1", "ten_a", NOW) is None
    assert await store.delete("resp_1", "ten_a") is False


async def test_saving_again_replaces(store: ResponseStore) -> None:
    await store.save(make("resp_1", answer="first"))
    await store.save(make("resp_1", answer="second"))
    got = await store.get("resp_1", "ten_a", NOW)
    assert got is not None and texts(got.response["output"]) == ["second"]


async def test_one_owner_never_reads_or_deletes_anothers(store: ResponseStore) -> None:
    await store.save(make("resp_a", "ten_a"))
    await store.save(make("resp_jwt", "jwt:alice"))
    assert await store.get("resp_a", "ten_b", NOW) is None
    assert await store.get("resp_a", "jwt:alice", NOW) is None
    assert await store.chain("resp_a", "ten_b", now=NOW) is None
    assert await store.delete("resp_a", "ten_b") is False
    assert await store.get("resp_a", "ten_a", NOW) is not None
    assert await store.get("resp_jwt", "ten_a", NOW) is None
    assert await store.get("resp_jwt", "jwt:bob", NOW) is None
    got = await store.get("resp_jwt", "jwt:alice", NOW)
    assert got is not None and (got.owner, got.tenant_id) == ("jwt:alice", None)
    # a continuation saved by another tenant does not reach into the first one's history
    await store.save(make("resp_b", "ten_b", previous="resp_a", said="mine"))
    assert texts(await store.chain("resp_b", "ten_b", now=NOW) or []) == ["mine", "hello"]


async def test_chain_follows_previous_response_ids_oldest_first(store: ResponseStore) -> None:
    await store.save(make("resp_1", said="u1", answer="a1"))
    await store.save(make("resp_2", previous="resp_1", said="u2", answer="a2"))
    await store.save(make("resp_3", previous="resp_2", said="u3", answer="a3"))
    assert texts(await store.chain("resp_3", "ten_a", now=NOW) or []) == [
        "u1", "a1", "u2", "a2", "u3", "a3",
    ]  # fmt: skip
    assert texts(await store.chain("resp_2", "ten_a", now=NOW) or []) == ["u1", "a1", "u2", "a2"]
    assert await store.chain("resp_9", "ten_a", now=NOW) is None
    # a deleted link ends the history there
    await store.delete("resp_2", "ten_a")
    assert texts(await store.chain("resp_3", "ten_a", now=NOW) or []) == ["u3", "a3"]


async def test_chain_is_bounded_and_keeps_the_newest_turns(store: ResponseStore) -> None:
    previous = None
    for n in range(6):
        await store.save(make(f"resp_{n}", previous=previous, said=f"u{n}", answer=f"a{n}"))
        previous = f"resp_{n}"
    history = await store.chain("resp_5", "ten_a", limit=2, now=NOW)
    assert texts(history or []) == ["u4", "a4", "u5", "a5"]
    assert len(await store.chain("resp_5", "ten_a", now=NOW) or []) == 12


async def test_a_cycle_of_links_ends(store: ResponseStore) -> None:
    await store.save(make("resp_x", previous="resp_y", said="x"))
    await store.save(make("resp_y", previous="resp_x", said="y"))
    assert texts(await store.chain("resp_x", "ten_a", now=NOW) or []) == [
        "y",
        "hello",
        "x",
        "hello",
    ]


async def test_expired_responses_are_not_read_and_are_purged(store: ResponseStore) -> None:
    await store.save(make("resp_old", expires=NOW - timedelta(seconds=1)))
    await store.save(make("resp_new", previous="resp_old", said="new"))
    await store.save(make("resp_kept", expires=None))
    assert await store.get("resp_old", "ten_a", NOW) is None
    assert texts(await store.chain("resp_new", "ten_a", now=NOW) or []) == ["new", "hello"]
    assert await store.get("resp_old", "ten_a", NOW - timedelta(days=1)) is not None

    assert await store.purge_expired(NOW) == 1
    assert await store.purge_expired(NOW) == 0
    assert await store.get("resp_old", "ten_a", NOW - timedelta(days=1)) is None
    assert await store.get("resp_new", "ten_a", NOW) is not None
    assert await store.purge_expired(NOW + timedelta(days=31)) == 1  # resp_new
    assert await store.get("resp_kept", "ten_a", NOW + timedelta(days=3650)) is not None


async def test_a_conversation_through_the_wire_format_and_the_store(store: ResponseStore) -> None:
    first = parse(b'{"model": "llama3", "input": "Pick a number."}', "r1")
    render(first, {"choices": [{"message": {"content": "Seven."}, "finish_reason": "stop"}]})
    caller = Principal("key:key_1", "key", "user", "free", key_id="key_1", tenant_id="ten_a")
    saved = record(first, caller, retention_days=30)
    assert saved is not None
    await store.save(saved)
    got = await store.get("resp_r1", "ten_a")
    assert got is not None and got.response == msgspec.to_builtins(saved.response)

    body = b'{"model": "llama3", "input": "Double it.", "previous_response_id": "resp_r1"}'
    history = await store.chain("resp_r1", "ten_a")
    assert history is not None
    second = parse(body, "r2", history)
    assert second.body["messages"] == [
        {"role": "user", "content": "Pick a number."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "Double it."},
    ]


async def test_save_many_in_one_go_and_with_an_id_already_stored(store: ResponseStore) -> None:
    await store.save_many([make("resp_a", answer="one"), make("resp_b", answer="two")])
    await store.save_many([make("resp_b", answer="two again"), make("resp_c")])  # b conflicts
    await store.save_many([])
    found = {rid: await store.get(rid, "ten_a", now=NOW) for rid in ("resp_a", "resp_b", "resp_c")}
    assert {rid: r and texts(r.response["output"]) for rid, r in found.items()} == {
        "resp_a": ["one"],
        "resp_b": ["two again"],
        "resp_c": ["hello"],
    }
