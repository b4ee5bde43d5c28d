"""What the tests share besides the fleet fixture (conftest.py)."""

from __future__ import annotations

import asyncio
import inspect
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

#: The tenant whose quota is one sandbox (conftest.py starts the fleet with it).
CAPPED_TENANT = "capped"


@dataclass
class Fleet:
    url: str
    worker_id: str
    log: Path

    def sandboxes(self) -> list[str]:
        """The ids of the Docker containers this fleet's worker holds (its warm pool included)."""
        return docker("ps", "-aq", "--no-trunc", "--filter", f"label=io.codefleet.worker={self.worker_id}").split()


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True, timeout=60).stdout


def container_exists(container_id: str) -> bool:
    return subprocess.run(["docker", "inspect", container_id], capture_output=True, timeout=60).returncode == 0


async def eventually(cond: Callable[[], Awaitable[bool]] | Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Polls cond until it holds (the tests never sleep to wait for something)."""
    deadline = time.monotonic() + timeout
    while True:
        ok = cond()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Context:
    """What AG2 hands an environment as ``context``: an object with ``variables``."""

    variables: dict[str, object]
