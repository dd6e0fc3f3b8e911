"""The benchmark sections, by the key `run.py --only` takes."""

from __future__ import annotations

from collections.abc import Callable

from .api_sections import api_latency
from .auth_sections import auth_cost
from .cache_sections import cache_cost
from .common import Options, Section
from .http_sections import latency, open_loop, throughput
from .node_sections import nodes_scaling
from .peer_sections import peers
from .relay_sections import large_answers
from .scaling_sections import scaling, scaling_sqlite
from .stream_sections import held_streams, idle_rss, streaming
from .tunnel_sections import node_cost
from .usage_sections import usage_cost

SECTIONS: dict[str, tuple[str, Callable[[Section, Options], None]]] = {
    "latency": ("1. Added latency at concurrency 1 (non-streaming)", latency),
    "throughput": ("2. Throughput at concurrency 32", throughput),
    "openloop": ("3. Open loop at 1,000 req/s offered", open_loop),
    "streaming": ("4. Streaming: time to first chunk", streaming),
    "held": ("5. 1,000 concurrent open streams", held_streams),
    "idle": ("6. Idle RSS right after start", idle_rss),
    "auth": ("7. Auth + limits cost", auth_cost),
    "usage": ("8. Usage accounting cost and durability", usage_cost),
    "cache": ("9. Response cache: hit latency and warm-cache throughput", cache_cost),
    "apis": ("10. Added latency per inbound API at concurrency 1", api_latency),
    "nodes": ("11. A pool of 4 equal model nodes: throughput vs one node", nodes_scaling),
    "dialout": (
        "12. Dial-out node: added time to first chunk, 200 streams via one agent",
        node_cost,
    ),
    "peers": ("13. Side by side: relaygate, LiteLLM and Portkey, 1 worker each", peers),
    "scaling": (
        "14. Workers on PostgreSQL + Redis: throughput per worker, usage outbox depth, p99/p50",
        scaling,
    ),
    "large": ("15. Large answers: added latency at concurrency 1", large_answers),
    "scaling-sqlite": (
        "16. Workers on SQLite + Redis: throughput per worker, usage outbox depth, p99/p50",
        scaling_sqlite,
    ),
}
