"""Background work in slices (slices.py): every item once, in order, with pauses between."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaygate import slices


@given(items=st.lists(st.integers(), max_size=50), size=st.integers(1, 60))
def test_parts_hold_every_item_once_in_order(items: list[int], size: int) -> None:
    parts = list(slices.parts(items, size))
    assert [i for part in parts for i in part] == items
    assert all(1 <= len(part) <= size for part in parts)
    assert len(parts) == -(-len(items) // size)


def test_the_thread_pauses_between_parts_not_around_them() -> None:
    assert list(slices.parts([1], 1)) == [[1]]
    started = time.perf_counter()
    assert list(slices.parts(list(range(5)), 1)) == [[0], [1], [2], [3], [4]]
    assert time.perf_counter() - started >= 4 * slices.GAP  # sleep never returns early


def test_a_part_holds_at_least_one_item() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(slices.parts([1, 2], 0))
