"""Whole numbers from text: ASCII digits only, bounded, and never an exception."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relaygate.digits import whole_number

# Text that str.isdigit() accepts and int() refuses or reads as something else
TRAPS = ["²", "¹²", "٣", "١٢", "𝟗", "9" * 5000, "+1", "-1", " 1", "1 ", "1_000", "", "0x1"]


@given(st.one_of(st.text(), st.sampled_from(TRAPS)), st.integers(1, 30))
def test_any_text_is_a_number_of_ascii_digits_or_none(text: str, max_digits: int) -> None:
    found = whole_number(text, max_digits)
    plain = text.isascii() and text.isdigit() and 0 < len(text) <= max_digits
    assert (found is not None) == plain
    if found is not None:
        assert found >= 0 and int(text) == found


@given(st.integers(0, 10**18 - 1))
def test_a_number_written_out_is_read_back(number: int) -> None:
    assert whole_number(str(number)) == number
    assert whole_number(str(number), max_digits=len(str(number)) - 1) is None


def test_the_traps_are_not_numbers() -> None:
    assert [t for t in TRAPS if whole_number(t) is not None] == []
