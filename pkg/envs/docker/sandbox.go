package docker

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/agent/wire"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/agentfs"
)

const (
	// maxResponseFrame bounds one frame from the agent: the output cap plus JSON escaping.
	// A snippet cannot write frames (the agent is not dumpable), but the reader stays bounded.
	maxResponseFrame = 64 << 20
	// answerGrace is how long past a run's timeout the agent may take to answer before the
	// sandbox is declared failed.
	answerGrace = 10 * time.Second
)

// sandbox is one attached container.
type sandbox struct {
	env  *Env
	info envs.Info
	log  zerolog.Logger

	conn   types.HijackedResponse
	wmu    sync.Mutex                // serializes frames written to the agent
	sock   atomic.Pointer[agentConn] // the socket session, once upgraded (socket.go); frames go there then
	nextID atomic.Uint64

	mu      sync.Mutex
	pending map[string]chan wire.Response
	// streams are the output callbacks of streamed runs, by run id: OpOutput frames go there,
	// from the frame reader, so a run's chunks are handed over before its result.
	streams map[string]func(envs.Chunk)
	dead    error // set once the stream is gone; every later Run fails with it

	languages []string
	closed    chan struct{}

	// runEnv is the sandbox-wide env of the conversation that claimed this pool sandbox
	// (pool.go), put under every run's own env: a pool sandbox was started without it. Set by
	// Claim or Open before the sandbox runs anything, then only read.
	runEnv map[string]string
	// egress is the sandbox's egress proxy (egress.go), nil when it has none; egressEnv the
	// proxy variables every run gets when its allowlist is not empty. Set before the sandbox
	// runs anything (Create, Claim, Open), then only read.
	egress    *egressProxy
	egressEnv map[string]string

	// FS is the sandbox's files: OpFile requests to the agent (fileCall).
	agentfs.FS
}

var _ envs.Sandbox = (*sandbox)(nil)

// fileTimeout bounds the agent's answer to one file request: a get at offset 0 reads the whole
// file (its checksum), up to the file size limit.
const fileTimeout = 2 * time.Minute

// attach opens the container's stdin/stdout stream and starts reading frames.
func (e *Env) attach(ctx context.Context, id string, log zerolog.Logger) (*sandbox, error) {
	conn, err := e.cli.ContainerAttach(ctx, id, container.AttachOptions{Stream: true, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		return nil, e.classify("attach container", err)
	}
	sb := &sandbox{env: e, log: log, conn: conn, pending: map[string]chan wire.Response{}, streams: map[string]func(envs.Chunk){}, closed: make(chan struct{})}
	sb.info.ID = id
	sb.FS = agentfs.FS{Call: sb.fileCall, Name: "docker: sandbox " + short(id)}
	go sb.readLoop()
	return sb, nil
}

// readLoop demultiplexes the attach stream and delivers the agent's frames to their runs.
func (s *sandbox) readLoop() {
	pr, pw := io.Pipe()
	go func() {
		_, err := stdcopy.StdCopy(pw, logWriter{s.log}, s.conn.Reader)
		if err == nil {
			err = io.EOF
		}
		pw.CloseWithError(err)
	}()
	err := s.readFrames(bufio.NewReaderSize(pr, 64<<10))
	pr.CloseWithError(err)
	s.fail(err)
}

// useSocket makes c the sandbox's channel: frames are written to it from now on, and read
// from it beside the attached stream (which keeps carrying the agent's stderr). Either one
// ending fails the sandbox.
func (s *sandbox) useSocket(c *agentConn) {
	s.sock.Store(c)
	go func() {
		err := s.readFrames(c.r)
		c.Close()
		s.fail(err)
	}()
}

// transport says which channel the sandbox's frames take: "socket" or "attach".
func (s *sandbox) transport() string {
	if s.sock.Load() != nil {
		return "socket"
	}
	return "attach"
}

// readFrames delivers the agent's frames from r to their runs until r fails.
func (s *sandbox) readFrames(r *bufio.Reader) error {
	for {
		line, err := readFrame(r)
		if err != nil {
			return err
		}
		var resp wire.Response
		if jerr := json.Unmarshal(line, &resp); jerr != nil {
			s.log.Warn().Err(jerr).Msg("bad frame from sandbox agent")
			continue
		}
		if resp.DataLen > 0 { // its data line follows
			line, err := readFrame(r)
			if err != nil {
				return err
			}
			data, derr := wire.DecodeData(line, resp.DataLen)
			if derr != nil || resp.File == nil {
				resp = wire.Response{Op: wire.OpError, ID: resp.ID, Code: wire.ErrCodeBadFrame, Error: fmt.Sprintf("the agent's data line: %v", derr)}
			} else {
				resp.File.Data = data
			}
		}
		if resp.Op == wire.OpOutput {
			s.mu.Lock()
			emit := s.streams[resp.ID]
			s.mu.Unlock()
			if emit != nil {
				emit(envs.Chunk{Seq: resp.Seq, Data: resp.Output, Dropped: resp.Dropped})
			}
			continue
		}
		s.mu.Lock()
		ch := s.pending[resp.ID]
		delete(s.pending, resp.ID)
		s.mu.Unlock()
		if ch != nil {
			ch <- resp
		}
	}
}

// fail marks the sandbox dead and fails every pending run.
func (s *sandbox) fail(cause error) {
	s.mu.Lock()
	if s.dead != nil {
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	var dead error
	select {
	case <-s.closed:
		dead = fmt.Errorf("%w: docker: sandbox %s", envs.ErrClosed, short(s.info.ID))
	default:
		// Asked without the lock: it may wait a moment for Docker to see the container exit.
		dead = fmt.Errorf("%w: docker: sandbox %s: the agent's stream ended (%s)", envs.ErrSandboxGone, short(s.info.ID), s.stateOf(cause))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead != nil {
		return
	}
	s.dead = dead
	for id, ch := range s.pending {
		close(ch)
		delete(s.pending, id)
	}
}

// exitWait bounds the wait for Docker to see the exit of a container whose agent's stream
// ended: the agent (PID 1) is gone a moment before the container counts as exited.
const exitWait = 2 * time.Second

// stateOf describes why the container went away, for error messages. A container that still
// shows as running is given exitWait to exit, so that the worker, told its sandbox is gone,
// finds it exited (and starts it again, files and all) rather than running without its agent.
func (s *sandbox) stateOf(cause error) string {
	ctx, cancel := context.WithTimeout(context.Background(), exitWait+5*time.Second)
	defer cancel()
	c, err := s.env.cli.ContainerInspect(ctx, s.info.ID)
	if err == nil && c.State != nil && c.State.Running {
		wctx, wcancel := context.WithTimeout(ctx, exitWait)
		waited, errs := s.env.cli.ContainerWait(wctx, s.info.ID, container.WaitConditionNotRunning)
		select {
		case <-waited:
		case <-errs:
		}
		wcancel()
		c, err = s.env.cli.ContainerInspect(ctx, s.info.ID)
	}
	switch {
	case err != nil:
		return "container gone: " + err.Error()
	case c.State == nil:
		return cause.Error()
	case c.State.OOMKilled:
		return "container killed: out of memory"
	case !c.State.Running:
		return fmt.Sprintf("container exited with status %d", c.State.ExitCode)
	default:
		return cause.Error()
	}
}

func readFrame(r *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(buf)+len(chunk) > maxResponseFrame {
			return nil, fmt.Errorf("frame over %d bytes", maxResponseFrame)
		}
		buf = append(buf, chunk...)
		if err == nil {
			return buf, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

// call sends a request and waits for its response.
func (s *sandbox) call(ctx context.Context, req wire.Request, deadline time.Duration) (wire.Response, error) {
	ch := make(chan wire.Response, 1)
	s.mu.Lock()
	if s.dead != nil {
		err := s.dead
		s.mu.Unlock()
		return wire.Response{}, err
	}
	s.pending[req.ID] = ch
	s.mu.Unlock()

	if err := s.write(req); err != nil {
		s.forget(req.ID)
		return wire.Response{}, err
	}
	timer := time.NewTimer(deadline)
	defer timer.Stop()
	select {
	case resp, ok := <-ch:
		if !ok {
			return wire.Response{}, s.deadErr()
		}
		return resp, nil
	case <-ctx.Done():
		// Kill the run; its result is not waited for.
		s.forget(req.ID)
		if req.Op == wire.OpRun {
			s.write(wire.Request{Op: wire.OpCancel, ID: req.ID})
		}
		return wire.Response{}, ctx.Err()
	case <-timer.C:
		s.forget(req.ID)
		return wire.Response{}, fmt.Errorf("%w: docker: sandbox %s: the agent did not answer within %s", envs.ErrSandboxGone, short(s.info.ID), deadline)
	}
}

func (s *sandbox) write(req wire.Request) error {
	var data []byte
	if req.File != nil {
		data, req.DataLen = req.File.Data, len(req.File.Data)
	}
	b, err := wire.AppendFrame(nil, &req, data)
	if err != nil {
		return fmt.Errorf("%w: docker: encode frame: %v", envs.ErrSandboxFailed, err)
	}
	s.wmu.Lock()
	if c := s.sock.Load(); c != nil {
		_, err = c.Write(b)
	} else {
		_, err = s.conn.Conn.Write(b)
	}
	s.wmu.Unlock()
	if err != nil {
		s.fail(err)
		return s.deadErr()
	}
	return nil
}

func (s *sandbox) forget(id string) {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
}

func (s *sandbox) deadErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead == nil {
		return fmt.Errorf("%w: docker: sandbox %s: stream closed", envs.ErrSandboxGone, short(s.info.ID))
	}
	return s.dead
}

// hello (re)synchronises with the agent: a bare newline ends any frame a previous worker left
// half-written, then the agent says which languages its image has.
func (s *sandbox) hello(ctx context.Context) error {
	s.wmu.Lock()
	_, err := s.conn.Conn.Write([]byte("\n"))
	s.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("%w: docker: sandbox %s: write to agent: %v", envs.ErrSandboxFailed, short(s.info.ID), err)
	}
	resp, err := s.call(ctx, wire.Request{Op: wire.OpHello, ID: "hello-" + strconv.FormatUint(s.nextID.Add(1), 10)}, 30*time.Second)
	if err != nil {
		return err
	}
	if resp.Version != wire.ProtocolVersion {
		return fmt.Errorf("%w: docker: sandbox %s: agent protocol %d, want %d", envs.ErrSandboxFailed, short(s.info.ID), resp.Version, wire.ProtocolVersion)
	}
	s.languages = resp.Languages
	return nil
}

func (s *sandbox) Info() envs.Info     { return s.info }
func (s *sandbox) Languages() []string { return s.languages }

// Run sends the snippet to the agent and waits for its result.
func (s *sandbox) Run(ctx context.Context, ex envs.Exec) (envs.Result, error) {
	timeout := ex.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	env := ex.Env
	if s.runEnv != nil || s.egressEnv != nil {
		env = envs.MergeEnv(envs.MergeEnv(s.egressEnv, s.runEnv), ex.Env)
	}
	req := wire.Request{
		Op:        wire.OpRun,
		ID:        "run-" + strconv.FormatUint(s.nextID.Add(1), 10),
		Code:      ex.Code,
		Language:  ex.Language,
		Env:       env,
		TimeoutMS: max(timeout.Milliseconds(), 1),
		MaxOutput: s.env.cfg.MaxOutput,
		Stream:    ex.Stream != nil,
	}
	if ex.Stream != nil {
		// The frame reader calls it, one frame at a time: every chunk is handed over before
		// the result frame reaches call.
		s.mu.Lock()
		s.streams[req.ID] = ex.Stream
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			delete(s.streams, req.ID)
			s.mu.Unlock()
		}()
	}
	resp, err := s.call(ctx, req, timeout+answerGrace)
	if err != nil {
		return envs.Result{}, err
	}
	switch resp.Op {
	case wire.OpResult:
		res := envs.Result{Output: resp.Output, ExitCode: resp.ExitCode, TimedOut: resp.TimedOut, Truncated: resp.Truncated, Duration: resp.Duration(),
			Chunks: resp.Chunks, StreamDropped: resp.StreamDropped}
		if resp.DiskLimited {
			res.DiskLimit = cmp.Or(resp.Error, "the sandbox's files reached its disk limit: the run was ended")
		}
		return res, nil
	case wire.OpError:
		if resp.Code == wire.ErrCodeUnsupportedLanguage {
			return envs.Result{}, fmt.Errorf("%w: %s", envs.ErrUnsupportedLanguage, resp.Error)
		}
		return envs.Result{}, fmt.Errorf("%w: docker: sandbox %s: %s", envs.ErrSandboxFailed, short(s.info.ID), resp.Error)
	default:
		return envs.Result{}, fmt.Errorf("%w: docker: sandbox %s: unexpected frame %q", envs.ErrSandboxFailed, short(s.info.ID), resp.Op)
	}
}

// fileCall sends one file request to the agent.
func (s *sandbox) fileCall(ctx context.Context, fr *wire.FileRequest) (*wire.Response, error) {
	resp, err := s.call(ctx, wire.Request{Op: wire.OpFile, ID: "file-" + strconv.FormatUint(s.nextID.Add(1), 10), File: fr}, fileTimeout)
	if err != nil {
		return nil, err
	}
	return &resp, nil
}

// Close detaches; the container keeps running with the agent waiting for the next attachment.
func (s *sandbox) Close() error {
	select {
	case <-s.closed:
		return nil
	default:
		close(s.closed)
	}
	s.conn.Close() // also ends a write blocked on it (wmu is not taken here)
	if c := s.sock.Load(); c != nil {
		c.Close() // the agent kills the runs of this session
	}
	if s.egress != nil {
		s.env.dropEgress(s.info.ID, s.egress)
	}
	return nil
}

// logWriter sends the agent's stderr to the log.
type logWriter struct{ log zerolog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Warn().Str("stderr", string(p)).Msg("sandbox agent")
	return len(p), nil
}
