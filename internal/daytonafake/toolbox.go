package daytonafake

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// markerVar is set in the environment of every process of a sandbox.
const markerVar = "DAYTONAFAKE_SANDBOX"

// maxUpload bounds the body of an upload the fake takes (it holds it in memory); the daemon
// streams it to the file.
const maxUpload = 1 << 30

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// toolboxCall is one toolbox request as the daemon gets it, past the proxy.
type toolboxCall struct {
	op           string
	id           string // sandbox
	session, cmd string // path parameters of the session routes
	dir          string // the sandbox's directory (its working directory)
	env          map[string]string
	body         []byte
	query        url.Values
	modern       bool   // daemon v0.167 or later
	sdkVersion   string // X-Daytona-SDK-Version
}

// toolboxRoute names the daemon route of a request: op, and the session and command ids.
func toolboxRoute(method, path string) (op, session, cmd string) {
	p := strings.Split(path, "/")
	switch {
	case path == "process/execute" && method == http.MethodPost:
		return "execute", "", ""
	case path == "process/code-run" && method == http.MethodPost:
		return "code-run", "", ""
	case path == "process/session" && method == http.MethodPost:
		return "session-create", "", ""
	case path == "process/session" && method == http.MethodGet:
		return "session-list", "", ""
	case len(p) == 3 && p[0] == "process" && p[1] == "session" && method == http.MethodGet:
		return "session-get", p[2], ""
	case len(p) == 3 && p[0] == "process" && p[1] == "session" && method == http.MethodDelete:
		return "session-delete", p[2], ""
	case len(p) == 4 && p[0] == "process" && p[1] == "session" && p[3] == "exec" && method == http.MethodPost:
		return "session-exec", p[2], ""
	case len(p) == 5 && p[0] == "process" && p[1] == "session" && p[3] == "command" && method == http.MethodGet:
		return "session-command", p[2], p[4]
	case len(p) == 6 && p[0] == "process" && p[1] == "session" && p[3] == "command" && p[5] == "logs" && method == http.MethodGet:
		return "session-logs", p[2], p[4]
	case (path == "files" || path == "files/") && method == http.MethodGet:
		return "files-list", "", ""
	case (path == "files" || path == "files/") && method == http.MethodDelete:
		return "files-delete", "", ""
	case path == "files/info" && method == http.MethodGet:
		return "files-info", "", ""
	case path == "files/download" && method == http.MethodGet:
		return "files-download", "", ""
	case path == "files/upload" && method == http.MethodPost:
		return "files-upload", "", ""
	case path == "files/bulk-upload" && method == http.MethodPost:
		return "files-bulk-upload", "", ""
	case path == "files/folder" && method == http.MethodPost:
		return "files-folder", "", ""
	case path == "work-dir" && method == http.MethodGet:
		return "work-dir", "", ""
	case (path == "user-home-dir" || path == "project-dir") && method == http.MethodGet:
		return "user-home-dir", "", ""
	}
	return "", "", ""
}

// serveToolbox serves /toolbox/{sandboxId}/{path} as Daytona's proxy and the sandbox's daemon
// do: the proxy checks the bearer token against the sandbox (a sandbox it does not know fails
// the check as a wrong key does, unless AnswerGone says the token is still in its cache) and
// that the sandbox runs; the load balancer in front cuts a call idle for IdleTimeout.
func (s *Server) serveToolbox(w http.ResponseWriter, r *http.Request) {
	rest := strings.TrimPrefix(r.URL.Path, "/toolbox/")
	id, path, _ := strings.Cut(rest, "/")
	op, session, cmd := toolboxRoute(r.Method, path)
	if op == "" {
		http.NotFound(w, r)
		return
	}
	auth := r.Header.Get("Authorization")
	if !strings.HasPrefix(auth, "Bearer ") {
		s.fault(op)
		toolboxError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", "unauthorized: missing authentication: provide a preview access token (via header, query parameter, or cookie) or use an API key or JWT")
		return
	}
	s.mu.Lock()
	key, gone := s.apiKey, s.gone
	sb := s.lookupLocked(id)
	c := toolboxCall{op: op, id: id, session: session, cmd: cmd, query: r.URL.Query(),
		modern: !versionLess(s.opts.DaemonVersion, "0.167.0"), sdkVersion: r.Header.Get("X-Daytona-SDK-Version")}
	var state string
	if sb != nil {
		c.dir, state, c.env = sb.dir, sb.State, cloneMap(sb.Env)
		sb.LastActivityAt = now()
	}
	s.mu.Unlock()
	switch {
	case auth != "Bearer "+key, sb == nil && gone == http.StatusUnauthorized:
		s.fault(op)
		toolboxError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", "unauthorized: authentication failed: Bearer token is invalid")
		return
	case sb == nil && gone == http.StatusBadRequest:
		s.fault(op)
		toolboxError(w, r, http.StatusBadRequest, "BAD_REQUEST", "bad request: failed to get runner info: Sandbox with ID "+id+" not found")
		return
	case sb == nil:
		s.fault(op)
		toolboxError(w, r, http.StatusNotFound, "NOT_FOUND", "not found: sandbox container not found: Error response from daemon: No such container: "+id)
		return
	}
	f := s.fault(op)
	if f != nil && !f.After {
		injected(w, r, op, f, true)
		return
	}
	if state != stateStarted {
		toolboxError(w, r, http.StatusBadRequest, "BAD_REQUEST", "bad request: no IP address found. Is the Sandbox started?")
		return
	}
	limit := int64(64 << 20)
	if op == "files-upload" || op == "files-bulk-upload" {
		limit = maxUpload
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		toolboxError(w, r, http.StatusBadRequest, "INVALID_REQUEST_BODY", "bad request: "+err.Error())
		return
	}
	if int64(len(body)) > limit {
		toolboxError(w, r, http.StatusRequestEntityTooLarge, "BAD_REQUEST", fmt.Sprintf("daytonafake: a request body over %d bytes", limit))
		return
	}
	c.body = body
	s.idleCut(w, func(w http.ResponseWriter) {
		if f != nil {
			w = &discard{ResponseWriter: w}
			defer injected(w.(*discard).ResponseWriter, r, op, f, true)
		}
		switch {
		case op == "execute" || op == "code-run":
			s.process(w, r, c)
		case strings.HasPrefix(op, "session-"):
			s.serveSession(w, r, c)
		default:
			s.serveFiles(w, r, c)
		}
	})
}

// idleCut answers a bare 502 with an empty body when handle has not answered within
// IdleTimeout, as the load balancer in front of the proxy does; handle goes on regardless (the
// daemon does not stop a command whose caller left) and its answer is dropped.
func (s *Server) idleCut(w http.ResponseWriter, handle func(http.ResponseWriter)) {
	if s.opts.IdleTimeout < 0 {
		handle(w)
		return
	}
	rec := &recorder{header: http.Header{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		handle(rec)
	}()
	t := time.NewTimer(s.opts.IdleTimeout)
	defer t.Stop()
	select {
	case <-done:
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(cmp.Or(rec.status, http.StatusOK))
		w.Write(rec.body.Bytes())
	case <-t.C:
		s.mu.Lock()
		s.counts["idle-cut"]++
		s.mu.Unlock()
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusBadGateway)
	}
}

// recorder holds an answer until idleCut passes it on.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}
func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

// process serves /process/execute and /process/code-run.
func (s *Server) process(w http.ResponseWriter, r *http.Request, c toolboxCall) {
	op, id, dir, body, modern := c.op, c.id, c.dir, c.body, c.modern
	if op == "code-run" && !modern {
		http.NotFound(w, r) // the route does not exist on older daemons
		return
	}
	run := runSpec{id: id, dir: dir, env: c.env}
	switch op {
	case "execute":
		var req struct {
			Command string            `json:"command"`
			Cwd     string            `json:"cwd"`
			Envs    map[string]string `json:"envs"`
			Timeout uint32            `json:"timeout"`
		}
		if err := json.Unmarshal(body, &req); err != nil {
			toolboxError(w, r, http.StatusBadRequest, "INVALID_REQUEST_BODY", "bad request: invalid request body: "+err.Error())
			return
		}
		if strings.TrimSpace(req.Command) == "" {
			toolboxError(w, r, http.StatusBadRequest, "BAD_REQUEST", "bad request: command cannot be empty or whitespace-only")
			return
		}
		run.command, run.timeout = req.Command, req.Timeout
		if modern {
			run.envs = req.Envs
		}
		switch {
		case req.Cwd == "":
		case filepath.IsAbs(req.Cwd):
			run.dir = req.Cwd
		default:
			run.dir = filepath.Join(dir, req.Cwd)
		}
	case "code-run":
		var req struct {
			Code     string            `json:"code"`
			Language string            `json:"language"`
			Argv     []string          `json:"argv"`
			Envs     map[string]string `json:"envs"`
			Timeout  uint32            `json:"timeout"`
		}
		if err := json.Unmarshal(body, &req); err != nil {
			toolboxError(w, r, http.StatusBadRequest, "INVALID_REQUEST_BODY", "bad request: invalid request body: "+err.Error())
			return
		}
		args := strings.Join(req.Argv, " ")
		switch req.Language {
		case "python":
			run.command = "printf '%s' '" + b64(req.Code) + "' | base64 -d | python3 -u - " + args
		case "javascript":
			// Arguments follow "--"; the prelude drops that element so that process.argv[2] is
			// the first user arg.
			run.command = "printf '%s' '" + b64("process.argv.splice(2, 1);\n"+req.Code) + "' | base64 -d | node - -- " + args
		case "typescript":
			f, err := os.CreateTemp(dir, "code-*.ts")
			if err != nil {
				toolboxError(w, r, http.StatusInternalServerError, "INTERNAL_SERVER_ERROR", "internal server error: "+err.Error())
				return
			}
			f.WriteString(req.Code)
			f.Close()
			defer os.Remove(f.Name())
			run.command = "npx ts-node " + f.Name() + " " + args
		default:
			toolboxError(w, r, http.StatusBadRequest, "BAD_REQUEST", "bad request: unsupported language: "+req.Language)
			return
		}
		run.envs, run.timeout = req.Envs, req.Timeout
	}
	for k := range run.envs {
		if !envNameRE.MatchString(k) {
			toolboxError(w, r, http.StatusBadRequest, "BAD_REQUEST", "bad request: invalid environment variable name: "+k)
			return
		}
	}
	exit, out, timedOut := s.execute(run)
	if timedOut {
		toolboxError(w, r, http.StatusRequestTimeout, "REQUEST_TIMEOUT", "request timeout: command execution timeout")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"exitCode": exit, "result": out})
}

// runSpec is one command of a sandbox.
type runSpec struct {
	id, dir, command string
	env, envs        map[string]string
	timeout          uint32
}

// execute runs a command as the daemon does: the shell in a new process group, the command on
// its stdin, stdout and stderr into one buffer; at the timeout the group is killed.
func (s *Server) execute(run runSpec) (exit int, output string, timedOut bool) {
	s.running.Add(1)
	s.inflight.Add(1)
	defer s.running.Done()
	defer s.inflight.Add(-1)
	cmd := exec.Command(s.shell)
	cmd.Dir = run.dir
	cmd.Stdin = strings.NewReader(run.command)
	environ := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + run.dir, "LANG=C.UTF-8", "USER=daytona", markerVar + "=" + run.id}
	for _, m := range []map[string]string{run.env, run.envs} {
		for k, v := range m {
			environ = append(environ, k+"="+v)
		}
	}
	cmd.Env = environ
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf // one pipe: the streams stay interleaved
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return -1, err.Error(), false
	}
	var mu sync.Mutex
	fired := false
	if run.timeout > 0 {
		t := time.AfterFunc(time.Duration(run.timeout)*time.Second, func() {
			mu.Lock()
			fired = true
			mu.Unlock()
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		})
		defer t.Stop()
	}
	err := cmd.Wait()
	mu.Lock()
	defer mu.Unlock()
	if fired {
		return 0, "", true
	}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), buf.String(), false // -1 when a signal killed the shell
		}
		return -1, buf.String() + err.Error(), false
	}
	return 0, buf.String(), false
}

// killSandboxProcesses kills every process whose environment names the sandbox: what its runs
// left behind, in whatever process group or session they put themselves.
func killSandboxProcesses(id string) { signalMarked(markerVar+"="+id, syscall.SIGKILL) }

// signalSandbox sends sig to every process of the sandbox (SIGSTOP and SIGCONT pause and resume
// it).
func signalSandbox(id string, sig syscall.Signal) { signalMarked(markerVar+"="+id, sig) }

// signalMarked sends sig to every process whose environment holds marker (NAME=value). A kill
// goes round again, as a process may fork while the others die.
func signalMarked(marker string, sig syscall.Signal) {
	if runtime.GOOS != "linux" {
		return
	}
	m := []byte(marker + "\x00")
	for round := 0; round < 3; round++ {
		entries, err := os.ReadDir("/proc")
		if err != nil {
			return
		}
		hit := 0
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			environ, err := os.ReadFile("/proc/" + e.Name() + "/environ")
			if err != nil {
				continue
			}
			if bytes.HasPrefix(environ, m) || bytes.Contains(environ, append([]byte{0}, m...)) {
				syscall.Kill(pid, sig)
				hit++
			}
		}
		if hit == 0 || sig != syscall.SIGKILL {
			return
		}
	}
}
