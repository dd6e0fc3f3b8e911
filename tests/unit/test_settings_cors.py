"""The cors section: origins validated and normalised as browsers send them; '*' refused
with credentials; closed by default."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.errors import ConfigError
from relaygate.settings import load_settings


def test_closed_by_default() -> None:
    cors = load_settings(environ={}).cors
    assert cors.allow_origins == [] and not cors.allow_credentials and cors.max_age == 600


def test_wildcard_with_credentials_is_refused_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "relaygate.yaml"
    path.write_text(
        "cors:\n  allow_credentials: true\n  allow_origins:\n    - https://a.example\n    - '*'\n"
    )
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert str(error.value).startswith(f"{path}:5: cors.allow_origins[1]: '*' (any origin)")
    assert "allow_credentials" in str(error.value)


def test_wildcard_without_credentials_is_accepted() -> None:
    cors = load_settings(environ={}, overrides={"cors": {"allow_origins": ["*"]}}).cors
    assert cors.allow_origins == ["*"]


@pytest.mark.parametrize(
    ("origin", "says"),
    [
        ("app.example.com", "not a valid origin"),
        ("ftp://app.example.com", "not a valid origin"),
        ("https://", "not a valid origin"),
        ("https://app.example.com/chat", "has more than an origin"),
        ("https://app.example.com?x=1", "has more than an origin"),
        ("https://*.example.com", "has more than an origin"),
        ("https://user@app.example.com", "not a valid origin"),
        ("https://app.example.com:99999", "not a valid origin"),
        ("null", "not a valid origin"),
    ],
)
def test_bad_origins_are_refused(origin: str, says: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(environ={}, overrides={"cors": {"allow_origins": [origin]}})
    assert "cors.allow_origins[0]: " in str(error.value) and says in str(error.value)


def test_origins_from_the_environment_are_a_comma_list() -> None:
    env = {"RELAYGATE_CORS__ALLOW_ORIGINS": "https://a.example, http://localhost:5173"}
    assert load_settings(environ=env).cors.allow_origins == [
        "https://a.example",
        "http://localhost:5173",
    ]


def test_bad_extra_header_names_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"cors.allow_headers\[0\]"):
        load_settings(environ={}, overrides={"cors": {"allow_headers": ["x bad"]}})


hosts = st.from_regex(
    r"[a-zA-Z][a-zA-Z0-9-]{0,20}(\.[a-zA-Z][a-zA-Z0-9-]{0,10}){0,3}", fullmatch=True
)


@settings(max_examples=150)
@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "Https"]),
    host=hosts,
    port=st.none() | st.integers(1, 65535),
    slash=st.booleans(),
)
def test_origins_are_normalised_as_browsers_send_them(
    scheme: str, host: str, port: int | None, slash: bool
) -> None:
    """A browser's Origin is lower case and omits the scheme's default port; configured
    origins are stored that way, so `https://App.example.com:443/` matches."""
    written = f"{scheme}://{host}{'' if port is None else f':{port}'}{'/' if slash else ''}"
    cors = load_settings(environ={}, overrides={"cors": {"allow_origins": [written]}}).cors
    lower = scheme.lower()
    default = {"http": 80, "https": 443}[lower]
    shown_port = "" if port in (None, default) else f":{port}"
    assert cors.allow_origins == [f"{lower}://{host.lower()}{shown_port}"]
