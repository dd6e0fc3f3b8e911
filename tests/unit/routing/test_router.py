"""Weighted choice among healthy deployments, cooldown after repeated failure, fallbacks."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from relaygate.errors import ModelNotFound, NoHealthyDeployment
from relaygate.providers.mock import MockProvider
from relaygate.routing.health import Health
from relaygate.routing.router import Deployment, Model, Router
from relaygate.settings import RoutingConfig, Timeouts

POLICY = RoutingConfig(max_attempts=3, failure_threshold=2, cooldown=5, max_cooldown=20)


def deployment(name: str, weight: float = 1.0) -> Deployment:
    return Deployment(
        name=name, model=name.split("#")[0], provider=MockProvider(), provider_name="mock",
        upstream_model="m", weight=weight, timeouts=Timeouts(), health=Health(POLICY),
    )  # fmt: skip


def test_weights_share_the_first_pick() -> None:
    a, b = deployment("m#1", 1), deployment("m#2", 3)
    router = Router([Model("m", [a, b])], POLICY)
    firsts = Counter(next(router.plan("m")).name for _ in range(4000))
    assert firsts["m#2"] / 4000 == pytest.approx(0.75, abs=0.04)


def test_plan_tries_each_deployment_once_then_fallbacks_bounded() -> None:
    a, b = deployment("m#1"), deployment("m#2")
    c, d = deployment("f#1"), deployment("f#2")
    router = Router([Model("m", [a, b], fallbacks=["f"]), Model("f", [c, d])], POLICY)
    plan = [dep.name for dep in router.plan("m")]
    assert len(plan) == 3  # max_attempts
    assert sorted(plan[:2]) == ["m#1", "m#2"]
    assert plan[2] in ("f#1", "f#2")


def test_cooldown_after_threshold_and_recovery() -> None:
    a, b = deployment("m#1"), deployment("m#2")
    router = Router([Model("m", [a, b])], POLICY)
    now = time.monotonic()
    a.health.record_failure(now, "boom")
    assert a.health.available(now)  # one failure is not enough
    a.health.record_failure(now, "boom")
    assert not a.health.available(now)
    assert [d.name for d in router.plan("m")] == ["m#2"]
    # cooldown doubles per ejection, capped
    assert a.health.cooldown_until == pytest.approx(now + 5)
    a.health.record_failure(now + 6, "again")
    assert a.health.cooldown_until == pytest.approx(now + 6 + 10)
    a.health.record_success()
    assert a.health.failures == 0 and a.health.state(now + 100) == "healthy"


def test_retry_after_cools_down_for_that_long() -> None:
    a = deployment("m")
    now = time.monotonic()
    a.health.record_failure(now, "429", retry_after=7)
    assert not a.health.available(now + 6.9) and a.health.available(now + 7)
    a.health.record_failure(now, "429", retry_after=3600)
    assert a.health.cooldown_until == pytest.approx(now + 20)  # capped by max_cooldown


def test_all_cooling_down_is_no_healthy_deployment() -> None:
    a = deployment("m")
    router = Router([Model("m", [a])], POLICY)
    a.health.cooldown_until = time.monotonic() + 30
    with pytest.raises(NoHealthyDeployment) as error:
        list(router.plan("m"))
    assert error.value.status == 503
    assert "retry in 30 s" in error.value.message


def test_unknown_model() -> None:
    router = Router([], POLICY)
    with pytest.raises(ModelNotFound):
        router.get("x")
