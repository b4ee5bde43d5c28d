package daytonafake_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/daytonafake"
)

// These tests speak raw HTTP to the fake, to pin its behaviour to the API brief independently of
// the client in pkg/envs/daytona.

type tserver struct {
	*daytonafake.Server
	t *testing.T
}

func start(t *testing.T, opts daytonafake.Options) *tserver {
	t.Helper()
	if opts.StepDelay == 0 {
		opts.StepDelay = 10 * time.Millisecond
	}
	s, err := daytonafake.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &tserver{Server: s, t: t}
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) json() map[string]any {
	var m map[string]any
	json.Unmarshal(a.body, &m)
	return m
}

// call sends a request with the fake's API key (key "" sends none, "wrong" a wrong one).
func (s *tserver) call(method, u string, body any, key string) answer {
	s.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	if !strings.HasPrefix(u, "http") {
		u = s.URL + u
	}
	req, _ := http.NewRequest(method, u, rd)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, b}
}

func (s *tserver) api(method, path string, body any) answer {
	s.t.Helper()
	return s.call(method, path, body, "dtn_fake")
}

func (s *tserver) create(body map[string]any) map[string]any {
	s.t.Helper()
	a := s.api("POST", "/sandbox", body)
	if a.status != 200 {
		s.t.Fatalf("create: %d %s", a.status, a.body)
	}
	return a.json()
}

func (s *tserver) waitState(id, state string) map[string]any {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		a := s.api("GET", "/sandbox/"+id, nil)
		if a.status == 200 && a.json()["state"] == state {
			return a.json()
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("sandbox %s never %s: %d %s", id, state, a.status, a.body)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *tserver) toolbox(sb map[string]any, path string, body any) answer {
	s.t.Helper()
	return s.call("POST", sb["toolboxProxyUrl"].(string)+"/"+sb["id"].(string)+path, body, "dtn_fake")
}

func TestAuth(t *testing.T) {
	s := start(t, daytonafake.Options{})
	for _, key := range []string{"", "wrong"} {
		a := s.call("GET", "/sandbox", nil, key)
		m := a.json()
		if a.status != 401 || m["statusCode"] != 401.0 || m["error"] != "Unauthorized" || m["message"] != "Invalid credentials" || m["path"] == nil || m["timestamp"] == nil {
			t.Errorf("key %q: %d %s", key, a.status, a.body)
		}
	}
	sb := s.create(nil)
	s.waitState(sb["id"].(string), "started")
	a := s.call("POST", sb["toolboxProxyUrl"].(string)+"/"+sb["id"].(string)+"/process/execute", map[string]any{"command": "true"}, "")
	if a.status != 401 || a.json()["code"] != "UNAUTHORIZED" || !strings.HasPrefix(a.json()["message"].(string), "unauthorized: missing authentication") {
		t.Errorf("toolbox without a token: %d %s", a.status, a.body)
	}
	s.api("DELETE", "/sandbox/"+sb["id"].(string), nil)
}

// TestLifecycle: create answers the state before its wait with the service's defaults; the
// sandbox starts; delete is refused while a transition is pending, then goes through destroying
// to destroyed (404).
func TestLifecycle(t *testing.T) {
	s := start(t, daytonafake.Options{StepDelay: 50 * time.Millisecond})
	sb := s.create(map[string]any{"labels": map[string]string{"a": "1"}, "unknownField": true})
	id := sb["id"].(string)
	if sb["state"] != "unknown" || sb["name"] != id || sb["autoStopInterval"] != 15.0 || sb["autoArchiveInterval"] != 10080.0 ||
		sb["autoDeleteInterval"] != -1.0 || sb["user"] != "daytona" || sb["target"] != "us" || sb["snapshot"] != "daytona-small" ||
		!strings.HasSuffix(sb["toolboxProxyUrl"].(string), "/toolbox") {
		t.Errorf("created %v", sb)
	}
	if got := s.api("GET", "/sandbox/"+id, nil).json()["state"]; got != "started" {
		t.Errorf("after create (which waits): %v", got) // the wait is over when create answers
	}
	// A stop makes a transition pending: delete is refused meanwhile.
	s.api("POST", "/sandbox/"+id+"/stop", nil)
	if a := s.api("DELETE", "/sandbox/"+id, nil); a.status != 409 || a.json()["message"] != "Sandbox state change in progress" {
		t.Errorf("delete while stopping: %d %s", a.status, a.body)
	}
	s.waitState(id, "stopped")
	if a := s.api("POST", "/sandbox/"+id+"/start", nil); a.status != 200 {
		t.Errorf("start: %d %s", a.status, a.body)
	}
	s.waitState(id, "started")
	a := s.api("DELETE", "/sandbox/"+id, nil)
	if a.status != 200 || a.json()["state"] != "started" || a.json()["desiredState"] != "destroyed" || !strings.HasPrefix(a.json()["name"].(string), "DESTROYED_") {
		t.Errorf("delete: %d %s", a.status, a.body)
	}
	s.waitState(id, "destroying")
	deadline := time.Now().Add(10 * time.Second)
	for s.api("GET", "/sandbox/"+id, nil).status != 404 {
		if time.Now().After(deadline) {
			t.Fatal("never 404 after delete")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if a := s.api("DELETE", "/sandbox/"+id, nil); a.status != 404 {
		t.Errorf("delete a destroyed sandbox: %d", a.status)
	}
}

func TestCreateRules(t *testing.T) {
	s := start(t, daytonafake.Options{})
	for _, tc := range []struct {
		body map[string]any
		want string
	}{
		{map[string]any{"snapshot": "daytona-small", "buildInfo": map[string]any{"dockerfileContent": "FROM x"}}, "Cannot specify a snapshot when using a build info entry"},
		{map[string]any{"cpu": 2}, "Cannot specify Sandbox resources when using a snapshot"},
		{map[string]any{"snapshot": "nope"}, "Snapshot nope not found"},
		{map[string]any{"autoStopInterval": -1}, "autoStopInterval must not be less than 0"},
	} {
		if a := s.api("POST", "/sandbox", tc.body); a.status != 400 || !strings.Contains(a.json()["message"].(string), tc.want) {
			t.Errorf("%v: %d %s", tc.body, a.status, a.body)
		}
	}
	// A build answers at once, pending_build, with default resources.
	sb := s.create(map[string]any{"name": "built", "buildInfo": map[string]any{"dockerfileContent": "FROM python:3.12"}, "target": "eu"})
	if sb["state"] != "pending_build" || sb["cpu"] != 1.0 || sb["memory"] != 1.0 || sb["disk"] != 3.0 || sb["target"] != "eu" {
		t.Errorf("build %v", sb)
	}
	if a := s.api("POST", "/sandbox", map[string]any{"name": "built"}); a.status != 409 {
		t.Errorf("name clash: %d %s", a.status, a.body)
	}
	if a := s.api("GET", "/sandbox/built", nil); a.status != 200 || a.json()["id"] != sb["id"] {
		t.Errorf("get by name: %d %s", a.status, a.body)
	}
	// Delete is allowed during pending_build.
	if a := s.api("DELETE", "/sandbox/built", nil); a.status != 200 {
		t.Errorf("delete during the build: %d %s", a.status, a.body)
	}
}

// TestFailAndStick: a failing start is answered 400 by create (the sandbox stays, in error); a
// stuck one answers create with its pre-wait state and cannot be deleted until it errors.
func TestFailAndStick(t *testing.T) {
	s := start(t, daytonafake.Options{CreateWait: 100 * time.Millisecond})
	s.FailNextCreate("out of capacity")
	a := s.api("POST", "/sandbox", map[string]any{"name": "failing"})
	if a.status != 400 || a.json()["message"] != "Sandbox failed to start: out of capacity" {
		t.Errorf("failing create: %d %s", a.status, a.body)
	}
	if got := s.api("GET", "/sandbox/failing", nil).json(); got["state"] != "error" || got["errorReason"] != "out of capacity" {
		t.Errorf("failed sandbox %v", got)
	}
	s.api("DELETE", "/sandbox/failing", nil)

	s.StickNextCreate(300 * time.Millisecond)
	sb := s.create(map[string]any{"name": "stuck"})
	if sb["state"] != "unknown" {
		t.Errorf("stuck create answered %v", sb["state"])
	}
	if a := s.api("DELETE", "/sandbox/stuck", nil); a.status != 409 {
		t.Errorf("delete a stuck sandbox: %d", a.status)
	}
	s.waitState(sb["id"].(string), "error")
	if a := s.api("DELETE", "/sandbox/stuck", nil); a.status != 200 {
		t.Errorf("delete once errored: %d %s", a.status, a.body)
	}
	// Errored sandboxes being deleted are hidden.
	if a := s.api("GET", "/sandbox/"+sb["id"].(string), nil); a.status != 404 {
		t.Errorf("get an errored, deleted sandbox: %d", a.status)
	}
}

func TestList(t *testing.T) {
	s := start(t, daytonafake.Options{Warm: true})
	var ids []string
	for i := 0; i < 5; i++ {
		sb := s.create(map[string]any{"labels": map[string]string{"team": []string{"a", "b"}[i%2], "n": fmt.Sprint(i)}})
		ids = append(ids, sb["id"].(string))
	}
	list := func(q string) (items []any, next any) {
		a := s.api("GET", "/sandbox?"+q, nil)
		if a.status != 200 {
			t.Fatalf("list %s: %d %s", q, a.status, a.body)
		}
		m := a.json()
		items, _ = m["items"].([]any)
		return items, m["nextCursor"]
	}
	labels := url.QueryEscape(`{"team":"a"}`)
	items, next := list("labels=" + labels + "&limit=2")
	if len(items) != 2 || next == nil || items[0].(map[string]any)["id"] != ids[4] {
		t.Fatalf("first page %v next %v, want the newest two of team a", items, next)
	}
	if _, ok := items[0].(map[string]any)["env"]; ok {
		t.Error("list items carry env (SandboxListItem has none)")
	}
	items, next = list("labels=" + labels + "&limit=2&cursor=" + url.QueryEscape(next.(string)))
	if len(items) != 1 || next != nil || items[0].(map[string]any)["id"] != ids[0] {
		t.Fatalf("last page %v next %v", items, next)
	}
	if items, _ := list("labels=" + url.QueryEscape(`{"team":"a","n":"2"}`)); len(items) != 1 {
		t.Errorf("AND of labels: %v", items)
	}
	if a := s.api("GET", "/sandbox?labels=notjson", nil); a.status != 400 || a.json()["message"] != "Invalid labels JSON format" {
		t.Errorf("bad labels: %d %s", a.status, a.body)
	}
	// Deleted sandboxes leave the list once destroyed.
	s.api("DELETE", "/sandbox/"+ids[0], nil)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if items, _ := list("labels=" + labels); len(items) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a destroyed sandbox is still listed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, id := range ids[1:] {
		s.api("DELETE", "/sandbox/"+id, nil)
	}
}

func TestListArray(t *testing.T) {
	s := start(t, daytonafake.Options{Warm: true, List: daytonafake.ListArray})
	sb := s.create(nil)
	a := s.api("GET", "/sandbox", nil)
	var arr []map[string]any
	if err := json.Unmarshal(a.body, &arr); err != nil || len(arr) != 1 || arr[0]["id"] != sb["id"] {
		t.Fatalf("array list: %s", a.body)
	}
	s.api("DELETE", "/sandbox/"+sb["id"].(string), nil)
}

func TestToolbox(t *testing.T) {
	s := start(t, daytonafake.Options{Warm: true})
	sb := s.create(map[string]any{"env": map[string]string{"SB": "wide"}})
	defer s.api("DELETE", "/sandbox/"+sb["id"].(string), nil)
	exec := func(body map[string]any) answer { return s.toolbox(sb, "/process/execute", body) }

	a := exec(map[string]any{"command": "echo out; echo err >&2; echo $SB $RUN; pwd; exit 3", "envs": map[string]string{"RUN": "one"}})
	m := a.json()
	if a.status != 200 || m["exitCode"] != 3.0 || m["result"] != "out\nerr\nwide one\n"+s.Dir(sb["id"].(string))+"\n" {
		t.Errorf("execute: %d %s", a.status, a.body)
	}
	// A shell killed by a signal: the daemon reports -1.
	if m := exec(map[string]any{"command": "kill -9 $$"}).json(); m["exitCode"] != -1.0 {
		t.Errorf("killed shell: %v", m)
	}
	for _, tc := range []struct {
		body map[string]any
		code string
	}{
		{map[string]any{"command": "  "}, "BAD_REQUEST"},
		{map[string]any{"command": "true", "envs": map[string]string{"1BAD": "x"}}, "BAD_REQUEST"},
	} {
		if a := exec(tc.body); a.status != 400 || a.json()["code"] != tc.code {
			t.Errorf("%v: %d %s", tc.body, a.status, a.body)
		}
	}
	start := time.Now()
	a = exec(map[string]any{"command": "echo lost; sleep 30", "timeout": 1})
	if a.status != 408 || a.json()["code"] != "REQUEST_TIMEOUT" || strings.Contains(string(a.body), "lost") || time.Since(start) > 20*time.Second {
		t.Errorf("timeout: %d %s after %s", a.status, a.body, time.Since(start))
	}

	a = s.toolbox(sb, "/process/code-run", map[string]any{"code": "import sys; print(sys.argv[1:])", "language": "python", "argv": []string{"x", "y"}})
	if a.status != 200 || a.json()["result"] != "['x', 'y']\n" {
		t.Errorf("code-run python: %d %s", a.status, a.body)
	}
	a = s.toolbox(sb, "/process/code-run", map[string]any{"code": "console.log(process.argv[2])", "language": "javascript", "argv": []string{"first"}})
	if a.status != 200 || a.json()["result"] != "first\n" {
		t.Errorf("code-run javascript: %d %s", a.status, a.body)
	}
	if a := s.toolbox(sb, "/process/code-run", map[string]any{"code": "x", "language": "cobol"}); a.status != 400 || a.json()["message"] != "bad request: unsupported language: cobol" {
		t.Errorf("code-run cobol: %d %s", a.status, a.body)
	}

	// Faults: a bare 502, a 429 with Retry-After-<bucket>.
	s.Inject(daytonafake.Fault{Op: "execute", Status: 502})
	if a := exec(map[string]any{"command": "true"}); a.status != 502 || len(a.body) != 0 {
		t.Errorf("502: %d %q", a.status, a.body)
	}
	s.Inject(daytonafake.Fault{Op: "create", Status: 429, RetryAfter: 2})
	if a := s.api("POST", "/sandbox", nil); a.status != 429 || a.header.Get("Retry-After-sandbox-create") != "2" || a.json()["error"] != "Too Many Requests" {
		t.Errorf("429: %d %v %s", a.status, a.header, a.body)
	}
	if s.Count("execute") < 5 {
		t.Errorf("execute count %d", s.Count("execute"))
	}
	// A sandbox that is not started.
	if err := s.Stop(sb["id"].(string)); err != nil {
		t.Fatal(err)
	}
	s.waitState(sb["id"].(string), "stopped")
	if a := exec(map[string]any{"command": "true"}); a.status != 400 || !strings.Contains(a.json()["message"].(string), "Is the Sandbox started?") {
		t.Errorf("stopped: %d %s", a.status, a.body)
	}
}

func TestOldDaemon(t *testing.T) {
	s := start(t, daytonafake.Options{Warm: true, DaemonVersion: "0.150.0"})
	sb := s.create(nil)
	defer s.api("DELETE", "/sandbox/"+sb["id"].(string), nil)
	if a := s.toolbox(sb, "/process/code-run", map[string]any{"code": "print(1)", "language": "python"}); a.status != 404 {
		t.Errorf("code-run on an old daemon: %d", a.status)
	}
	if m := s.toolbox(sb, "/process/execute", map[string]any{"command": "echo ${RUN:-ignored}", "envs": map[string]string{"RUN": "x"}}).json(); m["result"] != "ignored\n" {
		t.Errorf("envs on an old daemon: %v", m)
	}
}

// TestDeleteKillsProcesses: what a sandbox's runs left running dies with it.
func TestDeleteKillsProcesses(t *testing.T) {
	s := start(t, daytonafake.Options{Warm: true})
	sb := s.create(nil)
	answered := make(chan struct{})
	go func() { // its answer, whatever it is, may come after the test's checks: no t.Fatal here
		defer close(answered)
		req, _ := http.NewRequest("POST", sb["toolboxProxyUrl"].(string)+"/"+sb["id"].(string)+"/process/execute",
			strings.NewReader(`{"command": "setsid sleep 60 & sleep 60"}`))
		req.Header.Set("Authorization", "Bearer dtn_fake")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	defer func() { <-answered }()
	deadline := time.Now().Add(10 * time.Second)
	for s.Running() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("not running")
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.api("DELETE", "/sandbox/"+sb["id"].(string), nil)
	for s.Running() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the sandbox's processes outlived it")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
