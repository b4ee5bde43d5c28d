"""Files in and out of a conversation's sandbox, against a real fleet (conftest.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from codefleet import Client, CodeFleetError, ErrorCode, FileEntry, FleetError, MalformedReply, SandboxOptions
from codefleet.ag2 import CodeFleetEnvironment
from codefleet.files import FILE_CHUNK_BYTES
from codefleet.protocol import decode_file_result
from helpers import Fleet


async def test_put_run_get_list_delete(fleet: Fleet) -> None:
    async with await Client.connect(fleet.url) as c:
        conv = c.conversation()
        # The first file request makes the sandbox, as a first run does.
        res = await conv.put_file("in/hello.txt", b"hello\n")
        assert (res.path, res.size) == ("in/hello.txt", 6) and res.sandbox is not None and res.sandbox.created
        assert (await conv.run("cat in/hello.txt", "bash")).output == "hello\n"

        # Three pieces, sent PIECE_WINDOW at a time, checked where they land and where read.
        big = os.urandom(2 * FILE_CHUNK_BYTES + 12345)
        res = await conv.put_file("/workspace/data/big.bin", big, mode=0o600)
        assert (res.path, res.size, res.sha256, res.mode) == ("data/big.bin", len(big), hashlib.sha256(big).hexdigest(), "0600")
        run = await conv.run("sha256sum data/big.bin | cut -d' ' -f1; stat -c %a data/big.bin", "bash")
        assert run.output == f"{hashlib.sha256(big).hexdigest()}\n600\n"

        await conv.run("python3 -c \"open('out.csv','w').write('a,b\\n' * 100000)\"", "bash")
        got = await conv.get_file("out.csv")
        assert got.data == b"a,b\n" * 100000 and got.size == 400000 and got.eof

        listing = await conv.list_files(recursive=True)
        paths = {e.path: e for e in listing.entries}
        assert paths["data"].type == "dir" and paths["data/big.bin"].size == len(big) and paths["in/hello.txt"].type == "file"
        assert [e.path for e in (await conv.list_files("in")).entries] == ["in/hello.txt"]

        assert (await conv.delete_file("data", recursive=True)).deleted
        assert not (await conv.delete_file("data")).deleted  # nothing there: not an error
        with pytest.raises(FleetError) as e:
            await conv.get_file("data/big.bin")
        assert e.value.code == ErrorCode.FILE_NOT_FOUND
        await conv.close()


async def test_paths_out_of_the_workspace_and_links_are_refused(fleet: Fleet) -> None:
    async with await Client.connect(fleet.url) as c:
        conv = c.conversation()
        # A snippet plants a link to a file outside the workspace: file requests never follow it.
        await conv.run("ln -s /etc/passwd secret; mkdir -p d; ln -s /etc d/etc", "bash")
        for path in ("../etc/passwd", "/etc/passwd", "secret", "d/etc/hostname"):
            with pytest.raises(FleetError) as e:
                await conv.get_file(path)
            assert e.value.code == ErrorCode.PATH_REFUSED, path
        with pytest.raises(FleetError) as e:
            await conv.put_file("d/etc/evil", b"x")
        assert e.value.code == ErrorCode.PATH_REFUSED
        with pytest.raises(FleetError) as e:
            await conv.put_file("x", b"", mode=0o1777)
        assert e.value.code == ErrorCode.BAD_REQUEST and e.value.result is None  # refused before sending
        with pytest.raises(FleetError) as e:
            await conv.get_file("x", sandbox=SandboxOptions(backend="k8s"))
        assert e.value.code == ErrorCode.BAD_REQUEST and "sandbox.backend 'k8s'" in e.value.message and e.value.result is None
        await conv.close()


async def test_an_agent_gets_a_dataset_and_hands_back_a_result(fleet: Fleet) -> None:
    """With AG2: the caller puts the input, the model's code works on it, the caller gets the output."""
    async with CodeFleetEnvironment(nats_url=fleet.url) as env:
        await env.put_file("sales.csv", b"region,amount\neu,3\nus,4\neu,5\n")
        assert env.sandbox is not None and env.sandbox.created
        code = (
            "import csv, collections\n"
            "t = collections.Counter()\n"
            "for r in csv.DictReader(open('sales.csv')): t[r['region']] += int(r['amount'])\n"
            "open('totals.txt', 'w').write(repr(dict(sorted(t.items()))))\n"
            "print('done')"
        )
        res = await env.run(code, "python")
        assert (res.output, res.exit_code) == ("done\n", 0)
        assert (await env.get_file("totals.txt")).data == b"{'eu': 8, 'us': 4}"


class FakeFiles:
    """A connection answering file requests as a test says, recording what was sent."""

    is_closed = False

    def __init__(self, answer: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.answer = answer
        self.sent: list[dict[str, Any]] = []

    async def request(self, subject: str, payload: bytes, timeout: float) -> object:
        req = json.loads(payload)
        self.sent.append(req)
        return SimpleNamespace(data=json.dumps(self.answer(req)).encode())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("later", "why"),
    [
        ({"size": 700 << 10}, "now 716800"),  # the file grew: its size says so
        ({"size": 600 << 10, "data": "b"}, "sha256"),  # same size, other bytes: the checksum says so
        ({"size": 600 << 10, "offset": 1}, "asked for offset 524288, the answer is at 1"),
    ],
)
async def test_a_file_that_changes_while_it_is_read_is_an_error(later: dict[str, Any], why: str) -> None:
    whole = b"a" * (600 << 10)

    def answer(req: dict[str, Any]) -> dict[str, Any]:
        off = req.get("offset", 0)
        if off == 0:
            return {"op": "get", "size": len(whole), "data": b64(whole[:FILE_CHUNK_BYTES]), "sha256": hashlib.sha256(whole).hexdigest()}
        data = whole[off:] if later.get("data") is None else b"b" * (len(whole) - off)
        return {"op": "get", "size": later["size"], "offset": later.get("offset", off), "data": b64(data)}

    conv = Client(FakeFiles(answer)).conversation()  # type: ignore[arg-type]
    with pytest.raises(CodeFleetError, match=why):
        await conv.get_file("f")


@pytest.mark.parametrize("size", [0, 5, FILE_CHUNK_BYTES, FILE_CHUNK_BYTES + 1, 2 * FILE_CHUNK_BYTES, 5 * FILE_CHUNK_BYTES + 7])
async def test_how_a_put_is_cut_into_pieces(size: int) -> None:
    data = os.urandom(size)
    got: dict[int, bytes] = {}

    def answer(req: dict[str, Any]) -> dict[str, Any]:
        got[req.get("offset", 0)] = base64.b64decode(req.get("data", ""))
        return {"op": "put", "size": sum(len(v) for v in got.values()), "sha256": req.get("sha256", "")}

    nc = FakeFiles(answer)
    await Client(nc).conversation().put_file("f", data)  # type: ignore[arg-type]
    *pieces, last = nc.sent
    assert b"".join(got[k] for k in sorted(got)) == data
    assert all(p["more"] and p["upload"] and "sha256" not in p for p in pieces)
    assert "more" not in last and last["sha256"] == hashlib.sha256(data).hexdigest()
    assert ("upload" in last) == bool(pieces) and len({p.get("upload") for p in nc.sent}) == 1
    assert [p.get("offset", 0) for p in nc.sent] == list(range(0, max(size, 1), FILE_CHUNK_BYTES))
    assert all(p.get("size", 0) == size for p in nc.sent)


async def test_a_failed_piece_stops_the_put_before_its_last() -> None:
    def answer(req: dict[str, Any]) -> dict[str, Any]:
        if req.get("offset") == FILE_CHUNK_BYTES:
            return {"op": "put", "error": {"code": "file_failed", "message": "disk full"}}
        return {"op": "put", "size": 0}

    nc = FakeFiles(answer)
    with pytest.raises(FleetError, match="disk full"):
        await Client(nc).conversation().put_file("f", os.urandom(10 * FILE_CHUNK_BYTES + 1))  # type: ignore[arg-type]
    assert all(p.get("more") for p in nc.sent)  # the last piece, which makes the file, never went


def test_decoding_a_file_result() -> None:
    res = decode_file_result(b'{"op":"list","entries":[{"path":"a","type":"file","size":3,"mode":"0644","mtime":"2026-12-07T00:00:00Z","new":1}]}')
    assert res.entries[0] == FileEntry(path="a", type="file", size=3, mode="0644", mtime="2026-12-07T00:00:00Z")
    assert decode_file_result(b'{"op":"get","data":"aGk=","eof":true}').data == b"hi"
    for bad in (b'{"data":"not base64!"}', b'{"entries":{}}', b'{"entries":[1]}'):
        with pytest.raises(MalformedReply):
            decode_file_result(bad)
