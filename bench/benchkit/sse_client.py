"""A minimal raw-socket HTTP/1.1 client for SSE streams: time to first chunk, total time.

Same code for direct-to-nginx and through-the-gateway runs, so its own overhead cancels out
in the "added" figures. Alone:
cd bench && ../.venv/bin/python -m benchkit.sse_client -n 100 -H "Authorization: Bearer $KEY"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from .common import GATEWAY_PORT, HOST, STREAM_BODY, percentile

T = TypeVar("T")
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class StreamSample:
    """One streamed response; times in seconds from just before the request was written."""

    status: int = 0
    ttfc_s: float = math.nan  # first body bytes carrying a "data:" event
    total_s: float = math.nan  # end of the response body
    events: int = 0  # "data:" events received, [DONE] included
    done: bool = False  # saw "data: [DONE]"
    error: str | None = None
    keep_alive: bool = True

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and self.done


def build_request(path: str, body: str, headers: dict[str, str], port: int) -> bytes:
    """An HTTP/1.1 keep-alive POST of a JSON body."""
    raw = body.encode()
    lines = [f"POST {path} HTTP/1.1", f"Host: {HOST}:{port}", "Content-Type: application/json"]
    lines += ["Accept: text/event-stream", f"Content-Length: {len(raw)}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + raw


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """Yield body bytes as they arrive, de-chunked."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while data := await reader.read(65536):
            yield data


async def stream_once(
    conn: Streams, request: bytes, sample: StreamSample, on_first: Callable[[], None] | None = None
) -> StreamSample:
    """Send ``request`` on ``conn`` and read the whole response into ``sample``."""
    reader, writer = conn
    start = time.perf_counter()
    writer.write(request)
    sample.status, headers = await _read_head(reader)
    body = bytearray()
    async for piece in _body(reader, headers):
        if math.isnan(sample.ttfc_s) and b"data:" in piece:
            sample.ttfc_s = time.perf_counter() - start
            if on_first is not None:
                on_first()
        body += piece
    sample.total_s = time.perf_counter() - start
    sample.events = body.count(b"data:")
    sample.done = b"data: [DONE]" in body
    chunked = "transfer-encoding" in headers or "content-length" in headers
    sample.keep_alive = chunked and headers.get("connection", "").lower() != "close"
    return sample


async def _connect(port: int) -> Streams:
    return await asyncio.open_connection(HOST, port)


async def _close(conn: Streams | None) -> None:
    if conn is not None:
        conn[1].close()
        with contextlib.suppress(OSError):
            await conn[1].wait_closed()


async def sequential(port: int, path: str, body: str, count: int, **kw: Any) -> list[StreamSample]:
    """``count`` streams one after another on a keep-alive connection (reopened when needed)."""
    request = build_request(path, body, kw.get("headers", {}), port)
    samples: list[StreamSample] = []
    conn: Streams | None = None
    for _ in range(count):
        sample = StreamSample()
        try:
            conn = conn or await _connect(port)
            await asyncio.wait_for(stream_once(conn, request, sample), kw.get("timeout", 30.0))
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            sample.error, sample.keep_alive = f"{type(exc).__name__}: {exc}", False
        samples.append(sample)
        if not sample.keep_alive:
            await _close(conn)
            conn = None
    await _close(conn)
    return samples


@dataclass
class OpenGauge:
    """How many streams have started (first event seen) and not yet ended; and the peak."""

    now: int = 0
    peak: int = 0

    def opened(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)


async def _one_held(port: int, request: bytes, gauge: OpenGauge, limit_s: float) -> StreamSample:
    sample, conn = StreamSample(), None
    try:
        conn = await _connect(port)
        await asyncio.wait_for(stream_once(conn, request, sample, gauge.opened), limit_s)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    finally:
        gauge.now -= 0 if math.isnan(sample.ttfc_s) else 1
        await _close(conn)
    return sample


async def concurrent(port: int, path: str, body: str, count: int, **kw: Any) -> list[StreamSample]:
    """``count`` streams at once, each on its own connection; kw["gauge"] tracks how many open."""
    request = build_request(path, body, kw.get("headers", {}), port)
    gauge: OpenGauge = kw.get("gauge") or OpenGauge()
    timeout: float = kw.get("timeout", 60.0)
    jobs = [_one_held(port, request, gauge, timeout) for _ in range(count)]
    return list(await asyncio.gather(*jobs))


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when available (lower client overhead), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def with_sampler(job: Awaitable[T], sample: Callable[[], None], every: float) -> T:
    """Await ``job`` while calling ``sample()`` every ``every`` seconds."""
    task = asyncio.ensure_future(job)
    while not task.done():
        sample()
        await asyncio.wait([task], timeout=every)
    sample()
    return task.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=GATEWAY_PORT)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--body", default=STREAM_BODY)
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--concurrent", action="store_true")
    parser.add_argument(
        "-H", "--header", action="append", default=[], help="'Name: value', e.g. Authorization"
    )
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {name.strip(): value.strip() for name, value in headers.items()}
    runner = concurrent if args.concurrent else sequential
    samples = run_async(runner(args.port, args.path, args.body, args.n, headers=headers))
    ttfc = [s.ttfc_s * 1000 for s in samples if s.ok]
    total = [s.total_s * 1000 for s in samples if s.ok]
    print(f"ok {len(ttfc)}/{len(samples)}; errors: {[s.error for s in samples if s.error][:3]}")
    print(f"ttfc p50 {percentile(ttfc, 50):.3f} ms p99 {percentile(ttfc, 99):.3f} ms")
    print(f"total p50 {percentile(total, 50):.3f} ms p99 {percentile(total, 99):.3f} ms")


if __name__ == "__main__":
    main()
