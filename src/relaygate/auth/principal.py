"""Who is calling: the Principal a credential resolves to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from relaygate.settings import KeyCache, LimitSet

__all__ = ["Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request.

    ``subject`` identifies the caller for limits (``key:<id>``, ``jwt:<sub>``,
    ``ip:<address>``); ``limits`` are a key's own overrides of its tier.
    """

    subject: str
    kind: Literal["key", "jwt", "anonymous"]
    role: Literal["admin", "user"]
    tier: str
    key_id: str | None = None
    tenant_id: str | None = None
    tenant_tier: str | None = None
    limits: LimitSet | None = None
    cache: KeyCache | None = None  # the key's own cache settings
    expires_at: float | None = None
    user: str | None = None  # the user behind the credential: a JWT's subject, a key's user

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def owner(self) -> str | None:
        """Who owns provider secrets made with this credential (BYOK): its user, else the
        key itself; an anonymous caller owns none."""
        if self.kind == "anonymous":
            return None
        return self.user or self.subject
