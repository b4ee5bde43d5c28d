package daytona_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/daytonafake"
	"github.com/codefleet/codefleet/pkg/envs/daytona"
)

func newClient(t *testing.T, url, key string) *daytona.Client {
	t.Helper()
	c, err := daytona.NewClient(daytona.ClientConfig{APIURL: url, APIKey: key, RetryBase: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestClientListPages: the client pages with the cursor, and reads the old bare-array answer.
func TestClientListPages(t *testing.T) {
	for _, shape := range []daytonafake.ListShape{daytonafake.ListCursor, daytonafake.ListArray} {
		fake := startFake(t, daytonafake.Options{Warm: true, List: shape})
		c := newClient(t, fake.URL, "dtn_fake")
		ctx := context.Background()
		var made []string
		for _, team := range []string{"a", "b", "a", "a"} {
			sb, err := c.Create(ctx, daytona.CreateSandboxRequest{Labels: map[string]string{"team": team}})
			if err != nil || sb.State != daytona.StateStarted || sb.ToolboxProxyURL == "" {
				t.Fatalf("create: %+v %v", sb, err)
			}
			if team == "a" {
				made = append(made, sb.ID)
			}
			t.Cleanup(func() { c.Delete(context.Background(), sb.ID) })
		}
		var got []string
		q := daytona.ListQuery{Labels: map[string]string{"team": "a"}, Limit: 2}
		pages := 0
		for {
			page, err := c.List(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, sb := range page.Items {
				got = append(got, sb.ID)
			}
			if page.NextCursor == "" {
				break
			}
			q.Cursor = page.NextCursor
		}
		sort.Strings(got)
		sort.Strings(made)
		if strings.Join(got, ",") != strings.Join(made, ",") {
			t.Errorf("shape %d: listed %v, want %v", shape, got, made)
		}
		if wantPages := map[daytonafake.ListShape]int{daytonafake.ListCursor: 2, daytonafake.ListArray: 1}[shape]; pages != wantPages {
			t.Errorf("shape %d: %d pages, want %d", shape, pages, wantPages)
		}
	}
}

// TestClientErrorBodies: the three error shapes (management, toolbox, none) and odd ones.
func TestClientErrorBodies(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		status     int
		want       string
		code       string
	}{
		{"management", `{"statusCode":404,"error":"Not Found","message":"Sandbox with ID or name x not found","path":"/api/sandbox/x","timestamp":"2026-01-01T00:00:00Z"}`, 404,
			"get sandbox: HTTP 404 Not Found: Sandbox with ID or name x not found", ""},
		{"validation list", `{"statusCode":400,"error":"Bad Request","message":["cpu must be an integer","disk must be an integer"]}`, 400,
			"HTTP 400 Bad Request: cpu must be an integer, disk must be an integer", ""},
		{"toolbox", `{"statusCode":408,"message":"request timeout: command execution timeout","code":"REQUEST_TIMEOUT","timestamp":"t","path":"/process/execute","method":"POST"}`, 408,
			"HTTP 408 Request Timeout: request timeout: command execution timeout", "REQUEST_TIMEOUT"},
		{"error only", `{"statusCode":500,"error":"Internal Server Error"}`, 500, "HTTP 500 Internal Server Error: Internal Server Error", ""},
		{"empty", ``, 403, "HTTP 403 Forbidden (empty body)", ""},
		{"text", "upstream connect error\n", 400, "HTTP 400 Bad Request: upstream connect error", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			}))
			defer srv.Close()
			_, err := newClient(t, srv.URL, "k").Get(context.Background(), "x")
			var ae *daytona.APIError
			if !errors.As(err, &ae) || ae.StatusCode != tc.status || ae.Code != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v (%+v), want status %d, code %q, message containing %q", err, ae, tc.status, tc.code, tc.want)
			}
		})
	}
}

// TestClientRetries: 429 honours Retry-After-<bucket> on any call; 502 is retried on a get but
// never on a create or a run; a request that never left is retried.
func TestClientRetries(t *testing.T) {
	var calls atomic.Int32
	var status atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer k" || r.Header.Get("X-Daytona-SDK-Version") == "" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if calls.Add(1) == 1 {
			if s := int(status.Load()); s == 429 {
				w.Header().Set("Retry-After-Sandbox-Lifecycle", "0.05")
				w.WriteHeader(s)
				return
			} else if s != 0 {
				w.WriteHeader(s)
				return
			}
		}
		io.WriteString(w, `{"id":"x","state":"started","exitCode":3,"result":"r"}`)
	}))
	defer srv.Close()
	c := newClient(t, srv.URL, "k")
	ctx := context.Background()
	tb := daytona.Toolbox{SandboxID: "x", ProxyURL: srv.URL + "/toolbox/"}
	for _, tc := range []struct {
		name   string
		status int
		call   func() error
		calls  int32
	}{
		{"429 delete", 429, func() error { _, err := c.Delete(ctx, "x"); return err }, 2},
		{"429 execute", 429, func() error { _, err := c.Execute(ctx, tb, daytona.ExecuteRequest{Command: "true"}); return err }, 2},
		{"502 get", 502, func() error { _, err := c.Get(ctx, "x"); return err }, 2},
		{"503 list", 503, func() error { _, err := c.List(ctx, daytona.ListQuery{}); return err }, 2},
		{"502 create", 502, func() error { _, err := c.Create(ctx, daytona.CreateSandboxRequest{}); return err }, 1},
		{"502 execute", 502, func() error { _, err := c.Execute(ctx, tb, daytona.ExecuteRequest{Command: "true"}); return err }, 1},
		{"400 get", 400, func() error { _, err := c.Get(ctx, "x"); return err }, 1},
	} {
		calls.Store(0)
		status.Store(int32(tc.status))
		err := tc.call()
		if n := calls.Load(); n != tc.calls {
			t.Errorf("%s: %d calls, want %d (err %v)", tc.name, n, tc.calls, err)
		}
		if (tc.calls == 2) != (err == nil) {
			t.Errorf("%s: err %v", tc.name, err)
		}
	}

	// Nobody listens: the request never left, so even a create is retried (then fails).
	l := httptest.NewServer(http.NotFoundHandler())
	url := l.URL
	l.Close()
	start := time.Now()
	_, err := newClient(t, url, "k").Create(ctx, daytona.CreateSandboxRequest{})
	if err == nil || time.Since(start) < 10*time.Millisecond {
		t.Errorf("create against a closed port: %v after %s, want retries then an error", err, time.Since(start))
	}
}

// TestClientExecuteOldField: daemons before v0.113 named the exit code "code".
func TestClientExecuteOldField(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/toolbox/sb-1/process/execute" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, `{"code":7,"result":"out"}`)
	}))
	defer srv.Close()
	res, err := newClient(t, srv.URL, "k").Execute(context.Background(), daytona.Toolbox{SandboxID: "sb-1", ProxyURL: srv.URL + "/toolbox/"}, daytona.ExecuteRequest{Command: "x"})
	if err != nil || res.ExitCode != 7 || res.Result != "out" {
		t.Fatalf("got %+v %v", res, err)
	}
}

// TestClientDownloadRanges: a ranged download reads the 206 of a server that takes ranges, the
// 416 past the end (the size from Content-Range), and slices the 200 of one that does not.
func TestClientDownloadRanges(t *testing.T) {
	const file = "0123456789"
	ranges := true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/toolbox/sb-1/files/download" || r.URL.Query().Get("path") != "/w/f" {
			http.NotFound(w, r)
			return
		}
		if !ranges {
			r.Header.Del("Range")
		}
		http.ServeContent(w, r, "f", time.Time{}, strings.NewReader(file))
	}))
	defer srv.Close()
	c := newClient(t, srv.URL, "k")
	tb := daytona.Toolbox{SandboxID: "sb-1", ProxyURL: srv.URL + "/toolbox"}
	for _, r := range []bool{true, false} {
		ranges = r
		for _, tc := range []struct {
			off, n int64
			want   string
		}{{0, 4, "0123"}, {8, 5, "89"}, {10, 3, ""}, {12, 1, ""}} {
			got, err := c.Download(context.Background(), tb, "/w/f", tc.off, tc.n)
			if err != nil || string(got.Data) != tc.want || got.Size != 10 || got.Offset != tc.off {
				t.Errorf("ranges %v, %d+%d: %+v %v, want %q of 10 bytes", r, tc.off, tc.n, got, err, tc.want)
			}
		}
	}
}

func TestNewClientChecks(t *testing.T) {
	if _, err := daytona.NewClient(daytona.ClientConfig{}); err == nil {
		t.Error("no API key accepted")
	}
	if _, err := daytona.NewClient(daytona.ClientConfig{APIKey: "k", APIURL: "app.daytona.io/api"}); err == nil {
		t.Error("URL without scheme accepted")
	}
}
