"""schemathesis against the gateway's own ``GET /openapi.json``: every documented operation,
called with an admin key, a user key and no key, with generated valid and invalid input.

Every answer must be no 5xx and carry a documented status, Content-Type and headers, and
its body must fit the documented schema; a request the schema forbids must be refused
(4xx). The gateway serves the development model ``mock``, with a vault key so that the
BYOK routes work (their provider keys call a fake OpenAI upstream) and the webhook's secret
so that its template runs. Generation is derandomized (the same cases on every run) and
keeps no example database; every request has a 10 s read timeout, so a stream that stalls
fails the test instead of hanging it (pytest's per-test timeout bounds the rest). That the
document lists every route the gateway serves is test_openapi.py's
``test_every_served_route_is_documented``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from unittest import SkipTest

import aiohttp
import pytest
import requests
import schemathesis
import schemathesis.checks
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.pytest.lazy import get_all_tests

from relaygate.store.nodes import NodeTokenStore
from relaygate.vault.crypto import new_key as new_vault_key
from tests.conftest import MOCK
from tests.fakes.openai_server import FakeOpenAI
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key

WEBHOOK_SECRET = "schemathesis-webhook-secret"
CLOUDS = ("openai", "gemini", "anthropic")  # BYOK provider types: all sent to the fake
TIMEOUT = 10  # seconds a request may wait for its next bytes (a stream included)
# Each documented operation is in one of these groups, by its tag (a test checks it): one
# test per group and caller, so that a failure names its API and each test is short.
GROUPS = {
    "openai": ("OpenAI",),
    "anthropic": ("Anthropic",),
    "ollama": ("Ollama",),
    "seed": ("Seed routes", "Task templates"),
    "byok": ("Your provider keys (BYOK)",),
    "admin": ("Admin",),
    "reference": ("Operations", "Reference"),
}
CHECKS = [
    getattr(schemathesis.checks, name)
    for name in (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    )
]
# Per caller: generated cases per operation, and whether the coverage phase runs
# (schemathesis' deterministic boundary and wrong-type cases for every field: hundreds
# for a chat request). The admin key reaches every handler, so it gets them; a user key
# gets fewer generated cases; without a key each operation needs only to refuse.
CALLERS = {"admin": (5, True), "user": (4, False), "anonymous": (1, False)}


@dataclass
class Served:
    """The gateway, serving from its own thread, and what the generated cases use."""

    url: str
    keys: dict[str, str | None]  # caller -> key; "byok-" + caller: the BYOK group's
    ids: dict[str, str]  # path parameter -> a real id


async def _ids(gateway: RunningGateway, byok_admin: str) -> dict[str, str]:
    """Real ids for the path parameters, so that cases reach the handlers, not only 404s.
    The provider key and configuration are made through the API (the key is encrypted),
    by the admin key that calls the BYOK routes."""
    key_id, _ = await new_key(gateway, tenant="target")
    tenant = await gateway.state.identity.tenant_by_name("target")
    assert tenant is not None
    token, _ = await NodeTokenStore(gateway.state.engine).create("target")
    headers = {"Authorization": f"Bearer {byok_admin}"}
    async with aiohttp.ClientSession(gateway.url, headers=headers) as session:
        body = {"provider": "openai", "key_name": "target", "api_key": "sk-" + "x" * 40}
        async with session.post("/api/ai/api-keys", json=body) as r:
            assert r.status == 201, await r.text()
            api_key_id = (await r.json())["id"]
        body = {"provider_type": "openai", "api_key_id": api_key_id}
        async with session.post("/api/ai/provider-configs", json=body) as r:
            assert r.status == 201, await r.text()
            config_id = (await r.json())["id"]
    async with gateway.client() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="mock", messages=[{"role": "user", "content": "hi"}]
        )
        stored = await client.responses.create(model="mock", input="hi")
    return {
        "key_id": key_id,
        "tenant_id": tenant.id,
        "token_id": token.id,
        "api_key_id": str(api_key_id),
        "config_id": str(config_id),
        "request_id": raw.headers["x-request-id"],
        "response_id": stored.id,
        "model": "mock",
        "path": "keys",
    }


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """A real gateway on its own event loop, in a thread: schemathesis calls synchronously."""
    ready: Future[tuple[Served, Callable[[], None]]] = Future()

    async def serve() -> None:
        async with FakeOpenAI() as upstream:
            settings = make_settings(
                MOCK,
                secret_key=new_vault_key(),
                byok={"base_urls": dict.fromkeys(CLOUDS, upstream.base_url)},
                tasks={"webhook": {"secret": WEBHOOK_SECRET}},
                tiers={"generous": {"requests_per_minute": 10**9}},
            )
            async with running_gateway(settings) as gateway:
                # The BYOK routes have callers of their own: the provider keys and default
                # configurations their cases make would send the others' requests upstream.
                keys: dict[str, str | None] = {"admin": gateway.admin_key}
                keys["byok-admin"] = (
                    await new_key(gateway, role="admin", tenant="byok", tier="generous")
                )[1]
                for caller in ("user", "byok-user"):
                    keys[caller] = (await new_key(gateway, tenant=caller, tier="generous"))[1]
                keys["anonymous"] = keys["byok-anonymous"] = None
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                ids = await _ids(gateway, keys["byok-admin"] or "")
                served = Served(gateway.url, keys, ids)
                ready.set_result((served, lambda: loop.call_soon_threadsafe(stop.set)))
                await stop.wait()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported to the fixture, not lost in the thread
            if not ready.done():
                ready.set_exception(exc)
            raise

    thread = threading.Thread(target=run, name="gateway", daemon=True)
    thread.start()
    running, stop = ready.result(timeout=60)
    try:
        yield running
    finally:
        stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the gateway did not stop"


def _config(served: Served, group: str, caller: str) -> schemathesis.Config:
    headers = {"X-Webhook-Secret": WEBHOOK_SECRET}
    key = served.keys[f"byok-{caller}" if group == "byok" else caller]
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    examples, coverage = CALLERS[caller]
    return schemathesis.Config.from_dict(
        {
            "base-url": served.url,
            "headers": headers,
            "request-timeout": TIMEOUT,
            "generation": {
                "mode": "all",  # valid input and invalid input
                "max-examples": examples,
                "deterministic": True,
                "database": "none",
                # Generated X-API-Key values beside the key would make every request a 401
                # (two credentials); without a key, they are what is sent.
                "with-security-parameters": key is None,
            },
            "phases": {"coverage": {"enabled": coverage}, "stateful": {"enabled": False}},
            # Mostly the served model, so that cases get past routing into the pipeline.
            "dictionaries": {"models": {"values": ["mock"]}},
            "parameters": {
                "body.model": {"dictionary": "models", "probability": 0.8},
                **{f"path.{name}": value for name, value in served.ids.items()},
            },
        }
    )


def _call(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS, timeout=TIMEOUT)


def run_schemathesis(schema: schemathesis.BaseSchema) -> tuple[int, list[str]]:
    """Each operation's generated test (examples, coverage cases, fuzzing), as schemathesis'
    pytest plugin builds it; (operations run, failures). The plugin's own runner for a
    schema from a fixture does not work with pytest 9 (it sets a node's ``_nodeid``)."""
    failures: list[str] = []
    ran = 0
    for result in get_all_tests(schema=schema, test_func=_call, settings=None, given_kwargs={}):
        if isinstance(result, Err):
            failures.append(f"invalid operation: {result.err()}")
            continue
        operation, test = result.ok()
        ran += 1
        try:
            test()
        except FailureGroup as exc:  # the checks' failures, with a curl line for each
            failures.append(f"{operation.label}:\n{exc}")
        except SkipTest as exc:  # schemathesis could not generate its cases: not tested
            failures.append(f"{operation.label}: not tested: {exc}")
        except Exception as exc:  # a timeout (a stream that did not end), a refused call
            failures.append(f"{operation.label}: {type(exc).__name__}: {exc}")
    return ran, failures


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("group", list(GROUPS))
def test_every_operation_answers_as_documented(served: Served, group: str, caller: str) -> None:
    document = requests.get(served.url + "/openapi.json", timeout=TIMEOUT).json()
    schema = schemathesis.openapi.from_dict(document, config=_config(served, group, caller))
    ran, failures = run_schemathesis(
        schema.include(tag_regex="^(" + "|".join(map(re.escape, GROUPS[group])) + ")$")
    )
    assert ran > 0
    assert failures == [], "\n\n".join(failures)


def test_every_operation_is_in_a_group(served: Served) -> None:
    document = requests.get(served.url + "/openapi.json", timeout=TIMEOUT).json()
    grouped = {tag for tags in GROUPS.values() for tag in tags}
    outside = [
        f"{method.upper()} {path}: {operation.get('tags')}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if not set(operation.get("tags", ())) & grouped
    ]
    assert outside == []
