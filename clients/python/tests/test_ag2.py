"""CodeFleetEnvironment against a real fleet (conftest.py): what an AG2 user relies on."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import pytest

import nats.errors

from codefleet import Client, ErrorCode, ErrorInfo, FleetError, RunResult, SandboxInfo
from codefleet.protocol import ADVICE
from codefleet.ag2 import HAVE_AG2, CodeFleetEnvironment, CodeRunResult, Variable, _error_result, _run_result
from helpers import CAPPED_TENANT, Context, Fleet, container_exists, eventually, free_port


async def test_every_language(fleet: Fleet) -> None:
    async with CodeFleetEnvironment(nats_url=fleet.url) as env:
        assert env.supported_languages == ("python", "bash", "javascript", "typescript")
        cases = [
            ("python", "import sys\nprint(6 * 7, flush=True)\nprint('to stderr', file=sys.stderr)", "42\nto stderr\n", 0),
            ("bash", "echo $((6 * 7)); exit 3", "42\n", 3),
            ("javascript", "console.log([1, 2, 3].map(x => x * 2).join(','))", "2,4,6\n", 0),
            ("typescript", "const n: number = 42;\nconsole.log(`n=${n}`);", "n=42\n", 0),
        ]
        for language, code, output, exit_code in cases:
            res = await env.run(code, language)
            assert isinstance(res, CodeRunResult)
            assert (res.output, res.exit_code) == (output, exit_code), language
        assert env.sandbox is not None and env.sandbox.backend == "docker"


async def test_files_persist_each_run_is_a_fresh_process(fleet: Fleet) -> None:
    async with CodeFleetEnvironment(nats_url=fleet.url) as env:
        res = await env.run("counter = 1\nopen('notes.txt', 'w').write('hello')\nprint('saved')", "python")
        assert (res.output, res.exit_code) == ("saved\n", 0)
        first = env.sandbox
        assert first is not None and first.created

        # The file is there for the next run, in any language; the variable is not.
        res = await env.run("cat notes.txt", "bash")
        assert (res.output, res.exit_code) == ("hello", 0)
        res = await env.run("print(counter)", "python")
        assert res.exit_code == 1 and "NameError" in res.output
        res = await env.run("console.log(require('fs').readFileSync('notes.txt', 'utf8'))", "javascript")
        assert (res.output, res.exit_code) == ("hello\n", 0)
        assert env.sandbox is not None and env.sandbox.id == first.id and not env.sandbox.created

        # Runs sent at once (two agents sharing the tool) go to the one sandbox, one at a time.
        results = await asyncio.gather(*(env.run(f"echo {i} >> log.txt", "bash") for i in range(5)))
        assert all(r.exit_code == 0 for r in results)
        res = await env.run("sort -n log.txt | tr '\\n' ' '", "bash")
        assert res.output == "0 1 2 3 4 "


async def test_timeout_keeps_output_so_far_and_the_sandbox(fleet: Fleet) -> None:
    async with CodeFleetEnvironment(nats_url=fleet.url, timeout=2) as env:
        code = "import time\nopen('before.txt', 'w').write('kept')\nprint('started', flush=True)\ntime.sleep(60)\nprint('never')"
        res = await env.run(code, "python")
        assert res.exit_code == 124
        assert res.output.startswith("started\n")
        assert "never" not in res.output
        assert re.search(r"\nExecution timed out after 2(\.\d)?s ", res.output), res.output
        # Unlike AG2's DockerCodeEnvironment, the sandbox and its files survive a timeout.
        res = await env.run("cat before.txt", "bash")
        assert (res.output, res.exit_code) == ("kept", 0)


async def test_bad_language(fleet: Fleet) -> None:
    async with CodeFleetEnvironment(nats_url=fleet.url, languages=("python", "bash")) as env:
        assert env.supported_languages == ("python", "bash")
        for language in ("cobol", "javascript"):
            res = await env.run("console.log(1)", language)
            assert res.exit_code == 2
            assert repr(language) in res.output and "python" in res.output
        # Nothing was sent: no sandbox was made for it.
        assert env.sandbox is None
    with pytest.raises(ValueError, match="cobol"):
        CodeFleetEnvironment(nats_url=fleet.url, languages=("python", "cobol"))


async def test_variables_resolve_from_the_context(fleet: Fleet) -> None:
    image = os.environ.get("CODEFLEET_IMAGE", "codefleet-sandbox:bookworm")
    ctx = Context(
        variables={
            "tenant_name": CAPPED_TENANT,
            "tenant_image": image,
            "tenant_env": {"GREETING": "hello from acme"},
            "region": "eu",
        }
    )
    env = CodeFleetEnvironment(
        nats_url=fleet.url,
        tenant=Variable("tenant_name"),
        image=Variable("tenant_image"),
        env_vars=Variable("tenant_env"),
        variables={"region": Variable("region"), "plan": Variable("plan", default="free")},
    )
    # Values of a dict may be Variables too, with defaults.
    plain = CodeFleetEnvironment(nats_url=fleet.url, env_vars={"REGION": Variable("region"), "PLAN": Variable("plan", default="free")})
    async with plain:
        res = await plain.run("echo $REGION $PLAN", "bash", context=ctx)
        assert (res.output, res.exit_code) == ("eu free\n", 0)
    async with env:
        assert env.tenant is None  # not resolved before the first run
        res = await env.run("echo $GREETING", "bash", context=ctx)
        assert (res.output, res.exit_code) == ("hello from acme\n", 0)
        assert env.tenant == CAPPED_TENANT
        # sandbox.variables, which only the workers read (Daytona's ${name} placeholders):
        # what this environment sends.
        assert env._sandbox_options is not None and env._sandbox_options.variables == {"region": "eu", "plan": "free"}
        # Later runs keep what the first one resolved, whatever context they get.
        res = await env.run("echo $GREETING", "bash", context=Context(variables={}))
        assert res.output == "hello from acme\n"

        # The tenant is really "capped": the fleet counts the sandbox against its quota of one,
        # and a second conversation of that tenant is refused with a clear message.
        other = CodeFleetEnvironment(nats_url=fleet.url, tenant=Variable("tenant_name"))
        async with other:
            res = await other.run("echo hi", "bash", context=ctx)
            assert res.exit_code == 1
            assert "quota_exceeded" in res.output and CAPPED_TENANT in res.output
            assert "What to do:" in res.output

    # A Variable resolving to an image the workers do not allow: the fleet's refusal, mapped.
    async with CodeFleetEnvironment(nats_url=fleet.url, image=Variable("img")) as env:
        res = await env.run("echo hi", "bash", context=Context(variables={"img": "evil:latest"}))
        assert res.exit_code == 1
        assert "image_not_allowed" in res.output and "evil:latest" in res.output

    # A Variable with nothing to resolve it from is the caller's mistake: it raises, as in AG2.
    env = CodeFleetEnvironment(nats_url=fleet.url, tenant=Variable("tenant_name"))
    with pytest.raises(RuntimeError, match="no context"):
        await env.run("true", "bash")
    with pytest.raises(KeyError, match="tenant_name"):
        await env.run("true", "bash", context=Context(variables={}))


async def test_two_environments_are_two_sandboxes(fleet: Fleet) -> None:
    async with CodeFleetEnvironment(nats_url=fleet.url) as a, CodeFleetEnvironment(nats_url=fleet.url) as b:
        assert a.conversation_id != b.conversation_id
        assert (await a.run("echo a > mine.txt && cat mine.txt", "bash")).output == "a\n"
        res = await b.run("cat mine.txt", "bash")
        assert res.exit_code != 0 and "No such file" in res.output
        assert a.sandbox is not None and b.sandbox is not None
        assert a.sandbox.id != b.sandbox.id


async def test_first_runs_at_once_make_one_connection_and_one_sandbox(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    connects = []
    real = Client.connect.__func__  # type: ignore[attr-defined]

    async def counting(cls: type[Client], *args: object, **kwargs: object) -> Client:
        connects.append(args)
        return await real(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(Client, "connect", classmethod(counting))
    async with CodeFleetEnvironment(nats_url=fleet.url) as env:
        results = await asyncio.gather(*(env.run(f"echo {i} >> log.txt; hostname", "bash") for i in range(4)))
        assert len({r.output for r in results}) == 1 and all(r.exit_code == 0 for r in results)
        assert len(connects) == 1
        assert (await env.run("sort log.txt | tr -d '\\n'", "bash")).output == "0123"


async def test_environments_share_one_client(fleet: Fleet) -> None:
    """Many conversations on one NATS connection: the client is the caller's, left open."""
    async with await Client.connect(fleet.url, tenant="shared") as client:
        envs = [CodeFleetEnvironment(client=client) for _ in range(3)]
        results = await asyncio.gather(*(env.run(f"echo {i} > me.txt; cat me.txt", "bash") for i, env in enumerate(envs)))
        assert [r.output for r in results] == ["0\n", "1\n", "2\n"]
        assert len({env.sandbox.id for env in envs if env.sandbox}) == 3
        assert all(env.tenant == "shared" for env in envs)
        for env in envs:
            await env.aclose()
        assert not client.nc.is_closed
        conv = client.conversation()
        assert (await conv.run("echo still", "bash")).output == "still\n"
        await conv.close()


async def test_aclose_removes_the_sandbox(fleet: Fleet) -> None:
    env = CodeFleetEnvironment(nats_url=fleet.url)
    assert (await env.run("echo x > f.txt", "bash")).exit_code == 0
    assert env.sandbox is not None
    sandbox = env.sandbox.id
    assert container_exists(sandbox)
    await env.aclose()
    await eventually(lambda: not container_exists(sandbox), f"container {sandbox} removed")

    # A run after aclose gets a new, empty sandbox (AG2's environments start over too).
    res = await env.run("ls f.txt", "bash")
    assert res.exit_code != 0
    assert env.sandbox is not None and env.sandbox.id != sandbox and env.sandbox.created
    await env.aclose()


def run_script(fleet: Fleet, close_on_exit: bool) -> tuple[str, str]:
    """Runs a script that makes a sandbox and exits without aclose; returns its conversation
    and sandbox. The URL names the host, as a user's would: resolved at exit too."""
    url = fleet.url.replace("127.0.0.1", "localhost")
    script = textwrap.dedent(
        f"""
        import asyncio
        from codefleet.ag2 import CodeFleetEnvironment
        env = CodeFleetEnvironment(nats_url={url!r}, close_on_exit={close_on_exit!r})
        res = asyncio.run(env.run("echo $HOSTNAME", "bash"))
        assert res.exit_code == 0, res
        print(env.conversation_id, env.sandbox.id)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=os.environ)
    assert out.returncode == 0 and "could not close" not in out.stderr, out.stderr
    conversation, sandbox = out.stdout.split()
    return conversation, sandbox


def test_sandbox_destroyed_at_exit_when_not_closed(fleet: Fleet) -> None:
    """As AG2's environments do with atexit: a script that forgets aclose leaves no sandbox."""
    conversation, sandbox = run_script(fleet, close_on_exit=True)
    assert not container_exists(sandbox), "the sandbox outlived the process"

    async def check() -> None:
        async with await Client.connect(fleet.url) as c:
            res = await c.conversation(conversation).run("true", "bash")
            assert res.sandbox is not None and res.sandbox.created  # a new one: the old was closed
            await c.conversation(conversation).close()

    asyncio.run(check())


def test_close_on_exit_false_keeps_the_sandbox_for_a_later_process(fleet: Fleet) -> None:
    conversation, sandbox = run_script(fleet, close_on_exit=False)
    assert container_exists(sandbox)

    async def later() -> None:
        async with CodeFleetEnvironment(nats_url=fleet.url, conversation=conversation) as env:
            res = await env.run("echo again", "bash")
            assert res.exit_code == 0 and env.sandbox is not None and env.sandbox.id == sandbox

    asyncio.run(later())
    assert not container_exists(sandbox)


def test_runs_from_successive_event_loops(fleet: Fleet) -> None:
    """Sync code calls asyncio.run() once per agent turn: the sandbox is the same across them."""
    env = CodeFleetEnvironment(nats_url=fleet.url)
    first = asyncio.run(env.run("echo one > turn.txt", "bash"))
    second = asyncio.run(env.run("cat turn.txt", "bash"))
    assert first.exit_code == 0 and (second.output, second.exit_code) == ("one\n", 0)
    asyncio.run(env.aclose())


async def test_output_is_capped_head_and_tail(fleet: Fleet) -> None:
    async with CodeFleetEnvironment(nats_url=fleet.url) as env:
        res = await env.run("print('first'); print('x' * 2_000_000); print('last')", "python")
        assert res.exit_code == 0
        assert res.output.startswith("first\n") and res.output.endswith("last\n")
        assert "bytes truncated" in res.output
        assert len(res.output) < 300_000


async def test_fleet_unreachable_is_a_clear_result() -> None:
    env = CodeFleetEnvironment(nats_url=f"nats://127.0.0.1:{free_port()}", connect_options={"connect_wait": 3})
    res = await env.run("echo hi", "bash")
    assert res.exit_code == 1
    assert f"cannot connect to NATS at {env._nats_url}" in res.output and "Connect call failed" in res.output
    await env.aclose()  # nothing was sent: nothing to close


@pytest.mark.skipif(not HAVE_AG2, reason="AG2 is not installed: the stand-in types are used")
async def test_is_an_ag2_code_environment(fleet: Fleet) -> None:
    from autogen.beta.tools import SandboxCodeTool
    from autogen.beta.tools.code import CodeEnvironment

    async with CodeFleetEnvironment(nats_url=fleet.url) as env:
        assert isinstance(env, CodeEnvironment)
        SandboxCodeTool(env)
        res = await env.run("print(1)", "python")
        assert type(res).__module__.startswith("autogen")


@pytest.mark.parametrize(
    ("code", "output", "exit_code", "expect_exit", "words"),
    [
        (ErrorCode.WORKER_LOST, "", 0, 1, ["worker_lost", "may or may not have executed", "new sandbox"]),
        (ErrorCode.CAPACITY, "", 0, 1, ["capacity", "retry later"]),
        (ErrorCode.BUSY, "", 0, 1, ["busy", "wait for earlier runs"]),
        (ErrorCode.UNSUPPORTED_LANGUAGE, "", 0, 2, ["unsupported_language", "another language or image"]),
        (ErrorCode.DISK_LIMIT, "wrote 1G\n", 137, 137, ["wrote 1G\ncodefleet could not run", "disk_limit", "remove files"]),
        (ErrorCode.SANDBOX_FAILED, "", 0, 1, ["sandbox_failed", "the files may be gone"]),
        ("a_code_from_the_future", "", 0, 1, ["a_code_from_the_future", "the message"]),
    ],
)
def test_fleet_errors_map_to_a_message_and_an_exit_code(code: str, output: str, exit_code: int, expect_exit: int, words: list[str]) -> None:
    """The mapping of the errors a test fleet cannot be made to answer at will (a worker dying
    mid-run, a full fleet); the ones it can are above (quota_exceeded, image_not_allowed)."""
    res = RunResult(id="r", output=output, exit_code=exit_code, error=ErrorInfo(code, "the message"))
    mapped = _error_result(FleetError(code, "the message", res))
    assert mapped.exit_code == expect_exit
    for w in words:
        assert w in mapped.output
    assert ("What to do" in mapped.output) == (code in ADVICE)


class FakeNATS:
    """A connection whose requests answer what a test says: for what a fleet does not answer."""

    is_closed = False
    max_payload = 1 << 20

    def __init__(self, answer: Callable[[], Awaitable[object]]) -> None:
        self.answer = answer
        self.sent = 0

    async def request(self, subject: str, payload: bytes, timeout: float) -> object:
        self.sent += 1
        return await self.answer()


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ("no responders", ["no dispatcher answered on codefleet.run.default.", "is codefleet running"]),
        ("timeout", ["lost the answer to this run", "may or may not have executed"]),
        ("malformed", ["MalformedReply", "not JSON"]),
        ("closed", ["ConnectionClosedError"]),
    ],
)
async def test_transport_failures_are_results(answer: str, words: list[str]) -> None:
    async def reply() -> object:
        if answer == "no responders":
            raise nats.errors.NoRespondersError
        if answer == "timeout":
            raise nats.errors.TimeoutError
        if answer == "closed":
            raise nats.errors.ConnectionClosedError
        return SimpleNamespace(data=b"<html>")

    nc = FakeNATS(reply)
    env = CodeFleetEnvironment(client=Client(nc, attempts=2))  # type: ignore[arg-type]
    res = await env.run("print(1)", "python")
    assert res.exit_code == 1
    for w in words:
        assert w in res.output
    assert "request id" not in res.output  # the model cannot give one
    assert nc.sent == (2 if answer in ("no responders", "timeout") else 1)


def test_a_recreated_sandbox_is_said_before_the_output() -> None:
    """After the worker holding the conversation died, the model is told its files are gone."""
    res = RunResult(id="r", output="hello\n", sandbox=SandboxInfo(id="s", created=True, recreated=True))
    mapped = _run_result(res)
    assert mapped.exit_code == 0
    assert mapped.output.startswith("[codefleet: this conversation's sandbox was lost") and mapped.output.endswith("]\nhello\n")
