"""Passive health, exactly: what one deployment's counters, cooldowns and state say."""

from __future__ import annotations

from relaygate.routing.health import Health
from relaygate.settings import RoutingConfig

NOW = 1_000.0


def health(**policy: float) -> Health:
    values = {"failure_threshold": 2, "cooldown": 5.0, "max_cooldown": 1e9, **policy}
    return Health(RoutingConfig(**values))  # type: ignore[arg-type]


def test_states_are_named_exactly() -> None:
    h = health()
    assert h.state(NOW) == "healthy"
    h.record_failure(NOW, "boom")
    assert h.state(NOW) == "degraded"
    h.record_failure(NOW, "boom")
    assert h.state(NOW) == "cooling_down"
    assert h.state(NOW + 5) == "degraded"  # eligible again, not yet proven
    h.record_success()
    assert h.state(NOW + 5) == "healthy"


def test_last_error_is_kept_until_a_success() -> None:
    h = health()
    h.record_failure(NOW, "first")
    h.record_failure(NOW, "second")
    assert h.last_error == "second"
    h.record_success()
    assert h.last_error == "" and h.failures == 0


def test_each_ejection_doubles_the_cooldown_and_a_success_starts_over() -> None:
    h = health(failure_threshold=1)
    cooldowns = []
    for _ in range(4):
        h.record_failure(NOW, "boom")
        cooldowns.append(h.cooldown_until - NOW)
    assert cooldowns == [5.0, 10.0, 20.0, 40.0]
    assert h.ejections == 4
    h.record_success()
    assert h.ejections == 0
    h.record_failure(NOW, "boom")
    assert h.cooldown_until - NOW == 5.0  # back to the base cooldown


def test_the_doubling_stops_at_two_to_the_sixteenth() -> None:
    h = health(failure_threshold=1, cooldown=1.0)
    h.ejections = 20
    h.failures = 5
    h.record_failure(NOW, "boom")
    assert h.cooldown_until - NOW == 2.0**16


def test_max_cooldown_and_retry_after_bound_the_wait() -> None:
    h = health(failure_threshold=1, max_cooldown=30.0)
    h.ejections = 10
    h.record_failure(NOW, "boom")
    assert h.cooldown_until == NOW + 30.0
    told = health(max_cooldown=30.0)
    told.record_failure(NOW, "429", retry_after=7.0)
    assert told.cooldown_until == NOW + 7.0 and told.ejections == 0
    told.record_failure(NOW, "429", retry_after=3600.0)
    assert told.cooldown_until == NOW + 30.0
