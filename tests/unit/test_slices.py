"""Background work in slices (slices.py): every item once, in order."""

from __future__ import annotations

import time
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaygate import slices

FAST = mock.patch.object(slices, "contended_s", lambda: 0.001)  # 2 ms pauses are contended


@given(items=st.lists(st.integers(), max_size=50), size=st.integers(1, 60))
def test_parts_hold_every_item_once_in_order(items: list[int], size: int) -> None:
    """Never contended: parts of ``size`` (a real yield on a busy machine can take a
    switch interval, which the test of contention below covers)."""
    with mock.patch.object(slices, "_yield", lambda: None):
        parts = list(slices.parts(items, size))
    assert [i for part in parts for i in part] == items
    assert all(1 <= len(part) <= size for part in parts)
    assert len(parts) == -(-len(items) // size)


def test_a_part_holds_at_least_one_item() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(slices.parts([1, 2], 0))


@given(
    items=st.lists(st.integers(), max_size=2000),
    size=st.integers(1, 10),
    waits=st.lists(st.booleans(), max_size=10),
)
def test_parts_grow_once_a_yield_waits_for_the_gil(
    items: list[int], size: int, waits: list[bool]
) -> None:
    """A yield that took most of a switch interval waited for the GIL: the work goes on
    in parts CONTENDED_SCALE times larger, without pauses (slices.py)."""
    pauses = iter(waits)

    def pause() -> None:
        if next(pauses, False):
            time.sleep(0.002)

    with mock.patch.object(slices, "_yield", pause), FAST:
        parts = list(slices.parts(items, size))
    expected: list[list[int]] = []
    start, drawn, contended = 0, iter(waits), False
    while start < len(items):
        if start and not contended:
            contended = next(drawn, False)
        step = size * slices.CONTENDED_SCALE if contended else size
        expected.append(items[start : start + step])
        start += step
    assert [list(part) for part in parts] == expected
    assert [i for part in parts for i in part] == items


def test_a_pacer_stops_pausing_once_contended() -> None:
    calls: list[int] = []

    def pause() -> None:
        calls.append(1)
        time.sleep(0.002)

    pacer = slices.Pacer()
    with mock.patch.object(slices, "_yield", pause), FAST:
        pacer.pause()
        pacer.pause()
    assert pacer.contended and len(calls) == 1
    fresh = slices.Pacer()
    with mock.patch.object(slices, "_yield", lambda: None):
        fresh.pause()
    assert not fresh.contended
