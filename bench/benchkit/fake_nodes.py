"""Fake Ollama nodes for the `nodes` section: tests/fakes/ollama_server.py's FakeOllama,
each with a fixed service time and a concurrency cap, on the given ports, until killed.

    PYTHONPATH=. .venv/bin/python bench/benchkit/fake_nodes.py --ports 18101,18102 \\
        --service-time 0.05 --max-concurrency 2
"""

from __future__ import annotations

import argparse
import asyncio

from tests.fakes.ollama_server import FakeOllama

MODEL = "llama3.2:1b"


async def serve(ports: list[int], service_time: float, cap: int) -> None:
    nodes = [
        FakeOllama([MODEL], service_time=service_time, max_concurrency=cap, loaded=[MODEL])
        for _ in ports
    ]
    for node, port in zip(nodes, ports, strict=True):
        await node.start(port)
    print(f"fake Ollama nodes up on {ports}", flush=True)
    try:
        while True:  # the fakes keep every request they get: forget them as they come
            await asyncio.sleep(1)
            for node in nodes:
                node.reset_stats()
    finally:
        for node in nodes:
            await node.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", required=True)
    parser.add_argument("--service-time", type=float, default=0.05)
    parser.add_argument("--max-concurrency", type=int, default=2)
    args = parser.parse_args()
    ports = [int(p) for p in args.ports.split(",")]
    asyncio.run(serve(ports, args.service_time, args.max_concurrency))


if __name__ == "__main__":
    main()
