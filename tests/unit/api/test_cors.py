"""The CORS policy's answer to a preflight's Access-Control-Request-Headers."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.api.cors import ALLOW_HEADERS, CORS
from relaygate.settings import CorsConfig

APP = "https://app.example.com"


def listed(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",") if part.strip()}


header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,30}", fullmatch=True)


@settings(max_examples=200)
@given(names=st.lists(header_names | st.sampled_from([*ALLOW_HEADERS, "X-Stainless-OS"]), max_size=12),
       spaces=st.sampled_from([",", ", ", " ,"]))  # fmt: skip
def test_allowed_headers_are_exactly_the_requested_allowed_ones(
    names: list[str], spaces: str
) -> None:
    """Whatever a browser asks for, the answer lists exactly the asked-for headers that are
    allowed (built-in, configured, or x-stainless-*), and nothing else."""
    policy = CORS(CorsConfig(allow_origins=[APP], allow_headers=["X-Tenant"]), _never)
    answer = listed(policy.allowed_headers(spaces.join(names).encode()).decode())
    allowed = {*ALLOW_HEADERS, "x-tenant"}
    expected = {
        n.lower() for n in names if n.lower() in allowed or n.lower().startswith("x-stainless-")
    }
    assert answer == expected


async def _never(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("a preflight never reaches the routes")
