"""The seeds' task endpoints as declared templates (tasks: in the configuration): the
shipped ones with the seeds' example bodies, validation, output post-processing against
a scripted OpenAI upstream, the cache's ``cached``, usage, keys, the webhook's shared
secret, a template an operator declares, and garbage bodies (never a 5xx)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgspec
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from relaygate.api.task_templates import extract_json, strip_code_fences
from relaygate.app import create_app
from relaygate.errors import ConfigError
from relaygate.store.tables import usage_records
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, prepare_database, running_gateway

SECRET = "hook-secret-0123456789"
SQL_BODY = {
    "query": "Show me all users who signed up last week",
    "schema": "users(id, email, created_at, plan)",
    "action": "generate",
}
CODE_BODY = {"code": "def fibonacci(n):\n    ", "language": "python", "max_tokens": 200}
CHAT_BODY = {"prompt": "What should I do first?", "history": [
    {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}  # fmt: skip
SUGGEST_BODY = {"title": "Plan the launch", "description": "Marketing site and emails"}
SUGGESTED = (
    'Sure! ```json\n{"suggestions": ["Draft copy", "Book QA"], '
    '"priority": "high", "estimated_minutes": 90}\n``` Good luck.'
)
WEBHOOK_BODY = {"responseId": "r1", "queryResult": {"queryText": "turn on the lights"}}


def settings(fake: FakeOpenAI, **overrides: Any):  # type: ignore[no-untyped-def]
    models = [{"name": "llama3.2:1b", "deployments": [
        {"provider": "openai", "base_url": fake.base_url}]}]  # fmt: skip
    return make_settings(models, cache={"enabled": True}, **overrides)


async def post(
    gateway: RunningGateway, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    sent = {"X-API-Key": gateway.admin_key} if headers is None else headers
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + path, json=body, headers=sent) as response:
            raw = await response.read()
            return response.status, msgspec.json.decode(raw) if raw else None


async def usage_rows(gateway: RunningGateway, expected: int) -> list[Any]:
    query = sa.select(usage_records).order_by(usage_records.c.created_at)
    found: list[Any] = []
    for _ in range(100):
        async with gateway.state.engine.connect() as conn:
            found = list((await conn.execute(query)).all())
        if len(found) >= expected:
            break
        await asyncio.sleep(0.05)
    return found


async def test_sql_assist_strips_fences_and_says_cached(fake_openai: FakeOpenAI) -> None:
    reply = (
        "```sql\nSELECT * FROM users WHERE created_at >= NOW() - INTERVAL '7 days';\n```\n"
        "This query filters users by creation date."
    )
    fake_openai.push(Script(content=reply))
    async with running_gateway(settings(fake_openai)) as gateway:
        first = await post(gateway, "/ai/sql/assist", SQL_BODY)
        second = await post(gateway, "/ai/sql/assist", SQL_BODY)
        rows = await usage_rows(gateway, 2)
    assert first == (200, {
        "sql": "SELECT * FROM users WHERE created_at >= NOW() - INTERVAL '7 days';",
        "explanation": "This query filters users by creation date.",
        "cached": False,
    })  # fmt: skip
    assert second[0] == 200 and second[1] == {**first[1], "cached": True}
    assert len(fake_openai.requests) == 1  # the repeat came from the cache
    sent = fake_openai.requests[0].json
    assert sent["model"] == "llama3.2:1b" and sent["stream"] is False
    assert sent["messages"][1]["content"] == (
        "Task: generate\nDatabase schema: users(id, email, created_at, plan)\n"
        "Request: Show me all users who signed up last week"
    )
    assert [r.api for r in rows] == ["tasks", "tasks"]
    assert [r.endpoint for r in rows] == ["/ai/sql/assist"] * 2
    assert [r.cached for r in rows] == [False, True]


async def test_code_complete_and_chat_and_suggest(fake_openai: FakeOpenAI) -> None:
    fake_openai.push(
        Script(content="```python\nreturn n if n < 2 else fibonacci(n-1) + fibonacci(n-2)\n```"),
        Script(content="  Start with the launch checklist.  "),
        Script(content=SUGGESTED),
    )
    async with running_gateway(settings(fake_openai)) as gateway:
        code = await post(gateway, "/ai/code/complete", CODE_BODY)
        chat = await post(gateway, "/ai/chat", CHAT_BODY)
        suggest = await post(gateway, "/ai/tasks/suggest", SUGGEST_BODY)
    assert code == (200, {
        "completion": "return n if n < 2 else fibonacci(n-1) + fibonacci(n-2)",
        "language": "python", "cached": False})  # fmt: skip
    assert fake_openai.requests[0].json["max_tokens"] == 200
    assert fake_openai.requests[0].json["messages"][0]["content"].startswith("You complete python")
    assert chat == (200, {"response": "Start with the launch checklist.", "cached": False})
    sent = fake_openai.requests[1].json["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[-1]["content"] == "What should I do first?"
    assert suggest == (200, {
        "suggestions": ["Draft copy", "Book QA"], "priority": "high",
        "estimated_minutes": 90, "parsed": True, "cached": False})  # fmt: skip


async def test_a_reply_without_json_keeps_the_raw_text_and_says_so(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.push(Script(content="I cannot help with that."))
    async with running_gateway(settings(fake_openai)) as gateway:
        status, body = await post(gateway, "/ai/tasks/suggest", SUGGEST_BODY)
    assert status == 200
    assert body["parsed"] is False and body["raw"] == "I cannot help with that."
    assert body["suggestions"] is None


async def test_validation_errors_name_the_field(fake_openai: FakeOpenAI) -> None:
    cases = [
        ({"schema": "t(a)"}, "query"),
        ({**SQL_BODY, "action": "drop"}, "action"),
        ({**SQL_BODY, "query": 5}, "query"),
        ({**SQL_BODY, "query": "x" * 20_001}, "query"),
    ]
    async with running_gateway(settings(fake_openai)) as gateway:
        answers = [await post(gateway, "/ai/sql/assist", body) for body, _ in cases]
        history = await post(gateway, "/ai/chat", {"prompt": "x", "history": [{"role": "x"}]})
        tokens = await post(gateway, "/ai/code/complete", {"code": "x", "max_tokens": 0})
        not_json = await post(gateway, "/ai/code/complete", [1, 2])
    for (status, body), (_, field) in zip(answers, cases, strict=True):
        assert status == 400 and body["error"]["param"] == field, body
        assert body["error"]["type"] == "invalid_request_error"
    assert history[0] == 400 and history[1]["error"]["param"] == "history[0]"
    assert tokens[0] == 400 and tokens[1]["error"]["param"] == "max_tokens"
    assert not_json[0] == 400
    assert fake_openai.requests == []  # nothing invalid reached the model


async def test_a_key_is_required(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(settings(fake_openai)) as gateway:
        status, body = await post(gateway, "/ai/sql/assist", SQL_BODY, headers={})
        bad = await post(gateway, "/ai/chat", CHAT_BODY, headers={"X-API-Key": "rg-nope"})
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert bad[0] == 401
    assert fake_openai.requests == []


async def test_webhook_needs_its_secret_and_is_off_without_one(fake_openai: FakeOpenAI) -> None:
    hook = {"webhook": {"secret": SECRET, "key_id": "assistant", "tenant": "home"}}
    fake_openai.push(Script(content="The lights are on."))
    async with running_gateway(settings(fake_openai, tasks=hook)) as gateway:
        good = await post(gateway, "/webhook", WEBHOOK_BODY, {"X-Webhook-Secret": SECRET})
        missing = await post(gateway, "/webhook", WEBHOOK_BODY, {})
        wrong = await post(gateway, "/webhook", WEBHOOK_BODY, {"X-Webhook-Secret": SECRET + "x"})
        a_key = await post(gateway, "/webhook", WEBHOOK_BODY)  # a relaygate key is not the secret
        no_text = await post(gateway, "/webhook", {"queryResult": {}}, {"X-Webhook-Secret": SECRET})
        rows = await usage_rows(gateway, 2)
    assert good == (200, {"fulfillmentText": "The lights are on.", "cached": False})
    assert [missing[0], wrong[0], a_key[0]] == [401, 401, 401]
    assert SECRET not in msgspec.json.encode([missing, wrong]).decode()
    assert no_text[0] == 400 and no_text[1]["error"]["param"] == "query"
    served = [r for r in rows if r.http_status == 200]
    assert [(r.key_id, r.tenant_id, r.api) for r in served] == [("assistant", "home", "tasks")]
    async with running_gateway(settings(fake_openai)) as gateway:
        off = await post(gateway, "/webhook", WEBHOOK_BODY, {"X-Webhook-Secret": SECRET})
    assert off[0] == 404


async def test_an_operator_declares_and_disables_templates(fake_openai: FakeOpenAI) -> None:
    tasks = {
        "templates": {"summarize": {
            "path": "/ai/summarize",
            "fields": {"text": {"required": True, "max_length": 1000},
                       "words": {"type": "integer", "default": 20}},
            "system": "Summarize in $words words.",
            "user": "$text",
            "output": ["extract_json"],
            "response": {"summary": "json.summary", "words": "request.words"},
        }},
        "disabled": ["code_complete"],
    }  # fmt: skip
    fake_openai.push(Script(content='{"summary": "Short."}'))
    async with running_gateway(settings(fake_openai, tasks=tasks)) as gateway:
        status, body = await post(gateway, "/ai/summarize", {"text": "A long text. ${x} $words"})
        disabled = await post(gateway, "/ai/code/complete", CODE_BODY)
        async with aiohttp.ClientSession() as session:
            async with session.get(gateway.url + "/openapi.json") as response:
                document = await response.json()
    assert (status, body) == (200, {"summary": "Short.", "words": 20, "parsed": True,
                                    "cached": False})  # fmt: skip
    messages = fake_openai.requests[0].json["messages"]
    assert messages == [{"role": "system", "content": "Summarize in 20 words."},
                        {"role": "user", "content": "A long text. ${x} $words"}]  # fmt: skip
    assert disabled[0] == 404
    described = document["paths"]["/ai/summarize"]["post"]
    schema = described["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["text"] and schema["properties"]["text"]["type"] == "string"
    assert schema["properties"]["words"]["type"] == ["integer", "null"]  # null: the default
    assert "/ai/code/complete" not in document["paths"]


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ({"path": "/x", "user": "$nope"}, "undeclared field(s): nope"),
        ({"path": "no-slash", "user": "hi"}, "absolute URL path"),
        ({"path": "/x", "user": "hi", "response": {"a": "json.a.b"}}, "invalid source"),
        ({"path": "/x", "user": "$"}, "malformed"),
        ({"path": "/x", "user": "hi", "history": "h"}, "not a declared field"),
    ],
)
def test_bad_templates_are_refused_at_start(template: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=r"tasks\.templates\.t") as caught:
        make_settings([], tasks={"templates": {"t": template}})
    assert problem in str(caught.value)


def test_two_templates_cannot_share_a_path() -> None:
    twins = {"a": {"path": "/ai/x", "user": "hi"}, "b": {"path": "/ai/x", "user": "ho"}}
    with pytest.raises(ConfigError, match="also template 'a'"):
        make_settings([], tasks={"templates": twins})


@given(st.text(max_size=300))
def test_extract_json_never_raises(text: str) -> None:
    found, value = extract_json(text)
    assert found == isinstance(value, dict | list)
    assert isinstance(strip_code_fences(text), str)


def test_extract_json_finds_the_first_object_or_array() -> None:
    assert extract_json('noise {"a": [1]} more {"b": 2}') == (True, {"a": [1]})
    assert extract_json("[oops {not json} ] then [1, 2]") == (True, [1, 2])
    assert extract_json("{" * 10_000) == (False, None)
    assert strip_code_fences("```sql\nSELECT 1\n```") == "SELECT 1"
    assert strip_code_fences("plain") == "plain"


async def test_a_template_cannot_shadow_a_relaygate_route() -> None:
    shadow = {"templates": {"mine": {"path": "/v1/chat/completions", "user": "hi"}}}
    settings = make_settings([], tasks=shadow)
    await prepare_database(settings)
    app = create_app(settings)
    try:
        with pytest.raises(ConfigError, match=r"tasks\.templates\.mine\.path"):
            await app.startup()
    finally:
        await app.shutdown()
