"""Variables the Makefile and CI set for the tests are not read as settings by mistake.

Every ``RELAYGATE_*`` variable is a setting (an unknown one stops relaygate with a
configuration error), and the test processes inherit the environment ``make test`` gives
pytest: a test-harness switch named ``RELAYGATE_E2E`` once made every ``relaygate``
subprocess in the suite refuse to start.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relaygate.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
ASSIGNMENT = re.compile(r"\b(RELAYGATE_[A-Z0-9_]+)=(\S*)")


def _assignments() -> list[tuple[str, str, str]]:
    found = []
    for name in ("Makefile", ".ci/run"):
        text = (ROOT / name).read_text()
        found += [(name, var, value) for var, value in ASSIGNMENT.findall(text)]
    return found


def test_the_scan_sees_assignments() -> None:
    assert ASSIGNMENT.findall("X=1 RELAYGATE_LOG_LEVEL=debug pytest") == [
        ("RELAYGATE_LOG_LEVEL", "debug")
    ]


@pytest.mark.parametrize(("source", "variable", "value"), _assignments() or [("-", "", "")])
def test_every_relaygate_variable_set_for_the_tests_is_a_setting(
    source: str, variable: str, value: str
) -> None:
    if not variable:
        return  # none set: nothing can be misread
    load_settings(environ={variable: value.strip("'\"")})
