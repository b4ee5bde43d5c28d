"""Files of a conversation's workspace, on the files subject (docs/protocol.md, Files), as
pkg/client/files.go moves them: a file larger than one message in pieces of FILE_CHUNK_BYTES,
PIECE_WINDOW of them in flight, the whole file's SHA-256 checked where it lands (put) and where
it is read (get). Every request is retried on a transport failure with the same body, as a run
is: a piece sent again at its offset is taken as it is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any

from .protocol import (
    FILE_CHUNK_BYTES,
    MAX_FILE_BYTES,
    CodeFleetError,
    ErrorCode,
    FileResult,
    FleetError,
    SandboxOptions,
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
    res = decode_file_result(await c._request(c.subjects.files(conv.tenant, conv.id), body, c.overhead, ""))
    if res.error is not None:
        raise FleetError(res.error.code, res.error.message, res)
    return res


async def put(conv: Conversation, path: str, data: bytes, mode: int | None, sandbox: SandboxOptions | None, request_id: str, upload_id: str) -> FileResult:
    if len(data) > MAX_FILE_BYTES:
        raise FleetError(ErrorCode.FILE_TOO_LARGE, f"{path} is {len(data)} bytes, over the largest file limit a worker may have ({MAX_FILE_BYTES} bytes)")
    if mode is not None and not 0 <= mode <= 0o777:
        raise FleetError(ErrorCode.BAD_REQUEST, f"mode {mode:#o} is not permission bits (0 to 0777)")
    common: dict[str, Any] = {"size": len(data), "mode": f"{mode:04o}" if mode is not None else ""}
    view = memoryview(data)
    offsets = list(range(0, len(data), FILE_CHUNK_BYTES)) or [0]
    *pieces, last = offsets
    upload = upload_id if pieces else ""

    async def piece(off: int) -> FileResult:
        return await request(conv, request_id, "put", path, sandbox, data=bytes(view[off : off + FILE_CHUNK_BYTES]),
                             offset=off, upload=upload, more=True, **common)

    # The pieces before the last, PIECE_WINDOW at a time, in any order (the fleet takes them so);
    # the last once they are all in: the file appears then, whole, if the checksum holds.
    window = asyncio.Semaphore(PIECE_WINDOW)

    async def limited(off: int) -> FileResult:
        async with window:
            return await piece(off)

    tasks = [asyncio.ensure_future(limited(off)) for off in pieces]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
    sha = hashlib.sha256(data).hexdigest()
    res = await request(conv, request_id, "put", path, sandbox, data=bytes(view[last:]), offset=last, upload=upload, sha256=sha, **common)
    if res.size != len(data):
        raise CodeFleetError(f"put {path}: the fleet holds {res.size} bytes of the file after the client sent {len(data)}")
    if res.sha256 and res.sha256.lower() != sha:
        raise CodeFleetError(f"put {path}: the fleet's sha256 {res.sha256} differs from the client's {sha}")
    return res


async def get(conv: Conversation, path: str, request_id: str) -> FileResult:
    async def at(off: int) -> FileResult:
        return await request(conv, request_id, "get", path, offset=off, length=FILE_CHUNK_BYTES)

    first = await at(0)
    if first.offset != 0:
        raise CodeFleetError(f"get {path}: asked for offset 0, the answer is at {first.offset}")
    parts = [first.data]
    piece = len(first.data)
    if not first.eof:
        if piece == 0:
            raise CodeFleetError(f"get {path}: no data at offset 0 of {first.size} bytes, and no end of file")
        window = asyncio.Semaphore(PIECE_WINDOW)

        async def limited(off: int) -> FileResult:
            async with window:
                return await at(off)

        # The rest in pieces of the first's length (what the fleet gives at most); an answer
        # that does not fit the first's size is a file that changed.
        tasks = [asyncio.ensure_future(limited(off)) for off in range(piece, first.size, piece)]
        try:
            for off, res in zip(range(piece, first.size, piece), await asyncio.gather(*tasks)):
                want = min(piece, first.size - off)
                if res.offset != off or res.size != first.size or len(res.data) != want:
                    raise FileChanged(f"get {path}: the file changed while it was read (it was {first.size} bytes, now {res.size})")
                parts.append(res.data)
        finally:
            for t in tasks:
                t.cancel()
    data = b"".join(parts)
    sha = hashlib.sha256(data).hexdigest()
    if len(data) != first.size or (first.sha256 and first.sha256.lower() != sha):
        raise FileChanged(f"get {path}: the file changed while it was read (read {len(data)} bytes of sha256 {sha}; it was {first.size} bytes of sha256 {first.sha256})")
    return dataclasses.replace(first, data=data, eof=True, sha256=sha)
