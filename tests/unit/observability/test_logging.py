"""Log formats (text, JSON), the access log's switch, and uvicorn's lines in JSON mode."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from relaygate.errors import ConfigError
from relaygate.observability.logging import (
    ACCESS_LOGGER,
    AccessLog,
    JsonFormatter,
    TextFormatter,
)
from relaygate.redact import LogScrubber
from relaygate.server import server_config
from relaygate.settings import load_settings
from relaygate.usage.accounting import Served


def record(
    message: str, *args: object, fields: dict[str, object] | None = None
) -> logging.LogRecord:
    made = logging.LogRecord("relaygate", logging.WARNING, __file__, 1, message, args, None)
    if fields is not None:
        made.fields = fields
    return made


def test_json_lines_carry_time_level_logger_message_and_fields() -> None:
    line = JsonFormatter().format(
        record("upstream %s failed", "oa", fields={"status": 502, "key_id": None})
    )
    parsed = json.loads(line)
    assert "\n" not in line
    assert parsed["message"] == "upstream oa failed" and parsed["level"] == "warning"
    assert parsed["logger"] == "relaygate" and parsed["status"] == 502
    assert parsed["time"].endswith("Z") and parsed["time"][10] == "T"


def test_json_lines_keep_a_scrubbed_traceback_on_one_line() -> None:
    try:
        raise ValueError("upstream said Bearer sk-abcdefghijklmnop0123")
    except ValueError:
        made = logging.LogRecord(
            "relaygate", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    LogScrubber().filter(made)  # as on the relaygate logger
    line = JsonFormatter().format(made)
    parsed = json.loads(line)
    assert "ValueError" in parsed["exception"] and "sk-abcdefghijklmnop0123" not in line
    assert "\n" not in line


def test_text_lines_show_fields_as_key_value_pairs() -> None:
    line = TextFormatter().format(record("request", fields={"status": 200, "key_id": None}))
    assert line.endswith("WARNING relaygate: request status=200")
    prompt = 'two\nlines with "quotes"'
    line = TextFormatter().format(record("request", fields={"model": "m", "prompt": prompt}))
    assert line.endswith('request model=m prompt="two\\nlines with \\"quotes\\""')
    assert "\n" not in line


@pytest.fixture
def access_level() -> Iterator[logging.Logger]:
    logger = logging.getLogger(ACCESS_LOGGER)
    level = logger.level
    yield logger
    logger.setLevel(level)


def test_the_access_log_is_none_unless_on_and_its_level_lets_info_through(
    access_level: logging.Logger,
) -> None:
    access_level.setLevel(logging.INFO)
    assert AccessLog.from_settings(load_settings(environ={})) is None  # off by default
    on = load_settings(environ={"RELAYGATE_ACCESS_LOG": "true"})
    found = AccessLog.from_settings(on)
    assert found is not None and found.prompts is False
    access_level.setLevel(logging.WARNING)
    assert AccessLog.from_settings(on) is None


def test_log_format_is_text_or_json() -> None:
    assert load_settings(environ={}).log_format == "text"
    assert load_settings(environ={"RELAYGATE_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="RELAYGATE_LOG_FORMAT"):
        load_settings(environ={"RELAYGATE_LOG_FORMAT": "xml"})


def test_in_json_mode_uvicorn_logs_through_relaygates_handler() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        return None

    text = server_config(load_settings(environ={}), app)
    assert text.log_config is not None  # uvicorn's own text handlers
    json_mode = server_config(load_settings(environ={"RELAYGATE_LOG_FORMAT": "json"}), app)
    assert json_mode.log_config is None


def test_a_process_configured_for_json_writes_json_lines() -> None:
    code = (
        "import logging\n"
        "from relaygate.observability.logging import configure_logging\n"
        "from relaygate.settings import load_settings\n"
        "configure_logging(load_settings(environ={'RELAYGATE_LOG_FORMAT': 'json'}))\n"
        "logging.getLogger('relaygate').info('hello %s', 'there')\n"
        "logging.getLogger('relaygate').debug('not at info')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    (line,) = result.stderr.splitlines()
    assert json.loads(line)["message"] == "hello there"


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_each_access_line_is_its_own_record_with_its_own_time_and_fields() -> None:
    logger = logging.getLogger("relaygate.test-access")
    kept = Kept()
    logger.addHandler(kept)
    logger.propagate = False
    try:
        access = AccessLog(logger)
        before = time.time()
        first = Served("req_1", "openai", "/v1/chat/completions", key_id="key_a")
        second = Served("req_2", "ollama", "/api/chat")
        access.served(first, "m", 200, 0.25, 0.01, None)
        access.served(second, "unknown", 404, 0.002, None, None)
    finally:
        logger.removeHandler(kept)
    one, two = (json.loads(JsonFormatter().format(r)) for r in kept.records)
    assert (one["request_id"], one["status"], one["key_id"]) == ("req_1", 200, "key_a")
    assert (two["request_id"], two["status"], two["key_id"]) == ("req_2", 404, None)
    assert one["duration_ms"] == 250 and one["ttfb_ms"] == 10 and two["ttfb_ms"] is None
    assert kept.records[0] is not kept.records[1]
    assert all(r.created >= before and r.levelno == logging.INFO for r in kept.records)
    assert all(r.name == "relaygate.test-access" for r in kept.records)
