"""The model router: a virtual model name (``auto``, ``fast``, ``cheap``) that picks one
of its member models per request by a declared policy.

``cheapest``: the lowest price (input + output per million tokens; local models cost 0).
``fastest``: the lowest measured time to first byte (a member not yet measured first, so
that it gets measured). ``local_first``: members served on the operator's machines
(Ollama, a pool) before cloud ones. Under every policy, members with something healthy
to try come before those without, ties keep the configured order, and the members after
the first are its fallbacks. The response's ``x-relaygate-model`` header names the member
that answered; the usage record's deployment names it too.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

__all__ = ["POLICIES", "order_members"]

POLICIES = ("cheapest", "fastest", "local_first")


class Member(Protocol):
    """A member model (routing's ``Model``), as the policies see it."""

    @property
    def name(self) -> str: ...

    @property
    def local(self) -> bool: ...


M = TypeVar("M", bound=Member)
M_contra = TypeVar("M_contra", bound=Member, contravariant=True)


class Routes(Protocol[M_contra]):
    """What the policies ask of the router."""

    @property
    def prices(self) -> dict[str, float]: ...

    def servable(self, model: M_contra, now: float) -> bool: ...

    def latency(self, model: M_contra, now: float) -> float: ...


def order_members(policy: str, members: list[M], router: Routes[M], now: float) -> list[M]:
    """``members`` in the order ``policy`` tries them."""

    def key(index_model: tuple[int, M]) -> tuple[bool, float, int]:
        index, model = index_model
        if policy == "cheapest":
            score = 0.0 if model.local else router.prices.get(model.name, 0.0)
        elif policy == "fastest":
            score = router.latency(model, now)
        else:
            score = 0.0 if model.local else 1.0
        return (not router.servable(model, now), score, index)

    return [m for _, m in sorted(enumerate(members), key=key)]
