"""The metrics added for operations (tokens, cost, time to first token, outbox age, Redis
and database latency): their exposition names, and their sums across worker processes
in prometheus-client's multiprocess mode, each worker a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from relaygate.observability.metrics import Metrics

WORKER = """
import sys
from relaygate.observability.metrics import Metrics
m = Metrics(sys.argv[1])
m.used("m", int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
m.used("m", 0, 0, 0.0)
m.first_token("m", "openai", 0.2)
m.redis_command("EVALSHA", True, 0.001)
m.usage_write(False, 0.05)
m.outbox_age.set(float(sys.argv[5]))
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def run_worker(directory: Path, *args: object) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    command = [sys.executable, "-c", WORKER, str(directory), *map(str, args)]
    subprocess.run(command, env=env, check=True, timeout=60)


def test_two_workers_figures_are_summed_or_maxed(tmp_path: Path) -> None:
    run_worker(tmp_path, 10, 3, 0.25, 7)
    run_worker(tmp_path, 5, 4, 0.5, 42)
    s = samples(Metrics(str(tmp_path)).render().decode())
    model = (("model", "m"),)
    assert s[("relaygate_tokens_total", (("kind", "input"), *model))] == 15
    assert s[("relaygate_tokens_total", (("kind", "output"), *model))] == 7
    assert s[("relaygate_cost_usd_total", model)] == 0.75
    assert s[("relaygate_time_to_first_token_seconds_count", (("api", "openai"), *model))] == 2
    redis = (("command", "EVALSHA"), ("result", "ok"))
    assert s[("relaygate_redis_command_duration_seconds_count", redis)] == 2
    write = (("result", "error"),)
    assert s[("relaygate_usage_write_duration_seconds_count", write)] == 2
    assert s[("relaygate_usage_outbox_oldest_age_seconds", ())] == 42  # the oldest anywhere


def test_one_process_exposes_the_conventional_names() -> None:
    metrics = Metrics()
    metrics.used("m", 1, 2, 0.001)
    text = metrics.render().decode()
    assert 'relaygate_tokens_total{kind="input",model="m"} 1.0' in text
    assert 'relaygate_cost_usd_total{model="m"} 0.001' in text
    assert "relaygate_usage_outbox_oldest_age_seconds 0.0" in text
