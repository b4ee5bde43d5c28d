// Package wire is the protocol the worker (pkg/envs/docker) speaks with the sandbox agent
// (internal/agent, PID 1 of every Docker sandbox): its frames and constants, and nothing else.
// It imports only the standard library, so the worker links none of the agent's process
// handling, and the agent none of the worker's code.
//
// Framing. The protocol is newline-delimited JSON over the container's attached stdin and
// stdout: one Request per line from the worker, one Response per line from the agent. JSON
// escapes newlines inside strings, so a line is always one whole frame, and a frame cut short
// by a worker that died mid-write only spoils one line: the agent answers it with an OpError
// frame (ErrCodeBadFrame) and reads on.
//
// Hello. A new attachment starts by writing a bare newline (which ends any partial line) and an
// OpHello request; the agent answers with its ProtocolVersion and the languages whose
// interpreters it found.
//
// Runs. Runs are independent: each OpRun has an id chosen by the worker, and the agent answers
// each with exactly one OpResult or OpError frame of that id. Frames of different runs may
// interleave. OpCancel kills the run of that id (which is then answered as killed). Ids are the
// worker's, so they are only unique within one channel (the attached stream, or a socket
// session).
//
// The socket upgrade. The attached stream goes through the Docker daemon and the container's
// shim, which costs more than a millisecond per exchange. So a worker that shares a directory
// with the container (bind mounted read-only at SocketDir) listens on a unix socket there
// (SocketPath) and sends OpConnect with a fresh random token (at least 16 characters) over the
// attached stream. The agent dials the socket and writes an OpHello response carrying the token
// (and the connect request's id) as its first frame, then serves the same protocol on that
// connection; on the attached stream it answers the connect with an OpConnect frame, or an
// OpError frame with ErrCodeConnectFailed. The token proves to the worker that the connection
// is the agent's (a snippet cannot learn it: the agent is not dumpable); the read-only mount
// keeps a snippet from putting its own socket in the worker's place, and the agent in its
// container also refuses a socket made by a process it can see (its peer's pid, SO_PEERCRED,
// must be 0: outside its pid namespace). Only the attached stream takes OpConnect; a worker
// that connects again replaces the earlier socket session, and the runs of a socket session
// are killed when its connection ends.
//
// Streaming. A run with Stream set is answered, before its OpResult, with OpOutput frames of
// its id carrying its output as it is read (Seq from 1, Output, Dropped), bounded as the
// output package's Streamer says; the OpResult then has Chunks and StreamDropped.
//
// Data lines. A file's bytes do not travel inside a frame's JSON, where every byte would be
// scanned and unescaped on both sides: a frame whose DataLen is set is followed by one more
// line, the data in standard base64 (which has no newline), then a newline. A data line cut by
// a worker that died mid-write is ended by the next attachment's bare newline: it decodes to
// fewer bytes than DataLen, and its frame is answered as a bad frame. A receiver that knows
// nothing of data lines takes one as a bad frame, answered without an id.
//
// Files. OpFile carries a FileRequest (put a piece, get a piece, list, delete) in the
// workspace, and is answered with an OpFile frame carrying a FileResponse, or an OpError frame
// with one of the ErrCodeFile codes. The agent does it as itself, the snippets' user, opening
// every path element relative to the one before without following links.
//
// Egress. A sandbox whose policy lets it reach some hosts stays on network none; instead the
// worker listens on a second unix socket in the same directory (EgressSocketPath) and sends
// OpEgress with a port. The agent listens on 127.0.0.1 at that port inside the sandbox (the
// sandbox's HTTP_PROXY) and carries each connection it accepts, byte for byte, over a new
// connection to EgressSocketPath, where the worker reads the proxy request, applies the policy
// and dials. It answers with an OpEgress frame once it listens (again OpEgress for the same
// port: it already does), or an OpError frame with ErrCodeEgressFailed. The agent decides
// nothing: a snippet that connects to EgressSocketPath itself meets the same policy.
package wire

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"
)

// ProtocolVersion is bumped when frames change incompatibly.
const ProtocolVersion = 1

// Ops of requests and responses.
const (
	OpHello   = "hello"
	OpRun     = "run"
	OpCancel  = "cancel"
	OpConnect = "connect"
	OpEgress  = "egress"
	OpFile    = "file"
	OpOutput  = "output"
	OpResult  = "result"
	OpError   = "error"
)

// SocketDir is where the worker's directory is mounted in the container, and SocketPath the
// socket it listens on there.
const (
	SocketDir  = "/.codefleet/run"
	SocketPath = SocketDir + "/worker.sock"
	// EgressSocketPath is the worker's egress proxy: one connection per connection a snippet
	// opens to the agent's egress port.
	EgressSocketPath = SocketDir + "/egress.sock"
)

// Arguments of the agent: the worker passes them as the container's command.
const (
	// ArgDiskLimit=N: the most, in bytes, one file may take (RLIMIT_FSIZE on every process the
	// agent starts).
	ArgDiskLimit = "--disk-limit"
	// ArgDiskWatch: the agent also holds the snippets' files under that limit (its DiskGuard),
	// where the Docker daemon cannot limit the sandbox's writable layer itself.
	ArgDiskWatch = "--disk-watch"
)

// Request is a frame from the worker to the agent.
type Request struct {
	Op string `json:"op"`
	ID string `json:"id"`
	// Run fields.
	Code      string            `json:"code,omitempty"`
	Language  string            `json:"language,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	TimeoutMS int64             `json:"timeout_ms,omitempty"`
	// MaxOutput caps the output kept (head and tail); 0 means the default cap, output.DefaultMax
	// (internal/output).
	MaxOutput int `json:"max_output,omitempty"`
	// Token is the connect field: the agent presents it on the socket.
	Token string `json:"token,omitempty"`
	// Port is the egress field: the port to listen on at 127.0.0.1 in the sandbox.
	Port int `json:"port,omitempty"`
	// Stream asks for OpOutput frames of the run's output as it is read.
	Stream bool `json:"stream,omitempty"`
	// File is the OpFile field.
	File *FileRequest `json:"file,omitempty"`
	// DataLen is the length of File.Data, sent on the data line after the frame (WriteFrame).
	DataLen int `json:"data_len,omitempty"`
}

// File ops.
const (
	FilePut    = "put"
	FileGet    = "get"
	FileList   = "list"
	FileDelete = "delete"
)

// FileRequest is a file operation in the workspace (OpFile).
type FileRequest struct {
	Op   string `json:"op"`
	Path string `json:"path,omitempty"`
	// Put: Upload names a file sent in pieces (its pieces land in a file of the upload until
	// the last, without More, is renamed to Path); Offset is where Data goes.
	Upload string `json:"upload,omitempty"`
	Offset int64  `json:"offset,omitempty"`
	Data   []byte `json:"-"` // on the data line

	More   bool   `json:"more,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	Mode   uint32 `json:"mode,omitempty"`
	// MaxSize bounds a put's file and a get's; DeclaredSize is a put's whole size, when known.
	MaxSize      int64 `json:"max_size,omitempty"`
	DeclaredSize int64 `json:"declared_size,omitempty"`
	// Get: Length bytes from Offset.
	Length int64 `json:"length,omitempty"`
	// List and delete.
	Recursive  bool `json:"recursive,omitempty"`
	MaxEntries int  `json:"max_entries,omitempty"`
}

// FileInfo describes one file (Type: "file", "dir", "symlink", "other").
type FileInfo struct {
	Path      string `json:"path"`
	Type      string `json:"type"`
	Size      int64  `json:"size"`
	Mode      uint32 `json:"mode"`
	ModTimeNS int64  `json:"mtime_ns"`
}

// FileResponse answers a FileRequest.
type FileResponse struct {
	FileInfo
	Data      []byte     `json:"-"` // on the data line
	EOF       bool       `json:"eof,omitempty"`
	SHA256    string     `json:"sha256,omitempty"`
	Entries   []FileInfo `json:"entries,omitempty"`
	Truncated bool       `json:"truncated,omitempty"`
	Deleted   bool       `json:"deleted,omitempty"`
}

// Response is a frame from the agent to the worker.
type Response struct {
	Op string `json:"op"`
	ID string `json:"id"`
	// Hello fields.
	Version   int      `json:"version,omitempty"`
	Languages []string `json:"languages,omitempty"`
	// Token is set in the hello that opens a socket session: the connect request's token.
	Token string `json:"token,omitempty"`
	// Result fields.
	Output     string `json:"output,omitempty"`
	ExitCode   int    `json:"exit_code"`
	TimedOut   bool   `json:"timed_out,omitempty"`
	Truncated  bool   `json:"truncated,omitempty"`
	DurationUS int64  `json:"duration_us,omitempty"`
	// DiskLimited: the run was ended because the sandbox's files reached its disk limit
	// (the agent's --disk-limit); Error says what was measured.
	DiskLimited bool `json:"disk_limited,omitempty"`
	// Output frames (OpOutput): Seq numbers the run's chunks, Output holds the chunk's data,
	// Dropped the bytes left out of the stream before it. A streamed run's result has Chunks
	// and StreamDropped.
	Seq           int64 `json:"seq,omitempty"`
	Dropped       int64 `json:"dropped,omitempty"`
	Chunks        int64 `json:"chunks,omitempty"`
	StreamDropped int64 `json:"stream_dropped,omitempty"`
	// File is the OpFile answer.
	File *FileResponse `json:"file,omitempty"`
	// DataLen is the length of File.Data, sent on the data line after the frame (WriteFrame).
	DataLen int `json:"data_len,omitempty"`
	// Error fields: Code is one of the ErrCode constants.
	Code  string `json:"code,omitempty"`
	Error string `json:"error,omitempty"`
}

// Error codes of OpError responses.
const (
	ErrCodeUnsupportedLanguage = "unsupported_language"
	ErrCodeBadFrame            = "bad_frame"
	ErrCodeStartFailed         = "start_failed"
	ErrCodeConnectFailed       = "connect_failed"
	ErrCodeEgressFailed        = "egress_failed"
	// File errors: nothing at the path; the path leaves the workspace or goes through a link;
	// the file is over MaxSize; the operation failed (Error says why).
	ErrCodeFileNotFound = "file_not_found"
	ErrCodePathRefused  = "path_refused"
	ErrCodeFileTooLarge = "file_too_large"
	ErrCodeFileFailed   = "file_failed"
)

// Duration returns the run's duration.
func (r *Response) Duration() time.Duration { return time.Duration(r.DurationUS) * time.Microsecond }

// AppendFrame appends the frame of v (a *Request or a *Response) to b: its JSON line, and the
// data line of data when it is not empty. v's DataLen must be len(data).
func AppendFrame(b []byte, v any, data []byte) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return b, err
	}
	b = append(append(b, j...), '\n')
	if len(data) > 0 {
		b = base64.StdEncoding.AppendEncode(b, data)
		b = append(b, '\n')
	}
	return b, nil
}

// DecodeData decodes a data line (its newline removed or not) of a frame that said n bytes.
func DecodeData(line []byte, n int) ([]byte, error) {
	line = bytes.TrimRight(line, "\r\n")
	if base64.StdEncoding.DecodedLen(len(line)) < n || base64.StdEncoding.DecodedLen(len(line)) > n+2 {
		return nil, fmt.Errorf("data line of %d base64 characters for %d bytes", len(line), n)
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(line)))
	k, err := base64.StdEncoding.Decode(out, line)
	if err != nil {
		return nil, fmt.Errorf("data line: %w", err)
	}
	if k != n {
		return nil, fmt.Errorf("data line holds %d bytes, the frame said %d", k, n)
	}
	return out[:k], nil
}
