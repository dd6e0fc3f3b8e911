"""Each error says what the usage record of the request it ended is: the gateway refused
it, the deployment failed or timed out, or the gateway stopped it while shutting down."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaygate import errors
from relaygate.errors import (
    AuthenticationError,
    InvalidRequest,
    LimiterUnavailable,
    ModelNotFound,
    NodeBusy,
    NoHealthyDeployment,
    PayloadTooLarge,
    RateLimited,
    RelaygateError,
    ShuttingDown,
    StoreUnavailable,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from relaygate.usage.accounting import Served
from tests.unit.usage.test_accounting import recorder

EXAMPLES: list[tuple[RelaygateError, str | None]] = [
    (InvalidRequest("bad"), "rejected"),
    (ModelNotFound("nope"), "rejected"),
    (PayloadTooLarge(10), "rejected"),
    (AuthenticationError(), "rejected"),
    (RateLimited("limit", retry_after=1, rate_headers=[]), "rejected"),
    (LimiterUnavailable("redis down"), "rejected"),
    (StoreUnavailable("database down"), "rejected"),
    (UpstreamConnectError("refused"), "upstream_error"),
    (UpstreamProtocolError("cut"), "upstream_error"),
    (UpstreamTimeout("slow"), "timeout"),
    (NodeBusy("busy"), "upstream_error"),
    (NoHealthyDeployment("m", 5), "upstream_error"),
    (ShuttingDown(), "interrupted"),
    (RelaygateError("internal"), None),  # an unexpected error: read from its 500
]


@pytest.mark.parametrize(("error", "status"), EXAMPLES, ids=lambda v: type(v).__name__)
def test_each_error_knows_its_usage_status(error: RelaygateError, status: str | None) -> None:
    assert error.usage_status == status


def test_every_error_class_that_can_end_a_request_is_covered_above() -> None:
    covered = {type(error) for error, _ in EXAMPLES} | {UpstreamStatusError}
    abstract = {errors.ClientError, errors.NotFound, errors.UpstreamError, errors.Unavailable}
    # answered by the HTTP layer or the admin API, never by the pipeline
    elsewhere = {
        errors.MethodNotAllowed, errors.RequestTimeout, errors.HeadersTooLarge,
        errors.UnsupportedMediaType, errors.TooManyConnections, errors.Overloaded,
        errors.PermissionDenied,
        errors.Conflict,
    }  # fmt: skip
    classes = {
        c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, RelaygateError)
    }
    assert classes - covered - abstract - elsewhere == set()


@given(st.integers(min_value=400, max_value=599))
def test_an_upstream_error_status_is_rejected_only_when_it_refused_the_request(
    upstream: int,
) -> None:
    """400, 413 and 422 mean the request itself was refused (the client gets a 4xx and
    the record says rejected); any other status, 429 included, is the deployment failing."""
    error = UpstreamStatusError("answered", upstream_status=upstream)
    refused = upstream in (400, 413, 422)
    assert error.usage_status == ("rejected" if refused else "upstream_error")
    served = Served("req", "openai", "/v1/chat/completions", model="m", body={"model": "m"})
    served.http_status, served.status = error.status, error.usage_status
    record = recorder()[0].record(served)
    assert (record.status, record.http_status) == (error.usage_status, error.status)
