// Package protocol is codefleet's public wire contract (v1): the NATS subjects, the JSON messages
// exchanged on them, the error codes and the validation every service applies to a request.
//
// The contract is public: clients in other languages are written against it, so it only ever
// changes additively. The JSON Schemas of these messages live in schema/ and are embedded
// (see Schema).
package protocol

import (
	"encoding/json"
	"strings"
	"time"
)

// Version is the contract version carried by this package.
const Version = "v1"

// Languages a RunRequest may name.
const (
	LangPython     = "python"
	LangBash       = "bash"
	LangJavaScript = "javascript"
	LangTypeScript = "typescript"
)

// Languages lists every language of the contract, in documentation order.
var Languages = []string{LangPython, LangBash, LangJavaScript, LangTypeScript}

// Backends a sandbox may run on.
const (
	BackendDocker  = "docker"
	BackendDaytona = "daytona"
)

// DefaultTenant is the tenant of clients that do not name one.
const DefaultTenant = "default"

// Limits of the contract. A service may be configured stricter, never looser.
const (
	// MaxIDLen bounds tenant, conversation and request ids.
	MaxIDLen = 128
	// MaxCodeBytes bounds the code of one run (NATS' default max payload is 1 MiB).
	MaxCodeBytes = 512 << 10
	// DefaultTimeout applies when a RunRequest has no timeout_ms.
	DefaultTimeout = 60 * time.Second
	// MaxTimeout is the largest timeout_ms accepted on the wire (a worker caps it lower).
	MaxTimeout = 24 * time.Hour
	// MaxEnvVars bounds the number of entries of env and sandbox.env.
	MaxEnvVars = 256
	// MaxEnvBytes bounds the total size of the keys and values of one env map.
	MaxEnvBytes = 64 << 10
)

// RunRequest asks for one snippet to run in a conversation's sandbox. Unknown fields are ignored.
type RunRequest struct {
	// ID is the client's request id. A retry with the same id in the same conversation returns
	// the first run's result (or waits for it); the code never runs twice. Optional.
	ID string `json:"id,omitempty"`
	// Code is the snippet. Required.
	Code string `json:"code"`
	// Language is one of Languages. Required.
	Language string `json:"language"`
	// TimeoutMS is the run's timeout in milliseconds; 0 means DefaultTimeout.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// Env holds environment variables for this run only.
	Env map[string]string `json:"env,omitempty"`
	// Sandbox applies only when the conversation's sandbox is created.
	Sandbox *SandboxOptions `json:"sandbox,omitempty"`
	// Stream asks for the output as it is produced: numbered OutputChunks published on
	// Subjects.Stream(tenant, conversation, id) before the RunResult (stream.go). It needs an
	// id, which names the subject. Added after v1's first fields.
	Stream bool `json:"stream,omitempty"`
}

// SandboxOptions shape the sandbox a conversation's first run creates.
type SandboxOptions struct {
	// Backend is BackendDocker or BackendDaytona; empty means the worker's default.
	Backend string `json:"backend,omitempty"`
	// Image must pass the worker's allow-list; empty means the worker's default image.
	Image string `json:"image,omitempty"`
	// Env holds sandbox-wide environment variables.
	Env map[string]string `json:"env,omitempty"`
	// Variables are per-tenant values (a Daytona API key, say) that fill Variable placeholders
	// of the worker's tenant configuration, as AG2's Variable markers do.
	Variables map[string]string `json:"variables,omitempty"`
}

// Timeout returns the request's timeout, DefaultTimeout when unset.
func (r *RunRequest) Timeout() time.Duration {
	if r.TimeoutMS <= 0 {
		return DefaultTimeout
	}
	return time.Duration(r.TimeoutMS) * time.Millisecond
}

// RunResult answers a RunRequest. Error is set only when the code could not be run; a snippet
// that fails, times out or is killed is a result with its exit code, not an Error.
type RunResult struct {
	ID         string       `json:"id"`
	Output     string       `json:"output"`
	ExitCode   int          `json:"exit_code"`
	TimedOut   bool         `json:"timed_out"`
	Truncated  bool         `json:"truncated"`
	DurationMS int64        `json:"duration_ms"`
	Sandbox    *SandboxInfo `json:"sandbox,omitempty"`
	// Stream, set on the result of a run that asked for a stream, says what was published on
	// the stream subject. Added after v1's first fields.
	Stream *StreamInfo `json:"stream,omitempty"`
	Error  *Error      `json:"error,omitempty"`
}

// SandboxInfo says where a run ran.
type SandboxInfo struct {
	ID      string `json:"id"`
	Backend string `json:"backend"`
	Worker  string `json:"worker"`
	// Created is true when this run created the sandbox.
	Created bool `json:"created"`
	// Recreated is true when an earlier sandbox of this conversation was lost (its worker died,
	// say) and this one replaced it: the earlier files are gone.
	Recreated bool `json:"recreated"`
}

// CloseResult answers a close request. Closing an unknown conversation is not an error:
// Closed is false.
type CloseResult struct {
	Closed  bool         `json:"closed"`
	Sandbox *SandboxInfo `json:"sandbox,omitempty"`
	Error   *Error       `json:"error,omitempty"`
}

// Encode marshals a message. Messages of this package always marshal.
func Encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("protocol: encode: " + err.Error())
	}
	return b
}

// ErrorResult returns a RunResult that carries only an error.
func ErrorResult(id string, err *Error) *RunResult {
	return &RunResult{ID: id, Error: err}
}

// isToken reports whether s is a valid id: [A-Za-z0-9_-]{1,128}.
func isToken(s string) bool {
	return matches(s, MaxIDLen, func(_ int, c byte) bool { return isAlnum(c) || c == '_' || c == '-' })
}

// matches reports whether s has 1 to max bytes, each accepted by ok (given its index).
func matches(s string, max int, ok func(i int, c byte) bool) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !ok(i, s[i]) {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// ValidID reports whether s is a valid tenant, conversation or worker id.
func ValidID(s string) bool { return isToken(s) }

// knownLanguage reports whether lang is one of Languages.
func knownLanguage(lang string) bool {
	for _, l := range Languages {
		if l == lang {
			return true
		}
	}
	return false
}

// trimForMessage shortens a user-supplied value quoted in an error message.
func trimForMessage(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}
