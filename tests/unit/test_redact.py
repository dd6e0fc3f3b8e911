"""Secret scrubbing: every kind of secret, anywhere in generated text, leaves no 8-character run;
ordinary text (words, model names, numbers) is left as it is."""

from __future__ import annotations

import base64
import logging
import random
import string
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaygate.redact import (
    MASK,
    MAX_ERROR_TEXT,
    LogScrubber,
    install_log_scrubber,
    looks_random,
    scrub,
)

B64URL = string.ascii_letters + string.digits + "-_"
TOKEN68 = B64URL + ".~+/"
WORDS = [
    "the",
    "model",
    "is",
    "not",
    "loaded",
    "yet",
    "please",
    "retry",
    "later",
    "CUDA",
    "out",
    "of",
    "memory",
    "tried",
    "to",
    "allocate",
    "MiB",
    "GiB",
    "total",
    "capacity",
    "request",
    "failed",
    "because",
    "context",
    "length",
    "exceeded",
    "maximum",
    "of",
    "internal",
    "server",
    "error",
    "upstream",
    "timeout",
    "while",
    "reading",
    "response",
    "from",
    "backend",
    "worker",
    "InternalServerError",
    "ContextLengthExceeded",
    "Traceback",
    "most",
    "recent",
    "call",
    "last",
    "File",
    "line",
    "ValueError",
    "invalid",
    "value",
    "for",
    "temperature",
    "must",
    "be",
    "between",
    "and",
]
MODELS = [
    "llama3.2:1b",
    "qwen2.5:0.5b",
    "gpt-4o-mini",
    "gpt-4o-mini-2024-07-18",
    "claude-3-5-sonnet-20241022",
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen2.5-Coder-32B-Instruct-GGUF",
    "sentence-transformers/all-MiniLM-L6-v2",
    "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M",
    "deepseek-r1-distill-qwen-32b-q4_k_m",
    "text-embedding-3-large",
    "nomic-embed-text",
]
NUMBERS = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.6g}"),
)
ORDINARY = st.one_of(st.sampled_from(WORDS), st.sampled_from(MODELS), NUMBERS)
SEPARATORS = st.sampled_from([" ", "\n", ", ", ". ", " (", ") ", " '", "' ", ' "', '" '])


def _rand(seed: int, alphabet: str, size: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(size))


def _urlsafe(seed: int, size: int) -> str:
    raw = random.Random(seed).randbytes(size)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


seeds = st.integers(0, 2**32)
# (what the text carries, the secret in it that must not survive)
relaygate_keys = st.builds(
    lambda prefix, seed: (prefix + _urlsafe(seed, 32),) * 2,
    st.sampled_from(["rg_", "vpn_", "acme_", "Tenant42_"]),
    seeds,
)
provider_keys = st.builds(
    lambda prefix, seed, size: (prefix + _rand(seed, B64URL, size),) * 2,
    st.sampled_from(["sk-", "sk-proj-", "sk-ant-api03-", "AIza", "hf_", "ghp_", "gsk_"]),
    seeds,
    st.integers(32, 64),
)
jwts = st.builds(
    lambda header, payload, signature: (f"eyJ{header}.eyJ{payload}.{signature}",) * 2,
    st.text(B64URL, min_size=10, max_size=40),
    st.text(B64URL, min_size=10, max_size=200),
    st.text(B64URL, min_size=0, max_size=86),
)
bearer = st.builds(
    lambda scheme, token: (f"{scheme} {token}", token),
    st.sampled_from(["Bearer", "bearer", "BEARER"]),
    st.text(TOKEN68, min_size=8, max_size=80),
)
named = st.builds(
    lambda form, value: (form.format(value), value),
    st.sampled_from(
        [
            "key={}",
            "api_key={}",
            "?key={}&alt=json",
            "apikey = {}",
            "x-api-key: {}",
            "X-Api-Key:{}",
            '"x-api-key": "{}"',
            "'api_key': '{}'",
            '{{"access_token":"{}"}}',
            "Authorization: Bearer {}",
            "authorization={}",
            "password={}",
            "client_secret: {}",
        ]
    ),
    st.text(string.ascii_letters + string.digits + "._~-", min_size=8, max_size=60),
)
random_tokens = st.builds(
    lambda seed, alphabet, size: (_rand(seed, alphabet, size),) * 2,
    seeds,
    st.sampled_from(
        [B64URL, string.hexdigits[:16], string.ascii_letters + string.digits, "0123456789ABCDEF"]
    ),
    st.integers(40, 96),
)
SECRETS = st.one_of(relaygate_keys, provider_keys, jwts, bearer, named, random_tokens)


def ordinary_text(min_size: int = 0, max_size: int = 60) -> st.SearchStrategy[str]:
    return st.lists(st.tuples(ORDINARY, SEPARATORS), min_size=min_size, max_size=max_size).map(
        lambda parts: "".join(word + sep for word, sep in parts)
    )


def leaked(secret: str, output: str, text_without: str) -> list[str]:
    """8-character runs of ``secret`` in ``output`` that the text around it did not have."""
    runs = {secret[i : i + 8] for i in range(len(secret) - 7)}
    return sorted(r for r in runs if r in output and r not in text_without)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    SECRETS,
    ordinary_text(),
    ordinary_text(),
    SEPARATORS,
    st.sampled_from(["start", "middle", "end", "boundary"]),
)
def test_no_8_character_run_of_any_secret_survives(
    pair: tuple[str, str], before: str, after: str, sep: str, where: str
) -> None:
    carried, secret = pair
    if where == "start":
        before = ""
    elif where == "end":
        after = ""
    elif where == "boundary":  # straddling the old 500-character cut
        before = (before + " filler" * 100)[: 500 - len(carried) // 2]
    text = before + sep + carried + sep + after
    output = scrub(text)
    assert not leaked(secret, output, before + sep + sep + after)
    assert MASK in output


@settings(max_examples=200)
@given(
    st.integers(0, 2**32),
    st.integers(10, 64),
    ordinary_text(),
    ordinary_text(),
    st.sampled_from(["", " ", "'", "="]),
)
def test_a_known_secret_of_any_shape_is_removed(
    seed: int, size: int, before: str, after: str, glue: str
) -> None:
    """A configured key with no recognisable prefix, short enough that no pattern would
    catch it (zq8...): only the gateway's knowledge of it removes it."""
    secret = "zq8" + _rand(seed, string.ascii_lowercase + string.digits, size)
    text = before + glue + secret + glue + after
    assert not leaked(secret, scrub(text, None, "", secret), before + glue + glue + after)


def test_known_secrets_are_what_removes_an_unshaped_key() -> None:
    secret = "zq8kd93mfa0q7x"  # 14 characters: no pattern matches it
    text = f"Incorrect API key provided: {secret}."
    assert scrub(text) == text  # the shape patterns alone keep it ...
    assert scrub(text, secret) == "Incorrect API key provided: ***."  # ... knowing it removes it


@settings(max_examples=200)
@given(ordinary_text(min_size=1))
def test_ordinary_text_is_left_intact(text: str) -> None:
    assert scrub(text, limit=None) == text


@pytest.mark.parametrize("name", MODELS)
def test_model_names_do_not_look_random(name: str) -> None:
    assert not looks_random(name.replace(":", "").replace(".", ""))
    assert scrub(f"model {name!r} not found") == f"model {name!r} not found"


@settings(max_examples=100)
@given(SECRETS, st.integers(0, 2 * MAX_ERROR_TEXT))
def test_scrubbing_happens_before_the_cut(pair: tuple[str, str], at: int) -> None:
    """Wherever the secret sits relative to the limit, no part of it is left by the cut."""
    carried, secret = pair
    text = ("x " * MAX_ERROR_TEXT)[:at] + " " + carried + " " + "y " * 200
    output = scrub(text)
    assert len(output) <= MAX_ERROR_TEXT
    assert not leaked(secret, output, "x y ")


def test_a_key_straddling_the_limit_leaks_nothing() -> None:
    key = "sk-" + _rand(1, B64URL, 32)
    text = "e" * (MAX_ERROR_TEXT - 16) + key
    assert scrub(text) == "e" * (MAX_ERROR_TEXT - 16) + MASK


def test_log_scrubber_masks_messages_arguments_and_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("relaygate.test_redact")
    configured = "zq8kd93mfa0q7x"
    caller = "rg_" + _urlsafe(7, 32)
    install_log_scrubber(log, [configured])
    install_log_scrubber(log, [configured])  # again, as a restarted app does: one filter
    assert len(log.filters) == 1
    try:
        with caplog.at_level(logging.INFO, logger="relaygate.test_redact"):
            log.warning("upstream said %s with %s", configured, caller)
            try:
                raise ValueError(f"invalid literal: {caller}")
            except ValueError:
                log.exception("unexpected error")
        assert "upstream said *** with ***" in caplog.text
        assert "ValueError: invalid literal: ***" in caplog.text
        assert configured not in caplog.text and caller[3:11] not in caplog.text
    finally:
        for f in list(log.filters):
            log.removeFilter(f)


# Boundaries found by mutation testing (docs/testing.md): each pins one rule's edge.


def test_a_named_value_keeps_its_name() -> None:
    assert scrub("bad request: api_key=zq8kd93mfa0q7x") == "bad request: api_key=***"
    assert scrub('{"token": "zq8kd93mfa0q7x"}') == '{"token": "***"}'


def test_the_longest_known_secret_is_removed_first() -> None:
    """A known secret inside another (and sorting before it) must not leave the rest."""
    inner, outer = "zq8kd93m", "qqzq8kd93mfa"
    assert scrub(f"key {outer} refused", inner, outer) == "key *** refused"
    assert scrub(f"key {outer} refused", outer, inner) == "key *** refused"


def test_known_secrets_of_six_characters_are_removed_and_shorter_ones_kept() -> None:
    assert scrub("the value zq8k9m is wrong", "zq8k9m") == "the value *** is wrong"
    assert scrub("the value zq8k9 is wrong", "zq8k9") == "the value zq8k9 is wrong"


def test_no_limit_keeps_all_of_the_text() -> None:
    text = "e " * MAX_ERROR_TEXT
    assert scrub(text, limit=None) == text
    assert scrub(text) == text[:MAX_ERROR_TEXT]


@pytest.mark.parametrize(
    ("token", "random_"),
    [
        ("0123abcd" * 4, True),  # 8 distinct characters are enough ...
        ("0123abc" * 5, False),  # ... 7 are not
        ("0123456789abcdef" * 2, True),  # hex, letters and digits: random ...
        ("12345678901234567890123456789012", False),  # ... a long number is not
        ("hello1world2there3again", True),  # letters and digits change 6 times ...
        ("hello1world2there3", False),  # ... 5 times is not enough
        ("bcdfgh-jklmnp", True),  # two 6-letter non-words: 12 characters ...
        ("bcdfg-hjklmnp", False),  # ... a 5-letter part counts as a word: 7
        ("aeioubcdfg-aeioubcdfg", True),  # 5 consonants in a row: not a word
        ("helloQRstworld-helloQRstworld", True),  # a lone "Q" is no word piece
        ("bcdakmnaptvw", True),  # too few vowels for a word
        ("InternalServerError-BadGateway", False),  # Capitalised words
        ("TheCatSat-TheDogRan", False),  # 3-letter words
        ("12ab34cdef-bcdfgh", True),  # pieces of 2 characters: not words
    ],
)
def test_looks_random_at_the_edges_of_each_rule(token: str, random_: bool) -> None:
    assert looks_random(token) is random_


def _record(**fields: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "relaygate.test_redact", logging.WARNING, __file__, 1, "%s", (), None
    )
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def test_log_scrubber_passes_a_record_it_cannot_format() -> None:
    """logging reports a bad format string itself; the filter must not drop the record."""
    record = _record(msg="%d", args=("x",))
    assert LogScrubber().filter(record) is True


def test_log_scrubber_keeps_long_records_whole_and_masks_known_secrets_everywhere() -> None:
    configured = "zq8kd93mfa0q7x"  # no shape: only knowing it removes it
    long = "e " * MAX_ERROR_TEXT + "end"
    scrubber = LogScrubber([configured, None])
    try:
        raise ValueError(f"{configured} {long}")
    except ValueError:
        record = _record(msg=f"said {configured} {long}", exc_info=sys.exc_info())
    assert scrubber.filter(record) is True
    assert record.getMessage() == f"said *** {long}"
    assert record.exc_info is None
    assert record.exc_text is not None
    assert configured not in record.exc_text and record.exc_text.endswith(f"ValueError: *** {long}")

    text = f"Traceback: {configured} {long}"
    formatted = _record(exc_text=text, stack_info=f"Stack: {configured} {long}")
    assert scrubber.filter(formatted) is True
    assert formatted.exc_text == f"Traceback: *** {long}"
    assert formatted.stack_info == f"Stack: *** {long}"
