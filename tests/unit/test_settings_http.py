"""The ``http`` and ``ops`` sections: safe defaults, changeable from the file or the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaygate.errors import ConfigError
from relaygate.settings import HttpConfig, load_settings


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.http == HttpConfig(
        max_header_bytes=32768,
        max_headers=100,
        header_timeout=10.0,
        body_timeout=30.0,
        keep_alive_timeout=5.0,
        max_connections=4096,
    )
    assert settings.ops.access == "open" and settings.ops.address is None


def test_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "relaygate.yaml"
    path.write_text("http:\n  header_timeout: 3\n  max_headers: 50\nops:\n  stall_seconds: 5\n")
    env = {"RELAYGATE_HTTP__MAX_CONNECTIONS": "64", "RELAYGATE_OPS__LISTEN": "[::1]:9100"}
    settings = load_settings(path, environ=env)
    assert settings.http.header_timeout == 3 and settings.http.max_headers == 50
    assert settings.http.max_connections == 64
    assert settings.ops.stall_seconds == 5 and settings.ops.address == ("::1", 9100)
    # ":port": the main host
    assert load_settings(environ={"RELAYGATE_OPS__LISTEN": ":9100"}).ops.address == ("", 9100)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAYGATE_HTTP__HEADER_TIMEOUT": "0"}, "http.header_timeout"),
        ({"RELAYGATE_HTTP__MAX_HEADER_BYTES": "100"}, "http.max_header_bytes"),
        ({"RELAYGATE_OPS__ACCESS": "nobody"}, "ops.access"),
        ({"RELAYGATE_OPS__LISTEN": "9100"}, "ops.listen: must be host:port"),
        ({"RELAYGATE_OPS__LISTEN": "127.0.0.1:²"}, "ops.listen: must be host:port"),  # was a ValueError
        ({"RELAYGATE_OPS__LISTEN": "127.0.0.1:" + "9" * 5000}, "ops.listen: must be host:port"),
        ({"RELAYGATE_OPS__LISTEN": ":http"}, "ops.listen: must be host:port"),
        ({"RELAYGATE_OPS__STALL_SECONDS": "0.1"}, "ops.stall_seconds"),
        (
            {"RELAYGATE_OPS__LISTEN": ":9100", "RELAYGATE_OPS__ACCESS": "admin"},
            "ops.listen: cannot be combined with ops.access: admin",
        ),
        ({"RELAYGATE_OPS__LISTEN": "127.0.0.1:8000"}, "ops.listen: port 8000 is the main port"),
        (
            {"RELAYGATE_OPS__LISTEN": "127.0.0.1:0", "RELAYGATE_WORKERS": "2",
             "RELAYGATE_LIMITS__ALLOW_PER_WORKER_LIMITS": "true"},
            "ops.listen: with several workers",
        ),
    ],
)  # fmt: skip
def test_mistakes_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_settings(environ=env)
