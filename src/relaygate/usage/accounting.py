"""Turning one request's outcome into its usage record (the pipeline's ``settle`` stage).

Every request that passed authentication gets exactly one record, whatever
happened to it: ok, rejected (bad input, a limit), upstream_error, timeout or
client_aborted. Tokens come from the upstream's usage when it reported them;
otherwise they are estimated (and flagged) from the prompt and from the text
relayed so far. Recording only builds the record and hands it to the outbox:
no I/O on the request path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relaygate.settings import Price, UsageConfig
from relaygate.usage.record import Status, UsageRecord
from relaygate.usage.tokens import LazyTokenizer, prompt_text

__all__ = ["LOCAL_PROVIDERS", "Recorder", "Served", "cost_usd", "status_for"]

LOCAL_PROVIDERS = ("ollama", "mock")


@dataclass(slots=True)
class Served:
    """What one request did, gathered along the pipeline for its usage record."""

    request_id: str
    api: str
    endpoint: str
    started: float = field(default_factory=time.time)
    key_id: str | None = None
    tenant_id: str | None = None
    client_ip: str | None = None
    model: str = ""
    provider: str | None = None
    deployment: str | None = None
    body: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    relayed: list[str] = field(default_factory=list)  # streamed text, when usage is unknown
    cached: bool = False
    rejected: bool = False  # refused by the gateway itself (input, limits), not upstream
    http_status: int = 500
    ttft: float | None = None


def status_for(http_status: int) -> Status:
    if http_status < 400:
        return "ok"
    if http_status == 499:
        return "client_aborted"
    if http_status == 504:
        return "timeout"
    if http_status >= 500:
        return "upstream_error"
    return "rejected"


class Recorder:
    """Builds usage records and appends them to the outbox."""

    def __init__(
        self,
        config: UsageConfig,
        append: Callable[[UsageRecord], None],
        tokenizer: LazyTokenizer,
    ) -> None:
        self.config = config
        self.append = append
        self.tokenizer = tokenizer

    def record(self, served: Served) -> UsageRecord:
        prompt, completion, estimated = self._tokens(served)
        record = UsageRecord(
            request_id=served.request_id,
            created_at=served.started,
            key_id=served.key_id,
            tenant_id=served.tenant_id,
            api=served.api,
            endpoint=served.endpoint,
            model=served.model,
            provider=served.provider,
            deployment=served.deployment,
            prompt_tokens=prompt,
            completion_tokens=completion,
            tokens_estimated=estimated,
            cached=served.cached,
            status="rejected" if served.rejected else status_for(served.http_status),
            http_status=served.http_status,
            duration_ms=(time.time() - served.started) * 1000,
            ttft_ms=None if served.ttft is None else served.ttft * 1000,
            client_ip=served.client_ip,
            cost=self._cost(served, prompt, completion),
        )
        self.append(record)
        return record

    def _tokens(self, served: Served) -> tuple[int, int, bool]:
        usage = served.usage
        if usage:
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int) and isinstance(completion, int | None):
                return prompt, completion or 0, False
        if served.body is None or served.http_status in (400, 404, 413, 415):
            return 0, 0, False  # never reached a model: nothing was used
        if served.rejected:
            return 0, 0, False
        prompt = self.tokenizer.prompt(prompt_text(served.body))
        return prompt, self.tokenizer.completion(served.relayed), True

    def _cost(self, served: Served, prompt: int, completion: int) -> float:
        if served.cached and not self.config.charge_cached_tokens:
            return 0.0
        return cost_usd(self.config, served.model, served.provider, prompt, completion)


def cost_usd(
    config: UsageConfig, model: str, provider: str | None, prompt: int, completion: int
) -> float:
    """US dollars, from the price table; local providers (Ollama, mock) cost nothing."""
    price: Price | None = config.prices.get(model)
    if price is None or provider in LOCAL_PROVIDERS:
        return 0.0
    return (prompt * price.input + completion * price.output) / 1_000_000
