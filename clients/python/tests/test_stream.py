"""Streamed runs against a real fleet (conftest.py): output handed on while the run goes."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from codefleet import Client, OutputChunk
from codefleet.ag2 import CodeFleetEnvironment
from codefleet.stream import _Reorder
from helpers import Fleet


async def test_output_arrives_while_the_run_goes_in_order(fleet: Fleet) -> None:
    async with await Client.connect(fleet.url) as c:
        conv = c.conversation()
        chunks: list[OutputChunk] = []
        first_at: list[float] = []

        def output(chunk: OutputChunk) -> None:
            if not chunks:
                first_at.append(time.monotonic())
            chunks.append(chunk)

        code = "import time\nprint('started', flush=True)\ntime.sleep(2)\nfor i in range(3): print(i, flush=True); time.sleep(0.1)"
        got = await conv.run_stream(code, "python", output, timeout=30)
        ended = time.monotonic()
        assert got.result.exit_code == 0 and got.result.output == "started\n0\n1\n2\n"
        assert "".join(ch.data for ch in chunks) == got.result.output
        assert [ch.seq for ch in chunks] == list(range(1, len(chunks) + 1)) and len(chunks) >= 2
        assert got.result.stream is not None and got.result.stream.chunks == len(chunks) == got.delivered and got.lost == 0
        # "started" was handed on while the snippet slept its two seconds, not with the result.
        assert ended - first_at[0] > 1.0

        # A retry of the same id runs nothing again and publishes nothing: the output comes once,
        # from the result.
        again: list[OutputChunk] = []
        rerun = await conv.run_stream(code, "python", again.append, request_id=got.result.id)
        assert rerun.result.output == got.result.output and "".join(ch.data for ch in again) == got.result.output
        await conv.close()


async def test_an_environment_shows_output_live(fleet: Fleet) -> None:
    seen: list[str] = []
    async with CodeFleetEnvironment(nats_url=fleet.url, on_output=seen.append) as env:
        res = await env.run("for i in 1 2 3; do echo line $i; done; exit 4", "bash")
        assert res.exit_code == 4 and "".join(seen) == res.output == "line 1\nline 2\nline 3\n"


async def test_chunks_are_handed_on_in_order_each_once() -> None:
    """Out of order, sent twice, of another run, with a gap that never fills."""
    out: list[int] = []
    r = _Reorder("r1", lambda c: out.append(c.seq))

    def chunk(seq: int, id: str = "r1") -> bytes:
        return json.dumps({"id": id, "seq": seq, "data": str(seq)}).encode()

    for data in (chunk(2), chunk(1), chunk(1), chunk(3, id="other"), chunk(3), chunk(5), b"not json", chunk(6)):
        r.add(data)
    assert out == [1, 2, 3]  # 5 and 6 wait for 4
    r.flush()
    assert out == [1, 2, 3, 5, 6] and r.delivered == 5 and r.skipped == 1


class FakeStream:
    """A connection whose run publishes the given chunks, then answers the given result."""

    is_closed = False

    def __init__(self, seqs: list[int], chunks: int) -> None:
        self.seqs, self.chunks = seqs, chunks
        self.unsubscribed = False

    async def subscribe(self, subject: str, cb: Callable[[Any], Awaitable[None]]) -> object:
        self.cb = cb

        async def unsubscribe() -> None:
            self.unsubscribed = True

        return SimpleNamespace(unsubscribe=unsubscribe)

    async def flush(self) -> None:
        pass

    async def request(self, subject: str, payload: bytes, timeout: float) -> object:
        rid = json.loads(payload)["id"]
        for seq in self.seqs:
            await self.cb(SimpleNamespace(data=json.dumps({"id": rid, "seq": seq, "data": f"{seq};"}).encode()))
        out = "".join(f"{i};" for i in range(1, self.chunks + 1))
        return SimpleNamespace(data=json.dumps({"id": rid, "output": out, "stream": {"subject": subject, "chunks": self.chunks}}).encode())


async def test_a_chunk_lost_on_the_way_is_counted_and_the_rest_handed_on() -> None:
    seen: list[str] = []
    got = await Client(FakeStream([1, 3, 4], 4)).conversation().run_stream("x", "bash", lambda c: seen.append(c.data), grace=0.05)  # type: ignore[arg-type]
    assert seen == ["1;", "3;", "4;"] and (got.delivered, got.lost) == (3, 1)


async def test_what_the_output_function_raises_is_raised() -> None:
    nc = FakeStream([1, 2, 3], 3)

    def fail(c: OutputChunk) -> None:
        raise ValueError(f"cannot show {c.data}")

    with pytest.raises(ValueError, match="cannot show 1;"):
        await Client(nc).conversation().run_stream("x", "bash", fail)  # type: ignore[arg-type]
    assert nc.unsubscribed

    async def coroutine(c: OutputChunk) -> None:
        pass

    with pytest.raises(TypeError, match="plain function"):
        await Client(nc).conversation().run_stream("x", "bash", coroutine)  # type: ignore[arg-type]
