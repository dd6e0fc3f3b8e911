"""GET /openapi.json and GET /docs: valid OpenAPI 3.1, every served route documented and
every documented route answering, request schemas that agree with the validators, and
a reference page whose assets all come from the gateway itself."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import msgspec
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from relaygate.api.openapi import (
    ASSETS,
    ErrorBody,
    OllamaError,
    operation_for,
)
from relaygate.store.nodes import NodeTokenStore
from relaygate.vault.crypto import new_key as new_vault_key
from relaygate.vault.store import Owner
from tests.conftest import MOCK
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key

_ids = itertools.count()


@pytest.fixture
async def gateway() -> AsyncIterator[RunningGateway]:
    async with running_gateway(make_settings(MOCK)) as running:
        yield running


async def get_json(url: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as r:
        return r.status, await r.json(content_type=None)


async def test_document_is_valid_openapi_31_and_needs_no_key(gateway: RunningGateway) -> None:
    status, document = await get_json(gateway.url + "/openapi.json")
    assert status == 200
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "in": "header", "name": "X-API-Key"}
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatRequest"
    }
    assert {"400", "401", "429", "503"} <= set(chat["responses"])
    assert "Retry-After" in chat["responses"]["429"]["headers"]
    assert document["paths"]["/health"]["get"]["security"] == []
    assert document["paths"]["/admin/keys"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}]
    # no secret and nothing of this gateway's configuration (its models) is shown
    text = msgspec.json.encode(document).decode()
    assert gateway.admin_key not in text and '"mock"' not in text


async def test_every_served_route_is_documented(gateway: RunningGateway) -> None:
    served = gateway.app.served_routes()
    _, document = await get_json(gateway.url + "/openapi.json")
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert documented == {(m, p) for p, methods in served.items() for m in methods}
    # ...each with its own description, not the generic one given to a forgotten route
    assert [(m, p) for m, p in sorted(documented) if operation_for(m, p) is None] == []
    for path in ("/v1/chat/completions", "/api/chat", "/ai/generate", "/admin/keys/{key_id}",
                 "/api/keys/{key_id}", "/auth/create-key", "/openapi.json", "/docs"):  # fmt: skip
        assert path in served


async def test_every_documented_route_answers(gateway: RunningGateway) -> None:
    """A real request to each documented operation gets one of its documented statuses,
    never the router's 404 or 405."""
    _, document = await get_json(gateway.url + "/openapi.json")
    async with aiohttp.ClientSession() as session:
        for path, item in document["paths"].items():
            for method, operation in item.items():
                url = gateway.url + await concrete(gateway, path)
                kwargs: dict[str, Any] = {"headers": gateway.headers}
                if "requestBody" in operation:
                    kwargs["json"] = {}
                async with session.request(method, url, **kwargs) as r:
                    await r.read()
                    assert r.status not in (404, 405), (method, path, r.status)
                    assert str(r.status) in operation["responses"], (method, path, r.status)


async def concrete(gateway: RunningGateway, path: str) -> str:
    """The template with real ids: a fresh key and tenant each time (a DELETE may revoke)."""
    if "{" not in path:
        return path
    n = next(_ids)
    key_id, _ = await new_key(gateway, tenant=f"docs-{n}")
    tenant = await gateway.state.identity.tenant_by_name(f"docs-{n}")
    assert tenant is not None
    values = {"key_id": key_id, "tenant_id": tenant.id, "model": "mock", "path": "keys"}
    if "{api_key_id}" in path or "{config_id}" in path:  # the caller's own (BYOK)
        values.update(await _provider_ids(gateway))
    if "{token_id}" in path:  # a node token (a DELETE revokes it)
        record, _ = await NodeTokenStore(gateway.state.engine).create(f"docs-{n}")
        values["token_id"] = record.id
    if "{response_id}" in path:  # a stored response of the caller's (a DELETE may remove it)
        async with gateway.client() as client:
            values["response_id"] = (await client.responses.create(model="mock", input="hi")).id
    if "{request_id}" in path:  # a request of the admin key's, once its record is written
        values["request_id"] = await recorded_request(gateway)
    return re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], path)


async def _provider_ids(gateway: RunningGateway) -> dict[str, str]:
    """A provider key and a provider configuration of the admin key's own (it calls)."""
    admin = next(r for r in await gateway.state.identity.list_keys() if r.role == "admin")
    who = Owner(admin.tenant_id, f"key:{admin.id}")
    store = gateway.state.vault.store
    secret = await store.add_secret(
        who, shared=False, provider="openai", key_name="docs", masked="...",
        ciphertext=b"not read", key_fingerprint="0" * 16, expires_at=None,
    )  # fmt: skip
    config = await store.add_config(
        who, provider_type="openai", api_key_id=secret.id, base_url=None, config={},
        is_default=False, is_active=True,
    )  # fmt: skip
    return {"api_key_id": str(secret.id), "config_id": str(config.id)}


async def recorded_request(gateway: RunningGateway) -> str:
    async with gateway.client() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="mock", messages=[{"role": "user", "content": "hi"}]
        )
    request_id = raw.headers["x-request-id"]
    async with aiohttp.ClientSession(headers=gateway.headers) as session:
        for _ in range(200):
            async with session.get(f"{gateway.url}/usage/requests/{request_id}") as r:
                if r.status == 200:
                    return request_id
            await asyncio.sleep(0.05)
    raise AssertionError("the usage record was never written")


async def test_documented_error_shapes_are_the_real_ones(gateway: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session:
        for path, shape in (
            ("/v1/models", ErrorBody),
            ("/admin/keys", ErrorBody),
            ("/api/tags", OllamaError),
        ):
            async with session.get(gateway.url + path) as r:
                assert r.status == 401
                msgspec.json.decode(await r.read(), type=shape)  # raises if it does not fit


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self._in_script = True
            if found.get("src"):
                self.urls.append(found["src"] or "")
        elif tag == "link" and found.get("href"):
            self.urls.append(found["href"] or "")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        self.inline_scripts += self._in_script and bool(data.strip())


async def test_docs_page_uses_only_its_own_assets(gateway: RunningGateway) -> None:
    page_url = gateway.url + "/docs"
    async with aiohttp.ClientSession() as session:
        async with session.get(page_url) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
            page = await r.text()
        parser = _Assets()
        parser.feed(page)
        assert len(parser.urls) == 3 and parser.inline_scripts == 0
        for url in parser.urls:
            assert not urlsplit(url).scheme and not url.startswith("//"), url  # no CDN
            async with session.get(urljoin(page_url, url)) as r:
                assert r.status == 200, url
                assert len(await r.read()) > 100
                assert r.headers["Content-Type"] == ASSETS[url.rsplit("/", 1)[1]].decode()
        async with session.get(gateway.url + "/docs/init.js") as r:
            init = await r.text()
        # the document the page loads, resolved as the browser resolves it
        assert re.search(r'url: "([^"]+)"', init).group(1) == "openapi.json"  # type: ignore[union-attr]
        assert urljoin(page_url, "openapi.json") == gateway.url + "/openapi.json"
        assert "validatorUrl: null" in init  # Swagger UI would call validator.swagger.io
        for name, says in (("LICENSE", "Apache License"), ("NOTICE", "SmartBear")):
            async with session.get(gateway.url + "/docs/" + name) as r:
                assert r.status == 200 and says in await r.text()
        async with session.get(gateway.url + "/docs/pyproject.toml") as r:
            assert r.status == 404


async def test_answers_have_their_documented_media_type_and_shape() -> None:
    """Each GET route (and files and pages of the web UI) answers with a status, media type
    and JSON type (object or array) its document names. The reference page's files and the
    web UI's were documented as application/octet-stream, the UI's 404 as JSON, and the
    BYOK lists as objects; schemathesis found them (test_schemathesis.py)."""
    async with running_gateway(make_settings(MOCK, secret_key=new_vault_key())) as gateway:
        _, document = await get_json(gateway.url + "/openapi.json")
        urls = [
            (path, path)
            for path, item in document["paths"].items()
            if "get" in item and "{" not in path and path != "/metrics"  # text, checked below
        ]
        urls += [("/ui/{path}", "/ui/" + p) for p in ("keys", "assets/nothing.js", "config.json")]
        urls += [("/ui/{path}", "/ui/assets/" + name) for name in _ui_assets()[:2]]
        urls.append(("/metrics", "/metrics"))
        async with aiohttp.ClientSession(headers=gateway.headers) as session:
            for template, url in urls:
                async with session.get(gateway.url + url) as r:
                    body = await r.read()
                    documented = document["paths"][template]["get"]["responses"]
                    assert str(r.status) in documented, (url, r.status)
                    content = documented[str(r.status)]["content"]
                    media = r.headers["Content-Type"].split(";")[0]
                    assert media in content, (url, media, list(content))
                    if media == "application/json":
                        schema = content[media]["schema"]
                        kind = "object" if "$ref" in schema else schema["type"]
                        value = msgspec.json.decode(body)
                        assert isinstance(value, dict if kind == "object" else list), url
        assert "/api/ai/api-keys" in dict(urls) and "/docs/swagger-ui.css" in dict(urls)


def _ui_assets() -> list[str]:
    from relaygate.api.ui import site_root

    return sorted(entry.name for entry in site_root().joinpath("assets").iterdir())


async def test_a_task_template_documents_the_nulls_it_accepts(gateway: RunningGateway) -> None:
    """A null ``model`` (or optional field) means the default, so the document allows it;
    it said ``string`` and schemathesis' invalid null was served (negative_data_rejection)."""
    _, document = await get_json(gateway.url + "/openapi.json")
    operation = document["paths"]["/ai/chat"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["model"]["type"] == ["string", "null"]
    assert schema["properties"]["model"]["minLength"] == 1
    async with aiohttp.ClientSession(headers=gateway.headers) as session:
        async with session.post(
            gateway.url + "/ai/chat", json={"prompt": "hi", "model": None}
        ) as r:
            assert r.status == 200, await r.text()
        async with session.post(gateway.url + "/ai/chat", json={"prompt": "hi", "model": ""}) as r:
            assert r.status == 400  # as minLength says


_STREAMED = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
    "/chat": {"messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"prompt": "hi"},
    "/v1/responses": {"input": "hi"},
    "/v1/messages": {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
}


async def test_each_streamed_event_fits_the_documented_event_schema(
    gateway: RunningGateway,
) -> None:
    """An event stream's schema describes one event ({data, event, id, retry}), as tools
    read it; it said ``string``, so every event of every stream failed schemathesis'
    check (ST108 on /v1/completions and /v1/messages)."""
    _, document = await get_json(gateway.url + "/openapi.json")
    streamed = sorted(
        path
        for path, item in document["paths"].items()
        if "text/event-stream"
        in item.get("post", {}).get("responses", {}).get("200", {}).get("content", {})
    )
    assert streamed == sorted(_STREAMED)
    async with aiohttp.ClientSession(headers=gateway.headers) as session:
        for path in streamed:
            schema = document["paths"][path]["post"]["responses"]["200"]["content"]
            validator = Draft202012Validator(schema["text/event-stream"]["schema"])
            body = {"model": "mock", "stream": True, **_STREAMED[path]}
            async with session.post(gateway.url + path, json=body) as r:
                assert r.status == 200 and r.content_type == "text/event-stream", path
                events = _sse_events((await r.read()).decode())
            assert len(events) >= 2, path
            for event in events:
                validator.validate(event)  # raises with the event that does not fit


def _sse_events(text: str) -> list[dict[str, str]]:
    """Events as an SSE client sees them: ``event`` defaults to ``message``."""
    events = []
    for block in text.strip().split("\n\n"):
        event: dict[str, str] = {"event": "message"}
        data = []
        for line in block.splitlines():
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value.removeprefix(" "))
            elif name in ("event", "id"):
                event[name] = value.removeprefix(" ")
        event["data"] = "\n".join(data)
        events.append(event)
    return events


async def test_documented_query_values_are_the_accepted_ones(gateway: RunningGateway) -> None:
    """Each documented enum value and bound of the usage report's query is accepted, the
    next one out refused; the latency report's required ``from`` is documented so."""
    _, document = await get_json(gateway.url + "/openapi.json")

    def query(path: str) -> dict[str, Any]:
        parameters = document["paths"][path]["get"]["parameters"]
        return {p["name"]: p for p in parameters if p["in"] == "query"}

    usage, latency = query("/admin/usage"), query("/admin/usage/latency")
    top = usage["top"]["schema"]
    cases = [("/admin/usage", f"group_by={v}", 200) for v in usage["group_by"]["schema"]["enum"]]
    cases += [("/admin/usage", "group_by=week", 400)]
    cases += [
        ("/admin/usage", f"top={top['minimum']}", 200),
        ("/admin/usage", f"top={top['maximum']}", 200),
    ]
    cases += [("/admin/usage", f"top={top['maximum'] + 1}", 400), ("/admin/usage", "top=0", 400)]
    cases += [
        ("/admin/usage/latency", f"from=1d&bucket={v}", 200)
        for v in latency["bucket"]["schema"]["enum"]
    ]
    cases += [
        ("/admin/usage/latency", "from=1d&bucket=week", 400),
        ("/admin/usage/latency", "", 400),
    ]
    assert latency["from"]["required"] is True and usage["from"]["required"] is False
    async with aiohttp.ClientSession(headers=gateway.headers) as session:
        for path, parameters, expected in cases:
            async with session.get(f"{gateway.url}{path}?{parameters}") as r:
                assert r.status == expected, (path, parameters, await r.text())
