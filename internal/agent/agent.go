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
	"syscall"
	"time"
)

// drainGrace bounds how long output is still read after a run's process has exited (or was
// killed) while some escaped descendant keeps the output pipe open.
const drainGrace = 100 * time.Millisecond

// maxFrame bounds one request line.
const maxFrame = 16 << 20

// Agent serves the framed protocol on one reader/writer pair and runs snippets.
type Agent struct {
	// Dir is the working directory of every run.
	Dir string
	// Environ is the base environment of every run (the container's).
	Environ []string

	reaper *Reaper

	outMu sync.Mutex
	out   *bufio.Writer

	mu   sync.Mutex
	runs map[string]*runState
}

type runState struct {
	cancel context.CancelFunc
}

// New returns an Agent that starts processes through reaper.
func New(dir string, environ []string, reaper *Reaper) *Agent {
	return &Agent{Dir: dir, Environ: environ, reaper: reaper, runs: map[string]*runState{}}
}

// Serve reads requests from in and writes responses to out until in ends or ctx is done.
// Runs still going when it returns are killed.
func (a *Agent) Serve(ctx context.Context, in io.Reader, out io.Writer) error {
	a.out = bufio.NewWriterSize(out, 64<<10)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := bufio.NewReaderSize(in, 64<<10)
	var wg sync.WaitGroup
	defer wg.Wait()
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
		var req Request
		if err := json.Unmarshal(line, &req); err != nil {
			a.send(&Response{Op: OpError, Code: ErrCodeBadFrame, Error: "bad frame: " + err.Error()})
			continue
		}
		switch req.Op {
		case OpHello:
			a.send(&Response{Op: OpHello, ID: req.ID, Version: ProtocolVersion, Languages: a.Languages()})
		case OpCancel:
			a.mu.Lock()
			if rs := a.runs[req.ID]; rs != nil {
				rs.cancel()
			}
			a.mu.Unlock()
		case OpRun:
			rctx, rcancel := context.WithCancel(ctx)
			a.mu.Lock()
			a.runs[req.ID] = &runState{cancel: rcancel}
			a.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer rcancel()
				resp := a.Run(rctx, &req)
				a.mu.Lock()
				delete(a.runs, req.ID)
				a.mu.Unlock()
				a.send(resp)
			}()
		default:
			a.send(&Response{Op: OpError, ID: req.ID, Code: ErrCodeBadFrame, Error: fmt.Sprintf("unknown op %q", req.Op)})
		}
	}
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

func (a *Agent) send(resp *Response) {
	b, err := json.Marshal(resp)
	if err != nil {
		b, _ = json.Marshal(&Response{Op: OpError, ID: resp.ID, Code: ErrCodeStartFailed, Error: "encode response: " + err.Error()})
	}
	a.outMu.Lock()
	defer a.outMu.Unlock()
	a.out.Write(b)
	a.out.WriteByte('\n')
	a.out.Flush()
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

// lookPath is exec.LookPath over the PATH of environ.
func lookPath(name string, environ []string) (string, error) {
	path := "/usr/local/bin:/usr/bin:/bin"
	for _, kv := range environ {
		if strings.HasPrefix(kv, "PATH=") {
			path = kv[len("PATH="):]
		}
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

// Run runs one snippet and returns its result frame (or an error frame).
func (a *Agent) Run(ctx context.Context, req *Request) *Response {
	var lang *language
	for i := range languages {
		if languages[i].name == req.Language {
			lang = &languages[i]
		}
	}
	if lang == nil {
		return &Response{Op: OpError, ID: req.ID, Code: ErrCodeUnsupportedLanguage, Error: fmt.Sprintf("unknown language %q", req.Language)}
	}
	bins, ok := a.resolve(lang)
	if !ok {
		return &Response{Op: OpError, ID: req.ID, Code: ErrCodeUnsupportedLanguage, Error: fmt.Sprintf("%s is not available in this sandbox (no %s in PATH)", lang.name, strings.Join(lang.bins[0], " or "))}
	}

	file := ""
	if lang.ext != "" || len(req.Code) > maxInlineCode {
		ext := lang.ext
		dir := a.Dir
		if ext == "" {
			dir = os.TempDir() // a big python/bash snippet: keep the working directory clean
			ext = "." + lang.name
		}
		file = filepath.Join(dir, ".codefleet-"+safeName(req.ID)+ext)
		if err := os.WriteFile(file, []byte(req.Code), 0o600); err != nil {
			return &Response{Op: OpError, ID: req.ID, Code: ErrCodeStartFailed, Error: "write code file: " + err.Error()}
		}
		defer os.Remove(file)
		if lang.ext == ".ts" {
			defer os.Remove(strings.TrimSuffix(file, ".ts") + ".js")
		}
	}
	argv := lang.argv(bins, req.Code, file)

	timeout := time.Duration(req.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	return a.exec(ctx, req.ID, argv, mergeEnviron(a.Environ, req.Env), timeout, req.MaxOutput)
}

func (a *Agent) exec(ctx context.Context, id string, argv, env []string, timeout time.Duration, maxOutput int) *Response {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return &Response{Op: OpError, ID: id, Code: ErrCodeStartFailed, Error: err.Error()}
	}
	defer devnull.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return &Response{Op: OpError, ID: id, Code: ErrCodeStartFailed, Error: err.Error()}
	}
	defer pr.Close()

	start := time.Now()
	pid, exited, err := a.reaper.Start(argv[0], argv, &syscall.ProcAttr{
		Dir:   a.Dir,
		Env:   env,
		Files: []uintptr{devnull.Fd(), pw.Fd(), pw.Fd()},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	pw.Close()
	if err != nil {
		return &Response{Op: OpError, ID: id, Code: ErrCodeStartFailed, Error: fmt.Sprintf("start %s: %v", argv[0], err)}
	}

	buf := newCapBuffer(maxOutput)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		io.Copy(buf, pr)
	}()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var status syscall.WaitStatus
	timedOut, cancelled := false, false
	select {
	case status = <-exited:
	case <-timer.C:
		timedOut = true
		syscall.Kill(-pid, syscall.SIGKILL)
		status = <-exited
	case <-ctx.Done():
		cancelled = true
		syscall.Kill(-pid, syscall.SIGKILL)
		status = <-exited
	}
	duration := time.Since(start)
	// The snippet is done: whatever it left in its process group goes too. Output still in the
	// pipe is read; a descendant that escaped the group and holds the pipe is not waited for.
	KillGroup(pid)
	select {
	case <-copied:
	case <-time.After(drainGrace):
		pr.SetReadDeadline(time.Now())
		<-copied
	}

	resp := &Response{Op: OpResult, ID: id, Output: buf.String(), Truncated: buf.Truncated(), DurationUS: duration.Microseconds()}
	switch {
	case timedOut:
		resp.ExitCode, resp.TimedOut = 124, true
	case status.Signaled():
		resp.ExitCode = 128 + int(status.Signal())
	default:
		resp.ExitCode = status.ExitStatus()
	}
	if cancelled && !status.Exited() {
		resp.ExitCode = 128 + int(syscall.SIGKILL)
	}
	return resp
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
