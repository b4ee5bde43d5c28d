"""A streamed run: its output handed to a function as it is produced (docs/protocol.md,
Streaming output), as pkg/client/stream.go does it.

The chunks are published by the worker on ``<prefix>.stream.<tenant>.<conversation>.<id>``,
which the client subscribes to before it sends the run. They are handed on in ``seq`` order,
each once; a chunk that never arrives (a slow consumer's loss) is counted in ``lost``, its output
being in the result's ``output``, within its cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats.errors

from .protocol import DEFAULT_TIMEOUT, MalformedReply, OutputChunk, RunResult, checked, decode_output_chunk, decode_run_result, run_request

if TYPE_CHECKING:
    from .client import Conversation

#: How long, once the result is in, to wait for chunks it says were published that have not
#: arrived (the result and the chunks take different routes).
DEFAULT_GRACE = 1.0
#: Chunks held after a missing one before the gap is given up (the run goes on meanwhile).
MAX_HELD = 64
#: Seconds a gap is waited for once chunks are held behind it, as in the Go client.
GAP_WAIT = 0.5


@dataclass(frozen=True)
class StreamResult:
    """A streamed run's result, and what the output function was given of its stream."""

    result: RunResult
    #: Chunks given to the output function.
    delivered: int
    #: Chunks the fleet published that the output function never saw: their output is in
    #: ``result.output``.
    lost: int


class _Reorder:
    """Hands a run's chunks to output in seq order, each once. A gap is given up GAP_WAIT after
    chunks were first held behind it, or when MAX_HELD are: a chunk lost on the way must not
    stop the live output for the rest of the run."""

    def __init__(self, request_id: str, output: Callable[[OutputChunk], Any]) -> None:
        self.id = request_id
        self.output = output
        self.next = 1
        self.held: dict[int, OutputChunk] = {}
        self.delivered = 0
        self.skipped = 0
        self.moved = asyncio.Event()
        #: What output raised: nothing more is handed to it, and run_stream raises it.
        self.error: BaseException | None = None
        self._gap: asyncio.TimerHandle | None = None

    def add(self, data: bytes) -> None:
        try:
            c = decode_output_chunk(data)
        except MalformedReply:
            return  # not a chunk: nothing to hand on
        # Another run's chunk (only a misbehaving publisher sends one), or one handed on or held
        # already (sent again for a retry): ignored.
        if (c.id and c.id != self.id) or c.seq < self.next or c.seq in self.held:
            return
        self.held[c.seq] = c
        self._drain()
        if len(self.held) > MAX_HELD:
            self.skip()

    def _drain(self) -> None:
        while self.next in self.held:
            c = self.held.pop(self.next)
            self.next += 1
            if self.error is None:
                try:
                    self.output(c)
                    self.delivered += 1
                except Exception as e:  # noqa: BLE001 - raised to the caller by run_stream
                    self.error = e
        self.moved.set()
        if not self.held and self._gap is not None:
            self._gap.cancel()
            self._gap = None
        elif self.held and self._gap is None:
            self._gap = asyncio.get_running_loop().call_later(GAP_WAIT, self._gap_timeout)

    def _gap_timeout(self) -> None:
        self._gap = None
        self.skip()

    def skip(self) -> None:
        """Gives up the chunks missing before the first one held."""
        if self.held:
            first = min(self.held)
            self.skipped += first - self.next
            self.next = first
            self._drain()

    def flush(self) -> None:
        while self.held:
            self.skip()
        if self._gap is not None:
            self._gap.cancel()
            self._gap = None


async def run_stream(
    conv: Conversation,
    code: str,
    language: str,
    output: Callable[[OutputChunk], Any],
    request_id: str,
    timeout: float | None,
    env: Any,
    sandbox: Any,
    grace: float,
) -> StreamResult:
    if inspect.iscoroutinefunction(output):
        raise TypeError("output must be a plain function, not a coroutine function: it is called on the event loop, as each chunk arrives")
    c = conv.client
    body = run_request(request_id, code, language, timeout, env, sandbox, stream=True)
    r = _Reorder(request_id, output)

    async def on_msg(msg: Any) -> None:
        r.add(msg.data)

    # Subscribed before the run is sent, and flushed: NATS gives a subscription only what is
    # published after the server knows it (in a cluster, a worker on another server).
    sub = await c.nc.subscribe(c.subjects.stream(conv.tenant, conv.id, request_id), cb=on_msg)
    try:
        await c.nc.flush()
        data = await c._request(c.subjects.run(conv.tenant, conv.id), body, (timeout or DEFAULT_TIMEOUT) + c.overhead, request_id)
        res = decode_run_result(data)
        if res.stream is not None:
            # Published but not here yet: the result may have overtaken them. Wait a little,
            # never for good (a chunk lost on the way never comes).
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            while r.next <= res.stream.chunks and r.error is None and (left := deadline - loop.time()) > 0:
                r.moved.clear()
                try:
                    await asyncio.wait_for(r.moved.wait(), left)
                except asyncio.TimeoutError:
                    break
    finally:
        with contextlib.suppress(nats.errors.Error):  # a connection closed meanwhile: nothing to undo
            await sub.unsubscribe()
        r.flush()  # on an error too: output has every chunk that arrived
        if r.error is not None:
            raise r.error
    lost = max(res.stream.chunks - r.delivered, 0) if res.stream is not None else r.skipped
    if r.delivered == 0 and res.output:
        # Nothing came: a fleet that does not stream, or a retry of a run already over, whose
        # chunks went before this subscription. The function still sees the output, once.
        output(OutputChunk(id=res.id, seq=1, data=res.output))
        r.delivered, lost = 1, 0
    return StreamResult(result=checked(res), delivered=r.delivered, lost=lost)
