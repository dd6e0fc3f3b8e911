"""Passive health: a deployment that keeps failing is cooled down, then tried again.

After ``failure_threshold`` consecutive failures (connect error, timeout, 5xx)
the deployment is skipped for ``cooldown`` seconds, doubling with each further
ejection up to ``max_cooldown``. When the cooldown ends it is eligible again;
one more failure ejects it at once, one success resets it. A 429 with
Retry-After cools it down for that long. Health is kept per worker process.

The last failure is kept twice: its class (``timeout_connect``, ``status_5xx``,
``protocol`` ...: bounded, shown by the open ``/ready``) and its scrubbed text
(shown only in the admin view ``GET /admin/deployments`` and the log).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from relaygate.settings import RoutingConfig

__all__ = ["Health"]


@dataclass(slots=True)
class Health:
    """Consecutive-failure counter and cooldown deadline of one deployment."""

    policy: RoutingConfig
    failures: int = 0
    ejections: int = 0
    cooldown_until: float = 0.0
    last_error: str = ""  # scrubbed upstream text: admin view and log only
    last_error_kind: str = ""  # a bounded class, fit for /ready and metric labels
    last_error_at: float | None = None  # wall-clock time (epoch seconds)

    def available(self, now: float) -> bool:
        return now >= self.cooldown_until

    def record_success(self) -> None:
        if self.failures:
            self.failures = 0
            self.ejections = 0
            self.last_error = ""
            self.last_error_kind = ""
            self.last_error_at = None

    def record_failure(
        self,
        now: float,
        reason: str,
        retry_after: float | None = None,
        *,
        kind: str = "error",
        at: float | None = None,
    ) -> None:
        """One failure at monotonic ``now``: ``reason`` must already be scrubbed."""
        self.failures += 1
        self.last_error = reason
        self.last_error_kind = kind
        self.last_error_at = time.time() if at is None else at
        if retry_after is not None:
            self.cooldown_until = now + min(retry_after, self.policy.max_cooldown)
        elif self.failures >= self.policy.failure_threshold:
            delay = self.policy.cooldown * (2 ** min(self.ejections, 16))
            self.cooldown_until = now + min(delay, self.policy.max_cooldown)
            self.ejections += 1

    def state(self, now: float) -> str:
        if not self.available(now):
            return "cooling_down"
        return "degraded" if self.failures else "healthy"
