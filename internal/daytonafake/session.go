package daytonafake

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
)

// Sessions, as the daemon's /process/session serves them: a session is a shell whose commands
// run one at a time, in the order they were sent, each with its stdout and stderr written line
// by line, in the order the lines come, to the command's log, every stdout line prefixed by the
// bytes 01 01 01 and every stderr line by 02 02 02 (a last line without a newline gets one).
// An exec with runAsync answers 202 {cmdId} at once; without, it answers when the command ends
// (and is cut by the idle timeout like any blocking call). GET .../command/{cmdId} has the
// exitCode once the command ended and its log is complete. The logs come as JSON {output,
// stdout, stderr} (output the raw log) for an X-Daytona-SDK-Version of 0.167 or later on a
// daemon that splits them, as the raw log in text for 0.27 to 0.167, and with the markers
// stripped for no version. Deleting a session kills what its commands started; a stop, an error
// or a delete of the sandbox ends its sessions (the daemon restarts with the sandbox).
//
// The fake does not keep one shell per session: each command runs in a shell of its own that
// takes over the working directory and the exported variables the previous command of the
// session left. A command that exits its shell ends only itself here (the daemon's session
// shell would end with it), and ?follow=true on the logs is not served.

// sessionVar is set in the environment of every process a session's commands start.
const sessionVar = "DAYTONAFAKE_SESSION"

// The daemon's line markers.
var (
	stdoutMark = []byte{1, 1, 1}
	stderrMark = []byte{2, 2, 2}
)

// session is one toolbox session of a sandbox.
type session struct {
	id, sandbox string
	// dir holds what a command hands on to the next (cwd, env) and the commands' scripts.
	dir string
	// run is held by the command running: one at a time, as in the daemon's single shell.
	run sync.Mutex

	mu       sync.Mutex
	commands map[string]*command
	order    []string
	ended    bool
}

// command is one command of a session.
type command struct {
	id, command string
	done        chan struct{} // closed when it ended (or its session did)

	mu   sync.Mutex
	log  bytes.Buffer
	exit *int
}

func (c *command) dto() map[string]any {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[string]any{"id": c.id, "command": c.command}
	if c.exit != nil {
		m["exitCode"] = *c.exit
	}
	return m
}

func (c *command) logBytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.log.Bytes())
}

func (ss *session) dto() map[string]any {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	cmds := []map[string]any{}
	for _, id := range ss.order {
		cmds = append(cmds, ss.commands[id].dto())
	}
	return map[string]any{"sessionId": ss.id, "commands": cmds}
}

// sessionDir is where a sandbox's sessions keep their state, outside its working directory.
func (s *Server) sessionDir(sandbox string) string {
	return filepath.Join(s.root, ".sessions", sandbox)
}

// endSessionsLocked ends a sandbox's sessions (their processes die with the sandbox's, which
// the caller kills). s.mu is held.
func (s *Server) endSessionsLocked(sb *sandbox) {
	for _, ss := range sb.sessions {
		ss.mu.Lock()
		ss.ended = true
		ss.mu.Unlock()
	}
	sb.sessions = nil
	dir := s.sessionDir(sb.ID)
	go os.RemoveAll(dir)
}

// splitLogs says how logs are answered to this caller: demultiplexed as JSON, or as text, raw
// or with the markers stripped.
func splitLogs(c toolboxCall) (split, combined bool) {
	v := c.sdkVersion
	combined = v == "" || versionLess(v, "0.27.0")
	split = !combined && c.modern && !versionLess(v, "0.167.0")
	return split, combined
}

func demux(log []byte) (stdout, stderr []byte) {
	for _, line := range bytes.SplitAfter(log, []byte("\n")) {
		switch {
		case bytes.HasPrefix(line, stdoutMark):
			stdout = append(stdout, line[len(stdoutMark):]...)
		case bytes.HasPrefix(line, stderrMark):
			stderr = append(stderr, line[len(stderrMark):]...)
		}
	}
	return stdout, stderr
}

func stripMarks(log []byte) []byte {
	return bytes.ReplaceAll(bytes.ReplaceAll(log, stdoutMark, nil), stderrMark, nil)
}

// serveSession serves the /process/session routes.
func (s *Server) serveSession(w http.ResponseWriter, r *http.Request, c toolboxCall) {
	notFound := func(what string) {
		toolboxError(w, r, http.StatusNotFound, "NOT_FOUND", "not found: "+what+" not found")
	}
	s.mu.Lock()
	sb := s.lookupLocked(c.id)
	if sb == nil {
		s.mu.Unlock()
		notFound("sandbox")
		return
	}
	switch c.op {
	case "session-create":
		var req struct {
			SessionID string `json:"sessionId"`
		}
		if err := json.Unmarshal(c.body, &req); err != nil || req.SessionID == "" {
			s.mu.Unlock()
			toolboxError(w, r, http.StatusBadRequest, "INVALID_REQUEST_BODY", "invalid request body: sessionId is required")
			return
		}
		if req.SessionID == "entrypoint" {
			s.mu.Unlock()
			toolboxError(w, r, http.StatusBadRequest, "BAD_REQUEST", "bad request: provided session ID is reserved and cannot be created/overridden")
			return
		}
		if _, ok := sb.sessions[req.SessionID]; ok {
			s.mu.Unlock()
			toolboxError(w, r, http.StatusConflict, "CONFLICT", "conflict: session already exists")
			return
		}
		ss := &session{id: req.SessionID, sandbox: c.id, dir: filepath.Join(s.sessionDir(c.id), req.SessionID), commands: map[string]*command{}}
		if sb.sessions == nil {
			sb.sessions = map[string]*session{}
		}
		sb.sessions[ss.id] = ss
		s.mu.Unlock()
		if err := os.MkdirAll(ss.dir, 0o700); err != nil {
			toolboxError(w, r, http.StatusInternalServerError, "INTERNAL_SERVER_ERROR", "internal server error: "+err.Error())
			return
		}
		w.WriteHeader(http.StatusCreated)
		return
	case "session-list":
		var all []*session
		for _, ss := range sb.sessions {
			all = append(all, ss)
		}
		s.mu.Unlock()
		sort.Slice(all, func(i, j int) bool { return all[i].id < all[j].id })
		out := []map[string]any{}
		for _, ss := range all {
			out = append(out, ss.dto())
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	ss := sb.sessions[c.session]
	if ss == nil {
		s.mu.Unlock()
		notFound("session")
		return
	}
	switch c.op {
	case "session-delete":
		delete(sb.sessions, ss.id)
		s.mu.Unlock()
		ss.mu.Lock()
		ss.ended = true
		ss.mu.Unlock()
		signalMarked(sessionVar+"="+c.id+"/"+ss.id, syscall.SIGKILL)
		os.RemoveAll(ss.dir)
		w.WriteHeader(http.StatusNoContent)
		return
	case "session-get":
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, ss.dto())
		return
	case "session-exec":
		s.mu.Unlock()
		s.sessionExec(w, r, c, ss)
		return
	}
	s.mu.Unlock()
	ss.mu.Lock()
	cmd := ss.commands[c.cmd]
	ss.mu.Unlock()
	if cmd == nil {
		notFound("command")
		return
	}
	switch c.op {
	case "session-command":
		writeJSON(w, http.StatusOK, cmd.dto())
	case "session-logs":
		if c.query.Get("follow") == "true" {
			toolboxError(w, r, http.StatusNotImplemented, "NOT_IMPLEMENTED", "daytonafake: logs with follow=true are not served")
			return
		}
		log := cmd.logBytes()
		split, combined := splitLogs(c)
		switch {
		case split:
			stdout, stderr := demux(log)
			writeJSON(w, http.StatusOK, map[string]string{"output": string(log), "stdout": string(stdout), "stderr": string(stderr)})
		case combined:
			log = stripMarks(log)
			fallthrough
		default:
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusOK)
			w.Write(log)
		}
	}
}

// sessionExec serves POST /process/session/{id}/exec.
func (s *Server) sessionExec(w http.ResponseWriter, r *http.Request, c toolboxCall, ss *session) {
	if ss.id == "entrypoint" {
		toolboxError(w, r, http.StatusBadRequest, "BAD_REQUEST", "bad request: can't execute command in entrypoint session")
		return
	}
	var req struct {
		Command  string `json:"command"`
		RunAsync bool   `json:"runAsync"`
		Async    bool   `json:"async"`
	}
	if err := json.Unmarshal(c.body, &req); err != nil {
		toolboxError(w, r, http.StatusBadRequest, "BAD_REQUEST", "bad request: invalid request body: "+err.Error())
		return
	}
	if len(bytes.TrimSpace([]byte(req.Command))) == 0 {
		toolboxError(w, r, http.StatusBadRequest, "BAD_REQUEST", "bad request: command cannot be empty")
		return
	}
	cmd := &command{id: newUUID(), command: req.Command, done: make(chan struct{})}
	ss.mu.Lock()
	if ss.ended {
		ss.mu.Unlock()
		toolboxError(w, r, http.StatusNotFound, "NOT_FOUND", "not found: session not found")
		return
	}
	ss.commands[cmd.id] = cmd
	ss.order = append(ss.order, cmd.id)
	ss.mu.Unlock()
	s.running.Add(1)
	s.inflight.Add(1)
	go s.runSessionCommand(ss, cmd, c)
	if req.RunAsync || req.Async {
		writeJSON(w, http.StatusAccepted, map[string]string{"cmdId": cmd.id})
		return
	}
	<-cmd.done // no server-side timeout, as the daemon's
	out := map[string]any{"cmdId": cmd.id}
	if d := cmd.dto(); d["exitCode"] != nil {
		out["exitCode"] = d["exitCode"]
	}
	log := cmd.logBytes()
	split, combined := splitLogs(c)
	if combined {
		out["output"] = string(stripMarks(log))
	} else {
		out["output"] = string(log)
	}
	if split {
		stdout, stderr := demux(log)
		out["stdout"], out["stderr"] = string(stdout), string(stderr)
	}
	writeJSON(w, http.StatusOK, out)
}

// runSessionCommand runs one command of a session, after those sent before it.
func (s *Server) runSessionCommand(ss *session, cmd *command, c toolboxCall) {
	defer s.running.Done()
	defer s.inflight.Add(-1)
	defer close(cmd.done)
	ss.run.Lock()
	defer ss.run.Unlock()
	ss.mu.Lock()
	ended := ss.ended
	ss.mu.Unlock()
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if ended || closed {
		return
	}
	script := filepath.Join(ss.dir, cmd.id+".sh")
	wrapper := filepath.Join(ss.dir, cmd.id+".wrapper")
	cwd, env := filepath.Join(ss.dir, "cwd"), filepath.Join(ss.dir, "env")
	// The previous command's working directory and exported variables, the command with stdin
	// at its end, then what it leaves for the next one.
	w := fmt.Sprintf(`if [ -f %[1]s ]; then cd -- "$(cat %[1]s)" 2>/dev/null; fi
if [ -f %[2]s ]; then . %[2]s >/dev/null 2>&1; fi
{ . %[3]s; } </dev/null
__daytonafake_rc=$?
export -p > %[2]s 2>/dev/null
pwd > %[1]s 2>/dev/null
exit $__daytonafake_rc
`, shQuote(cwd), shQuote(env), shQuote(script))
	if os.WriteFile(script, []byte(cmd.command), 0o600) != nil || os.WriteFile(wrapper, []byte(w), 0o600) != nil {
		return // the session was deleted meanwhile
	}
	sh := exec.Command(s.shell, wrapper)
	sh.Dir = c.dir
	environ := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + c.dir, "LANG=C.UTF-8", "USER=daytona",
		markerVar + "=" + c.id, sessionVar + "=" + c.id + "/" + ss.id}
	for k, v := range c.env {
		environ = append(environ, k+"="+v)
	}
	sh.Env = environ
	sh.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err1 := sh.StdoutPipe()
	stderr, err2 := sh.StderrPipe()
	if err1 != nil || err2 != nil || sh.Start() != nil {
		code := -1
		cmd.mu.Lock()
		cmd.exit = &code
		cmd.mu.Unlock()
		return
	}
	var wg sync.WaitGroup
	label := func(rd io.Reader, mark []byte) {
		defer wg.Done()
		br := bufio.NewReader(rd)
		for {
			line, err := br.ReadBytes('\n')
			if len(line) > 0 {
				if line[len(line)-1] != '\n' {
					line = append(line, '\n')
				}
				cmd.mu.Lock()
				cmd.log.Write(mark)
				cmd.log.Write(line)
				cmd.mu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}
	wg.Add(2)
	go label(stdout, stdoutMark)
	go label(stderr, stderrMark)
	wg.Wait() // the whole log before the exit code, as the daemon writes it
	err := sh.Wait()
	ss.mu.Lock()
	ended = ss.ended
	ss.mu.Unlock()
	var ee *exec.ExitError
	code := 0
	switch {
	case ended:
		return // its session was deleted: the command is gone with it
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		code = ee.ExitCode()
	default:
		return // its shell was killed (the sandbox stopped): it never ends
	}
	cmd.mu.Lock()
	cmd.exit = &code
	cmd.mu.Unlock()
}

// shQuote single-quotes s for sh.
func shQuote(s string) string {
	return "'" + string(bytes.ReplaceAll([]byte(s), []byte("'"), []byte(`'\''`))) + "'"
}
