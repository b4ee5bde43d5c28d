// Package agent is the sandbox agent: the small program that runs as PID 1 inside every Docker
// sandbox, and the framed protocol the worker speaks with it over the container's attached
// stdin and stdout.
//
// The protocol is newline-delimited JSON: one Request per line from the worker, one Response per
// line from the agent. JSON escapes newlines inside strings, so a line is always one whole
// frame, and a frame cut short by a worker that died mid-write only spoils one line: the agent
// answers it with an error and reads on. A new attachment starts by writing a bare newline (which
// ends any partial line) and a hello.
//
// Runs are independent: each has an id chosen by the worker, and the agent answers each with
// exactly one result or error frame. Frames of different runs may interleave.
//
// The attached stream goes through the Docker daemon and the container's shim, which costs more
// than a millisecond per exchange. So a worker that shares a directory with the container (bind
// mounted read-only at SocketDir) listens on a unix socket there and sends OpConnect with a
// fresh random token over the attached stream; the agent dials the socket and writes a hello
// carrying the token as its first frame, then serves the same protocol on that connection. The
// token proves to the worker that the connection is the agent's (a snippet cannot learn it: the
// agent is not dumpable); the read-only mount keeps a snippet from putting its own socket in the
// worker's place, and the agent in its container also refuses a socket made by a process it can
// see (Agent.WorkerOutside). The runs of a socket session are killed when its connection ends.
package agent

import "time"

// ProtocolVersion is bumped when frames change incompatibly.
const ProtocolVersion = 1

// Ops of requests and responses.
const (
	OpHello   = "hello"
	OpRun     = "run"
	OpCancel  = "cancel"
	OpConnect = "connect"
	OpResult  = "result"
	OpError   = "error"
)

// SocketDir is where the worker's directory is mounted in the container, and SocketPath the
// socket it listens on there.
const (
	SocketDir  = "/.codefleet/run"
	SocketPath = SocketDir + "/worker.sock"
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
	// MaxOutput caps the output kept (head and tail); 0 means DefaultMaxOutput.
	MaxOutput int `json:"max_output,omitempty"`
	// Token is the connect field: the agent presents it on the socket.
	Token string `json:"token,omitempty"`
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
	// Error fields: Code is "unsupported_language", "bad_frame", "start_failed" or
	// "connect_failed".
	Code  string `json:"code,omitempty"`
	Error string `json:"error,omitempty"`
}

// Error codes of OpError responses.
const (
	ErrCodeUnsupportedLanguage = "unsupported_language"
	ErrCodeBadFrame            = "bad_frame"
	ErrCodeStartFailed         = "start_failed"
	ErrCodeConnectFailed       = "connect_failed"
)

// DefaultMaxOutput is the output cap when a run does not set one.
const DefaultMaxOutput = 256 << 10

// Duration returns the run's duration.
func (r *Response) Duration() time.Duration { return time.Duration(r.DurationUS) * time.Microsecond }
