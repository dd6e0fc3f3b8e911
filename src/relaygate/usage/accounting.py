"""Turning one request's outcome into its usage record (the pipeline's ``settle`` stage).

Every request that passed authentication gets exactly one record, whatever
happened to it: ok, rejected (bad input, a limit), upstream_error, timeout or
client_aborted. Tokens come from the upstream's usage when it reported them;
otherwise they are estimated (and flagged) from the prompt and from the text
relayed so far. Recording only builds the record and hands it to the outbox:
no I/O on the request path.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relaygate.settings import ModelConfig, Price, UsageConfig
from relaygate.usage.record import Status, UsageRecord
from relaygate.usage.tokens import LazyTokenizer, prompt_text

__all__ = [
    "LOCAL_PROVIDERS",
    "Pricing",
    "Recorder",
    "Served",
    "cost_usd",
    "priced",
    "status_for",
    "undated",
]

LOCAL_PROVIDERS = ("ollama", "mock", "node")  # your own hardware: free
# The most tokens one request is counted for: what usage_records' INTEGER columns hold.
# An upstream that reports more, or fewer than none, is taken at this bound, so its number
# can neither fail the record (the outbox encodes 64-bit integers at most) nor refund
# a token limit (limits are settled at the record's figures).
MAX_TOKENS = 2**31 - 1


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
    # what happened, when an error said so (RelaygateError.usage_status); else it follows
    # from http_status: ok, client_aborted, or for an unexpected 500 upstream_error
    status: Status | None = None
    http_status: int = 500
    ttft: float | None = None
    billed_to: str | None = None  # "user" / "tenant": the caller's own provider key (BYOK)


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
        pricing: Pricing | None = None,
    ) -> None:
        self.config = config
        self.append = append
        self.tokenizer = tokenizer
        self.pricing = pricing or Pricing(config)

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
            status=served.status or status_for(served.http_status),
            http_status=served.http_status,
            duration_ms=(time.time() - served.started) * 1000,
            ttft_ms=None if served.ttft is None else served.ttft * 1000,
            client_ip=served.client_ip,
            cost=0.0 if served.billed_to else self._cost(served, prompt, completion),
            billed_to=served.billed_to,
        )
        self.append(record)
        return record

    def _tokens(self, served: Served) -> tuple[int, int, bool]:
        usage = served.usage
        if usage:
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int) and isinstance(completion, int | None):
                return _bounded(prompt), _bounded(completion or 0), False
        if served.body is None or served.http_status in (400, 404, 413, 415):
            return 0, 0, False  # never reached a model: nothing was used
        if served.status == "rejected":
            return 0, 0, False
        prompt = self.tokenizer.prompt(prompt_text(served.body))
        return prompt, self.tokenizer.completion(served.relayed), True

    def _cost(self, served: Served, prompt: int, completion: int) -> float:
        if served.cached and not self.config.charge_cached_tokens:
            return 0.0
        usage = served.usage if served.usage and not served.cached else None
        return self.pricing.cost(
            served.model, served.provider, served.deployment, prompt, completion, usage
        )


def _bounded(tokens: int) -> int:
    return min(max(tokens, 0), MAX_TOKENS)


class Pricing:
    """Which price applies to a request, and what its usage cost.

    A deployment is priced, first match wins, by: its model entry's ``price``; the
    ``usage.prices`` entry of that model's public name; the entry of the deployment's
    upstream model (so a public alias ``fast`` served by ``gpt-4o-mini`` is priced as
    ``gpt-4o-mini``), where a dated name (``-2024-08-06``, ``-20250514``, ``-002``,
    ``-latest``) falls back to its undated one. Local providers (Ollama, mock) cost 0
    whatever is configured; an OpenAI-compatible server on your own hardware is
    priced like any other unless given ``price: {input: 0, output: 0}``. A model with
    no price at all costs 0.
    """

    def __init__(
        self,
        config: UsageConfig,
        models: Sequence[ModelConfig] = (),
        virtual: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.config = config
        self._models = {m.name: m for m in models}
        # a virtual model (model_router) may be served by any of its members
        self._virtual = dict(virtual or {})
        # model -> its ceiling: admission asks for every request, and the answer depends
        # on the configuration alone (bounded by the model names the router accepts)
        self._ceilings: dict[str, Price | None] = {}
        # deployment name (as the router names it) -> (provider, price)
        self._deployments: dict[str, tuple[str, Price | None]] = {}
        for model in models:
            count = len(model.deployments)
            for index, dep in enumerate(model.deployments):
                name = model.name if count == 1 else f"{model.name}#{index + 1}"
                price = model.price or self._listed(model.name, dep.model or model.name)
                self._deployments[name] = (dep.provider, price)

    def _listed(self, public: str, upstream: str | None) -> Price | None:
        prices = self.config.prices
        price = prices.get(public)
        if price is None and upstream:
            price = prices.get(upstream) or prices.get(undated(upstream))
        return price

    def price(self, model: str, provider: str | None, deployment: str | None) -> Price | None:
        """The price of one served request (None: free)."""
        if provider in LOCAL_PROVIDERS:
            return None
        found = self._deployments.get(deployment) if deployment else None
        if found is not None:
            return None if found[0] in LOCAL_PROVIDERS else found[1]
        entry = self._models.get(model)
        if entry is not None and entry.price is not None:
            return entry.price
        return self._listed(model, model)

    def ceiling(self, model: str) -> Price | None:
        """The dearest price any deployment of ``model``, its fallbacks or (for a virtual
        model) its members may charge:
        what admission reserves before it knows which one will answer."""
        try:
            return self._ceilings[model]
        except KeyError:
            found = self._ceilings[model] = self._ceiling(model)
            return found

    def _ceiling(self, model: str) -> Price | None:
        prices: list[Price] = []
        seen: set[str] = set()
        pending = [model]
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in self._virtual:
                pending.extend(self._virtual[name])
                continue
            entry = self._models.get(name)
            if entry is None:
                if (price := self.price(name, None, None)) is not None:
                    prices.append(price)
                continue
            count = len(entry.deployments)
            for index in range(count):
                dep = name if count == 1 else f"{name}#{index + 1}"
                provider, price = self._deployments[dep]
                if price is not None and provider not in LOCAL_PROVIDERS:
                    prices.append(price)
            pending.extend(entry.fallbacks)
        if not prices:
            return None
        return Price(
            input=max(p.input for p in prices),
            output=max(p.output for p in prices),
            cached_input=max(_cached(p) for p in prices),
            cache_write=max(_written(p) for p in prices),
        )

    def cost(
        self,
        model: str,
        provider: str | None,
        deployment: str | None,
        prompt: int,
        completion: int,
        usage: Mapping[str, Any] | None = None,
    ) -> float:
        return priced(self.price(model, provider, deployment), prompt, completion, usage)


_DATED = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{3}|latest)$")


def undated(model: str) -> str:
    """``claude-sonnet-4-20250514`` -> ``claude-sonnet-4``; other names unchanged."""
    return _DATED.sub("", model)


def _cached(price: Price) -> float:
    return price.input if price.cached_input is None else price.cached_input


def _written(price: Price) -> float:
    return price.input if price.cache_write is None else price.cache_write


def _tokens(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def priced(
    price: Price | None, prompt: int, completion: int, usage: Mapping[str, Any] | None = None
) -> float:
    """US dollars for one request's tokens. ``prompt`` counts every prompt token; of
    those, ``usage.prompt_tokens_details.cached_tokens`` are charged at
    ``cached_input`` and ``cache_write_tokens`` at ``cache_write`` (the rest at
    ``input``). Counts that do not add up are clamped, never charged twice."""
    if price is None:
        return 0.0
    prompt, completion = max(prompt, 0), max(completion, 0)
    details = usage.get("prompt_tokens_details") if usage else None
    read = written = 0
    if isinstance(details, Mapping):
        read = min(_tokens(details.get("cached_tokens")), prompt)
        written = min(_tokens(details.get("cache_write_tokens")), prompt - read)
    fresh = prompt - read - written
    dollars = (
        fresh * price.input
        + read * _cached(price)
        + written * _written(price)
        + completion * price.output
    )
    return dollars / 1_000_000


def cost_usd(
    config: UsageConfig,
    model: str,
    provider: str | None,
    prompt: int,
    completion: int,
    usage: Mapping[str, Any] | None = None,
) -> float:
    """US dollars, priced by the public model name alone (see Pricing for deployments)."""
    return Pricing(config).cost(model, provider, None, prompt, completion, usage)
