"""The fake Ollama server as a process of its own (for a network namespace).

``python -m tests.fakes.ollama_process --models a:1b,b:1b [--chunk-delay S]
[--first-byte-delay S] [--chunks N]`` listens on 127.0.0.1 (of its namespace) on a free
port, prints the port on one line, and answers every request with its default script
until it is killed.
"""

from __future__ import annotations

import argparse
import asyncio

from tests.fakes.ollama_server import FakeOllama
from tests.fakes.script import Script


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--first-byte-delay", type=float, default=0.0)
    parser.add_argument("--content", default=None)
    args = parser.parse_args()
    fake = FakeOllama(models=args.models.split(","))
    fake.default = Script(
        chunk_delay=args.chunk_delay, first_byte_delay=args.first_byte_delay, content=args.content
    )
    await fake.start()
    print(fake.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
