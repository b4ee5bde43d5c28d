package daytonafake

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
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

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// serveToolbox routes /toolbox/{sandboxId}/process/{execute,code-run}.
func (s *Server) serveToolbox(w http.ResponseWriter, r *http.Request) {
	rest := strings.TrimPrefix(r.URL.Path, "/toolbox/")
	id, path, _ := strings.Cut(rest, "/")
	op := ""
	switch {
	case path == "process/execute" && r.Method == http.MethodPost:
		op = "execute"
	case path == "process/code-run" && r.Method == http.MethodPost:
		op = "code-run"
	default:
		http.NotFound(w, r)
		return
	}
	auth := r.Header.Get("Authorization")
	if !strings.HasPrefix(auth, "Bearer ") {
		s.fault(op)
		toolboxError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", "unauthorized: missing authentication: no bearer token")
		return
	}
	if auth != "Bearer "+s.opts.APIKey {
		s.fault(op)
		toolboxError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", "unauthorized: authentication failed: invalid API key")
		return
	}
	f := s.fault(op)
	if f != nil && !f.After {
		injected(w, r, op, f, true)
		return
	}
	if f != nil {
		w = &discard{ResponseWriter: w}
		defer injected(w.(*discard).ResponseWriter, r, op, f, true)
	}

	s.mu.Lock()
	sb := s.lookupLocked(id)
	var dir, state string
	var env map[string]string
	if sb != nil {
		dir, state, env = sb.dir, sb.State, cloneMap(sb.Env)
		sb.LastActivityAt = now()
	}
	s.mu.Unlock()
	switch {
	case sb == nil:
		toolboxError(w, r, http.StatusNotFound, "NOT_FOUND", "not found: sandbox not found")
		return
	case state != stateStarted:
		toolboxError(w, r, http.StatusBadRequest, "BAD_REQUEST", "bad request: sandbox is "+state+". Is the Sandbox started?")
		return
	}
	modern := !versionLess(s.opts.DaemonVersion, "0.167.0")
	if op == "code-run" && !modern {
		http.NotFound(w, r) // the route does not exist on older daemons
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		toolboxError(w, r, http.StatusBadRequest, "INVALID_REQUEST_BODY", "bad request: "+err.Error())
		return
	}
	run := runSpec{id: id, dir: dir, env: env}
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
func killSandboxProcesses(id string) {
	if runtime.GOOS != "linux" {
		return
	}
	marker := []byte(markerVar + "=" + id + "\x00")
	for round := 0; round < 3; round++ { // a process may fork while the others die
		entries, err := os.ReadDir("/proc")
		if err != nil {
			return
		}
		killed := 0
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			environ, err := os.ReadFile("/proc/" + e.Name() + "/environ")
			if err != nil {
				continue
			}
			if bytes.HasPrefix(environ, marker) || bytes.Contains(environ, append([]byte{0}, marker...)) {
				syscall.Kill(pid, syscall.SIGKILL)
				killed++
			}
		}
		if killed == 0 {
			return
		}
	}
}
