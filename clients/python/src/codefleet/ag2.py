"""AG2's ``CodeEnvironment`` on a codefleet fleet.

Where an AG2 user writes ``SandboxCodeTool(DockerCodeEnvironment(...))``, they write::

    from codefleet.ag2 import CodeFleetEnvironment

    async with CodeFleetEnvironment(nats_url="nats://fleet:4222", tenant="acme") as env:
        agent = Agent("analyst", config=..., tools=[SandboxCodeTool(env)])
        await agent.ask("...")
    # sandbox destroyed here

One environment is one conversation, so one sandbox on the fleet: created by the first run,
kept across runs (files persist; each snippet is a fresh process), destroyed by ``aclose``
(or at interpreter exit, as AG2's environments do).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import socket
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import nats.errors

from .client import DEFAULT_NATS_URL, Client, ConnectError, Conversation, TransportError, new_id
from .protocol import (
    BACKENDS,
    DEFAULT_PREFIX,
    DEFAULT_TENANT,
    LANGUAGES,
    CodeFleetError,
    ErrorCode,
    FileResult,
    FleetError,
    RunResult,
    SandboxInfo,
    SandboxOptions,
    check_id,
    check_prefix,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

log = logging.getLogger("codefleet.ag2")

# AG2's own types when AG2 is installed: SandboxCodeTool then takes this environment as its own.
# Equal stand-ins when it is not, so the package works (and is tested) without AG2. Imported one
# module at a time: one that moved must not turn the others into stand-ins.
try:
    from autogen.beta.tools.code import CodeEnvironment as _Base
    from autogen.beta.tools.code import CodeRunResult

    HAVE_AG2 = True
except ImportError:
    HAVE_AG2 = False
    _Base = object  # type: ignore[misc,assignment]

    @dataclass(frozen=True)
    class CodeRunResult:  # type: ignore[no-redef]
        """AG2's CodeRunResult: stdout and stderr together, and the exit code."""

        output: str
        exit_code: int


try:
    from autogen.beta.annotations import Variable
except ImportError:

    @dataclass(frozen=True)
    class Variable:  # type: ignore[no-redef]
        """AG2's Variable marker: a value taken from ``context.variables[name]`` on the first
        run (``name`` defaults to the parameter's), else ``default``, else ``default_factory()``."""

        name: str | None = None
        default: Any = ...
        default_factory: Any = ...


#: The exit code of a run that hit its timeout, as AG2's environments give it.
EXIT_TIMEOUT = 124
#: The exit code of a language the environment does not run, as AG2's environments give it.
EXIT_LANGUAGE = 2
#: The exit code of a run the fleet could not run (AG2 gives 1 for its backends' API errors).
EXIT_ERROR = 1


class CodeFleetEnvironment(_Base):  # type: ignore[misc,valid-type]
    """A ``CodeEnvironment`` whose runs go to a codefleet fleet over NATS.

    Keywords:
        nats_url: the fleet's NATS: a URL, comma-separated URLs or a list (default
            $CODEFLEET_NATS_URL, $NATS_URL, nats://127.0.0.1:4222).
        creds: a NATS .creds file (needs nats-py's nkeys extra); ``connect_options`` takes any
            other option of ``nats.connect`` (``token``, ``user``, ``password``, ``tls``, ...).
        client: a ``codefleet.Client`` to share one connection between environments (then
            ``nats_url``, ``creds`` and ``connect_options`` are not used, and the client is yours
            to close).
        tenant: the tenant (str or Variable; default the client's, else "default"); the fleet's
            quotas count per tenant.
        conversation: the conversation id (default: a new one), one NATS token.
        image, backend, env_vars, variables: the sandbox's image (str or Variable; default the
            workers'), backend ("docker" or "daytona"; default the workers'), environment (dict or
            Variable) and per-tenant values for the workers (dict of str or Variable, or Variable).
        timeout: seconds a run may take (default 60, at least 1). A run that hits it is killed;
            its output so far is kept, and so are the sandbox and its files.
        languages: the languages offered to the model (default python, bash, javascript, typescript).
        prefix: the fleet's subject prefix (default "codefleet").
        close_on_exit: destroy the sandbox at interpreter exit if it was not closed (default True).
        on_output: a function given each run's output as it is produced (to show it live); the
            result still holds the whole output.

    Variables are resolved from ``context.variables`` on the first run, as AG2's own environments
    do; later runs use those values.
    """

    def __init__(
        self,
        *,
        nats_url: str | list[str] | None = None,
        creds: str | os.PathLike[str] | None = None,
        connect_options: Mapping[str, Any] | None = None,
        client: Client | None = None,
        tenant: str | Variable | None = None,
        conversation: str | None = None,
        image: str | Variable | None = None,
        backend: str | None = None,
        env_vars: Mapping[str, str | Variable] | Variable | None = None,
        variables: Mapping[str, str | Variable] | Variable | None = None,
        timeout: float = 60,
        languages: Sequence[str] = LANGUAGES,
        prefix: str = DEFAULT_PREFIX,
        close_on_exit: bool = True,
        on_output: Callable[[str], Any] | None = None,
    ) -> None:
        if timeout < 1:
            raise ValueError("`timeout` must be >= 1 second.")
        unknown = [lang for lang in languages if lang not in LANGUAGES]
        if unknown:
            raise ValueError(f"languages {unknown} are not codefleet's; it runs {list(LANGUAGES)}")
        if not languages:
            raise ValueError("`languages` is empty")
        if isinstance(tenant, str):
            check_id("tenant", tenant)
        if conversation is not None:
            check_id("conversation", conversation)
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} must be one of {', '.join(BACKENDS)}")
        check_prefix(prefix)
        if on_output is not None and asyncio.iscoroutinefunction(on_output):
            raise ValueError("on_output must be a plain function: it is called on the event loop as output arrives")

        url = nats_url or os.environ.get("CODEFLEET_NATS_URL") or os.environ.get("NATS_URL") or DEFAULT_NATS_URL
        # nats-py takes a list of servers, not the comma-separated string the nats CLI takes.
        self._nats_url = [u.strip() for u in url.split(",")] if isinstance(url, str) and "," in url else url
        self._connect_options = dict(connect_options or {})
        if creds is not None:
            self._connect_options["user_credentials"] = os.fspath(creds)
        self._connect_options.setdefault("name", "codefleet-ag2")
        self._shared_client = client
        self._prefix = prefix if client is None else client.subjects.prefix
        self._tenant_spec: str | Variable = tenant if tenant is not None else (client.tenant if client is not None else DEFAULT_TENANT)
        self._image = image
        self._backend = backend
        self._env_vars = env_vars
        self._variables = variables
        self._timeout = float(timeout)
        self._languages = tuple(languages)
        self.conversation_id = conversation or f"ag2-{new_id()}"

        # Set by the first run: the resolved tenant and sandbox options.
        self._tenant: str | None = None
        self._sandbox_options: SandboxOptions | None = None
        # The connection this environment made, and the event loop it belongs to: a NATS
        # connection lives on one loop, and a caller may drive the environment from several
        # asyncio.run() calls in turn. The sandbox is the fleet's, named by the conversation,
        # so it outlives any connection.
        self._client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        #: The sandbox of the last run (None before the first run and after aclose).
        self.sandbox: SandboxInfo | None = None
        self._close_on_exit = close_on_exit
        self._on_output = on_output
        # A run was sent since the last close: the conversation may have a sandbox.
        self._sent = False

    @property
    def supported_languages(self) -> tuple[str, ...]:
        return self._languages

    @property
    def tenant(self) -> str | None:
        """The tenant, once resolved (at construction when given as a str, else on the first run)."""
        if self._tenant is not None:
            return self._tenant
        return self._tenant_spec if isinstance(self._tenant_spec, str) else None

    async def run(
        self,
        code: str,
        language: str,
        *,
        context: Any = None,
        request_id: str | None = None,
    ) -> CodeRunResult:
        """Runs code in this environment's sandbox and returns its output and exit code.

        ``context`` is AG2's ConversationContext: its ``variables`` resolve Variable markers on
        the first run. ``request_id`` (optional, not part of AG2's protocol) names the run: a run
        sent again with the same id is not run twice, its first result is returned.

        Fleet errors come back as results with a clear message and a non-zero exit code (124 on
        timeout with the output so far, 2 for a language the environment does not run, 1 for the
        rest), as AG2's environments give theirs; a Variable that cannot be resolved raises."""
        if language not in self._languages:
            return CodeRunResult(
                output=f"Language {language!r} is not enabled. Available: {list(self._languages)}",
                exit_code=EXIT_LANGUAGE,
            )
        try:
            conv = await self._conversation(context)
        except ConnectError as e:
            return CodeRunResult(output=f"codefleet: {e}", exit_code=EXIT_ERROR)
        self._sent = True  # from here a sandbox may exist
        try:
            if self._on_output is None:
                res = await conv.run(code, language, request_id=request_id, timeout=self._timeout, sandbox=self._sandbox_options)
            else:
                on_output = self._on_output
                streamed = await conv.run_stream(
                    code, language, lambda c: on_output(c.data), request_id=request_id, timeout=self._timeout, sandbox=self._sandbox_options
                )
                res = streamed.result
        except FleetError as e:
            return _error_result(e)
        except TransportError as e:
            # Said to the model, which cannot give a request id: no retry advice with one.
            if e.no_responders:
                msg = f"codefleet could not reach the fleet: no dispatcher answered on {e.subject} (is codefleet running on this NATS?)"
            else:
                msg = f"codefleet lost the answer to this run ({e.__cause__ or 'no answer'}): it may or may not have executed"
            return CodeRunResult(output=msg, exit_code=EXIT_ERROR)
        except (CodeFleetError, nats.errors.Error) as e:  # a malformed reply, a closed connection, ...
            return CodeRunResult(output=f"codefleet: {type(e).__name__}: {e}", exit_code=EXIT_ERROR)
        self.sandbox = res.sandbox
        return _run_result(res)

    async def put_file(self, path: str, data: bytes, *, mode: int | None = None, context: Any = None) -> FileResult:
        """Writes a file into the sandbox's workspace (a dataset for the agent, say), making the
        sandbox if no run has yet. Not part of AG2's protocol; raises FleetError on failure."""
        conv = await self._conversation(context)
        self._sent = True
        res = await conv.put_file(path, data, mode=mode, sandbox=self._sandbox_options)
        self.sandbox = res.sandbox
        return res

    async def get_file(self, path: str, *, context: Any = None) -> FileResult:
        """Reads a file of the sandbox's workspace (what a run wrote): the result's ``data``."""
        conv = await self._conversation(context)
        self._sent = True  # a file request makes the sandbox when there is none
        res = await conv.get_file(path, sandbox=self._sandbox_options)
        self.sandbox = res.sandbox
        return res

    async def aclose(self) -> None:
        """Destroys the sandbox (if a run made one) and closes the connection this environment
        made. A run after it starts a new sandbox. Raises CodeFleetError if the fleet could not
        be told; its idle reaper then ends the sandbox."""
        self.sandbox = None
        try:
            if self._sent:
                # Cleared first: a run sent while the close is under way sets it again.
                self._sent = False
                conv = await self._conversation(None)
                try:
                    await conv.close()
                except BaseException:
                    self._sent = True
                    raise
        finally:
            client, self._client = self._client, None
            if not self._sent:
                _open_environments.discard(self)
            if client is not None and self._loop is asyncio.get_running_loop():
                await client.close()

    async def __aenter__(self) -> CodeFleetEnvironment:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _conversation(self, context: Any) -> Conversation:
        """The conversation on a connection of the running loop; the first call resolves the
        Variables from ``context``."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            # An asyncio.Lock belongs to one loop too. Made before any await, so the first runs
            # sent at once on a new loop all wait on this one: one connection, one resolution.
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            if self._tenant is None:
                self._resolve_options(context)
            if self._close_on_exit:
                _open_environments.add(self)
            client = self._shared_client
            if client is None:
                if self._client is None or self._loop is not loop or self._client.nc.is_closed:
                    # A connection of an earlier loop cannot be used (or closed) on this one.
                    self._client = await Client.connect(self._nats_url, prefix=self._prefix, **self._connect_options)
                client = self._client
            self._loop = loop
            assert self._tenant is not None
            return client.conversation(self.conversation_id, tenant=self._tenant)

    def _resolve_options(self, context: Any) -> None:
        tenant = _resolve(self._tenant_spec, context, "tenant")
        if not isinstance(tenant, str):
            raise ValueError(f"tenant must be a str, not {type(tenant).__name__}")
        check_id("tenant", tenant)
        image = _resolve(self._image, context, "image")
        if image is not None and not isinstance(image, str):
            raise ValueError(f"image must be a str, not {type(image).__name__}")
        self._sandbox_options = SandboxOptions(
            backend=self._backend,
            image=image,
            env=_resolve_map(self._env_vars, context, "env_vars"),
            variables=_resolve_map(self._variables, context, "variables"),
        )
        self._tenant = tenant


def _resolve(value: Any, context: Any, param: str) -> Any:
    """A Variable's value from ``context.variables`` (else its default), as AG2 resolves one;
    any other value as it is."""
    if not isinstance(value, Variable):
        return value
    # AG2's Variable: name (None: the parameter's), default and default_factory (... when unset).
    key = getattr(value, "name", None) or param
    default = getattr(value, "default", ...)
    default_factory = getattr(value, "default_factory", ...)
    if context is None:
        raise RuntimeError(
            f"codefleet `{param}` given as Variable({key!r}) but no context to resolve it: Variables "
            "resolve on the first run from context.variables (SandboxCodeTool passes the active context)"
        )
    variables = getattr(context, "variables", None) or {}
    if key in variables:
        return variables[key]
    if default is not Ellipsis:
        return default
    if default_factory is not Ellipsis and default_factory is not None:
        return default_factory()
    raise KeyError(f"Context variable {key!r} not found and no default provided")


def _resolve_map(value: Any, context: Any, param: str) -> dict[str, str] | None:
    m = _resolve(value, context, param)
    if m is None:
        return None
    if not isinstance(m, Mapping):
        raise ValueError(f"{param} must be a mapping of str to str, not {type(m).__name__}")
    out = {}
    for k, v in m.items():
        v = _resolve(v, context, k)
        if not isinstance(v, str):
            raise ValueError(f"{param}[{k!r}] must be a str, not {type(v).__name__}")
        out[k] = v
    return out


def _run_result(res: RunResult) -> CodeRunResult:
    out = res.output
    if res.sandbox is not None and res.sandbox.recreated:
        out = (
            "[codefleet: this conversation's sandbox was lost with its worker and this run got a new "
            "one: files from earlier runs are gone]\n" + out
        )
    if res.timed_out:
        return CodeRunResult(
            # The run's own duration: the worker may cap a timeout (its --max-timeout).
            output=_line(out, f"Execution timed out after {round(res.duration_ms / 1000, 1):g}s (the process was killed; the sandbox and its files are kept)"),
            exit_code=EXIT_TIMEOUT,
        )
    return CodeRunResult(output=out, exit_code=res.exit_code)


def _error_result(e: FleetError) -> CodeRunResult:
    """A fleet error as AG2 shows a backend's: a clear message and a non-zero exit code."""
    out = e.result.output if isinstance(e.result, RunResult) else ""
    exit_code = EXIT_ERROR
    if e.code == ErrorCode.UNSUPPORTED_LANGUAGE:
        exit_code = EXIT_LANGUAGE
    elif e.code == ErrorCode.DISK_LIMIT and isinstance(e.result, RunResult) and e.result.exit_code:
        exit_code = e.result.exit_code  # the code ran and was ended: 137, with its output so far
    msg = f"codefleet could not run the code ({e.code}): {e.message}"
    if e.error.advice:
        msg += f". What to do: {e.error.advice}"
    return CodeRunResult(output=_line(out, msg), exit_code=exit_code)


def _line(out: str, line: str) -> str:
    if out and not out.endswith("\n"):
        out += "\n"
    return out + line


# The environments that may hold a sandbox, destroyed at interpreter exit as AG2's are (weakly
# held: an environment that is collected is not kept alive by this; the fleet's idle reaper ends
# its sandbox).
_open_environments: weakref.WeakSet[CodeFleetEnvironment] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    envs = [e for e in _open_environments if e._sent and e._shared_client is None]  # a shared client's owner closes
    if not envs:
        return
    for env in envs:
        env._client, env._loop, env._lock, env._lock_loop = None, None, None, None  # their loop has ended

    async def close_all() -> None:
        results = await asyncio.gather(*(env.aclose() for env in envs), return_exceptions=True)
        for env, r in zip(envs, results):
            if isinstance(r, BaseException):
                log.warning("codefleet: could not close conversation %s at exit: %s", env.conversation_id, r or type(r).__name__)

    loop = _ExitLoop()
    try:
        loop.run_until_complete(asyncio.wait_for(close_all(), 10))
    except Exception as e:  # noqa: BLE001 - at exit: say it, never raise
        log.warning("codefleet: closing %d conversations at exit: %s", len(envs), e or type(e).__name__)
    finally:
        loop.close()


class _ExitLoop(asyncio.SelectorEventLoop):
    """The event loop of the close at exit. At exit the default executor takes no work, so
    asyncio cannot resolve a host name (nats://fleet:4222 would fail "cannot schedule new futures
    after interpreter shutdown"): this loop resolves in its own thread, blocking, which is fine
    for the few closes left to send."""

    async def getaddrinfo(self, host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:  # noqa: A002 - asyncio's names
        return socket.getaddrinfo(host, port, family, type, proto, flags)


__all__ = ["HAVE_AG2", "CodeFleetEnvironment", "CodeRunResult", "Variable"]
