"""The OpenAPI 3.1 document (``GET /openapi.json``) and its reference page (``GET /docs``).

The document cannot drift from the code: its routes are the gateway's own
routing tables (``Gateway.served_routes``), and its request bodies are the
msgspec structs that validate requests (``msgspec.json.schema_components``).
This module adds only what the code does not say: a summary, who may call a
route, and the errors it answers with. A route with no entry here is still
documented (as a generic operation), and a test fails until it has one.

Both need no key: they show the routes and schemas, which are the same on
every gateway, and nothing about its configuration (no models, no secrets).
The page is Swagger UI, served from files in the package (no CDN).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, get_args

import msgspec

from relaygate import __version__
from relaygate.api.admin import (
    KeyCreate,
    KeyImport,
    KeyPatch,
    SeedApiKeyCreate,
    SeedCreateKey,
    TenantCreate,
    TenantPatch,
)
from relaygate.api.admin_tunnel import NodeTokenCreate
from relaygate.api.anthropic_schema import CountTokensRequest, MessagesRequest
from relaygate.api.byok import ApiKeyCreate, ProviderConfigCreate, ProviderConfigPatch
from relaygate.api.ollama import OllamaChat, OllamaGenerate
from relaygate.api.ollama_embed import OllamaEmbed, OllamaEmbeddings
from relaygate.api.ollama_meta import OLLAMA_VERSION, ShowRequest
from relaygate.api.responses_schema import ResponsesRequest
from relaygate.api.seed import GenerateRequest
from relaygate.api.task_templates import SHIPPED
from relaygate.api.ui import MEDIA_TYPES as UI_MEDIA_TYPES
from relaygate.asgi import ASGIApp, Receive, Scope, Send, new_request_id, send_bytes
from relaygate.schema.requests import ChatRequest, CompletionRequest, EmbeddingRequest
from relaygate.settings import TaskTemplate
from relaygate.usage.analytics import GroupBy

__all__ = [
    "OPERATIONS",
    "AnthropicError",
    "DocsAPI",
    "ErrorBody",
    "OllamaError",
    "Operation",
    "build_document",
]

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
Auth = Literal["none", "key", "admin"]
JSON = dict[str, Any]


class ErrorDetail(msgspec.Struct, kw_only=True):
    """What went wrong: ``type`` and ``code`` are stable; ``param`` names the field."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct, kw_only=True):
    """OpenAI's error shape, used by every route but the Ollama ones."""

    error: ErrorDetail


class OllamaError(msgspec.Struct, kw_only=True):
    """Ollama's error shape (every /api/ route of Ollama's API)."""

    error: str


class AnthropicErrorDetail(msgspec.Struct, kw_only=True):
    """Anthropic's error ``type`` (by status) and a message."""

    type: str
    message: str


class AnthropicError(msgspec.Struct, kw_only=True):
    """Anthropic's error shape (/v1/messages, /v1/messages/count_tokens)."""

    type: Literal["error"]
    error: AnthropicErrorDetail


@dataclass(frozen=True, slots=True)
class Operation:
    """What the code does not say about a route: its summary, caller, body and errors."""

    summary: str
    tag: str
    auth: Auth = "key"
    body: type[msgspec.Struct] | None = None
    answer: str = "A JSON object."
    media: str = "application/json"
    media_alternatives: tuple[str, ...] = ()  # a file route's other types (by file)
    shape: Literal["object", "array"] = "object"  # of a JSON answer
    stream: str | None = None  # the media type of a streamed answer
    errors: tuple[int, ...] = (401,)
    query: tuple[tuple[str, str], ...] = ()  # (name, description); schemas in _QUERY_SCHEMAS
    required_query: tuple[str, ...] = ()
    ollama: bool = False  # errors in Ollama's shape
    anthropic: bool = False  # errors in Anthropic's shape
    description: str = ""
    created: bool = False  # 201 rather than 200
    # Errors answered as a page or text, not JSON (a file route's): status -> media type
    plain_errors: tuple[tuple[int, str], ...] = ()
    schema: JSON | None = None  # a request body described by data (a task template's fields)


_INFERENCE = (400, 401, 403, 404, 413, 415, 429, 502, 503, 504)
_ADMIN = (400, 401, 403, 404, 503)
_SSE = "text/event-stream"
_NDJSON = "application/x-ndjson"
_FILTERS = (
    ("tenant", "A tenant id (also `tenant_id`)."),
    ("key", "A key id (also `key_id`)."),
    ("model", "A model name."),
    ("endpoint", "A route, such as /v1/chat/completions."),
    ("from", "An ISO time or a duration ago (7d, 24h, 30m); also `since`."),
    ("to", "An ISO time or a duration ago; also `until`."),
)
_KEY = "The key, with the secret (`api_key`) shown this once."
_CHAT_ANSWER = "A chat completion, or with `stream: true` server-sent events ending `data: [DONE]`."

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/v1/chat/completions"): Operation(
        "Create a chat completion",
        "OpenAI",
        body=ChatRequest,
        answer=_CHAT_ANSWER,
        stream=_SSE,
        errors=_INFERENCE,
    ),
    ("POST", "/v1/completions"): Operation(
        "Create a text completion",
        "OpenAI",
        body=CompletionRequest,
        stream=_SSE,
        answer="A completion, or server-sent events with `stream: true`.",
        errors=_INFERENCE,
    ),
    ("POST", "/v1/embeddings"): Operation(
        "Create embeddings",
        "OpenAI",
        body=EmbeddingRequest,
        errors=_INFERENCE,
        answer='`{"object": "list", "data": [{"embedding", "index"}], "model", "usage"}`.',
    ),
    ("GET", "/v1/models"): Operation(
        "List the models this gateway serves",
        "OpenAI",
        answer='`{"object": "list", "data": [{"id", "object": "model", "owned_by"}]}`.',
    ),
    ("GET", "/v1/models/{model}"): Operation(
        "Describe one model",
        "OpenAI",
        errors=(401, 404),
        answer='`{"id", "object": "model", "owned_by"}`.',
        description="The model name may contain slashes (`/v1/models/Qwen/Qwen2.5-7B`).",
    ),
    ("POST", "/v1/responses"): Operation(
        "Create a response (Responses API)",
        "OpenAI",
        body=ResponsesRequest,
        stream=_SSE,
        errors=_INFERENCE,
        answer="A Response object, or with `stream: true` its typed server-sent events "
        "(`response.created` ... `response.completed`).",
        description="Stored for the caller's tenant unless `store: false`, so that "
        "`previous_response_id` and `GET /v1/responses/{response_id}` find it.",
    ),
    ("GET", "/v1/responses/{response_id}"): Operation(
        "Retrieve a stored response",
        "OpenAI",
        errors=(401, 404, 503),
        answer="The Response object as it was stored.",
        description="Only the caller's tenant's responses; any other id is a 404.",
    ),
    ("DELETE", "/v1/responses/{response_id}"): Operation(
        "Delete a stored response",
        "OpenAI",
        errors=(401, 404, 503),
        answer='`{"id", "object": "response.deleted", "deleted": true}`.',
        description="Only the caller's tenant's responses; any other id is a 404.",
    ),
    ("POST", "/api/chat"): Operation(
        "Chat (Ollama API)",
        "Ollama",
        body=OllamaChat,
        stream=_NDJSON,
        ollama=True,
        errors=_INFERENCE,
        answer="Ollama's chat answer, or NDJSON lines with `stream: true`.",
    ),
    ("POST", "/api/generate"): Operation(
        "Generate (Ollama API)",
        "Ollama",
        body=OllamaGenerate,
        stream=_NDJSON,
        ollama=True,
        errors=_INFERENCE,
        answer="Ollama's generate answer, or NDJSON lines.",
    ),
    ("POST", "/v1/messages"): Operation(
        "Create a message (Anthropic Messages API)",
        "Anthropic",
        body=MessagesRequest,
        stream=_SSE,
        anthropic=True,
        errors=_INFERENCE,
        answer="An Anthropic Message, or with `stream: true` Anthropic's server-sent events "
        "(message_start ... message_stop).",
        description="The key may also come in `x-api-key`; `anthropic-version` is accepted, "
        "not required.",
    ),
    ("POST", "/v1/messages/count_tokens"): Operation(
        "Count a message's input tokens (Anthropic Messages API)",
        "Anthropic",
        body=CountTokensRequest,
        anthropic=True,
        errors=(400, 401, 404, 413, 415),
        answer='`{"input_tokens": N}`, as relaygate estimates them (nothing is called).',
    ),
    ("GET", "/api/tags"): Operation(
        "List models (Ollama API)",
        "Ollama",
        ollama=True,
        answer='`{"models": [{"name", "model", "modified_at", "size", "digest"}]}`.',
    ),
    ("POST", "/api/embed"): Operation(
        "Embed one input or several (Ollama API)",
        "Ollama",
        body=OllamaEmbed,
        ollama=True,
        errors=_INFERENCE,
        answer='`{"model", "embeddings": [[...]], "total_duration", "load_duration", '
        '"prompt_eval_count"}`.',
        description="`keep_alive` reaches Ollama deployments; `truncate` and `options` are "
        "accepted and ignored.",
    ),
    ("POST", "/api/embeddings"): Operation(
        "Embed one prompt (Ollama API, legacy)",
        "Ollama",
        body=OllamaEmbeddings,
        ollama=True,
        errors=_INFERENCE,
        answer='`{"embedding": [...]}`.',
    ),
    ("POST", "/api/show"): Operation(
        "Show a model (Ollama API)",
        "Ollama",
        body=ShowRequest,
        ollama=True,
        errors=(400, 401, 404, 413, 502, 503, 504),
        answer='`{"modelfile", "parameters", "template", "details", "model_info", '
        '"capabilities", "modified_at"}`: from the Ollama node that serves the model, '
        "else what the gateway knows (unknown details are empty strings).",
    ),
    ("GET", "/api/ps"): Operation(
        "Running models (Ollama API)",
        "Ollama",
        ollama=True,
        answer='`{"models": [{"name", "model", "size", "digest", "details", "expires_at", '
        '"size_vram"}]}`: what the Ollama nodes have loaded, under the public names the key '
        "may use; nodes that do not answer in time are left out, other deployments are not "
        "listed.",
    ),
    ("GET", "/api/version"): Operation(
        "The Ollama API version (Ollama API)",
        "Ollama",
        auth="none",
        errors=(),
        answer=f'`{{"version": "{OLLAMA_VERSION}"}}`: the Ollama release whose API this '
        "gateway implements (clients compare it to minimums).",
    ),
    ("GET", "/"): Operation(
        "Ollama's liveness probe",
        "Ollama",
        auth="none",
        errors=(),
        media="text/plain",
        answer="`Ollama is running`.",
        description="A browser (an Accept header naming text/html) is redirected (302) to "
        "the web UI at /ui/.",
    ),
    ("GET", "/ui"): Operation(
        "The web UI (dashboard, keys, usage, playground)",
        "Reference",
        auth="none",
        errors=(503,),
        plain_errors=((503, "text/html"),),
        media="text/html",
        answer="The page; it asks for a key and talks to the APIs with it.",
        description="503 when this installation was built without the web UI.",
    ),
    ("GET", "/ui/{path}"): Operation(
        "A file of the web UI, or the page for one of its client routes",
        "Reference",
        auth="none",
        errors=(404, 503),
        plain_errors=((404, "text/plain"), (503, "text/html")),
        media="text/html",
        media_alternatives=UI_MEDIA_TYPES,
        answer="The file; the page itself for a route such as `keys` or `playground`.",
        description="404 (text) for a file the UI does not have; 503 when this installation "
        "was built without the web UI.",
    ),
    ("HEAD", "/"): Operation(
        "Ollama's liveness probe (headers only)",
        "Ollama",
        auth="none",
        errors=(),
        media="text/plain",
        answer="No body.",
    ),
    ("POST", "/ai/generate"): Operation(
        "Generate from a prompt (seeds 000/001)",
        "Seed routes",
        body=GenerateRequest,
        stream=_NDJSON,
        errors=_INFERENCE,
        answer='`{"response", "model", "cached", "done", "done_reason", "prompt_eval_count", '
        '"eval_count", "total_duration_ms"}`, or NDJSON lines with `stream: true`.',
    ),
    ("POST", "/chat"): Operation(
        "Chat, with backend and cached (seed 002)",
        "Seed routes",
        body=ChatRequest,
        stream=_SSE,
        errors=_INFERENCE,
        answer="OpenAI's chat completion plus `backend` (the provider) and `cached`.",
    ),
    ("GET", "/ai/models"): Operation(
        "List models (seed 001)",
        "Seed routes",
        answer='`{"models": [{"name", "size", "family", "modified_at"}]}`: the models the key '
        "may use (size and family are null: the gateway does not know them).",
    ),
    ("GET", "/api/models"): Operation(
        "List models (seed 003)",
        "Seed routes",
        ollama=True,
        answer='Ollama\'s `/api/tags` shape: `{"models": [{"name", "model", "modified_at", '
        '"size", "digest"}]}`.',
    ),
    ("GET", "/usage"): Operation(
        "The calling key's limits and use (seed 001)",
        "Seed routes",
        answer='`{"requests_used", "requests_limit", "requests_remaining", "window_reset", '
        '"tier", ...}` and every limit by name.',
    ),
    ("GET", "/api/stats"): Operation(
        "The calling key's statistics (seed 003)",
        "Seed routes",
        errors=(400, 401, 503),
        answer="Requests, tokens and average response time, in total and by model.",
    ),
    ("POST", "/auth/create-key"): Operation(
        "Create a key for a tenant (seed 001)",
        "Seed routes",
        auth="admin",
        body=SeedCreateKey,
        errors=_ADMIN,
        answer='`{"api_key", "key_id", "tenant_id", "tier", "rate_limit", "expires_at", '
        '"created_at"}`.',
    ),
    ("POST", "/api/ai/api-keys"): Operation(
        "Store one of your provider keys, encrypted (seed 004)",
        "Your provider keys (BYOK)",
        body=ApiKeyCreate,
        errors=(400, 401, 403, 503),
        created=True,
        answer="The key, masked (`masked_key`: `sk-...xyz123`), never the secret; with "
        '`check: true`, also `check`: `{"ok", "models"}` or `{"ok": false, "error"}`.',
    ),
    ("GET", "/api/ai/api-keys"): Operation(
        "List your provider keys and your tenant's shared ones, masked (seed 004)",
        "Your provider keys (BYOK)",
        errors=(401, 503),
        shape="array",
        answer="A JSON array of keys: `id`, `provider`, `key_name`, `masked_key`, `shared`, "
        "`expires_at`, `expired`, `last_used_at`.",
    ),
    ("DELETE", "/api/ai/api-keys/{api_key_id}"): Operation(
        "Delete one of your provider keys (a tenant admin: a shared one too)",
        "Your provider keys (BYOK)",
        errors=(401, 404, 503),
        answer='`{"id", "deleted": true}`.',
    ),
    ("POST", "/api/ai/provider-config"): Operation(
        "Configure a provider (seed 004's web client)",
        "Your provider keys (BYOK)",
        body=ProviderConfigCreate,
        errors=(400, 401, 404, 503),
        created=True,
        answer="The configuration: `id`, `provider_type`, `api_key_id`, `base_url`, "
        "`config`, `is_default`, `is_active`.",
    ),
    ("POST", "/api/ai/provider-configs"): Operation(
        "Configure a provider (seed 004's iOS client)",
        "Your provider keys (BYOK)",
        body=ProviderConfigCreate,
        errors=(400, 401, 404, 503),
        created=True,
        answer="The configuration.",
    ),
    ("GET", "/api/ai/provider-configs"): Operation(
        "List your provider configurations",
        "Your provider keys (BYOK)",
        errors=(401, 503),
        shape="array",
        answer="A JSON array of configurations.",
    ),
    ("GET", "/api/ai/provider-configs/{config_id}"): Operation(
        "Read one of your provider configurations",
        "Your provider keys (BYOK)",
        errors=(401, 404, 503),
    ),
    ("PATCH", "/api/ai/provider-configs/{config_id}"): Operation(
        "Change one of your provider configurations",
        "Your provider keys (BYOK)",
        body=ProviderConfigPatch,
        errors=(400, 401, 404, 503),
    ),
    ("DELETE", "/api/ai/provider-configs/{config_id}"): Operation(
        "Delete one of your provider configurations",
        "Your provider keys (BYOK)",
        errors=(401, 404, 503),
        answer='`{"id", "deleted": true}`.',
    ),
    ("GET", "/api/keys"): Operation(
        "List keys (seed 003): all for an admin, its own for a user",
        "Seed routes",
        errors=(401, 503),
        answer='`{"api_keys": [...], "total"}`.',
    ),
    ("POST", "/api/keys"): Operation(
        "Create a key (seed 003)",
        "Seed routes",
        auth="admin",
        body=SeedApiKeyCreate,
        errors=_ADMIN,
        answer="The key in seed 003's shape, with `api_key` shown once.",
    ),
    ("GET", "/api/keys/{key_id}"): Operation(
        "Read a key (seed 003); a user only its own",
        "Seed routes",
        errors=(401, 404, 503),
    ),
    ("DELETE", "/api/keys/{key_id}"): Operation(
        "Revoke a key (seed 003)",
        "Seed routes",
        auth="admin",
        errors=_ADMIN,
        answer='`{"message", "id"}`.',
    ),
    ("POST", "/admin/keys"): Operation(
        "Create a key",
        "Admin",
        auth="admin",
        body=KeyCreate,
        errors=(*_ADMIN, 409),
        answer=_KEY,
        created=True,
    ),
    ("GET", "/admin/keys"): Operation(
        "List keys",
        "Admin",
        auth="admin",
        errors=_ADMIN,
        answer='`{"data": [key, ...]}`.',
        query=(("tenant_id", "A tenant id or name."), ("include_revoked", "true or false.")),
    ),
    ("POST", "/admin/keys/import"): Operation(
        "Import an existing secret as a key",
        "Admin",
        auth="admin",
        body=KeyImport,
        errors=(*_ADMIN, 409),
        answer='`{"key": key, "imported": true}` (the secret is not repeated).',
        created=True,
        description=(
            "For a migration: a secret the clients already hold (a seed's `vpn_...` key, "
            "a demo key) works as it is. 16 to 512 visible ASCII characters; stored hashed. "
            "400 when too short or unusable, 409 when it is already a key."
        ),
    ),
    ("GET", "/admin/keys/{key_id}"): Operation(
        "Read a key (never its secret)", "Admin", auth="admin", errors=_ADMIN
    ),
    ("PATCH", "/admin/keys/{key_id}"): Operation(
        "Change a key",
        "Admin",
        auth="admin",
        body=KeyPatch,
        errors=(*_ADMIN, 409),
    ),
    ("DELETE", "/admin/keys/{key_id}"): Operation(
        "Revoke a key",
        "Admin",
        auth="admin",
        errors=_ADMIN,
        description="The record stays (usage names it): GET /admin/keys/{key_id} still "
        "answers, with `revoked: true`; seed 003's GET /api/keys/{key_id} answers 404.",
    ),
    ("POST", "/admin/keys/{key_id}/rotate"): Operation(
        "Rotate a key's secret", "Admin", auth="admin", errors=(*_ADMIN, 409), answer=_KEY
    ),
    ("POST", "/admin/tenants"): Operation(
        "Create a tenant",
        "Admin",
        auth="admin",
        body=TenantCreate,
        errors=(*_ADMIN, 409),
        created=True,
    ),
    ("GET", "/admin/tenants"): Operation(
        "List tenants", "Admin", auth="admin", errors=_ADMIN, answer='`{"data": [...]}`.'
    ),
    ("GET", "/admin/tenants/{tenant_id}"): Operation(
        "Read a tenant", "Admin", auth="admin", errors=_ADMIN
    ),
    ("PATCH", "/admin/tenants/{tenant_id}"): Operation(
        "Change a tenant", "Admin", auth="admin", body=TenantPatch, errors=(*_ADMIN, 409)
    ),
    ("DELETE", "/admin/tenants/{tenant_id}"): Operation(
        "Delete a tenant whose keys are all revoked",
        "Admin",
        auth="admin",
        errors=(*_ADMIN, 409),
        description="A tenant that still has live keys is a 409: revoke them first.",
    ),
    ("GET", "/admin/deployments"): Operation(
        "Deployments and their last upstream error",
        "Admin",
        auth="admin",
        errors=(401, 403),
        answer='`{"object": "list", "data": [{"model", "deployments": [{"name", "provider", '
        '"state", "consecutive_failures", "last_error_class", "last_error", '
        '"last_error_at"}]}]}`: the error text is scrubbed of secrets; /ready shows only the '
        "class.",
    ),
    ("GET", "/admin/nodes"): Operation(
        "Model nodes: models, load, health",
        "Admin",
        auth="admin",
        errors=(401, 403),
        answer='`{"object": "list", "data": [{"pool", "node", "dial_out", "address", "state", '
        '"reason", "models", "loaded", "in_flight", "queued", "max_concurrency", "max_queue", '
        '"ttft_ewma_ms", "consecutive_failures", "ejections", "ejected_for_s", '
        '"last_error_class", "last_error", "last_probe_at"}], "pools": [{"pool", "provider", '
        '"balance", "nodes", "ejected", "max_ejection_percent"}]}`: state is healthy, down, '
        "ejected or unknown, and reason says why; dial-out nodes in no pool follow, with pool "
        "null; see docs/nodes.md.",
    ),
    ("POST", "/admin/node-tokens"): Operation(
        "Create a node token",
        "Admin",
        auth="admin",
        body=NodeTokenCreate,
        errors=_ADMIN,
        created=True,
        answer="The token's record, with the secret (`token`) shown this once.",
        description="A node token lets `relaygate node` dial out to the gateway and serve "
        "its local model server (docs/nodes-dial-out.md); it cannot call the API.",
    ),
    ("GET", "/admin/node-tokens"): Operation(
        "List node tokens",
        "Admin",
        auth="admin",
        errors=_ADMIN,
        query=(("all", "`true`: include revoked tokens."),),
        answer='`{"object": "list", "data": [{"id", "name", "prefix", "created_at", '
        '"revoked_at", "connected"}]}`; never a secret.',
    ),
    ("DELETE", "/admin/node-tokens/{token_id}"): Operation(
        "Revoke a node token",
        "Admin",
        auth="admin",
        errors=_ADMIN,
        description="The node is cut off at once; its requests in flight fail over.",
    ),
    ("GET", "/admin/usage"): Operation(
        "Usage report",
        "Admin",
        auth="admin",
        errors=_ADMIN,
        query=(
            *_FILTERS,
            ("group_by", "day, hour, model, tenant, key, ..."),
            ("top", "How many top consumers (1-1000)."),
        ),
        answer='`{"group_by", "data", "totals", "top_tenants", "top_keys", "top_models", '
        '"cache"}`.',
    ),
    ("GET", "/admin/usage/latency"): Operation(
        "Latency percentiles over time",
        "Admin",
        auth="admin",
        errors=_ADMIN,
        query=(*_FILTERS, ("bucket", "hour (the default) or day.")),
        required_query=("from",),
        answer='`{"bucket", "data": [{"hour" or "day", "requests", "duration_p50_ms", '
        '"duration_p90_ms", "duration_p99_ms", "ttft_count", "ttft_p50_ms", ...}]}`.',
        description="Answered requests only; `from` is required. Computed in the database, "
        "one row per bucket.",
    ),
    ("GET", "/usage/requests/{request_id}"): Operation(
        "One request's usage record (tokens, cost, duration)",
        "Admin",
        errors=(400, 401, 404, 503),
        answer="The record's fields (docs/usage.md), without the client address.",
        description="The caller's own requests (an admin's: any). The record is written a "
        "moment after the answer ends; until then a 404.",
    ),
    ("GET", "/admin/usage/export.csv"): Operation(
        "Usage records as CSV",
        "Admin",
        auth="admin",
        errors=_ADMIN,
        query=_FILTERS,
        media="text/csv",
        answer="One line per usage record.",
    ),
    ("GET", "/admin/cache"): Operation(
        "This worker's cache figures", "Admin", auth="admin", errors=_ADMIN
    ),
    ("DELETE", "/admin/cache"): Operation(
        "Drop cache entries: all, one model's or one tenant's",
        "Admin",
        auth="admin",
        errors=_ADMIN,
        query=(("model", "A model name."), ("tenant", "A tenant id or name.")),
        answer='`{"cleared": true, "model", "tenant", "removed"}`.',
    ),
    ("GET", "/health"): Operation(
        "Liveness", "Operations", auth="none", errors=(), answer='`{"status": "ok"}`.'
    ),
    ("GET", "/ready"): Operation(
        "Readiness: each deployment's state; 503 when no model can be served",
        "Operations",
        auth="none",
        errors=(503,),
    ),
    ("GET", "/metrics"): Operation(
        "Prometheus metrics",
        "Operations",
        auth="none",
        errors=(),
        media="text/plain",
        answer="Prometheus' text format.",
    ),
    ("GET", OPENAPI_PATH): Operation(
        "This document", "Reference", auth="none", errors=(), answer="OpenAPI 3.1."
    ),
    ("GET", DOCS_PATH): Operation(
        "This reference, rendered (Swagger UI)",
        "Reference",
        auth="none",
        errors=(),
        media="text/html",
        answer="An HTML page; its assets are served under /docs/.",
    ),
}
_REASONS = {
    400: "The request is invalid; `param` names the field.",
    401: "Missing or invalid credentials.",
    403: "The credential may not do this.",
    404: "Not found.",
    409: "Conflicts with the current state.",
    413: "The body is larger than max_body_bytes.",
    415: "The Content-Type is not JSON.",
    429: "A limit was reached; Retry-After and X-RateLimit-* say when it resets.",
    502: "The upstream failed or answered badly.",
    503: "No deployment, or a store the request needs, is available now.",
    504: "The upstream did not answer in time.",
}
_HEADER_DOCS = {
    "X-Request-Id": "This request's id, also in the gateway's log.",
    "X-RateLimit-Limit": "The tightest limit that applies.",
    "X-RateLimit-Remaining": "What is left of it.",
    "X-RateLimit-Reset": "Seconds until it is whole again.",
    "Retry-After": "Seconds to wait before retrying.",
}
_TAGS = [
    ("Task templates", "Task endpoints declared in the configuration (`tasks:`)."),
    ("OpenAI", "The OpenAI-compatible API, for the official SDKs."),
    ("Ollama", "Ollama's native API, for Ollama's clients."),
    ("Anthropic", "Anthropic's Messages API, for Anthropic's SDKs and the tools built on them."),
    ("Seed routes", "The routes of the systems relaygate replaces, kept working."),
    ("Admin", "Keys, tenants, usage and cache (admin keys)."),
    ("Operations", "Liveness, readiness, metrics (no key)."),
    ("Reference", "This document and its page, and the web UI's files (no key)."),
]
_PARAM = re.compile(r"\{([^}]+)\}")


_TASK_TYPES = {"string", "integer", "number", "boolean", "array", "object"}


def task_operation(name: str, template: TaskTemplate) -> Operation:
    """A task template's route, described from its declaration (no model names)."""
    properties: JSON = {}
    required: list[str] = []
    for field_name, spec in template.fields.items():
        kind = spec.type if spec.type in _TASK_TYPES else "string"
        # null is taken as absent: an optional field's default, a required field's 400
        prop: JSON = {"type": kind if spec.required else [kind, "null"]}
        if spec.enum is not None:
            prop["enum"] = list(spec.enum)
        if spec.max_length is not None:
            prop["maxLength" if spec.type == "string" else "maxItems"] = spec.max_length
        if spec.default is not None:
            prop["default"] = spec.default
        if spec.source:
            prop["description"] = f"Read from `{spec.source}` in the body."
        properties[field_name] = prop
        if spec.required:
            required.append(field_name)
    if template.allow_model:
        properties["model"] = {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": 256,
            "description": "A configured model's name; null or absent: the template's model.",
        }
    schema: JSON = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    fields = ", ".join(f'"{f}"' for f in [*template.response, "cached"])
    webhook = template.auth == "webhook"
    return Operation(
        f"Task template {name!r}",
        "Task templates",
        auth="none" if webhook else "key",
        answer=f"`{{{fields}}}`",
        errors=_INFERENCE,
        schema=schema,
        description=(
            "Authenticated by the shared secret header of `tasks.webhook`, not a key."
            if webhook
            else "Declared in the configuration's `tasks:` section (docs/tasks.md)."
        ),
    )


for _name, _template in SHIPPED.items():
    OPERATIONS[("POST", _template.path)] = task_operation(_name, _template)


def operation_for(
    method: str, path: str, extra: Mapping[tuple[str, str], Operation] | None = None
) -> Operation | None:
    """The description of a served route; None when there is none (a test fails then)."""
    found = OPERATIONS.get((method, path)) or (extra or {}).get((method, path))
    asset = ASSETS.get(path[len(DOCS_PATH) + 1 :]) if path.startswith(DOCS_PATH + "/") else None
    if found is None and method == "GET" and asset is not None:
        return Operation(
            "A file of the reference page",
            "Reference",
            auth="none",
            errors=(),
            media=asset.decode().split(";")[0],
            answer="The file.",
        )
    return found


def build_document(
    routes: dict[str, list[str]], extra: Mapping[tuple[str, str], Operation] | None = None
) -> JSON:
    """The OpenAPI 3.1 document of ``routes`` (path template -> methods); ``extra``
    describes routes declared in the configuration (task templates)."""
    bodies = sorted(
        {op.body for op in OPERATIONS.values() if op.body is not None}, key=lambda t: t.__name__
    )
    shapes = [ErrorBody, OllamaError, AnthropicError]
    refs, schemas = msgspec.json.schema_components(
        [*bodies, *shapes], ref_template="#/components/schemas/{name}"
    )
    ref = dict(zip([*bodies, *shapes], refs, strict=True))
    for info in msgspec.inspect.multi_type_info(bodies):
        _time_formats(info, schemas)
    paths: JSON = {}
    for path in sorted(routes):
        item = paths.setdefault(path, {})
        for method in routes[path]:
            op = operation_for(method, path, extra) or Operation(f"{method} {path}", "Other")
            item[method.lower()] = _operation(method, path, op, ref)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "relaygate",
            "version": __version__,
            "summary": "A self-hosted AI gateway: one metered endpoint in front of your models.",
            "description": (
                "Send a key as `Authorization: Bearer <key>` or `X-API-Key: <key>`. "
                "Admin routes need an admin key. Every answer carries `X-Request-Id`."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": name, "description": text} for name, text in _TAGS],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A relaygate key (or a JWT, when configured).",
                },
                "apiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "The same key in the X-API-Key header (seed 000).",
                },
            },
        },
    }


def _time_formats(info: msgspec.inspect.Type, schemas: JSON) -> None:
    """msgspec describes a datetime as a plain string: say it is an RFC 3339 time."""
    if not isinstance(info, msgspec.inspect.StructType):
        return
    properties = schemas.get(info.cls.__name__, {}).get("properties", {})
    for field_info in info.fields:
        kind = field_info.type
        members = kind.types if isinstance(kind, msgspec.inspect.UnionType) else (kind,)
        for member in members:
            _time_formats(member, schemas)
        if any(isinstance(m, msgspec.inspect.DateTimeType) for m in members):
            prop = properties[field_info.encode_name]
            for alternative in prop.get("anyOf", [prop]):
                if alternative.get("type") == "string":
                    alternative["format"] = "date-time"
                    alternative["description"] = "An RFC 3339 time; UTC when it has no offset."


def _operation(method: str, path: str, op: Operation, ref: dict[Any, JSON]) -> JSON:
    out: JSON = {
        "operationId": _operation_id(method, path),
        "summary": op.summary,
        "tags": [op.tag],
    }
    if op.description:
        out["description"] = op.description
    out["security"] = [] if op.auth == "none" else [{"bearer": []}, {"apiKey": []}]
    if op.auth == "admin":
        out["description"] = (op.description + " Needs an admin key.").strip()
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": name in op.required_query,
         "description": text, "schema": _QUERY_SCHEMAS.get(name, {"type": "string"})}
        for name, text in op.query
    ]  # fmt: skip
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref[op.body]}},
        }
    elif op.schema is not None:
        body = {"application/json": {"schema": op.schema}}
        out["requestBody"] = {"required": True, "content": body}
    out["responses"] = _responses(op, ref)
    return out


def _responses(op: Operation, ref: dict[Any, JSON]) -> JSON:
    content: JSON = {
        media: {"schema": _answer_schema(op, media)} for media in (op.media, *op.media_alternatives)
    }
    if op.stream:
        content[op.stream] = {"schema": _SSE_EVENT if op.stream == _SSE else _NDJSON_STREAM}
    success = "201" if op.created else "200"
    responses: JSON = {
        success: {
            "description": op.answer,
            "headers": _headers("X-Request-Id", *(() if op.auth == "none" else _RATE)),
            "content": content,
        }
    }
    error_schema = ref[OllamaError if op.ollama else AnthropicError if op.anthropic else ErrorBody]
    plain = dict(op.plain_errors)
    for status in op.errors:
        error_content = (
            {plain[status]: {"schema": {"type": "string"}}}
            if status in plain
            else {"application/json": {"schema": error_schema}}
        )
        response: JSON = {"description": _REASONS[status], "content": error_content}
        if status == 429:
            response["headers"] = _headers("Retry-After", *_RATE)
        elif status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        responses[str(status)] = response
    return responses


_RATE = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
# Query parameters whose values are few or numbers (the others are text: names, times)
_QUERY_SCHEMAS: dict[str, JSON] = {
    "group_by": {"type": "string", "enum": list(get_args(GroupBy)), "default": "day"},
    "bucket": {"type": "string", "enum": ["hour", "day"], "default": "hour"},
    "top": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
}
# An event stream's schema describes one event, as OpenAPI 3.2's itemSchema does and as
# tools read 3.1 documents (schemathesis checks each event against it).
_SSE_EVENT: JSON = {
    "type": "object",
    "description": "One server-sent event of the stream: `data` is a JSON object (or "
    "`[DONE]`, which ends an OpenAI stream); `event` names it in Anthropic's and the "
    "Responses API's streams.",
    "required": ["data"],
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
}
_NDJSON_STREAM: JSON = {"type": "string", "description": "The stream: one JSON object a line."}


def _answer_schema(op: Operation, media: str) -> JSON:
    if media == "application/json":  # a file route's JSON files are objects (config, maps)
        return {"type": op.shape, "description": op.answer}
    return {"type": "string", "description": op.answer}


def _headers(*names: str) -> JSON:
    return {n: {"description": _HEADER_DOCS[n], "schema": {"type": "string"}} for n in names}


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path.replace("{", "by_")).strip("_")
    return f"{method.lower()}_{words or 'root'}"


# The reference page: Swagger UI from the package, its URLs relative to /docs, so the
# page also works behind a reverse proxy that adds a path prefix.
_PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>relaygate API reference</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/init.js"></script>
</body>
</html>
"""
ASSETS = {
    "swagger-ui.css": b"text/css; charset=utf-8",
    "swagger-ui-bundle.js": b"text/javascript; charset=utf-8",
    "init.js": b"text/javascript; charset=utf-8",
    "LICENSE": b"text/plain; charset=utf-8",
    "NOTICE": b"text/plain; charset=utf-8",
    "swagger-ui-bundle.js.LICENSE.txt": b"text/plain; charset=utf-8",
}
_HTML = b"text/html; charset=utf-8"
_CACHE = [(b"cache-control", b"public, max-age=3600")]


@dataclass(slots=True)
class DocsAPI:
    """Serves the document (built once, on first use) and the page with its assets."""

    served_routes: Callable[[], dict[str, list[str]]]
    extra: Mapping[tuple[str, str], Operation] = field(default_factory=dict)
    _document: bytes | None = None
    _files: dict[str, bytes] = field(default_factory=dict)

    def routes(self) -> dict[str, dict[str, ASGIApp]]:
        table: dict[str, dict[str, ASGIApp]] = {
            OPENAPI_PATH: {"GET": self.openapi},
            DOCS_PATH: {"GET": self.page},
        }
        for name in ASSETS:
            table[f"{DOCS_PATH}/{name}"] = {"GET": self.asset}
        return table

    async def openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._document is None:
            self._document = msgspec.json.encode(build_document(self.served_routes(), self.extra))
        await send_bytes(send, 200, self._document, new_request_id())

    async def page(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, _PAGE, new_request_id(), content_type=_HTML)

    async def asset(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope["path"][len(DOCS_PATH) + 1 :]
        body = self._files.get(name)
        if body is None:  # read once, off the event loop
            body = self._files[name] = await asyncio.to_thread(_read_asset, name)
        await send_bytes(send, 200, body, new_request_id(), content_type=ASSETS[name], extra=_CACHE)


def _read_asset(name: str) -> bytes:
    return resources.files("relaygate.api").joinpath("static", "swagger-ui", name).read_bytes()
