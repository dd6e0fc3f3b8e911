"""Secret scrubbing: the one boundary every upstream text crosses into the gateway.

An upstream's error text (an error body, an in-stream error event, a library
exception about it) may echo what it was sent: the deployment's provider key,
the caller's own credential, another tenant's key, a prompt. Before such text
reaches a client, the log, health state or a metric, :func:`scrub` removes:

* every secret the gateway knows for this call (the deployment's key, the
  caller's credential), wherever it appears, whatever its shape;
* every shape of secret: relaygate's own keys (``<prefix>_`` + 43 base64url
  characters; ``rg_``/``vpn_`` followed by 8 or more), ``Bearer``/``Basic``
  credentials, ``key=``/``api_key=``/``token=``/``x-api-key: ...`` values
  (JSON and header forms too), JWTs, provider keys (``sk-``, ``sk-ant-``,
  ``AIza``, ``hf_``, ``ghp_``, ``AKIA`` ...);
* long random-looking tokens: a run of 20 or more base64/hex characters whose
  parts are not word-like (model names and identifiers are kept).

Scrubbing always happens first and truncation last, so no secret can straddle a
cut. It runs on error paths only; the patterns are compiled once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

__all__ = ["MASK", "MAX_ERROR_TEXT", "LogScrubber", "install_log_scrubber", "looks_random", "scrub"]

MASK = "***"
MAX_ERROR_TEXT = 2000  # characters of upstream text kept, after scrubbing
MIN_KNOWN_SECRET = 6  # shorter configured secrets are not searched for (they would mangle text)

_NAMES = (
    r"x[-_]?api[-_]?key|api[-_]?key|access[-_]?key|secret[-_]?key|private[-_]?key"
    r"|access[-_]?token|refresh[-_]?token|auth[-_]?token|id[-_]?token|client[-_]?secret"
    r"|authorization|password|passwd|secret|token|key"
)
# Specific shapes. ``named`` keeps the name and masks the value that follows it.
_SHAPES = re.compile(
    rf"""
    (?P<named>(?<![A-Za-z0-9])(?i:{_NAMES})["']?\s*[:=]\s*["']?)
        (?P<value>(?:(?i:bearer|basic|token)\s+)?[^\s"'&,;<>(){{}}\[\]]+)
  | (?i:\bbearer\s+)[A-Za-z0-9._~+/=-]+
  | (?i:\bbasic\s+)[A-Za-z0-9+/=]{{8,}}
  | eyJ[A-Za-z0-9_-]{{4,}}\.[A-Za-z0-9_-]{{4,}}(?:\.[A-Za-z0-9_-]*)?
  | sk-[A-Za-z0-9_-]{{8,}}
  | AIza[0-9A-Za-z_-]{{20,}}
  | AKIA[0-9A-Z]{{16}}
  | (?:ghp|gho|ghu|ghs|ghr|github_pat|glpat|hf|gsk|xox[abprs])[-_][A-Za-z0-9_-]{{16,}}
  | (?:rg|vpn)_[A-Za-z0-9_-]{{8,}}
  | (?<![A-Za-z0-9_-])[A-Za-z0-9]{{1,16}}_[A-Za-z0-9_-]{{43}}(?![A-Za-z0-9_-])
    """,
    re.VERBOSE,
)
_CANDIDATE = re.compile(r"[A-Za-z0-9_+/=-]{20,}")
_SEPARATORS = re.compile(r"[-_/+=]+")
_WORD_PIECE = re.compile(r"[A-Z]?[a-z]{2,}|[A-Z]{2,}(?![a-z])|[0-9]{1,4}")
_CONSONANTS = re.compile(r"[b-df-hj-np-tv-xz]{5,}", re.IGNORECASE)
_LETTER_DIGIT = re.compile(r"[A-Za-z](?=[0-9])|[0-9](?=[A-Za-z])")
_HEX = re.compile(r"[0-9a-fA-F]{32,}")


def scrub(text: str, *known: str | None, limit: int | None = MAX_ERROR_TEXT) -> str:
    """``text`` with known secrets and secret-shaped tokens masked, then cut to ``limit``."""
    for secret in sorted({s for s in known if s and len(s) >= MIN_KNOWN_SECRET}, key=len)[::-1]:
        text = text.replace(secret, MASK)
    text = _SHAPES.sub(_mask_shape, text)
    text = _CANDIDATE.sub(_mask_random, text)
    return text if limit is None else text[:limit]


def _mask_shape(match: re.Match[str]) -> str:
    named = match.group("named")
    return MASK if named is None else named + MASK


def _mask_random(match: re.Match[str]) -> str:
    token = match.group()
    return MASK if looks_random(token) else token


def looks_random(token: str) -> bool:
    """Whether a run of base64/hex characters looks like a generated secret, not words.

    Model names and identifiers split into word-like parts (``Llama-3.2-3B-Instruct``,
    ``InternalServerError``); random tokens have long parts that are not words, or
    letters and digits interleaved many times.
    """
    if len(set(token)) < 8:  # "xxxxxxxx...", "----...", "1111..."
        return False
    if _HEX.fullmatch(token) and not token.isdigit() and not token.isalpha():
        return True
    if len(_LETTER_DIGIT.findall(token)) >= 6:
        return True
    return sum(len(part) for part in _SEPARATORS.split(token) if not _wordy(part)) >= 12


def _wordy(part: str) -> bool:
    """Short, or made of words (lower, Capitalized, UPPER) and small numbers, with vowels."""
    if len(part) <= 5:
        return True
    pieces = _WORD_PIECE.findall(part)
    if "".join(pieces) != part or len(part) < 3 * len(pieces) or _CONSONANTS.search(part):
        return False
    letters = [c for c in part.lower() if c.isalpha()]
    return sum(c in "aeiouy" for c in letters) >= 0.25 * len(letters)


class LogScrubber(logging.Filter):
    """Scrubs every record of a logger: its message, arguments and traceback text.

    The last line of defence for the log: an exception raised while reading an
    upstream's answer may quote it, and a traceback would carry it to the log.
    """

    def __init__(self, known: Iterable[str | None] = ()) -> None:
        super().__init__()
        self.known = tuple(s for s in known if s)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: logging reports it itself
            return True
        record.msg = scrub(message, *self.known, limit=None)
        record.args = None
        if record.exc_info:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = scrub(formatted, *self.known, limit=None)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text, *self.known, limit=None)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, *self.known, limit=None)
        return True


def install_log_scrubber(log: logging.Logger, known: Iterable[str | None] = ()) -> None:
    """Put one :class:`LogScrubber` on ``log`` (replacing an earlier one: apps may restart)."""
    for old in [f for f in log.filters if isinstance(f, LogScrubber)]:
        log.removeFilter(old)
    log.addFilter(LogScrubber(known))
