"""Background work in slices (slices.py): every item once, in order."""

from __future__ import annotations

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
    assert list(slices.paced(items)) == items


def test_a_part_holds_at_least_one_item() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(slices.parts([1, 2], 0))
