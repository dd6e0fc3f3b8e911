"""The process's log set-up, done once at start by whoever starts the app, and the
access log: one line per inference request.

``log_format: text`` writes ``time level logger: message`` lines; ``json`` writes one
JSON object per line (``time``, ``level``, ``logger``, ``message`` and, for an access
line, its fields). The access log (``access_log: true``) is logger
``relaygate.access`` at info: when it is off, or that logger's level is above info,
:meth:`AccessLog.from_settings` gives None and a request costs nothing more.

An access line carries what the gateway itself decided (ids, the configured model and
deployment names, status, token counts, timings), never text from an upstream, a key
or a prompt. ``log_prompts: true`` adds the prompt, scrubbed of secret-shaped text and
cut to :data:`PROMPT_CHARS` characters.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

import msgspec

from relaygate.redact import scrub
from relaygate.settings import Settings
from relaygate.usage.tokens import prompt_text

if TYPE_CHECKING:
    from relaygate.usage.accounting import Served
    from relaygate.usage.record import UsageRecord

__all__ = [
    "ACCESS_LOGGER",
    "PROMPT_CHARS",
    "AccessLog",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "uses_own_handlers",
]

ACCESS_LOGGER = "relaygate.access"
PROMPT_CHARS = 2000
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_encode = msgspec.json.Encoder().encode


def configure_logging(settings: Settings) -> None:
    """Standard error, in the configured format, at the configured level."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: a host that set up logging keeps its own
        root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Alembic announces each of its plugins at INFO on every start; keep its migrations.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def uses_own_handlers(settings: Settings) -> bool:
    """Whether uvicorn's loggers go through ours (JSON) instead of its own text handlers."""
    return settings.log_format == "json"


_BARE = re.compile(r'[^\s"=]+')


def _fields_text(fields: dict[str, Any]) -> str:
    """``key=value`` pairs; a value with spaces, quotes or newlines (a prompt) is JSON-quoted,
    so that one line stays one line."""
    return " ".join(
        f"{k}={v if not isinstance(v, str) or _BARE.fullmatch(v) else _encode(v).decode()}"
        for k, v in fields.items()
        if v is not None
    )


class TextFormatter(logging.Formatter):
    """``time level logger: message``, and an access line's fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = getattr(record, "fields", None)
        return f"{line} {_fields_text(fields)}" if fields else line


class JsonFormatter(logging.Formatter):
    """One JSON object per record; an access line's fields are top-level keys."""

    _second: tuple[int, str] = (-1, "")  # the last second formatted: strftime is slow

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (
                second,
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
            )
        out: dict[str, Any] = {
            "time": f"{cached[1]}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # already formatted (and scrubbed) by redact.LogScrubber
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return _encode(out).decode()


class AccessLog:
    """Writes the access line of each inference request (see the module docstring)."""

    __slots__ = ("log", "prompts", "template")

    def __init__(self, log: logging.Logger, prompts: bool = False) -> None:
        self.log = log
        self.prompts = prompts
        # Every line is this record with its own time and fields: a LogRecord's own
        # __init__ (paths, thread and process names) was half the cost of a line.
        # Built here, in the worker's event loop thread, where every line is written.
        made = logging.LogRecord(log.name, logging.INFO, __file__, 0, "request", None, None)
        self.template = made.__dict__

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessLog | None:
        """The access log, or None when nothing would be written."""
        log = logging.getLogger(ACCESS_LOGGER)
        if not settings.access_log or not log.isEnabledFor(logging.INFO):
            return None
        return cls(log, settings.log_prompts)

    def served(
        self,
        served: Served,
        model: str,
        status: int,
        seconds: float,
        ttfb: float | None,
        record: UsageRecord | None,
    ) -> None:
        """One request's line. ``model`` is the configured name (or ``unknown``);
        ``record`` is its usage record (None when it failed authentication)."""
        fields: dict[str, Any] = {
            "request_id": served.request_id,
            "api": served.api,
            "endpoint": served.endpoint,
            "key_id": served.key_id,
            "tenant_id": served.tenant_id,
            "client_ip": served.client_ip,
            "model": model,
            "provider": served.provider,
            "deployment": served.deployment,
            "status": status,
            "cached": served.cached,
            "duration_ms": round(seconds * 1000, 3),
            "ttfb_ms": None if ttfb is None else round(ttfb * 1000, 3),
        }
        if record is not None:
            fields["outcome"] = record.status
            fields["prompt_tokens"] = record.prompt_tokens
            fields["completion_tokens"] = record.completion_tokens
            fields["tokens_estimated"] = record.tokens_estimated
            fields["cost_usd"] = record.cost
        if self.prompts and served.body is not None:
            fields["prompt"] = scrub(prompt_text(served.body), limit=PROMPT_CHARS)
        self.log.handle(self._line(fields))

    def _line(self, fields: dict[str, Any]) -> logging.LogRecord:
        line: logging.LogRecord = logging.LogRecord.__new__(logging.LogRecord)
        template = self.template
        line.__dict__.update(template)
        now = time.time()
        line.created = now
        line.msecs = (now - int(now)) * 1000
        line.relativeCreated = template["relativeCreated"] + (now - template["created"]) * 1000
        line.fields = fields
        return line
