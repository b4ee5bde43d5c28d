package daytonafake_test

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/daytonafake"
	"github.com/codefleet/codefleet/internal/testutil"
)

// These tests pin what the fake reproduces of the service's behaviour around the calls (issue
// 13): the sessions API, the idle cut of blocking toolbox calls, the proxy's 401 for a sandbox
// it does not know, the service's waits, its rate limiter, builds, and the pause and archive
// states.

// eventually waits for the sandbox's state.
func (s *tserver) eventually(id, state string) map[string]any {
	s.t.Helper()
	var last map[string]any
	testutil.Eventually(s.t, 10*time.Second, func() error {
		a := s.api("GET", "/sandbox/"+id, nil)
		last = a.json()
		if a.status != 200 || last["state"] != state {
			return fmt.Errorf("sandbox %s: %d %s, want state %s", id, a.status, a.body, state)
		}
		return nil
	})
	return last
}

func (s *tserver) toolboxGet(sb map[string]any, method, path string, sdk string) answer {
	s.t.Helper()
	req, _ := http.NewRequest(method, sb["toolboxProxyUrl"].(string)+"/"+sb["id"].(string)+path, nil)
	req.Header.Set("Authorization", "Bearer dtn_fake")
	if sdk != "" {
		req.Header.Set("X-Daytona-SDK-Version", sdk)
	}
	return do(s.t, req)
}

func do(t *testing.T, req *http.Request) answer {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return answer{resp.StatusCode, resp.Header, []byte(b.String())}
}

// TestSessions: a session's commands run one after another, async or not, with the working
// directory and exported variables handed on; the logs carry the line markers, split for a
// recent SDK, raw for an older one, stripped without a version; deleting the session kills
// what its commands started.
func TestSessions(t *testing.T) {
	s := start(t, daytonafake.Options{Warm: true})
	sb := s.create(map[string]any{"env": map[string]string{"SB": "wide"}})
	defer s.api("DELETE", "/sandbox/"+sb["id"].(string), nil)

	if a := s.toolbox(sb, "/process/session", map[string]any{"sessionId": "s1"}); a.status != 201 || len(a.body) != 0 {
		t.Fatalf("create session: %d %q", a.status, a.body)
	}
	if a := s.toolbox(sb, "/process/session", map[string]any{"sessionId": "s1"}); a.status != 409 {
		t.Errorf("create it again: %d %s", a.status, a.body)
	}
	if a := s.toolbox(sb, "/process/session", map[string]any{"sessionId": "entrypoint"}); a.status != 400 {
		t.Errorf("create the entrypoint session: %d %s", a.status, a.body)
	}
	exec := func(body map[string]any) answer { return s.toolbox(sb, "/process/session/s1/exec", body) }
	if a := exec(map[string]any{"command": "mkdir sub && cd sub && export RUN=one"}); a.status != 200 || a.json()["exitCode"] != 0.0 {
		t.Fatalf("sync exec: %d %s", a.status, a.body)
	}
	a := exec(map[string]any{"command": "sleep 0.2; echo out $SB $RUN; sleep 0.1; echo err >&2; sleep 0.1; printf 'no newline'; exit 3", "runAsync": true})
	cmdID, _ := a.json()["cmdId"].(string)
	if a.status != 202 || cmdID == "" || a.json()["exitCode"] != nil {
		t.Fatalf("async exec: %d %s", a.status, a.body)
	}
	if m := s.toolboxGet(sb, "GET", "/process/session/s1/command/"+cmdID, "").json(); m["exitCode"] != nil || m["id"] != cmdID {
		t.Errorf("a running command: %v", m)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if m := s.toolboxGet(sb, "GET", "/process/session/s1/command/"+cmdID, "").json(); m["exitCode"] != 3.0 {
			return fmt.Errorf("command %v", m)
		}
		return nil
	})
	a = s.toolboxGet(sb, "GET", "/process/session/s1/command/"+cmdID+"/logs", "0.190.0")
	m := a.json()
	if a.status != 200 || m["stdout"] != "out wide one\nno newline\n" || m["stderr"] != "err\n" ||
		m["output"] != "\x01\x01\x01out wide one\n\x02\x02\x02err\n\x01\x01\x01no newline\n" {
		t.Errorf("logs for a recent SDK: %d %q", a.status, a.body)
	}
	if a := s.toolboxGet(sb, "GET", "/process/session/s1/command/"+cmdID+"/logs", "0.100.0"); !strings.HasPrefix(string(a.body), "\x01\x01\x01out") {
		t.Errorf("logs for an older SDK: %q", a.body)
	}
	if a := s.toolboxGet(sb, "GET", "/process/session/s1/command/"+cmdID+"/logs", ""); string(a.body) != "out wide one\nerr\nno newline\n" {
		t.Errorf("logs without a version: %q", a.body)
	}
	if a := s.toolboxGet(sb, "GET", "/process/session/s1", ""); a.status != 200 || !strings.Contains(string(a.body), cmdID) {
		t.Errorf("get session: %d %s", a.status, a.body)
	}
	for _, path := range []string{"/process/session/nope/command/" + cmdID, "/process/session/s1/command/nope", "/process/session/nope"} {
		if a := s.toolboxGet(sb, "GET", path, ""); a.status != 404 || a.json()["code"] != "NOT_FOUND" {
			t.Errorf("%s: %d %s", path, a.status, a.body)
		}
	}
	// Commands wait for the one before; deleting the session kills it and what it started.
	exec(map[string]any{"command": "setsid sleep 60 & sleep 60", "runAsync": true})
	queued := exec(map[string]any{"command": "echo never", "runAsync": true}).json()["cmdId"].(string)
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := s.Running(); n != 2 {
			return fmt.Errorf("%d commands in progress, want the sleeping one and the one behind it", n)
		}
		return nil
	})
	if m := s.toolboxGet(sb, "GET", "/process/session/s1/command/"+queued, "").json(); m["exitCode"] != nil {
		t.Errorf("the queued command ended: %v", m)
	}
	if a := s.toolboxGet(sb, "DELETE", "/process/session/s1", ""); a.status != 204 {
		t.Fatalf("delete session: %d %s", a.status, a.body)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := s.Running(); n != 0 {
			return fmt.Errorf("%d commands still in progress after the session was deleted", n)
		}
		return nil
	})
	if a := exec(map[string]any{"command": "true"}); a.status != 404 {
		t.Errorf("exec in a deleted session: %d %s", a.status, a.body)
	}
}

// TestIdleCut: a blocking toolbox call that has not answered within the idle timeout gets a bare
// 502 with an empty body, while its command goes on; a short one is not cut, nor are a
// session's async exec and polls.
func TestIdleCut(t *testing.T) {
	s := start(t, daytonafake.Options{Warm: true, IdleTimeout: 300 * time.Millisecond})
	sb := s.create(nil)
	defer s.api("DELETE", "/sandbox/"+sb["id"].(string), nil)
	start := time.Now()
	a := s.toolbox(sb, "/process/execute", map[string]any{"command": "sleep 1; echo done > cut.txt"})
	if a.status != 502 || len(a.body) != 0 || a.header.Get("Content-Type") != "" {
		t.Fatalf("a call idle past the cut: %d %v %q", a.status, a.header, a.body)
	}
	if took := time.Since(start); took > 900*time.Millisecond {
		t.Errorf("the cut came after %s", took)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		m := s.toolbox(sb, "/process/execute", map[string]any{"command": "cat cut.txt"}).json()
		if m["result"] != "done\n" {
			return fmt.Errorf("the cut command did not go on: %v", m)
		}
		return nil
	})
	if s.Count("idle-cut") != 1 {
		t.Errorf("%d cuts", s.Count("idle-cut"))
	}
	s.toolbox(sb, "/process/session", map[string]any{"sessionId": "long"})
	a = s.toolbox(sb, "/process/session/long/exec", map[string]any{"command": "sleep 1; echo ok", "runAsync": true})
	if a.status != 202 {
		t.Fatalf("async exec: %d %s", a.status, a.body)
	}
	if a := s.toolbox(sb, "/process/session/long/exec", map[string]any{"command": "sleep 1"}); a.status != 502 || len(a.body) != 0 {
		t.Errorf("a sync session exec past the cut: %d %q", a.status, a.body)
	}
}

// TestToolboxUnknownSandbox: the proxy answers 401 "Bearer token is invalid" for a sandbox it
// does not know, as for a wrong key (the management API says 404); with the token in its cache,
// 400 (no runner) or 404 (no container).
func TestToolboxUnknownSandbox(t *testing.T) {
	s := start(t, daytonafake.Options{Warm: true})
	sb := s.create(nil)
	id := sb["id"].(string)
	s.api("DELETE", "/sandbox/"+id, nil)
	testutil.Eventually(t, 10*time.Second, func() error {
		if a := s.api("GET", "/sandbox/"+id, nil); a.status != 404 {
			return fmt.Errorf("get after delete: %d", a.status)
		}
		return nil
	})
	for _, tc := range []struct {
		gone   int
		key    string
		status int
		msg    string
	}{
		{http.StatusUnauthorized, "dtn_fake", 401, "unauthorized: authentication failed: Bearer token is invalid"},
		{http.StatusBadRequest, "dtn_fake", 400, "bad request: failed to get runner info"},
		{http.StatusNotFound, "dtn_fake", 404, "not found: sandbox container not found"},
		{http.StatusNotFound, "dtn_wrong", 401, "unauthorized: authentication failed: Bearer token is invalid"},
	} {
		s.AnswerGone(tc.gone)
		a := s.call("POST", sb["toolboxProxyUrl"].(string)+"/"+id+"/process/execute", map[string]any{"command": "true"}, tc.key)
		if msg, _ := a.json()["message"].(string); a.status != tc.status || !strings.HasPrefix(msg, tc.msg) {
			t.Errorf("gone %d, key %s: %d %s, want %d %q", tc.gone, tc.key, a.status, a.body, tc.status, tc.msg)
		}
	}
	// A revoked key: the API and the toolbox refuse it.
	live := s.create(nil)
	s.SetAPIKey("dtn_rotated")
	if a := s.api("GET", "/sandbox/"+live["id"].(string), nil); a.status != 401 {
		t.Errorf("the API with a revoked key: %d", a.status)
	}
	if a := s.toolbox(live, "/process/execute", map[string]any{"command": "true"}); a.status != 401 {
		t.Errorf("the toolbox with a revoked key: %d", a.status)
	}
	s.call("DELETE", "/sandbox/"+live["id"].(string), nil, "dtn_rotated")
}

// TestStartWait: POST /start holds its answer until the sandbox is started (up to StartWait),
// and answers it started; a start slower than that gets the sandbox as it is then.
func TestStartWait(t *testing.T) {
	s := start(t, daytonafake.Options{Warm: true, StartWait: 2 * time.Second})
	sb := s.create(nil)
	id := sb["id"].(string)
	defer s.api("DELETE", "/sandbox/"+id, nil)
	for _, tc := range []struct {
		slow       time.Duration
		state      string
		minT, maxT time.Duration
	}{
		{500 * time.Millisecond, "started", 500 * time.Millisecond, 1900 * time.Millisecond},
		{4 * time.Second, "starting", 2 * time.Second, 3900 * time.Millisecond},
	} {
		if err := s.Stop(id); err != nil {
			t.Fatal(err)
		}
		s.eventually(id, "stopped")
		s.SlowNextStart(tc.slow)
		start := time.Now()
		a := s.api("POST", "/sandbox/"+id+"/start", nil)
		took := time.Since(start)
		if a.status != 200 || a.json()["state"] != tc.state || took < tc.minT || took > tc.maxT {
			t.Errorf("start taking %s: %d %s after %s, want %s", tc.slow, a.status, a.body, took, tc.state)
		}
		s.eventually(id, "started")
	}
}

// TestRateLimiter: past a bucket's limit in its window, 429 with Retry-After-<bucket> (the
// seconds left in the window, up to a minute) and the X-RateLimit headers; other buckets go on.
func TestRateLimiter(t *testing.T) {
	s := start(t, daytonafake.Options{Warm: true, RateLimits: map[string]int{"sandbox-create": 1, "authenticated": 100}})
	sb := s.create(nil)
	defer s.api("DELETE", "/sandbox/"+sb["id"].(string), nil)
	a := s.api("POST", "/sandbox", nil)
	retry, err := strconv.Atoi(a.header.Get("Retry-After-sandbox-create"))
	if a.status != 429 || err != nil || retry < 59 || retry > 60 || a.header.Get("X-RateLimit-Remaining-sandbox-create") != "0" {
		t.Fatalf("second create in the window: %d %v %s", a.status, a.header, a.body)
	}
	if a := s.api("GET", "/sandbox/"+sb["id"].(string), nil); a.status != 200 || a.header.Get("X-RateLimit-Limit-authenticated") != "100" {
		t.Errorf("a get meanwhile: %d %v", a.status, a.header)
	}
}

// TestBuilds: an image build answers pending_build at once and takes BuildTime (or the next slow
// build's time) in building_snapshot; a later sandbox of the same image skips it.
func TestBuilds(t *testing.T) {
	s := start(t, daytonafake.Options{BuildTime: 50 * time.Millisecond})
	s.SlowNextBuild(time.Second)
	start := time.Now()
	sb := s.create(map[string]any{"buildInfo": map[string]any{"dockerfileContent": "FROM python:3.12"}})
	if sb["state"] != "pending_build" || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("build answered %v after %s", sb["state"], time.Since(start))
	}
	s.eventually(sb["id"].(string), "building_snapshot")
	s.eventually(sb["id"].(string), "started")
	if took := time.Since(start); took < time.Second {
		t.Errorf("a build of 1s took %s", took)
	}
	again := s.create(map[string]any{"buildInfo": map[string]any{"dockerfileContent": "FROM python:3.12"}})
	if again["state"] != "unknown" {
		t.Errorf("a second sandbox of the image: %v, want no build", again["state"])
	}
	s.eventually(again["id"].(string), "started")
	for _, x := range []map[string]any{sb, again} {
		s.api("DELETE", "/sandbox/"+x["id"].(string), nil)
	}
}

// TestPauseArchiveAndTransitions: a VM is paused (pausing, paused; its processes frozen, the
// toolbox refusing) and resumed by start; a container cannot be paused (422); an archived
// sandbox is restored by start, which does not wait for it; a transition holds the sandbox (409
// on lifecycle calls, 400 on the toolbox) and ends where it leads.
func TestPauseArchiveAndTransitions(t *testing.T) {
	s := start(t, daytonafake.Options{Warm: true, SandboxClass: "linux-vm"})
	sb := s.create(nil)
	id := sb["id"].(string)
	defer s.api("DELETE", "/sandbox/"+id, nil)
	s.toolbox(sb, "/process/execute", map[string]any{"command": "echo kept > f; (setsid sh -c 'while :; do date +%s%N >> ticks; sleep 0.05; done' >/dev/null 2>&1 &)"})
	if a := s.api("POST", "/sandbox/"+id+"/pause", nil); a.status != 200 || a.json()["state"] != "pausing" {
		t.Fatalf("pause: %d %s", a.status, a.body)
	}
	s.eventually(id, "paused")
	if a := s.toolbox(sb, "/process/execute", map[string]any{"command": "true"}); a.status != 400 || !strings.Contains(string(a.body), "Is the Sandbox started?") {
		t.Errorf("toolbox of a paused sandbox: %d %s", a.status, a.body)
	}
	ticks := func() int {
		return strings.Count(s.toolbox(sb, "/process/execute", map[string]any{"command": "cat ticks"}).json()["result"].(string), "\n")
	}
	a := s.api("POST", "/sandbox/"+id+"/start", nil)
	if a.status != 200 || a.json()["state"] != "started" {
		t.Fatalf("resume: %d %s", a.status, a.body)
	}
	n := ticks()
	testutil.Eventually(t, 10*time.Second, func() error {
		if ticks() <= n {
			return errors.New("the process frozen by the pause did not go on after the resume")
		}
		return nil
	})
	if m := s.toolbox(sb, "/process/execute", map[string]any{"command": "cat f"}).json(); m["result"] != "kept\n" {
		t.Errorf("after the resume: %v", m)
	}

	if err := s.Transition(id, "resizing", 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if a := s.api("POST", "/sandbox/"+id+"/start", nil); a.status != 409 {
		t.Errorf("start while resizing: %d %s", a.status, a.body)
	}
	if a := s.toolbox(sb, "/process/execute", map[string]any{"command": "true"}); a.status != 400 {
		t.Errorf("toolbox while resizing: %d %s", a.status, a.body)
	}
	s.eventually(id, "started")

	if err := s.Stop(id); err != nil {
		t.Fatal(err)
	}
	s.eventually(id, "stopped")
	if a := s.api("POST", "/sandbox/"+id+"/archive", nil); a.status != 200 || a.json()["state"] != "archiving" {
		t.Fatalf("archive: %d %s", a.status, a.body)
	}
	s.eventually(id, "archived")
	if a := s.api("POST", "/sandbox/"+id+"/start", nil); a.status != 200 || a.json()["state"] != "restoring" {
		t.Errorf("start an archived sandbox: %d %s", a.status, a.body)
	}
	s.eventually(id, "started")

	c := start(t, daytonafake.Options{Warm: true})
	box := c.create(nil)
	defer c.api("DELETE", "/sandbox/"+box["id"].(string), nil)
	if a := c.api("POST", "/sandbox/"+box["id"].(string)+"/pause", nil); a.status != 422 {
		t.Errorf("pause a container: %d %s", a.status, a.body)
	}
	if err := c.Pause(box["id"].(string)); err == nil {
		t.Error("Pause paused a container")
	}
}
