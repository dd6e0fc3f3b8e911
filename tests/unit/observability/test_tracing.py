"""Tracing's settings (off by default; the standard OTEL_* variables; what ``config check``
refuses) and the caller's traceparent: any header value is either continued (with the
caller's sampling decision) or ignored, never an error."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from relaygate.errors import ConfigError
from relaygate.observability.tracing import Tracing
from relaygate.settings import TracingConfig, load_settings


def test_off_by_default_and_the_collector_on_loopback() -> None:
    tracing = load_settings(environ={}).tracing
    assert tracing.enabled is False
    assert tracing.traces_url == "http://127.0.0.1:4318/v1/traces"


def test_the_standard_variables_give_the_defaults() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4318/",
        "OTEL_SERVICE_NAME": "gateway-eu",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=abc%3D%3D, x-team=ops",
        "RELAYGATE_TRACING__ENABLED": "true",
    }
    tracing = load_settings(environ=env).tracing
    assert tracing.enabled and tracing.service_name == "gateway-eu"
    assert tracing.traces_url == "https://collector.example:4318/v1/traces"
    assert tracing.headers == {"x-api-key": "abc==", "x-team": "ops"}
    # relaygate's own settings win over them
    env["RELAYGATE_TRACING__ENDPOINT"] = "http://10.0.0.9:4318"
    assert load_settings(environ=env).tracing.endpoint == "http://10.0.0.9:4318"
    overrides = {"tracing": {"service_name": "named"}}
    assert load_settings(environ=env, overrides=overrides).tracing.service_name == "named"
    assert overrides == {"tracing": {"service_name": "named"}}  # the caller's dict untouched


@pytest.mark.parametrize(
    ("env", "blamed"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "no-equals-sign"}, "OTEL_EXPORTER_OTLP_HEADERS"),
        ({"RELAYGATE_TRACING__SAMPLE_RATIO": "1.5"}, "RELAYGATE_TRACING__SAMPLE_RATIO"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], blamed: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=env)
    assert blamed in str(raised.value)


def test_switched_on_without_the_packages_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # what an installation without the otel extra looks like to the import system
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http", None)
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"RELAYGATE_TRACING__ENABLED": "1"})
    assert "pip install 'relaygate[otel]'" in str(raised.value)
    assert load_settings(environ={}).tracing.enabled is False  # off: nothing needed


def scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}


HEX = "0123456789abcdef"


@settings(max_examples=200, deadline=None)
@given(
    value=st.one_of(
        st.text(max_size=80),
        st.builds(
            lambda v, t, s, f: f"{v}-{t}-{s}-{f}",
            st.text(HEX, min_size=2, max_size=2),
            st.text(HEX, min_size=32, max_size=32),
            st.text(HEX, min_size=16, max_size=16),
            st.text(HEX, min_size=2, max_size=2),
        ),
    )
)
def test_any_traceparent_is_continued_or_ignored(value: str) -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingConfig(enabled=True), exporter=exporter)
    try:
        raw = value.encode("utf-8", "surrogatepass")
        request = tracing.start(scope((b"traceparent", raw)), "openai")
        request.finish(200, None, None, None)
        tracing.provider.force_flush()
        spans = exporter.get_finished_spans()
        parts = value.split("-")
        if not spans:  # the caller's trace, which the caller does not sample: neither do we
            assert len(parts) >= 4 and int(parts[3], 16) & 1 == 0
            return
        (span,) = spans
        if span.parent is not None:  # continued: exactly the caller's (valid) ids
            assert len(parts) >= 4 and parts[0] != "ff"
            assert parts[1] != "0" * 32 and parts[2] != "0" * 16
            assert f"{span.context.trace_id:032x}" == parts[1]
            assert f"{span.parent.span_id:016x}" == parts[2]
    finally:
        tracing.provider.shutdown()


def test_off_nothing_of_opentelemetry_is_imported() -> None:
    """The gateway's modules and its settings, tracing off: the SDK stays out of the process
    (a fresh interpreter, since this test module imports it)."""
    import subprocess

    code = (
        "import sys, relaygate.app, relaygate.state, relaygate.pipeline, relaygate.cli\n"
        "from relaygate.settings import load_settings\n"
        "assert not load_settings(environ={}).tracing.enabled\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
