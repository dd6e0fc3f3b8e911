"""Which of a user's provider configurations serves a request (seed 004's order).

1. the user's default configuration, if it is usable;
2. else the user's first usable one (oldest first);
3. else nothing here: the caller falls back to the server's default model, and
   that, when nothing is configured, is the development model ``mock``.

A configuration is usable when it is active and its key (when its type needs one)
still exists, belongs to the user or the user's tenant, and has not expired. A
request may narrow the choice (``X-Relaygate-Provider``): to one provider type, or
to one configuration by id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from relaygate.digits import whole_number
from relaygate.vault.store import ConfigRow, Owner, SecretRow

__all__ = ["KEYLESS_TYPES", "URL_TYPES", "choose", "usable"]

# Types whose base URL the user gives (checked by the SSRF policy), and of those the
# ones that may run without a key (a home Ollama usually has none).
URL_TYPES = frozenset(("ollama", "openwebui", "openai-compatible"))
KEYLESS_TYPES = URL_TYPES


def usable(config: ConfigRow, secrets: Mapping[int, SecretRow], who: Owner, now: datetime) -> bool:
    if not config.is_active:
        return False
    if config.api_key_id is None:
        return config.provider_type in KEYLESS_TYPES
    secret = secrets.get(config.api_key_id)
    return secret is not None and secret.visible_to(who) and not secret.expired(now)


def choose(
    configs: Sequence[ConfigRow],
    secrets: Mapping[int, SecretRow],
    who: Owner,
    now: datetime,
    wanted: str | None = None,
) -> ConfigRow | None:
    """The configuration that serves the request; None: the server's default does.

    ``wanted``: a provider type or a configuration id (digits) to narrow the choice.
    """
    candidates = [c for c in configs if usable(c, secrets, who, now)]
    if wanted is not None:
        config_id = whole_number(wanted, max_digits=10)
        if config_id is not None:
            candidates = [c for c in candidates if c.id == config_id]
        else:
            candidates = [c for c in candidates if c.provider_type == wanted]
    for config in candidates:
        if config.is_default:
            return config
    return candidates[0] if candidates else None
