"""codefleet.Client against a real fleet (conftest.py), and its decoding of the contract."""

from __future__ import annotations

import json

import nats.errors
import pytest

from codefleet import (
    Client,
    ConnectError,
    ErrorCode,
    FleetError,
    MalformedReply,
    SandboxOptions,
    TransportError,
    new_id,
)
from codefleet.protocol import decode_close_result, decode_run_result, run_request
from helpers import Fleet, free_port


async def test_run_and_close(fleet: Fleet) -> None:
    async with await Client.connect(fleet.url, tenant="acme") as c:
        conv = c.conversation()
        res = await conv.run("import os\nprint(os.getcwd(), os.environ['ONLY_THIS_RUN'])", "python", env={"ONLY_THIS_RUN": "yes"})
        assert (res.output, res.exit_code, res.timed_out, res.truncated) == ("/workspace yes\n", 0, False, False)
        assert res.sandbox is not None and res.sandbox.created and res.sandbox.worker == fleet.worker_id
        closed = await conv.close()
        assert closed.closed and closed.sandbox is not None and closed.sandbox.id == res.sandbox.id
        # Closing again, or a conversation that never ran, is not an error.
        assert not (await conv.close()).closed


async def test_a_retried_request_id_runs_once(fleet: Fleet) -> None:
    async with await Client.connect(fleet.url) as c:
        conv = c.conversation()
        rid = new_id()
        code = "echo ran >> runs.txt; wc -l < runs.txt"
        first = await conv.run(code, "bash", request_id=rid)
        again = await conv.run(code, "bash", request_id=rid)
        assert first.output == "1\n" and again == first
        # A new id runs again.
        assert (await conv.run(code, "bash")).output == "2\n"
        await conv.close()


async def test_sandbox_env_and_timeout(fleet: Fleet) -> None:
    async with await Client.connect(fleet.url) as c:
        conv = c.conversation()
        res = await conv.run("echo $PLAN; sleep 30", "bash", timeout=1, sandbox=SandboxOptions(env={"PLAN": "pro"}))
        assert (res.output, res.exit_code, res.timed_out) == ("pro\n", 124, True)
        await conv.close()


async def test_fleet_errors_are_raised_with_their_result(fleet: Fleet) -> None:
    async with await Client.connect(fleet.url) as c:
        conv = c.conversation()
        with pytest.raises(FleetError) as e:
            await conv.run("true", "bash", sandbox=SandboxOptions(image="evil:latest"))
        assert e.value.code == ErrorCode.IMAGE_NOT_ALLOWED and "evil:latest" in e.value.message
        assert e.value.result is not None and e.value.error.advice


@pytest.mark.parametrize(
    ("kwargs", "code", "field"),
    [
        ({"code": "", "language": "bash"}, ErrorCode.BAD_REQUEST, "code is empty"),
        ({"code": "x", "language": "cobol"}, ErrorCode.UNSUPPORTED_LANGUAGE, "cobol"),
        ({"code": "x" * (512 << 10 | 1), "language": "bash"}, ErrorCode.BAD_REQUEST, "code is 524289 bytes"),
        ({"code": "x", "language": "bash", "request_id": "a.b"}, ErrorCode.BAD_REQUEST, "id 'a.b'"),
        ({"code": "x", "language": "bash", "timeout": -1}, ErrorCode.BAD_REQUEST, "timeout"),
        ({"code": "x", "language": "bash", "env": {"BAD KEY": "1"}}, ErrorCode.BAD_REQUEST, "env key 'BAD KEY'"),
        ({"code": "x", "language": "bash", "env": {"A": "a\x00b"}}, ErrorCode.BAD_REQUEST, "env['A'] contains a NUL byte"),
        ({"code": "x", "language": "bash", "env": {"A": "x" * (64 << 10)}}, ErrorCode.BAD_REQUEST, "the limit is 65536"),
        ({"code": "x", "language": "bash", "timeout": float("nan")}, ErrorCode.BAD_REQUEST, "timeout is nan"),
        ({"code": "x", "language": "bash", "sandbox": SandboxOptions(backend="k8s")}, ErrorCode.BAD_REQUEST, "sandbox.backend 'k8s'"),
        ({"code": "x", "language": "bash", "sandbox": SandboxOptions(image="a b")}, ErrorCode.BAD_REQUEST, "whitespace"),
        ({"code": "x", "language": "bash", "sandbox": SandboxOptions(variables={"bad key": "v"})}, ErrorCode.BAD_REQUEST, "sandbox.variables key 'bad key'"),
        ({"code": "print('\ud800')", "language": "python"}, ErrorCode.BAD_REQUEST, "not valid Unicode"),
    ],
)
async def test_requests_the_contract_refuses_are_not_sent(kwargs: dict, code: str, field: str) -> None:
    class Unused:
        async def request(self, *a: object, **k: object) -> None:
            raise AssertionError("sent")

    conv = Client(Unused()).conversation("c")  # type: ignore[arg-type]
    with pytest.raises(FleetError) as e:
        await conv.run(**kwargs)
    assert e.value.code == code and field in e.value.message and e.value.result is None


def test_ids_are_checked() -> None:
    with pytest.raises(ValueError, match="tenant 'a b'"):
        Client(object(), tenant="a b")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="conversation 'x.y'"):
        Client(object()).conversation("x.y")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefix"):
        Client(object(), prefix="a.b")  # type: ignore[arg-type]


async def test_no_dispatcher_is_a_transport_error_with_the_id_to_retry(fleet: Fleet) -> None:
    # A prefix no fleet serves: NATS answers "no responders" to each attempt.
    async with await Client.connect(fleet.url, prefix="nobody", attempts=2) as c:
        with pytest.raises(TransportError) as e:
            await c.conversation().run("true", "bash", request_id="retry-me")
        assert e.value.attempts == 2 and e.value.request_id == "retry-me"
        assert "no responders" in str(e.value) and "retry-me" in str(e.value)


async def test_connect_gives_up_with_the_reason() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectError, match=f"cannot connect to NATS at {url}: .*Connect call failed"):
        await Client.connect(url, connect_wait=2)


async def test_a_dropped_reply_is_retried_and_still_runs_once(fleet: Fleet) -> None:
    """The first attempt's reply is lost (as with a dispatcher that dies): the retry, with the
    same id, gets the run's result, and the code ran once."""
    async with await Client.connect(fleet.url) as c:
        real = c.nc.request
        calls = []

        async def lose_first(subject: str, payload: bytes, timeout: float) -> object:
            calls.append(json.loads(payload)["id"])
            msg = await real(subject, payload, timeout=30)
            if len(calls) == 1:
                raise nats.errors.TimeoutError
            return msg

        c.nc.request = lose_first  # type: ignore[method-assign]
        conv = c.conversation()
        res = await conv.run("echo ran >> runs.txt; wc -l < runs.txt", "bash", timeout=5)
        assert res.output == "1\n" and len(calls) == 2 and calls[0] == calls[1]
        c.nc.request = real  # type: ignore[method-assign]
        await conv.close()


def test_the_body_is_compact_utf8() -> None:
    """Code of 512 KiB fits a NATS message whatever its characters: "é" is two bytes, not
    the six of \\u00e9. A timeout of 0 is the server's default, as in the Go client."""
    body = run_request("r", "é" * 200_000, "python", 0, None, None)
    assert len(body) < 400_100 and b"timeout_ms" not in body
    assert json.loads(body)["code"] == "é" * 200_000


async def test_unicode_round_trip(fleet: Fleet) -> None:
    async with await Client.connect(fleet.url) as c:
        conv = c.conversation()
        res = await conv.run("print('héllo, 世界')", "python")
        assert res.output == "héllo, 世界\n"
        await conv.close()


def test_decoding_ignores_unknown_fields_and_refuses_wrong_types() -> None:
    res = decode_run_result(b'{"id":"a","output":"x","exit_code":3,"new_field":{"any":1},"sandbox":{"id":"s","future":true}}')
    assert (res.id, res.output, res.exit_code, res.sandbox and res.sandbox.id) == ("a", "x", 3, "s")
    for bad in (b"not json", b"[1]", b'{"exit_code":"3"}', b'{"exit_code":true}', b'{"error":"x"}'):
        with pytest.raises(MalformedReply):
            decode_run_result(bad)


def test_decoding_a_close_result() -> None:
    res = decode_close_result(b'{"closed":true,"sandbox":{"id":"s1","backend":"docker","worker":"w"}}')
    assert res.closed and res.sandbox is not None and res.sandbox.id == "s1" and res.error is None
    res = decode_close_result(b'{"closed":false,"error":{"code":"internal","message":"m"}}')
    assert not res.closed and res.error is not None and res.error.code == "internal"
