"""Every settings error that comes from a RELAYGATE_* variable names that variable."""

from __future__ import annotations

import typing
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.errors import ConfigError
from relaygate.settings import Settings, load_settings


def _leaves(struct: type[msgspec.Struct], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The path of every scalar setting reachable through nested sections."""
    hints = typing.get_type_hints(struct, include_extras=True)
    out: list[tuple[str, ...]] = []
    for field in msgspec.structs.fields(struct):
        kind = typing.get_origin(hints[field.name]) or hints[field.name]
        if field.name in ("models", "config_path", "prometheus_multiproc_dir"):
            continue
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            out += _leaves(kind, (*prefix, field.name))
        else:
            out.append((*prefix, field.name))
    return out


LEAVES = _leaves(Settings)
# mappings whose keys are the user's own names: RELAYGATE_TRACING__HEADERS__X_TEAM=ops is one
FREE_KEYS = {("tracing", "headers")}
SECTIONS = sorted({leaf[:-1] for leaf in LEAVES})
KNOWN = {leaf[-1] for leaf in LEAVES} | {s[-1] for s in SECTIONS if s}
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(
    lambda n: n not in KNOWN and "__" not in n and not n.endswith("_")
)


def variable(path: tuple[str, ...]) -> str:
    return "RELAYGATE_" + "__".join(path).upper()


def error_of(environ: dict[str, str]) -> ConfigError | None:
    try:
        load_settings(environ=environ)
    except ConfigError as exc:
        return exc
    return None


@settings(max_examples=150, deadline=None)
@given(section=st.sampled_from(SECTIONS), name=NAMES, value=st.text(max_size=20))
def test_an_unknown_variable_is_named(section: tuple[str, ...], name: str, value: str) -> None:
    var = variable((*section, name))
    exc = error_of({var: value})
    assert exc is not None
    assert str(exc).startswith(f"environment variable {var}: ")
    assert "unknown setting" in str(exc)


@settings(max_examples=200, deadline=None)
@given(leaf=st.sampled_from(LEAVES), value=st.text(max_size=30), extra=st.none() | NAMES)
def test_a_bad_value_or_a_name_below_a_setting_is_named(
    leaf: tuple[str, ...], value: str, extra: str | None
) -> None:
    """Any value either loads or fails naming its variable; a name below a scalar fails
    (below a mapping of the user's own names, it is a key)."""
    path = leaf if extra is None else (*leaf, extra)
    var = variable(path)
    exc = error_of({var: value})
    if exc is None:
        assert extra is None or leaf in FREE_KEYS
        return
    assert str(exc).startswith(f"environment variable {var}: "), str(exc)


@settings(max_examples=100, deadline=None)
@given(name=st.from_regex(r"[A-Za-z0-9_\-.]{0,20}", fullmatch=True), value=st.text(max_size=10))
def test_a_malformed_name_is_named(name: str, value: str) -> None:
    var = "RELAYGATE_" + name
    exc = error_of({var: value, "RELAYGATE_PORT": "8001"})
    if exc is not None:
        assert str(exc).startswith(f"environment variable {var}: "), str(exc)


def test_the_issue_example_names_the_variable_and_suggests_the_right_one() -> None:
    exc = error_of({"RELAYGATE_PROT": "9000"})
    assert str(exc) == (
        "environment variable RELAYGATE_PROT: prot: unknown setting; did you mean RELAYGATE_PORT?"
    )


def test_a_dict_entry_from_the_environment_is_named_with_its_key() -> None:
    exc = error_of({"RELAYGATE_TIERS__GOLD__REQUESTS_PER_HOUR": "many"})
    assert str(exc) == (
        "environment variable RELAYGATE_TIERS__GOLD__REQUESTS_PER_HOUR: "
        "tiers.gold.requests_per_hour: Expected `int | null`, got `str`"
    )


def test_a_rule_broken_by_the_environment_is_named() -> None:
    exc = error_of({"RELAYGATE_WORKERS": "2"})
    assert str(exc).startswith("environment variable RELAYGATE_WORKERS: workers: 2 workers")


def test_file_errors_keep_their_line_and_command_line_overrides_are_not_blamed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "relaygate.yaml"
    path.write_text("routing:\n  max_attempts: 0\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"RELAYGATE_PORT": "8001"})
    assert str(caught.value).startswith(f"{path}:2: routing.max_attempts: ")
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RELAYGATE_WORKERS": "1"}, overrides={"workers": 2})
    assert "RELAYGATE_WORKERS" not in str(caught.value)
