// Package fake is an in-process envs.Env for unit tests of the logic around backends (the
// worker's sandbox manager, routing). By default a sandbox is a temporary directory and a run is
// a real local process started by the same agent code as in Docker sandboxes, without any
// isolation; set RunFunc for a backend that runs nothing and answers in microseconds.
package fake

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/codefleet/codefleet/internal/agent"
	"github.com/codefleet/codefleet/internal/agent/wire"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/agentfs"
)

// Name is the backend's name.
const Name = "fake"

// Env is a fake backend. Its fields may be set before first use.
type Env struct {
	// RunFunc, when set, runs every snippet instead of a local process.
	RunFunc func(ctx context.Context, sb envs.Info, ex envs.Exec) (envs.Result, error)
	// CreateFunc, when set, is called before a sandbox is created; an error fails the creation.
	CreateFunc func(ctx context.Context, spec envs.Spec) error
	// BackendName is what Name returns; "fake" when empty.
	BackendName string

	mu        sync.Mutex
	sandboxes map[string]*sandbox
	seq       atomic.Uint64
	created   atomic.Int64
	reaper    *agent.Reaper
}

var _ envs.Env = (*Env)(nil)

// New returns an empty fake backend.
func New() *Env { return &Env{} }

// Root holds the directories of this process's fake sandboxes; RemoveRoot removes it (tests do
// at exit: sandboxes of a worker that a test killed are never destroyed).
var Root = filepath.Join(os.TempDir(), "codefleet-fake-"+strconv.Itoa(os.Getpid()))

// RemoveRoot removes the directories of every fake sandbox of this process.
func RemoveRoot() error { return os.RemoveAll(Root) }

// Name returns the backend's name.
func (e *Env) Name() string {
	if e.BackendName != "" {
		return e.BackendName
	}
	return Name
}

// Created counts the sandboxes created so far.
func (e *Env) Created() int64 { return e.created.Load() }

// Live returns the number of sandboxes not destroyed.
func (e *Env) Live() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.sandboxes)
}

// Create makes a sandbox: a temporary directory.
func (e *Env) Create(ctx context.Context, spec envs.Spec) (envs.Sandbox, error) {
	if e.CreateFunc != nil {
		if err := e.CreateFunc(ctx, spec); err != nil {
			return nil, err
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.sandboxes == nil {
		e.sandboxes = map[string]*sandbox{}
		e.reaper = agent.NewChildWaiter()
	}
	id := "fake-" + strconv.FormatUint(e.seq.Add(1), 10)
	labels := map[string]string{envs.LabelManagedBy: envs.ManagedByValue, envs.LabelTenant: spec.Tenant, envs.LabelConversation: spec.Conversation}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	sb := &sandbox{env: e, info: envs.Info{ID: id, Backend: e.Name(), Tenant: spec.Tenant, Conversation: spec.Conversation, Image: spec.Image, Labels: labels, Created: time.Now()}}
	sb.FS = agentfs.FS{Call: sb.fileCall, Name: "fake: sandbox " + id}
	if e.RunFunc == nil {
		if err := os.MkdirAll(Root, 0o700); err != nil {
			return nil, fmt.Errorf("%w: fake: %v", envs.ErrSandboxFailed, err)
		}
		dir, err := os.MkdirTemp(Root, "sandbox-")
		if err != nil {
			return nil, fmt.Errorf("%w: fake: %v", envs.ErrSandboxFailed, err)
		}
		environ := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "LANG=C.UTF-8"}
		for k, v := range spec.Env {
			environ = append(environ, k+"="+v)
		}
		sb.dir = dir
		sb.agent = agent.New(dir, environ, e.reaper)
	}
	e.sandboxes[id] = sb
	e.created.Add(1)
	return sb, nil
}

// Open returns the sandbox with that id.
func (e *Env) Open(ctx context.Context, id string) (envs.Sandbox, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	sb, ok := e.sandboxes[id]
	if !ok {
		return nil, fmt.Errorf("%w: fake: %s", envs.ErrNotFound, id)
	}
	return sb, nil
}

// List returns the sandboxes whose labels include match.
func (e *Env) List(ctx context.Context, match map[string]string) ([]envs.Info, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []envs.Info
next:
	for _, sb := range e.sandboxes {
		for k, v := range match {
			if sb.info.Labels[k] != v {
				continue next
			}
		}
		out = append(out, sb.info)
	}
	return out, nil
}

// Destroy removes a sandbox; unknown ids are fine.
func (e *Env) Destroy(ctx context.Context, id string) error {
	e.mu.Lock()
	sb, ok := e.sandboxes[id]
	delete(e.sandboxes, id)
	e.mu.Unlock()
	if ok {
		sb.destroyed.Store(true)
		if sb.dir != "" {
			os.RemoveAll(sb.dir)
		}
	}
	return nil
}

// Close does nothing.
func (e *Env) Close() error { return nil }

type sandbox struct {
	env       *Env
	info      envs.Info
	dir       string
	agent     *agent.Agent
	seq       atomic.Uint64
	destroyed atomic.Bool

	// FS is the sandbox's files, done by the same agent code as in Docker sandboxes.
	agentfs.FS
}

func (s *sandbox) fileCall(ctx context.Context, fr *wire.FileRequest) (*wire.Response, error) {
	if s.destroyed.Load() {
		return nil, fmt.Errorf("%w: fake: sandbox %s was destroyed", envs.ErrSandboxGone, s.info.ID)
	}
	if s.agent == nil {
		return nil, fmt.Errorf("%w: fake: sandbox %s runs RunFunc and has no files", envs.ErrSandboxFailed, s.info.ID)
	}
	return s.agent.File("file-"+strconv.FormatUint(s.seq.Add(1), 10), fr), nil
}

func (s *sandbox) Info() envs.Info { return s.info }

func (s *sandbox) Languages() []string {
	if s.agent == nil {
		return []string{"python", "bash"}
	}
	return s.agent.Languages()
}

func (s *sandbox) Run(ctx context.Context, ex envs.Exec) (envs.Result, error) {
	if s.destroyed.Load() {
		return envs.Result{}, fmt.Errorf("%w: fake: sandbox %s was destroyed", envs.ErrSandboxGone, s.info.ID)
	}
	if s.env.RunFunc != nil {
		return s.env.RunFunc(ctx, s.info, ex)
	}
	resp := s.agent.RunStream(ctx, &wire.Request{
		Op: wire.OpRun, ID: "run-" + strconv.FormatUint(s.seq.Add(1), 10), Code: ex.Code, Language: ex.Language,
		Env: ex.Env, TimeoutMS: timeoutMS(ex.Timeout),
	}, ex.Stream)
	if resp.Op == wire.OpError {
		if resp.Code == wire.ErrCodeUnsupportedLanguage {
			return envs.Result{}, fmt.Errorf("%w: %s", envs.ErrUnsupportedLanguage, resp.Error)
		}
		return envs.Result{}, fmt.Errorf("%w: fake: %s", envs.ErrSandboxFailed, resp.Error)
	}
	return envs.Result{Output: resp.Output, ExitCode: resp.ExitCode, TimedOut: resp.TimedOut, Truncated: resp.Truncated, Duration: resp.Duration(),
		Chunks: resp.Chunks, StreamDropped: resp.StreamDropped}, nil
}

func (s *sandbox) Close() error { return nil }

// timeoutMS turns a timeout into the agent's milliseconds (0 = the agent's default).
func timeoutMS(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return max(d.Milliseconds(), 1)
}
