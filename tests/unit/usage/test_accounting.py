"""One request's outcome as its usage record: status, tokens (reported or estimated), cost."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaygate.settings import Price, UsageConfig
from relaygate.usage.accounting import MAX_TOKENS, Recorder, Served, cost_usd, status_for
from relaygate.usage.record import UsageRecord
from relaygate.usage.tokens import LazyTokenizer, prompt_text

PRICES = {"gpt-4o": Price(input=2.5, output=10.0)}
BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "one two three"}],
}


class WordTokenizer(LazyTokenizer):
    """A fake that counts words of the prompt and pieces of the relayed text."""

    def __init__(self) -> None:
        super().__init__(Path("unused"), logging.getLogger("relaygate.tests.accounting"))
        self.prompts: list[str] = []

    def prompt(self, text: str) -> int:
        self.prompts.append(text)
        return len(text.split())

    def completion(self, relayed: Sequence[str]) -> int:
        return 100 * len(relayed)


def recorder(**config: Any) -> tuple[Recorder, list[UsageRecord]]:
    appended: list[UsageRecord] = []
    return Recorder(
        UsageConfig(**({"prices": PRICES} | config)), appended.append, WordTokenizer()
    ), appended


def served(**fields: Any) -> Served:
    values: dict[str, Any] = {
        "request_id": "req_1", "api": "openai", "endpoint": "/v1/chat/completions",
        "model": "gpt-4o", "provider": "openai", "body": BODY, "http_status": 200,
    }  # fmt: skip
    values.update(fields)
    return Served(**values)


@pytest.mark.parametrize(
    ("http_status", "status"),
    [
        (200, "ok"), (399, "ok"), (400, "rejected"), (429, "rejected"), (498, "rejected"),
        (499, "client_aborted"), (500, "upstream_error"), (502, "upstream_error"),
        (503, "upstream_error"), (504, "timeout"), (505, "upstream_error"),
    ],
)  # fmt: skip
def test_status_for_each_http_status(http_status: int, status: str) -> None:
    assert status_for(http_status) == status


def test_a_record_carries_what_the_request_did_and_is_appended_once() -> None:
    record_, appended = recorder()
    started = time.time() - 100_000.0  # a long request: its duration dwarfs the test's own
    outcome = served(
        started=started, key_id="key_1", tenant_id="ten_1", client_ip="10.0.0.9",
        deployment="east", usage={"prompt_tokens": 1000, "completion_tokens": 500},
        http_status=201, ttft=0.25,
    )  # fmt: skip
    record = record_.record(outcome)
    assert appended == [record]
    assert (record.request_id, record.created_at, record.key_id, record.tenant_id) == (
        "req_1", started, "key_1", "ten_1"
    )  # fmt: skip
    assert (record.api, record.endpoint, record.model, record.provider, record.deployment) == (
        "openai", "/v1/chat/completions", "gpt-4o", "openai", "east"
    )  # fmt: skip
    assert (record.prompt_tokens, record.completion_tokens, record.tokens_estimated) == (
        1000, 500, False
    )  # fmt: skip
    assert (record.status, record.http_status, record.cached, record.client_ip) == (
        "ok", 201, False, "10.0.0.9"
    )  # fmt: skip
    # milliseconds since the start (the test's own time is bounded by its 60 s timeout)
    assert 100_000_000.0 <= record.duration_ms < 100_000_000.0 + 60_000.0
    assert record.ttft_ms == 250.0
    assert record.cost == pytest.approx((1000 * 2.5 + 500 * 10.0) / 1_000_000)


def test_no_first_token_time_stays_none() -> None:
    assert recorder()[0].record(served(usage={"prompt_tokens": 1})).ttft_ms is None


def test_a_gateway_refusal_is_rejected_whatever_its_status_and_uses_nothing() -> None:
    record = recorder()[0].record(served(status="rejected", http_status=503, relayed=["x"]))
    assert (record.status, record.http_status) == ("rejected", 503)
    assert (record.prompt_tokens, record.completion_tokens, record.tokens_estimated) == (
        0,
        0,
        False,
    )
    assert record.cost == 0.0


def test_reported_usage_without_completion_tokens_counts_none() -> None:
    for usage in ({"prompt_tokens": 7}, {"prompt_tokens": 7, "completion_tokens": None}):
        record = recorder()[0].record(served(usage=usage))
        assert (record.prompt_tokens, record.completion_tokens, record.tokens_estimated) == (
            7, 0, False
        )  # fmt: skip


@pytest.mark.parametrize(
    "usage",
    [
        None,
        {},
        {"completion_tokens": 5},
        {"prompt_tokens": "7"},
        {"prompt_tokens": 7, "completion_tokens": "5"},
    ],
)
def test_missing_or_malformed_usage_is_estimated_from_the_prompt_and_the_relayed_text(
    usage: dict[str, Any] | None,
) -> None:
    record_, _ = recorder()
    record = record_.record(served(usage=usage, relayed=["a", "b"]))
    assert (record.prompt_tokens, record.completion_tokens, record.tokens_estimated) == (
        3,
        200,
        True,
    )
    assert isinstance(record_.tokenizer, WordTokenizer)
    assert record_.tokenizer.prompts == [prompt_text(BODY)]


@pytest.mark.parametrize("http_status", [400, 404, 413, 415])
def test_a_request_that_never_reached_a_model_uses_nothing(http_status: int) -> None:
    record = recorder()[0].record(served(http_status=http_status, relayed=["a"]))
    assert (record.prompt_tokens, record.completion_tokens, record.tokens_estimated) == (
        0,
        0,
        False,
    )
    assert record.status == "rejected"


def test_a_request_without_a_body_uses_nothing() -> None:
    record = recorder()[0].record(served(body=None, http_status=502))
    assert (record.prompt_tokens, record.completion_tokens, record.tokens_estimated) == (
        0,
        0,
        False,
    )


def test_an_upstream_failure_after_the_model_was_reached_is_estimated() -> None:
    record = recorder()[0].record(served(http_status=502, relayed=["a"]))
    assert (record.prompt_tokens, record.completion_tokens, record.tokens_estimated) == (
        3,
        100,
        True,
    )
    assert record.status == "upstream_error"


def test_cached_answers_cost_nothing_unless_cached_tokens_are_charged() -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 500}
    free = recorder()[0].record(served(cached=True, usage=usage))
    charged = recorder(charge_cached_tokens=True)[0].record(served(cached=True, usage=usage))
    assert free.cached and free.cost == 0.0
    assert charged.cost == pytest.approx(0.0075)


def test_cost_from_the_price_table_and_free_local_models() -> None:
    config = UsageConfig(prices=PRICES | {"llama3": Price(input=1.0, output=1.0)})
    assert cost_usd(config, "gpt-4o", "openai", 1_000_000, 0) == 2.5  # per million, exactly
    assert cost_usd(config, "gpt-4o", "openai", 0, 1_000_000) == 10.0
    assert cost_usd(config, "gpt-4o", None, 2, 3) == pytest.approx((2 * 2.5 + 3 * 10.0) / 1e6)
    assert cost_usd(config, "unpriced", "openai", 1000, 1000) == 0.0
    assert cost_usd(config, "llama3", "ollama", 1000, 1000) == 0.0
    assert cost_usd(config, "llama3", "mock", 1000, 1000) == 0.0
    assert cost_usd(config, "llama3", "vllm", 1_000_000, 0) == pytest.approx(1.0)


def test_a_local_model_costs_nothing_even_when_priced() -> None:
    record_, _ = recorder(prices=PRICES | {"llama3": Price(input=1.0, output=1.0)})
    usage = {"prompt_tokens": 1000, "completion_tokens": 500}
    assert record_.record(served(model="llama3", provider="ollama", usage=usage)).cost == 0.0
    assert record_.record(served(model="llama3", provider="vllm", usage=usage)).cost > 0.0


@given(prompt=st.integers(), completion=st.none() | st.integers())
def test_any_reported_token_count_gives_a_record_the_outbox_can_keep(
    prompt: int, completion: int | None
) -> None:
    """An upstream's usage numbers, however large or negative, are counted within
    [0, MAX_TOKENS]: the record always encodes (the outbox's format) and never refunds."""
    rec, appended = recorder()
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    record = rec.record(served(usage=usage, started=time.time()))
    assert 0 <= record.prompt_tokens <= MAX_TOKENS and 0 <= record.completion_tokens <= MAX_TOKENS
    assert record.prompt_tokens == min(max(prompt, 0), MAX_TOKENS)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(record), type=UsageRecord) == record
    assert appended == [record]
