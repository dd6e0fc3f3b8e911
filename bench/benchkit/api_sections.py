"""Section 10: added latency at concurrency 1 of each inbound API against Chat Completions.

Every inbound API is the same pipeline given another wire format; what differs is the
translation (and, for the Responses API, storing the answer after it was sent). Each
API's request asks the same upstream for the same canned answer, so the difference in
added latency is the format's own cost. To add an API: one line in ``APIS``.
"""

from __future__ import annotations

import statistics
import time

from . import loadgen
from .common import CHAT, CHAT_BODY, DIRECT, VIA, Options, Section, Target
from .gateway import Gateway, check_gateway
from .http_sections import load_table
from .loadgen import LoadResult

# (label, path, body): the first is the reference the others are compared with.
APIS = [
    ("/v1/chat/completions", CHAT, CHAT_BODY),
    (
        "/v1/responses",
        "/v1/responses",
        '{"model":"bench-model","input":"Say hello.","max_output_tokens":16}',
    ),
    (
        "/v1/responses, store: false",
        "/v1/responses",
        '{"model":"bench-model","input":"Say hello.","max_output_tokens":16,"store":false}',
    ),
    (
        "/api/chat",
        "/api/chat",
        '{"model":"bench-model","messages":[{"role":"user","content":"Say hello."}],'
        '"stream":false,"options":{"num_predict":16}}',
    ),
]
WITHIN = 0.10  # each API's added p50 may exceed Chat Completions' by this share
SETTLE_S = 1.0  # quiet time before each run: the gateway's background writes drain


def _rounds(opts: Options) -> list[tuple[str, str, LoadResult]]:
    """(api label, run label, result): per round, direct once, then each API via the gateway."""
    headers = {"Content-Type": "application/json", **opts.headers}
    scripts = [
        (label, path, loadgen.wrk_script(body, headers, f"api-{n}"))
        for n, (label, path, body) in enumerate(APIS)
    ]
    direct = loadgen.wrk_script(CHAT_BODY, headers, "api-direct")
    loadgen.wrk(DIRECT + CHAT, direct, 1, 1, opts.warmup_s)  # warm-ups, not reported
    for _, path, script in scripts:
        loadgen.wrk(VIA + path, script, 1, 1, opts.warmup_s)
    rows: list[tuple[str, str, LoadResult]] = []
    for i in range(1, opts.rounds + 1):
        result = loadgen.wrk(DIRECT + CHAT, direct, 1, 1, opts.seconds)
        rows.append(("direct", f"round {i}: direct → nginx", result))
        # Each round starts at another API, so that none always runs right after the
        # stored Responses run (whose batched saves go on for a moment after its load).
        shift = (i - 1) % len(scripts)
        for label, path, script in scripts[shift:] + scripts[:shift]:
            time.sleep(SETTLE_S)
            result = loadgen.wrk(VIA + path, script, 1, 1, opts.seconds)
            rows.append((label, f"round {i}: {label} via relaygate", result))
    return rows


def _added_p50(rows: list[tuple[str, str, LoadResult]], label: str) -> float:
    """The median over rounds of (this API's p50 - the direct p50 of the same round)."""
    direct = [r.p50_ms for api, _, r in rows if api == "direct"]
    via = [r.p50_ms for api, _, r in rows if api == label]
    return statistics.median(v - d for d, v in zip(direct, via, strict=True))


def api_latency(sec: Section, opts: Options) -> None:
    """10. Added p50 latency at c=1 per inbound API, 1 worker, against Chat Completions."""
    sec.details += [
        f"wrk -t1 -c1, {opts.rounds} rounds; in each, {opts.seconds} s direct, then {opts.seconds}"
        " s of each API via the gateway (same upstream answer), after a",
        f"{SETTLE_S:.0f} s pause, starting at another API each round. Added = the API's p50 minus",
        "the round's direct p50; figures: the median round. Target: each API's added p50 within",
        f"{WITHIN:.0%} of /v1/chat/completions'.",
        "",
    ]
    if opts.direct_only:
        sec.details.append("Skipped: it needs the gateway.")
        return
    with Gateway(opts, 1) as gw:
        check_gateway(opts, gw)
        rows = _rounds(opts)
        line = gw.line()
    sec.details += [*load_table([(label, r) for _, label, r in rows]), "", line]
    sec.data = {label: vars(r) for _, label, r in rows}
    reference = _added_p50(rows, APIS[0][0])
    for label, _, _ in APIS[1:]:
        added = _added_p50(rows, label)
        errors = sum(r.error_count for api, _, r in rows if api == label)
        share = added / reference - 1 if reference > 0 else float("inf")
        sec.targets.append(
            Target(
                f"Added p50, c=1: {label}",
                f"≤ {APIS[0][0]}'s + {WITHIN:.0%}",
                f"{added:+.3f} ms vs {reference:+.3f} ms ({share:+.0%}), errors {errors}",
                share <= WITHIN and errors == 0,
            )
        )
