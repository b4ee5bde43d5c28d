package daytona

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// API is the part of Daytona's REST API this backend uses: the management calls on sandboxes and
// the toolbox calls that run commands and code in one (a blocking execute or code run, or a
// command of a session, polled until it ends). Client implements it over HTTP; an adapter around
// the official Go SDK could replace it, and tests substitute fakes.
//
// Every method takes the caller's context. Errors from the service are *APIError (errors.As),
// with the HTTP status; transport failures are returned as they come from net/http.
type API interface {
	// Create asks for a new sandbox (POST /sandbox). The sandbox returned is as the service saw
	// it before waiting for it to start: callers poll Get until it is started.
	Create(ctx context.Context, req CreateSandboxRequest) (Sandbox, error)
	// Get returns a sandbox by id or name (GET /sandbox/{idOrName}); 404 once it is destroyed.
	Get(ctx context.Context, idOrName string) (Sandbox, error)
	// List returns one page of the sandboxes whose labels include q.Labels (GET /sandbox),
	// from servers that page with a cursor and from older ones that return a bare array.
	List(ctx context.Context, q ListQuery) (ListPage, error)
	// Delete starts deleting a sandbox (DELETE /sandbox/{idOrName}); it completes asynchronously.
	Delete(ctx context.Context, idOrName string) (Sandbox, error)
	// Start starts a stopped or archived sandbox, or resumes a paused one (POST
	// /sandbox/{idOrName}/start). The service holds its answer until the sandbox is started, for
	// up to 30 s (not for an archived one), and answers with the sandbox as it is then.
	Start(ctx context.Context, idOrName string) (Sandbox, error)
	// SetLabels replaces all the labels of a sandbox (PUT /sandbox/{idOrName}/labels).
	SetLabels(ctx context.Context, idOrName string, labels map[string]string) error
	// Execute runs a shell command in a sandbox (POST {toolbox}/process/execute).
	Execute(ctx context.Context, tb Toolbox, req ExecuteRequest) (ExecuteResponse, error)
	// CodeRun runs a snippet with the sandbox's interpreter (POST {toolbox}/process/code-run,
	// daemon v0.167 and later; older daemons answer 404).
	CodeRun(ctx context.Context, tb Toolbox, req CodeRunRequest) (CodeRunResponse, error)
	// CreateSession makes a session, a shell whose commands run one after another (POST
	// {toolbox}/process/session; 409 when the id is taken).
	CreateSession(ctx context.Context, tb Toolbox, sessionID string) error
	// SessionExec sends a command to a session (POST {toolbox}/process/session/{id}/exec); with
	// RunAsync it answers at once with the command's id.
	SessionExec(ctx context.Context, tb Toolbox, sessionID string, req SessionExecRequest) (SessionExecResponse, error)
	// SessionCommand returns a command of a session (GET
	// {toolbox}/process/session/{id}/command/{cmdId}); ExitCode is nil while it runs.
	SessionCommand(ctx context.Context, tb Toolbox, sessionID, cmdID string) (SessionCommand, error)
	// SessionCommandLogs returns what a command of a session wrote (GET
	// {toolbox}/process/session/{id}/command/{cmdId}/logs).
	SessionCommandLogs(ctx context.Context, tb Toolbox, sessionID, cmdID string) (SessionLogs, error)
	// DeleteSession ends a session and kills what its commands started (DELETE
	// {toolbox}/process/session/{id}).
	DeleteSession(ctx context.Context, tb Toolbox, sessionID string) error
	// Upload writes data to a file of the sandbox, replacing it (POST
	// {toolbox}/files/bulk-upload, one file). The daemon makes the missing parent directories
	// (0755) and follows symbolic links, as any program of the sandbox's user would.
	Upload(ctx context.Context, tb Toolbox, path string, data []byte) error
	// Download reads up to length bytes of a file from offset (GET {toolbox}/files/download
	// with a Range header; the daemon serves the file with Go's http.ServeFile). A file that is
	// not there answers 404 with an empty body, a directory 400.
	Download(ctx context.Context, tb Toolbox, path string, offset, length int64) (FileRange, error)
	// ListFiles lists a directory (GET {toolbox}/files?path=). The daemon stats each entry
	// following symbolic links: a link is listed as what it points to, and a dangling one not
	// at all.
	ListFiles(ctx context.Context, tb Toolbox, path string) ([]FileInfo, error)
	// DeleteFile removes a file, or a directory and its tree when recursive (DELETE
	// {toolbox}/files?path=&recursive=); 404 with an empty body when nothing is there.
	DeleteFile(ctx context.Context, tb Toolbox, path string, recursive bool) error
}

// SandboxState is the state of a sandbox (lower-case strings on the wire).
type SandboxState string

// The service's sandbox states (its SandboxState enum, v0.190 to v0.205).
const (
	StateUnknown         SandboxState = "unknown"
	StatePendingBuild    SandboxState = "pending_build"
	StateBuildingSnap    SandboxState = "building_snapshot"
	StatePullingSnapshot SandboxState = "pulling_snapshot"
	StateCreating        SandboxState = "creating"
	StateStarting        SandboxState = "starting"
	StateStarted         SandboxState = "started"
	StateStopping        SandboxState = "stopping"
	StateStopped         SandboxState = "stopped"
	StateArchiving       SandboxState = "archiving"
	StateArchived        SandboxState = "archived"
	StateRestoring       SandboxState = "restoring"
	StatePausing         SandboxState = "pausing"
	StatePaused          SandboxState = "paused"
	StateResuming        SandboxState = "resuming"
	StateResizing        SandboxState = "resizing"
	StateSnapshotting    SandboxState = "snapshotting"
	StateForking         SandboxState = "forking"
	StateDestroying      SandboxState = "destroying"
	StateDestroyed       SandboxState = "destroyed"
	StateError           SandboxState = "error"
	StateBuildFailed     SandboxState = "build_failed"
)

// Failed reports whether a waiter must give up on a sandbox in state s.
func (s SandboxState) Failed() bool { return s == StateError || s == StateBuildFailed }

// Known reports whether s is one of the states above.
func (s SandboxState) Known() bool {
	switch s {
	case StateUnknown, StatePendingBuild, StateBuildingSnap, StatePullingSnapshot, StateCreating,
		StateStarting, StateStarted, StateStopping, StateStopped, StateArchiving, StateArchived,
		StateRestoring, StatePausing, StatePaused, StateResuming, StateResizing, StateSnapshotting,
		StateForking, StateDestroying, StateDestroyed, StateError, StateBuildFailed:
		return true
	}
	return false
}

// Startable reports whether POST /start takes a sandbox in state s: it starts a stopped one,
// restores an archived one and resumes a paused one (VM classes only: 422 for a container). A
// sandbox in any other state that is not started is in a transition to wait out (409 meanwhile).
func (s SandboxState) Startable() bool {
	return s == StateStopped || s == StateArchived || s == StatePaused
}

// LabelLanguage is the label the SDKs put on every sandbox for the language of its code runs.
const LabelLanguage = "code-toolbox-language"

// Sandbox is a sandbox as the management API returns it (create, get, delete, start) or lists
// it (a SandboxListItem has the same fields minus env, network lists, volumes and build info).
type Sandbox struct {
	ID              string            `json:"id"`
	OrganizationID  string            `json:"organizationId,omitempty"`
	Name            string            `json:"name"`
	Snapshot        string            `json:"snapshot,omitempty"`
	User            string            `json:"user,omitempty"`
	Env             map[string]string `json:"env,omitempty"`
	Labels          map[string]string `json:"labels"`
	Public          bool              `json:"public"`
	NetworkBlockAll bool              `json:"networkBlockAll,omitempty"`
	Target          string            `json:"target"`
	CPU             float64           `json:"cpu"`
	GPU             float64           `json:"gpu"`
	Memory          float64           `json:"memory"`
	Disk            float64           `json:"disk"`
	State           SandboxState      `json:"state,omitempty"`
	// DesiredState differs from State while a transition is pending; "destroyed" once a delete
	// was accepted (the sandbox stays visible as destroying for a while).
	DesiredState        SandboxState `json:"desiredState,omitempty"`
	ErrorReason         string       `json:"errorReason,omitempty"`
	Recoverable         bool         `json:"recoverable,omitempty"`
	AutoStopInterval    *int         `json:"autoStopInterval,omitempty"`
	AutoArchiveInterval *int         `json:"autoArchiveInterval,omitempty"`
	AutoDeleteInterval  *int         `json:"autoDeleteInterval,omitempty"`
	BuildInfo           *BuildInfo   `json:"buildInfo,omitempty"`
	CreatedAt           string       `json:"createdAt,omitempty"`
	UpdatedAt           string       `json:"updatedAt,omitempty"`
	DaemonVersion       string       `json:"daemonVersion,omitempty"`
	// SandboxClass is container, linux-vm, android or windows; only VM classes pause.
	SandboxClass string `json:"sandboxClass,omitempty"`
	// ToolboxProxyURL is the base of the toolbox calls: {ToolboxProxyURL}/{ID}/process/...
	ToolboxProxyURL string `json:"toolboxProxyUrl"`
}

// Toolbox returns where the sandbox's toolbox calls go.
func (s Sandbox) Toolbox() Toolbox { return Toolbox{SandboxID: s.ID, ProxyURL: s.ToolboxProxyURL} }

// Created returns the creation time, zero when unknown.
func (s Sandbox) Created() time.Time {
	t, _ := time.Parse(time.RFC3339Nano, s.CreatedAt)
	return t
}

// Deleted reports whether a delete of the sandbox was accepted or has completed.
func (s Sandbox) Deleted() bool {
	return s.DesiredState == StateDestroyed || s.State == StateDestroying || s.State == StateDestroyed
}

// BuildInfo makes a sandbox from a Dockerfile ("FROM <image>" for an image).
type BuildInfo struct {
	DockerfileContent string   `json:"dockerfileContent"`
	ContextHashes     []string `json:"contextHashes,omitempty"`
}

// CreateSandboxRequest is the body of POST /sandbox. Snapshot and BuildInfo exclude each other;
// resources (CPU, Memory, Disk) are allowed only with BuildInfo.
type CreateSandboxRequest struct {
	Name            string            `json:"name,omitempty"`
	Snapshot        string            `json:"snapshot,omitempty"`
	User            string            `json:"user,omitempty"`
	Env             map[string]string `json:"env"`
	Labels          map[string]string `json:"labels,omitempty"`
	Public          bool              `json:"public,omitempty"`
	NetworkBlockAll bool              `json:"networkBlockAll,omitempty"`
	// NetworkAllowList is comma-separated IPv4 CIDRs (at most 10), the only destinations the
	// sandbox reaches; empty for no list.
	NetworkAllowList string `json:"networkAllowList,omitempty"`
	// Target is the region; sent only when set (the organisation's default otherwise).
	Target string `json:"target,omitempty"`
	CPU    int    `json:"cpu,omitempty"`
	Memory int    `json:"memory,omitempty"`
	Disk   int    `json:"disk,omitempty"`
	// AutoStopInterval is in minutes; a pointer so that 0 (disabled) is sent.
	AutoStopInterval    *int       `json:"autoStopInterval,omitempty"`
	AutoArchiveInterval *int       `json:"autoArchiveInterval,omitempty"`
	AutoDeleteInterval  *int       `json:"autoDeleteInterval,omitempty"`
	BuildInfo           *BuildInfo `json:"buildInfo,omitempty"`
}

// ListQuery selects sandboxes for GET /sandbox.
type ListQuery struct {
	// Labels must all be present with these values (sent JSON-encoded in the labels parameter).
	Labels map[string]string
	// Limit is the page size (1-200; 0 means the server's default of 100).
	Limit int
	// Cursor is the NextCursor of the previous page; empty for the first.
	Cursor string
}

// ListPage is one page of a listing. NextCursor is empty on the last page (and always with
// servers before v0.180, which return every match at once as a bare array).
type ListPage struct {
	Items      []Sandbox `json:"items"`
	NextCursor string    `json:"nextCursor"`
}

// Toolbox addresses one sandbox's toolbox (the daemon inside it, behind Daytona's proxy).
type Toolbox struct {
	SandboxID string
	ProxyURL  string
}

// ExecuteRequest is the body of POST /process/execute.
type ExecuteRequest struct {
	// Command is written to the sandbox shell's stdin.
	Command string `json:"command"`
	// Cwd is the working directory; empty means the daemon's (the image's WORKDIR or home).
	Cwd string `json:"cwd,omitempty"`
	// Envs are extra environment variables of this command (daemon v0.167 and later).
	Envs map[string]string `json:"envs,omitempty"`
	// Timeout is in seconds; 0 means none. When it passes, the command's process group is
	// killed and the answer is 408, its output discarded.
	Timeout uint32 `json:"timeout,omitempty"`
}

// ExecuteResponse answers an execute: the exit code and stdout and stderr interleaved.
type ExecuteResponse struct {
	ExitCode int    `json:"exitCode"`
	Result   string `json:"result"`
}

// CodeRunRequest is the body of POST /process/code-run.
type CodeRunRequest struct {
	Code string `json:"code"`
	// Language is python, javascript or typescript.
	Language string            `json:"language"`
	Argv     []string          `json:"argv,omitempty"`
	Envs     map[string]string `json:"envs,omitempty"`
	// Timeout is in seconds, as for ExecuteRequest.
	Timeout uint32 `json:"timeout,omitempty"`
}

// CodeRunResponse answers a code run. Artifacts (matplotlib charts) are not used here.
type CodeRunResponse struct {
	ExitCode int    `json:"exitCode"`
	Result   string `json:"result"`
}

// SessionExecRequest is the body of POST /process/session/{id}/exec.
type SessionExecRequest struct {
	// Command is sourced by the session's shell; its stdin is kept open and never written to.
	Command string `json:"command"`
	// RunAsync answers at once with the command's id instead of when it ends.
	RunAsync bool `json:"runAsync,omitempty"`
}

// SessionExecResponse answers a session exec: the command's id, and for a synchronous exec
// its output and exit code.
type SessionExecResponse struct {
	CmdID    string  `json:"cmdId"`
	Output   *string `json:"output,omitempty"`
	Stdout   *string `json:"stdout,omitempty"`
	Stderr   *string `json:"stderr,omitempty"`
	ExitCode *int    `json:"exitCode,omitempty"`
}

// SessionCommand is a command of a session; ExitCode is nil while it runs.
type SessionCommand struct {
	ID       string `json:"id"`
	Command  string `json:"command"`
	ExitCode *int   `json:"exitCode,omitempty"`
}

// SessionLogs is what a command of a session wrote. The daemon (v0.167 and later, for a client
// of SDK version 0.167 or later) splits stdout and stderr; Output is the raw log, every line
// prefixed by the bytes 01 01 01 (stdout) or 02 02 02 (stderr). Older daemons answer only the
// log, in text.
type SessionLogs struct {
	Output string `json:"output"`
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	// Split is set when Stdout and Stderr were given apart.
	Split bool `json:"-"`
}

// FileRange is what Download read: Data from Offset, and Size, the whole file's size (-1 when
// the answer did not say).
type FileRange struct {
	Offset int64
	Data   []byte
	Size   int64
}

// FileInfo is an entry of a toolbox listing (the daemon's FileInfo; its stat follows links).
type FileInfo struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Mode is Go's FileMode.String() ("-rw-r--r--", "drwxr-xr-x"); Permissions is octal ("0644").
	Mode        string    `json:"mode"`
	Permissions string    `json:"permissions"`
	IsDir       bool      `json:"isDir"`
	Owner       string    `json:"owner"`
	Group       string    `json:"group"`
	ModifiedAt  time.Time `json:"modifiedAt"`
}

// APIError is a non-2xx answer of the management API or of a toolbox. Its body may be the
// management API's {statusCode, error, message}, the toolbox's {statusCode, message, code}, or
// empty (the toolbox proxy's bare 502, the file handlers' aborts).
type APIError struct {
	// Op names the call ("create sandbox", "execute").
	Op         string
	StatusCode int
	// Message is the service's message; empty when the body had none.
	Message string
	// Code is the toolbox's error code (REQUEST_TIMEOUT, NOT_FOUND, ...), when it gave one.
	Code string
	// Header holds the response headers (rate-limit headers among them).
	Header http.Header
	// Body is set when the body was not one of the JSON error shapes (cut to 512 bytes).
	Body string

	attempt int // of the call that got this answer, from 0
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: HTTP %d", e.Op, e.StatusCode)
	if t := http.StatusText(e.StatusCode); t != "" {
		b.WriteString(" " + t)
	}
	switch {
	case e.Message != "":
		b.WriteString(": " + e.Message)
	case e.Body != "":
		b.WriteString(": " + e.Body)
	default:
		b.WriteString(" (empty body)")
	}
	return b.String()
}

// statusOf returns the HTTP status of an *APIError in err's chain, 0 for other errors.
func statusOf(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.StatusCode
	}
	return 0
}
