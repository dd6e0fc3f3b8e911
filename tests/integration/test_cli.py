"""The relaygate command, run as users run it: a real process on a real port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.processes import free_port, wait_ready

RELAYGATE = [sys.executable, "-m", "relaygate"]
ADMIN_KEY = "rg_test-admin-key-0123456789abcdefghijklmnopqrstuvwxyz"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
SLOW_MOCK = """\
discover_ollama: []
models:
  - name: mock
    deployments:
      - provider: mock
        chunk_delay: {delay}
"""


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RELAYGATE, *args], capture_output=True, text=True, timeout=30,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("relaygate 0.")


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout and "config" in result.stdout


def test_config_check_prints_table_with_secrets_masked(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n  - name: gpt-4o-mini\n    deployments:\n      - provider: openai\n"
        "        base_url: https://user:pw@api.example.com/v1\n        api_key: ${KEY}\n"
    )
    result = run("config", "check", str(path), env={"KEY": "sk-secret-value-1234567890abcd"})
    assert result.returncode == 0, result.stderr
    assert "gpt-4o-mini" in result.stdout and "openai" in result.stdout
    assert "****abcd" in result.stdout
    assert "sk-secret" not in result.stdout and "pw@" not in result.stdout


def test_config_check_error_exit_2_one_message(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  - name: a\n    deployments:\n      - provider: ollama\n")
    result = run("config", "check", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"relaygate: configuration error: {path}:4: "
        "models[0].deployments[0].base_url: required for provider 'ollama'"
    ]


def test_config_check_says_where_spans_go_and_never_a_header_value(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("tracing:\n  enabled: true\n  sample_ratio: 0.25\n")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://u:pw@otel.example:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20tok-8812",
        "OTEL_SERVICE_NAME": "gw",
    }
    result = run("config", "check", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert (
        "tracing: spans of service gw to https://****@otel.example:4318/v1/traces" in result.stdout
    )
    assert "(sampled 0.25), headers authorization" in result.stdout
    assert "tok-8812" not in result.stdout and "pw@" not in result.stdout
    result = run("config", "check", str(path), env={"OTEL_EXPORTER_OTLP_ENDPOINT": "otel:4318"})
    assert result.returncode == 2 and "OTEL_EXPORTER_OTLP_ENDPOINT" in result.stderr


def test_several_workers_without_redis_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("workers: 2\n")
    result = run("config", "check", str(path))
    assert result.returncode == 2
    assert "workers: 2 workers without redis_url" in result.stderr


def test_serve_with_bad_config_exits_2_and_listens_nowhere(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("port: 8000\nbogus: 1\n")
    port = free_port()
    result = run("serve", "--config", str(path), "--port", str(port))
    assert result.returncode == 2
    assert f"{path}:2: bogus: unknown setting" in result.stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


@asynccontextmanager
async def serving(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``relaygate serve`` on a free port, its database beside ``config``; ``env`` adds to
    (or overrides) the environment."""
    port = free_port()
    environment = {
        **os.environ,
        "RELAYGATE_DATABASE_URL": f"sqlite+aiosqlite:///{config.parent / 'relaygate.db'}",
        "RELAYGATE_ADMIN_KEY": ADMIN_KEY,
        **(env or {}),
    }
    process = await asyncio.create_subprocess_exec(
        *RELAYGATE, "serve", "--config", str(config), "--port", str(port), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True, env=environment,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url)
        yield process, url
    finally:
        await stop(process)


async def stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM as an operator would; the whole process group is killed only if that fails."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 15)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    if process.stdout is not None:
        await process.stdout.read()


@pytest.mark.slow
async def test_sigterm_lets_open_stream_finish(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(SLOW_MOCK.format(delay=0.1))
    async with serving(config) as (process, url), aiohttp.ClientSession() as session:
        body = {"model": "mock", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        async with session.post(url + "/v1/chat/completions", json=body, headers=AUTH) as response:
            first = await response.content.readline()
            assert first.startswith(b"data: ")
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            port = int(url.rsplit(":", 1)[1])
            with pytest.raises(OSError):  # no longer accepting while it drains
                await asyncio.open_connection("127.0.0.1", port)
            rest = await response.content.read()
        assert rest.rstrip().endswith(b"data: [DONE]")
        # uvicorn re-raises the signal once drained, so supervisors see a SIGTERM exit
        assert await asyncio.wait_for(process.wait(), 10) in (0, -signal.SIGTERM)
        output = (await process.stdout.read()).decode() if process.stdout else ""
        assert "Traceback" not in output and "ERROR" not in output


@pytest.mark.slow
async def test_two_workers_share_metrics(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        SLOW_MOCK.format(delay=0)
        + f"redis_url: redis://127.0.0.1:6379/0\nredis_prefix: 'rgtest:{uuid.uuid4().hex}:'\n"
    )
    async with serving(config, "--workers", "2") as (_, url), aiohttp.ClientSession() as session:
        body = {"model": "mock", "messages": [{"role": "user", "content": "x"}]}
        for _ in range(40):
            async with session.post(
                url + "/v1/chat/completions", json=body, headers=AUTH
            ) as response:
                assert response.status == 200
        # A new connection lands on either worker; each must report the total of both.
        # (A request is counted just after its response is sent, and a worker hands its
        # counts over every 0.25 s: allow a moment.)
        for _ in range(4):
            for _ in range(50):
                count = await _requests_ok(url)
                if count == 40:
                    break
                await asyncio.sleep(0.02)
            assert count == 40


async def _requests_ok(url: str) -> float:
    async with aiohttp.ClientSession() as fresh, fresh.get(url + "/metrics") as response:
        text = await response.text()
    line = next(
        (ln for ln in text.splitlines()
         if ln.startswith("relaygate_requests_total{") and 'status="200"' in ln),
        None,
    )  # fmt: skip
    # None: the worker that served them has not flushed its tallies yet (0.25 s at most)
    return 0.0 if line is None else float(line.rsplit(" ", 1)[1])


@pytest.mark.slow
async def test_first_start_prints_an_admin_key_once(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(SLOW_MOCK.format(delay=0))
    env = {**os.environ, "RELAYGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"}
    env.pop("RELAYGATE_ADMIN_KEY", None)
    outputs = []
    for _ in range(2):
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            *RELAYGATE, "serve", "--config", str(config), "--port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            lines = []
            while not any("Uvicorn running" in line for line in lines):
                line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
                assert line, "".join(lines)
                lines.append(line)
            outputs.append("".join(lines))
            key = next((ln.strip() for ln in lines if ln.strip().startswith("rg_")), None)
            if key:
                async with aiohttp.ClientSession() as session:
                    body = {"model": "mock", "messages": [{"role": "user", "content": "x"}]}
                    async with session.post(
                        f"http://127.0.0.1:{port}/v1/chat/completions",
                        json=body,
                        headers={"Authorization": f"Bearer {key}"},
                    ) as response:
                        assert response.status == 200
        finally:
            await stop(process)
    assert "shown only this once" in outputs[0]
    assert "shown only this once" not in outputs[1] and "rg_" not in outputs[1]


async def test_cryptography_is_loaded_only_with_a_secret_key(tmp_path: Path) -> None:
    """A gateway without RELAYGATE_SECRET_KEY never loads ``cryptography`` (~8.7 MiB of
    RSS a process, vault/crypto.py); one with a key does, to open what it stores."""
    from relaygate.vault.crypto import new_key

    config = tmp_path / "c.yaml"
    config.write_text(SLOW_MOCK.format(delay=0))

    async def loaded(env: dict[str, str]) -> bool:
        async with serving(config, env=env) as (process, _):
            maps = await asyncio.to_thread(Path(f"/proc/{process.pid}/maps").read_text)
        return "/cryptography/" in maps

    without = {k: v for k, v in os.environ.items() if k != "RELAYGATE_SECRET_KEY"}
    assert not await loaded({**without, "RELAYGATE_SECRET_KEY": ""})
    assert await loaded({"RELAYGATE_SECRET_KEY": new_key()})
