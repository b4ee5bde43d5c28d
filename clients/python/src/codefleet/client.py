"""The async client of codefleet: run code in a conversation's sandbox over NATS.

It mirrors the Go client (pkg/client)::

    async with await Client.connect("nats://127.0.0.1:4222", tenant="acme") as fleet:
        conv = fleet.conversation("chat-42")
        res = await conv.run("print(40+2)", "python")
        # res.output == "42\\n"; a snippet that fails is a result with its exit code
        await conv.close()

``run`` retries what the transport loses (no dispatcher answered, an answer lost with a
dispatcher or the connection) with the same request id, so a retried run never runs twice: the
worker answers a repeated id with the first run's result. A request the contract refuses (empty
code, an unknown language, a bad id) is refused before anything is sent.

``run_stream`` hands the output on as it is produced (stream.py); ``put_file``, ``get_file``,
``list_files`` and ``delete_file`` move files in and out of the workspace (files.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any, Mapping

import nats.errors
from nats.aio.client import Client as NATS

from . import files, stream
from .protocol import (
    DEFAULT_PREFIX,
    DEFAULT_TENANT,
    DEFAULT_TIMEOUT,
    CloseResult,
    CodeFleetError,
    ErrorCode,
    FileResult,
    FleetError,
    OutputChunk,
    RunResult,
    SandboxOptions,
    Subjects,
    check_id,
    check_prefix,
    checked,
    decode_close_result,
    decode_run_result,
    run_request,
)

log = logging.getLogger("codefleet")

#: The NATS of a local fleet (`codefleet dev`, `make run`).
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
#: How many times a request is sent before giving up on the transport.
DEFAULT_ATTEMPTS = 3
#: Seconds added to a run's timeout to get the time one attempt may take: room for creating the
#: sandbox and the trip over NATS.
DEFAULT_OVERHEAD = 30.0
#: Seconds Client.connect tries to make the first connection.
DEFAULT_CONNECT_WAIT = 10.0


class ConnectError(CodeFleetError):
    """The first connection to NATS could not be made."""


class TransportError(CodeFleetError):
    """No answer came, after every attempt: no dispatcher is up (``no_responders``), or the
    answers were lost (a dispatcher or the connection died, or the wait ran out).

    A run may have executed: send it again with the same ``request_id`` to get its result
    without running it twice."""

    def __init__(self, message: str, *, subject: str, request_id: str, attempts: int, no_responders: bool) -> None:
        super().__init__(message)
        self.subject = subject
        self.request_id = request_id
        self.attempts = attempts
        self.no_responders = no_responders


def new_id() -> str:
    """A request or conversation id: 32 hex digits, one NATS token."""
    return uuid.uuid4().hex


class Client:
    """Sends run and close requests for a tenant on one NATS connection.

    One client (one connection) serves any number of conversations: share it."""

    def __init__(
        self,
        nc: NATS,
        *,
        tenant: str = DEFAULT_TENANT,
        prefix: str = DEFAULT_PREFIX,
        attempts: int = DEFAULT_ATTEMPTS,
        overhead: float = DEFAULT_OVERHEAD,
    ) -> None:
        _check_options(tenant, prefix, attempts, overhead)
        self.nc = nc
        self.tenant = tenant
        self.subjects = Subjects(prefix)
        self.attempts = attempts
        self.overhead = overhead
        self._owns_nc = False

    @classmethod
    async def connect(
        cls,
        servers: str | list[str] = DEFAULT_NATS_URL,
        *,
        tenant: str = DEFAULT_TENANT,
        prefix: str = DEFAULT_PREFIX,
        attempts: int = DEFAULT_ATTEMPTS,
        overhead: float = DEFAULT_OVERHEAD,
        connect_wait: float = DEFAULT_CONNECT_WAIT,
        **connect_options: Any,
    ) -> Client:
        """Connects to NATS and returns a client that closes the connection in ``close``.

        ``connect_options`` go to ``nats.connect``: ``user_credentials`` (a .creds file),
        ``token``, ``user``/``password``, ``tls``, ``name``, ... Once connected, the connection
        reconnects as nats-py does; the first connection is given ``connect_wait`` seconds, then
        ConnectError names the last failure (nats-py alone would try for minutes)."""
        # Checked before connecting: a typo does not cost a connection.
        _check_options(tenant, prefix, attempts, overhead)
        connect_options.setdefault("name", "codefleet-python")
        last: list[Exception] = []
        user_error_cb = connect_options.pop("error_cb", None)
        if user_error_cb is not None and not asyncio.iscoroutinefunction(user_error_cb):
            raise nats.errors.InvalidCallbackTypeError

        async def error_cb(e: Exception) -> None:
            last[:] = [e]
            if user_error_cb is not None:
                await user_error_cb(e)
            else:  # nats-py's default logs each failed attempt with its traceback
                log.warning("codefleet: nats: %s", e or type(e).__name__)

        nc = NATS()
        try:
            await asyncio.wait_for(nc.connect(servers, error_cb=error_cb, **connect_options), connect_wait)
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as e:
            await nc.close()
            cause = last[0] if last else e
            raise ConnectError(f"cannot connect to NATS at {servers}: {cause or type(cause).__name__}") from cause
        client = cls(nc, tenant=tenant, prefix=prefix, attempts=attempts, overhead=overhead)
        client._owns_nc = True
        return client

    def conversation(self, conversation_id: str | None = None, *, tenant: str | None = None) -> Conversation:
        """The handle of one conversation (a new id when none is given). Its sandbox is created
        by its first run. ``tenant`` overrides the client's."""
        conv = check_id("conversation", new_id() if conversation_id is None else conversation_id)
        return Conversation(self, conv, check_id("tenant", self.tenant if tenant is None else tenant))

    async def close(self) -> None:
        """Drains and closes the connection if ``connect`` made it; a connection handed to the
        constructor is the caller's to close."""
        if self._owns_nc and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except nats.errors.Error:  # reconnecting, or the drain timed out: close at once
                await self.nc.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _request(self, subject: str, payload: bytes, per_attempt: float, request_id: str) -> bytes:
        """Sends a request, retrying transport failures with the same payload (so the same id)."""
        last: Exception | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                msg = await self.nc.request(subject, payload, timeout=per_attempt)
                data: bytes = msg.data
                return data
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError, nats.errors.OutboundBufferLimitError) as e:
                # Nobody answered; the answer was lost with a dispatcher or the connection; or
                # the connection is down with its buffer full. The same id makes a resend safe.
                last = e
            except nats.errors.MaxPayloadError:
                raise FleetError(
                    ErrorCode.BAD_REQUEST,
                    f"the request is {len(payload)} bytes, more than the NATS server's max payload ({self.nc.max_payload})",
                ) from None
            if attempt < self.attempts:
                # Back off a little: no dispatcher may be up yet, or one is being replaced.
                await asyncio.sleep(0.1 * attempt)
        no_responders = isinstance(last, nats.errors.NoRespondersError)
        if no_responders:
            why = f"no dispatcher answered on {subject} after {self.attempts} attempts (nats: no responders): is codefleet running on this NATS, with this prefix?"
        else:
            why = f"no answer on {subject} after {self.attempts} attempts ({_describe(last)}): the dispatchers or the connection lost it"
        if request_id:
            why += f". The run may have executed: send it again with request id {request_id} to get its result without running it twice"
        raise TransportError(why, subject=subject, request_id=request_id, attempts=self.attempts, no_responders=no_responders) from last


class Conversation:
    """One conversation: one sandbox, created by the first run, destroyed by ``close``.

    Runs of one conversation execute one at a time, in the order the worker receives them; each
    is a fresh process, and files persist between them."""

    def __init__(self, client: Client, conversation_id: str, tenant: str) -> None:
        self.client = client
        self.id = conversation_id
        self.tenant = tenant

    async def run(
        self,
        code: str,
        language: str,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        sandbox: SandboxOptions | None = None,
    ) -> RunResult:
        """Runs code and returns its result.

        ``timeout`` is in seconds (None: the server's 60 s); ``env`` is this run's environment;
        ``sandbox`` applies when this run creates the sandbox. ``request_id`` identifies the run
        for retries (generated when None): send a run whose result you did not get again with the
        same id, and it will not run twice.

        Raises FleetError when the fleet could not run the code (``.result`` holds the reply),
        TransportError when no answer came."""
        rid = new_id() if request_id is None else request_id
        body = run_request(rid, code, language, timeout, env, sandbox)
        per_attempt = (timeout or DEFAULT_TIMEOUT) + self.client.overhead
        data = await self.client._request(self.client.subjects.run(self.tenant, self.id), body, per_attempt, rid)
        return checked(decode_run_result(data))

    async def run_stream(
        self,
        code: str,
        language: str,
        output: Callable[[OutputChunk], Any],
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        sandbox: SandboxOptions | None = None,
        grace: float = stream.DEFAULT_GRACE,
    ) -> stream.StreamResult:
        """Runs code as ``run`` does, and hands its output to ``output`` as it is produced:
        each chunk once, in order, never after this returns (``output`` is a plain function:
        it runs on the event loop, keep it short). The result says how many chunks were handed
        on and how many were lost on the way (their output is in the result's ``output``).
        Raises as ``run`` does, and what ``output`` raised. A retry with the id of a run whose
        chunks were already handed on gets its whole output once more, from the result."""
        rid = new_id() if request_id is None else request_id
        return await stream.run_stream(self, code, language, output, rid, timeout, env, sandbox, grace)

    async def put_file(self, path: str, data: bytes, *, mode: int | None = None, sandbox: SandboxOptions | None = None) -> FileResult:
        """Writes a file of the workspace (``path`` relative to it, or absolute under it),
        making the directories on the way; it appears whole, with its SHA-256 checked, or not
        at all. ``mode`` is its permission bits (None or 0: 0o644). A file request, as a first
        run, makes the sandbox when there is none (``sandbox`` applies then). The result holds its path,
        size, SHA-256 and mode. Raises FleetError (path_refused, file_too_large, ...)."""
        return await files.put(self, path, data, mode, sandbox, new_id(), new_id())

    async def get_file(self, path: str, *, sandbox: SandboxOptions | None = None) -> FileResult:
        """Reads a file of the workspace: the result's ``data`` is the whole file, checked
        against its SHA-256 (FileChanged when it changed while it was read in pieces). Raises
        FleetError (file_not_found, path_refused, file_too_large, ...)."""
        return await files.get(self, path, sandbox, new_id())

    async def list_files(self, path: str = "", *, recursive: bool = False, sandbox: SandboxOptions | None = None) -> FileResult:
        """Lists a directory of the workspace ("" is the workspace): ``entries``, sorted by path,
        or the whole tree when ``recursive``; symbolic links are listed, never followed."""
        return await files.request(self, new_id(), "list", path, sandbox, recursive=recursive)

    async def delete_file(self, path: str, *, recursive: bool = False, sandbox: SandboxOptions | None = None) -> FileResult:
        """Deletes a file (a directory with ``recursive``); ``deleted`` says whether anything
        was there."""
        return await files.request(self, new_id(), "delete", path, sandbox, recursive=recursive)

    async def close(self) -> CloseResult:
        """Destroys the conversation's sandbox. Closing one without a sandbox is not an error."""
        data = await self.client._request(
            self.client.subjects.close(self.tenant, self.id), b"{}", self.client.overhead, ""
        )
        return checked(decode_close_result(data))


def _check_options(tenant: str, prefix: str, attempts: int, overhead: float) -> None:
    check_id("tenant", tenant)
    check_prefix(prefix)
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    if overhead < 0:
        raise ValueError("overhead must not be negative")


def _describe(e: Exception | None) -> str:
    if isinstance(e, nats.errors.NoRespondersError):
        return "nats: no responders"
    if isinstance(e, nats.errors.TimeoutError):
        return "nats: timeout"
    return str(e) or type(e).__name__


__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_OVERHEAD",
    "DEFAULT_CONNECT_WAIT",
    "DEFAULT_NATS_URL",
    "Client",
    "ConnectError",
    "Conversation",
    "TransportError",
    "new_id",
]
