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
SLICE_S = 1.0  # each run: short, so that every API and the direct run share each moment
SETTLE_S = 0.2  # quiet time before each run: the gateway's batched saves (50 ms) drain

Row = tuple[str, int, LoadResult]  # (api label or "direct", cycle, result)


def _cycles(opts: Options) -> list[Row]:
    """Short runs, interleaved: in each cycle, direct once, then each API via the gateway,
    starting at another API each cycle; ``rounds`` x ``seconds`` cycles of 1 s runs.

    Run to run, this machine's speed drifts by more than the 10% being judged (the same
    API moved ±20% between 5 s runs a minute apart); a cycle's runs are seconds apart, so
    each cycle compares the APIs at one speed, and the median over cycles drops the
    cycles that a stall hit."""
    headers = {"Content-Type": "application/json", **opts.headers}
    scripts = [
        (label, path, loadgen.wrk_script(body, headers, f"api-{n}"))
        for n, (label, path, body) in enumerate(APIS)
    ]
    direct = loadgen.wrk_script(CHAT_BODY, headers, "api-direct")
    loadgen.wrk(DIRECT + CHAT, direct, 1, 1, opts.warmup_s)  # warm-ups, not reported
    for _, path, script in scripts:
        loadgen.warm_up(VIA + path, script, 1, 1, opts.warmup_s)
    rows: list[Row] = []
    for cycle in range(opts.rounds * max(1, round(opts.seconds / SLICE_S))):
        rows.append(("direct", cycle, loadgen.wrk(DIRECT + CHAT, direct, 1, 1, SLICE_S)))
        # none always runs right after the stored Responses run, whose saves end later
        shift = cycle % len(scripts)
        for label, path, script in scripts[shift:] + scripts[:shift]:
            time.sleep(SETTLE_S)
            rows.append((label, cycle, loadgen.wrk(VIA + path, script, 1, 1, SLICE_S)))
    return rows


def _p50s(rows: list[Row], label: str) -> dict[int, float]:
    return {cycle: r.p50_ms for api, cycle, r in rows if api == label}


def _added(rows: list[Row], label: str) -> list[float]:
    """Per cycle: this API's p50 minus the direct p50 of the same cycle."""
    direct, via = _p50s(rows, "direct"), _p50s(rows, label)
    return [via[c] - direct[c] for c in sorted(via)]


def _summary(rows: list[Row], label: str) -> LoadResult:
    """One API's runs as one row: requests summed, percentiles the median of the runs'."""
    runs = [r for api, _, r in rows if api == label]
    errors: dict[str, int] = {}
    for r in runs:
        for kind, n in r.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    return LoadResult(
        command=runs[0].command,
        requests=sum(r.requests for r in runs),
        rps=statistics.mean(r.rps for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p90_ms=statistics.median(r.p90_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        max_ms=max(r.max_ms for r in runs),
        errors=errors,
    )


def _quartiles(values: list[float]) -> str:
    q1, q2, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return f"{q2:+.3f} ms (quartiles {q1:+.3f} … {q3:+.3f})"


def api_latency(sec: Section, opts: Options) -> None:
    """10. Added p50 latency at c=1 per inbound API, 1 worker, against Chat Completions."""
    cycles = opts.rounds * max(1, round(opts.seconds / SLICE_S))
    sec.details += [
        f"wrk -t1 -c1, {cycles} cycles of {SLICE_S:g} s runs: in each, direct, then each API via",
        f"the gateway (same upstream answer), each after a {SETTLE_S:g} s pause, starting at",
        "another API each cycle. Added = the API's p50 minus the same cycle's direct p50;",
        "figures: the median over cycles (table: requests summed, percentiles the median of",
        f"the runs'). Target: each API's added p50 within {WITHIN:.0%} of /v1/chat/completions'.",
        "",
    ]
    if opts.direct_only:
        sec.details.append("Skipped: it needs the gateway.")
        return
    with Gateway(opts, 1) as gw:
        check_gateway(opts, gw)
        rows = _cycles(opts)
        line = gw.line()
    labels = ["direct", *(label for label, _, _ in APIS)]
    runs = f"{cycles} × {SLICE_S:g} s"  # before ": ", which load_table drops for the commands
    names = {"direct": "direct → nginx"}
    table = [
        (f"{runs}: {names.get(label, label + ' via relaygate')}", _summary(rows, label))
        for label in labels
    ]
    sec.details += [*load_table(table), "", line, ""]
    reference_label = APIS[0][0]
    sec.details.append(f"Per cycle, added p50 and its difference from {reference_label}'s:")
    sec.details.append("")
    reference = statistics.median(_added(rows, reference_label))
    sec.details.append(f"- {reference_label}: {_quartiles(_added(rows, reference_label))}")
    ref_p50 = _p50s(rows, reference_label)
    for label, _, _ in APIS[1:]:
        paired = [p50 - ref_p50[c] for c, p50 in sorted(_p50s(rows, label).items())]
        sec.details.append(
            f"- {label}: {_quartiles(_added(rows, label))}; minus {reference_label}'s: "
            f"{_quartiles(paired)}"
        )
    sec.data = {f"cycle {c}: {label}": vars(r) for label, c, r in rows}
    for label, _, _ in APIS[1:]:
        added = statistics.median(_added(rows, label))
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
