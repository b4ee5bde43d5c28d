"""Files in and out of a conversation's sandbox, against a real fleet (conftest.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from types import SimpleNamespace

import pytest

from codefleet import Client, ErrorCode, FileChanged, FileEntry, FleetError, MalformedReply
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


async def test_a_file_that_changes_while_it_is_read_is_an_error() -> None:
    """The first piece says 600 KiB; the second answers for a file that grew meanwhile."""

    class Changing:
        is_closed = False

        async def request(self, subject: str, payload: bytes, timeout: float) -> object:
            req = json.loads(payload)
            if req.get("offset", 0) == 0:
                body = {"op": "get", "path": "f", "size": 600 << 10, "data": base64.b64encode(b"a" * FILE_CHUNK_BYTES).decode(), "sha256": "0" * 64}
            else:
                body = {"op": "get", "path": "f", "size": 700 << 10, "offset": req["offset"], "data": base64.b64encode(b"b" * (88 << 10)).decode()}
            return SimpleNamespace(data=json.dumps(body).encode())

    conv = Client(Changing()).conversation()  # type: ignore[arg-type]
    with pytest.raises(FileChanged, match="changed while it was read"):
        await conv.get_file("f")


def test_decoding_a_file_result() -> None:
    res = decode_file_result(b'{"op":"list","entries":[{"path":"a","type":"file","size":3,"mode":"0644","mtime":"2026-12-07T00:00:00Z","new":1}]}')
    assert res.entries[0] == FileEntry(path="a", type="file", size=3, mode="0644", mtime="2026-12-07T00:00:00Z")
    assert decode_file_result(b'{"op":"get","data":"aGk=","eof":true}').data == b"hi"
    for bad in (b'{"data":"not base64!"}', b'{"entries":{}}', b'{"entries":[1]}'):
        with pytest.raises(MalformedReply):
            decode_file_result(bad)
