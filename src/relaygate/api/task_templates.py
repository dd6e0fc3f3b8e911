"""Task endpoints declared as templates (``tasks:`` in the configuration; docs/tasks.md).

A template names a path, the request fields it accepts (checked here, at the
boundary: a 400 in OpenAI's error shape naming the field), a system and a user
prompt with ``$field`` placeholders, the model and its parameters, what is done
to the reply's text (``trim``, ``strip_code_fences``, ``extract_json``) and the
answer's fields. Each request becomes a canonical chat call and runs the whole
pipeline (keys, limits, cache, routing, usage under the API name ``tasks``);
the answer always carries ``cached``.

Placeholders use :class:`string.Template`: plain text substitution, no
attribute or index access, no expressions; values are inserted as text (JSON
for non-strings). The seeds' endpoints ship as :data:`SHIPPED` templates.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping
from string import Template
from typing import Any

import msgspec

from relaygate.api.http import decode_json_object, error_body
from relaygate.api.parsing import parse_call
from relaygate.asgi import Scope, header
from relaygate.auth.principal import Principal
from relaygate.errors import AuthenticationError, InvalidRequest, RelaygateError
from relaygate.schema.requests import Call, Kind
from relaygate.settings import TaskField, TaskTemplate, WebhookConfig, task_template_problem

__all__ = ["SHIPPED", "TaskFormat", "extract_json", "strip_code_fences"]

JSON = dict[str, Any]
_encode = msgspec.json.encode
_raw_decode = json.JSONDecoder().raw_decode
_JSON_TRIES = 64
_FENCE = re.compile(r"```[^\n`]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_ROLES = frozenset(("user", "assistant"))
_MAX_HISTORY = 100
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def _f(**kw: Any) -> TaskField:
    return TaskField(**kw)


SHIPPED: dict[str, TaskTemplate] = {
    # Seed 001: NexusAI's SQL assistant.
    "sql_assist": TaskTemplate(
        path="/ai/sql/assist",
        fields={
            "query": _f(required=True, max_length=20_000),
            "schema": _f(default="", max_length=50_000),
            "action": _f(default="generate", enum=["generate", "explain", "optimize"]),
        },
        system=(
            "You are an expert SQL assistant. Answer with exactly one SQL statement in a "
            "```sql fenced block, then a short plain-text explanation after the block."
        ),
        user="Task: $action\nDatabase schema: $schema\nRequest: $query",
        temperature=0.1,
        max_tokens=1024,
        allow_model=True,
        output=["trim"],
        response={"sql": "code", "explanation": "prose"},
    ),
    # Seed 001: code completion.
    "code_complete": TaskTemplate(
        path="/ai/code/complete",
        fields={
            "code": _f(required=True, max_length=50_000),
            "language": _f(default="python", max_length=64),
            "max_tokens": _f(type="integer", default=256),
        },
        system=(
            "You complete $language code. Reply with only the code that continues the "
            "given snippet, without explanations."
        ),
        user="$code",
        temperature=0.2,
        max_tokens_field="max_tokens",
        allow_model=True,
        output=["strip_code_fences", "trim"],
        response={"completion": "text", "language": "request.language"},
    ),
    # Seed 004: the Cafe app's assistant chat.
    "chat": TaskTemplate(
        path="/ai/chat",
        fields={
            "prompt": _f(required=True, max_length=20_000),
            "history": _f(type="array", default=[]),
        },
        system="You are a helpful, concise assistant for a task-management app.",
        user="$prompt",
        history="history",
        allow_model=True,
        output=["trim"],
        response={"response": "text"},
    ),
    # Seed 004: task suggestions.
    "tasks_suggest": TaskTemplate(
        path="/ai/tasks/suggest",
        fields={
            "title": _f(required=True, max_length=500),
            "description": _f(default="", max_length=10_000),
        },
        system=(
            'Reply with only a JSON object: {"suggestions": [up to 5 short next steps], '
            '"priority": "low"|"medium"|"high", "estimated_minutes": integer}.'
        ),
        user="Task: $title\nDetails: $description",
        temperature=0.3,
        allow_model=True,
        output=["extract_json"],
        response={
            "suggestions": "json.suggestions",
            "priority": "json.priority",
            "estimated_minutes": "json.estimated_minutes",
        },
    ),
    # Seed 002: a Dialogflow-style fulfillment webhook (shared secret, no key).
    "webhook": TaskTemplate(
        path="/webhook",
        fields={"query": _f(required=True, max_length=5_000, source="queryResult.queryText")},
        system="You are a voice assistant. Answer in one or two short spoken sentences.",
        user="$query",
        output=["strip_code_fences", "trim"],
        response={"fulfillmentText": "text"},
        auth="webhook",
    ),
}
for _name, _template in SHIPPED.items():  # the shipped ones obey the rules declared ones do
    assert task_template_problem(_template) is None, _name


def strip_code_fences(text: str) -> str:
    """The contents of the fenced blocks (```lang ... ```), joined; the text itself when
    it has none."""
    blocks = _FENCE.findall(text)
    if not blocks:
        return text
    return "\n".join(block.strip("\n") for block in blocks)


def first_code_block(text: str) -> str:
    """The first fenced block's contents, trimmed; the whole text when there is none."""
    match = _FENCE.search(text)
    return (match.group(1) if match else text).strip()


def prose(text: str) -> str:
    """The text outside fenced blocks, trimmed."""
    return _FENCE.sub(" ", text).strip() if "```" in text else ""


def extract_json(text: str) -> tuple[bool, Any]:
    """(True, value) for the first JSON object or array in ``text``; (False, None) if none.

    Tries at most :data:`_JSON_TRIES` opening brackets, so a reply full of stray ``{``
    costs bounded work.
    """
    start = -1
    for _ in range(_JSON_TRIES):
        start = _next_opening(text, start + 1)
        if start < 0:
            break
        try:
            return True, _raw_decode(text, start)[0]
        except ValueError:  # json.JSONDecodeError, and RecursionError's cousins
            continue
        except RecursionError:
            break
    return False, None


def _next_opening(text: str, at: int) -> int:
    brace, bracket = text.find("{", at), text.find("[", at)
    found = [i for i in (brace, bracket) if i >= 0]
    return min(found) if found else -1


class TaskFormat:
    """One template's wire format: its fields in, its answer fields out, OpenAI's errors."""

    name = "tasks"
    json_type_required = True
    stream_headers = ((b"content-type", b"application/json"),)
    user_providers = True  # served by the caller's own provider configuration (BYOK)

    def __init__(
        self,
        template: TaskTemplate,
        models: Mapping[str, Any],
        webhook: WebhookConfig | None = None,
    ) -> None:
        self.template = template
        self.models = models
        self.system = Template(template.system)
        self.user = Template(template.user)
        if template.auth == "webhook":
            if webhook is None or not webhook.secret:
                raise ValueError("a webhook template needs tasks.webhook.secret")
            self._secret = webhook.secret.encode()
            self._header = webhook.header.lower().encode("latin-1")
            self._principal = Principal(
                subject=f"key:{webhook.key_id}",
                kind="key",
                role="user",
                tier=webhook.tier,
                key_id=webhook.key_id,
                tenant_id=webhook.tenant,
            )
            # Looked up by the pipeline (Hooks): only webhook templates replace key checks.
            self.authenticate = self._by_secret

    async def _by_secret(self, scope: Scope) -> Principal:
        given = header(scope, self._header)
        if given is None or not hmac.compare_digest(given, self._secret):
            raise AuthenticationError("Missing or wrong webhook secret.")
        return self._principal

    # --- the request

    def parse(self, kind: Kind, body: bytes, request_id: str) -> Call:
        data = decode_json_object(body)
        values = self._values(data)
        template = self.template
        model = self._model(data)
        text = {name: _as_text(value) for name, value in values.items()}
        messages: list[JSON] = []
        system = self.system.substitute(text)
        if system:
            messages.append({"role": "system", "content": system})
        if template.history is not None:
            messages.extend(_history(values[template.history], template.history))
        messages.append({"role": "user", "content": self.user.substitute(text)})
        chat: JSON = {"model": model, "messages": messages, "stream": False}
        max_tokens = template.max_tokens
        if template.max_tokens_field is not None:
            asked = values.get(template.max_tokens_field)
            if isinstance(asked, int) and not isinstance(asked, bool):
                if not 1 <= asked <= 1_000_000:
                    raise InvalidRequest(
                        f"{template.max_tokens_field} must be between 1 and 1000000.",
                        param=template.max_tokens_field,
                    )
                max_tokens = asked
        if max_tokens is not None:
            chat["max_tokens"] = max_tokens
        if template.temperature is not None:
            chat["temperature"] = template.temperature
        call = parse_call("chat", _encode(chat), request_id)
        call.wire["values"] = values
        return call

    def _values(self, data: JSON) -> JSON:
        values: JSON = {}
        for name, spec in self.template.fields.items():
            present, value = _lookup(data, spec.source or name)
            if not present or value is None:
                if spec.required:
                    raise InvalidRequest(f"Missing required field {name!r}.", param=name)
                values[name] = spec.default if spec.default is not None else _empty(spec)
                continue
            values[name] = _checked(name, spec, value)
        return values

    def _model(self, data: JSON) -> str:
        asked = data.get("model") if self.template.allow_model else None
        if asked is not None:
            if not isinstance(asked, str) or not asked or len(asked) > 256:
                raise InvalidRequest("model must be a model's name.", param="model")
            return asked
        model = self.template.model or next(iter(self.models), None)
        if model is None:
            raise InvalidRequest("No model is configured on this gateway.", param="model")
        return model

    # --- the answer

    def render(self, call: Call, body: JSON, provider: str | None, cached: bool) -> bytes:
        choices = body.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else {}
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        return _encode(self.answer(call, content if isinstance(content, str) else "", cached))

    def answer(self, call: Call, raw: str, cached: bool) -> JSON:
        """The answer's fields from the model's reply text."""
        text, parsed, value = raw, None, None
        for step in self.template.output:
            if step == "trim":
                text = text.strip()
            elif step == "strip_code_fences":
                text = strip_code_fences(text)
            else:
                parsed, value = extract_json(text)
        values: JSON = call.wire.get("values", {})
        out: JSON = {}
        for field, source in self.template.response.items():
            out[field] = _source(source, text, value, values, call.model)
        if parsed is False:  # extract_json found none: the raw text, and a flag saying so
            out["raw"] = text
        if parsed is not None:
            out["parsed"] = parsed
        out["cached"] = cached
        return out

    def event(self, call: Call, chunk: JSON) -> bytes | None:
        return None  # templates never stream (parse sets stream: false)

    def replayed(self, call: Call, chunk: JSON) -> bytes | None:
        return None

    def end(self, call: Call, provider: str | None, cached: bool) -> bytes:
        return b""

    def error(self, error: RelaygateError) -> bytes:
        return error_body(error)

    def error_event(self, error: RelaygateError) -> bytes:
        return error_body(error)


def _source(source: str, text: str, value: Any, values: JSON, model: str) -> Any:
    if source == "text":
        return text
    if source == "code":
        return first_code_block(text)
    if source == "prose":
        return prose(text)
    if source == "model":
        return model
    if source == "json":
        return value
    if source.startswith("json."):
        return value.get(source[5:]) if isinstance(value, dict) else None
    return values.get(source.removeprefix("request."))


def _lookup(data: JSON, path: str) -> tuple[bool, Any]:
    current: Any = data
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return False, None
        current = current[part]
    return True, current


def _empty(spec: TaskField) -> Any:
    return {"string": "", "array": [], "object": {}}.get(spec.type)


def _checked(name: str, spec: TaskField, value: Any) -> Any:
    types = _PY_TYPES[spec.type]
    if not isinstance(value, types) or (isinstance(value, bool) and spec.type != "boolean"):
        raise InvalidRequest(f"Invalid value for {name!r}: expected {spec.type}.", param=name)
    if spec.enum is not None and value not in spec.enum:
        allowed = ", ".join(str(v) for v in spec.enum)
        raise InvalidRequest(f"Invalid value for {name!r}: expected one of {allowed}.", param=name)
    limit = spec.max_length
    if limit is not None and isinstance(value, str | list) and len(value) > limit:
        raise InvalidRequest(
            f"Invalid value for {name!r}: longer than {spec.max_length}.", param=name
        )
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return _encode(value).decode()


def _history(turns: Any, name: str) -> list[JSON]:
    if not isinstance(turns, list) or len(turns) > _MAX_HISTORY:
        message = f"{name} must be an array of at most {_MAX_HISTORY} turns."
        raise InvalidRequest(message, param=name)
    out: list[JSON] = []
    for i, turn in enumerate(turns):
        role = turn.get("role") if isinstance(turn, dict) else None
        content = turn.get("content") if isinstance(turn, dict) else None
        if not isinstance(role, str) or role not in _ROLES or not isinstance(content, str):
            raise InvalidRequest(
                f"{name}[{i}] must be {{role: user|assistant, content: string}}.",
                param=f"{name}[{i}]",
            )
        out.append({"role": role, "content": content})
    return out
