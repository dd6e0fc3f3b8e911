"""The memory tier: an LRU bounded by bytes, with expiry and invalidation."""

from __future__ import annotations

from relaygate.cache.entry import FORMAT, Entry
from relaygate.cache.memory import SLOT_OVERHEAD, MemoryTier


def entry(model: str = "m", scope: str = "t", expires: float = 100.0) -> Entry:
    return Entry(FORMAT, "chat", model, scope, 0.0, expires, None, None, {"x": 1})


def test_bytes_are_bounded_and_least_recent_goes_first() -> None:
    tier = MemoryTier(max_bytes=3 * (100 + SLOT_OVERHEAD))
    for name in "abc":
        assert tier.put(name, entry(), 100)
    assert tier.get("a", 1.0) is not None  # a is now the most recent
    tier.put("d", entry(), 100)
    assert tier.get("b", 1.0) is None
    assert {k for k in "acd" if tier.get(k, 1.0)} == set("acd")
    assert tier.bytes == 3 * (100 + SLOT_OVERHEAD) and len(tier) == 3


def test_an_entry_larger_than_the_tier_is_not_kept() -> None:
    tier = MemoryTier(max_bytes=1000)
    assert not tier.put("big", entry(), 5000)
    assert tier.bytes == 0 and len(tier) == 0


def test_expired_entries_are_dropped_on_lookup() -> None:
    tier = MemoryTier(max_bytes=10_000)
    tier.put("k", entry(expires=50.0), 10)
    assert tier.get("k", 49.0) is not None
    assert tier.get("k", 50.0) is None
    assert tier.bytes == 0


def test_invalidation_by_model_scope_or_all() -> None:
    tier = MemoryTier(max_bytes=100_000)
    tier.put("1", entry("a", "t1"), 10)
    tier.put("2", entry("a", "t2"), 10)
    tier.put("3", entry("b", "t1"), 10)
    assert tier.invalidate(model="a", scope="t1") == 1
    assert tier.invalidate(scope="t1") == 1
    assert tier.invalidate(model="a") == 1
    tier.put("4", entry(), 10)
    assert tier.invalidate() == 1 and tier.bytes == 0
