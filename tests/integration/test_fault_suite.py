"""The fault suite: every failure docs/faults.md lists, as a client and the usage table see it.

Each fault is produced for real on loopback (a refused port, a scripted fake upstream that
is slow, silent, failing, rate-limited or resets its connection, a private redis-server
killed, PostgreSQL behind a proxy that is cut, a gateway process sent SIGTERM) and asked
about in OpenAI's, Anthropic's and Ollama's wire formats, streaming and not. Each test
checks what the client got (status, error shape, the stream's end) and that every request
left exactly one usage record, with the status that says what happened to it.

Every model below exists once per (API, streaming) case, so one case's failures never
change another's deployment health.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st

from relaygate.settings import Settings
from tests.conftest import closed_port_url
from tests.fakes.blackhole import Blackhole
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.redis_server import RedisServer
from tests.fakes.script import Script
from tests.fakes.tcp_proxy import TcpProxy
from tests.gateway import RunningGateway, Templates, make_settings, running_gateway
from tests.keys import new_key
from tests.processes import free_port, wait_ready
from tests.usage_rows import records_by_request
from tests.wire import APIS, PATHS, PROMPT, Answer, ask, request_body

CASES = list(itertools.product(APIS, (False, True)))
ECHO = f"Echo: {PROMPT}"
# Timeouts of the deployments whose timeouts are the fault (as short as other tests use);
# every other deployment keeps the defaults, so a loaded machine cannot fail it.
SHORT = {"first_byte": 0.3, "idle": 0.3, "total": 0.6}
SLOW = 3.0  # a fake's delay that every timeout above expires first


def case_id(api: str, stream: bool) -> str:
    return f"{api}-{'stream' if stream else 'whole'}"


def deployment(base_url: str, timeouts: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "provider": "openai",
        "base_url": base_url,
        **({"timeouts": timeouts} if timeouts else {}),
    }


def per_case(prefix: str, *deployments: dict[str, Any]) -> list[dict[str, Any]]:
    """One model per case, tried in the order given (``order: preference``)."""
    return [
        {"name": f"{prefix}-{case_id(*case)}", "order": "preference", "deployments": [*deployments]}
        for case in CASES
    ]


def settings_for(models: list[dict[str, Any]], **overrides: Any) -> Settings:
    # Health counts every failure but never ejects on a count here: each request must
    # meet its own fault, not an earlier request's cooldown (Retry-After still cools).
    overrides.setdefault("routing", {"failure_threshold": 1000})
    return make_settings(models, **overrides)


async def ask_every_case(
    gateway: RunningGateway, prefix: str, key: str | None = None
) -> dict[tuple[str, bool], Answer]:
    """Each case once, in order, against its own model ``<prefix>-<case>``."""
    answers = {}
    async with aiohttp.ClientSession() as session:
        for api, stream in CASES:
            model = f"{prefix}-{case_id(api, stream)}"
            answers[api, stream] = await ask(
                session, gateway.url, key or gateway.admin_key, api, model, stream
            )
    return answers


ANTHROPIC_TYPES = {429: "rate_limit_error", 502: "api_error", 503: "overloaded_error",
                   504: "timeout_error"}  # fmt: skip


def assert_error(answer: Answer, status: int, fragment: str, code: str | None = None) -> None:
    """An error answer before anything was sent: ``status``, and the API's error shape."""
    assert answer.status == status, (answer.api, answer.stream, answer.raw)
    error = answer.error()
    assert fragment in error["message"], error
    assert "127.0.0.1" not in error["message"]  # upstream addresses stay internal
    if answer.api == "openai":
        assert error["code"] == code
    if answer.api == "anthropic":
        assert error["type"] == ANTHROPIC_TYPES[status]


def assert_answered(answer: Answer) -> None:
    assert answer.status == 200, (answer.api, answer.stream, answer.raw)
    assert answer.text() == ECHO
    if answer.stream:
        assert answer.completed()


def assert_one_record_each(
    records: dict[str, Any], answers: list[Answer], **fields: Any
) -> list[Any]:
    """Each answer's request has its record, with ``fields``; returns them."""
    found = [records[a.request_id] for a in answers]
    for row in found:
        assert {name: getattr(row, name) for name in fields} == fields, row
    return found


# -- before the first byte: connect refused, first-byte timeout, 5xx, 429 ------------------


@dataclass(frozen=True)
class Before:
    """A failure before the first byte, and what a client gets when it has no way around."""

    upstream: str  # "refused" (nothing listens), "blackhole" (SYNs dropped) or "fake"
    script: Script | None  # how the fake fails
    timeouts: dict[str, float] | None
    status: int
    message: str
    code: str  # OpenAI's error code
    recorded: str  # the usage record's status


PRE_FIRST_BYTE = {
    "connect_refused": Before("refused", None, None, 503,
                              "is unreachable (connection refused)", "upstream_unreachable",
                              "upstream_error"),
    "connect_timeout": Before("blackhole", None, {"connect": 0.3}, 504, "Timed out connecting",
                              "upstream_timeout", "timeout"),
    # a stream's first_byte expires; a whole answer's total (nothing comes before it)
    "first_byte_timeout": Before("fake", Script(first_byte_delay=SLOW), SHORT, 504,
                                 "timed out", "upstream_timeout", "timeout"),
    "5xx": Before("fake", Script(status=500, error_message="CUDA out of memory"), None, 502,
                  "answered 500: CUDA out of memory", "upstream_status", "upstream_error"),
}  # fmt: skip


@pytest.mark.parametrize("fault", list(PRE_FIRST_BYTE))
async def test_failure_before_the_first_byte(fake_openai: FakeOpenAI, fault: str) -> None:
    """Alone, the deployment's failure is the client's error; with a second deployment the
    client never sees it: the next deployment answers. One record per request either way."""
    before = PRE_FIRST_BYTE[fault]
    with Blackhole() as hole:
        where = {
            "refused": closed_port_url(),
            "blackhole": hole.url(),
            "fake": fake_openai.base_url,
        }
        failing = deployment(where[before.upstream], before.timeouts)
        if before.script is not None:
            fake_openai.default = before.script
        async with FakeOpenAI() as healthy:
            models = [*per_case("solo", failing),
                      *per_case("pair", failing, deployment(healthy.base_url))]  # fmt: skip
            settings = settings_for(models)
            async with running_gateway(settings) as gateway:
                alone = await ask_every_case(gateway, "solo")
                failed_over = await ask_every_case(gateway, "pair")
    records = await records_by_request(settings.database_url)
    for answer in alone.values():
        assert_error(answer, before.status, before.message, before.code)
    for answer in failed_over.values():
        assert_answered(answer)
    assert len(healthy.requests) == len(CASES)  # each failed-over request, once
    if before.script is not None:
        assert len(fake_openai.requests) == 2 * len(CASES)  # each failed once, never again
    assert len(records) == 2 * len(CASES)
    for (api, stream), answer in alone.items():
        (row,) = assert_one_record_each(
            records, [answer], status=before.recorded, http_status=before.status,
            provider="openai", deployment=f"solo-{case_id(api, stream)}",
        )  # fmt: skip
        # nothing came back: the prompt is estimated, as for any answer without usage
        assert (row.prompt_tokens, row.completion_tokens, row.tokens_estimated) == (4, 0, True)
    for (api, stream), answer in failed_over.items():
        (row,) = assert_one_record_each(
            records, [answer], status="ok", http_status=200,
            deployment=f"pair-{case_id(api, stream)}#2",
        )  # fmt: skip
        assert not row.tokens_estimated and row.completion_tokens == 5  # the fake's usage


async def test_429_with_retry_after(fake_openai: FakeOpenAI) -> None:
    """Alone: the 429 and its Retry-After reach the client, and the deployment rests that
    long, so the next request is a 503 with the time left, made without calling it. With a
    second deployment: it answers, and the rate-limited one is left alone meanwhile."""
    async with FakeOpenAI() as healthy:
        models = [*per_case("solo", deployment(fake_openai.base_url)),
                  *per_case("pair", deployment(fake_openai.base_url),
                            deployment(healthy.base_url))]  # fmt: skip
        settings = settings_for(models)
        fake_openai.default = Script(status=429, retry_after="30", error_message="slow down")
        async with running_gateway(settings) as gateway:
            limited = await ask_every_case(gateway, "solo")
            resting = await ask_every_case(gateway, "solo")
            failed_over = await ask_every_case(gateway, "pair")
            again = await ask_every_case(gateway, "pair")
            async with aiohttp.ClientSession() as session:
                async with session.get(gateway.url + "/ready") as response:
                    ready = await response.json()
        records = await records_by_request(settings.database_url)
    for answer in limited.values():
        assert_error(answer, 429, "answered 429: slow down", "upstream_rate_limited")
        assert answer.headers["retry-after"] == "30"
    for answer in resting.values():
        assert_error(answer, 503, "No healthy deployment", "no_healthy_deployment")
        assert 28 <= int(answer.headers["retry-after"]) <= 30
    for answer in [*failed_over.values(), *again.values()]:
        assert_answered(answer)
    # each rate-limited deployment was called once: its Retry-After was honoured
    assert len(fake_openai.requests) == 2 * len(CASES)
    assert len(healthy.requests) == 2 * len(CASES)
    for case in CASES:
        states = [d["state"] for d in ready["models"][f"pair-{case_id(*case)}"]["deployments"]]
        assert states == ["cooling_down", "healthy"]
    assert len(records) == 4 * len(CASES)
    assert_one_record_each(
        records, list(limited.values()), status="upstream_error", http_status=429
    )
    assert_one_record_each(
        records, list(resting.values()), status="upstream_error", http_status=503
    )
    assert_one_record_each(
        records, [*failed_over.values(), *again.values()], status="ok", http_status=200
    )


# -- after the first byte: idle timeout, reset mid-stream ---------------------------------

MID_STREAM = {
    # fault: (script, its timeouts, record status, http_status recorded, message)
    "idle_timeout": (Script(stall_after=2), SHORT, "timeout", 504,
                     "timed out waiting for the next chunk"),
    "reset": (Script(reset_after=2), None, "upstream_error", 502,
              "closed the connection mid-response"),
}  # fmt: skip


@pytest.mark.parametrize("fault", list(MID_STREAM))
async def test_failure_mid_stream(fake_openai: FakeOpenAI, fault: str) -> None:
    """Once the first chunk is out, a failure ends the stream with one error event in the
    API's shape, is never retried on the second deployment, and is recorded with the
    tokens relayed so far."""
    script, timeouts, status, http_status, fragment = MID_STREAM[fault]
    fake_openai.default = script
    async with FakeOpenAI() as other:
        models = per_case(
            "mid", deployment(fake_openai.base_url, timeouts), deployment(other.base_url)
        )
        settings = settings_for(models)
        async with running_gateway(settings) as gateway, aiohttp.ClientSession() as session:
            answers = []
            for api in APIS:
                model = f"mid-{case_id(api, True)}"
                answers.append(await ask(session, gateway.url, gateway.admin_key, api, model, True))
        records = await records_by_request(settings.database_url)
    assert other.requests == []
    for answer in answers:
        assert answer.text() == "Echo: tell", answer.raw  # the two chunks sent before
        error = answer.stream_error()
        assert fragment in error["message"]
        if answer.api == "anthropic":
            assert error["type"] == ANTHROPIC_TYPES[http_status]
    assert len(records) == len(answers)
    rows = assert_one_record_each(
        records, answers, status=status, http_status=http_status, tokens_estimated=True
    )
    assert all(row.completion_tokens >= 2 and row.ttft_ms is not None for row in rows)


# -- what a failed request costs its quota -----------------------------------------------


ENDINGS = {
    # how a request to model "up" ends: the fake's script (model "down" refuses)
    "5xx": Script(status=500),
    "upstream 400": Script(status=400, error_message="context length exceeded"),
    "reset mid-stream": Script(reset_after=2),  # a whole answer is simply answered
    "answered": Script(),
}
REQUESTS = st.tuples(st.sampled_from(["refused", *ENDINGS]), st.sampled_from(APIS), st.booleans())


@hypothesis.settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=st.lists(REQUESTS, min_size=1, max_size=4))
@example(plan=[("refused", "openai", False), ("5xx", "openai", False),
               ("reset mid-stream", "openai", True), ("answered", "openai", False)])  # fmt: skip
async def test_any_mix_of_failures_costs_a_quota_what_the_records_say(
    fake_openai: FakeOpenAI, plan: list[tuple[str, str, bool]]
) -> None:
    """A token quota reserves the worst case at admission; whatever then happens, the
    quota is charged what the request's usage record says it used (the upstream's count,
    else the estimate): never the reservation of a request that got nothing."""
    models = [
        {"name": "down", "deployments": [deployment(closed_port_url())]},
        {"name": "up", "deployments": [deployment(fake_openai.base_url)]},
    ]
    settings = settings_for(models, tiers={"metered": {"tokens_per_month": 1_000_000}})
    fake_openai.push(*[ENDINGS[ending] for ending, _, _ in plan if ending != "refused"])
    async with running_gateway(settings) as gateway, aiohttp.ClientSession() as session:
        _, key = await new_key(gateway, tier="metered")
        answers = [
            await ask(session, gateway.url, key, api, "down" if e == "refused" else "up", stream)
            for e, api, stream in plan
        ]
        async with session.get(
            gateway.url + "/usage", headers={"Authorization": f"Bearer {key}"}
        ) as response:
            used = (await response.json())["tokens_per_month"]["used"]
    records = await records_by_request(settings.database_url)
    assert fake_openai.pending == 0
    assert len(records) == len(answers)
    rows = assert_one_record_each(records, answers)
    assert used == sum(r.prompt_tokens + r.completion_tokens for r in rows)


# -- Redis stopped ------------------------------------------------------------------------


@pytest.mark.parametrize("fail_closed", [False, True], ids=["fail-open", "fail-closed"])
async def test_redis_stopped(redis_server: RedisServer, fail_closed: bool) -> None:
    """Limits live in Redis; it is killed, one stream still running. Fail open: every
    request is served (limited per process); fail closed: each is a 503 in its API's shape,
    recorded as rejected. The stream that was running finishes either way."""
    models = [*per_case("m", {"provider": "mock", "chunk_delay": 0.05}), SLOW_MOCK]
    settings = settings_for(
        models, redis_url=redis_server.url, tiers={"ten": {"requests_per_hour": 100}},
        limits={"fail_closed": fail_closed, "redis_timeout": 0.2},
    )  # fmt: skip
    async with running_gateway(settings) as gateway, aiohttp.ClientSession() as session:
        _, key = await new_key(gateway, tier="ten")
        running = asyncio.ensure_future(ask(session, gateway.url, key, "openai", "slow", True))
        await _first_chunk_sent(gateway)
        await redis_server.kill()
        assert not running.done()
        during = await running
        answers = await ask_every_case(gateway, "m", key)
    records = await records_by_request(settings.database_url)
    assert during.status == 200 and during.completed()
    assert len(records) == 1 + len(CASES)
    assert_one_record_each(records, [during], status="ok", http_status=200)
    if fail_closed:
        for answer in answers.values():
            assert_error(answer, 503, "limit store is unreachable", "limits_unavailable")
        assert_one_record_each(records, list(answers.values()), status="rejected", http_status=503)
    else:
        for answer in answers.values():
            assert answer.status == 200 and (not answer.stream or answer.completed())
        assert_one_record_each(records, list(answers.values()), status="ok", http_status=200)


# a word every 0.2 s (two seconds in all): still running when the fault comes
SLOW_MOCK = {"name": "slow", "deployments": [{"provider": "mock", "chunk_delay": 0.2}]}


async def _first_chunk_sent(gateway: RunningGateway) -> None:
    """Wait until a stream is in flight (its request counted in progress)."""
    for _ in range(200):
        gateway.state.metrics.flush()  # the request tallies, as render() does
        if gateway.state.metrics.registry.get_sample_value(
            "relaygate_in_flight_requests", {"api": "openai"}
        ):
            await asyncio.sleep(0.1)  # past admission, relaying chunks
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the stream did not start")


# -- PostgreSQL stopped -------------------------------------------------------------------


async def test_postgresql_stopped(postgres_database: str) -> None:
    """The database goes away (its connections reset, new ones refused). A key already
    known keeps working, streams included, and its records wait in the outbox until the
    database is back; a key not seen yet gets a 503 in its API's shape (authentication
    could not finish, so no record)."""
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{postgres_database}"
    models = [*per_case("m", {"provider": "mock", "chunk_delay": 0.05}), SLOW_MOCK]
    settings = settings_for(models, database_url=url)
    try:
        async with running_gateway(settings) as gateway, aiohttp.ClientSession() as session:
            _, known = await new_key(gateway)
            _, unseen = await new_key(gateway)
            warm = await ask(session, gateway.url, known, "openai", "m-openai-whole", False)
            running = asyncio.ensure_future(
                ask(session, gateway.url, known, "openai", "slow", True)
            )
            await _first_chunk_sent(gateway)
            await proxy.cut()
            assert not running.done()
            during = await running
            answers = await ask_every_case(gateway, "m", known)
            refused = [
                await ask(session, gateway.url, unseen, api, f"m-{api}-whole", False)
                for api in APIS
            ]
            await proxy.restore()  # before shutdown: the writer drains the outbox
    finally:
        await proxy.close()
    records = await records_by_request(
        f"postgresql+asyncpg://postgres@127.0.0.1:5432/{postgres_database}"
    )
    assert warm.status == 200 and during.status == 200 and during.completed()
    for answer in answers.values():
        assert_answered_mock(answer)
    for answer in refused:
        assert_error(answer, 503, "key store is unreachable", "store_unavailable")
    assert len(records) == 2 + len(CASES)  # none for the refused: never authenticated
    assert_one_record_each(records, [warm, during, *answers.values()], status="ok", http_status=200)


def assert_answered_mock(answer: Answer) -> None:
    assert answer.status == 200, answer.raw
    assert answer.text()
    if answer.stream:
        assert answer.completed()


# -- SIGTERM mid-stream -------------------------------------------------------------------


@asynccontextmanager
async def gateway_process(
    tmp_path: Path, upstream: str, drain: float
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, str, str]]:
    """``relaygate serve`` as an operator runs it, model ``m`` at ``upstream``:
    (the process, its URL, its admin key, its database URL)."""
    database = tmp_path / "relaygate.db"
    assert Templates.sqlite is not None
    await asyncio.to_thread(shutil.copyfile, Templates.sqlite, database)
    config = tmp_path / "relaygate.yaml"
    config.write_text(
        "discover_ollama: []\n"
        "models:\n  - name: m\n    deployments:\n"
        f"      - {{provider: openai, base_url: '{upstream}'}}\n"
        f"graceful_shutdown_seconds: {drain}\n"
        "cache: {enabled: false}\n"  # identical streams each go upstream
        f"usage: {{outbox_dir: '{tmp_path / 'outbox'}', fsync_window: 0.05}}\n"
    )
    admin = "rg_" + "s" * 43
    url = f"sqlite+aiosqlite:///{database}"
    env = {**os.environ, "RELAYGATE_DATABASE_URL": url, "RELAYGATE_ADMIN_KEY": admin}
    port = free_port()
    with (tmp_path / "gateway.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relaygate", "serve", "--config", str(config),
            "--port", str(port), env=env, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        await wait_ready(f"http://127.0.0.1:{port}")
        yield process, f"http://127.0.0.1:{port}", admin, url
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def open_stream(
    session: aiohttp.ClientSession, url: str, key: str, api: str
) -> tuple[aiohttp.ClientResponse, bytes]:
    """A stream in ``api``'s format, opened until its first line has arrived."""
    headers = {"x-api-key": key} if api == "anthropic" else {"Authorization": f"Bearer {key}"}
    response = await session.post(
        url + PATHS[api], json=request_body(api, "m", True), headers=headers
    )
    first = await response.content.readline()
    assert response.status == 200 and first.strip(), (response.status, first)
    return response, first


async def read_rest(api: str, response: aiohttp.ClientResponse, first: bytes) -> Answer:
    """The rest of a stream; fails if the connection is cut before the stream's end."""
    received = [first]
    try:
        while data := await response.content.readany():
            received.append(data)
    except aiohttp.ClientPayloadError:
        cut = b"".join(received)[-300:]
        raise AssertionError(f"{api}: the stream was cut off: {cut!r}") from None
    finally:
        response.release()
    return Answer(api, True, response.status, response.headers, b"".join(received))


async def test_sigterm_mid_stream(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """SIGTERM with four streams and one whole answer in flight. The stream that ends
    within the drain time (``graceful_shutdown_seconds``) finishes as if nothing happened.
    When the drain time is up, the three streams that would not end get one error event in
    their API's shape, and the whole answer still awaited gets a 503 with Retry-After;
    each is recorded as ``interrupted``. Then the process exits by the signal, as uvicorn
    does."""
    drain = 3.0
    fake_openai.push(
        Script(chunks=6, chunk_delay=0.1),  # done 0.5 s after its first chunk
        *[Script(content="word " * 200, chunk_delay=0.05) for _ in APIS],  # 10 s: too long
        Script(first_byte_delay=30),  # a whole answer that would come far too late
    )
    async with gateway_process(tmp_path, fake_openai.base_url, drain) as (process, url, key, db):
        async with aiohttp.ClientSession() as session:
            opened = [await open_stream(session, url, key, api) for api in ("openai", *APIS)]
            waiting = asyncio.ensure_future(ask(session, url, key, "ollama", "m", False))
            for _ in range(500):  # until the whole answer is asked upstream
                if len(fake_openai.requests) == 5:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the whole answer was not asked upstream")
            process.send_signal(signal.SIGTERM)
            answers = [
                await read_rest(api, response, first)
                for api, (response, first) in zip(("openai", *APIS), opened, strict=True)
            ]
            unanswered = await waiting
        code = await asyncio.wait_for(process.wait(), drain + 10)
    log = (tmp_path / "gateway.log").read_text()
    records = await records_by_request(db)

    finished, *interrupted = answers
    assert finished.completed() and finished.text() == "Echo: tell me a story"
    for answer in interrupted:
        error = answer.stream_error()
        assert "shutting down" in error["message"]
        if answer.api == "openai":
            assert error["code"] == "shutting_down"
        if answer.api == "anthropic":
            assert error["type"] == "overloaded_error"
    assert_error(unanswered, 503, "shutting down")
    assert unanswered.headers["retry-after"] == "1"
    assert code == -signal.SIGTERM
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    assert len(records) == len(answers) + 1
    assert_one_record_each(records, [finished], status="ok", http_status=200)
    rows = assert_one_record_each(
        records, [*interrupted, unanswered], status="interrupted", http_status=503
    )
    assert all(row.completion_tokens >= 1 and row.tokens_estimated for row in rows[:-1])
