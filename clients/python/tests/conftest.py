"""A real fleet for the tests: `codefleet dev` (embedded NATS, a dispatcher, a Docker worker) on a
free port, started once for the session and stopped at its end, after which no sandbox of it
may be left on the Docker daemon.

The binary is $CODEFLEET_BIN, else bin/codefleet of the repository (`make build`); its sandbox
image is $CODEFLEET_IMAGE, else the dev default (`make image`). The tests need Docker, like the
Go tests: a missing daemon fails them, it does not skip them.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from codefleet import Client
from helpers import CAPPED_TENANT, Fleet, docker, free_port

REPO = Path(__file__).resolve().parents[3]
#: Longest a test's coroutine may take.
TEST_TIMEOUT = 180


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Runs `async def` tests in a new event loop each. This is all that pytest-asyncio would
    do here, without a plugin whose configuration changed across its versions."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**args), TEST_TIMEOUT))
    return True


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    binary = Path(os.environ.get("CODEFLEET_BIN", REPO / "bin" / "codefleet"))
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: run `make build` (or set CODEFLEET_BIN)", pytrace=False)
    tmp = tmp_path_factory.mktemp("fleet")
    port = free_port()
    worker_id = f"pytest-{secrets.token_hex(4)}"
    log = tmp / "codefleet-dev.log"
    args = [
        str(binary), "dev",
        "--port", str(port),
        "--http-addr", "",
        "--store-dir", str(tmp / "jetstream"),
        "--worker-id", worker_id,
        "--warm-pool", "1",
        "--tenant-quotas", json.dumps({CAPPED_TENANT: {"max_sandboxes": 1}}),
        "--log-format", "json",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    f = Fleet(url=f"nats://127.0.0.1:{port}", worker_id=worker_id, log=log)
    try:
        asyncio.run(_wait_ready(f, proc))
        yield f
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        left = f.sandboxes()
        if left:
            docker("rm", "-f", *left)
            pytest.fail(f"codefleet dev left {len(left)} sandboxes behind after it stopped: {left}")


async def _quiet(e: Exception) -> None:
    """nats-py logs connection errors by default: while the fleet starts, they are expected."""


async def _wait_ready(f: Fleet, proc: subprocess.Popen[bytes]) -> None:
    """Until the fleet runs code: NATS up, the worker registered with the dispatcher."""
    deadline = time.monotonic() + 90
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"codefleet dev exited with {proc.returncode}:\n{f.log.read_text()[-4000:]}")
        try:
            async with await Client.connect(f.url, attempts=1, overhead=5, connect_wait=2, error_cb=_quiet, allow_reconnect=False) as c:
                conv = c.conversation("fixture-ready")
                await conv.run("true", "bash", timeout=5)
                await conv.close()
                return
        except Exception as e:  # noqa: BLE001 - not up yet: try again
            last = e
        await asyncio.sleep(0.2)
    raise RuntimeError(f"codefleet dev did not run code within 90s ({last}):\n{f.log.read_text()[-4000:]}")
