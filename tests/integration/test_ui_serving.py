"""The web UI as the gateway serves it (GET /ui, /ui/*, the redirect of GET /), and the
server aggregates its pages read: latency percentiles, top models, one request's record."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from relaygate.api.ui import WebUI
from relaygate.errors import ConfigError
from tests.conftest import MOCK
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key


@pytest.fixture
async def gateway() -> AsyncIterator[RunningGateway]:
    async with running_gateway(make_settings(MOCK)) as running:
        yield running


async def fetch(url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    kwargs.setdefault("allow_redirects", False)
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as r:
        return r.status, dict(r.headers), await r.read()


async def test_the_page_and_its_assets_are_served_with_types_and_caching(
    gateway: RunningGateway,
) -> None:
    status, headers, page = await fetch(gateway.url + "/ui")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assets = re.findall(rb'(?:src|href)="(/ui/assets/[^"]+)"', page)
    assert {a.rsplit(b".", 1)[1] for a in assets} == {b"js", b"css"}
    for asset in assets:
        status, headers, body = await fetch(gateway.url + asset.decode())
        assert status == 200 and len(body) > 1000
        kind = "text/javascript" if asset.endswith(b".js") else "text/css"
        assert headers["Content-Type"] == f"{kind}; charset=utf-8"
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert (await fetch(gateway.url + "/ui/"))[2] == page


async def test_client_routes_get_the_page_and_missing_files_a_404(gateway: RunningGateway) -> None:
    _, _, page = await fetch(gateway.url + "/ui")
    for route in (
        "/ui/keys",
        "/ui/playground",
        "/ui/usage/",
        "/ui/anything/deeper",
        "/ui/index.html",
    ):
        status, headers, body = await fetch(gateway.url + route)
        assert (status, body) == (200, page), route
        assert headers["Cache-Control"] == "no-cache"
    for missing in ("/ui/assets/nope.js", "/ui/favicon.ico", "/ui/pyproject.toml"):
        status, _, body = await fetch(gateway.url + missing)
        assert status == 404, missing
        assert b"Not found" in body


async def test_root_redirects_browsers_and_answers_ollama_clients(gateway: RunningGateway) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    status, headers, _ = await fetch(gateway.url + "/", headers=browser)
    assert status == 302 and headers["Location"] == "/ui/"
    for accept in (None, "*/*", "application/json"):
        status, headers, body = await fetch(
            gateway.url + "/", headers={"Accept": accept} if accept else {}
        )
        assert (status, body) == (200, b"Ollama is running"), accept
    async with (
        aiohttp.ClientSession() as session,
        session.head(gateway.url + "/", headers=browser) as r,
    ):
        assert r.status == 200  # a HEAD probe is Ollama's, whatever it accepts


async def test_a_package_without_the_build_says_how_to_build_it(tmp_path: Any) -> None:
    ui = WebUI(root=tmp_path)  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await ui.serve({"type": "http", "path": "/ui/keys", "method": "GET"}, None, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 503 and b"make ui" in sent[1]["body"]


async def test_a_mount_prefix_is_written_into_the_page(tmp_path: Any) -> None:
    (tmp_path / "index.html").write_text('<script src="/ui/assets/a.js"></script>')
    ui = WebUI(root=tmp_path, mount="/gw")  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await ui.serve({"type": "http", "path": "/ui", "method": "GET"}, None, send)  # type: ignore[arg-type]
    assert sent[1]["body"] == b'<script src="/gw/ui/assets/a.js"></script>'


async def _wait_for_record(gateway: RunningGateway, request_id: str, key: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            url = f"{gateway.url}/usage/requests/{request_id}"
            async with session.get(url, headers={"Authorization": f"Bearer {key}"}) as r:
                if r.status == 200:
                    body: dict[str, Any] = await r.json()
                    return body
                assert r.status == 404
            await asyncio.sleep(0.05)
    raise AssertionError("the record was never written")


@pytest.fixture
async def db_gateway(database_url: str) -> AsyncIterator[RunningGateway]:
    """On SQLite and on PostgreSQL: the queries differ by dialect."""
    async with running_gateway(make_settings(MOCK, database_url=database_url)) as running:
        yield running


async def test_a_key_reads_its_own_request_record_and_no_one_elses(
    db_gateway: RunningGateway,
) -> None:
    gateway = db_gateway
    _, mine = await new_key(gateway, tenant="ui-a")
    _, other = await new_key(gateway, tenant="ui-b")
    async with gateway.client(mine) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="mock", messages=[{"role": "user", "content": "one two three"}]
        )
    request_id = raw.headers["x-request-id"]
    record = await _wait_for_record(gateway, request_id, mine)
    assert record["request_id"] == request_id and record["status"] == "ok"
    assert record["prompt_tokens"] > 0 and record["cost"] == 0 and "client_ip" not in record
    assert record["duration_ms"] >= 0
    async with aiohttp.ClientSession() as session:
        url = f"{gateway.url}/usage/requests/{request_id}"
        async with session.get(url, headers={"Authorization": f"Bearer {other}"}) as r:
            assert r.status == 404  # another key's request is not found, not forbidden
        async with session.get(url, headers=gateway.headers) as r:
            assert r.status == 200  # an admin reads any
        async with session.get(url) as r:
            assert r.status == 401
        async with session.get(
            gateway.url + "/usage/requests/" + "x" * 41, headers=gateway.headers
        ) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "request_id"


async def test_latency_percentiles_and_top_models(db_gateway: RunningGateway) -> None:
    gateway = db_gateway
    key_id, secret = await new_key(gateway, tenant="ui-lat")
    async with gateway.client(secret) as client:
        for n in range(5):
            stream = await client.chat.completions.create(
                model="mock", messages=[{"role": "user", "content": "word " * (n + 1)}], stream=True
            )
            async for _ in stream:
                pass
    headers = gateway.headers
    async with aiohttp.ClientSession() as session:
        data: list[dict[str, Any]] = []
        for _ in range(200):
            url = f"{gateway.url}/admin/usage/latency?from=1h&key={key_id}"
            async with session.get(url, headers=headers) as r:
                assert r.status == 200
                body = await r.json()
            data = body["data"]
            if data and data[0]["requests"] == 5:
                break
            await asyncio.sleep(0.05)
        assert body["bucket"] == "hour" and len(data) == 1
        row = data[0]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00:00Z", row["hour"])
        assert row["ttft_count"] == 5
        assert 0 <= row["duration_p50_ms"] <= row["duration_p90_ms"] <= row["duration_p99_ms"]
        assert row["ttft_p50_ms"] is not None
        async with session.get(
            f"{gateway.url}/admin/usage/latency?from=1d&bucket=day&key={key_id}", headers=headers
        ) as r:
            day = (await r.json())["data"]
        assert len(day) == 1 and day[0]["day"].endswith("T00:00:00Z") and day[0]["requests"] == 5
        for query, param in (("bucket=week&from=1d", "bucket"), ("", "from"), ("from=1d&x=1", "x")):
            async with session.get(
                f"{gateway.url}/admin/usage/latency?{query}", headers=headers
            ) as r:
                assert r.status == 400 and (await r.json())["error"]["param"] == param
        async with session.get(
            f"{gateway.url}/admin/usage/latency?from=1d",
            headers={"Authorization": f"Bearer {secret}"},
        ) as r:
            assert r.status == 403
        async with session.get(f"{gateway.url}/admin/usage?key={key_id}", headers=headers) as r:
            report = await r.json()
        assert [(m["model"], m["requests"]) for m in report["top_models"]] == [("mock", 5)]


async def test_config_json_offers_the_oidc_sign_in_and_the_csp_allows_its_token_call() -> None:
    plain = make_settings(MOCK)
    async with running_gateway(plain) as gateway:
        status, headers, body = await fetch(gateway.url + "/ui/config.json")
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert msgspec.json.decode(body) == {"oidc": None}
        assert "connect-src 'self';" in headers["Content-Security-Policy"]
    oidc = {
        "authorization_endpoint": "https://idp.example/authorize",
        "token_endpoint": "https://login.idp.example:8443/oauth/token",
        "client_id": "relaygate-ui",
    }
    settings = make_settings(MOCK, auth={"jwt": {"secret": "s" * 32}}, ui={"oidc": oidc})
    async with running_gateway(settings) as gateway:
        _, headers, body = await fetch(gateway.url + "/ui/config.json")
        assert msgspec.json.decode(body) == {
            "oidc": {**oidc, "scopes": "openid profile email", "token": "id_token",
                     "label": "Sign in with SSO"}
        }  # fmt: skip
        _, page_headers, _ = await fetch(gateway.url + "/ui/keys")
        for h in (headers, page_headers):
            policy = h["Content-Security-Policy"]
            assert "connect-src 'self' https://login.idp.example:8443;" in policy


def test_oidc_without_jwt_is_a_configuration_error() -> None:
    oidc = {"authorization_endpoint": "https://i/a", "token_endpoint": "https://i/t",
            "client_id": "c"}  # fmt: skip
    with pytest.raises(ConfigError, match=r"ui.oidc: .*configure auth.jwt"):
        make_settings(MOCK, ui={"oidc": oidc})
    with pytest.raises(ConfigError, match=r"ui.oidc"):
        make_settings(MOCK, auth={"jwt": {"secret": "s" * 32}},
                      ui={"oidc": {**oidc, "token_endpoint": "javascript:alert(1)"}})  # fmt: skip
