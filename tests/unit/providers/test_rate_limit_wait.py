"""How long a 429'd upstream asks to be left alone, from the headers it sends."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from relaygate.providers.base import rate_limit_wait


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({}, None),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-requests": "20ms"}, 0.02),
        ({"x-ratelimit-reset-tokens": "1h2m3.5s"}, 3723.5),
        ({"x-ratelimit-reset-requests": "2"}, 2.0),
        # the limit that ran out decides; without remaining counts, the longer wait
        (
            {
                "x-ratelimit-reset-requests": "1s",
                "x-ratelimit-reset-tokens": "30s",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-remaining-tokens": "900",
            },
            1.0,
        ),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "30s"}, 30.0),
        ({"x-ratelimit-reset-requests": "soon"}, None),
        ({"x-ratelimit-reset-requests": "5sx"}, None),
        ({"x-ratelimit-reset-requests": "inf"}, None),
        ({"retry-after-ms": "nan"}, None),
        ({"x-ratelimit-reset-requests": "99999h"}, 86400.0),
    ],
)
def test_rate_limit_wait(headers: dict[str, str], wait: float | None) -> None:
    found = rate_limit_wait(CIMultiDict(headers))
    assert found == pytest.approx(wait) if wait is not None else found is None


header_values = st.one_of(
    st.text(max_size=20),
    st.from_regex(r"\A(\d{1,4}(\.\d{1,3})?(ms|h|m|s)){1,3}\Z"),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "-5", "0", "0"]),
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "retry-after-ms",
                "x-ratelimit-reset-requests",
                "x-ratelimit-reset-tokens",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-remaining-tokens",
            ]
        ),
        header_values,
    )
)
def test_any_headers_give_a_finite_bounded_wait_or_none(headers: dict[str, str]) -> None:
    wait = rate_limit_wait(CIMultiDict(headers))
    assert wait is None or (math.isfinite(wait) and 0 <= wait <= 86400)
