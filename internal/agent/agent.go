package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/codefleet/codefleet/internal/agent/wire"
	"github.com/codefleet/codefleet/internal/output"
)

// drainGrace bounds how long output is still read after a run's process has exited (or was
// killed) while some escaped descendant keeps the output pipe open.
const drainGrace = 100 * time.Millisecond

// maxFrame bounds one request line.
const maxFrame = 16 << 20

// Agent serves the worker's protocol (package wire) and runs snippets. It speaks with the worker
// over the container's attached stdin/stdout (Serve), and, when the worker asks for it
// (wire.OpConnect), over a unix socket the worker listens on (see socket.go).
type Agent struct {
	// Dir is the working directory of every run.
	Dir string
	// Environ is the base environment of every run (the container's).
	Environ []string
	// SocketPath is where the worker's socket is when it sends wire.OpConnect; wire.SocketPath
	// by default.
	SocketPath string
	// EgressPath is the worker's egress socket, where the connections to the egress port go
	// (egress.go); wire.EgressSocketPath by default.
	EgressPath string
	// WorkerOutside, when set, refuses a socket made inside the agent's pid namespace: the
	// worker is outside the sandbox, and a snippet that managed to put its own socket at
	// SocketPath (the directory is a read-only mount, but a root snippet could move its
	// parent) does not get the token.
	WorkerOutside bool
	// Disk, when set, holds the snippets' files under a limit (disk.go); Serve runs it.
	Disk *DiskGuard
	// EndLeftovers lets the agent end the processes earlier runs left behind when the sandbox
	// runs out of pids (see startable.go). Only PID 1 of the sandbox's pid namespace sets it
	// (Main): every process it sees there is the sandbox's.
	EndLeftovers bool

	reaper *Reaper
	// dir is what the last check of the working directory found; pids are the sandbox's pids
	// cgroup files, looked for in pidsDirs (pidsCgroups when nil). See startable.go.
	dir      dirState
	pids     pidsFiles
	pidsDirs []string
	// warm is the pool of pre-started interpreters while Serve runs (nil otherwise: Run
	// called directly always starts cold).
	warm atomic.Pointer[pool]
	// warmRuns counts the runs handed to a warm interpreter (tests check the path is taken).
	warmRuns atomic.Int64
	// runs counts the runs going on; lastRun is when one last began or ended (UnixNano).
	runs    atomic.Int64
	lastRun atomic.Int64

	// sockMu guards sock, the socket session's connection (one at a time: a worker that
	// connects again replaces the old one, whose runs are killed).
	sockMu sync.Mutex
	sock   io.Closer

	// egress is the egress port's listener, once the worker asked for it (egress.go).
	egress egress
	// uploads is the account of the uploads in progress and of the last ones landed (files.go).
	uploads uploadBook
}

// New returns an Agent that starts processes through reaper.
func New(dir string, environ []string, reaper *Reaper) *Agent {
	return &Agent{Dir: dir, Environ: environ, SocketPath: wire.SocketPath, EgressPath: wire.EgressSocketPath, reaper: reaper}
}

// Serve reads requests from in and writes responses to out until in ends or ctx is done.
// Runs still going when it returns are killed, those of a socket session too. While it runs,
// python and bash interpreters are kept started ahead of runs (see warm.go); they are killed
// before it returns.
func (a *Agent) Serve(ctx context.Context, in io.Reader, out io.Writer) error {
	defer a.closeDir() // last: runs still going are answered first
	defer a.stopEgress()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := newPool(a)
	a.warm.Store(p)
	defer func() {
		a.warm.Store(nil)
		p.close()
	}()
	p.fill()
	if a.Disk != nil {
		var ga guardedAgent
		if a.EndLeftovers {
			ga.endLeftovers = a.endLeftovers
			ga.lingering = func() bool { return len(leftovers(scanProcs(), os.Getpid(), a.reaper.running())) > 0 }
		}
		go a.Disk.Run(ctx, ga)
	}
	var socks sync.WaitGroup
	defer socks.Wait() // the socket session ends with the attached stream's (serve cancels its ctx)
	return a.serve(ctx, in, out, &socks)
}

// session is one channel with the worker: its responses, and the runs it asked for (ids are
// the worker's, so they are only unique within one session).
type session struct {
	outMu sync.Mutex
	out   *bufio.Writer

	mu   sync.Mutex
	runs map[string]context.CancelFunc
}

// serve handles the requests of one session until in ends or ctx is done; the runs it started
// are killed and answered before it returns. socks, when set, tracks the socket sessions this
// one starts (only the attached stream may start them).
func (a *Agent) serve(ctx context.Context, in io.Reader, out io.Writer, socks *sync.WaitGroup) error {
	s := &session{out: bufio.NewWriterSize(out, 64<<10), runs: map[string]context.CancelFunc{}}
	ctx, cancel := context.WithCancel(ctx)
	r := bufio.NewReaderSize(in, 64<<10)
	var wg sync.WaitGroup
	defer func() {
		cancel()  // runs still going are killed...
		wg.Wait() // ...and answered before serve returns
	}()
	for {
		line, err := readLine(r)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		var req wire.Request
		if err := json.Unmarshal(line, &req); err != nil {
			s.send(&wire.Response{Op: wire.OpError, Code: wire.ErrCodeBadFrame, Error: "bad frame: " + err.Error()})
			continue
		}
		if req.DataLen > 0 { // its data line follows
			line, err := readLine(r)
			if err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			data, derr := wire.DecodeData(line, req.DataLen)
			if derr != nil || req.File == nil {
				s.send(&wire.Response{Op: wire.OpError, ID: req.ID, Code: wire.ErrCodeBadFrame, Error: fmt.Sprintf("bad frame: %v (a data line belongs to a file frame)", derr)})
				continue
			}
			req.File.Data = data
		}
		switch req.Op {
		case wire.OpHello:
			s.send(a.hello(req.ID, ""))
		case wire.OpConnect:
			if socks == nil {
				s.send(&wire.Response{Op: wire.OpError, ID: req.ID, Code: wire.ErrCodeBadFrame, Error: "connect is only taken on the attached stream"})
				continue
			}
			conn, err := a.connect(req.ID, req.Token)
			if err != nil {
				s.send(&wire.Response{Op: wire.OpError, ID: req.ID, Code: wire.ErrCodeConnectFailed, Error: err.Error()})
				continue
			}
			socks.Add(1)
			go func() {
				defer socks.Done()
				a.serveSocket(ctx, conn)
			}()
			s.send(&wire.Response{Op: wire.OpConnect, ID: req.ID})
		case wire.OpEgress:
			if err := a.startEgress(req.Port); err != nil {
				s.send(&wire.Response{Op: wire.OpError, ID: req.ID, Code: wire.ErrCodeEgressFailed, Error: err.Error()})
				continue
			}
			s.send(&wire.Response{Op: wire.OpEgress, ID: req.ID})
		case wire.OpCancel:
			s.mu.Lock()
			if stop := s.runs[req.ID]; stop != nil {
				stop()
			}
			s.mu.Unlock()
		case wire.OpFile:
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.send(a.File(req.ID, req.File))
			}()
		case wire.OpRun:
			rctx, rcancel := context.WithCancel(ctx)
			s.mu.Lock()
			s.runs[req.ID] = rcancel
			s.mu.Unlock()
			var emit func(output.Chunk)
			if req.Stream {
				emit = func(c output.Chunk) {
					s.send(&wire.Response{Op: wire.OpOutput, ID: req.ID, Seq: c.Seq, Output: c.Data, Dropped: c.Dropped})
				}
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer rcancel()
				resp := a.RunStream(rctx, &req, emit)
				s.mu.Lock()
				delete(s.runs, req.ID)
				s.mu.Unlock()
				s.send(resp)
			}()
		default:
			s.send(&wire.Response{Op: wire.OpError, ID: req.ID, Code: wire.ErrCodeBadFrame, Error: fmt.Sprintf("unknown op %q", req.Op)})
		}
	}
}

func (a *Agent) hello(id, token string) *wire.Response {
	return &wire.Response{Op: wire.OpHello, ID: id, Version: wire.ProtocolVersion, Languages: a.Languages(), Token: token}
}

// readLine reads one line of at most maxFrame bytes; a longer line is discarded whole and
// reported as an empty frame error by the caller's JSON decoding.
func readLine(r *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(buf)+len(chunk) <= maxFrame {
			buf = append(buf, chunk...)
		} else {
			buf = append(buf[:0], "{"...) // too long: make it a bad frame
		}
		if err == nil {
			return buf, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if len(buf) > 0 && errors.Is(err, io.EOF) {
			return buf, nil
		}
		return nil, err
	}
}

func (s *session) send(resp *wire.Response) {
	var data []byte
	if resp.File != nil {
		data, resp.DataLen = resp.File.Data, len(resp.File.Data)
	}
	b, err := wire.AppendFrame(nil, resp, data)
	if err != nil {
		b, _ = wire.AppendFrame(nil, &wire.Response{Op: wire.OpError, ID: resp.ID, Code: wire.ErrCodeStartFailed, Error: "encode response: " + err.Error()}, nil)
	}
	s.outMu.Lock()
	defer s.outMu.Unlock()
	s.out.Write(b)
	s.out.Flush()
}

// language describes how to run one language.
type language struct {
	name string
	// bins are the interpreters needed, first one found of each alternative list wins.
	bins [][]string
	// argv builds the command line from the resolved binaries and the code (inline or a file).
	argv func(bins []string, code, file string) []string
	// ext, when set, means the code is always written to a file in the working directory.
	ext string
	// warm, when set, builds the command line of a pre-started interpreter from the resolved
	// binaries and the base environment (see warm.go).
	warm func(bins, environ []string) []string
	// lasting, when set, means a warm interpreter stays good across runs: its start reads no
	// file a run can change, given no variable of startVars in the base environment (see
	// warm.go).
	lasting   bool
	startVars []string
}

// maxInlineCode is the largest code passed as one argv string (Linux MAX_ARG_STRLEN is 128 KiB).
const maxInlineCode = 120 << 10

var languages = []language{
	{
		name: "python",
		bins: [][]string{{"python3", "python"}},
		argv: func(b []string, code, file string) []string {
			if file != "" {
				return []string{b[0], file}
			}
			return []string{b[0], "-c", code}
		},
		warm: func(b, _ []string) []string { return []string{b[0], "-c", pythonBoot} },
	},
	{
		name: "bash",
		bins: [][]string{{"bash"}},
		argv: func(b []string, code, file string) []string {
			if file != "" {
				return []string{b[0], file}
			}
			return []string{b[0], "-c", code}
		},
		// $0 is the binary, as for `bash -c CODE`.
		warm: func(b, environ []string) []string {
			return []string{b[0], "-c", bashBoot(startUnderscore(environ, b[0])), b[0]}
		},
		// A non-interactive bash reads no startup file but $BASH_ENV (and $ENV in sh mode).
		lasting:   true,
		startVars: []string{"BASH_ENV", "ENV"},
	},
	{
		name: "javascript",
		bins: [][]string{{"node", "nodejs"}},
		ext:  ".js",
		argv: func(b []string, _, file string) []string { return []string{b[0], file} },
	},
	{
		name: "typescript",
		bins: [][]string{{"tsc"}, {"node", "nodejs"}, {"sh", "bash"}},
		ext:  ".ts",
		// Compile next to the source (so relative requires resolve from the working directory),
		// then run; a compile error is the run's output and exit code, as with ts-node.
		argv: func(b []string, _, file string) []string {
			js := strings.TrimSuffix(file, ".ts") + ".js"
			return []string{b[2], "-c", `"$1" --target es2020 --module commonjs --esModuleInterop --skipLibCheck --pretty false "$3" && exec "$2" "$4"`, "sh", b[0], b[1], file, js}
		},
	},
}

// resolve finds the binaries of lang in PATH.
func (a *Agent) resolve(lang *language) ([]string, bool) {
	bins := make([]string, 0, len(lang.bins))
	for _, alts := range lang.bins {
		found := ""
		for _, name := range alts {
			if p, err := lookPath(name, a.Environ); err == nil {
				found = p
				break
			}
		}
		if found == "" {
			return nil, false
		}
		bins = append(bins, found)
	}
	return bins, true
}

// getenv returns the value of key in environ (KEY=VALUE list; the last one wins, as for a
// process started with it).
func getenv(environ []string, key string) (string, bool) {
	v, found := "", false
	for _, kv := range environ {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v, found = val, true
		}
	}
	return v, found
}

// lookPath is exec.LookPath over the PATH of environ.
func lookPath(name string, environ []string) (string, error) {
	path, ok := getenv(environ, "PATH")
	if !ok {
		path = "/usr/local/bin:/usr/bin:/bin"
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// Languages returns the languages whose interpreters are present.
func (a *Agent) Languages() []string {
	var out []string
	for i := range languages {
		if _, ok := a.resolve(&languages[i]); ok {
			out = append(out, languages[i].name)
		}
	}
	return out
}

// Run runs one snippet and returns its result frame, or an error frame when the request itself
// is wrong (an unknown or missing language). A run whose process cannot be started is a result
// too: exit code 126 and an output that says why (startable.go).
func (a *Agent) Run(ctx context.Context, req *wire.Request) *wire.Response {
	return a.RunStream(ctx, req, nil)
}

// RunStream is Run that, when emit is set, also hands the output to emit as it is read, in
// chunks numbered from 1 (output.Streamer: bounded, never slowing the snippet down); every emit
// has returned when RunStream returns, and the result says how many chunks there were.
func (a *Agent) RunStream(ctx context.Context, req *wire.Request, emit func(output.Chunk)) *wire.Response {
	var lang *language
	for i := range languages {
		if languages[i].name == req.Language {
			lang = &languages[i]
		}
	}
	if lang == nil {
		return &wire.Response{Op: wire.OpError, ID: req.ID, Code: wire.ErrCodeUnsupportedLanguage, Error: fmt.Sprintf("unknown language %q", req.Language)}
	}
	timeout := time.Duration(req.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	inline := lang.ext == "" && len(req.Code) <= maxInlineCode
	a.runs.Add(1)
	a.lastRun.Store(time.Now().UnixNano())
	defer func() {
		a.lastRun.Store(time.Now().UnixNano())
		a.runs.Add(-1)
	}()

	// Whatever the last run did, this one can start: its working directory is usable, and
	// pids are free (startable.go). What was put back is said at the start of its output.
	notes, stale := a.prepare()

	// A warm interpreter, when one is idle, was started (and its binary looked up) after the
	// last run ended, or is of a lasting language, so it is what a cold start would find now
	// (see warm.go).
	p := a.warm.Load()
	if p != nil {
		if stale {
			p.discardIdle() // they started in a working directory that is gone
		}
		w := p.begin(lang.name, inline && warmable(req.Env, req.Code))
		defer p.end(lang.name)
		if w != nil {
			if proc := w.handoff(req.Env, req.Code); proc != nil {
				a.warmRuns.Add(1)
				return a.wait(ctx, req.ID, proc, timeout, req.MaxOutput, notes, emit)
			}
		}
	}

	// A cold start: the working directory is looked up by its path (it may have been moved
	// away or replaced; warm runs only check the one open, see checkDir).
	if more, stale := a.checkDirPath(); more != "" || stale {
		notes += more
		if stale && p != nil {
			p.discardIdle()
		}
	}
	bins, ok := a.resolve(lang)
	if !ok {
		return &wire.Response{Op: wire.OpError, ID: req.ID, Code: wire.ErrCodeUnsupportedLanguage, Error: fmt.Sprintf("%s is not available in this sandbox (no %s in PATH)", lang.name, strings.Join(lang.bins[0], " or "))}
	}
	file := ""
	if !inline {
		ext := lang.ext
		dir := a.Dir
		if ext == "" {
			dir = os.TempDir() // a big python/bash snippet: keep the working directory clean
			ext = "." + lang.name
		}
		file = filepath.Join(dir, ".codefleet-"+safeName(req.ID)+ext)
		if err := os.WriteFile(file, []byte(req.Code), 0o600); err != nil {
			return a.startFailed(req.ID, notes, "cannot write the code to "+file, err)
		}
		defer os.Remove(file)
		if lang.ext == ".ts" {
			defer os.Remove(strings.TrimSuffix(file, ".ts") + ".js")
		}
	}
	argv, env := lang.argv(bins, req.Code, file), mergeEnviron(a.Environ, req.Env)
	proc, err := a.spawn(argv, env, nil)
	if err != nil && outOfResources(err) && a.EndLeftovers {
		// No pid or no memory for it: what earlier runs left running goes (or, when there is
		// none, the idle interpreters), and the start is tried once more.
		n := a.endLeftovers()
		ended := plural(n, "process", "processes") + " that earlier runs left running"
		if n == 0 && p != nil {
			n = p.discardIdle()
			ended = plural(n, "process", "processes") + " (idle interpreters kept for the next runs)"
		}
		if n == 0 {
			ended = "nothing: no process was left by earlier runs"
		}
		notes += fmt.Sprintf(note+"could not start %s (%s): ended %s, and tried again\n", filepath.Base(argv[0]), errText(err), ended)
		proc, err = a.spawn(argv, env, nil)
	}
	if err != nil {
		return a.startFailed(req.ID, notes, fmt.Sprintf("cannot start %s in %s", filepath.Base(argv[0]), a.Dir), err)
	}
	return a.wait(ctx, req.ID, proc, timeout, req.MaxOutput, notes, emit)
}

// process is a started snippet: a cold one (spawn) or a warm interpreter that was handed its run.
type process struct {
	pid    int // also its process group
	exited <-chan syscall.WaitStatus
	out    *os.File  // read end of its stdout+stderr pipe
	start  time.Time // when it was started, or handed its run
	// input, when set, is closed once the rest of a warm interpreter's input is written (or
	// failed to be, because it is gone).
	input chan struct{}
}

// spawn starts argv in a process group of its own with stdin /dev/null and stdout and stderr
// on one new pipe; extra, when set, becomes its fd 3.
func (a *Agent) spawn(argv, env []string, extra *os.File) (*process, error) {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	files := []uintptr{devnull.Fd(), pw.Fd(), pw.Fd()}
	if extra != nil {
		files = append(files, extra.Fd())
	}
	start := time.Now()
	pid, exited, err := a.reaper.Start(argv[0], argv, &syscall.ProcAttr{
		Dir:   a.Dir,
		Env:   env,
		Files: files,
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	return &process{pid: pid, exited: exited, out: pr, start: start}, nil
}

// wait collects p's output until it exits, enforcing the timeout and cancellation, and returns
// the run's result; the output starts with notes (the agent's own lines, see startable.go).
func (a *Agent) wait(ctx context.Context, id string, p *process, timeout time.Duration, maxOutput int, notes string, emit func(output.Chunk)) *wire.Response {
	defer p.out.Close()
	buf := output.NewBuffer(maxOutput)
	var w io.Writer = buf
	var stream *output.Streamer
	if emit != nil {
		stream = output.NewStreamer(emit)
		defer stream.Close() // a no-op once the result has its counts
		w = io.MultiWriter(buf, stream)
	}
	if notes != "" {
		w.Write([]byte(notes))
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		io.Copy(w, p.out)
	}()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var diskHit <-chan struct{} // nil without a disk limit: never ready
	if a.Disk != nil {
		hit, done := a.Disk.watch()
		defer done()
		diskHit = hit
	}
	var status syscall.WaitStatus
	timedOut, cancelled, diskFull := false, false, false
	select {
	case status = <-p.exited:
	case <-timer.C:
		timedOut = true
		syscall.Kill(-p.pid, syscall.SIGKILL)
		status = <-p.exited
	case <-diskHit:
		diskFull = true
		syscall.Kill(-p.pid, syscall.SIGKILL)
		status = <-p.exited
	case <-ctx.Done():
		cancelled = true
		syscall.Kill(-p.pid, syscall.SIGKILL)
		status = <-p.exited
	}
	duration := time.Since(p.start)
	// The snippet is done: whatever it left in its process group goes too. Output still in the
	// pipe is read; a descendant that escaped the group and holds the pipe is not waited for.
	KillGroup(p.pid)
	select {
	case <-copied:
	case <-time.After(drainGrace):
		p.out.SetReadDeadline(time.Now())
		<-copied
		// The copier may have been stopped before it got to read what the snippet wrote
		// before it exited (on a loaded machine it may not run for longer than the grace):
		// that is in the pipe now, and is taken without waiting for more.
		p.out.SetReadDeadline(time.Time{})
		drainNow(p.out, w)
	}
	if p.input != nil {
		<-p.input // the reader is gone, so the write has ended
	}

	resp := &wire.Response{Op: wire.OpResult, ID: id, Output: buf.String(), Truncated: buf.Truncated(), DurationUS: duration.Microseconds()}
	if stream != nil {
		// Every chunk is sent before the result: they share the channel, in this order.
		resp.Chunks, resp.StreamDropped = stream.Close()
	}
	switch {
	case timedOut:
		resp.ExitCode, resp.TimedOut = 124, true
	case status.Signaled():
		resp.ExitCode = 128 + int(status.Signal())
	default:
		resp.ExitCode = status.ExitStatus()
	}
	if (cancelled || diskFull) && !status.Exited() {
		resp.ExitCode = 128 + int(syscall.SIGKILL)
	}
	if diskFull {
		resp.DiskLimited, resp.Error = true, a.Disk.Reason()
	}
	return resp
}

// drainNow copies into w what the pipe r holds at once, without waiting for more (the pipe is
// non-blocking: os.Pipe registers it with the runtime poller), and at most 1 MiB of it: an
// escaped descendant may still be writing.
func drainNow(r *os.File, w io.Writer) {
	rc, err := r.SyscallConn()
	if err != nil {
		return
	}
	chunk := make([]byte, 64<<10)
	rc.Read(func(fd uintptr) bool {
		for range 16 {
			n, err := syscall.Read(int(fd), chunk)
			if n <= 0 || err != nil {
				return true // empty (EAGAIN), closed by every writer, or failed: done either way
			}
			w.Write(chunk[:n])
		}
		return true
	})
}

// mergeEnviron overlays extra onto base (KEY=VALUE list).
func mergeEnviron(base []string, extra map[string]string) []string {
	if len(extra) == 0 {
		return base
	}
	out := make([]string, 0, len(base)+len(extra))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, over := extra[k]; !over {
			out = append(out, kv)
		}
	}
	for k, v := range extra {
		out = append(out, k+"="+v)
	}
	return out
}

// safeName keeps a run id usable in a file name.
func safeName(id string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, id)
}
