"""codefleet: run AI agents' code in sandboxes on a codefleet fleet, over NATS.

``codefleet.Client`` speaks the v1 wire contract (docs/protocol.md in the codefleet repository);
``codefleet.ag2.CodeFleetEnvironment`` is AG2's CodeEnvironment on top of it.
"""

from .client import DEFAULT_ATTEMPTS, DEFAULT_CONNECT_WAIT, DEFAULT_NATS_URL, DEFAULT_OVERHEAD, Client, ConnectError, Conversation, TransportError, new_id
from .files import FileChanged
from .stream import StreamResult
from .protocol import (
    LANGUAGES,
    CloseResult,
    CodeFleetError,
    ErrorCode,
    ErrorInfo,
    FileEntry,
    FileResult,
    FleetError,
    MalformedReply,
    OutputChunk,
    RunResult,
    SandboxInfo,
    SandboxOptions,
    StreamInfo,
    Subjects,
)

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_CONNECT_WAIT",
    "DEFAULT_NATS_URL",
    "DEFAULT_OVERHEAD",
    "LANGUAGES",
    "Client",
    "CloseResult",
    "CodeFleetError",
    "ConnectError",
    "Conversation",
    "ErrorCode",
    "ErrorInfo",
    "FileChanged",
    "FileEntry",
    "FileResult",
    "FleetError",
    "MalformedReply",
    "OutputChunk",
    "RunResult",
    "SandboxInfo",
    "SandboxOptions",
    "StreamInfo",
    "StreamResult",
    "Subjects",
    "TransportError",
    "new_id",
]
