"""Seed 004's provider choice: default, else first usable, else the server's default."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from relaygate.vault.selection import choose, usable
from relaygate.vault.store import ConfigRow, Owner, SecretRow

NOW = datetime(2026, 11, 30, tzinfo=UTC)
ALICE = Owner("ten_1", "alice")


def secret(id_: int, *, owner: str = "alice", tenant: str = "ten_1", shared: bool = False,
           expires: datetime | None = None) -> SecretRow:  # fmt: skip
    return SecretRow(id_, tenant, owner, shared, "openai", "k", "sk-...", b"x", "f" * 16, 1,
                     NOW, NOW, expires, None)  # fmt: skip


def config(id_: int, **kw: Any) -> ConfigRow:
    values: dict[str, Any] = {
        "provider_type": "openai", "api_key_id": 1, "base_url": None, "config": {},
        "is_default": False, "is_active": True,
    }  # fmt: skip
    values.update(kw)
    return ConfigRow(id_, "ten_1", "alice", created_at=NOW, updated_at=NOW, **values)


SECRETS = {1: secret(1)}


def test_the_default_first_then_the_first_usable_then_none() -> None:
    configs = [config(1), config(2, is_default=True), config(3)]
    assert choose(configs, SECRETS, ALICE, NOW).id == 2  # type: ignore[union-attr]
    configs[1] = config(2, is_default=True, is_active=False)
    assert choose(configs, SECRETS, ALICE, NOW).id == 1  # type: ignore[union-attr]
    assert choose([config(1, is_active=False)], SECRETS, ALICE, NOW) is None
    assert choose([], SECRETS, ALICE, NOW) is None


def test_a_configuration_whose_key_is_gone_expired_or_anothers_is_skipped() -> None:
    configs = [config(1, is_default=True), config(2, api_key_id=2)]
    assert choose(configs, {}, ALICE, NOW) is None  # key deleted
    expired = {1: secret(1, expires=NOW - timedelta(seconds=1)), 2: secret(2)}
    assert choose(configs, expired, ALICE, NOW).id == 2  # type: ignore[union-attr]
    bobs = {1: secret(1, owner="bob")}
    assert not usable(configs[0], bobs, ALICE, NOW)
    other_tenant = {1: secret(1, tenant="ten_2", shared=True)}
    assert not usable(configs[0], other_tenant, ALICE, NOW)
    tenants = {1: secret(1, owner="", shared=True)}
    assert usable(configs[0], tenants, ALICE, NOW)


def test_keyless_only_for_self_hosted_types() -> None:
    assert usable(config(1, provider_type="ollama", api_key_id=None), {}, ALICE, NOW)
    assert not usable(config(1, provider_type="openai", api_key_id=None), {}, ALICE, NOW)


def test_narrowed_by_type_or_id() -> None:
    configs = [
        config(1, is_default=True),
        config(2, provider_type="ollama", api_key_id=None),
        config(3, provider_type="ollama", api_key_id=None),
    ]
    assert choose(configs, SECRETS, ALICE, NOW, "ollama").id == 2  # type: ignore[union-attr]
    assert choose(configs, SECRETS, ALICE, NOW, "3").id == 3  # type: ignore[union-attr]
    assert choose(configs, SECRETS, ALICE, NOW, "gemini") is None
    assert choose(configs, SECRETS, ALICE, NOW, "9") is None


def test_a_wanted_configuration_id_that_is_not_ascii_digits_is_a_type_name() -> None:
    """ "²" passed str.isdigit() and then int() raised: a 500 from a request header."""
    configs = [config(1), config(2, is_default=True)]
    assert choose(configs, SECRETS, ALICE, NOW, "1").id == 1  # type: ignore[union-attr]
    for wanted in ("²", "١", "9" * 5000):
        assert choose(configs, SECRETS, ALICE, NOW, wanted) is None  # no such type
