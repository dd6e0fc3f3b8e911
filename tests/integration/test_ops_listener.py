"""The operations listener (ops.listen) answers /health, /ready and /metrics while the
worker's event loop is blocked, fails liveness once the loop has stalled for
``ops.stall_seconds`` and recovers after; with two worker processes, from the supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MOCK
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.integration.test_cli import ADMIN_KEY, AUTH, SLOW_MOCK, serving
from tests.processes import free_port

USER = [{"role": "user", "content": "hi"}]
PROVIDER_SECRET = "sk-ops-listener-test-secret-0123456789"
# A model whose upstream key must never show on the listener (it is never called).
SECRET_MODEL = {
    "name": "keyed",
    "deployments": [
        {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": PROVIDER_SECRET}
    ],
}


def fetch(url: str) -> tuple[int, bytes]:
    """A GET from a plain thread, as a probe would send it (never from the loop)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def requests_counted(text: str) -> dict[tuple[tuple[str, str], ...], float]:
    """relaygate_requests_total's samples, by their labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "relaygate_requests_total"
    }


def while_loop_blocked(work: Callable[[], Any]) -> tuple[Callable[[], None], list[Any]]:
    """Run ``work`` in a thread while this thread's event loop is held by a blocking
    call: the callback below joins the thread, so the loop runs nothing else until
    ``work`` is done (or 20 s pass)."""
    result: list[Any] = []

    def block() -> None:
        worker = threading.Thread(target=lambda: result.append(work()))
        worker.start()
        worker.join(timeout=20)  # the loop is blocked here, on purpose

    return block, result


async def chat(gateway: RunningGateway, times: int) -> None:
    async with gateway.client() as client:
        for _ in range(times):
            await client.chat.completions.create(model="mock", messages=USER)  # type: ignore[arg-type]


async def test_it_answers_while_the_loop_is_blocked() -> None:
    settings = make_settings([*MOCK, SECRET_MODEL], ops={"listen": "127.0.0.1:0"})
    async with running_gateway(settings) as gateway:
        assert gateway.ops_url is not None
        await chat(gateway, 3)
        ops = gateway.ops_url
        block, result = while_loop_blocked(
            lambda: [fetch(ops + path) for path in ("/health", "/ready", "/metrics")]
        )
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(lambda: (block(), done.set_result(None)))
        await done
        assert result, "the listener did not answer while the loop was blocked"
        (health, health_body), (ready, ready_body), (metrics, metrics_body) = result[0]
        assert (health, ready, metrics) == (200, 200, 200)
        assert msgspec.json.decode(health_body)["status"] == "ok"
        report = msgspec.json.decode(ready_body)
        assert report["status"] == "ready" and report["workers"][0]["models_ready"] >= 1
        # the same counts as the worker's own exposition
        mine = requests_counted(gateway.state.metrics.render().decode())
        assert requests_counted(metrics_body.decode()) == mine
        assert sum(mine.values()) == 3
        for body in (health_body, ready_body, metrics_body):
            assert PROVIDER_SECRET.encode() not in body
            assert gateway.admin_key.encode() not in body


async def test_liveness_fails_once_the_loop_stalls_and_recovers() -> None:
    ops_settings = {"listen": "127.0.0.1:0", "stall_seconds": 1}
    async with running_gateway(make_settings(MOCK, ops=ops_settings)) as gateway:
        assert gateway.ops_url is not None
        health = gateway.ops_url + "/health"
        assert (await asyncio.to_thread(fetch, health))[0] == 200

        def until_unhealthy() -> tuple[int, bytes]:
            for _ in range(100):  # bounded: the loop stays blocked while this polls
                status, body = fetch(health)
                if status == 503:
                    return status, body
                time.sleep(0.1)
            return status, body

        block, result = while_loop_blocked(until_unhealthy)
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(lambda: (block(), done.set_result(None)))
        await done
        status, body = result[0]
        assert status == 503
        report = msgspec.json.decode(body)
        assert report["status"] == "unhealthy"
        assert report["workers"][0]["state"] == "stalled"
        for _ in range(100):  # the loop runs again: its next tick makes it healthy
            status, body = await asyncio.to_thread(fetch, health)
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200 and msgspec.json.decode(body)["workers"][0]["state"] == "ticking"


def counted_ok(text: str) -> float:
    return sum(
        value for labels, value in requests_counted(text).items() if ("status", "200") in labels
    )


async def _ops_get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


@pytest.mark.slow
async def test_two_workers_answered_by_the_supervisor(tmp_path: Path) -> None:
    ops_port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        SLOW_MOCK.format(delay=0)
        + f"redis_url: redis://127.0.0.1:6379/0\nredis_prefix: 'rgtest:{uuid.uuid4().hex}:'\n"
        + f"ops:\n  listen: '127.0.0.1:{ops_port}'\n"
    )
    ops = f"http://127.0.0.1:{ops_port}"
    async with serving(config, "--workers", "2") as (process, url):
        async with aiohttp.ClientSession() as session:
            body = {"model": "mock", "messages": USER}
            for _ in range(10):
                async with session.post(
                    url + "/v1/chat/completions", json=body, headers=AUTH
                ) as response:
                    assert response.status == 200
            assert (await _ops_get(session, url + "/metrics"))[0] == 404
            for _ in range(100):  # both workers' heartbeats, and both counts, arrive
                health, ready, metrics = [
                    await _ops_get(session, ops + path)
                    for path in ("/health", "/ready", "/metrics")
                ]
                counted = counted_ok(metrics[1])
                states = [w["state"] for w in msgspec.json.decode(health[1]).get("workers", [])]
                if health[0] == ready[0] == 200 and counted == 10 and states == ["ticking"] * 2:
                    break
                await asyncio.sleep(0.1)
        assert (health[0], ready[0], metrics[0]) == (200, 200, 200)
        assert counted == 10
        workers = msgspec.json.decode(health[1])["workers"]
        assert len(workers) == 2 and {w["state"] for w in workers} == {"ticking"}
        assert process.pid not in {w["pid"] for w in workers}  # the workers, not the master
        assert "relaygate_worker_last_tick_timestamp_seconds" in metrics[1]
        for text in (health[1], ready[1], metrics[1]):
            assert ADMIN_KEY not in text

        # A worker killed: the supervisor starts another; the listener follows the new
        # pid, and the dead one's live series leave /metrics.
        dead = workers[0]["pid"]
        os.kill(dead, signal.SIGKILL)
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                health = await _ops_get(session, ops + "/health")
                pids = {w["pid"] for w in msgspec.json.decode(health[1])["workers"]}
                metrics = await _ops_get(session, ops + "/metrics")
                if health[0] == 200 and dead not in pids and f'pid="{dead}"' not in metrics[1]:
                    break
                await asyncio.sleep(0.1)
        assert health[0] == 200 and len(pids) == 2 and dead not in pids
        assert f'pid="{dead}"' not in metrics[1]
        assert counted_ok(metrics[1]) == 10  # counters of the dead worker are kept
