"""Whole numbers written as text: a query parameter, a path segment, a header, a port.

``str.isdigit()`` is true for ``"²"``, which ``int()`` refuses, and ``int()`` refuses
more than 4300 digits: a check with the one and a conversion with the other made a 500
of ``GET /admin/usage?top=²``. Here only ASCII digits count, and not too many of them.
"""

from __future__ import annotations

__all__ = ["whole_number"]


def whole_number(text: str, max_digits: int = 18) -> int | None:
    """``text`` as a number when it is 1 to ``max_digits`` ASCII digits, else None."""
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)
