"""Usage records: exactly one per authenticated request, with the right status and tokens."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Sequence
from typing import Any

import aiohttp
import sqlalchemy as sa

from relaygate.store.tables import usage_daily
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key
from tests.usage_rows import usage_rows

USER = [{"role": "user", "content": "count these four words"}]


async def post(
    gateway: RunningGateway, body: Any, key: str, raw: bytes | None = None
) -> tuple[int, str, dict[str, Any] | str]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gateway.url + "/v1/chat/completions",
            json=None if raw else body,
            data=raw,
            headers=headers,
        ) as response:
            text = await response.text()
            return response.status, response.headers.get("x-request-id", ""), text


async def rows(gateway: RunningGateway, expected: int) -> Sequence[Any]:
    """The usage rows, once the writer has written ``expected`` of them (or 5 s passed)."""
    return await usage_rows(gateway.state.engine, expected)


async def test_every_authenticated_request_gets_exactly_one_record(
    fake_openai: FakeOpenAI,
) -> None:
    models = [
        {"name": "mock", "deployments": [{"provider": "mock", "chunk_delay": 0.02}]},
        {"name": "up", "deployments": [
            {"provider": "openai", "base_url": fake_openai.base_url, "timeouts": {"total": 0.5}}
        ]},
    ]  # fmt: skip
    settings = make_settings(models, tiers={"two": {"requests_per_hour": 2}})
    async with running_gateway(settings) as gateway:
        key_id, key = await new_key(gateway, tier="two")
        admin = gateway.admin_key
        ok = await post(gateway, {"model": "mock", "messages": USER}, key)
        streamed = await post(
            gateway,
            {"model": "mock", "messages": USER, "stream": True,
             "stream_options": {"include_usage": True}},
            key,
        )  # fmt: skip
        limited = await post(gateway, {"model": "mock", "messages": USER}, key)
        bad_json = await post(gateway, None, admin, raw=b'{"model": "mock", "messages": [')
        unknown = await post(gateway, {"model": "nope", "messages": USER}, admin)
        fake_openai.push(Script(status=500), Script(first_byte_delay=2))
        failed = await post(gateway, {"model": "up", "messages": USER}, admin)
        timed_out = await post(gateway, {"model": "up", "messages": USER}, admin)
        aborted_id = await _abort_stream(gateway, admin)
        unauthenticated = await post(gateway, {"model": "mock", "messages": USER}, "rg_nope")
        found = await rows(gateway, 8)
        await asyncio.sleep(0.3)  # nothing more arrives
        found = await rows(gateway, 9)

    statuses = [ok[0], streamed[0], limited[0], bad_json[0], unknown[0], failed[0], timed_out[0]]
    assert statuses == [200, 200, 429, 400, 404, 502, 504]
    assert unauthenticated[0] == 401
    by_id = {row.request_id: row for row in found}
    assert len(found) == 8, [(r.status, r.http_status) for r in found]
    expect = [
        (ok, "ok", 200), (streamed, "ok", 200), (limited, "rejected", 429),
        (bad_json, "rejected", 400), (unknown, "rejected", 404),
        (failed, "upstream_error", 502), (timed_out, "timeout", 504),
    ]  # fmt: skip
    for (_, request_id, _), status, http_status in expect:
        row = by_id[request_id]
        assert (row.status, row.http_status) == (status, http_status)
    first = by_id[ok[1]]
    assert (first.key_id, first.model, first.provider, first.deployment) == (
        key_id,
        "mock",
        "mock",
        "mock",
    )
    assert first.prompt_tokens == 4 and first.completion_tokens > 0
    assert not first.tokens_estimated and first.endpoint == "/v1/chat/completions"
    assert first.client_ip == "127.0.0.1" and first.duration_ms > 0
    assert by_id[streamed[1]].ttft_ms is not None
    assert by_id[streamed[1]].completion_tokens == first.completion_tokens  # same reply
    assert by_id[limited[1]].prompt_tokens == 0  # never reached a model
    aborted = by_id[aborted_id]
    assert aborted.status == "client_aborted" and aborted.http_status == 499
    assert aborted.tokens_estimated and aborted.completion_tokens >= 1


async def _abort_stream(gateway: RunningGateway, key: str) -> str:
    body = {"model": "mock", "messages": USER, "stream": True}
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            gateway.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        )
        request_id = response.headers["x-request-id"]
        await response.content.readline()
        await response.content.readline()
        response.close()
    return request_id


async def test_stats_admin_report_and_csv() -> None:
    mock = [{"name": "mock", "deployments": [{"provider": "mock", "chunk_delay": 0}]}]
    async with running_gateway(make_settings(mock)) as gateway:
        _, key = await new_key(gateway, tenant="acme")
        for _ in range(3):
            assert (await post(gateway, {"model": "mock", "messages": USER}, key))[0] == 200
        await rows(gateway, 3)
        async with aiohttp.ClientSession() as session:
            auth = {"Authorization": f"Bearer {key}"}
            admin = gateway.headers
            stats = await (await session.get(gateway.url + "/api/stats", headers=auth)).json()
            report = await (
                await session.get(
                    gateway.url + "/admin/usage?group_by=model&from=1d", headers=admin
                )
            ).json()
            async with session.get(gateway.url + "/admin/usage", headers=auth) as forbidden:
                await forbidden.read()
            exported = await (
                await session.get(gateway.url + "/admin/usage/export.csv", headers=admin)
            ).text()
            async with session.get(
                gateway.url + "/admin/usage?group_by=week", headers=admin
            ) as bad:
                await bad.read()
        async with gateway.state.engine.connect() as conn:
            daily = (await conn.execute(sa.select(usage_daily))).all()
    assert stats["requests"] == 3 and stats["prompt_tokens"] == 12
    assert stats["by_model"]["mock"]["requests"] == 3
    assert stats["average_response_time_ms"] > 0
    assert report["data"][0]["model"] == "mock" and report["data"][0]["requests"] == 3
    assert report["totals"]["requests"] == 3 and report["top_tenants"][0]["requests"] == 3
    assert forbidden.status == 403
    assert bad.status == 400
    lines = list(csv.reader(io.StringIO(exported)))
    assert lines[0][0] == "request_id" and len(lines) == 4
    assert sum(r.request_count for r in daily) == 3
