"""Tier 1: an in-process LRU of decoded entries, bounded by their encoded size.

A hit costs a dict lookup: nothing is decoded. Each worker has its own;
invalidations reach the others through Redis pub/sub (see response.py).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from relaygate.cache.entry import Entry

__all__ = ["MemoryTier"]

SLOT_OVERHEAD = 256  # bytes charged per entry beyond its encoded size: key, slot, dict


@dataclass(slots=True)
class _Slot:
    entry: Entry
    size: int


class MemoryTier:
    """Least recently used entries are dropped first once ``max_bytes`` is reached."""

    name = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._slots: OrderedDict[str, _Slot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, key: str, now: float) -> Entry | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        if slot.entry.expires <= now:
            self.drop(key)
            return None
        self._slots.move_to_end(key)
        return slot.entry

    def put(self, key: str, entry: Entry, size: int) -> bool:
        """Keep ``entry``; False when it alone is larger than the whole tier."""
        size += SLOT_OVERHEAD
        if size > self.max_bytes:
            return False
        self.drop(key)
        self._slots[key] = _Slot(entry, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._slots.popitem(last=False)
            self.bytes -= evicted.size
        return True

    def drop(self, key: str) -> None:
        slot = self._slots.pop(key, None)
        if slot is not None:
            self.bytes -= slot.size

    def invalidate(self, model: str | None = None, scope: str | None = None) -> int:
        """Drop every entry, or those of one model and/or one scope; returns how many."""
        doomed = [
            key
            for key, slot in self._slots.items()
            if (model is None or slot.entry.model == model)
            and (scope is None or slot.entry.scope == scope)
        ]
        for key in doomed:
            self.drop(key)
        return len(doomed)
