"""Files of a conversation's workspace, on the files subject (docs/protocol.md, Files), as
pkg/client/files.go moves them: a file larger than one message in pieces of FILE_CHUNK_BYTES,
PIECE_WINDOW of them in flight, the whole file's SHA-256 checked where it lands (put) and where
it is read (get). Every request is retried on a transport failure with the same body, as a run
is: a piece sent again at its offset is taken as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .protocol import (
    FILE_CHUNK_BYTES,
    MAX_FILE_BYTES,
    CodeFleetError,
    ErrorCode,
    FileResult,
    FleetError,
    SandboxOptions,
    checked,
    decode_file_result,
    file_request,
)

if TYPE_CHECKING:
    from .client import Conversation

#: How many pieces of a put or a get are in flight at once: the worker takes them one after
#: another, and the hops on the way work on the next ones meanwhile.
PIECE_WINDOW = 4


class FileChanged(CodeFleetError):
    """A get whose file changed while it was read in pieces: what was read mixes two versions."""


async def request(conv: Conversation, request_id: str, op: str, path: str, sandbox: SandboxOptions | None = None, **fields: Any) -> FileResult:
    """Sends one file request and decodes its answer; FleetError when it failed."""
    c = conv.client
    body = file_request(request_id, op, path, sandbox, **fields)
    return checked(decode_file_result(await c._request(c.subjects.files(conv.tenant, conv.id), body, c.overhead, "")))


async def _in_order(offsets: Sequence[int], send: Callable[[int], Awaitable[FileResult]]) -> AsyncGenerator[tuple[int, FileResult], None]:
    """Sends a request per offset, PIECE_WINDOW in flight, and yields the answers in order.
    Closed early (an answer that fails, a caller that stops), it cancels the requests still out
    and waits for them."""
    pending: deque[tuple[int, asyncio.Future[FileResult]]] = deque()
    i = 0
    try:
        while i < len(offsets) or pending:
            while i < len(offsets) and len(pending) < PIECE_WINDOW:
                pending.append((offsets[i], asyncio.ensure_future(send(offsets[i]))))
                i += 1
            off, fut = pending.popleft()
            yield off, await fut
    finally:
        for _, fut in pending:
            fut.cancel()
        await asyncio.gather(*(fut for _, fut in pending), return_exceptions=True)


async def put(conv: Conversation, path: str, data: bytes, mode: int | None, sandbox: SandboxOptions | None, request_id: str, upload_id: str) -> FileResult:
    if len(data) > MAX_FILE_BYTES:
        raise FleetError(ErrorCode.FILE_TOO_LARGE, f"{path} is {len(data)} bytes, over the largest file limit a worker may have ({MAX_FILE_BYTES} bytes)")
    if mode is not None and not 0 <= mode <= 0o777:
        raise FleetError(ErrorCode.BAD_REQUEST, f"mode {mode:#o} is not permission bits (0 to 0777)")
    # mode None or 0 is the fleet's default, 0644, as in the Go client.
    common: dict[str, Any] = {"size": len(data), "mode": f"{mode:04o}" if mode else ""}
    view = memoryview(data)
    *pieces, last = list(range(0, len(data), FILE_CHUNK_BYTES)) or [0]
    upload = upload_id if pieces else ""

    async def piece(off: int) -> FileResult:
        return await request(conv, request_id, "put", path, sandbox, data=bytes(view[off : off + FILE_CHUNK_BYTES]),
                             offset=off, upload=upload, more=True, **common)

    # The pieces before the last, PIECE_WINDOW at a time (the fleet takes them in any order);
    # the last once they are all in: the file appears then, whole, if the checksum holds.
    async with contextlib.aclosing(_in_order(pieces, piece)) as answers:
        async for _ in answers:
            pass
    sha = hashlib.sha256(data).hexdigest()
    res = await request(conv, request_id, "put", path, sandbox, data=bytes(view[last:]), offset=last, upload=upload, sha256=sha, **common)
    if res.size != len(data):
        raise CodeFleetError(f"put {path}: the fleet holds {res.size} bytes of the file after the client sent {len(data)}")
    if res.sha256 and res.sha256.lower() != sha:
        raise CodeFleetError(f"put {path}: the fleet's sha256 {res.sha256} differs from the client's {sha}")
    return res


async def get(conv: Conversation, path: str, sandbox: SandboxOptions | None, request_id: str) -> FileResult:
    async def at(off: int) -> FileResult:
        res = await request(conv, request_id, "get", path, sandbox, offset=off, length=FILE_CHUNK_BYTES)
        if res.offset != off:
            raise CodeFleetError(f"get {path}: asked for offset {off}, the answer is at {res.offset}")
        return res

    first = await at(0)
    parts = [first.data]
    piece = len(first.data)
    if not first.eof:
        if piece == 0:
            raise CodeFleetError(f"get {path}: no data at offset 0 of {first.size} bytes, and no end of file")
        # The rest in pieces of the first's length (what the fleet gives at most), in order; an
        # answer that does not fit the first's size is a file that changed.
        async with contextlib.aclosing(_in_order(range(piece, first.size, piece), at)) as answers:
            async for off, res in answers:
                if res.size != first.size or len(res.data) != min(piece, first.size - off):
                    raise FileChanged(f"get {path}: the file changed while it was read (it was {first.size} bytes, now {res.size})")
                parts.append(res.data)
    data = b"".join(parts)
    sha = hashlib.sha256(data).hexdigest()
    if len(data) != first.size or (first.sha256 and first.sha256.lower() != sha):
        raise FileChanged(f"get {path}: the file changed while it was read (read {len(data)} bytes of sha256 {sha}; it was {first.size} bytes of sha256 {first.sha256})")
    return dataclasses.replace(first, data=data, eof=True, sha256=sha)
