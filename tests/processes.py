"""Helpers for tests that run relaygate as real processes."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

__all__ = ["free_port", "wait_ready"]


def free_port() -> int:
    """A loopback port nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str, seconds: float = 15.0) -> None:
    """Wait until the gateway at ``url`` answers /health."""
    async with aiohttp.ClientSession() as session:
        for _ in range(int(seconds / 0.05)):
            try:
                async with session.get(url + "/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"the gateway at {url} did not start")
