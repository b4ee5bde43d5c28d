package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/rs/zerolog"
)

// session is one conversation on this worker.
type session struct {
	key, tenant, conv string
	log               zerolog.Logger

	queue chan *job
	// ctx is cancelled to stop the session: its current run is killed and its loop ends.
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	// pooled is the free pool sandbox taken for the session when its first run was accepted
	// (manager.submit), until the session claims it or ends; the session's goroutine owns it.
	pooled envs.Sandbox

	mu sync.Mutex
	// sb is set and replaced by the session's goroutine only; others read it under mu.
	sb envs.Sandbox
	// destroy says what the loop does with the sandbox when it ends: destroy or detach; reason
	// says why it is destroyed (a reason* label).
	destroy   bool
	reason    string
	lost      bool // an earlier sandbox died: the next one is "recreated"
	active    int  // runs queued or executing
	created   time.Time
	lastUsed  time.Time
	dedupe    map[string]*dedupeEntry
	dedupeIDs []string // insertion order, for eviction
}

// job is one accepted request of a conversation: a run (req, respond), or a file request
// (file, respondFile, files.go). Both kinds share the conversation's queue, so a put and the
// run after it keep their order, and both get the conversation's sandbox the same way.
type job struct {
	req       *protocol.RunRequest
	recreated bool // the dispatcher says an earlier sandbox of the conversation was lost
	respond   func(*protocol.RunResult)
	// stream, for a run that asked for it, publishes its output chunks (handlers.go).
	stream  *streamer
	entry   *dedupeEntry // nil when the client gave no id
	started bool         // its code started: it no longer counts as pending

	file        *protocol.FileRequest
	respondFile func(*protocol.FileResult)
}

// sandboxOptions are the job's request's: they shape the sandbox when the job creates it.
func (j *job) sandboxOptions() *protocol.SandboxOptions {
	if j.file != nil {
		return j.file.Sandbox
	}
	return j.req.Sandbox
}

// id is the job's request id.
func (j *job) id() string {
	if j.file != nil {
		return j.file.ID
	}
	return j.req.ID
}

// dedupeEntry remembers a request id's result so a retry gets it instead of a second run.
type dedupeEntry struct {
	done chan struct{}
	res  *protocol.RunResult
}

func (m *manager) newSession(tenant, conv string) *session {
	ctx, cancel := context.WithCancel(context.Background())
	key := protocol.Key(tenant, conv)
	return &session{
		key: key, tenant: tenant, conv: conv,
		log:   m.log.With().Str("tenant", tenant).Str("conversation_id", conv).Logger(),
		queue: make(chan *job, m.cfg.QueueDepth),
		ctx:   ctx, cancel: cancel, done: make(chan struct{}),
		lastUsed: time.Now(),
		dedupe:   map[string]*dedupeEntry{},
	}
}

// remember records a request id, evicting the oldest answered ones past size.
func (s *session) remember(id string, e *dedupeEntry, size int) {
	s.dedupe[id] = e
	s.dedupeIDs = append(s.dedupeIDs, id)
	for len(s.dedupeIDs) > size {
		old := s.dedupeIDs[0]
		if oe := s.dedupe[old]; oe != nil {
			select {
			case <-oe.done:
			default:
				return // oldest still running: keep it (the queue bounds how many can be)
			}
		}
		delete(s.dedupe, old)
		s.dedupeIDs = s.dedupeIDs[1:]
	}
}

func (s *session) forget(id string) {
	delete(s.dedupe, id)
	for i, v := range s.dedupeIDs {
		if v == id {
			s.dedupeIDs = append(s.dedupeIDs[:i], s.dedupeIDs[i+1:]...)
			break
		}
	}
}

// finish answers a run. cache keeps the result for retries with the same id; a result is not
// cached when the code never started, so that a retry may run it.
func (m *manager) finish(s *session, j *job, res *protocol.RunResult, cache bool) {
	if j.entry != nil {
		if cache {
			j.entry.res = res
		} else {
			s.mu.Lock()
			s.forget(j.req.ID)
			s.mu.Unlock()
			j.entry.res = res
		}
		close(j.entry.done)
	}
	if !j.started {
		m.pending.Add(-1)
	}
	j.respond(res)
	m.done(s)
}

// done counts a job of s answered.
func (m *manager) done(s *session) {
	s.mu.Lock()
	s.active--
	s.lastUsed = time.Now()
	s.mu.Unlock()
	m.inflight.Done()
}

// fail answers a job that could not be done with perr, a run's not cached (its code did not
// start).
func (m *manager) fail(s *session, j *job, perr *protocol.Error) {
	if j.file != nil {
		m.finishFile(s, j, protocol.FileErrorResult(j.file.ID, j.file.Op, perr))
		return
	}
	m.finish(s, j, protocol.ErrorResult(j.req.ID, perr), false)
}

// loop works through a session's queue until the session is stopped.
func (m *manager) loop(s *session) {
	defer close(s.done)
	defer s.cancel()
	for {
		select {
		case j := <-s.queue:
			if !m.execute(s, j) {
				m.mu.Lock()
				gone := m.sessions[s.key] != s // execute ended it (see dropIdle)
				m.mu.Unlock()
				if gone {
					return
				}
			}
		case <-s.ctx.Done():
			m.end(s, "stopped")
			return
		}
	}
}

// dropIdle ends a session that has no sandbox, unless more runs came in meanwhile (submit
// enqueues under m.mu, so this check is exact); it reports whether it did.
func (m *manager) dropIdle(s *session) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(s.queue) == 0 && m.sessions[s.key] == s {
		delete(m.sessions, s.key)
		return true
	}
	return false
}

// end answers what is still queued and destroys or detaches the sandbox.
func (m *manager) end(s *session, why string) {
	m.mu.Lock()
	if m.sessions[s.key] == s {
		delete(m.sessions, s.key)
	}
	m.mu.Unlock()
	if s.pooled != nil { // taken for the session, never claimed
		m.pool.giveBack(s.pooled)
		s.pooled = nil
	}
	m.wakePool()
	for {
		select {
		case j := <-s.queue:
			m.fail(s, j, protocol.Errorf(protocol.CodeSandboxFailed, "conversation %s was closed before this request was taken", s.conv))
			continue
		default:
		}
		break
	}
	s.mu.Lock()
	sb, destroy, reason := s.sb, s.destroy, cmp.Or(s.reason, reasonClosed)
	s.sb = nil
	s.mu.Unlock()
	if sb == nil {
		return
	}
	sb.Close()
	if destroy {
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.CreateTimeout)
		defer cancel()
		m.metrics.destroyed.WithLabelValues(reason).Inc()
		if err := m.env.Destroy(ctx, sb.Info().ID); err != nil {
			s.log.Warn().Err(err).Str("sandbox_id", sb.Info().ID).Msg("destroy sandbox")
		}
	}
	s.log.Debug().Str("sandbox_id", sb.Info().ID).Bool("destroyed", destroy).Str("why", why).Msg("session ended")
}

// execute does one job. It returns false when the session has no sandbox and could not get one.
func (m *manager) execute(s *session, j *job) bool {
	log := s.log.With().Str("request_id", j.id()).Logger()
	created := false
	if s.sb == nil {
		start := time.Now()
		sb, src, err := m.create(s, j.sandboxOptions())
		if err != nil {
			m.metrics.createErrors.Inc()
			log.Warn().Err(err).Msg("create sandbox")
			// Without a sandbox the session ends rather than hold a capacity slot, and before
			// the answer: a client told of the failure may open another conversation at once.
			gone := m.dropIdle(s)
			m.fail(s, j, errorOf(err))
			if gone {
				m.wakePool()
			}
			return false
		}
		born := time.Now()
		if src == fromPool {
			born = sb.Info().Created // its max life counts from its creation, not its claim
		}
		s.mu.Lock()
		s.sb, s.created = sb, born
		s.mu.Unlock()
		// A re-attached sandbox kept its files: neither created nor recreated. A claimed pool
		// sandbox is new to the conversation: created.
		created = src != reattached
		switch src {
		case fromPool:
			m.pool.bound(sb.Info().ID) // after s.sb: the reconciler sees it in one or the other
			m.metrics.createDuration.Observe(time.Since(start).Seconds())
		case createdNew:
			m.metrics.created.Inc()
			m.metrics.createDuration.Observe(time.Since(start).Seconds())
		}
		m.noteLanguages(sb.Languages())
	}
	sb := s.sb
	info := &protocol.SandboxInfo{ID: sb.Info().ID, Backend: m.env.Name(), Worker: m.worker, Created: created}
	if created {
		s.mu.Lock()
		info.Recreated = s.lost || j.recreated
		s.lost = false
		s.mu.Unlock()
	}
	if j.file != nil {
		m.executeFile(s, j, sb, info)
		return true
	}
	req := j.req
	if !slices.Contains(sb.Languages(), req.Language) {
		res := protocol.ErrorResult(req.ID, protocol.Errorf(protocol.CodeUnsupportedLanguage,
			"%s is not available in this sandbox's image %s (it has %v)", req.Language, sb.Info().Image, sb.Languages()))
		res.Sandbox = info
		m.finish(s, j, res, false)
		return true
	}

	select {
	case m.runSem <- struct{}{}:
	case <-s.ctx.Done():
		m.finish(s, j, protocol.ErrorResult(req.ID, protocol.Errorf(protocol.CodeSandboxFailed, "conversation %s was closed before this run started", s.conv)), false)
		return true
	}
	m.running.Add(1)
	m.pending.Add(-1)
	j.started = true
	exec := envs.Exec{Code: req.Code, Language: req.Language, Env: req.Env, Timeout: m.timeout(req)}
	if j.stream != nil {
		exec.Stream = j.stream.publish
	}
	out, err := sb.Run(s.ctx, exec)
	m.running.Add(-1)
	<-m.runSem

	if err != nil {
		var res *protocol.RunResult
		switch {
		case errors.Is(err, envs.ErrUnsupportedLanguage):
			res = protocol.ErrorResult(req.ID, errorOf(err))
			res.Sandbox = info
			m.finish(s, j, res, false)
			return true
		case s.ctx.Err() != nil:
			res = protocol.ErrorResult(req.ID, protocol.Errorf(protocol.CodeSandboxFailed, "conversation %s was closed while this run was executing", s.conv))
		case errors.Is(err, envs.ErrSandboxGone):
			res = protocol.ErrorResult(req.ID, m.lose(s, sb, err))
		default:
			// The backend could not hand the sandbox this run, or could not be reached (a
			// Daytona proxy's bare 502, say): the sandbox is still there, and it is kept.
			res = protocol.ErrorResult(req.ID, errorOf(err))
		}
		res.Sandbox = info
		if j.stream != nil {
			res.Stream = j.stream.info(envs.Result{}) // what was streamed before it failed
		}
		m.finish(s, j, res, true) // the code may have run: a retry must not run it again
		return true
	}
	log.Debug().Int("exit_code", out.ExitCode).Dur("duration", out.Duration).Msg("run")
	m.metrics.ran(req.Language, out.Duration)
	res := &protocol.RunResult{
		ID: req.ID, Output: out.Output, ExitCode: out.ExitCode, TimedOut: out.TimedOut,
		Truncated: out.Truncated, DurationMS: out.Duration.Milliseconds(), Sandbox: info,
	}
	if j.stream != nil {
		res.Stream = j.stream.info(out)
	}
	if out.DiskLimit != "" {
		// The code ran and was ended: an error, as the client must know, with what it printed.
		res.Error = protocol.Errorf(protocol.CodeDiskLimit, "%s", out.DiskLimit)
	}
	m.finish(s, j, res, true)
	return true
}

// lose deals with a sandbox whose container or agent is gone or unreachable (Run returned
// envs.ErrSandboxGone), the one case in which a session gives its sandbox up: nothing a snippet
// does to its own sandbox gets here (docs/architecture.md, "A sandbox is given up only when it
// is gone"). When the backend still has the sandbox (a container whose agent died, killed for
// memory, say) it is opened again, files and all; otherwise it is dropped and the next run
// gets a new one, marked recreated. It returns the run's error.
func (m *manager) lose(s *session, sb envs.Sandbox, cause error) *protocol.Error {
	id := sb.Info().ID
	sb.Close()
	ctx, cancel := context.WithTimeout(s.ctx, m.cfg.CreateTimeout)
	defer cancel()
	again, err := m.env.Open(ctx, id)
	if err == nil {
		s.mu.Lock()
		s.sb = again
		s.mu.Unlock()
		s.log.Warn().Err(cause).Str("sandbox_id", id).Msg("sandbox lost its agent; opened again with its files")
		return protocol.Errorf(protocol.CodeSandboxFailed, "%v; the sandbox was started again with its files: run the code again", cause)
	}
	s.log.Warn().Err(cause).AnErr("reopen", err).Str("sandbox_id", id).Msg("sandbox lost")
	s.mu.Lock()
	s.sb, s.lost = nil, true
	s.mu.Unlock()
	go m.destroyQuietly(id, reasonLost)
	return errorOf(cause)
}

func (m *manager) timeout(req *protocol.RunRequest) time.Duration {
	return min(req.Timeout(), m.cfg.MaxTimeout)
}

// source says where a session's sandbox came from.
type source int

const (
	createdNew source = iota // created for the conversation
	reattached               // the conversation's own, left by the worker that held it before
	fromPool                 // a warm pool sandbox, claimed
)

// create gets the session a sandbox. A conversation a pool sandbox can serve claims one: the
// one taken when its first run was accepted, or one that comes free while it waits for a
// creation turn. With a backend whose sandboxes outlive their worker (envs.Reattacher), it
// first looks for the conversation's existing sandbox, left by the worker that held the
// conversation before, and re-attaches to it; else it creates one.
func (m *manager) create(s *session, opts *protocol.SandboxOptions) (envs.Sandbox, source, error) {
	spec := m.spec(s.tenant, s.conv, opts)
	ctx, cancel := context.WithTimeout(s.ctx, m.cfg.CreateTimeout)
	defer cancel()
	poolable := m.poolable(spec)
	for turn := false; !turn; {
		var ready <-chan struct{} // nil: no pool sandbox to wait for
		if poolable {
			sb := s.pooled
			s.pooled = nil
			if sb == nil {
				sb, ready = m.pool.take()
			}
			if sb != nil {
				err := m.pool.claim(ctx, sb, spec)
				if err == nil {
					return sb, fromPool, nil
				}
				s.log.Warn().Err(err).Msg("claim pool sandbox; creating one")
				poolable, ready = false, nil
			}
		}
		m.createWaiting.Add(1)
		select {
		case m.createSem <- struct{}{}:
			turn = true
		case <-ready: // a pool sandbox came free: take it if no one else did
		case <-ctx.Done():
		}
		m.createWaiting.Add(-1)
		if !turn && ctx.Err() != nil {
			return nil, createdNew, fmt.Errorf("%w: no turn to create a sandbox within %s (%d creations at a time)", envs.ErrBackendUnavailable, m.cfg.CreateTimeout, cap(m.createSem))
		}
	}
	defer func() {
		<-m.createSem
		m.wakePool()
	}()
	if poolable {
		m.metrics.poolMisses.Inc()
	}
	s.mu.Lock()
	lost := s.lost // this worker just dropped the conversation's sandbox: do not pick it up again
	s.mu.Unlock()
	if r, ok := m.env.(envs.Reattacher); ok && !lost {
		sb, err := r.Reattach(ctx, spec)
		switch {
		case err == nil:
			s.log.Info().Str("sandbox_id", sb.Info().ID).Msg("re-attached to the conversation's sandbox")
			return sb, reattached, nil
		case errors.Is(err, envs.ErrSandboxFailed):
			s.log.Warn().Err(err).Msg("the conversation's sandbox cannot be re-attached; creating one")
		case !errors.Is(err, envs.ErrNotFound):
			return nil, createdNew, err
		}
	}
	sb, err := m.env.Create(ctx, spec)
	return sb, createdNew, err
}
