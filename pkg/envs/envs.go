// Package envs is the contract between a codefleet worker and the backends that run code:
// an Env creates, finds and destroys Sandboxes; a Sandbox runs snippets one process at a time.
//
// Backends live in subpackages (docker, daytona) and import this package, never the reverse.
// Every backend passes the conformance suite in envtest.
//
// A snippet that fails, times out or is killed is a Result (its exit code says how); the error
// return of Run is only for faults of the sandbox or the backend, and wraps one of the sentinel
// errors below so the worker can map it onto a wire error code.
package envs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// Sentinel errors. Backends wrap them with %w; callers test with errors.Is.
var (
	// ErrNotFound: no sandbox with that id (destroy treats it as success).
	ErrNotFound = errors.New("sandbox not found")
	// ErrUnsupportedLanguage: the sandbox's image has no interpreter for the language.
	ErrUnsupportedLanguage = errors.New("unsupported language")
	// ErrSandboxFailed: the sandbox could not be created or opened, or the backend could not
	// hand it this one run (the sandbox stays).
	ErrSandboxFailed = errors.New("sandbox failed")
	// ErrSandboxGone (which is also an ErrSandboxFailed): the sandbox's container (or Daytona
	// sandbox) or its agent is gone or cannot be reached: it exited, was removed, or does not
	// answer. It is the only error of Run after which the worker gives the sandbox up (it
	// reopens it when the backend still has it, else the next run gets a new one, recreated).
	// Nothing a snippet does to its own sandbox (modes, processes, files, limits) may produce
	// it: that is the run's Result.
	ErrSandboxGone = fmt.Errorf("%w: gone", ErrSandboxFailed)
	// ErrBackendUnavailable: the backend (Docker daemon, Daytona API) cannot be reached.
	ErrBackendUnavailable = errors.New("backend unavailable")
	// ErrClosed: the Sandbox or Env was closed.
	ErrClosed = errors.New("closed")
)

// Labels every backend puts on what it creates, reverse-DNS as Docker recommends.
const (
	LabelManagedBy    = "io.codefleet.managed-by"
	LabelWorker       = "io.codefleet.worker"
	LabelTenant       = "io.codefleet.tenant"
	LabelConversation = "io.codefleet.conversation"
	// LabelFleet holds the prefix of the fleet whose worker made the sandbox, so two fleets on
	// one Docker host or Daytona account never take each other's sandboxes (see InFleet).
	LabelFleet = "io.codefleet.fleet"
	// LabelPool marks a sandbox made for a worker's warm pool, ahead of any conversation
	// (Pooler). It has no LabelTenant or LabelConversation: labels are fixed at creation, so
	// the backend keeps the conversation that claims it elsewhere and reports it in Info.
	LabelPool = "io.codefleet.pool"
	// ManagedByValue is the value of LabelManagedBy.
	ManagedByValue = "codefleet"
)

// SandboxLabels returns the labels of a new sandbox for spec: the backend's own labels, then
// spec.Labels, then the ones every backend owns (LabelManagedBy, LabelTenant,
// LabelConversation), which neither may override.
func SandboxLabels(backend map[string]string, spec Spec) map[string]string {
	labels := make(map[string]string, len(backend)+len(spec.Labels)+3)
	maps.Copy(labels, backend)
	maps.Copy(labels, spec.Labels)
	labels[LabelManagedBy] = ManagedByValue
	labels[LabelTenant] = spec.Tenant
	labels[LabelConversation] = spec.Conversation
	return labels
}

// InFleet reports whether a sandbox's labels put it in the fleet of prefix. A sandbox without
// LabelFleet was made before sandboxes named their fleet, by a fleet of the default prefix, the
// only one there could be then: it belongs to that fleet, so a fleet upgrades in place. An
// empty prefix is the default one.
func InFleet(labels map[string]string, prefix string) bool {
	if prefix == "" {
		prefix = protocol.DefaultPrefix
	}
	if f, ok := labels[LabelFleet]; ok {
		return f == prefix
	}
	return prefix == protocol.DefaultPrefix
}

// Spec describes the sandbox to create for one conversation.
type Spec struct {
	// Tenant and Conversation own the sandbox; they become labels.
	Tenant       string
	Conversation string
	// Image is the image (Docker) or snapshot/image (Daytona); empty means the backend default.
	Image string
	// Env is sandbox-wide environment, applied to every run.
	Env map[string]string
	// Labels are extra labels (the worker id among them).
	Labels map[string]string
	// Variables are the request's sandbox.variables: per-tenant values (a tenant's own Daytona
	// API key, say) that fill the placeholders of the backend's per-tenant configuration, as
	// AG2's Variable markers do. Backends without such configuration ignore them.
	Variables map[string]string
}

// Info describes an existing sandbox.
type Info struct {
	// ID is the backend's id of the sandbox (container id, Daytona sandbox id).
	ID      string
	Backend string
	Tenant  string
	// Conversation is the conversation the sandbox belongs to.
	Conversation string
	Image        string
	Labels       map[string]string
	Created      time.Time
	// Pool is set on a sandbox made for a warm pool (Pooler): free while Conversation is
	// empty, claimed once it names one. The Labels of a claimed one include LabelTenant and
	// LabelConversation, as if they had been put on it at creation.
	Pool bool
}

// Free reports whether info is a warm pool's sandbox that no conversation has claimed.
func (info Info) Free() bool { return info.Pool && info.Conversation == "" }

// Exec is one snippet to run.
type Exec struct {
	Code     string
	Language string
	// Env is this run's environment, on top of the sandbox's.
	Env map[string]string
	// Timeout bounds the run; when it passes, the run's processes are killed, the output so far
	// is kept, ExitCode is 124 and TimedOut is true. The sandbox and its files survive.
	Timeout time.Duration
	// Stream, when set, is given the output as it is produced, in numbered chunks, bounded as
	// protocol.StreamChunkBytes, StreamInterval and StreamBufferBytes say (output.Streamer):
	// in order, from one goroutine at a time, every call returned before Run returns.
	Stream func(Chunk)
}

// Result is the outcome of a snippet that ran.
type Result struct {
	// Output is stdout and stderr interleaved as produced, capped: when over the cap, the head
	// and the tail are kept with a marker saying how many bytes were cut between them.
	Output string
	// ExitCode is the process's status: 124 on timeout, 128+N when killed by signal N.
	ExitCode  int
	TimedOut  bool
	Truncated bool
	// Duration is the wall time of the run inside the sandbox.
	Duration time.Duration
	// DiskLimit, when set, says that the run was ended because the sandbox's files reached its
	// disk limit, and what was measured. The sandbox and its files survive.
	DiskLimit string
	// Chunks and StreamDropped, for a run with Exec.Stream, are how many chunks were streamed
	// and how many bytes of output were left out of the stream.
	Chunks        int64
	StreamDropped int64
}

// Env is a backend: it makes and finds sandboxes.
type Env interface {
	// Name returns the backend's name ("docker", "daytona").
	Name() string
	// Create makes a sandbox for spec and returns it ready to run code. On error nothing is
	// left behind.
	Create(ctx context.Context, spec Spec) (Sandbox, error)
	// Open re-attaches to an existing sandbox by id, as a restarted worker does. It returns
	// ErrNotFound when there is no such sandbox, ErrSandboxFailed when it exists but cannot run.
	Open(ctx context.Context, id string) (Sandbox, error)
	// List returns the sandboxes this Env manages whose labels include all of match.
	List(ctx context.Context, match map[string]string) ([]Info, error)
	// Destroy removes a sandbox and its files. It is idempotent: an unknown id is not an error.
	Destroy(ctx context.Context, id string) error
	// Close releases the Env's resources; sandboxes are left as they are.
	Close() error
}

// Sandbox is one conversation's sandbox. Run is safe to call from several goroutines, but the
// worker runs one snippet of a conversation at a time.
type Sandbox interface {
	// Info describes the sandbox.
	Info() Info
	// Languages returns the languages the sandbox's image can run.
	Languages() []string
	// FileSystem moves files in and out of the sandbox's workspace.
	FileSystem
	// Run runs one snippet as a fresh process and returns its Result. A context cancelled
	// before the run ends kills the run. A run that could not start because of the sandbox's
	// own state (a working directory made unusable, no pid or memory left) is a Result too,
	// with a non-zero exit code and an output that says why. The error wraps
	// ErrUnsupportedLanguage, ErrSandboxGone, ErrSandboxFailed, ErrBackendUnavailable or
	// ErrClosed.
	Run(ctx context.Context, exec Exec) (Result, error)
	// Close detaches from the sandbox without destroying it (it can be re-opened).
	Close() error
}

// Pinger is a backend that can tell whether it answers, for a worker's readiness.
type Pinger interface {
	// Ping returns nil when the backend answers within ctx, else an error wrapping
	// ErrBackendUnavailable (or saying why the backend refused).
	Ping(ctx context.Context) error
}

// Reattacher is implemented by backends whose sandboxes live outside the worker process (Daytona:
// any worker reaches any sandbox through the backend's API). When a conversation comes to a
// worker that holds no sandbox for it (it moved from a worker that died, say), the worker calls
// Reattach before Create, so that the conversation goes on in its sandbox with its files.
// Backends whose sandboxes die with their worker's host (Docker) do not implement it.
type Reattacher interface {
	// Reattach finds the sandbox of spec's tenant and conversation, takes it over (it is
	// relabelled with spec.Labels, the new worker among them, so that the worker that held it
	// before no longer counts it as its own) and returns it ready to run code. It returns
	// ErrNotFound when the conversation has no sandbox, ErrSandboxFailed when it has one that
	// cannot run (which is then destroyed).
	Reattach(ctx context.Context, spec Spec) (Sandbox, error)
}

// Pooler is a backend whose sandboxes can be made ahead of demand, for no conversation, and
// bound to one later: the worker's warm pool. A backend whose sandboxes outlive their worker
// (Reattacher) gets no pool from the worker: a conversation coming to it may have a sandbox
// already.
type Pooler interface {
	// CreateFree makes a sandbox of spec.Image for no conversation (spec.Tenant,
	// spec.Conversation, spec.Env and spec.Variables are not used) and returns it ready to run
	// code. List and Open report it with Info.Pool set and no Tenant or Conversation until it
	// is claimed. On error nothing is left behind.
	CreateFree(ctx context.Context, spec Spec) (Sandbox, error)
	// Claimable reports whether a free sandbox can serve spec as a sandbox made for it would:
	// the worker checks the image; this says whether spec.Env can be bound after creation.
	Claimable(spec Spec) bool
	// Claim binds a free sandbox from CreateFree to spec's tenant and conversation, and
	// spec.Env to every later run in it. Once it returns nil the binding is durable: Info,
	// List and Open report the sandbox as the conversation's, across worker restarts. On
	// error the sandbox must not be used: destroy it.
	Claim(ctx context.Context, sb Sandbox, spec Spec) error
}

// MergeEnv returns base overlaid by over, as a new map; nil when both are empty.
func MergeEnv(base, over map[string]string) map[string]string {
	if len(base) == 0 && len(over) == 0 {
		return nil
	}
	m := make(map[string]string, len(base)+len(over))
	for k, v := range base {
		m[k] = v
	}
	for k, v := range over {
		m[k] = v
	}
	return m
}
