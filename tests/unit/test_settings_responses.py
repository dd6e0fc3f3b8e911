"""The responses section: stored by default for 30 days; both settable from the environment."""

from __future__ import annotations

import pytest

from relaygate.errors import ConfigError
from relaygate.settings import load_settings


def test_stored_for_thirty_days_by_default() -> None:
    responses = load_settings(environ={}).responses
    assert responses.store is True and responses.retention_days == 30
    assert responses.save_window == 0.05  # the keeper's window, as it was before the setting


def test_set_from_the_environment() -> None:
    env = {
        "RELAYGATE_RESPONSES__STORE": "false",
        "RELAYGATE_RESPONSES__RETENTION_DAYS": "7",
        "RELAYGATE_RESPONSES__SAVE_WINDOW": "2.5",
    }
    responses = load_settings(environ=env).responses
    assert responses.store is False and responses.retention_days == 7
    assert responses.save_window == 2.5
    kept = load_settings(environ={}, overrides={"responses": {"retention_days": None}})
    assert kept.responses.retention_days is None


@pytest.mark.parametrize(
    "bad", [{"retention_days": 0}, {"keep": True}, {"save_window": 0}, {"save_window": 61}]
)
def test_bad_values_name_the_field(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="responses"):
        load_settings(environ={}, overrides={"responses": bad})
