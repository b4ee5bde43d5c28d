"""The v1 wire contract of codefleet, as a Python client needs it (docs/protocol.md).

Subjects, the messages a client sends and decodes, the error codes and what a client does about
each. The contract only changes additively: decoding ignores fields it does not know, and an
error code it does not know is treated as any error.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

DEFAULT_PREFIX = "codefleet"
DEFAULT_TENANT = "default"

#: Languages a run may name, in the contract's order.
LANGUAGES: tuple[str, ...] = ("python", "bash", "javascript", "typescript")

MAX_ID_LEN = 128
MAX_CODE_BYTES = 512 << 10
#: The server's timeout when a request names none, in seconds.
DEFAULT_TIMEOUT = 60.0
#: The largest timeout the contract accepts, in seconds (a worker caps it lower).
MAX_TIMEOUT = 24 * 3600.0
MAX_ENV_VARS = 256
MAX_ENV_BYTES = 64 << 10
MAX_IMAGE_LEN = 512
#: The most bytes of one put piece or one get answer.
FILE_CHUNK_BYTES = 512 << 10
#: The largest file size limit a worker may have.
MAX_FILE_BYTES = 4 << 30
MAX_PATH_BYTES = 4096
#: Sandbox backends a request may name.
BACKENDS: tuple[str, ...] = ("docker", "daytona")

_ID = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_ID_LEN)
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
_VARIABLE = re.compile(r"[A-Za-z0-9_.-]{1,%d}" % MAX_ID_LEN)


class ErrorCode:
    """The error codes of the contract (docs/protocol.md, Errors)."""

    BAD_REQUEST = "bad_request"
    UNSUPPORTED_LANGUAGE = "unsupported_language"
    IMAGE_NOT_ALLOWED = "image_not_allowed"
    CAPACITY = "capacity"
    BUSY = "busy"
    SANDBOX_FAILED = "sandbox_failed"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    WORKER_LOST = "worker_lost"
    INTERNAL = "internal"
    DISK_LIMIT = "disk_limit"
    QUOTA_EXCEEDED = "quota_exceeded"
    FILE_NOT_FOUND = "file_not_found"
    PATH_REFUSED = "path_refused"
    FILE_TOO_LARGE = "file_too_large"
    FILE_FAILED = "file_failed"


#: What a client does about each error code: the contract's own words, shortened.
ADVICE: Mapping[str, str] = {
    ErrorCode.BAD_REQUEST: "fix the request",
    ErrorCode.UNSUPPORTED_LANGUAGE: "use another language or image",
    ErrorCode.IMAGE_NOT_ALLOWED: "use an image on the workers' allow-list",
    ErrorCode.CAPACITY: "no worker has room for a new sandbox: retry later",
    ErrorCode.BUSY: "the conversation has too many runs waiting: wait for earlier runs",
    ErrorCode.SANDBOX_FAILED: "retry: the next run gets a new sandbox, and the files may be gone",
    ErrorCode.BACKEND_UNAVAILABLE: "the worker cannot reach its sandbox backend: retry later",
    ErrorCode.WORKER_LOST: (
        "the worker died during the run, which may or may not have executed: run it again; "
        "the next run gets a new sandbox, without the files of earlier runs"
    ),
    ErrorCode.INTERNAL: "a codefleet fault: retry, and report it if it lasts",
    ErrorCode.DISK_LIMIT: "the sandbox's files reached its disk limit: remove files, then go on",
    ErrorCode.QUOTA_EXCEEDED: (
        "the tenant is at its quota: close conversations you are done with, or send fewer runs at once"
    ),
    ErrorCode.FILE_NOT_FOUND: "check the path",
    ErrorCode.PATH_REFUSED: "use a path inside the workspace with no symbolic link on it",
    ErrorCode.FILE_TOO_LARGE: "compress or split the file",
    ErrorCode.FILE_FAILED: "read the message: fix the request, or start the upload over",
}


def valid_id(s: str) -> bool:
    """Reports whether s is a tenant, conversation or request id: one NATS token."""
    return isinstance(s, str) and _ID.fullmatch(s) is not None


def check_id(kind: str, s: str) -> str:
    """Returns s if it is a valid id, else raises ValueError naming the kind (tenant, conversation)."""
    if not valid_id(s):
        raise ValueError(f"{kind} {s!r} must match [A-Za-z0-9_-]{{1,{MAX_ID_LEN}}}")
    return s


def check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or _PREFIX.fullmatch(prefix) is None:
        raise ValueError(f"prefix {prefix!r} must be one token of [A-Za-z0-9_-], at most 64 characters")


@dataclass(frozen=True)
class Subjects:
    """Every subject a client uses, built in one place."""

    prefix: str = DEFAULT_PREFIX

    def run(self, tenant: str, conversation: str) -> str:
        return f"{self.prefix}.run.{tenant}.{conversation}"

    def close(self, tenant: str, conversation: str) -> str:
        return f"{self.prefix}.close.{tenant}.{conversation}"

    def files(self, tenant: str, conversation: str) -> str:
        return f"{self.prefix}.files.{tenant}.{conversation}"

    def stream(self, tenant: str, conversation: str, request_id: str) -> str:
        return f"{self.prefix}.stream.{tenant}.{conversation}.{request_id}"


@dataclass(frozen=True)
class SandboxOptions:
    """Options used by the run that creates a conversation's sandbox."""

    backend: str | None = None
    image: str | None = None
    env: Mapping[str, str] | None = None
    variables: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The request's ``sandbox`` object, checked as a dispatcher checks it (FleetError)."""
        out: dict[str, Any] = {}
        if self.backend:
            if self.backend not in BACKENDS:
                raise FleetError(ErrorCode.BAD_REQUEST, f"sandbox.backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
            out["backend"] = self.backend
        if self.image:
            _image(self.image)
            out["image"] = self.image
        if self.env:
            out["env"] = _env("sandbox.env", self.env)
        if self.variables:
            out["variables"] = _variables(self.variables)
        return out


@dataclass(frozen=True)
class ErrorInfo:
    """Why the fleet could not run the code (or, for worker_lost, does not know the outcome)."""

    code: str = ErrorCode.INTERNAL
    message: str = ""

    @property
    def advice(self) -> str:
        """What a client does about it; empty for a code this client does not know."""
        return ADVICE.get(self.code, "")


@dataclass(frozen=True)
class SandboxInfo:
    """The sandbox a run went to."""

    id: str = ""
    backend: str = ""
    worker: str = ""
    #: This run created the sandbox.
    created: bool = False
    #: An earlier sandbox of this conversation was lost with its worker: its files are gone.
    recreated: bool = False


@dataclass(frozen=True)
class StreamInfo:
    """What a streamed run published: where, how many chunks (the last seq), and the output
    left out of the stream for coming faster than it carries (in the result's output)."""

    subject: str = ""
    chunks: int = 0
    dropped_bytes: int = 0


@dataclass(frozen=True)
class OutputChunk:
    """A piece of a streamed run's output: ``seq`` numbers them from 1; ``dropped`` counts
    the bytes left out of the stream since the previous chunk."""

    id: str = ""
    seq: int = 0
    data: str = ""
    dropped: int = 0


@dataclass(frozen=True)
class RunResult:
    """A run's result. A snippet that fails is a result with its exit code, not an error."""

    id: str = ""
    output: str = ""
    exit_code: int = 0
    #: The run hit its timeout: its processes were killed, the output so far is kept, the
    #: sandbox and its files survive.
    timed_out: bool = False
    #: The output was cut: its head and tail are kept around a line saying what was cut.
    truncated: bool = False
    duration_ms: int = 0
    sandbox: SandboxInfo | None = None
    error: ErrorInfo | None = None
    #: A streamed run's: what was published.
    stream: StreamInfo | None = None


@dataclass(frozen=True)
class FileEntry:
    """One entry of a list: its path relative to the workspace, its type (file, dir, symlink,
    other), size, permission bits (octal, "0644") and modification time (RFC 3339)."""

    path: str = ""
    type: str = ""
    size: int = 0
    mode: str = ""
    mtime: str = ""


@dataclass(frozen=True)
class FileResult:
    """The answer to a file request (docs/protocol.md, Files)."""

    id: str = ""
    op: str = ""
    path: str = ""
    #: put: the bytes the file holds; get: the whole file's size.
    size: int = 0
    #: get: the bytes read from ``offset``.
    data: bytes = b""
    offset: int = 0
    eof: bool = False
    sha256: str = ""
    mode: str = ""
    mtime: str = ""
    entries: tuple[FileEntry, ...] = ()
    truncated: bool = False
    deleted: bool = False
    sandbox: SandboxInfo | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class CloseResult:
    """The answer to a close: whether a sandbox was destroyed, and which."""

    closed: bool = False
    sandbox: SandboxInfo | None = None
    error: ErrorInfo | None = None


def run_request(
    request_id: str,
    code: str,
    language: str,
    timeout: float | None,
    env: Mapping[str, str] | None,
    sandbox: SandboxOptions | None,
    stream: bool = False,
) -> bytes:
    """Builds a RunRequest's body, checked as a dispatcher checks one (pkg/protocol's
    Validate): what the contract refuses is never sent. Raises FleetError naming the field.

    ``timeout`` None or 0 is the server's default, as in the Go client."""
    if not valid_id(request_id):
        raise FleetError(ErrorCode.BAD_REQUEST, f"id {request_id!r} must match [A-Za-z0-9_-]{{1,{MAX_ID_LEN}}}")
    if not isinstance(code, str) or code == "":
        raise FleetError(ErrorCode.BAD_REQUEST, "code is empty")
    size = len(code.encode("utf-8", "surrogatepass"))
    if size > MAX_CODE_BYTES:
        raise FleetError(ErrorCode.BAD_REQUEST, f"code is {size} bytes, the limit is {MAX_CODE_BYTES}")
    if language not in LANGUAGES:
        raise FleetError(
            ErrorCode.UNSUPPORTED_LANGUAGE,
            f"language {language!r} is not supported; supported: {', '.join(LANGUAGES)}",
        )
    req: dict[str, Any] = {"id": request_id, "code": code, "language": language}
    if stream:
        req["stream"] = True
    if timeout:
        if not 0 < timeout <= MAX_TIMEOUT:  # NaN fails this too
            raise FleetError(ErrorCode.BAD_REQUEST, f"timeout is {timeout} s, it must be in (0, {MAX_TIMEOUT:.0f}]")
        req["timeout_ms"] = max(int(timeout * 1000), 1)
    if env:
        req["env"] = _env("env", env)
    if sandbox is not None and (opts := sandbox.to_json()):
        req["sandbox"] = opts
    return _encode(req)


def file_request(request_id: str, op: str, path: str, sandbox: SandboxOptions | None = None, **fields: Any) -> bytes:
    """Builds a FileRequest's body; ``fields`` are the op's (data as bytes, offset, size,
    upload, more, sha256, mode, length, recursive), left out when empty."""
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise FleetError(ErrorCode.BAD_REQUEST, f"path is more than {MAX_PATH_BYTES} bytes")
    _string("path", path)
    if op != "list" and path == "":
        raise FleetError(ErrorCode.BAD_REQUEST, "path is empty")
    req: dict[str, Any] = {"id": request_id, "op": op}
    if path:
        req["path"] = path
    for k, v in fields.items():
        if v:
            req[k] = base64.b64encode(v).decode("ascii") if k == "data" else v
    if sandbox is not None and (opts := sandbox.to_json()):
        req["sandbox"] = opts
    return _encode(req)


def _encode(req: dict[str, Any]) -> bytes:
    try:
        # Not ensure_ascii: "é" would take six bytes as \u00e9 and code of 512 KiB would no
        # longer fit a NATS message.
        return json.dumps(req, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as e:
        raise FleetError(ErrorCode.BAD_REQUEST, f"the request is not valid Unicode: {e.reason} at character {e.start}") from None


def _env(field: str, env: Mapping[str, str]) -> dict[str, str]:
    if len(env) > MAX_ENV_VARS:
        raise FleetError(ErrorCode.BAD_REQUEST, f"{field} has {len(env)} entries, the limit is {MAX_ENV_VARS}")
    total = 0
    for k, v in env.items():
        if not isinstance(k, str) or _ENV_KEY.fullmatch(k) is None:
            raise FleetError(ErrorCode.BAD_REQUEST, f"{field} key {k!r} must match [A-Za-z_][A-Za-z0-9_]* (at most 256 bytes)")
        _string(f"{field}[{k!r}]", v)
        total += len(k.encode()) + len(v.encode("utf-8", "surrogatepass"))
    if total > MAX_ENV_BYTES:
        raise FleetError(ErrorCode.BAD_REQUEST, f"{field} is {total} bytes (keys and values), the limit is {MAX_ENV_BYTES}")
    return dict(env)


def _variables(variables: Mapping[str, str]) -> dict[str, str]:
    if len(variables) > MAX_ENV_VARS:
        raise FleetError(ErrorCode.BAD_REQUEST, f"sandbox.variables has {len(variables)} entries, the limit is {MAX_ENV_VARS}")
    for k, v in variables.items():
        if not isinstance(k, str) or _VARIABLE.fullmatch(k) is None:
            raise FleetError(ErrorCode.BAD_REQUEST, f"sandbox.variables key {k!r} must match [A-Za-z0-9_.-]{{1,{MAX_ID_LEN}}}")
        _string(f"sandbox.variables[{k!r}]", v)
    return dict(variables)


def _string(field: str, v: object) -> None:
    if not isinstance(v, str):
        raise FleetError(ErrorCode.BAD_REQUEST, f"{field} must be a string, not {type(v).__name__}")
    if "\x00" in v:
        raise FleetError(ErrorCode.BAD_REQUEST, f"{field} contains a NUL byte")


def _image(image: str) -> None:
    if len(image) > MAX_IMAGE_LEN:
        raise FleetError(ErrorCode.BAD_REQUEST, f"sandbox.image is {len(image)} characters, the limit is {MAX_IMAGE_LEN}")
    for i, c in enumerate(image):
        if c.isspace() or unicodedata.category(c) == "Cc":
            raise FleetError(ErrorCode.BAD_REQUEST, f"sandbox.image {image!r} contains whitespace or a control character at {i}")


class CodeFleetError(Exception):
    """The base of every error this package raises."""


class FleetError(CodeFleetError):
    """The fleet could not run the code (for worker_lost: does not know whether it ran), or the
    request was refused before it was sent, with the code a dispatcher would answer.

    ``result`` is the reply that carried the error (None when refused before sending)."""

    def __init__(self, code: str, message: str, result: "RunResult | CloseResult | FileResult | None" = None) -> None:
        super().__init__(f"{code}: {message}")
        self.error = ErrorInfo(code, message)
        self.result = result

    @property
    def code(self) -> str:
        return self.error.code

    @property
    def message(self) -> str:
        return self.error.message


class MalformedReply(CodeFleetError):
    """A reply that is not a message of the contract."""


# Decoding. A message's scalar fields are its dataclass's fields with a str, int or bool
# default: the default is the value of a field left out, and its type the JSON type the field
# must have (wrong types are MalformedReply; unknown fields are ignored).


def decode_run_result(data: bytes) -> RunResult:
    obj = _object(data, "RunResult")
    return _decode(RunResult, obj, sandbox=_nested(obj, "sandbox", SandboxInfo), error=_nested(obj, "error", ErrorInfo),
                   stream=_nested(obj, "stream", StreamInfo))


def decode_close_result(data: bytes) -> CloseResult:
    obj = _object(data, "CloseResult")
    return _decode(CloseResult, obj, sandbox=_nested(obj, "sandbox", SandboxInfo), error=_nested(obj, "error", ErrorInfo))


def decode_file_result(data: bytes) -> FileResult:
    obj = _object(data, "FileResult")
    raw = _field(obj, "data", str, "")
    try:
        payload = base64.b64decode(raw, validate=True) if raw else b""
    except ValueError as e:
        raise MalformedReply(f"field data: not base64: {e}") from None
    entries = obj.get("entries")
    if entries is None:
        entries = []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise MalformedReply("field entries: not an array of objects")
    return _decode(FileResult, obj, data=payload, entries=tuple(_decode(FileEntry, e) for e in entries),
                   sandbox=_nested(obj, "sandbox", SandboxInfo), error=_nested(obj, "error", ErrorInfo))


def decode_output_chunk(data: bytes) -> OutputChunk:
    return _decode(OutputChunk, _object(data, "OutputChunk"))


_T = TypeVar("_T")
_R = TypeVar("_R", RunResult, CloseResult, FileResult)


def _decode(cls: type[_T], obj: Mapping[str, Any], **nested: Any) -> _T:
    """cls from obj's scalar fields (see above) and the ``nested`` values given."""
    scalars = {
        f.name: _field(obj, f.name, type(f.default), f.default)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if isinstance(f.default, (str, int, bool)) and f.name not in nested
    }
    return cls(**scalars, **nested)


def _nested(obj: Mapping[str, Any], name: str, cls: type[_T]) -> _T | None:
    sub = obj.get(name)
    if sub is None:
        return None
    if not isinstance(sub, dict):
        raise MalformedReply(f"field {name}: a {type(sub).__name__}, not an object")
    return _decode(cls, sub)


def checked(res: _R) -> _R:
    """res, or FleetError when it carries an error."""
    if res.error is not None:
        raise FleetError(res.error.code, res.error.message, res)
    return res


def _object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise MalformedReply(f"{what}: not JSON: {e}: {data[:200]!r}") from None
    if not isinstance(obj, dict):
        raise MalformedReply(f"{what}: a JSON {type(obj).__name__}, not an object")
    return obj


def _field(obj: Mapping[str, Any], name: str, typ: type, default: Any) -> Any:
    v = obj.get(name)
    if v is None:
        return default
    # bool is an int in Python: an integer field must not take true, nor a bool field 1.
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise MalformedReply(f"field {name}: a {type(v).__name__}, not a {typ.__name__}")
    return v
