"""The usage record: one per admitted request, whatever happened to it."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["Status", "UsageRecord"]

Status = Literal["ok", "client_aborted", "upstream_error", "timeout", "rejected", "interrupted"]


class UsageRecord(msgspec.Struct, kw_only=True, omit_defaults=False):
    """What one admitted request used. ``request_id`` makes every write idempotent.

    ``created_at`` is the request's start, in Unix seconds (UTC): it is fixed when
    the record is made, so replaying a record lands on the same row.
    """

    request_id: str
    created_at: float
    key_id: str | None
    tenant_id: str | None
    api: str  # "openai", "ollama", "anthropic", "tasks"
    endpoint: str  # the path, e.g. "/v1/chat/completions"
    model: str  # the name the client asked for
    provider: str | None = None  # "openai", "ollama", "mock"; None when no upstream answered
    deployment: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_estimated: bool = False
    cached: bool = False
    status: Status = "ok"
    http_status: int = 200
    duration_ms: float = 0.0
    ttft_ms: float | None = None
    client_ip: str | None = None
    cost: float = 0.0  # estimate, in US dollars, of what the operator pays
    # "user" / "tenant": served with the caller's own (or its tenant's) provider key, so
    # billed to that key and costing the operator nothing; None: the operator's key
    billed_to: str | None = None
